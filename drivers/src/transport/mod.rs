//! Transports: one byte stream for a serial driver, whatever carries it.
//!
//! - [`serial`]: a local serial port through tokio-serial (8N1, no flow control, exclusive open), which includes the
//!   kernel's `/dev/rfcommN` Bluetooth SPP links;
//! - [`tcp`]: a TCP serial device server (`tcp://HOST:PORT`), the usual way a factory floor puts RS-232 on the network;
//! - [`rfcomm`]: a direct Bluetooth RFCOMM socket to a device address (`rfcomm://AA:BB:CC:DD:EE:FF/CHANNEL`).
//!
//! [`Link`] wraps [`open`] with the reconnect policy every serial driver shares: retry with jittered exponential backoff
//! ([`Backoff::link`]), report online state, the last error and reconnects to the [`StatusBoard`], and log a failure
//! once per change instead of once per attempt. A device that is unplugged, powered off or out of range is retried forever (until cancelled) and
//! its driver resumes on the next successful open, without the daemon or the driver task restarting.

pub mod rfcomm;
pub mod serial;
pub mod tcp;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, Retries};
use crate::config::PortSpec;
use crate::status::StatusBoard;

/// A bidirectional byte stream to a device.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// The stream a driver talks over.
pub type Stream = Box<dyn ByteStream>;

/// Why a device link could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("open serial port {port}: {source}")]
    Serial {
        port: String,
        #[source]
        source: tokio_serial::Error,
    },
    #[error("connect to serial server {target}: {source}")]
    Tcp {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {target}: no answer within {timeout:?}")]
    Timeout { target: String, timeout: Duration },
    #[error(
        "Bluetooth RFCOMM {target}: this machine has no Bluetooth support (the kernel refused an AF_BLUETOOTH socket: \
         {source}); load the bluetooth and rfcomm kernel modules, or bind the device to /dev/rfcommN and use that path"
    )]
    NoBluetooth {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Bluetooth RFCOMM {target}: {source}")]
    Rfcomm {
        target: String,
        #[source]
        source: std::io::Error,
    },
}

/// Opens the link described by `spec`. `baud` applies to local serial ports; `connect_timeout` bounds TCP and RFCOMM
/// connection attempts.
pub async fn open(spec: &PortSpec, baud: u32, connect_timeout: Duration) -> Result<Stream, TransportError> {
    match spec {
        PortSpec::Serial(path) => serial::open(path, baud),
        PortSpec::Tcp { host, port } => tcp::connect(host, *port, connect_timeout).await,
        PortSpec::Rfcomm { address, channel } => rfcomm::connect(*address, *channel, connect_timeout).await,
    }
}

/// The reconnecting link of one device: opens its transport, reports status, backs off between failures.
#[derive(Debug)]
pub struct Link {
    spec: PortSpec,
    baud: u32,
    connect_timeout: Duration,
    device: String,
    driver: &'static str,
    status: StatusBoard,
    backoff: Retries,
    ever_connected: bool,
    last_logged: Option<String>,
}

impl Link {
    pub fn new(
        spec: PortSpec,
        baud: u32,
        connect_timeout: Duration,
        device: &str,
        driver: &'static str,
        status: StatusBoard,
    ) -> Link {
        Link {
            spec,
            baud,
            connect_timeout,
            device: device.to_owned(),
            driver,
            status,
            backoff: Retries::new(Backoff::link()),
            ever_connected: false,
            last_logged: None,
        }
    }

    pub fn spec(&self) -> &PortSpec {
        &self.spec
    }

    /// Opens the link, retrying with backoff. `None` when cancelled first.
    ///
    /// Cancel-safe: dropping the future drops at most a half-open connection attempt.
    pub async fn connect(&mut self, cancel: &CancellationToken) -> Option<Stream> {
        loop {
            let attempt = tokio::select! {
                r = open(&self.spec, self.baud, self.connect_timeout) => r,
                _ = cancel.cancelled() => return None,
            };
            match attempt {
                Ok(stream) => {
                    if self.ever_connected {
                        self.status.reconnected(&self.device, self.driver);
                    }
                    self.ever_connected = true;
                    tracing::info!(device = %self.device, driver = self.driver, port = %self.spec, "device link open");
                    return Some(stream);
                }
                Err(e) => self.failed(&e.to_string(), matches!(e, TransportError::NoBluetooth { .. })),
            }
            let delay = self.backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => return None,
            }
        }
    }

    /// Records that an open session ended with `error` after running `lasted`.
    pub fn lost(&mut self, error: &str, lasted: Duration) {
        self.status.set_online(&self.device, self.driver, false);
        // A session shorter than the policy's `stable_after` does not reset the backoff: a device that accepts the
        // link and then drops it at once is retried with growing delays rather than in a tight loop.
        if self.backoff.ran_for(lasted) {
            self.last_logged = None;
        }
        self.failed(error, false);
    }

    /// Marks the device online (after its handshake succeeded).
    pub fn online(&mut self, detail: Option<String>) {
        self.status.set_online(&self.device, self.driver, true);
        if let Some(detail) = detail {
            self.status.detail(&self.device, self.driver, detail);
        }
        self.last_logged = None;
    }

    fn failed(&mut self, error: &str, operator_must_act: bool) {
        self.status.error(&self.device, self.driver, error);
        if self.last_logged.as_deref() != Some(error) {
            if operator_must_act {
                tracing::error!(device = %self.device, driver = self.driver, error, "device link unavailable; retrying");
            } else {
                tracing::warn!(device = %self.device, driver = self.driver, error, "device link down; retrying with backoff");
            }
            self.last_logged = Some(error.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn link_retries_until_cancelled_and_reports_the_error() {
        let status = StatusBoard::new(crate::telemetry::DriverMetrics::default());
        let spec = PortSpec::Serial("/nonexistent/ttyGATEWAYD".into());
        let mut link = Link::new(spec, 115_200, Duration::from_millis(100), "d1", "pn532", status.clone());
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let board = status.clone();
        tokio::spawn(async move {
            while board.get("d1").and_then(|s| s.last_error).is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            c.cancel();
        });
        assert!(link.connect(&cancel).await.is_none());
        let err = status.get("d1").and_then(|s| s.last_error).unwrap_or_default();
        assert!(err.contains("/nonexistent/ttyGATEWAYD"), "{err}");
    }
}
