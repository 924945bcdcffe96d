//! The ingest interface between drivers and the durable punch store.
//!
//! A driver builds a [`DevicePunch`] from what the device said and calls [`PunchSink::submit`] (or
//! [`PunchSink::submit_many`] for a batch such as an ADMS upload). The call returns once the store has flushed the punch to
//! disk ([`Outcome::Stored`]) or decided it cannot be stored ([`Outcome::Rejected`]). The channel behind the sink is bounded,
//! so a store that falls behind slows the drivers down, and the drivers slow the devices down, instead of memory growing.
//!
//! Cancel safety: dropping the future returned by `submit` does not cancel the write. A punch that reached the channel is
//! stored; the device simply sees no answer and re-sends, which the store recognises by `punch_id`.

use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::telemetry::DriverMetrics;

/// How a person identified themselves (SPEC section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Face,
    Fingerprint,
    Card,
    Pin,
    Password,
    Palm,
    Gps,
    Qr,
    Makeup,
    /// A device verify code with no single method (ZKTeco code 0 and combinations); the code is kept.
    Other,
    /// A phone on the site's Wi-Fi: the access point's BSSID is kept in the punch's `bssid` attribute.
    Wifi,
}

impl Method {
    pub const ALL: [Method; 11] = [
        Method::Face,
        Method::Fingerprint,
        Method::Card,
        Method::Pin,
        Method::Password,
        Method::Palm,
        Method::Gps,
        Method::Qr,
        Method::Makeup,
        Method::Other,
        Method::Wifi,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Face => "face",
            Method::Fingerprint => "fingerprint",
            Method::Card => "card",
            Method::Pin => "pin",
            Method::Password => "password",
            Method::Palm => "palm",
            Method::Gps => "gps",
            Method::Qr => "qr",
            Method::Makeup => "makeup",
            Method::Other => "other",
            Method::Wifi => "wifi",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who the device says punched.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// The device resolved the person itself (face terminals, ADMS PINs).
    Employee(String),
    /// A credential the roster resolves: a card UID, `fp:{page}`, a face id.
    Credential(String),
}

/// A GPS fix attached to a punch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GeoPoint {
    pub lat: f64,
    pub lng: f64,
    pub accuracy_m: Option<f64>,
}

/// One identification event as a device reported it, before the store gives it a `punch_id`.
#[derive(Clone, Debug, PartialEq)]
pub struct DevicePunch {
    /// The configured device id.
    pub device_id: String,
    /// The device's own number for this punch, when it numbers them (MQTT `seq`). Makes the punch id.
    pub device_seq: Option<u64>,
    pub method: Method,
    pub subject: Subject,
    /// The time the device says the punch happened, as Unix milliseconds (already read in the site time zone).
    pub device_time_ms: i64,
    /// When the gateway received it, as Unix milliseconds.
    pub received_time_ms: i64,
    /// True when the device reports as punches happen (so device and arrival time should agree); false for backlogs.
    pub realtime: bool,
    pub geo: Option<GeoPoint>,
    /// Match score as the device reports it (face similarity 0..1, fingerprint score).
    pub score: Option<f32>,
    /// Device-specific raw facts kept as evidence, for example the ADMS in/out status and verify code.
    pub attributes: Vec<(String, String)>,
}

/// Why a punch was not stored. The text is what the device is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The punch failed a check (time out of range, missing field); `reason` says which.
    Invalid(String),
    /// The disk budget is reached: the device must keep the punch and retry later.
    StoreFull,
    /// The store could not write or flush; the device must retry.
    StoreFailed(String),
    /// The gateway is shutting down; the device must retry.
    ShuttingDown,
}

