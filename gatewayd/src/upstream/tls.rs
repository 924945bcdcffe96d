//! TLS material for the upstream link and the reference receiver: the loaders of `drivers::tls` (PEM files, rustls
//! configurations), the receiver's server configuration and certificate expiry.
//!
//! Both sides use rustls 0.23 with the ring provider, TLS 1.3 and 1.2 only. The gateway (client) trusts exactly the CA
//! in `upstream.ca` (pinned: the system roots are never consulted) and checks the server name from the URL; it presents
//! its own certificate. The receiver requires a client certificate chaining to its `--ca`.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;

pub use drivers::tls::{cert_not_after, client_config, load_certs, load_key, provider, TlsError};

/// The receiver's server configuration: requires client certificates chaining to `client_ca`, speaks HTTP/1.1.
pub fn server_config(client_ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    drivers::tls::server_config(cert, key, Some(client_ca), &[b"http/1.1"])
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
    use crate::cli::certs::{DevPki, Validity};

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
