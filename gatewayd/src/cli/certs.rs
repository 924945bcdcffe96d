//! `gatewayd certs dev`: throwaway certificates for trying mutual TLS (the upstream link, the API, MQTT devices).
//!
//! [`DevPki`] is a development certificate authority held in memory; it issues server certificates (with the names and
//! addresses given as subject alternative names) and client certificates (the common name is the client's identity,
//! e.g. the gateway id). [`write_dev_set`] writes a complete set into a directory:
//!
//! | file         | what                                                          |
//! |--------------|---------------------------------------------------------------|
//! | `ca.pem`     | the development CA certificate (trust anchor of both sides)    |
//! | `ca.key`     | its private key (to issue more certificates; keep it private) |
//! | `server.pem` | server certificate for `localhost` and `127.0.0.1` / `::1`     |
//! | `server.key` | its private key                                               |
//! | `client.pem` | client certificate (CN = the client name)                     |
//! | `client.key` | its private key                                               |
//!
//! Private keys are written with mode 0600. These certificates are for development and tests only: the CA key sits next
//! to the certificates it signed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation ({what}): {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("validity: {0}")]
    Validity(String),
}

/// When a certificate is valid, in whole days relative to today (UTC): `from_days = -1, to_days = 365` is "from
/// yesterday for a year"; a negative `to_days` makes an already expired certificate (for tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub from_days: i32,
    pub to_days: i32,
}

impl Validity {
    /// From yesterday for `days` days.
    pub fn days(days: i32) -> Validity {
        Validity { from_days: -1, to_days: days }
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), CertError> {
        let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date();
        let ymd = |offset: i32| -> Result<(i32, u8, u8), CertError> {
            let d =
                today.checked_add(jiff::Span::new().days(offset)).map_err(|e| CertError::Validity(e.to_string()))?;
            let month = u8::try_from(d.month()).map_err(|e| CertError::Validity(e.to_string()))?;
            let day = u8::try_from(d.day()).map_err(|e| CertError::Validity(e.to_string()))?;
            Ok((i32::from(d.year()), month, day))
        };
        let (y, m, d) = ymd(self.from_days)?;
        params.not_before = rcgen::date_time_ymd(y, m, d);
        let (y, m, d) = ymd(self.to_days)?;
        params.not_after = rcgen::date_time_ymd(y, m, d);
        Ok(())
    }
}

/// A certificate and its private key, PEM encoded.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem.len()).field("key_pem", &"(secret)").finish()
    }
}

/// A development certificate authority in memory.
pub struct DevPki {
    issuer: Issuer<'static, KeyPair>,
    ca_cert_pem: String,
    ca_key_pem: String,
}

impl std::fmt::Debug for DevPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPki").finish_non_exhaustive()
    }
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> CertError + '_ {
    move |source| CertError::Generate { what: what.to_owned(), source }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "gatewayd development");
    dn.push(DnType::CommonName, common_name);
    dn
}

impl DevPki {
    /// A new CA named `name`, valid for ten years.
    pub fn new(name: &str) -> Result<DevPki, CertError> {
        DevPki::with_validity(name, Validity::days(3650))
    }

