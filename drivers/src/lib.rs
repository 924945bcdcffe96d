//! Device protocols for gatewayd.
//!
//! A driver turns what a device says into [`DevicePunch`]es and hands them to a [`PunchSink`]; it answers the
//! device only after the sink reports the punch durable. The folders follow the data flow:
//!
//! - [`config`]: the `[[device]]` table of the configuration, validated without I/O;
//! - [`sink`]: the bounded ingest channel a driver submits punches into, and the per-punch outcome;
//! - [`status`]: online state, last seen, last error and reconnects per device;
//! - [`telemetry`]: the metrics every driver reports (received, stored, rejected, online, ack latency);
//! - [`context`]: what a running driver task is given ([`DriverContext`]) and how it ends; [`driver`]: the registry
//!   of drivers;
//! - one folder per device driver: [`pn532`] (NFC reader) and [`r30x`] (fingerprint module), each with its framing
//!   codec and its simulator, over [`transport`] (serial port, TCP serial server, Bluetooth RFCOMM) and what the two
//!   share ([`session`], [`framing`]); [`mqtt`] (face terminals through the embedded broker), [`adms`] (ZKTeco push)
//!   and [`zk4370`] (ZKTeco terminals without push, over their binary protocol, with its simulator);
//! - [`history`]: what the store can tell a driver about the punches it holds of its device; [`people`]: the roster as
//!   terminals hold it, for the drivers that put users on them;
//! - [`sim`]: what the device simulators (`pn532::sim`, `r30x::sim`) share, for tests and `gatewayd demo` ([`demo`]);
//! - shared by the daemon too: [`backoff`] (jittered exponential backoff) and [`tls`] (certificates, keys, rustls
//!   configurations).
#![forbid(unsafe_code)]

pub mod adms;
pub mod backoff;
pub mod config;
pub mod context;
pub mod demo;
pub mod driver;
pub mod framing;
pub mod history;
pub mod mqtt;
pub mod people;
pub mod pn532;
pub mod r30x;
pub mod session;
pub mod sim;
pub mod sink;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod zk4370;

pub use config::{DeviceConfig, DriverKind};
pub use context::DriverContext;
pub use sink::{DevicePunch, Method, Outcome, PunchSink, Rejection};
