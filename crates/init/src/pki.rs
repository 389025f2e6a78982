//! The cluster's certificate authority and one certificate per node, signed by it. The
//! CA's key stays in the output directory's `ca/`; nodes get only the CA's certificate.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::spec::InitError;

/// How long the CA is valid: long, since replacing it means a new certificate everywhere.
const CA_DAYS: i64 = 3650;
/// How long a node's certificate is valid; `pgfm init --add` issues a new one any time.
pub const NODE_DAYS: i64 = 825;

/// A certificate and its key, both PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// The CA, able to sign.
pub struct Authority {
    cert: Certificate,
    key: KeyPair,
    pub pem: Pem,
}

impl Authority {
    /// A new CA for `cluster`.
    pub fn create(cluster: &str) -> Result<Authority, InitError> {
        let key = KeyPair::generate().map_err(pki_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("pgfm cluster {cluster} CA"), cluster);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(CA_DAYS);
        let cert = params.self_signed(&key).map_err(pki_error)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Authority { cert, key, pem })
    }

    /// The CA `pgfm init` wrote before, read back to sign for a node added later.
    pub fn load(pem: Pem) -> Result<Authority, InitError> {
        let key = KeyPair::from_pem(&pem.key)
            .map_err(|e| InitError(format!("the CA key is not a PEM private key: {e}")))?;
        let params = CertificateParams::from_ca_cert_pem(&pem.cert)
            .map_err(|e| InitError(format!("the CA certificate is not a PEM certificate: {e}")))?;
        // Re-signing the same parameters with the same key gives an issuer with the same
        // name and key identifier: what the nodes' chains are checked against.
        let cert = params.self_signed(&key).map_err(pki_error)?;
        if cert.der().is_empty() {
            return Err(InitError("the CA certificate is empty".into()));
        }
        Ok(Authority { cert, key, pem })
    }

    /// A certificate for node `node` of `cluster`, valid for its name and `addresses`,
    /// for both ends of a connection (it serves and it calls its peers).
    pub fn issue(&self, cluster: &str, node: &str, addresses: &[IpAddr]) -> Result<Pem, InitError> {
        let now = OffsetDateTime::now_utc();
        self.issue_until(cluster, node, addresses, now + Duration::days(NODE_DAYS))
    }

    /// The same, valid until `not_after` (from a day before it at the latest).
    pub fn issue_until(
        &self,
        cluster: &str,
        node: &str,
        addresses: &[IpAddr],
        not_after: OffsetDateTime,
    ) -> Result<Pem, InitError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(node, cluster);
        params.subject_alt_names =
            std::iter::once(SanType::DnsName(node.try_into().map_err(pki_error)?))
                .chain(addresses.iter().map(|a| SanType::IpAddress(*a)))
                .collect();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params, not_after)
    }

    /// A certificate for a client only (a load balancer's health checks, monitoring, an
    /// operator's CLI off the nodes): it may call agents, it cannot serve as one.
    pub fn issue_client(&self, cluster: &str, client: &str) -> Result<Pem, InitError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(client, cluster);
        params.subject_alt_names = vec![SanType::DnsName(client.try_into().map_err(pki_error)?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        self.sign(params, now + Duration::days(NODE_DAYS))
    }

    /// A new key and `params` signed by the CA, valid until `not_after` (from an hour
    /// ago, or a day before `not_after` if that is earlier).
    fn sign(
        &self,
        mut params: CertificateParams,
        not_after: OffsetDateTime,
    ) -> Result<Pem, InitError> {
        let key = KeyPair::generate().map_err(pki_error)?;
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = (now - Duration::hours(1)).min(not_after - Duration::days(1));
        params.not_after = not_after;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(pki_error)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

fn name(common_name: &str, cluster: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, format!("pgfm cluster {cluster}"));
    dn
}

fn pki_error(e: rcgen::Error) -> InitError {
    InitError(format!("making a certificate: {e}"))
}
