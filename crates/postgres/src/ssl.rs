//! PostgreSQL over TLS: the node's certificate and key installed where the server, run
//! as its OS user, can read them, and every connection pgfm makes (probes, checks, clone,
//! rewind, streaming) verified against the cluster CA for the host it dials
//! (`sslmode=verify-full`).
//!
//! The files live beside the data directory (`<data_dir>.pgfm-tls/`), not in it: a base
//! backup or a rewind copies a data directory to another node, and a node's key must not
//! travel with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::run_as::OsUser;

/// The node's TLS files as the agent reads them (the cluster CA, its certificate, its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where the server's copies are, for `data_dir`.
pub fn installed(data_dir: &Path) -> SslFiles {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".pgfm-tls");
    let dir = data_dir.with_file_name(name);
    SslFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    }
}

/// Copy `files` to `installed(data_dir)`, owned by `user`, readable by it alone (the
/// server refuses a key others can read). Rewritten only when they differ: whether any was.
pub fn install(files: &SslFiles, data_dir: &Path, user: &OsUser) -> anyhow::Result<bool> {
    use anyhow::Context;
    // One install at a time (a start's and a rotation's): the copies share a temporary name.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let to = installed(data_dir);
    let dir = to.ca.parent().expect("a file in a directory");
    user.make_private_dir(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut changed = false;
    for (from, copy) in [
        (&files.ca, &to.ca),
        (&files.cert, &to.cert),
        (&files.key, &to.key),
    ] {
        let contents = std::fs::read_to_string(from)
            .with_context(|| format!("reading {} for PostgreSQL's TLS", from.display()))?;
        if std::fs::read_to_string(copy).ok().as_deref() != Some(contents.as_str()) {
            user.write_file(copy, &contents, 0o600)
                .with_context(|| format!("writing {}", copy.display()))?;
            changed = true;
        }
    }
    Ok(changed)
}

/// The settings that turn the server's TLS on with the installed files.
pub fn server_settings(data_dir: &Path) -> Vec<(String, String)> {
    let files = installed(data_dir);
    vec![
        ("ssl".into(), "on".into()),
        ("ssl_cert_file".into(), files.cert.display().to_string()),
        ("ssl_key_file".into(), files.key.display().to_string()),
        ("ssl_ca_file".into(), files.ca.display().to_string()),
    ]
}

/// The libpq keywords of a verified connection, for a tool run as the OS user.
pub fn conninfo(data_dir: &Path) -> Vec<(String, String)> {
    vec![
        ("sslmode".into(), "verify-full".into()),
        (
            "sslrootcert".into(),
            installed(data_dir).ca.display().to_string(),
        ),
    ]
}

/// A connector for tokio-postgres that trusts the CA in `ca` alone and checks the
/// server's certificate against the host dialled.
pub fn connector(ca: &Path) -> Result<MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("reading the cluster CA {}: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("reading the cluster CA {}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("the cluster CA {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("no certificate in the cluster CA {}", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
