//! End-to-end tests: the real `gatewayd` binary against real peers.
//!
//! One test binary (to keep link time down); each area is a module. The [`harness`] starts the daemon in a temporary
//! directory, waits for systemd-style readiness (`READY=1` on a `NOTIFY_SOCKET` the harness owns) and reads the bound
//! addresses from `listeners.json`. Nothing sleeps to synchronise and every listener binds port 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

mod adms;
mod adms_commands;
mod api_files;
mod api_roles;
mod calendar;
mod config_files;
mod crash;
mod demo;
mod engine;
mod fences;
mod fleet;
mod fleet_cluster;
mod lifecycle;
mod loader;
mod mqtt;
mod mqtt_edge;
mod plans;
mod privileges;
mod retention;
mod serial;
mod store_durability;
mod systemd_unit;
mod upstream;
mod upstream_daemon;
mod upstream_outage;
mod zk4370;
