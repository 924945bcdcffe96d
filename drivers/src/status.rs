//! Device status: online state, last seen, last error, reconnects — per configured device.
//!
//! Drivers report here; `/metrics` (through [`DriverMetrics`]) and the devices API read it. The board is a small map
//! behind a lock that is held only to copy a few fields, never across an await.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::telemetry::DriverMetrics;

/// What the gateway knows about one device right now.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeviceStatus {
    pub driver: String,
    pub online: bool,
    /// Unix milliseconds of the last message from the device.
    pub last_seen_ms: Option<i64>,
    /// The last link or protocol error, for operators.
    pub last_error: Option<String>,
    pub reconnects: u64,
    /// Driver-specific one-line detail (firmware, remote address, serial number).
    pub detail: Option<String>,
}

/// The status of every device. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StatusBoard {
    devices: Arc<RwLock<BTreeMap<String, DeviceStatus>>>,
    metrics: DriverMetrics,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl StatusBoard {
    pub fn new(metrics: DriverMetrics) -> StatusBoard {
        StatusBoard { devices: Arc::default(), metrics }
    }

    fn update(&self, device: &str, driver: &str, f: impl FnOnce(&mut DeviceStatus)) {
        if let Ok(mut map) = self.devices.write() {
            let entry = map.entry(device.to_owned()).or_default();
            if entry.driver.is_empty() {
                entry.driver = driver.to_owned();
            }
            f(entry);
        }
    }

    /// Registers a configured device (offline until it connects).
    pub fn register(&self, device: &str, driver: &str) {
        self.update(device, driver, |_| {});
        self.metrics.set_online(driver, device, false);
    }

    /// Forgets a device removed from the configuration.
    pub fn remove(&self, device: &str) {
        if let Ok(mut map) = self.devices.write() {
            map.remove(device);
        }
    }

    pub fn set_online(&self, device: &str, driver: &str, online: bool) {
        self.update(device, driver, |s| {
            s.online = online;
            s.last_seen_ms = Some(now_ms());
        });
        self.metrics.set_online(driver, device, online);
    }

    pub fn seen(&self, device: &str, driver: &str) {
        self.update(device, driver, |s| s.last_seen_ms = Some(now_ms()));
    }

    pub fn error(&self, device: &str, driver: &str, error: impl Into<String>) {
        let error = error.into();
        self.update(device, driver, |s| s.last_error = Some(error));
    }

    pub fn reconnected(&self, device: &str, driver: &str) {
        self.update(device, driver, |s| s.reconnects += 1);
        self.metrics.reconnected(driver, device);
    }

    pub fn detail(&self, device: &str, driver: &str, detail: impl Into<String>) {
        let detail = detail.into();
        self.update(device, driver, |s| s.detail = Some(detail));
    }

    pub fn get(&self, device: &str) -> Option<DeviceStatus> {
        self.devices.read().ok().and_then(|m| m.get(device).cloned())
    }

    /// Every device's status, by id.
    pub fn snapshot(&self) -> Vec<(String, DeviceStatus)> {
        self.devices.read().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_online_and_errors() {
        let board = StatusBoard::new(DriverMetrics::default());
        board.register("d1", "pn532");
        assert_eq!(board.get("d1").map(|s| s.online), Some(false));
        board.set_online("d1", "pn532", true);
        board.error("d1", "pn532", "read timeout");
        board.reconnected("d1", "pn532");
        let s = board.get("d1").unwrap_or_default();
        assert!(s.online && s.last_seen_ms.is_some());
        assert_eq!((s.last_error.as_deref(), s.reconnects), (Some("read timeout"), 1));
        board.remove("d1");
        assert!(board.get("d1").is_none());
    }
}
