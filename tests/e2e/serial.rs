//! Serial devices end to end: the real daemon drives a simulated PN532 reader on a pseudo-terminal and a simulated R503
//! fingerprint module behind a TCP serial server; punches are checked in `/metrics` and then in the store itself.

use std::path::Path;
use std::time::Duration;

use drivers::pn532::sim::Pn532Sim;
use drivers::r30x::sim::{self as r30x, R30xSim};
use drivers::sim::pty::VirtualPort;
use drivers::sim::{serve_tcp, Fault};
use gatewayd::store::Store;
use tokio_util::sync::CancellationToken;

use crate::harness::{base_config, http, wait_until, Gateway};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

const LIMIT: Duration = Duration::from_secs(20);

/// Waits until `observe` gives a state for which `done` holds.
fn until<S: std::fmt::Debug>(what: &str, observe: impl FnMut() -> S, done: impl FnMut(&S) -> bool) {
    wait_until(what, LIMIT, observe, done);
}

fn series(name: &str, driver: &str, device: &str) -> String {
    format!("{name}{{driver=\"{driver}\",device=\"{device}\"}}")
}

fn metric(gw: &Gateway, name: &str, driver: &str, device: &str) -> f64 {
    gw.metric(&series(name, driver, device)).unwrap_or(0.0)
}

fn rejected(gw: &Gateway, driver: &str, device: &str, reason: &str) -> f64 {
    gw.metric(&format!(
        "gatewayd_punches_rejected_total{{driver=\"{driver}\",device=\"{device}\",reason=\"{reason}\"}}"
    ))
    .unwrap_or(0.0)
}

/// Every stored punch as (device, method, credential, score).
fn stored(data_dir: &Path) -> Vec<(String, String, String, Option<f32>)> {
    let store = Store::open(&data_dir.join("store"), 8).unwrap();
    store
        .after(0)
        .map(|p| {
            let p = p.unwrap();
            (p.device_id.clone(), p.method.as_str().to_owned(), p.credential().unwrap_or("").to_owned(), p.score)
        })
        .collect()
}

/// Plugs a new pseudo-terminal in at `link` and serves the simulator on it until the returned token is cancelled.
fn plug(rt: &tokio::runtime::Runtime, sim: &Pn532Sim, link: &Path) -> CancellationToken {
    let _guard = rt.enter();
    let port = VirtualPort::open().unwrap();
    port.link_at(link).unwrap();
    let stop = CancellationToken::new();
    let (s, st) = (sim.clone(), stop.clone());
    rt.spawn(async move { s.serve(port, st).await });
    stop
}

#[test]
fn pn532_on_a_pseudo_terminal_punches_once_per_presentation_and_survives_replugging() {
    let rt = runtime();
    let sim = Pn532Sim::new();
    let ports = tempfile::tempdir().unwrap();
    let link = ports.path().join("ttyNFC0");
    let first = plug(&rt, &sim, &link);
    let config = format!(
        "{}[[device]]\nid = \"gate-nfc\"\ndriver = \"pn532\"\nport = \"{}\"\nbaud = 115200\npoll_interval = \"30ms\"\n\
         hold_off = \"0s\"\nresponse_timeout = \"250ms\"\n",
        base_config("gw-serial"),
        link.display()
    );
    let mut gw = Gateway::start(&config);
    let stored_total = |gw: &Gateway| metric(gw, "gatewayd_punches_stored_total", "pn532", "gate-nfc");
    until("the reader online", || metric(&gw, "gatewayd_device_online", "pn532", "gate-nfc"), |v| *v == 1.0);

    // Present, hold for many polls, remove, present again: two punches.
    sim.present(&[0x04, 0xA1, 0xB2, 0xC3]);
    until("the first punch", || stored_total(&gw), |v| *v == 1.0);
    let held = sim.stats().polls_with_card;
    until("polls with the card held", || sim.stats().polls_with_card, |v| *v >= held + 10);
    assert_eq!(stored_total(&gw), 1.0, "a held card punched more than once");
    sim.remove();
    let empty = sim.stats().polls_without_card;
    until("a poll without the card", || sim.stats().polls_without_card, |v| *v > empty);
    sim.present(&[0x04, 0xA1, 0xB2, 0xC3]);
    until("the second punch", || stored_total(&gw), |v| *v == 2.0);

    // Corrupted frames and noise are counted; the reader keeps working.
    sim.remove();
    for fault in
        [Fault::Garbage(vec![0x13, 0x37, 0xC0, 0xFF, 0xEE]), Fault::CorruptChecksum, Fault::WrongReply, Fault::Truncate]
    {
        sim.inject(fault);
    }
    let commands = sim.stats().commands;
    until("the faults to be served", || sim.stats().commands, |v| *v >= commands + 6);
    assert!(rejected(&gw, "pn532", "gate-nfc", "garbage") >= 1.0);
    assert!(rejected(&gw, "pn532", "gate-nfc", "bad_checksum") >= 1.0);
    assert!(rejected(&gw, "pn532", "gate-nfc", "wrong_reply") >= 1.0);

    // Unplug: the reader goes offline. Plug a new pseudo-terminal in at the same path: it comes back by itself.
    first.cancel();
    until("the reader offline", || metric(&gw, "gatewayd_device_online", "pn532", "gate-nfc"), |v| *v == 0.0);
    let _second = plug(&rt, &sim, &link);
    until("the reader back online", || metric(&gw, "gatewayd_device_online", "pn532", "gate-nfc"), |v| *v == 1.0);
    assert!(metric(&gw, "gatewayd_device_reconnects_total", "pn532", "gate-nfc") >= 1.0);
    sim.present(&[0x08, 0x11, 0x22, 0x33]);
    until("a punch after re-plugging", || stored_total(&gw), |v| *v == 3.0);

    let (status, _) = gw.stop();
    assert_eq!(status.code(), Some(0), "{}", gw.stderr);
    assert!(!gw.stderr.contains("panicked"), "{}", gw.stderr);
    let punches = stored(&gw.data_dir());
    let cards: Vec<&str> = punches.iter().map(|p| p.2.as_str()).collect();
    assert_eq!(cards, ["04A1B2C3", "04A1B2C3", "08112233"]);
    assert!(punches.iter().all(|p| p.0 == "gate-nfc" && p.1 == "card"));
}

