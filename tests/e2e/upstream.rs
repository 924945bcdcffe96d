//! Upstream delivery with real processes: `gatewayd certs dev` makes the certificates, `gatewayd upstream-sink` is the
//! receiver (a child process, restarted and told to fail), and the gateway side is a child process too, killed with
//! SIGKILL while a batch is in flight. Afterwards every punch and the newest revision of every record must be in the
//! receiver's output, none twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gatewayd::outbox::{feeder, Outbox};
use gatewayd::proto::upstream::{AttendanceRecord, Punch};
use gatewayd::reconcile::changes::{Change, ChangeLog};
use gatewayd::store::Store;

use crate::harness::{bin, dev_certs_named};

const ENV_DIR: &str = "GATEWAYD_UPSTREAM_CHILD_DIR";
const PUNCHES: u64 = 3000;
const RECORDS: u64 = 40;
const REVISIONS: u32 = 3;
/// 2026-11-22 08:00 in Shanghai.
const T0: i64 = 1_795_305_600_000;

/// Lines a child process prints, collected by a reader thread.
pub(crate) struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn follow(stream: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx, seen: Vec::new() }
    }

    /// Waits for a line containing `needle`; panics with what was seen after `limit`.
    pub(crate) fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {needle:?} within {limit:?}; seen:\n{}", self.seen.join("\n")),
            }
        }
    }
}

/// `gatewayd upstream-sink` as a child process.
pub(crate) struct Sink {
    child: Child,
    pub(crate) stdout: Lines,
    pub(crate) addr: String,
}

impl Sink {
    pub(crate) fn start(certs: &Path, out: &Path, listen: &str, fail: &str) -> Sink {
        let mut cmd = Command::new(bin());
        cmd.args(["upstream-sink", "--listen", listen, "--ca"])
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("server.pem"))
            .arg("--key")
            .arg(certs.join("server.key"))
            .arg("--out")
            .arg(out);
        if !fail.is_empty() {
            cmd.args(["--fail", fail]);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start upstream-sink");
        let mut stdout = Lines::follow(child.stdout.take().unwrap());
        let line = stdout.wait_for("listening on https://", Duration::from_secs(30));
        let addr = line.split("https://").nth(1).unwrap().split('/').next().unwrap().to_owned();
        Sink { child, stdout, addr }
    }

