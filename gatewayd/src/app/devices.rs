//! The devices: the MQTT and ADMS device tables that follow reloads, the device manager that keeps one supervised
//! task per serial, Bluetooth or 4370 device, and the store's history those tasks may ask ([`StoreHistory`]).

use std::sync::Arc;

use drivers::config::DeviceConfig;
use drivers::status::StatusBoard;
use drivers::{DriverContext, PunchSink};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::reload::Updates;
use crate::config::Config;
use crate::daemon::{self, Backoff};
use crate::store::Store;
use crate::telemetry::Metrics;

/// The store as drivers see it ([`drivers::history::StoredPunches`]).
pub(super) struct StoreHistory(pub Store);

impl drivers::history::StoredPunches for StoreHistory {
    /// The latest device time of the device's punches: the device postings of the last day, then of the last month,
    /// the last year, and all time, until one window has a punch. Device times up to a day ahead are accepted by the
    /// store, so every window ends a day after now.
    fn latest_device_time(&self, device: &str) -> Result<Option<i64>, String> {
        const DAY: i64 = 86_400_000;
        let now = jiff::Timestamp::now().as_millisecond();
        let to = now + crate::punch::MAX_FUTURE_MS + 1;
        for from in [now - DAY, now - 31 * DAY, now - 366 * DAY, crate::punch::MIN_DEVICE_TIME_MS] {
            let mut latest = None;
            for p in self.0.by_device(device, from, to) {
                let p = p.map_err(|e| e.to_string())?;
                latest = latest.max(Some(p.device_time_ms));
            }
            if latest.is_some() {
                return Ok(latest);
            }
        }
        Ok(None)
    }

    fn count_between(&self, device: &str, from_ms: i64, to_ms: i64) -> Result<u64, String> {
        let mut n = 0;
        for p in self.0.by_device(device, from_ms, to_ms) {
            p.map_err(|e| e.to_string())?;
            n += 1;
        }
        Ok(n)
    }
}

/// The MQTT service settings from the configuration.
pub(super) fn mqtt_settings(config: &Config) -> drivers::mqtt::MqttSettings {
    let tls = match (&config.mqtt.tls_listen, &config.mqtt.tls) {
        (Some(listen), Some(files)) => Some(drivers::mqtt::MqttTls {
            listen: listen.clone(),
            cert: files.cert.clone(),
            key: files.key.clone(),
            client_ca: files.client_ca.clone(),
        }),
        _ => None,
    };
    drivers::mqtt::MqttSettings {
        listen: config.mqtt.listen.clone(),
        tls,
        max_payload_bytes: config.mqtt.max_payload_bytes,
    }
}

/// Feeds configuration reloads to the MQTT credentials and the ADMS serial-number table, so devices added or removed
/// by SIGHUP take effect without a restart.
pub(super) fn spawn_device_tables(
    mut updates: Updates,
    mqtt: drivers::mqtt::MqttService,
    adms: drivers::adms::Adms,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(async move {
        loop {
            tokio::select! {
                changed = updates.changed() => if changed.is_err() { break },
                _ = cancel.cancelled() => break,
            }
            let config = updates.latest();
            mqtt.update_devices(&config.devices);
            adms.update_devices(&config.devices);
            updates.applied(&config);
        }
    });
}

/// Keeps one supervised task per serial device, following configuration reloads: removed or changed devices are stopped,
/// new ones started; unchanged ones keep running (their connections are not dropped).
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn_device_manager(
    config: &Arc<Config>,
    mut updates: Updates,
    sink: &PunchSink,
    history: drivers::history::History,
    people: drivers::people::PeopleFeed,
    metrics: &Metrics,
    status: &StatusBoard,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) {
    let status = status.clone();
    let sink = sink.clone();
    let metrics = metrics.clone();
    let cancel = cancel.clone();
    let inner = tracker.clone();
    let timezone = config.timezone();
    tracker.spawn(async move {
        let mut running: Vec<(DeviceConfig, CancellationToken)> = Vec::new();
        loop {
            let current = updates.latest();
            let wanted: Vec<&DeviceConfig> =
                current.devices.iter().filter(|d| drivers::driver::is_task_driver(d.driver)).collect();
            running.retain(|(dev, token)| {
                let keep = wanted.iter().any(|w| same_device(w, dev));
                if !keep {
                    tracing::info!(device = %dev.id, "device removed or changed; stopping its driver");
                    token.cancel();
                }
                keep
            });
            for dev in wanted {
                if running.iter().any(|(r, _)| same_device(r, dev)) {
                    continue;
                }
                let token = cancel.child_token();
                let ctx = DriverContext {
                    device: dev.clone(),
                    sink: sink.for_driver(dev.driver.as_str()),
                    cancel: token.clone(),
                    metrics: metrics.drivers.clone(),
                    status: status.clone(),
                    timezone: timezone.clone(),
                    history: history.clone(),
                    people: people.clone(),
                };
                let driver = dev.driver.as_str();
                inner.spawn(daemon::supervise(dev.id.clone(), driver, Backoff::default(), token.clone(), move || {
                    drivers::driver::run(ctx.clone())
                }));
                tracing::info!(device = %dev.id, driver, "driver started");
                running.push((dev.clone(), token));
            }
            updates.applied(&current);
            tokio::select! {
                changed = updates.changed() => if changed.is_err() { break },
                _ = cancel.cancelled() => break,
            }
        }
    });
}

pub(super) fn same_device(a: &DeviceConfig, b: &DeviceConfig) -> bool {
    // The comm key's `Debug` is masked: compared on its own.
    format!("{a:?}") == format!("{b:?}") && a.comm_key == b.comm_key
}
