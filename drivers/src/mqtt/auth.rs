//! Who may connect: the `mqtt` devices of the current configuration and their secrets.
//!
//! The table is replaced as a whole on every configuration reload ([`Credentials::update`]); every open device connection
//! watches the table's revision and closes itself when its device was removed or its secret changed. Passwords are
//! compared in constant time (`subtle`); an unknown username is compared against a dummy secret so it takes as long as a
//! known one.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::config::{DeviceConfig, DriverKind, Secret};

/// The credentials of every configured MQTT device. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Credentials {
    table: Arc<RwLock<HashMap<String, Secret>>>,
    revision: Arc<watch::Sender<u64>>,
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials { table: Arc::default(), revision: Arc::new(watch::channel(0).0) }
    }
}

/// Compares a password with a secret in constant time (for equal lengths; the length itself is not hidden).
pub fn password_matches(secret: &Secret, password: &[u8]) -> bool {
    bool::from(secret.expose().as_bytes().ct_eq(password))
}

impl Credentials {
    pub fn new(devices: &[DeviceConfig]) -> Credentials {
        let c = Credentials::default();
        c.update(devices);
        c
    }

    /// Replaces the table with the `mqtt` devices in `devices`; returns the ids added and removed.
    pub fn update(&self, devices: &[DeviceConfig]) -> (Vec<String>, Vec<String>) {
        let new: HashMap<String, Secret> = devices
            .iter()
            .filter(|d| d.driver == DriverKind::Mqtt)
            .filter_map(|d| d.secret.clone().map(|s| (d.id.clone(), s)))
            .collect();
        let (added, removed) = match self.table.write() {
            Ok(mut table) => {
                let added = new.keys().filter(|k| !table.contains_key(*k)).cloned().collect();
                let removed = table.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
                *table = new;
                (added, removed)
            }
            Err(_) => (Vec::new(), Vec::new()),
        };
        self.revision.send_modify(|r| *r += 1);
        (added, removed)
    }

    /// True when `device` is configured and `password` is its secret.
    pub fn check(&self, device: &str, password: &[u8]) -> bool {
        let Ok(table) = self.table.read() else { return false };
        match table.get(device) {
            Some(secret) => password_matches(secret, password),
            None => {
                let _ = password_matches(&Secret::new("not-a-device-secret"), password);
                false
            }
        }
    }

    /// True when `device` is a configured MQTT device (certificate logins on the TLS listener).
    pub fn knows(&self, device: &str) -> bool {
        self.table.read().map(|t| t.contains_key(device)).unwrap_or(false)
    }

    /// The current secret of `device`, to notice later whether it changed.
    pub fn secret_of(&self, device: &str) -> Option<Secret> {
        self.table.read().ok().and_then(|t| t.get(device).cloned())
    }

    /// Changes whenever the table is replaced.
    pub fn revisions(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, secret: &str) -> DeviceConfig {
        let text = format!("id = \"{id}\"\ndriver = \"mqtt\"\nsecret = \"{secret}\"\n");
        toml_like(&text)
    }

    fn toml_like(text: &str) -> DeviceConfig {
        // The drivers crate has no TOML parser; build the struct through serde_json instead.
        let mut map = serde_json::Map::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(" = ") {
                map.insert(k.into(), serde_json::Value::String(v.trim_matches('"').into()));
            }
        }
        serde_json::from_value(serde_json::Value::Object(map)).unwrap()
    }

    #[test]
    fn checks_and_reloads() {
        let creds = Credentials::new(&[device("a", "secret-a1")]);
        assert!(creds.check("a", b"secret-a1"));
        assert!(!creds.check("a", b"secret-a2"));
        assert!(!creds.check("a", b""));
        assert!(!creds.check("b", b"secret-a1"));
        let rev = creds.revisions();
        let (added, removed) = creds.update(&[device("b", "secret-b1")]);
        assert_eq!((added, removed), (vec!["b".to_owned()], vec!["a".to_owned()]));
        assert!(rev.has_changed().unwrap());
        assert!(!creds.check("a", b"secret-a1"));
        assert!(creds.check("b", b"secret-b1"));
        assert!(creds.knows("b") && !creds.knows("a"));
    }
}
