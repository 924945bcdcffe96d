//! Retention: delivered data older than `retention_days` leaves every tree, so a gateway that runs for years at a
//! steady rate stays at a steady size.
//!
//! A pass (at start, then every [`EVERY`], or `GATEWAYD_RETENTION_EVERY_MS`) works out how far it may go, then removes
//! in an order that a crash at any point leaves safe for the next pass and the next start:
//! 1. The limits. The *cutoff* is `retention_days` before now. Nothing undelivered goes: the outbox queue is read for
//!    the lowest store sequence number and the earliest work date it still holds ([`crate::outbox::Floor`]). Nothing
//!    the engine may still revise goes: only work dates it has closed and left behind its horizon (`reconcile_days`
//!    of the rules before its clock), so retention never goes below `reconcile_days`. A pass that finds
//!    the outbox behind the change log (it is taking in what the engine wrote) removes nothing but audit entries.
//! 2. Records of dates before the limit, with their employee index (the engine is told first, so it never reconciles
//!    such a date again; a late punch for it is stored and forwarded).
//! 3. Decided approvals about those dates (pending ones wait for their manager whatever their age). Before the punches,
//!    so an approved make-up request is never submitted again at start after its punch went.
//! 4. Punches received before the cutoff, of device dates before the limit, delivered: whole punch partitions with
//!    their files, which gives the disk back at once (the newest partition is rotated first once it covers a quarter
//!    of `retention_days`, at most a week); in a store made before partitions, index entries and then log values
//!    ([`crate::store::expire`]).
//! 5. The outbox's day index and closed-day markers of those dates.
//! 6. Audit entries older than the cutoff.
//!
//! Undelivered data older than the cutoff is kept, and the alarm says so: metric `gatewayd_retention_held_back` = 1 and
//! a WARN log naming the oldest date. The main database reuses the space of removed keys for new writes; the punches,
//! most of the bytes, go with their partitions' files (docs/benchmarks.md, the ageing benchmark).

use std::sync::Arc;
use std::time::Duration;

use jiff::civil::Date;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::audit::AuditLog;
use crate::config::Config;
use crate::outbox::Outbox;
use crate::reconcile::approvals::Approvals;
use crate::reconcile::changes::ChangeLog;
use crate::reconcile::records::RecordStore;
use crate::store::expire::Expiry;
use crate::store::Store;
use crate::telemetry::{registered, Metrics, StageMetrics};

/// How often retention runs.
pub const EVERY: Duration = Duration::from_secs(3600);
/// Overrides [`EVERY`] (milliseconds), for tests.
pub const EVERY_ENV: &str = "GATEWAYD_RETENTION_EVERY_MS";
/// A file holding the time retention takes as now (Unix milliseconds), for tests and the ageing benchmark, which move
/// it forward; the daemon's other clocks are not moved. Without the file (or when it does not parse) retention uses the
/// system clock.
pub const CLOCK_ENV: &str = "GATEWAYD_RETENTION_CLOCK_FILE";
/// The longest period one punch partition covers.
const PART_MAX_DAYS: i64 = 7;
/// How soon a pass that found the outbox busy is tried again.
const RETRY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DataLabel {
    pub data: &'static str,
}

/// Retention's metrics.
#[derive(Debug)]
pub struct RetentionMetrics {
    pub removed: Family<DataLabel, Counter>,
    pub held_back: Gauge,
    pub passes: Counter,
    pub partitions: Gauge,
}

impl StageMetrics for RetentionMetrics {
    fn register(registry: &mut Registry) -> RetentionMetrics {
        RetentionMetrics {
            removed: registered(
                registry,
                "gatewayd_retention_removed",
                "Delivered data removed past retention_days, by kind (punches, records, approvals, day_index, audit)",
                Family::default(),
            ),
            held_back: registered(
                registry,
                "gatewayd_retention_held_back",
                "1 while undelivered data older than retention_days is kept (it goes once delivered)",
                Gauge::default(),
            ),
            passes: registered(registry, "gatewayd_retention_passes", "Retention passes completed", Counter::default()),
            partitions: registered(
                registry,
                "gatewayd_store_partitions",
                "Punch partitions on disk (one sled database each; retention deletes whole ones)",
                Gauge::default(),
            ),
        }
    }
}

/// Everything retention removes from.
#[derive(Clone)]
pub struct Retention {
    pub store: Store,
    pub records: RecordStore,
    pub approvals: Approvals,
    pub changes: ChangeLog,
    pub outbox: Outbox,
    pub audit: AuditLog,
    pub metrics: Metrics,
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Work dates before this one were expired (`None`: the pass could not go that far yet).
    pub dates_before: Option<Date>,
    pub records: u64,
    pub approvals: u64,
    pub punches: u64,
    /// Punch partitions deleted, and the bytes their files took.
    pub parts: u64,
    pub part_bytes: u64,
    pub day_index: u64,
    pub audit: u64,
    /// The earliest work date of undelivered data older than the cutoff, kept.
    pub held_back: Option<Date>,
    /// The outbox was still taking in the change log: nothing but audit entries went.
    pub busy: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("retention: {0}")]
pub struct RetentionError(String);

fn err(e: impl std::fmt::Display) -> RetentionError {
    RetentionError(e.to_string())
}

fn days_before(date: Date, days: u32) -> Date {
    date.checked_sub(jiff::Span::new().days(i64::from(days))).unwrap_or(Date::MIN)
}

