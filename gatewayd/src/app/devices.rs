//! The devices: the MQTT and ADMS device tables that follow reloads, and the device manager that keeps one supervised
//! task per serial or Bluetooth device.

use std::sync::Arc;

use drivers::config::DeviceConfig;
use drivers::status::StatusBoard;
use drivers::{DriverContext, PunchSink};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::reload::Updates;
use crate::config::Config;
use crate::daemon::{self, Backoff};
use crate::telemetry::Metrics;

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
pub(super) fn spawn_device_manager(
    config: &Arc<Config>,
    mut updates: Updates,
    sink: &PunchSink,
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
    format!("{a:?}") == format!("{b:?}")
}
