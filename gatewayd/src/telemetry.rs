//! Logs and metrics.
//!
//! [`Metrics`] owns the Prometheus registry; every stage registers its metric families here at start-up, and `/metrics`
//! encodes the registry. [`events`] is the one place that defines each internal event: emitting one logs it and counts it,
//! like vector's internal events. Labels are low cardinality (`driver`, `device`, `reason`), never employee ids.

use std::sync::Arc;
use std::time::Duration;

use drivers::telemetry::DriverMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
        // rumqttd logs every ordinary disconnect at ERROR; the MQTT front logs connects, refusals and disconnects itself.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sled=warn,rumqttd=off"));
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
    /// Damaged stores moved aside under `<data_dir>/quarantine` (crate::quarantine).
    pub quarantines: Gauge,
}

/// Every metric of the daemon. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub drivers: DriverMetrics,
    pub store: Arc<StoreMetrics>,
    pub outbox: Arc<OutboxMetrics>,
    pub engine: Arc<EngineMetrics>,
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
            quarantines: Gauge::default(),
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
        registry.register(
            "gatewayd_store_quarantines",
            "Damaged stores moved aside under the data dir's quarantine directory (0 when none)",
            store.quarantines.clone(),
        );
        let outbox = OutboxMetrics::register(&mut registry);
        let engine = EngineMetrics::register(&mut registry);
        Metrics {
            registry: Arc::new(registry),
            drivers,
            store: Arc::new(store),
            outbox: Arc::new(outbox),
            engine: Arc::new(engine),
        }
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// The outbox, the upstream sender and the disk budget.
#[derive(Debug)]
pub struct OutboxMetrics {
    pub depth: Gauge,
    pub oldest_age_seconds: Gauge,
    pub enqueued: Family<KindLabel, Counter>,
    pub compacted: Counter,
    pub batches: Family<ResultLabel, Counter>,
    pub delivered: Counter,
    pub send_seconds: Histogram,
    pub alarm: Gauge,
    pub cert_days_left: Gauge,
    pub tls_reload_failures: Counter,
    pub resend_dates: Counter,
    pub disk_budget_state: Gauge,
    pub disk_budget_bytes: Gauge,
    pub disk_used_bytes: Gauge,
}

impl OutboxMetrics {
    fn register(registry: &mut Registry) -> OutboxMetrics {
        let m = OutboxMetrics {
            depth: Gauge::default(),
            oldest_age_seconds: Gauge::default(),
            enqueued: Family::default(),
            compacted: Counter::default(),
            batches: Family::default(),
            delivered: Counter::default(),
            send_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            alarm: Gauge::default(),
            cert_days_left: Gauge::default(),
            tls_reload_failures: Counter::default(),
            resend_dates: Counter::default(),
            disk_budget_state: Gauge::default(),
            disk_budget_bytes: Gauge::default(),
            disk_used_bytes: Gauge::default(),
        };
        registry.register("gatewayd_outbox_depth", "Items waiting for upstream delivery", m.depth.clone());
        registry.register(
            "gatewayd_outbox_oldest_age_seconds",
            "Age of the oldest undelivered item (0 when the outbox is empty)",
            m.oldest_age_seconds.clone(),
        );
        registry.register("gatewayd_outbox_enqueued", "Items enqueued, by kind", m.enqueued.clone());
        registry.register(
            "gatewayd_outbox_compacted",
            "Delivered day-index entries removed past retention",
            m.compacted.clone(),
        );
        registry.register("gatewayd_upstream_batches", "Upstream batch attempts, by result", m.batches.clone());
        registry.register(
            "gatewayd_upstream_items_delivered",
            "Items acknowledged by the receiver",
            m.delivered.clone(),
        );
        registry.register("gatewayd_upstream_send_seconds", "Round trip of one batch", m.send_seconds.clone());
        registry.register(
            "gatewayd_upstream_alarm",
            "1 while the receiver refuses a batch (4xx or accepted=false): an operator must act",
            m.alarm.clone(),
        );
        registry.register(
            "gatewayd_upstream_cert_days_left",
            "Days until the gateway's upstream client certificate expires",
            m.cert_days_left.clone(),
        );
        registry.register(
            "gatewayd_upstream_tls_reload_failures",
            "Certificate or key files that could not be loaded",
            m.tls_reload_failures.clone(),
        );
        registry.register(
            "gatewayd_upstream_resend_dates",
            "Work dates the receiver asked for again",
            m.resend_dates.clone(),
        );
        registry.register(
            "gatewayd_disk_budget_state",
            "0 ok, 1 near the budget (alarm), 2 budget reached (new punches refused)",
            m.disk_budget_state.clone(),
        );
        registry.register("gatewayd_disk_budget_bytes", "The disk budget (0: none)", m.disk_budget_bytes.clone());
        registry.register("gatewayd_disk_used_bytes", "Bytes the database uses on disk", m.disk_used_bytes.clone());
        m
    }
}

