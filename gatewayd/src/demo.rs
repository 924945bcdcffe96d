//! `gatewayd demo`: a self-contained tour on a fresh machine, no root, no hardware.
//!
//! It writes a configuration into a temporary directory (loopback listeners on free ports), starts the real gateway
//! from it, runs simulated devices against it, and prints every punch as it becomes durable. Ctrl-C stops it.

use std::path::Path;
use std::time::Duration;

use drivers::sink::Subject;
use drivers::{DevicePunch, Method, Outcome, PunchSink};
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError};
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo: {0}")]
    Setup(String),
    #[error(transparent)]
    App(#[from] AppError),
}

/// The demo's configuration file text for a data dir.
pub fn demo_config(data_dir: &Path) -> String {
    format!(
        r#"[gateway]
id = "demo-gw"
data_dir = "{data}"
timezone = "Asia/Shanghai"

[api]
listen = "127.0.0.1:0"

[mqtt]
listen = "127.0.0.1:0"

[[device]]
id = "hall-face-1"
driver = "mqtt"
secret = "demo-secret-1"
"#,
        data = data_dir.join("data").display()
    )
}

pub async fn run() -> Result<(), DemoError> {
    let dir = std::env::temp_dir().join(format!("gatewayd-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| DemoError::Setup(format!("{}: {e}", dir.display())))?;
    let config_path = dir.join("gatewayd.toml");
    // A simulated NFC reader and fingerprint module on pseudo-terminals, driven by the real pn532 and r30x drivers.
    let serial = drivers::sim::scenario::SerialBench::open()
        .map_err(|e| DemoError::Setup(format!("virtual serial ports: {e}")))?;
    let config_text = demo_config(&dir) + &serial.config("gate-nfc-1", "door-fp-1");
    std::fs::write(&config_path, config_text)
        .map_err(|e| DemoError::Setup(format!("{}: {e}", config_path.display())))?;
    let config = Config::load(&config_path).map(|(c, _)| c).map_err(|problems| {
        DemoError::Setup(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    })?;

    println!("gatewayd demo: data in {}", dir.display());
    let running = app::start(config, config_path).await?;
    println!("  api      http://{}/metrics", running.listeners.api);
    println!("  Ctrl-C to stop\n");

    let stop = running.shutdown_token();
    let printer = tokio::spawn(print_punches(running.store.clone(), running.durable.clone(), stop.clone()));
    let device = tokio::spawn(simulated_face_terminal(running.sink.for_driver("demo"), stop.clone()));
    println!("  serial   gate-nfc-1 (PN532) on {}", serial.nfc_port.path().display());
    println!("  serial   door-fp-1 (R503) on {}", serial.fingerprint_port.path().display());
    let bench = tokio::spawn(serial.run(stop.clone()));
    let result = running.run_until_signalled().await;
    bench.abort();
    device.abort();
    printer.abort();
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(DemoError::from)
}

/// A face terminal that recognises a few employees at random, feeding the ingest path like a driver does.
async fn simulated_face_terminal(sink: PunchSink, stop: CancellationToken) {
    let employees = ["E1001", "E1002", "E1003", "E2001"];
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        seq += 1;
        let now = jiff::Timestamp::now().as_millisecond();
        let employee = employees[(seq as usize) % employees.len()];
        let punch = DevicePunch {
            device_id: "hall-face-1".into(),
            device_seq: Some(seq),
            method: Method::Face,
            subject: Subject::Employee(employee.into()),
            device_time_ms: now,
            received_time_ms: now,
            realtime: true,
            geo: None,
            score: Some(0.9),
            attributes: Vec::new(),
        };
        match sink.submit(punch).await {
            Outcome::Stored { .. } => {}
            Outcome::Rejected(r) => println!("  device hall-face-1: punch {seq} rejected: {r}"),
        }
    }
}

/// Prints each punch once it is durable.
async fn print_punches(store: Store, mut durable: tokio::sync::watch::Receiver<u64>, stop: CancellationToken) {
    let mut printed = *durable.borrow();
    loop {
        tokio::select! {
            changed = durable.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
        for punch in store.after(printed).take(1000) {
            match punch {
                Ok(p) => {
                    printed = p.seq;
                    let who = p.employee().or(p.credential()).unwrap_or("?");
                    let at =
                        jiff::Timestamp::from_millisecond(p.device_time_ms).map(|t| t.to_string()).unwrap_or_default();
                    println!(
                        "  punch  {:<28} {:<12} {:<11} {who:<10} {at}",
                        p.punch_id,
                        p.device_id,
                        p.method.as_str()
                    );
                }
                Err(e) => {
                    println!("  store error: {e}");
                    return;
                }
            }
        }
    }
}
