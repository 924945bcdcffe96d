//! TLS material for every listener and client of the gateway: PEM certificates and keys, rustls configurations, and
//! the facts read from a certificate (subject common name, expiry).
//!
//! Used by the MQTT front's TLS listener ([`crate::mqtt::tls`]), the daemon's upstream client and its API listener. All
//! of them use rustls 0.23 with the ring provider, TLS 1.3 and 1.2 only. A client trusts exactly the CA it is given
//! (pinned: the system roots are never consulted). A server with a client CA requires a client certificate chaining to
//! it. Every error names the file it is about and what is wrong with it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing, unreadable or does not hold what it should.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// rustls refused the configuration itself (no file to blame).
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_owned(), message: message.to_string() }
}

/// The crypto provider every TLS endpoint of the gateway uses (ring).
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

/// The certificates of the CA file `ca` as trust roots.
pub fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|e| file_err(ca, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// rustls refused the key in `key` with the certificate in `cert` (not the same key pair, or a key it cannot use): the
/// error names both files.
fn pair_error(cert: &Path, key: &Path, e: rustls::Error) -> TlsError {
    file_err(key, format!("cannot be used with the certificate {}: {e}", cert.display()))
}

/// A client configuration that trusts only `ca` and presents `cert` + `key`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = roots(ca)?;
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| pair_error(cert, key, e))?;
    Ok(Arc::new(config))
}

/// A server configuration presenting `cert` + `key`. With `client_ca`, a client certificate chaining to it is required.
/// `alpn` lists the application protocols offered (empty: no ALPN).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = match client_ca {
        Some(ca) => Some(
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                .build()
                .map_err(|e| file_err(ca, format!("cannot verify clients with it: {e}")))?,
        ),
        None => None,
    };
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key_der).map_err(|e| pair_error(cert, key, e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A server configuration that can be replaced while its listener runs (certificate rotation on SIGHUP). Each accepted
/// connection takes the configuration in force at that moment; connections already up keep theirs.
#[derive(Clone)]
pub struct SharedServerConfig(Arc<RwLock<Arc<ServerConfig>>>);

impl std::fmt::Debug for SharedServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedServerConfig")
    }
}

impl SharedServerConfig {
    pub fn new(config: Arc<ServerConfig>) -> SharedServerConfig {
        SharedServerConfig(Arc::new(RwLock::new(config)))
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.0.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `config` in force for the next connections.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        match self.0.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }
}

/// The subject common name of a certificate (DER). The error says what is wrong.
pub fn subject_common_name(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let cn =
        cert.subject().iter_common_name().next().ok_or_else(|| "certificate subject has no common name".to_owned())?;
    let name = cn.as_str().map_err(|e| format!("certificate common name is not text: {e}"))?;
    Ok(name.to_owned())
}

/// `notAfter` of the first certificate in a PEM file, as Unix seconds.
pub fn cert_not_after(path: &Path) -> Result<i64, TlsError> {
    let certs = load_certs(path)?;
    let first = certs.first().ok_or_else(|| file_err(path, "no certificate"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(first.as_ref())
        .map_err(|e| file_err(path, format!("cannot parse the certificate: {e}")))?;
    Ok(parsed.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn files_that_are_not_pem_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = write(dir.path(), "bad.pem", "hello");
        let e = load_certs(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.pem") && e.contains("no certificate"), "{e}");
        let e = load_key(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.pem") && e.contains("private key"), "{e}");
        let e = load_certs(&dir.path().join("missing.pem")).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let broken = write(dir.path(), "broken.pem", "-----BEGIN CERTIFICATE-----\ngarbage\n");
        let e = load_certs(&broken).unwrap_err().to_string();
        assert!(e.contains("broken.pem") && e.contains("not a PEM certificate file"), "{e}");
        for e in [
            server_config(&broken, &bad, None, &[]).unwrap_err().to_string(),
            server_config(&bad, &bad, Some(&broken), &[]).unwrap_err().to_string(),
            client_config(&broken, &bad, &bad).unwrap_err().to_string(),
        ] {
            assert!(e.contains("broken.pem"), "{e}");
        }
    }

    #[test]
    fn certificates_keys_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "test ca");
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let issue = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            (params.signed_by(&key, &issuer).unwrap(), key)
        };
        let (a, a_key) = issue("face-1");
        let (_, b_key) = issue("face-2");
        let ca_pem = write(dir.path(), "ca.pem", &ca.pem());
        let a_pem = write(dir.path(), "a.pem", &a.pem());
        let a_key_pem = write(dir.path(), "a.key", &a_key.serialize_pem());
        let b_key_pem = write(dir.path(), "b.key", &b_key.serialize_pem());

        assert_eq!(subject_common_name(a.der()).as_deref(), Ok("face-1"));
        assert!(subject_common_name(b"not a certificate").unwrap_err().contains("unreadable certificate"));
        assert!(cert_not_after(&a_pem).unwrap() > jiff::Timestamp::now().as_second());

        let server = server_config(&a_pem, &a_key_pem, Some(&ca_pem), &[b"http/1.1"]).unwrap();
        assert_eq!(server.alpn_protocols, [b"http/1.1".to_vec()]);
        assert!(server_config(&a_pem, &a_key_pem, None, &[]).unwrap().alpn_protocols.is_empty());
        assert!(client_config(&ca_pem, &a_pem, &a_key_pem).is_ok());
        // A key that is not the certificate's: both files are named.
        for e in [
            client_config(&ca_pem, &a_pem, &b_key_pem).unwrap_err().to_string(),
            server_config(&a_pem, &b_key_pem, None, &[]).unwrap_err().to_string(),
        ] {
            assert!(e.contains("b.key") && e.contains("a.pem"), "{e}");
        }
    }
}