    /// SIGTERM, wait, and return the summary line.
    pub(crate) fn stop(mut self) -> String {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let summary = self.stdout.wait_for("upstream-sink summary", Duration::from_secs(30));
        let status = self.child.wait().unwrap();
        assert!(status.success(), "upstream-sink exited with {status}");
        summary
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn number_after(text: &str, before: &str) -> u64 {
    let i = text.find(before).unwrap_or_else(|| panic!("{before:?} not in {text:?}"));
    text[..i].split_whitespace().last().unwrap().trim_start_matches('(').parse().unwrap()
}

/// The gateway configuration of the child: upstream at `addr` with the dev certificates; small batches.
fn child_config(dir: &Path, certs: &Path, addr: &str) -> PathBuf {
    let path = dir.join("gatewayd.toml");
    let text = format!(
        "[gateway]\nid = \"gw-e2e\"\ndata_dir = \"{data}\"\ntimezone = \"Asia/Shanghai\"\n\n\
         [upstream]\nurl = \"https://localhost:{port}/cloud\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         timeout = \"5s\"\nbatch_max_items = 100\nlinger = \"20ms\"\nmax_backoff = \"1s\"\n",
        data = dir.join("data").display(),
        port = addr.rsplit(':').next().unwrap(),
        ca = certs.join("ca.pem").display(),
        cert = certs.join("client.pem").display(),
        key = certs.join("client.key").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn punch_id(i: u64) -> String {
    format!("gw-e2e:face-1:{i}")
}

/// Writes the workload once: punches (into the punch store and the change log, as the engine would), record revisions
/// interleaved, and the day's close.
fn write_workload(store: &Store, log: &ChangeLog) {
    let mut next_seq = store.last_seq().unwrap().unwrap_or(0) + 1;
    let mut changes = Vec::new();
    for i in 1..=PUNCHES {
        let t = T0 + i as i64 * 1000;
        let dp = drivers::DevicePunch {
            device_id: "face-1".into(),
            device_seq: Some(i),
            method: drivers::Method::Face,
            subject: drivers::sink::Subject::Employee(format!("E{}", i % RECORDS)),
            device_time_ms: t,
            received_time_ms: t,
            realtime: true,
            geo: None,
            score: None,
            attributes: vec![],
        };
        let inserted = store.insert_batch("gw-e2e", &[("test", &dp)], &mut next_seq).unwrap();
        assert_eq!(inserted[0].punch_id, punch_id(i));
        changes.push(Change::Punch(Punch {
            punch_id: punch_id(i),
            device_id: "face-1".into(),
            employee_id: format!("E{}", i % RECORDS),
            method: "face".into(),
            device_time_ms: t,
            received_time_ms: t,
            ..Default::default()
        }));
        if i % 25 == 0 {
            let k = (i / 25) % RECORDS;
            let revision = (i / 25 / RECORDS) as u32 + 1;
            if revision <= REVISIONS {
                changes.push(Change::Record(AttendanceRecord {
                    record_id: format!("r{k}"),
                    revision,
                    employee_id: format!("E{k}"),
                    work_date: "2026-11-22".into(),
                    ..Default::default()
                }));
            }
        }
    }
    changes.push(Change::DayClosed("2026-11-22".into()));
    for chunk in changes.chunks(500) {
        log.append(chunk).unwrap();
    }
}

/// The gateway half: run as a child process by `delivery_survives_faults_sigkill_and_receiver_restarts`. Writes the
/// workload on its first run, then runs the outbox feeder and the upstream sender until killed, printing DRAINED once
/// everything is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by delivery_survives_faults_sigkill_and_receiver_restarts"]
async fn child_gateway() {
    let Ok(dir) = std::env::var(ENV_DIR) else { return };
    gatewayd::telemetry::init_logging();
    let dir = PathBuf::from(dir);
    let (config, _) = gatewayd::app::load::load(&dir.join("gatewayd.toml")).unwrap();
    let store = Store::open(&dir.join("data").join("store"), 8).unwrap();
    let log = ChangeLog::open(store.db()).unwrap();
    let outbox = Outbox::open(store.db(), config.timezone()).unwrap();
    if log.last_seq().unwrap() == 0 && outbox.cursor().unwrap() == 0 {
        write_workload(&store, &log);
        log.flush().await.unwrap();
        println!("WORKLOAD WRITTEN");
    } else {
        println!("RESTARTED at cursor {}", outbox.cursor().unwrap());
    }
    let metrics = gatewayd::app::metrics();
    let (config_tx, _) = tokio::sync::watch::channel(std::sync::Arc::new(config));
    let (resend_tx, resend_rx) = tokio::sync::mpsc::channel(feeder::RESEND_QUEUE);
    let cancel = tokio_util::sync::CancellationToken::new();
    let parts =
        feeder::Feeder { outbox: outbox.clone(), changes: log.clone(), store: store.clone(), metrics: metrics.clone() };
    tokio::spawn(feeder::run(parts, resend_rx, cancel.clone()));
    let sender = gatewayd::upstream::Sender {
        outbox: outbox.clone(),
        config: config_tx.subscribe(),
        metrics,
        resend: resend_tx,
    };
    tokio::spawn(gatewayd::upstream::run(sender, cancel.clone()));
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let drained = outbox.stats().unwrap().depth == 0
            && outbox.open_batch().unwrap().is_none()
            && outbox.cursor().unwrap() == log.last_seq().unwrap();
        if drained {
            println!("DRAINED");
        }
    }
}

fn start_child(dir: &Path) -> (Child, Lines, Lines) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["upstream::child_gateway", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(ENV_DIR, dir)
        .env("RUST_LOG", "warn,gatewayd=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Lines::follow(child.stdout.take().unwrap());
    let err = Lines::follow(child.stderr.take().unwrap());
    (child, out, err)
}

#[test]
fn delivery_survives_faults_sigkill_and_receiver_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_certs_named(dir.path(), "gw-e2e");
    let out = dir.path().join("received.jsonl");

    // A receiver that fails at first (5xx burst, an answer lost after applying, a dropped request), then holds the
    // fifth batch for a long time: the gateway is killed while that batch is in flight.
    let mut sink = Sink::start(&certs, &out, "127.0.0.1:0", "503*3,reset,drop,ok*2,slow=20000");
    let addr = sink.addr.clone();
    child_config(dir.path(), &certs, &addr);
    let (mut gateway, mut gw_out, _gw_err) = start_child(dir.path());
    gw_out.wait_for("WORKLOAD WRITTEN", Duration::from_secs(120));
    sink.stdout.wait_for("Slow", Duration::from_secs(120));
    gateway.kill().unwrap(); // SIGKILL, mid-batch: the receiver applied it, the answer never arrives
    gateway.wait().unwrap();

    // The receiver goes down for a while; the restarted gateway keeps retrying.
    let first = sink.stop();
    assert!(number_after(&first, "faults injected") >= 6, "{first}");
    let (mut gateway, mut gw_out, mut gw_err) = start_child(dir.path());
    gw_out.wait_for("RESTARTED", Duration::from_secs(60));
    gw_err.wait_for("retrying", Duration::from_secs(60));
    gw_err.wait_for("retrying", Duration::from_secs(60));

    // Back on the same address, with its state read back from the output file.
    let sink = Sink::start(&certs, &out, &addr, "");
    gw_out.wait_for("DRAINED", Duration::from_secs(300));
    let summary = sink.stop();
    eprintln!("receiver before the restart: {first}\nreceiver after: {summary}");
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    assert!(number_after(&summary, "items restored") > 0, "{summary}");
    // The batch in flight at the kill was re-sent: the receiver saw its punches again and ignored them.
    assert!(number_after(&summary, "duplicates ignored") > 0, "{summary}");

    // Every punch exactly once, the newest revision of every record, and a complete digest.
    let text = std::fs::read_to_string(&out).unwrap();
    let mut punches: HashMap<String, u32> = HashMap::new();
    let mut records: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut digests = Vec::new();
    let mut batch_seqs = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        batch_seqs.push(v["batch_seq"].as_u64().unwrap());
        match v["kind"].as_str().unwrap() {
            "punch" => *punches.entry(v["punch_id"].as_str().unwrap().to_owned()).or_default() += 1,
            "record" => records
                .entry(v["record_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(v["revision"].as_u64().unwrap()),
            "digest" => digests.push(v),
            other => panic!("unexpected kind {other}"),
        }
    }
    let expected: HashSet<String> = (1..=PUNCHES).map(punch_id).collect();
    let got: HashSet<String> = punches.keys().cloned().collect();
    assert_eq!(got.len(), expected.len(), "missing: {:?}", expected.difference(&got).take(5).collect::<Vec<_>>());
    assert_eq!(got, expected);
    assert!(punches.values().all(|&n| n == 1), "a punch was applied twice");
    assert_eq!(records.len() as u64, RECORDS);
    for (id, revisions) in &records {
        assert_eq!(revisions.last(), Some(&u64::from(REVISIONS)), "record {id}: {revisions:?}");
        assert!(revisions.windows(2).all(|w| w[0] < w[1]), "record {id} went backwards: {revisions:?}");
    }
    let last = digests.last().expect("a digest");
    assert_eq!(last["work_date"], "2026-11-22");
    assert_eq!(last["complete"], true, "{last}");
    assert_eq!(last["punch_count"].as_u64(), Some(PUNCHES));
    // Batches were applied in order.
    assert!(batch_seqs.windows(2).all(|w| w[0] <= w[1]), "batches out of order");
}
