//! gatewayd: the on-prem edge gateway for workforce attendance.
//!
//! The data flow, one module per stage, each importing only the stages before it (`gatewayd/tests/layout.rs` checks):
//! `drivers` (crate) -> [`ingest`] + [`store`] -> [`reconcile`] -> [`outbox`] -> [`upstream`], with [`api`] beside
//! them. [`app`] assembles the stages, reloads and stops them in order; [`daemon`] holds the process-level parts
//! (signals, systemd notification, the supervisor, privileges); [`config`] is the configuration file's types;
//! [`telemetry`] logging and the metrics registry. The rest are small shared pieces: [`proto`], [`punch`], [`chunk`],
//! [`atomic_file`], [`tokens`].
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod atomic_file;
pub mod chunk;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod ingest;
pub mod outbox;
pub mod proto;
pub mod punch;
pub mod reconcile;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod upstream;
