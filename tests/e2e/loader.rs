//! `gatewayd loader` against real servers: PostgreSQL (started by the harness as an unprivileged user), a NATS
//! JetStream server, and real gateways (SPEC 6.2, docs/fleet.md).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prost::Message;

use crate::fleet::{gateway_config, runtime, Device};
use crate::harness::nats::Cluster;
use crate::harness::postgres::Postgres;
use crate::harness::{base_config, bin, dev_certs_named, wait_until, Gateway};
use gatewayd::proto::upstream::{DayDigest, UploadBatch};

const LIMIT: Duration = Duration::from_secs(90);

/// `gatewayd loader` as a child process; stdout lines are collected, stderr goes to a file.
pub struct Loader {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    args: Vec<String>,
    log: std::path::PathBuf,
}

impl Loader {
    /// Starts `gatewayd loader ARGS` and waits for its start line (`ready`).
    pub fn start(args: &[String], log: &Path, ready: &str) -> Loader {
        let mut l = Loader {
            child: None,
            lines: mpsc::channel().1,
            seen: Vec::new(),
            args: args.to_vec(),
            log: log.to_owned(),
        };
        l.spawn(ready);
        l
    }

    pub fn spawn(&mut self, ready: &str) {
        let err = std::fs::File::options().create(true).append(true).open(&self.log).unwrap();
        let mut child = Command::new(bin())
            .arg("loader")
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("start gatewayd loader");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.child = Some(child);
        self.lines = rx;
        self.wait_for(ready, LIMIT);
    }