    pub fn with_validity(name: &str, validity: Validity) -> Result<DevPki, CertError> {
        let key = KeyPair::generate().map_err(gen_err("CA key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err("CA"))?;
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity.apply(&mut params)?;
        let cert = params.self_signed(&key).map_err(gen_err("CA certificate"))?;
        let ca_key_pem = key.serialize_pem();
        Ok(DevPki { issuer: Issuer::new(params, key), ca_cert_pem: cert.pem(), ca_key_pem })
    }

    /// The CA certificate (PEM), the trust anchor to configure on both sides.
    pub fn ca_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The CA private key (PEM).
    pub fn ca_key_pem(&self) -> &str {
        &self.ca_key_pem
    }

    /// A server certificate for these DNS names and IP addresses.
    pub fn server(&self, names: &[&str], validity: Validity) -> Result<Issued, CertError> {
        let key = KeyPair::generate().map_err(gen_err("server key"))?;
        let sans: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans).map_err(gen_err("server certificate names"))?;
        params.distinguished_name = dn(names.first().copied().unwrap_or("localhost"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity.apply(&mut params)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err("server certificate"))?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A client certificate whose common name is `name`.
    pub fn client(&self, name: &str, validity: Validity) -> Result<Issued, CertError> {
        let key = KeyPair::generate().map_err(gen_err("client key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err("client certificate"))?;
        params.distinguished_name = dn(name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity.apply(&mut params)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err("client certificate"))?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// The paths of a development set written by [`write_dev_set`].
#[derive(Clone, Debug)]
pub struct DevSet {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Writes a file; `secret` files get mode 0600.
pub fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io { path: path.to_owned(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Generates a CA, a server certificate (`localhost`, `127.0.0.1`, `::1`) and a client certificate named `client_name`,
/// all valid for `days` days, and writes them into `dir` (created if missing).
pub fn write_dev_set(dir: &Path, client_name: &str, days: i32) -> Result<DevSet, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io { path: dir.to_owned(), source })?;
    let pki = DevPki::new("gatewayd development CA")?;
    let server = pki.server(&["localhost", "127.0.0.1", "::1"], Validity::days(days))?;
    let client = pki.client(client_name, Validity::days(days))?;
    let set = DevSet {
        ca: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    write_file(&set.ca, pki.ca_pem(), false)?;
    write_file(&set.ca_key, pki.ca_key_pem(), true)?;
    write_file(&set.server_cert, &server.cert_pem, false)?;
    write_file(&set.server_key, &server.key_pem, true)?;
    write_file(&set.client_cert, &client.cert_pem, false)?;
    write_file(&set.client_key, &client.key_pem, true)?;
    Ok(set)
}

/// `gatewayd certs dev`: writes a development set into `out` and prints where each file is and how to use it.
pub fn execute(out: &Path, client_name: &str, days: i32) -> Result<(), super::CliError> {
    let set = write_dev_set(out, client_name, days)?;
    println!("wrote a development CA and certificates (valid {days} days) to {}:", out.display());
    for (what, path) in [
        ("CA certificate (trust anchor)", &set.ca),
        ("CA key (keep private)", &set.ca_key),
        ("server certificate (localhost, 127.0.0.1, ::1)", &set.server_cert),
        ("server key", &set.server_key),
        (&format!("client certificate (CN={client_name})"), &set.client_cert),
        ("client key", &set.client_key),
    ] {
        println!("  {:<48} {}", what, path.display());
    }
    println!("\ntry it:\n  gatewayd upstream-sink --listen 127.0.0.1:8443 --ca {ca} --cert {sc} --key {sk} --out received.jsonl",
        ca = set.ca.display(), sc = set.server_cert.display(), sk = set.server_key.display());
    println!("and in gatewayd.toml:\n  [upstream]\n  url = \"https://localhost:8443\"\n  ca = \"{ca}\"\n  cert = \"{cc}\"\n  key = \"{ck}\"",
        ca = set.ca.display(), cc = set.client_cert.display(), ck = set.client_key.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_a_complete_set_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let set = write_dev_set(&dir.path().join("certs"), "plant-a-gw1", 30).unwrap();
        for p in [&set.ca, &set.server_cert, &set.client_cert] {
            assert!(std::fs::read_to_string(p).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        }
        for p in [&set.ca_key, &set.server_key, &set.client_key] {
            assert!(std::fs::read_to_string(p).unwrap().contains("PRIVATE KEY"));
            assert_eq!(std::fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let days = crate::upstream::tls::cert_days_left(&set.client_cert, jiff::Timestamp::now()).unwrap();
        assert!((29..=30).contains(&days), "{days}");
    }

    #[test]
    fn expired_validity_is_in_the_past() {
        let pki = DevPki::new("t").unwrap();
        let old = pki.client("c", Validity { from_days: -30, to_days: -2 }).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.pem");
        std::fs::write(&path, old.cert_pem).unwrap();
        assert!(crate::upstream::tls::cert_days_left(&path, jiff::Timestamp::now()).unwrap() < 0);
    }
}
