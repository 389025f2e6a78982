//! pgfm's TLS: mutual TLS between agents and from the CLI, against the cluster's own CA.
//!
//! - `Tls` holds the node's certificate, its key and the cluster CA, read from files and
//!   reread when a file changes (rotation without a restart); a file that changed into
//!   something unusable is reported and the last good set stays in use.
//! - `TlsListener` accepts connections for `axum::serve`: a peer without a certificate
//!   signed by the cluster CA (or one that speaks plain HTTP) is refused in the handshake,
//!   before any handler runs, and logged.
//! - `Tls::client_config` is what the agent's and the CLI's HTTP client present and check.
//!
//! Every error names the file and the fix.

mod listener;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};

pub use listener::TlsListener;

/// The three files: the cluster CA's certificate, this node's certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A TLS set that cannot be used, in words for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// How often, at most, the files are looked at for a change.
const RECHECK: Duration = Duration::from_secs(1);
/// How often a changed set that could not be used is tried again.
const RETRY: Duration = Duration::from_secs(30);

/// The node's TLS set, reread when its files change.
pub struct Tls {
    files: TlsFiles,
    /// The name this node's certificate must be valid for (its listen address); None for
    /// a client only (the CLI with --tls-dir), whose certificate is checked but not its name.
    name: Option<ServerName<'static>>,
    current: Mutex<Current>,
}

struct Current {
    loaded: Loaded,
    /// The files' modification times and sizes when `loaded` was read (or last failed).
    stamp: Vec<Option<(SystemTime, u64)>>,
    checked_at: Instant,
    /// When the files, changed, last failed to build: tried again after `RETRY` even
    /// unchanged (a certificate "not valid yet" becomes valid once the clock is fixed).
    failed_at: Option<Instant>,
}

/// One consistent set, as both ends of a connection use it.
#[derive(Clone)]
struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// Counts reloads: a client built on an older set is rebuilt.
    version: u64,
}

impl Tls {
    /// Read and check the files: the certificate must be signed by the CA, be valid now and
    /// name `name` (this node's address), and the key must be the certificate's.
    pub fn load(files: TlsFiles, name: &str) -> Result<Arc<Tls>, TlsError> {
        let name = ServerName::try_from(name.to_string()).map_err(|_| {
            TlsError(format!(
                "{name:?} is not an address or name a certificate can be checked against"
            ))
        })?;
        Tls::load_as(files, Some(name))
    }

    /// The same for a client only: the certificate must be signed by the CA and valid
    /// now, whichever node it names.
    pub fn load_client(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        Tls::load_as(files, None)
    }

