//! The daemon's lifecycle: readiness, health, metrics, SIGHUP reload, SIGTERM within 10 s, damaged (quarantined) or
//! busy (refused) stores.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::harness::{base_config, run_cli, Gateway};

fn config_with_device() -> String {
    format!("{}[[device]]\nid = \"face-1\"\ndriver = \"mqtt\"\nsecret = \"face-1-secret\"\n", base_config("gw-life"))
}

#[test]
fn serves_health_and_metrics_and_stops_on_sigterm() {
    let mut gw = Gateway::start(&config_with_device());
    assert_eq!(gw.get("/healthz"), (200, "ok\n".into()));
    assert_eq!(gw.get("/readyz").0, 200);
    let (status, metrics) = gw.get("/metrics");
    assert_eq!(status, 200);
    for series in [
        "gatewayd_punches_received_total{driver=\"mqtt\",device=\"face-1\"} 0",
        "gatewayd_punches_stored_total{driver=\"mqtt\",device=\"face-1\"} 0",
        "gatewayd_store_size_bytes",
        "gatewayd_ack_latency_seconds",
    ] {
        assert!(metrics.contains(series), "metrics lack {series}:\n{metrics}");
    }
    let (status, took) = gw.stop();
    assert_eq!(status.code(), Some(0), "stderr: {}", gw.stderr);
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    assert!(!gw.stderr.contains("panicked"), "{}", gw.stderr);
}

#[test]
fn sighup_reloads_and_keeps_serving_on_a_bad_file() {
    let mut gw = Gateway::start(&config_with_device());
    // A valid change: a second device.
    let two =
        format!("{}[[device]]\nid = \"face-2\"\ndriver = \"mqtt\"\nsecret = \"face-2-secret\"\n", config_with_device());
    std::fs::write(&gw.config_path, two).unwrap();
    gw.signal(Signal::SIGHUP);
    gw.wait_for("READY=1", Duration::from_secs(10));
    // A broken file: the daemon keeps the running configuration and keeps serving.
    std::fs::write(&gw.config_path, "[gateway]\nid = ").unwrap();
    gw.signal(Signal::SIGHUP);
    gw.wait_for("READY=1", Duration::from_secs(10));
    assert_eq!(gw.get("/healthz").0, 200);
    let (status, _) = gw.stop();
    assert_eq!(status.code(), Some(0));
    assert!(gw.stderr.contains("configuration reloaded"), "{}", gw.stderr);
    assert!(gw.stderr.contains("configuration not reloaded"), "{}", gw.stderr);
}

#[test]
fn notifies_systemd_stopping() {
    let mut gw = Gateway::start(&config_with_device());
    gw.signal(Signal::SIGTERM);
    gw.wait_for("STOPPING=1", Duration::from_secs(10));
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// Starts the daemon on a data dir whose store holds `conf` and `db` as given; it must come up on a fresh store with the
/// damaged one quarantined (bytes kept, reason written, ERROR logged, metric raised). Returns the REASON.txt text.
fn starts_with_the_store_quarantined(conf: &[u8], db: &[u8], id: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data").join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("conf"), conf).unwrap();
    std::fs::write(store.join("db"), db).unwrap();
    let mut gw = Gateway::start_in(dir, &base_config(id));
    assert_eq!(gw.metric("gatewayd_store_quarantines"), Some(1.0));
    assert_eq!(gw.get("/readyz").0, 200);
    let (status, _) = gw.stop();
    assert_eq!(status.code(), Some(0), "{}", gw.stderr);
    assert!(
        gw.stderr.contains("ERROR") && gw.stderr.contains("store damaged: moved aside to quarantine"),
        "{}",
        gw.stderr
    );
    assert!(!gw.stderr.contains("panicked"), "{}", gw.stderr);
    let quarantine = gw.data_dir().join("quarantine");
    let moved = std::fs::read_dir(&quarantine).unwrap().next().unwrap().unwrap().path();
    // The files are kept (sled's own recovery may already have rewritten parts of them while trying to open them).
    assert!(moved.join("store").join("db").is_file() && moved.join("store").join("conf").is_file(), "{moved:?}");
    std::fs::read_to_string(moved.join("REASON.txt")).unwrap()
}

#[test]
fn a_damaged_store_is_quarantined_not_a_panic() {
    // Garbage where sled keeps its configuration and its log.
    let reason =
        starts_with_the_store_quarantined(b"\x00\xffnot a sled config at all\n", &[0xA5u8; 64 * 1024], "gw-damaged");
    assert!(reason.contains("store"), "{reason}");
}

#[test]
fn random_bytes_in_the_store_are_reported_not_taken_for_an_empty_store() {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let noise: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let reason = starts_with_the_store_quarantined(b"garbage", &noise, "gw-noise");
    assert!(reason.contains("hold no readable gatewayd data") || reason.contains("damaged"), "{reason}");
}

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let gw = Gateway::start(&base_config("gw-busy"));
    let (code, _, stderr) = run_cli(&["run", "--config", gw.config_path.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("another gatewayd process"), "{stderr}");
}
