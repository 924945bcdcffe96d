//! What a running driver task is given ([`DriverContext`]), and how it ends ([`DriverError`]).
//!
//! A driver task runs until its cancellation token fires. It returns `Ok(())` on cancellation and an error when its device
//! link failed in a way it cannot retry by itself; the daemon's supervisor then restarts it with backoff.

use tokio_util::sync::CancellationToken;

use crate::config::DeviceConfig;
use crate::sink::PunchSink;
use crate::status::StatusBoard;
use crate::telemetry::DriverMetrics;

/// Everything a driver task needs: its device, where punches go, when to stop, where to count.
#[derive(Clone, Debug)]
pub struct DriverContext {
    pub device: DeviceConfig,
    pub sink: PunchSink,
    pub cancel: CancellationToken,
    pub metrics: DriverMetrics,
    /// Where the driver reports online state, errors and reconnects.
    pub status: StatusBoard,
    /// The site time zone: device-local times are read in it (unless the device has its own `timezone`).
    pub timezone: jiff::tz::TimeZone,
    /// What the store already holds of this device (for drivers that read a device's log after a reconnect).
    pub history: crate::history::History,
    /// The roster people to keep on the device, for drivers that put users on their terminals (`zk4370`).
    pub people: crate::people::PeopleFeed,
}

/// Why a driver task stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("device {device}: {message}")]
    Device { device: String, message: String },
    #[error("device {device}: {context}: {source}")]
    Io {
        device: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
}