impl Retention {
    /// One pass at `now_ms` (blocking).
    pub fn pass(&self, now_ms: i64, retention_days: u32) -> Result<PassReport, RetentionError> {
        let tz = self.outbox.timezone().clone();
        let now = jiff::Timestamp::from_millisecond(now_ms).map_err(err)?;
        let cutoff_date = days_before(now.to_zoned(tz.clone()).date(), retention_days);
        let cutoff_ms = now_ms.saturating_sub(i64::from(retention_days) * 86_400_000);
        let mut report = PassReport::default();
        // A new punch partition once the newest covers a quarter of the retention period (at most a week): old
        // punches then sit in parts that go whole.
        let period_ms = (i64::from(retention_days) * 86_400_000 / 4).clamp(86_400_000, PART_MAX_DAYS * 86_400_000);
        self.store.rotate(now_ms, period_ms).map_err(err)?;

        // What the engine and the outbox have taken in. Read the engine first: what it applied is in the change log,
        // and the outbox holds the change log once its cursor reached the log's end.
        let applied = self.records.applied_seq().map_err(err)?;
        let marks = self.records.watermarks().map_err(err)?;
        let log_last = self.changes.last_seq().map_err(err)?;
        let cursor = self.outbox.cursor().map_err(err)?;
        let floor = self.outbox.undelivered_floor(&self.store).map_err(err)?;
        report.held_back = floor.date.filter(|d| *d < cutoff_date);
        report.audit = self.audit.expire_before(cutoff_ms).map_err(err)?;
        if cursor < log_last {
            report.busy = true;
            return Ok(report);
        }
        // Dates the engine closed and left behind its horizon (`reconcile_days` before its own clock): it reloads the
        // punches of its horizon at start and would revise records it found different.
        let Some(closed) = marks.closed_through else { return Ok(report) };
        let reconcile_days = crate::reconcile::stage::stored_rules(&self.records).map_err(err)?.reconcile_days;
        let engine_today = jiff::Timestamp::from_millisecond(marks.now_ms).map_err(err)?.to_zoned(tz.clone()).date();
        let engine_limit = days_before(engine_today, reconcile_days).min(closed);
        let mut before = cutoff_date.min(engine_limit);
        if let Some(d) = floor.date {
            before = before.min(d);
        }
        let through_seq = floor.punch_seq.map_or(applied, |s| s.saturating_sub(1).min(applied));
        report.dates_before = Some(before);

        report.records = self.records.expire_before(before).map_err(err)?;
        report.approvals = self.approvals.expire_before(before, &tz).map_err(err)?;
        let expiry = Expiry { received_before_ms: cutoff_ms, date_before: before, through_seq, tz };
        let expired = self.store.expire(&expiry).map_err(err)?;
        report.punches = expired.punches;
        report.parts = expired.parts;
        report.part_bytes = expired.bytes;
        report.day_index = self.outbox.compact(&before.to_string()).map_err(err)? as u64;
        Ok(report)
    }

    fn publish(&self, report: &PassReport) {
        let Some(m) = self.metrics.get::<RetentionMetrics>() else { return };
        for (data, n) in [
            ("records", report.records),
            ("approvals", report.approvals),
            ("punches", report.punches),
            ("partitions", report.parts),
            ("day_index", report.day_index),
            ("audit", report.audit),
        ] {
            m.removed.get_or_create(&DataLabel { data }).inc_by(n);
        }
        m.held_back.set(i64::from(report.held_back.is_some()));
        m.partitions.set(i64::try_from(self.store.part_count()).unwrap_or(i64::MAX));
        m.passes.inc();
    }
}

fn every() -> Duration {
    std::env::var(EVERY_ENV).ok().and_then(|v| v.parse().ok()).map(Duration::from_millis).unwrap_or(EVERY)
}

fn now_ms() -> i64 {
    let controlled = std::env::var_os(CLOCK_ENV)
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| t.trim().parse::<i64>().ok());
    controlled.unwrap_or_else(|| jiff::Timestamp::now().as_millisecond())
}

/// Runs retention until cancelled: a pass at start, then every [`EVERY`].
pub async fn run(retention: Retention, config: watch::Receiver<Arc<Config>>, cancel: CancellationToken) {
    let every = every();
    loop {
        let days =
            config.borrow().upstream.as_ref().map_or(crate::config::default_retention_days(), |u| u.retention_days);
        let r = retention.clone();
        let result = tokio::task::spawn_blocking(move || r.pass(now_ms(), days)).await;
        let wait = match result {
            Ok(Ok(report)) => {
                retention.publish(&report);
                if let Some(date) = report.held_back {
                    tracing::warn!(
                        oldest = %date,
                        retention_days = days,
                        "retention: undelivered data older than retention_days is kept until it is delivered"
                    );
                }
                let removed = report.records + report.approvals + report.punches + report.day_index + report.audit;
                if removed > 0 {
                    tracing::info!(
                        before = ?report.dates_before.map(|d| d.to_string()),
                        punches = report.punches,
                        partitions = report.parts,
                        partition_bytes = report.part_bytes,
                        records = report.records,
                        approvals = report.approvals,
                        day_index = report.day_index,
                        audit = report.audit,
                        "retention: delivered data past retention_days removed"
                    );
                }
                if report.busy {
                    every.min(RETRY)
                } else {
                    every
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "retention pass failed; retrying");
                every.min(RETRY)
            }
            Err(e) => {
                tracing::error!(error = %e, "retention pass stopped; retrying");
                every.min(RETRY)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return,
        }
    }
}
