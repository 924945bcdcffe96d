//! The punch store's metrics and events (the ingest writer's group commits, the store's size, quarantines, the disk
//! budget).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::telemetry::{gauge_value, registered, Metrics, StageMetrics};

/// The punch store and its writer.
#[derive(Debug)]
pub struct StoreMetrics {
    pub group_commits: Counter,
    pub batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub write_failures: Counter,
    pub size_bytes: Gauge,
    pub punches: Gauge,
    /// Damaged stores moved aside under `<data_dir>/quarantine` (`crate::app::quarantine`).
    pub quarantines: Gauge,
    pub disk_budget_state: Gauge,
    pub disk_budget_bytes: Gauge,
    pub disk_used_bytes: Gauge,
}

impl StageMetrics for StoreMetrics {
    fn register(registry: &mut Registry) -> StoreMetrics {
        StoreMetrics {
            group_commits: registered(
                registry,
                "gatewayd_store_group_commits",
                "Group commits (one flush each)",
                Counter::default(),
            ),
            batch_size: registered(
                registry,
                "gatewayd_store_batch_punches",
                "Punches per group commit",
                Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            ),
            commit_seconds: registered(
                registry,
                "gatewayd_store_commit_seconds",
                "Time to write and flush one group commit",
                Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            ),
            write_failures: registered(
                registry,
                "gatewayd_store_write_failures",
                "Group commits that failed to write or flush",
                Counter::default(),
            ),
            size_bytes: registered(
                registry,
                "gatewayd_store_size_bytes",
                "Bytes the store uses on disk",
                Gauge::default(),
            ),
            punches: registered(registry, "gatewayd_store_punches", "Punches in the store", Gauge::default()),
            quarantines: registered(
                registry,
                "gatewayd_store_quarantines",
                "Damaged stores moved aside under the data dir's quarantine directory (0 when none)",
                Gauge::default(),
            ),
            disk_budget_state: registered(
                registry,
                "gatewayd_disk_budget_state",
                "0 ok, 1 near the budget (alarm), 2 budget reached (new punches refused)",
                Gauge::default(),
            ),
            disk_budget_bytes: registered(
                registry,
                "gatewayd_disk_budget_bytes",
                "The disk budget (0: none)",
                Gauge::default(),
            ),
            disk_used_bytes: registered(
                registry,
                "gatewayd_disk_used_bytes",
                "Bytes the database uses on disk",
                Gauge::default(),
            ),
        }
    }
}

/// Internal events of the store: each function logs and counts one thing that happened.
pub mod events {
    use super::*;

    pub fn group_committed(m: &Metrics, punches: usize, elapsed: Duration) {
        if let Some(s) = m.get::<StoreMetrics>() {
            s.group_commits.inc();
            s.batch_size.observe(punches as f64);
            s.commit_seconds.observe(elapsed.as_secs_f64());
        }
        tracing::trace!(punches, elapsed_us = elapsed.as_micros() as u64, "group commit");
    }

    pub fn store_write_failed(m: &Metrics, error: &dyn std::fmt::Display) {
        if let Some(s) = m.get::<StoreMetrics>() {
            s.write_failures.inc();
        }
        tracing::error!(%error, "store write failed: punches in this batch were rejected and devices will retry");
    }

    /// A damaged store was moved aside and a fresh one is used from now on.
    pub fn store_quarantined(m: &Metrics, moved_to: &std::path::Path, reason: &str) {
        if let Some(s) = m.get::<StoreMetrics>() {
            s.quarantines.inc();
        }
        tracing::error!(moved_to = %moved_to.display(), %reason,
            "store damaged: moved aside to quarantine and started with a fresh store; punches not yet delivered \
             upstream may be in the quarantined files (see docs/operations.md)");
    }

    /// How many quarantined stores lie under the data dir (the alarm stays raised until the operator removes them).
    pub fn store_quarantines(m: &Metrics, count: usize) {
        if let Some(s) = m.get::<StoreMetrics>() {
            s.quarantines.set(gauge_value(count));
        }
    }

    /// The store's size on disk and punch count, read for `/metrics`.
    pub fn store_size(m: &Metrics, bytes: u64, punches: u64) {
        if let Some(s) = m.get::<StoreMetrics>() {
            s.size_bytes.set(gauge_value(bytes));
            s.punches.set(gauge_value(punches));
        }
    }
}
