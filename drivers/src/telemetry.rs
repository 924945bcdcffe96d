//! Driver and ingest metrics. One place defines each metric; the helpers here count it.
//!
//! Labels are low cardinality: `driver` and `device` come from the configuration, `reason` from a fixed set of labels.
//! Employee ids and credentials never appear in a label.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    pub driver: String,
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub driver: String,
    pub device: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriverLabel {
    pub driver: String,
}

fn ack_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

#[derive(Debug)]
struct Inner {
    received: Family<DeviceLabels, Counter>,
    stored: Family<DeviceLabels, Counter>,
    duplicates: Family<DeviceLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
    refused: Family<RejectLabels, Counter>,
    online: Family<DeviceLabels, Gauge>,
    reconnects: Family<DeviceLabels, Counter>,
    ack_latency: Family<DriverLabel, Histogram, fn() -> Histogram>,
}

/// The driver-side metrics, shared by every driver and the ingest sink. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DriverMetrics(Arc<Inner>);

impl Default for DriverMetrics {
    fn default() -> Self {
        DriverMetrics(Arc::new(Inner {
            received: Family::default(),
            stored: Family::default(),
            duplicates: Family::default(),
            rejected: Family::default(),
            refused: Family::default(),
            online: Family::default(),
            reconnects: Family::default(),
            ack_latency: Family::new_with_constructor(ack_histogram as fn() -> Histogram),
        }))
    }
}

fn labels(driver: &str, device: &str) -> DeviceLabels {
    DeviceLabels { driver: driver.to_owned(), device: device.to_owned() }
}

impl DriverMetrics {
    /// Creates the metrics and registers them under the `gatewayd_` prefix.
    pub fn register(registry: &mut Registry) -> DriverMetrics {
        let metrics = DriverMetrics::default();
        let m = &metrics.0;
        registry.register(
            "gatewayd_punches_received",
            "Punches and punch-like messages received from devices",
            m.received.clone(),
        );
        registry.register(
            "gatewayd_punches_stored",
            "Punches durable in the store (re-sends included)",
            m.stored.clone(),
        );
        registry.register(
            "gatewayd_punches_duplicate",
            "Re-sent punches recognised by punch_id and not stored again",
            m.duplicates.clone(),
        );
        registry.register("gatewayd_punches_rejected", "Punches rejected, by reason", m.rejected.clone());
        registry.register(
            "gatewayd_device_requests_refused",
            "Device requests refused before they were read (an ADMS terminal pushing from an address not allowed)",
            m.refused.clone(),
        );
        registry.register("gatewayd_device_online", "1 when the device is connected", m.online.clone());
        registry.register("gatewayd_device_reconnects", "Times a device link was re-established", m.reconnects.clone());
        registry.register(
            "gatewayd_ack_latency_seconds",
            "Time from receiving a punch to telling the device it is durable",
            m.ack_latency.clone(),
        );
        metrics
    }

    /// A device request refused before it was read, by reason.
    pub fn refused(&self, driver: &str, device: &str, reason: &str) {
        let l = RejectLabels { driver: driver.to_owned(), device: device.to_owned(), reason: reason.to_owned() };
        self.0.refused.get_or_create(&l).inc();
    }

    /// Creates the series of a configured device at zero, so they show in `/metrics` before its first punch.
    pub fn init_device(&self, driver: &str, device: &str) {
        let l = labels(driver, device);
        let _ = self.0.received.get_or_create(&l);
        let _ = self.0.stored.get_or_create(&l);
        let _ = self.0.duplicates.get_or_create(&l);
        let _ = self.0.online.get_or_create(&l);
        let _ = self.0.ack_latency.get_or_create(&DriverLabel { driver: driver.to_owned() });
    }

    pub fn received(&self, driver: &str, device: &str) {
        self.0.received.get_or_create(&labels(driver, device)).inc();
    }

    pub fn stored(&self, driver: &str, device: &str, duplicate: bool) {
        self.0.stored.get_or_create(&labels(driver, device)).inc();
        if duplicate {
            self.0.duplicates.get_or_create(&labels(driver, device)).inc();
        }
    }

    pub fn rejected(&self, driver: &str, device: &str, reason: &str) {
        let key = RejectLabels { driver: driver.to_owned(), device: device.to_owned(), reason: reason.to_owned() };
        self.0.rejected.get_or_create(&key).inc();
    }

    pub fn set_online(&self, driver: &str, device: &str, online: bool) {
        self.0.online.get_or_create(&labels(driver, device)).set(i64::from(online));
    }

    pub fn reconnected(&self, driver: &str, device: &str) {
        self.0.reconnects.get_or_create(&labels(driver, device)).inc();
    }

    pub fn ack_latency(&self, driver: &str, elapsed: Duration) {
        self.0.ack_latency.get_or_create(&DriverLabel { driver: driver.to_owned() }).observe(elapsed.as_secs_f64());
    }

    /// Reads a counter (tests and status pages).
    pub fn stored_count(&self, driver: &str, device: &str) -> u64 {
        self.0.stored.get_or_create(&labels(driver, device)).get()
    }

    pub fn rejected_count(&self, driver: &str, device: &str, reason: &str) -> u64 {
        let key = RejectLabels { driver: driver.to_owned(), device: device.to_owned(), reason: reason.to_owned() };
        self.0.rejected.get_or_create(&key).get()
    }
}

/// Registers `metric` under `name` with its help text and returns it: a stage's metrics struct is built field by field
/// from these calls, so each metric is named once, where it is created.
pub fn registered<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}
