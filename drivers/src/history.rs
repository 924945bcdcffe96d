//! What the durable store can tell a driver about the punches it already holds of its device.
//!
//! A driver that reads a device's own log after a reconnect (the 4370 terminals) asks for the latest stored device time
//! of its device, and submits only what is newer (with an overlap: punch ids make a re-read harmless, the bound only
//! keeps it short). The daemon implements [`StoredPunches`] over its store; without one (tests, tools) there is no
//! history and a driver reads the whole log.

use std::fmt;
use std::sync::Arc;

/// A read of the store, implemented by the daemon. Calls may block on disk I/O; [`History`] runs them off the runtime.
pub trait StoredPunches: Send + Sync {
    /// The latest device time (Unix milliseconds) of a stored punch of `device`, or `None` when none is stored.
    fn latest_device_time(&self, device: &str) -> Result<Option<i64>, String>;

    /// How many punches of `device` the store holds with device time in `[from_ms, to_ms)`.
    fn count_between(&self, device: &str, from_ms: i64, to_ms: i64) -> Result<u64, String>;
}

/// A handle on the store's history for drivers. Cheap to clone; `Default` is no history.
#[derive(Clone, Default)]
pub struct History(Option<Arc<dyn StoredPunches>>);

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "History(store)" } else { "History(none)" })
    }
}

impl History {
    pub fn new(store: impl StoredPunches + 'static) -> History {
        History(Some(Arc::new(store)))
    }

    /// See [`StoredPunches::latest_device_time`]; `Ok(None)` without a store.
    pub async fn latest_device_time(&self, device: &str) -> Result<Option<i64>, String> {
        let Some(store) = self.0.clone() else { return Ok(None) };
        let device = device.to_owned();
        tokio::task::spawn_blocking(move || store.latest_device_time(&device))
            .await
            .map_err(|e| format!("store read task failed: {e}"))?
    }

    /// See [`StoredPunches::count_between`]; `Ok(0)` without a store.
    pub async fn count_between(&self, device: &str, from_ms: i64, to_ms: i64) -> Result<u64, String> {
        let Some(store) = self.0.clone() else { return Ok(0) };
        let device = device.to_owned();
        tokio::task::spawn_blocking(move || store.count_between(&device, from_ms, to_ms))
            .await
            .map_err(|e| format!("store read task failed: {e}"))?
    }
}