/// Internal events: each function logs and counts one thing that happened.
pub mod events {
    use super::*;
    use crate::outbox::budget::BudgetState;
    use crate::outbox::{Filled, OpenBatch, QueueStats};
    use crate::proto::upstream::UploadAck;
    use crate::upstream::client::SendError;

    fn clamp(v: u64) -> i64 {
        i64::try_from(v).unwrap_or(i64::MAX)
    }

    pub fn outbox_filled(m: &Metrics, f: &Filled) {
        for (kind, n) in [("punch", f.punches), ("record", f.records), ("digest", f.digests)] {
            if n > 0 {
                m.outbox.enqueued.get_or_create(&KindLabel { kind }).inc_by(n as u64);
            }
        }
        tracing::debug!(
            changes = f.changes,
            punches = f.punches,
            records = f.records,
            digests = f.digests,
            cursor = f.cursor,
            "outbox: changes enqueued"
        );
    }

    pub fn outbox_stats(m: &Metrics, s: &QueueStats, now_ms: i64) {
        m.outbox.depth.set(clamp(s.depth));
        let age = s.oldest_enqueued_ms.map_or(0, |t| (now_ms - t).max(0) / 1000);
        m.outbox.oldest_age_seconds.set(age);
    }

    pub fn outbox_failed(error: &dyn std::fmt::Display, retry_in: Duration) {
        tracing::error!(%error, retry_ms = retry_in.as_millis() as u64,
            "outbox: cannot enqueue changes; nothing is lost (the change log keeps them), retrying");
    }

    pub fn outbox_compacted(m: &Metrics, removed: usize, retention_days: u32) {
        m.outbox.compacted.inc_by(removed as u64);
        if removed > 0 {
            tracing::info!(removed, retention_days, "outbox: delivered data past retention compacted");
        }
    }

    pub fn resend_date(m: &Metrics, date: &str, items: usize) {
        m.outbox.resend_dates.inc();
        tracing::info!(date, items, "receiver asked for a work date again; re-enqueued");
    }

    pub fn upstream_sent(
        m: &Metrics,
        batch: &OpenBatch,
        result: &Result<UploadAck, SendError>,
        elapsed: Duration,
        attempt: u32,
    ) {
        let label = match result {
            Ok(_) => "accepted",
            Err(e) => e.label(),
        };
        m.outbox.batches.get_or_create(&ResultLabel { result: label }).inc();
        m.outbox.send_seconds.observe(elapsed.as_secs_f64());
        if result.is_ok() {
            m.outbox.delivered.inc_by(batch.count);
            tracing::debug!(
                batch_seq = batch.batch_seq,
                items = batch.count,
                elapsed_ms = elapsed.as_millis() as u64,
                attempt,
                "upstream: batch accepted"
            );
        }
    }

    pub fn upstream_retry(batch_seq: u64, error: &SendError, delay: Duration, attempt: u32) {
        tracing::warn!(batch_seq, %error, retry_ms = delay.as_millis() as u64, attempt,
            "upstream: batch not delivered; retrying");
    }

