//! The TLS listener for devices (rustls 0.23 through tokio-rustls 0.26, the gateway's own TLS stack; rumqttd's
//! `use-rustls` feature would bring rustls 0.22 and reads the tenant from the certificate's Organization, which cannot
//! hold our device ids, so the front terminates TLS itself).
//!
//! With a `client_ca`, a client certificate chaining to it is required and its subject common name is the device id:
//! "a client certificate issued to the device is enough" (SPEC 3.1). Without one, devices log in with their password
//! over TLS.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS listener cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("mqtt tls: {0}")]
    Rustls(String),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.display().to_string(), message: message.to_string() }
}

/// Loads the certificate chain, key and optional client CA into an acceptor.
pub fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no PEM certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let config = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(ca, e))? {
                roots.add(c.map_err(|e| file_err(ca, e))?).map_err(|e| file_err(ca, e))?;
            }
            if roots.is_empty() {
                return Err(file_err(ca, "no PEM certificate in the file"));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_err(ca, e))?;
            builder.with_client_cert_verifier(verifier).with_single_cert(chain, key)
        }
        None => builder.with_no_client_auth().with_single_cert(chain, key),
    }
    .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The acceptor of the TLS listener, replaceable while it runs (certificate rotation on SIGHUP). Each accepted
/// connection takes the acceptor in force at that moment.
#[derive(Clone)]
pub struct SharedAcceptor(Arc<RwLock<tokio_rustls::TlsAcceptor>>);

impl std::fmt::Debug for SharedAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedAcceptor")
    }
}

impl SharedAcceptor {
    pub fn new(acceptor: tokio_rustls::TlsAcceptor) -> SharedAcceptor {
        SharedAcceptor(Arc::new(RwLock::new(acceptor)))
    }

    /// The acceptor in force.
    pub fn current(&self) -> tokio_rustls::TlsAcceptor {
        match self.0.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `acceptor` in force for the next connections.
    pub fn replace(&self, acceptor: tokio_rustls::TlsAcceptor) {
        match self.0.write() {
            Ok(mut a) => *a = acceptor,
            Err(poisoned) => *poisoned.into_inner() = acceptor,
        }
    }
}

/// The device id a (verified) client certificate names: its subject common name.
pub fn device_id_of(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let cn =
        cert.subject().iter_common_name().next().ok_or_else(|| "certificate subject has no common name".to_owned())?;
    let id = cn.as_str().map_err(|e| format!("certificate common name is not text: {e}"))?;
    crate::config::valid_device_id(id).map_err(|e| format!("certificate common name: {e}"))?;
    Ok(id.to_owned())
}