    /// Waits for a stdout line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "loader: no line with {needle:?} within {limit:?}; seen:\n{}\nlog:\n{}",
                    self.seen.join("\n"),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and the summary line.
    pub fn stop(&mut self) -> String {
        let Some(mut c) = self.child.take() else { return String::new() };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        let summary = self.wait_for("loader summary", LIMIT);
        let status = c.wait().unwrap();
        assert!(status.success(), "loader exited with {status}");
        summary
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The NATS loader arguments for `cluster` and `pg`.
pub fn nats_args(cluster: &Cluster, pg: &Postgres, ack_wait: u64) -> Vec<String> {
    let me = cluster.pki.client("loader");
    let mut a = vec![];
    for u in cluster.urls() {
        a.push("--nats".into());
        a.push(u);
    }
    a.extend(
        [
            "--stream",
            "GATEWAYD",
            "--postgres",
            &pg.url,
            "--ca",
            cluster.pki.ca().to_str().unwrap(),
            "--cert",
            me.cert.to_str().unwrap(),
            "--key",
            me.key.to_str().unwrap(),
            "--ack-wait",
            &ack_wait.to_string(),
        ]
        .map(String::from),
    );
    a
}

/// Rows of a query's first column as strings.
pub async fn column(pg: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    pg.query(sql, &[]).await.unwrap().iter().map(|r| r.get::<_, String>(0)).collect()
}

pub async fn count(pg: &tokio_postgres::Client, sql: &str) -> i64 {
    pg.query_one(sql, &[]).await.map(|r| r.get::<_, i64>(0)).unwrap_or(-1)
}

/// A gateway publishes to JetStream, the loader writes PostgreSQL: every punch once; a digest that does not match the
/// database makes the loader ask the gateway for the day again over NATS, and the day comes back complete.
#[test]
fn the_loader_moves_a_gateways_batches_from_jetstream_into_postgres() {
    let work = tempfile::tempdir().unwrap();
    let rt = runtime();
    let pg = Postgres::start();
    let cluster = Cluster::start(work.path(), 1, &["gw-l"]);
    rt.block_on(cluster.create_stream(1));
    let mut loader = Loader::start(&nats_args(&cluster, &pg, 5), &work.path().join("loader.log"), "loader consuming");
    let mut gw = Gateway::start(&gateway_config("gw-l", "gw-l", &["dev-l"], &cluster));
    let addr = gw.addr("mqtt");
    rt.block_on(async {
        let mut dev = Device::connect(addr, "dev-l").await;
        for seq in 1..=40 {
            assert!(dev.punch(seq).await);
        }
    });
    let db = rt.block_on(pg.client());
    let n = || rt.block_on(count(&db, "SELECT count(*) FROM punches"));
    wait_until("40 punches in PostgreSQL", LIMIT, n, |n| *n == 40);
    let ids: HashSet<String> = rt.block_on(column(&db, "SELECT punch_id FROM punches")).into_iter().collect();
    assert_eq!(ids, (1..=40).map(|s| format!("gw-l:dev-l:{s}")).collect::<HashSet<_>>());
    let gateways = rt.block_on(db.query("SELECT gateway_id, last_batch_seq FROM gateways", &[])).unwrap();
    assert_eq!(gateways.len(), 1);
    assert!(gateways[0].get::<_, i64>(1) >= 1);

    // A digest that does not match (published with the gateway's own identity on its own subject): the loader asks
    // the gateway for that day; the gateway sends the day again with its own digest, which matches.
    rt.block_on(async {
        let js = async_nats::jetstream::new(cluster.connect("gw-l").await);
        let wrong = wrong_digest("gw-l");
        js.publish("gatewayd.v1.batches.gw-l", wrong.encode_to_vec().into()).await.unwrap().await.unwrap();
    });
    let digest = || {
        rt.block_on(async {
            db.query_opt("SELECT complete, asked, outbox_id FROM digests WHERE work_date = '2026-11-22'", &[])
                .await
                .unwrap()
                .map(|r| (r.get::<_, bool>(0), r.get::<_, i32>(1), r.get::<_, String>(2)))
        })
    };
    wait_until("the gateway's own digest of the day, complete", LIMIT, digest, |d| {
        d.as_ref().is_some_and(|(complete, asked, outbox)| *complete && *asked == 0 && outbox != "forged")
    });
    assert_eq!(n(), 40, "the day sent again changed no punch");
    let summary = loader.stop();
    let incomplete: u64 = summary.split(" complete, ").nth(1).and_then(|t| t.split(' ').next()?.parse().ok()).unwrap();
    assert!(incomplete >= 1, "the forged digest was found incomplete: {summary}");
    gw.stop();
    assert!(gw.stderr.contains("asked for work dates again"), "{}", gw.stderr);
}

/// `gatewayd loader --https`: the reference receiver writing PostgreSQL. A gateway delivers; a batch naming another
/// gateway than the client certificate is refused with 403; a digest the database does not match asks for its day
/// again in the answer's `resend_dates`.
#[test]
fn the_https_loader_writes_postgres_and_refuses_batches_of_another_gateway() {
    use gatewayd::upstream::client::{Client, Endpoint, SendError};
    let work = tempfile::tempdir().unwrap();
    let pg = Postgres::start();
    let certs = dev_certs_named(work.path(), "gw-h");
    let p = |n: &str| certs.join(n).display().to_string();
    let args: Vec<String> = [
        "--https",
        "127.0.0.1:0",
        "--ca",
        &p("ca.pem"),
        "--cert",
        &p("server.pem"),
        "--key",
        &p("server.key"),
        "--postgres",
        &pg.url,
    ]
    .map(String::from)
    .to_vec();
    let mut loader = Loader::start(&args, &work.path().join("loader.log"), "listening on https://");
    let line = loader.seen.last().unwrap().clone();
    let addr = line.split("https://").nth(1).unwrap().split('/').next().unwrap().to_owned();
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let config = format!(
        "{}[[device]]\nid = \"dev-h\"\ndriver = \"mqtt\"\nsecret = \"dev-h-secret\"\n\n\
         [upstream]\nurl = \"https://localhost:{port}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         batch_max_items = 20\nlinger = \"20ms\"\nmax_backoff = \"1s\"\n",
        base_config("gw-h"),
        ca = p("ca.pem"),
        cert = p("client.pem"),
        key = p("client.key"),
    );
    let mut gw = Gateway::start(&config);
    let rt = runtime();
    let mqtt = gw.addr("mqtt");
    rt.block_on(async {
        let mut dev = Device::connect(mqtt, "dev-h").await;
        for seq in 1..=30 {
            assert!(dev.punch(seq).await);
        }
    });
    let db = rt.block_on(pg.client());
    let n = || rt.block_on(count(&db, "SELECT count(*) FROM punches"));
    wait_until("30 punches in PostgreSQL", LIMIT, n, |n| *n == 30);

    // The gateway's own certificate, a batch that says it is from another gateway: refused, nothing written.
    // The gateway's own client certificate, as the upstream client uses it.
    let client = || {
        let tls = gatewayd::upstream::tls::client_config(
            &certs.join("ca.pem"),
            &certs.join("client.pem"),
            &certs.join("client.key"),
        )
        .unwrap();
        Client::new(Endpoint::parse(&format!("https://localhost:{port}")).unwrap(), tls, LIMIT)
    };
    let forged = rt.block_on(async {
        let mut c = client();
        let batch = UploadBatch {
            gateway_id: "gw-other".into(),
            batch_seq: 1,
            punches: vec![gatewayd::proto::upstream::Punch {
                punch_id: "gw-other:x:1".into(),
                device_time_ms: 1_795_305_600_000,
                ..Default::default()
            }],
            ..Default::default()
        };
        c.post(1, batch.encode_to_vec().into()).await
    });
    assert!(matches!(forged, Err(SendError::Refused { status: 403, .. })), "{forged:?}");
    assert_eq!(rt.block_on(count(&db, "SELECT count(*) FROM punches WHERE gateway_id = 'gw-other'")), 0);

    // A digest that does not match what the database holds: the answer asks for the day again (`resend_dates`).
    let asked = rt.block_on(async { client().post(1, wrong_digest("gw-h").encode_to_vec().into()).await });
    let ack = asked.unwrap();
    assert!(ack.accepted, "{ack:?}");
    assert_eq!(ack.resend_dates, vec!["2026-11-22".to_owned()], "{ack:?}");
    gw.stop();
    let summary = loader.stop();
    assert!(summary.contains("1 requests refused"), "{summary}");
}

/// A batch of `gateway` (under a made-up outbox id) whose only content is a digest of 2026-11-22 that no database
/// holding the gateway's real punches can match.
fn wrong_digest(gateway: &str) -> UploadBatch {
    UploadBatch {
        gateway_id: gateway.into(),
        batch_seq: 1,
        outbox_id: "forged".into(),
        digests: vec![DayDigest {
            work_date: "2026-11-22".into(),
            punch_count: 999,
            punch_ids_sha256: vec![0; 32],
            record_count: 0,
            from_ms: 1_795_276_800_000,
            to_ms: 1_795_363_200_000,
        }],
        ..Default::default()
    }
}