    pub fn upstream_alarm(m: &Metrics, batch_seq: u64, error: &SendError, retry_in: Duration) {
        m.outbox.alarm.set(1);
        tracing::error!(batch_seq, %error, retry_s = retry_in.as_secs(),
            "upstream: the receiver refuses this batch; it is held (not dropped) until the receiver accepts it: \
             check the receiver, then SIGHUP to retry at once");
    }

    pub fn upstream_alarm_cleared(m: &Metrics, batch_seq: u64) {
        m.outbox.alarm.set(0);
        tracing::info!(batch_seq, "upstream: the receiver accepts batches again");
    }

    pub fn upstream_link_built(receiver: &str, first: bool) {
        if first {
            tracing::info!(receiver, "upstream: TLS configuration loaded");
        } else {
            tracing::info!(receiver, "upstream: certificates or configuration changed; reloaded");
        }
    }

    pub fn upstream_link_failed(m: &Metrics, error: &dyn std::fmt::Display, keeping_previous: bool) {
        m.outbox.tls_reload_failures.inc();
        if keeping_previous {
            tracing::error!(%error, "upstream: new certificates cannot be loaded; still using the previous ones");
        } else {
            tracing::error!(%error, "upstream: certificates cannot be loaded; nothing is sent until they can");
        }
    }

    pub fn upstream_cert_days_left(m: &Metrics, cert: &std::path::Path, days: i64, warn_days: i64) {
        m.outbox.cert_days_left.set(days);
        if days < 0 {
            tracing::error!(cert = %cert.display(), days_ago = -days, "upstream: the gateway certificate has expired");
        } else if days <= warn_days {
            tracing::warn!(cert = %cert.display(), days_left = days, "upstream: the gateway certificate expires soon");
        }
    }

    pub fn disk_budget(m: &Metrics, before: BudgetState, now: BudgetState, used: u64, limit: u64) {
        m.outbox.disk_budget_state.set(now as i64);
        m.outbox.disk_budget_bytes.set(clamp(limit));
        m.outbox.disk_used_bytes.set(clamp(used));
        if before == now {
            return;
        }
        match now {
            BudgetState::Full => tracing::error!(used, limit,
                "disk budget reached: new punches are refused (devices keep them); deliver the backlog or raise store.disk_budget_mb"),
            BudgetState::Near => tracing::warn!(used, limit, "disk usage is near the budget"),
            BudgetState::Ok => tracing::info!(used, limit, "disk usage is below the budget alarm again"),
        }
    }

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

    /// A damaged store was moved aside and a fresh one is used from now on.
    pub fn store_quarantined(m: &Metrics, moved_to: &std::path::Path, reason: &str) {
        m.store.quarantines.inc();
        tracing::error!(moved_to = %moved_to.display(), %reason,
            "store damaged: moved aside to quarantine and started with a fresh store; punches not yet delivered \
             upstream may be in the quarantined files (see docs/operations.md)");
    }

