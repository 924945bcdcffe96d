//! The sender against the reference receiver over real mutual TLS, in one process.

use super::*;
use crate::cli::certs::{write_file, DevPki, Validity};
use crate::cli::upstream_sink::{self as sink, faults::FaultPlan, Ledger, Summary};
use crate::outbox::feeder;
use crate::proto::upstream::Punch;
use crate::reconcile::changes::{Change, ChangeLog};
use crate::store::Store;

struct Rig {
    dir: tempfile::TempDir,
    pki: DevPki,
    store: Store,
    log: ChangeLog,
    outbox: Outbox,
    metrics: Metrics,
    config_tx: watch::Sender<Arc<Config>>,
    cancel: CancellationToken,
    sink_cancel: CancellationToken,
    sink: tokio::task::JoinHandle<Summary>,
    next: u64,
}

impl Rig {
    /// A receiver with `plan`, a gateway whose client certificate has `validity`.
    async fn start(plan: &str, validity: Validity) -> Rig {
        Rig::start_with(plan, validity, "").await
    }

    /// [`Rig::start`] with a receiver whose output file already holds `received` (JSON lines it restores at start).
    async fn start_with(plan: &str, validity: Validity, received: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new("rig ca").unwrap();
        let p = |n: &str| dir.path().join(n);
        write_file(&p("ca.pem"), pki.ca_pem(), false).unwrap();
        let server = pki.server(&["localhost", "127.0.0.1"], Validity::days(10)).unwrap();
        write_file(&p("server.pem"), &server.cert_pem, false).unwrap();
        write_file(&p("server.key"), &server.key_pem, true).unwrap();
        let client = pki.client("gw", validity).unwrap();
        write_file(&p("client.pem"), &client.cert_pem, false).unwrap();
        write_file(&p("client.key"), &client.key_pem, true).unwrap();

        let tls = tls::server_config(&p("ca.pem"), &p("server.pem"), &p("server.key")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        std::fs::write(p("out.jsonl"), received).unwrap();
        let ledger = Ledger::open(&p("out.jsonl")).unwrap();
        let sink_cancel = CancellationToken::new();
        let sink = tokio::spawn(sink::serve(
            listener,
            tls,
            ledger,
            FaultPlan::parse(plan).unwrap(),
            None,
            sink_cancel.clone(),
        ));

        let text = format!(
            "[gateway]\nid = \"gw\"\ndata_dir = \"{data}\"\ntimezone = \"Asia/Shanghai\"\n\n[upstream]\n\
             url = \"https://localhost:{port}\"\nca = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client.key\"\n\
             batch_max_items = 10\nlinger = \"10ms\"\nmax_backoff = \"1s\"\n",
            data = p("data").display()
        );
        std::fs::write(p("gatewayd.toml"), text).unwrap();
        let (config, _) = crate::app::load::load(&p("gatewayd.toml")).unwrap();
        let store = Store::open(&p("store"), 8).unwrap();
        let log = ChangeLog::open(store.db()).unwrap();
        let outbox = Outbox::open(store.db(), config.timezone()).unwrap();
        let metrics = crate::app::metrics();
        let (config_tx, _) = watch::channel(Arc::new(config));
        let cancel = CancellationToken::new();
        let (resend_tx, resend_rx) = mpsc::channel(feeder::RESEND_QUEUE);
        let parts = feeder::Feeder {
            outbox: outbox.clone(),
            changes: log.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
        };
        tokio::spawn(feeder::run(parts, resend_rx, cancel.clone()));
        let sender = Sender {
            outbox: outbox.clone(),
            config: config_tx.subscribe(),
            metrics: metrics.clone(),
            resend: resend_tx,
        };
        tokio::spawn(run(sender, cancel.clone()));
        Rig { dir, pki, store, log, outbox, metrics, config_tx, cancel, sink_cancel, sink, next: 0 }
    }

    async fn punches(&mut self, n: u64) {
        let changes: Vec<Change> = (0..n)
            .map(|_| {
                self.next += 1;
                Change::Punch(Punch {
                    punch_id: format!("gw:d:{}", self.next),
                    device_time_ms: 1_795_305_600_000 + self.next as i64,
                    ..Default::default()
                })
            })
            .collect();
        self.log.append(&changes).unwrap();
        self.log.flush().await.unwrap();
    }

    fn metric(&self, series: &str) -> Option<f64> {
        self.metrics.encode().lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }

    /// Polls a condition (the sender works on its own; there is no event to wait on from outside).
    async fn until(&self, what: &str, limit: Duration, mut check: impl FnMut(&Rig) -> bool) {
        let deadline = Instant::now() + limit;
        while !check(self) {
            assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}\n{}", self.metrics.encode());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What SIGHUP does: the same configuration sent again.
    fn reload(&self) {
        let config = self.config_tx.borrow().clone();
        self.config_tx.send_replace(config);
    }

    /// Everything in the change log went out and was acknowledged.
    fn delivered(&self) -> bool {
        self.outbox.cursor().unwrap() == self.log.last_seq().unwrap()
            && self.outbox.stats().unwrap().depth == 0
            && self.outbox.open_batch().unwrap().is_none()
    }

    async fn stop(self) -> (Summary, tempfile::TempDir) {
        self.cancel.cancel();
        self.sink_cancel.cancel();
        let summary = self.sink.await.unwrap();
        drop(self.store);
        (summary, self.dir)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_in_order_through_5xx_resets_and_drops() {
    let mut rig = Rig::start("503*2,reset,drop,500", Validity::days(10)).await;
    rig.punches(35).await;
    rig.until("delivery", Duration::from_secs(30), Rig::delivered).await;
    assert_eq!(rig.metric("gatewayd_upstream_batches_total{result=\"server_error\"}"), Some(3.0));
    assert_eq!(rig.metric("gatewayd_upstream_batches_total{result=\"reset\"}"), Some(2.0));
    assert_eq!(rig.metric("gatewayd_upstream_items_delivered_total"), Some(35.0));
    assert_eq!(rig.metric("gatewayd_outbox_depth"), Some(0.0));
    let days = rig.metric("gatewayd_upstream_cert_days_left").unwrap();
    assert!((9.0..=10.0).contains(&days), "{days}");
    let (summary, dir) = rig.stop().await;
    assert_eq!((summary.punches, summary.punch_duplicates), (35, 10), "{summary:?}");
    let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["punch_id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (1..=35).map(|i| format!("gw:d:{i}")).collect();
    assert_eq!(ids, expected, "every punch once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_raises_the_alarm_is_held_and_goes_out_after_sighup() {
    let mut rig = Rig::start("422,reject", Validity::days(10)).await;
    rig.punches(5).await;
    rig.until("the alarm", Duration::from_secs(10), |r| r.metric("gatewayd_upstream_alarm") == Some(1.0)).await;
    assert_eq!(rig.outbox.stats().unwrap().depth, 5, "held, not dropped");
    // A reload (SIGHUP sends the configuration again) retries at once instead of after max_backoff.
    rig.until("the second refusal", Duration::from_secs(10), |r| {
        r.reload();
        r.metric("gatewayd_upstream_batches_total{result=\"rejected\"}") == Some(1.0)
    })
    .await;
    rig.reload();
    rig.until("delivery", Duration::from_secs(10), Rig::delivered).await;
    assert_eq!(rig.metric("gatewayd_upstream_alarm"), Some(0.0));
    assert_eq!(rig.metric("gatewayd_upstream_batches_total{result=\"refused\"}"), Some(1.0));
    let (summary, _) = rig.stop().await;
    assert_eq!(summary.punches, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_until_new_files_are_written() {
    let mut rig = Rig::start("", Validity { from_days: -30, to_days: -1 }).await;
    rig.punches(3).await;
    rig.until("TLS failures", Duration::from_secs(10), |r| {
        r.metric("gatewayd_upstream_batches_total{result=\"tls_error\"}").is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(rig.metric("gatewayd_upstream_cert_days_left").unwrap() < 0.0);
    assert_eq!(rig.outbox.stats().unwrap().depth, 3);
    // Rotate: new files renamed into place, no signal. The sender notices within CERT_CHECK_EVERY.
    let fresh = rig.pki.client("gw", Validity::days(100)).unwrap();
    let p = |n: &str| rig.dir.path().join(n);
    write_file(&p("client.pem.new"), &fresh.cert_pem, false).unwrap();
    write_file(&p("client.key.new"), &fresh.key_pem, true).unwrap();
    std::fs::rename(p("client.key.new"), p("client.key")).unwrap();
    std::fs::rename(p("client.pem.new"), p("client.pem")).unwrap();
    rig.until("delivery after the rotation", CERT_CHECK_EVERY * 4, Rig::delivered).await;
    let days = rig.metric("gatewayd_upstream_cert_days_left").unwrap();
    assert!((99.0..=100.0).contains(&days), "{days}");
    let (summary, _) = rig.stop().await;
    assert_eq!(summary.punches, 3);
    assert!(summary.tls_refused >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_dates_from_the_receiver_enqueue_the_day_again() {
    // The receiver holds a punch of the day that the gateway never sent (its own data disagrees with the gateway's):
    // every digest of the day is incomplete there, it asks for the day again, at most MAX_RESEND_ASKS times.
    let foreign = r#"{"kind":"punch","gateway_id":"gw","punch_id":"gw:elsewhere:1","device_time_ms":1795305600500}"#;
    let mut rig = Rig::start_with("", Validity::days(10), &format!("{foreign}\n")).await;
    rig.punches(2).await;
    rig.log.append(&[Change::DayClosed("2026-11-22".into())]).unwrap();
    rig.log.flush().await.unwrap();
    rig.until("three resend rounds", Duration::from_secs(20), |r| {
        r.metric("gatewayd_upstream_resend_dates_total") == Some(f64::from(sink::MAX_RESEND_ASKS))
    })
    .await;
    rig.until("delivery", Duration::from_secs(10), Rig::delivered).await;
    let (summary, _) = rig.stop().await;
    assert_eq!(summary.punches, 2);
    assert_eq!(summary.punch_duplicates, 2 * u64::from(sink::MAX_RESEND_ASKS));
    assert_eq!(summary.digests_incomplete, 1 + u64::from(sink::MAX_RESEND_ASKS));
}