impl Rejection {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Invalid(_) => "invalid",
            Rejection::StoreFull => "store_full",
            Rejection::StoreFailed(_) => "store_failed",
            Rejection::ShuttingDown => "shutting_down",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Invalid(reason) => write!(f, "{reason}"),
            Rejection::StoreFull => f.write_str("gateway disk budget reached: keep the punch and retry later"),
            Rejection::StoreFailed(reason) => write!(f, "gateway store failed, retry later: {reason}"),
            Rejection::ShuttingDown => f.write_str("gateway is shutting down, retry later"),
        }
    }
}

/// The answer for one submitted punch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Durable on disk. `duplicate` is true when the store already had this `punch_id` (a re-send).
    Stored {
        punch_id: String,
        duplicate: bool,
    },
    Rejected(Rejection),
}

impl Outcome {
    pub fn is_stored(&self) -> bool {
        matches!(self, Outcome::Stored { .. })
    }
}

/// One message on the ingest channel: punches and where to send their outcomes (same order).
#[derive(Debug)]
pub struct IngestRequest {
    /// The driver that submitted the punches (stored with each punch).
    pub driver: &'static str,
    pub punches: Vec<DevicePunch>,
    pub reply: oneshot::Sender<Vec<Outcome>>,
}

/// The sending half of the ingest channel, labelled with the driver that uses it. Cheap to clone.
#[derive(Clone)]
pub struct PunchSink {
    tx: mpsc::Sender<IngestRequest>,
    driver: &'static str,
    metrics: DriverMetrics,
}

impl fmt::Debug for PunchSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PunchSink").field("driver", &self.driver).finish()
    }
}

impl PunchSink {
    /// Creates the ingest channel with room for `capacity` requests. The receiver goes to the store's writer.
    pub fn channel(capacity: usize, metrics: DriverMetrics) -> (PunchSink, mpsc::Receiver<IngestRequest>) {
        let (tx, rx) = mpsc::channel(capacity);
        (PunchSink { tx, driver: "unknown", metrics }, rx)
    }

    /// The same channel, labelled for `driver` in metrics.
    pub fn for_driver(&self, driver: &'static str) -> PunchSink {
        PunchSink { tx: self.tx.clone(), driver, metrics: self.metrics.clone() }
    }

    pub fn driver(&self) -> &'static str {
        self.driver
    }

    pub fn metrics(&self) -> &DriverMetrics {
        &self.metrics
    }

    /// Submits one punch and waits until it is durable or rejected.
    pub async fn submit(&self, punch: DevicePunch) -> Outcome {
        self.submit_many(vec![punch]).await.pop().unwrap_or(Outcome::Rejected(Rejection::ShuttingDown))
    }

    /// Submits punches together (one group commit) and waits for all of them. Outcomes come in input order.
    pub async fn submit_many(&self, punches: Vec<DevicePunch>) -> Vec<Outcome> {
        if punches.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        let devices: Vec<String> = punches.iter().map(|p| p.device_id.clone()).collect();
        for device in &devices {
            self.metrics.received(self.driver, device);
        }
        let n = punches.len();
        let (reply, rx) = oneshot::channel();
        let outcomes = match self.tx.send(IngestRequest { driver: self.driver, punches, reply }).await {
            Ok(()) => rx.await.unwrap_or_else(|_| vec![Outcome::Rejected(Rejection::ShuttingDown); n]),
            Err(_) => vec![Outcome::Rejected(Rejection::ShuttingDown); n],
        };
        let elapsed = started.elapsed();
        for (device, outcome) in devices.iter().zip(&outcomes) {
            match outcome {
                Outcome::Stored { duplicate, .. } => {
                    self.metrics.stored(self.driver, device, *duplicate);
                    self.metrics.ack_latency(self.driver, elapsed);
                }
                Outcome::Rejected(rejection) => self.metrics.rejected(self.driver, device, rejection.label()),
            }
        }
        outcomes
    }

    /// Counts input from a device that never became a punch (bad frame, malformed payload): `reason` is a short label.
    pub fn count_unparsed(&self, device: &str, reason: &'static str) {
        self.metrics.received(self.driver, device);
        self.metrics.rejected(self.driver, device, reason);
    }
}