    /// How many quarantined stores lie under the data dir (the alarm stays raised until the operator removes them).
    pub fn store_quarantines(m: &Metrics, count: usize) {
        m.store.quarantines.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn driver_restarting(device: &str, driver: &str, error: &dyn std::fmt::Display, backoff: Duration) {
        tracing::warn!(device, driver, %error, backoff_ms = backoff.as_millis() as u64, "driver failed; restarting");
    }

    /// One engine batch was committed.
    pub fn engine_batch(
        m: &Metrics,
        punches: usize,
        changes: &[crate::changes::Change],
        engine: &crate::reconcile::Engine,
        lag: u64,
        elapsed: Duration,
    ) {
        use crate::changes::Change;
        let e = &m.engine;
        e.batches.inc();
        e.batch_seconds.observe(elapsed.as_secs_f64());
        e.punches.inc_by(punches as u64);
        let mut revisions = 0u64;
        for c in changes {
            match c {
                Change::Record(_) => revisions += 1,
                Change::DayClosed(day) => {
                    e.days_closed.inc();
                    tracing::info!(work_date = %day, "work date closed");
                }
                Change::Punch(_) => {}
            }
        }
        e.revisions.inc_by(revisions);
        e.lag.set(i64::try_from(lag).unwrap_or(i64::MAX));
        e.records.set(i64::try_from(engine.records_tracked()).unwrap_or(i64::MAX));
        e.punches_kept.set(i64::try_from(engine.punches_kept()).unwrap_or(i64::MAX));
        e.rules_version.set(i64::from(engine.rules_version()));
        tracing::debug!(
            punches,
            revisions,
            changes = changes.len(),
            elapsed_ms = elapsed.as_millis() as u64,
            "engine batch"
        );
    }

    /// The engine was rebuilt from the store (start or after a failure). `revisions` are record revisions the
    /// re-derivation found missing from the store (normally none).
    pub fn engine_recovered(m: &Metrics, replayed: usize, revisions: usize, elapsed: Duration) {
        m.engine.recoveries.inc();
        m.engine.revisions.inc_by(revisions as u64);
        tracing::info!(
            replayed,
            revisions,
            elapsed_ms = elapsed.as_millis() as u64,
            "engine state rebuilt from the store"
        );
    }

    /// The engine stage failed; it is rebuilt from the store. Records wait meanwhile.
    pub fn engine_failed(m: &Metrics, error: &dyn std::fmt::Display) {
        m.engine.failures.inc();
        tracing::error!(%error, "engine stage failed; rebuilding its state from the store");
    }

    pub fn rules_in_force(m: &Metrics, version: u32) {
        m.engine.rules_version.set(i64::from(version));
        tracing::info!(version, "rules in force");
    }

    /// A rules file with problems was not put in force; the rules in force stay.
    pub fn rules_rejected(problems: &[String]) {
        for problem in problems {
            tracing::error!(%problem, "rules not reloaded; the rules in force stay");
        }
    }

    pub fn roster_in_force(employees: usize) {
        tracing::info!(employees, "roster in force");
    }

    /// A roster file with problems was not imported; the roster in force stays.
    pub fn roster_rejected(problems: &[String]) {
        for problem in problems {
            tracing::error!(%problem, "roster not imported; the roster in force stays");
        }
    }
}

/// The attendance engine.
#[derive(Debug)]
pub struct EngineMetrics {
    pub batches: Counter,
    pub batch_seconds: Histogram,
    pub punches: Counter,
    pub revisions: Counter,
    pub days_closed: Counter,
    pub recoveries: Counter,
    pub failures: Counter,
    pub lag: Gauge,
    pub records: Gauge,
    pub punches_kept: Gauge,
    pub rules_version: Gauge,
}

impl EngineMetrics {
    fn register(registry: &mut Registry) -> EngineMetrics {
        let m = EngineMetrics {
            batches: Counter::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            punches: Counter::default(),
            revisions: Counter::default(),
            days_closed: Counter::default(),
            recoveries: Counter::default(),
            failures: Counter::default(),
            lag: Gauge::default(),
            records: Gauge::default(),
            punches_kept: Gauge::default(),
            rules_version: Gauge::default(),
        };
        registry.register("gatewayd_engine_batches", "Engine batches committed", m.batches.clone());
        registry.register(
            "gatewayd_engine_batch_seconds",
            "Time to apply and commit one engine batch",
            m.batch_seconds.clone(),
        );
        registry.register("gatewayd_engine_punches", "Punches applied by the engine", m.punches.clone());
        registry.register("gatewayd_engine_record_revisions", "Record revisions emitted", m.revisions.clone());
        registry.register("gatewayd_engine_days_closed", "Work date closings announced", m.days_closed.clone());
        registry.register("gatewayd_engine_recoveries", "Engine state rebuilds from the store", m.recoveries.clone());
        registry.register("gatewayd_engine_failures", "Engine stage failures", m.failures.clone());
        registry.register(
            "gatewayd_engine_lag_punches",
            "Durable punches not yet applied by the engine",
            m.lag.clone(),
        );
        registry.register("gatewayd_engine_records", "Records the engine tracks in its horizon", m.records.clone());
        registry.register("gatewayd_engine_punches_kept", "Punches the engine keeps in memory", m.punches_kept.clone());
        registry.register("gatewayd_engine_rules_version", "The rules version in force", m.rules_version.clone());
        m
    }
}
