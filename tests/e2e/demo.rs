//! `gatewayd demo`, the README's second way to run the gateway: the real binary with its simulated devices (MQTT face
//! terminal, ZKTeco PUSH terminal, PN532 and R503 on pseudo-terminals) and its reference receiver. Every kind of
//! device gets its answers, records are made and batches reach the receiver; the face terminal connects once and the
//! demo stops cleanly on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::bin;

#[test]
fn demo_runs_every_simulated_device_end_to_end_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(bin())
        .arg("demo")
        .env("TMPDIR", dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // What the tour must show: an MQTT ack, an ADMS `OK: n`, a record, a batch at the receiver.
    let wanted = [
        ("mqtt ack", r#"mqtt  {"seq":1,"status":"stored"}"#),
        ("adms ack", "adms  HTTP/1.1 200 OK OK: "),
        ("record", "  record "),
        ("batch at the receiver", "  cloud  batch "),
    ];
    let mut seen = [false; 4];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut output = Vec::new();
    while !seen.iter().all(|s| *s) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "demo did not show {:?} in time; stdout:\n{}",
                wanted.iter().zip(seen).filter(|(_, s)| !s).map(|(w, _)| w.0).collect::<Vec<_>>(),
                output.join("\n")
            )
        });
        for (i, (_, text)) in wanted.iter().enumerate() {
            seen[i] |= line.contains(text);
        }
        output.push(line);
    }
    let started = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "demo did not stop within 15 s of Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "demo exited with {status}");
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let connects = stderr.matches(r#"mqtt device connected device="hall-face-1""#).count();
    assert_eq!(connects, 1, "the face terminal connected {connects} times:\n{stderr}");
}
