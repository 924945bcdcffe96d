//! Logs and metrics.
//!
//! [`Metrics`] owns the Prometheus registry; every stage registers its metric families here at start-up, and `/metrics`
//! encodes the registry. [`events`] is the one place that defines each internal event: emitting one logs it and counts it,
//! like vector's internal events. Labels are low cardinality (`driver`, `device`, `reason`), never employee ids.

use std::sync::Arc;
use std::time::Duration;

use drivers::telemetry::DriverMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Log output style.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStyle {
    /// Human-readable with colours and timestamps (a terminal).
    Terminal,
    /// No colours and no timestamps: journald adds its own (under systemd, `JOURNAL_STREAM` set).
    Journal,
}

/// Initialises `tracing`. `RUST_LOG` overrides the default `info` filter.
pub fn init_logging() {
    let style = if std::env::var_os("JOURNAL_STREAM").is_some() { LogStyle::Journal } else { LogStyle::Terminal };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sled=warn,rumqttd=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match style {
        LogStyle::Terminal => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
        LogStyle::Journal => builder.without_time().with_ansi(false).try_init(),
    };
}

#[derive(Debug)]
pub struct StoreMetrics {
    pub group_commits: Counter,
    pub batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub write_failures: Counter,
    pub size_bytes: Gauge,
    pub punches: Gauge,
}

/// Every metric of the daemon. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub drivers: DriverMetrics,
    pub store: Arc<StoreMetrics>,
}

impl Metrics {
    /// Builds the registry with every stage's metrics.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let drivers = DriverMetrics::register(&mut registry);
        let store = StoreMetrics {
            group_commits: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            write_failures: Counter::default(),
            size_bytes: Gauge::default(),
            punches: Gauge::default(),
        };
        registry.register(
            "gatewayd_store_group_commits",
            "Group commits (one flush each)",
            store.group_commits.clone(),
        );
        registry.register("gatewayd_store_batch_punches", "Punches per group commit", store.batch_size.clone());
        registry.register(
            "gatewayd_store_commit_seconds",
            "Time to write and flush one group commit",
            store.commit_seconds.clone(),
        );
        registry.register(
            "gatewayd_store_write_failures",
            "Group commits that failed to write or flush",
            store.write_failures.clone(),
        );
        registry.register("gatewayd_store_size_bytes", "Bytes the store uses on disk", store.size_bytes.clone());
        registry.register("gatewayd_store_punches", "Punches in the store", store.punches.clone());
        Metrics { registry: Arc::new(registry), drivers, store: Arc::new(store) }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Internal events: each function logs and counts one thing that happened.
pub mod events {
    use super::*;

    pub fn group_committed(m: &Metrics, punches: usize, elapsed: Duration) {
        m.store.group_commits.inc();
        m.store.batch_size.observe(punches as f64);
        m.store.commit_seconds.observe(elapsed.as_secs_f64());
        tracing::trace!(punches, elapsed_us = elapsed.as_micros() as u64, "group commit");
    }

    pub fn store_write_failed(m: &Metrics, error: &dyn std::fmt::Display) {
        m.store.write_failures.inc();
        tracing::error!(%error, "store write failed: punches in this batch were rejected and devices will retry");
    }

    pub fn driver_restarting(device: &str, driver: &str, error: &dyn std::fmt::Display, backoff: Duration) {
        tracing::warn!(device, driver, %error, backoff_ms = backoff.as_millis() as u64, "driver failed; restarting");
    }
}
