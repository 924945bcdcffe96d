//! Upstream delivery through the real daemon: device punches -> ingest -> engine -> outbox -> sender -> the reference
//! receiver (`gatewayd upstream-sink` child process), with receiver faults and a SIGKILL of the daemon.
//!
//! It needs the attendance engine running in the daemon (the engine turns stored punches into the changes the outbox
//! delivers): `mod upstream_daemon;` goes into `main.rs` together with the engine's wiring in `app.rs`.

use std::collections::HashSet;
use std::time::Duration;

use crate::harness::dev_certs_named;
use crate::upstream::{number_after, Sink};

/// The real daemon: punches from a ZKTeco terminal (ADMS push) go through the engine, the outbox and the sender into the
/// reference receiver; the daemon is killed with SIGKILL between uploads and the receiver fails at first.
#[test]
fn the_daemon_delivers_device_punches_to_the_receiver_across_sigkill() {
    use crate::harness::{base_config, upload_attlog, wait_until, Gateway};
    const SN: &str = "UPSTREAM0001";
    let work = tempfile::tempdir().unwrap();
    let certs = dev_certs_named(work.path(), "gw-up");
    let out = work.path().join("received.jsonl");
    let mut sink = Sink::start(&certs, &out, "127.0.0.1:0", "503*2,reset");
    let port = sink.addr.rsplit(':').next().unwrap().to_owned();
    let config = format!(
        "{}[[device]]\nid = \"line2-zk\"\ndriver = \"adms\"\nserial_number = \"{SN}\"\n\n\
         [upstream]\nurl = \"https://localhost:{port}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         batch_max_items = 20\nlinger = \"50ms\"\nmax_backoff = \"1s\"\n",
        base_config("gw-up"),
        ca = certs.join("ca.pem").display(),
        cert = certs.join("client.pem").display(),
        key = certs.join("client.key").display(),
    );
    let mut gw = Gateway::start(&config);
    let upload = |gw: &Gateway, from: u32| {
        let lines: String = (from..from + 100)
            .map(|i| {
                format!("{}\t2026-11-22 {:02}:{:02}:{:02}\t0\t15\n", 1000 + i % 40, 7 + i / 3600, (i / 60) % 60, i % 60)
            })
            .collect();
        upload_attlog(gw, SN, from, lines);
    };
    upload(&gw, 0);
    sink.stdout.wait_for("punches", Duration::from_secs(60));
    gw.kill9();
    gw.spawn();
    upload(&gw, 100);
    // Wait until the receiver holds all 200 (counted from its output file, whole lines only).
    let count = || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        text.split_inclusive('\n').filter(|l| l.ends_with('\n') && l.contains("\"kind\":\"punch\"")).count()
    };
    wait_until("200 punches at the receiver", Duration::from_secs(120), count, |n| *n >= 200);
    let summary = sink.stop();
    assert!(number_after(&summary, "faults injected") >= 3, "{summary}");
    let text = std::fs::read_to_string(&out).unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "punch")
        .map(|v| v["punch_id"].as_str().unwrap().to_owned())
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (200, 200), "each punch exactly once");
    assert!(ids.iter().all(|id| id.starts_with("gw-up:line2-zk:")), "{:?}", &ids[..3]);
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(200.0));
    gw.stop();
}
