//! The upstream sender's metrics and events.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::outbox::OpenBatch;
use crate::proto::upstream::UploadAck;
use crate::telemetry::{registered, Metrics, StageMetrics};
use crate::upstream::client::SendError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// The upstream sender.
#[derive(Debug)]
pub struct UpstreamMetrics {
    pub batches: Family<ResultLabel, Counter>,
    pub delivered: Counter,
    pub send_seconds: Histogram,
    pub alarm: Gauge,
    pub cert_days_left: Gauge,
    pub tls_reload_failures: Counter,
}

impl StageMetrics for UpstreamMetrics {
    fn register(registry: &mut Registry) -> UpstreamMetrics {
        UpstreamMetrics {
            batches: registered(
                registry,
                "gatewayd_upstream_batches",
                "Upstream batch attempts, by result",
                Family::default(),
            ),
            delivered: registered(
                registry,
                "gatewayd_upstream_items_delivered",
                "Items acknowledged by the receiver",
                Counter::default(),
            ),
            send_seconds: registered(
                registry,
                "gatewayd_upstream_send_seconds",
                "Round trip of one batch",
                Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ),
            alarm: registered(
                registry,
                "gatewayd_upstream_alarm",
                "1 while the receiver refuses a batch (4xx or accepted=false): an operator must act",
                Gauge::default(),
            ),
            cert_days_left: registered(
                registry,
                "gatewayd_upstream_cert_days_left",
                "Days until the gateway's upstream client certificate expires",
                Gauge::default(),
            ),
            tls_reload_failures: registered(
                registry,
                "gatewayd_upstream_tls_reload_failures",
                "Certificate or key files that could not be loaded",
                Counter::default(),
            ),
        }
    }
}

/// Internal events of the upstream sender: each function logs and counts one thing that happened.
pub mod events {
    use super::*;

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
        let u = m.get::<UpstreamMetrics>();
        if let Some(u) = u {
            u.batches.get_or_create(&ResultLabel { result: label }).inc();
            u.send_seconds.observe(elapsed.as_secs_f64());
        }
        if result.is_ok() {
            if let Some(u) = u {
                u.delivered.inc_by(batch.count);
            }
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
        if let Some(u) = m.get::<UpstreamMetrics>() {
            u.alarm.set(1);
        }
        tracing::error!(batch_seq, %error, retry_s = retry_in.as_secs(),
            "upstream: the receiver refuses this batch; it is held (not dropped) until the receiver accepts it: \
             check the receiver, then SIGHUP to retry at once");
    }

    pub fn upstream_alarm_cleared(m: &Metrics, batch_seq: u64) {
        if let Some(u) = m.get::<UpstreamMetrics>() {
            u.alarm.set(0);
        }
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
        if let Some(u) = m.get::<UpstreamMetrics>() {
            u.tls_reload_failures.inc();
        }
        if keeping_previous {
            tracing::error!(%error, "upstream: new certificates cannot be loaded; still using the previous ones");
        } else {
            tracing::error!(%error, "upstream: certificates cannot be loaded; nothing is sent until they can");
        }
    }

    pub fn upstream_cert_days_left(m: &Metrics, cert: &std::path::Path, days: i64, warn_days: i64) {
        if let Some(u) = m.get::<UpstreamMetrics>() {
            u.cert_days_left.set(days);
        }
        if days < 0 {
            tracing::error!(cert = %cert.display(), days_ago = -days, "upstream: the gateway certificate has expired");
        } else if days <= warn_days {
            tracing::warn!(cert = %cert.display(), days_left = days, "upstream: the gateway certificate expires soon");
        }
    }
}
