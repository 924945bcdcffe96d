//! Logs and the metrics registry.
//!
//! Each stage owns its metrics: a struct of metric families that implements [`StageMetrics`] (it registers them with
//! their names and help texts), and the internal events that count into it, like vector's internal events (emitting
//! one logs it and counts it). This module knows none of them: [`Metrics`] holds the Prometheus registry and one
//! instance of each stage's struct, registered once when the daemon is assembled (`crate::app::metrics`), and hands a
//! stage its own with [`Metrics::get`]. After assembly nothing is added, so reading it takes no lock. `/metrics`
//! encodes the registry. Labels are low cardinality (`driver`, `device`, `reason`), never employee ids.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

pub use drivers::telemetry::registered;
use drivers::telemetry::DriverMetrics;
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

/// A stage's metric families. `register` creates them and registers each with the registry under its name.
pub trait StageMetrics: Send + Sync + 'static {
    fn register(registry: &mut Registry) -> Self
    where
        Self: Sized;
}

/// The registry and every stage's metrics. Cheap to clone; read-only once built.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    stages: Arc<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
    /// The drivers' metrics (the drivers crate owns them; they are passed to it as a value).
    pub drivers: DriverMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("stages", &self.stages.len()).finish()
    }
}

impl Metrics {
    /// Starts a registry with the drivers' metrics; add each stage's with [`MetricsBuilder::stage`].
    pub fn builder() -> MetricsBuilder {
        let mut registry = Registry::default();
        let drivers = DriverMetrics::register(&mut registry);
        MetricsBuilder { registry, stages: HashMap::new(), drivers }
    }

    /// The metrics of stage `T`, when they were registered. Events of a stage whose metrics were not registered (a
    /// test that assembles only part of the daemon) still log; they count nothing.
    pub fn get<T: StageMetrics>(&self) -> Option<&T> {
        self.stages.get(&TypeId::of::<T>()).and_then(|b| b.downcast_ref::<T>())
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

/// Builds [`Metrics`].
pub struct MetricsBuilder {
    registry: Registry,
    stages: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
    drivers: DriverMetrics,
}

impl MetricsBuilder {
    /// Registers the metrics of stage `T` (once; a second call for the same type changes nothing).
    pub fn stage<T: StageMetrics>(mut self) -> MetricsBuilder {
        if !self.stages.contains_key(&TypeId::of::<T>()) {
            let metrics = T::register(&mut self.registry);
            self.stages.insert(TypeId::of::<T>(), Box::new(metrics));
        }
        self
    }

    pub fn build(self) -> Metrics {
        Metrics { registry: Arc::new(self.registry), stages: Arc::new(self.stages), drivers: self.drivers }
    }
}

/// Clamps a count to a gauge's `i64`.
pub fn gauge_value(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    struct One {
        hits: Counter,
    }

    impl StageMetrics for One {
        fn register(registry: &mut Registry) -> One {
            let m = One { hits: Counter::default() };
            registry.register("test_hits", "Hits", m.hits.clone());
            m
        }
    }

    struct Other;

    impl StageMetrics for Other {
        fn register(_: &mut Registry) -> Other {
            Other
        }
    }

    #[test]
    fn a_stage_gets_its_registered_metrics_and_only_those() {
        let metrics = Metrics::builder().stage::<One>().stage::<One>().build();
        metrics.get::<One>().map(|m| m.hits.inc());
        assert!(metrics.get::<Other>().is_none());
        let text = metrics.encode();
        assert!(text.contains("test_hits_total 1"), "{text}");
        assert_eq!(text.matches("# TYPE test_hits counter").count(), 1, "registered once: {text}");
    }
}
