//! TLS to the backing services (PostgreSQL, Redis): rustls with the `ring` provider, server
//! certificates always verified (host name included) against a CA file when one is given, else
//! the Mozilla root store (`webpki-roots`). Infrastructure shared by `storage::postgres` and
//! `clickcache::redis`; no business logic (docs/deploy.md, "TLS to backing services").

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why a TLS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The process-wide crypto provider (ring), installed once; libraries that build their own
/// rustls configuration (the Redis client) find it.
pub fn install_provider() {
    // Already installed (by an earlier call or by the embedding program): fine either way.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates of a PEM file (one or more `CERTIFICATE` blocks).
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::CaFile { path: path.to_owned(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// A client configuration that trusts the certificates of `ca_file`, or the Mozilla roots
/// when there is none.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    install_provider();
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_ca_file(path)? {
                roots.add(cert).map_err(|e| TlsError::CaFile { path: path.to_owned(), reason: e.to_string() })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("tm-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let missing = dir.join("missing.pem");
        assert!(client_config(Some(&missing)).unwrap_err().to_string().contains("missing.pem"));
        assert!(client_config(None).is_ok(), "the Mozilla roots");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