#[test]
fn r503_behind_a_tcp_serial_server_punches_fingerprints_and_reconnects() {
    let rt = runtime();
    let sim = R30xSim::new(r30x::Model::R503).with_password(0x00C0_FFEE);
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = sim.clone();
    rt.spawn(serve_tcp(listener, stop.clone(), move |conn| {
        let s = s.clone();
        async move { s.serve(conn, CancellationToken::new()).await }
    }));
    let config = format!(
        "{}[[device]]\nid = \"door-fp\"\ndriver = \"r30x\"\nport = \"tcp://{addr}\"\npassword = {}\nmin_score = 60\n\
         poll_interval = \"30ms\"\nresponse_timeout = \"250ms\"\n",
        base_config("gw-serial"),
        0x00C0_FFEE
    );
    let mut gw = Gateway::start(&config);
    let stored_total = |gw: &Gateway| metric(gw, "gatewayd_punches_stored_total", "r30x", "door-fp");
    until("the module online", || metric(&gw, "gatewayd_device_online", "r30x", "door-fp"), |v| *v == 1.0);

    // A finger matching page 7 with score 120: one punch however long it stays, then the LED turns green.
    sim.place_finger(7, 120);
    until("the fingerprint punch", || stored_total(&gw), |v| *v == 1.0);
    until("the green LED", || sim.leds().last().copied(), |v| *v == Some(r30x::color::GREEN));
    let polls = sim.stats().polls;
    until("polls with the finger held", || sim.stats().polls, |v| *v >= polls + 10);
    assert_eq!(stored_total(&gw), 1.0, "a held finger punched more than once");

    // A weak match is refused with a red LED.
    sim.lift();
    let polls = sim.stats().polls;
    until("the finger lifted", || sim.stats().polls, |v| *v > polls + 1);
    sim.place_finger(12, 20);
    until("low score counted", || rejected(&gw, "r30x", "door-fp", "low_score"), |v| *v == 1.0);
    until("the red LED", || sim.leds().last().copied(), |v| *v == Some(r30x::color::RED));
    sim.lift();

    // Noise and a corrupted packet on the line, then the serial server drops the connection: counted, reconnected.
    sim.inject(Fault::Garbage(vec![0x42; 7]));
    sim.inject(Fault::CorruptChecksum);
    let commands = sim.stats().commands;
    until("the faults to be served", || sim.stats().commands, |v| *v >= commands + 3);
    sim.hang_up();
    until("a reconnect", || metric(&gw, "gatewayd_device_reconnects_total", "r30x", "door-fp"), |v| *v >= 1.0);
    sim.place_finger(7, 120);
    until("a punch after reconnecting", || stored_total(&gw), |v| *v == 2.0);
    assert!(rejected(&gw, "r30x", "door-fp", "garbage") >= 1.0);
    assert!(rejected(&gw, "r30x", "door-fp", "bad_checksum") >= 1.0);

    let (status, _) = gw.stop();
    assert_eq!(status.code(), Some(0), "{}", gw.stderr);
    stop.cancel();
    let punches = stored(&gw.data_dir());
    assert_eq!(punches.len(), 2);
    for (device, method, credential, score) in punches {
        assert_eq!((device.as_str(), method.as_str(), credential.as_str()), ("door-fp", "fingerprint", "fp:7"));
        assert_eq!(score, Some(120.0));
    }
}

#[test]
fn an_unreachable_bluetooth_device_is_a_clear_error_not_a_crash() {
    let config = format!(
        "{}[[device]]\nid = \"bt-nfc\"\ndriver = \"pn532\"\nport = \"rfcomm://00:11:22:33:44:55/1\"\n",
        base_config("gw-serial")
    );
    let mut gw = Gateway::start(&config);
    assert_eq!(gw.get("/healthz").0, 200);
    assert_eq!(metric(&gw, "gatewayd_device_online", "pn532", "bt-nfc"), 0.0);
    // The driver reports why the link is down once it has tried (the device list's last error, then the log); the
    // daemon keeps serving meanwhile.
    let auth = format!("Bearer {}", gw.token(&["--role", "admin"]));
    let last_error = || {
        let (status, body) = http("GET", gw.addr("api"), "/api/v1/devices", &[("authorization", auth.as_str())], None);
        assert_eq!(status, 200, "{body}");
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        list["devices"][0]["status"]["last_error"].clone()
    };
    until("the driver to report the link down", last_error, |e| e.as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(gw.get("/healthz").0, 200);
    let (status, _) = gw.stop();
    assert_eq!(status.code(), Some(0), "{}", gw.stderr);
    assert!(gw.stderr.contains("rfcomm://00:11:22:33:44:55/1"), "{}", gw.stderr);
    assert!(!gw.stderr.contains("panicked"), "{}", gw.stderr);
}
