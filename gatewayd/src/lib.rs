//! gatewayd: the on-prem edge gateway for workforce attendance.
//!
//! The data flow, one module per stage:
//! `drivers` (crate) -> [`ingest`] -> [`store`] -> reconcile -> outbox -> upstream, with [`api`] beside it.
//! [`app`] assembles the stages, supervises them and shuts them down in order; [`daemon`] holds the process-level parts
//! (signals, systemd notification, the supervisor); [`config`] is the configuration file.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod atomic_file;
pub mod certs;
pub mod chunk;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod ingest;
pub mod outbox;
pub mod proto;
pub mod punch;
pub mod reconcile;
pub mod sink;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod upstream;