    fn load_as(files: TlsFiles, name: Option<ServerName<'static>>) -> Result<Arc<Tls>, TlsError> {
        // Stamped before reading: a file replaced meanwhile is read again at the next look.
        let stamp = stamp(&files);
        let loaded = build(&files, name.as_ref(), 0)?;
        Ok(Arc::new(Tls {
            current: Mutex::new(Current {
                loaded,
                stamp,
                checked_at: Instant::now(),
                failed_at: None,
            }),
            files,
            name,
        }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Which set is in use: 0 for the first, one more at each reload of changed files (the
    /// files are looked at first, at most once per `RECHECK`).
    pub fn version(&self) -> u64 {
        self.refreshed().version
    }

    /// What the server side presents and checks now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.refreshed().server
    }

    /// What the client side presents and checks now, and the set's version.
    pub fn client_config(&self) -> (u64, Arc<ClientConfig>) {
        let loaded = self.refreshed();
        (loaded.version, loaded.client)
    }

    /// The current set, reread first when a file changed since the last look (at most
    /// once per `RECHECK`).
    fn refreshed(&self) -> Loaded {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.checked_at.elapsed() < RECHECK {
            return current.loaded.clone();
        }
        current.checked_at = Instant::now();
        let now = stamp(&self.files);
        let retry = current.failed_at.is_some_and(|at| at.elapsed() >= RETRY);
        if now == current.stamp && !retry {
            return current.loaded.clone();
        }
        // Remember the new stamp either way: a broken file is reported once (and retried
        // every RETRY), not every second, and a fix (a new stamp) is picked up at once.
        current.stamp = now;
        match build(&self.files, self.name.as_ref(), current.loaded.version + 1) {
            Ok(loaded) => {
                tracing::info!(
                    cert = %self.files.cert.display(),
                    "TLS: the certificate files changed; new connections use them"
                );
                current.loaded = loaded;
                current.failed_at = None;
            }
            Err(e) => {
                if current.failed_at.is_none() {
                    tracing::error!(
                        "TLS: the certificate files changed but cannot be used, so the \
                         previous ones stay in use: {e}"
                    );
                }
                current.failed_at = Some(Instant::now());
            }
        }
        current.loaded.clone()
    }
}

/// When the set in `files` stops working: the earlier of the node certificate's and the
/// CA's end of validity.
pub fn expiry(files: &TlsFiles) -> Result<SystemTime, TlsError> {
    let mut earliest: Option<SystemTime> = None;
    for (path, what) in [
        (&files.cert, "this node's certificate"),
        (&files.ca, "the cluster CA's certificate"),
    ] {
        for cert in read_certs(path, what)? {
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
                .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
            let not_after = parsed.validity().not_after.timestamp();
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64);
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
    }
    earliest.ok_or_else(|| TlsError(format!("{}: no certificate", files.cert.display())))
}

fn stamp(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    [&files.ca, &files.cert, &files.key]
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read the files and build both ends' configs, checking the set as a whole.
fn build(
    files: &TlsFiles,
    name: Option<&ServerName<'static>>,
    version: u64,
) -> Result<Loaded, TlsError> {
    let ca = read_certs(&files.ca, "the cluster CA's certificate")?;
    let chain = read_certs(&files.cert, "this node's certificate")?;
    check_private(&files.key)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        TlsError(format!(
            "{} is not a PEM private key ({e}): copy node.key from this node's pgfm init \
             directory",
            files.key.display()
        ))
    })?;
    let mut roots = RootCertStore::empty();
    for cert in &ca {
        roots.add(cert.clone()).map_err(|e| {
            TlsError(format!(
                "{} is not a usable CA certificate ({e}): copy ca.crt from the pgfm init \
                 directory",
                files.ca.display()
            ))
        })?;
    }
    let roots = Arc::new(roots);
    let provider = provider();
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError(format!("{}: {e}", files.ca.display())))?;
    check_own_certificate(files, &roots, &*client_verifier, &chain, name)?;

    let key_error = |e: rustls::Error| {
        TlsError(format!(
            "{} does not go with {} ({e}): copy node.crt and node.key of the same pgfm init \
             run",
            files.key.display(),
            files.cert.display()
        ))
    };
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(key_error)?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(key_error)?;
    Ok(Loaded {
        server: Arc::new(server),
        client: Arc::new(client),
        version,
    })
}

/// The key, like the token, must be readable by its owner alone.
fn check_private(key: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(key) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => Err(TlsError(format!(
            "{} can be read by other users (chmod 600 {})",
            key.display(),
            key.display()
        ))),
        _ => Ok(()),
    }
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unusable = |e: String| {
        TlsError(format!(
            "{} cannot be used as {what} ({e}): copy it from this node's pgfm init directory",
            path.display()
        ))
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| unusable(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| unusable(e.to_string()))?;
    if certs.is_empty() {
        return Err(unusable("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The node's own certificate as its peers will check it: signed by the CA, valid now,
/// and (for an agent) made out for this node's address.
fn check_own_certificate(
    files: &TlsFiles,
    roots: &Arc<RootCertStore>,
    as_client: &dyn rustls::server::danger::ClientCertVerifier,
    chain: &[CertificateDer<'static>],
    name: Option<&ServerName<'static>>,
) -> Result<(), TlsError> {
    let now = UnixTime::now();
    let result = match name {
        Some(name) => {
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.clone(),
                provider(),
            )
            .build()
            .map_err(|e| TlsError(format!("{}: {e}", files.ca.display())))?;
            verifier
                .verify_server_cert(&chain[0], &chain[1..], name, &[], now)
                .map(|_| ())
        }
        None => as_client
            .verify_client_cert(&chain[0], &chain[1..], now)
            .map(|_| ()),
    };
    match result {
        Ok(()) => Ok(()),
        Err(rustls::Error::InvalidCertificate(e)) => Err(TlsError(explain(&e, files, name))),
        Err(e) => Err(TlsError(format!("{}: {e}", files.cert.display()))),
    }
}

/// A certificate problem in the words an operator needs: which file, what, the fix.
fn explain(error: &CertificateError, files: &TlsFiles, name: Option<&ServerName<'_>>) -> String {
    let cert = files.cert.display();
    let ca = files.ca.display();
    let renew = "renew it with pgfm init --add --force and the same node on the machine \
                 that holds the cluster's ca/ directory";
    match error {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
            "{cert} is not signed by the cluster CA in {ca}: the two come from different pgfm \
             init runs (copy both from the same one, or {renew})"
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("{cert} has expired: {renew}")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("{cert} is not valid yet: check this host's clock (timedatectl), or {renew}")
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "{cert} is not made out for {}, this node's address (node.listen): it belongs \
                 to another node, or the address changed ({renew}, giving the new address)",
                name.map(|n| n.to_str()).unwrap_or_default()
            )
        }
        other => format!("{cert} cannot be used ({other:?}): {renew}"),
    }
}

#[cfg(test)]
mod tests;
