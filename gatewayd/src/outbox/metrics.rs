//! The outbox's metrics and events.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::outbox::{Filled, QueueStats};
use crate::telemetry::{gauge_value, registered, Metrics, StageMetrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// The outbox queue.
#[derive(Debug)]
pub struct OutboxMetrics {
    pub depth: Gauge,
    pub oldest_age_seconds: Gauge,
    pub enqueued: Family<KindLabel, Counter>,
    pub resend_dates: Counter,
}

impl StageMetrics for OutboxMetrics {
    fn register(registry: &mut Registry) -> OutboxMetrics {
        OutboxMetrics {
            depth: registered(
                registry,
                "gatewayd_outbox_depth",
                "Items waiting for upstream delivery",
                Gauge::default(),
            ),
            oldest_age_seconds: registered(
                registry,
                "gatewayd_outbox_oldest_age_seconds",
                "Age of the oldest undelivered item (0 when the outbox is empty)",
                Gauge::default(),
            ),
            enqueued: registered(registry, "gatewayd_outbox_enqueued", "Items enqueued, by kind", Family::default()),
            resend_dates: registered(
                registry,
                "gatewayd_upstream_resend_dates",
                "Work dates the receiver asked for again",
                Counter::default(),
            ),
        }
    }
}

/// Internal events of the outbox: each function logs and counts one thing that happened.
pub mod events {
    use super::*;

    pub fn outbox_filled(m: &Metrics, f: &Filled) {
        if let Some(o) = m.get::<OutboxMetrics>() {
            for (kind, n) in [("punch", f.punches), ("record", f.records), ("digest", f.digests)] {
                if n > 0 {
                    o.enqueued.get_or_create(&KindLabel { kind }).inc_by(n as u64);
                }
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
        if let Some(o) = m.get::<OutboxMetrics>() {
            o.depth.set(gauge_value(s.depth));
            let age = s.oldest_enqueued_ms.map_or(0, |t| (now_ms - t).max(0) / 1000);
            o.oldest_age_seconds.set(age);
        }
    }

    pub fn outbox_failed(error: &dyn std::fmt::Display, retry_in: Duration) {
        tracing::error!(%error, retry_ms = retry_in.as_millis() as u64,
            "outbox: cannot enqueue changes; nothing is lost (the change log keeps them), retrying");
    }

    pub fn resend_date(m: &Metrics, date: &str, items: usize) {
        if let Some(o) = m.get::<OutboxMetrics>() {
            o.resend_dates.inc();
        }
        tracing::info!(date, items, "receiver asked for a work date again; re-enqueued");
    }
}
