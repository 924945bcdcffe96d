//! The attendance engine's metrics and events.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::reconcile::changes::Change;
use crate::reconcile::Engine;
use crate::telemetry::{gauge_value, registered, Metrics, StageMetrics};

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
    pub days_backfilled: Counter,
    pub backfill_waiting: Gauge,
}

impl StageMetrics for EngineMetrics {
    fn register(registry: &mut Registry) -> EngineMetrics {
        EngineMetrics {
            batches: registered(registry, "gatewayd_engine_batches", "Engine batches committed", Counter::default()),
            batch_seconds: registered(
                registry,
                "gatewayd_engine_batch_seconds",
                "Time to apply and commit one engine batch",
                Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            ),
            punches: registered(
                registry,
                "gatewayd_engine_punches",
                "Punches applied by the engine",
                Counter::default(),
            ),
            revisions: registered(
                registry,
                "gatewayd_engine_record_revisions",
                "Record revisions emitted",
                Counter::default(),
            ),
            days_closed: registered(
                registry,
                "gatewayd_engine_days_closed",
                "Work date closings announced",
                Counter::default(),
            ),
            recoveries: registered(
                registry,
                "gatewayd_engine_recoveries",
                "Engine state rebuilds from the store",
                Counter::default(),
            ),
            failures: registered(registry, "gatewayd_engine_failures", "Engine stage failures", Counter::default()),
            lag: registered(
                registry,
                "gatewayd_engine_lag_punches",
                "Durable punches not yet applied by the engine",
                Gauge::default(),
            ),
            records: registered(
                registry,
                "gatewayd_engine_records",
                "Records the engine tracks in its horizon",
                Gauge::default(),
            ),
            punches_kept: registered(
                registry,
                "gatewayd_engine_punches_kept",
                "Punches the engine keeps in memory",
                Gauge::default(),
            ),
            rules_version: registered(
                registry,
                "gatewayd_engine_rules_version",
                "The rules version in force",
                Gauge::default(),
            ),
            days_backfilled: registered(
                registry,
                "gatewayd_engine_days_backfilled",
                "Work dates older than the horizon reconciled from the store",
                Counter::default(),
            ),
            backfill_waiting: registered(
                registry,
                "gatewayd_engine_backfill_days",
                "Work dates older than the horizon waiting to be reconciled from the store",
                Gauge::default(),
            ),
        }
    }
}

/// Internal events of the engine stage: each function logs and counts one thing that happened.
pub mod events {
    use super::*;

    pub fn engine_batch(m: &Metrics, punches: usize, changes: &[Change], engine: &Engine, lag: u64, elapsed: Duration) {
        let e = m.get::<EngineMetrics>();
        let mut revisions = 0u64;
        let mut closed = 0u64;
        for c in changes {
            match c {
                Change::Record(_) => revisions += 1,
                Change::DayClosed(day) => {
                    closed += 1;
                    tracing::info!(work_date = %day, "work date closed");
                }
                Change::Punch(_) => {}
            }
        }
        if let Some(e) = e {
            e.batches.inc();
            e.batch_seconds.observe(elapsed.as_secs_f64());
            e.punches.inc_by(punches as u64);
            e.days_closed.inc_by(closed);
            e.revisions.inc_by(revisions);
            e.lag.set(gauge_value(lag));
            e.records.set(gauge_value(engine.records_tracked()));
            e.punches_kept.set(gauge_value(engine.punches_kept()));
            e.rules_version.set(i64::from(engine.rules_version()));
            e.backfill_waiting.set(gauge_value(engine.watermarks().backfill.len()));
        }
        tracing::debug!(
            punches,
            revisions,
            changes = changes.len(),
            elapsed_ms = elapsed.as_millis() as u64,
            "engine batch"
        );
    }

    /// A work date older than the horizon was reconciled from the store; `revisions` of its records changed.
    pub fn day_backfilled(m: &Metrics, date: jiff::civil::Date, revisions: usize, engine: &Engine) {
        if let Some(e) = m.get::<EngineMetrics>() {
            e.days_backfilled.inc();
            e.backfill_waiting.set(gauge_value(engine.watermarks().backfill.len()));
        }
        tracing::info!(work_date = %date, revisions, waiting = engine.watermarks().backfill.len(), "work date older than the horizon reconciled from the store");
    }

    /// The engine was rebuilt from the store (start or after a failure). `revisions` are record revisions the
    /// re-derivation found missing from the store (normally none).
    pub fn engine_recovered(m: &Metrics, replayed: usize, revisions: usize, elapsed: Duration) {
        if let Some(e) = m.get::<EngineMetrics>() {
            e.recoveries.inc();
            e.revisions.inc_by(revisions as u64);
        }
        tracing::info!(
            replayed,
            revisions,
            elapsed_ms = elapsed.as_millis() as u64,
            "engine state rebuilt from the store"
        );
    }

    /// The engine stage failed; it is rebuilt from the store. Records wait meanwhile.
    pub fn engine_failed(m: &Metrics, error: &dyn std::fmt::Display) {
        if let Some(e) = m.get::<EngineMetrics>() {
            e.failures.inc();
        }
        tracing::error!(%error, "engine stage failed; rebuilding its state from the store");
    }

    pub fn rules_in_force(m: &Metrics, version: u32) {
        if let Some(e) = m.get::<EngineMetrics>() {
            e.rules_version.set(i64::from(version));
        }
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

    pub fn schedule_rejected(problems: &[String]) {
        for problem in problems {
            tracing::error!(%problem, "schedule not read; the schedule in force stays");
        }
    }
}
