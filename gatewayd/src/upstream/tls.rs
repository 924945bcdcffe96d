//! TLS material for the upstream link and the reference receiver: PEM loading, rustls configurations, certificate expiry.
//!
//! Both sides use rustls 0.23 with the ring provider, TLS 1.3 and 1.2 only. The gateway (client) trusts exactly the CA
//! in `upstream.ca` (pinned: the system roots are never consulted) and checks the server name from the URL; it presents
//! its own certificate. The receiver requires a client certificate chaining to its `--ca`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_owned(), message: message.to_string() }
}

/// The crypto provider both sides use.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate in the file (expected -----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| file_err(path, format!("no usable private key: {e}")))
}

fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|e| file_err(ca, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The gateway's client configuration: trusts only `ca`, presents `cert` + `key`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = roots(ca)?;
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| file_err(key, format!("does not match the certificate {}: {e}", cert.display())))?;
    Ok(Arc::new(config))
}

/// A server configuration that requires client certificates chaining to `client_ca`.
pub fn server_config(client_ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = Arc::new(roots(client_ca)?);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| file_err(key, format!("does not match the certificate {}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `notAfter` of the first certificate in a PEM file, as Unix seconds.
pub fn cert_not_after(path: &Path) -> Result<i64, TlsError> {
    let certs = load_certs(path)?;
    let first = certs.first().ok_or_else(|| file_err(path, "no certificate"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(first.as_ref())
        .map_err(|e| file_err(path, format!("cannot parse the certificate: {e}")))?;
    Ok(parsed.validity().not_after.timestamp())
}

/// Whole days from `now` until the certificate in `path` expires (negative once expired). Computed from the wall clock
/// each time it is asked, so a clock jump changes the next answer instead of breaking a timer.
pub fn cert_days_left(path: &Path, now: jiff::Timestamp) -> Result<i64, TlsError> {
    let not_after = cert_not_after(path)?;
    Ok((not_after - now.as_second()).div_euclid(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{DevPki, Validity};

    #[test]
    fn files_that_are_not_pem_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "hello").unwrap();
        let e = load_certs(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.pem") && e.contains("no certificate"), "{e}");
        let e = load_key(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.pem") && e.contains("private key"), "{e}");
        let e = load_certs(&dir.path().join("missing.pem")).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }

    #[test]
    fn mismatched_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new("ca").unwrap();
        let a = pki.client("a", Validity::days(10)).unwrap();
        let b = pki.client("b", Validity::days(10)).unwrap();
        std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
        std::fs::write(dir.path().join("a.pem"), &a.cert_pem).unwrap();
        std::fs::write(dir.path().join("b.key"), &b.key_pem).unwrap();
        let r = client_config(&dir.path().join("ca.pem"), &dir.path().join("a.pem"), &dir.path().join("b.key"));
        assert!(r.is_err());
    }
}
