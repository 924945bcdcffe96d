//! The TLS listener for devices (rustls 0.23 through tokio-rustls 0.26, the gateway's own TLS stack, loaded by
//! [`crate::tls`]; rumqttd's `use-rustls` feature would bring rustls 0.22 and reads the tenant from the certificate's
//! Organization, which cannot hold our device ids, so the front terminates TLS itself).
//!
//! With a `client_ca`, a client certificate chaining to it is required and its subject common name is the device id:
//! "a client certificate issued to the device is enough" (SPEC 3.1). Without one, devices log in with their password
//! over TLS.

use std::path::Path;
use std::sync::Arc;

pub use crate::tls::{SharedServerConfig, TlsError};

/// Loads the certificate chain, key and optional client CA into the listener's server configuration (no ALPN).
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    crate::tls::server_config(cert, key, client_ca, &[])
}

/// The device id a (verified) client certificate names: its subject common name.
pub fn device_id_of(der: &[u8]) -> Result<String, String> {
    let id = crate::tls::subject_common_name(der)?;
    crate::config::valid_device_id(&id).map_err(|e| format!("certificate common name: {e}"))?;
    Ok(id)
}
