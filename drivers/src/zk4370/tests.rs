//! The driver against the simulator, over TCP and UDP.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::civil::DateTime;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::records::Layout;
use super::sim::{Fault, Zk4370Sim};
use crate::config::{CommKey, DeviceConfig, DriverKind, HumanDuration};
use crate::context::DriverContext;
use crate::sim::testkit::{self, until, Running};
use crate::sink::{DevicePunch, Method, Outcome, PunchSink, Rejection, Subject};
use crate::status::StatusBoard;
use crate::telemetry::DriverMetrics;

fn tz() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::get("Asia/Kolkata").unwrap()
}

async fn tcp(sim: &Zk4370Sim) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = format!("tcp://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let (s, st) = (sim.clone(), stop.clone());
    tokio::spawn(async move { s.serve_tcp(listener, st).await });
    (port, stop)
}

async fn udp(sim: &Zk4370Sim) -> (String, CancellationToken) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = format!("udp://{}", socket.local_addr().unwrap());
    let stop = CancellationToken::new();
    let (s, st) = (sim.clone(), stop.clone());
    tokio::spawn(async move { s.serve_udp(socket, st).await });
    (port, stop)
}

fn device(port: &str, comm_key: Option<u32>) -> DeviceConfig {
    let mut d = testkit::device(DriverKind::Zk4370, port);
    d.poll_interval = Some(HumanDuration(Duration::from_millis(100)));
    d.response_timeout = Some(HumanDuration(Duration::from_millis(500)));
    d.comm_key = comm_key.map(CommKey);
    d.timezone = Some("Asia/Kolkata".into());
    assert!(d.validate().is_empty(), "{:?}", d.validate());
    d
}

fn at(s: &str) -> DateTime {
    s.parse().unwrap()
}

/// Punches of one test: (user, realtime, device time in ms).
async fn take(rx: &mut mpsc::UnboundedReceiver<DevicePunch>, n: usize) -> Vec<DevicePunch> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(testkit::next_punch(rx).await);
    }
    out
}

fn ms(local: &str) -> i64 {
    at(local).to_zoned(tz()).unwrap().timestamp().as_millisecond()
}

#[tokio::test]
async fn tcp_terminal_with_comm_key_reads_its_log_sets_its_clock_and_acks_events() {
    let sim = Zk4370Sim::new(Layout::Long40, Some(123_456), tz());
    sim.punch_at("1001", 15, 0, at("2026-11-22T08:59:30"));
    sim.punch_at("EMP-7", 1, 1, at("2026-11-22T09:00:01"));
    let (port, _stop) = tcp(&sim).await;
    let mut run = Running::start(device(&port, Some(123_456)), super::run);

    let log = take(&mut run.punches, 2).await;
    assert_eq!(log[0].subject, Subject::Employee("1001".into()));
    assert_eq!(log[0].method, Method::Face);
    assert_eq!(log[0].device_time_ms, ms("2026-11-22T08:59:30"), "read in the device's time zone");
    assert!(!log[0].realtime);
    assert_eq!(log[1].method, Method::Fingerprint);
    assert!(log[1].attributes.contains(&("status".into(), "1".into())));
    assert!(sim.clock_was_set());
    let drift = sim.clock().to_zoned(tz()).unwrap().timestamp().as_second() - jiff::Timestamp::now().as_second();
    assert!(drift.abs() <= 2, "clock set in the device's zone: off by {drift} s");
    until("online", || run.status.get("dev1").is_some_and(|s| s.online)).await;

    // A live punch: stored, then acknowledged.
    sim.punch_at("1002", 4, 0, at("2026-11-22T09:05:00"));
    let live = testkit::next_punch(&mut run.punches).await;
    assert_eq!(
        (live.subject.clone(), live.method, live.realtime),
        (Subject::Employee("1002".into()), Method::Card, true)
    );
    until("the event acknowledged", || sim.acked().len() == 1).await;
    assert_eq!(sim.stats().auth_failures, 0);
    run.stop().await;
}

#[tokio::test]
async fn udp_terminal_reads_a_log_larger_than_a_datagram_in_chunks() {
    let sim = Zk4370Sim::new(Layout::Mid16, None, tz());
    let start = at("2026-11-01T08:00:00");
    for i in 0..1500 {
        sim.punch_at(
            &(1000 + i % 50).to_string(),
            1,
            0,
            start.checked_add(jiff::SignedDuration::from_secs(i * 60)).unwrap(),
        );
    }
    let (port, _stop) = udp(&sim).await;
    let mut run = Running::start(device(&port, None), super::run);
    let log = take(&mut run.punches, 1500).await;
    assert_eq!(log.last().map(|p| p.device_time_ms), Some(ms("2026-11-02T08:59:00")));
    until("online", || run.status.get("dev1").is_some_and(|s| s.online)).await;
    sim.punch("1001", 15);
    let live = testkit::next_punch(&mut run.punches).await;
    assert!(live.realtime);
    until("the event acknowledged", || sim.acked().len() == 1).await;
    run.stop().await;
}

#[tokio::test]
async fn tcp_pieced_chunks_of_the_eight_byte_layout() {
    let sim = Zk4370Sim::new(Layout::Short8, None, tz());
    let start = at("2026-11-01T08:00:00");
    for i in 0..10_000 {
        sim.punch_at(
            &(1 + i % 300).to_string(),
            4,
            0,
            start.checked_add(jiff::SignedDuration::from_secs(i * 7)).unwrap(),
        );
    }
    let (port, _stop) = tcp(&sim).await;
    let mut run = Running::start(device(&port, None), super::run);
    let log = take(&mut run.punches, 10_000).await;
    assert_eq!(log[299].subject, Subject::Employee("300".into()));
    assert_eq!(sim.stats().log_reads, 1);
    run.stop().await;
}

#[tokio::test]
async fn a_wrong_comm_key_is_reported_and_nothing_is_read() {
    let sim = Zk4370Sim::new(Layout::Long40, Some(42), tz());
    sim.punch_at("1001", 15, 0, at("2026-11-22T08:59:30"));
    let (port, _stop) = tcp(&sim).await;
    let run = Running::start(device(&port, Some(43)), super::run);
    until("the refusal on the status", || {
        run.status.get("dev1").and_then(|s| s.last_error).is_some_and(|e| e.contains("refused the comm_key"))
    })
    .await;
    assert!(sim.stats().auth_failures >= 1);
    assert_eq!(sim.stats().log_reads, 0);
    let no_key = Running::start(device(&port, None), super::run);
    until("the missing key on the status", || {
        no_key.status.get("dev1").and_then(|s| s.last_error).is_some_and(|e| e.contains("set comm_key"))
    })
    .await;
    run.stop().await;
    no_key.stop().await;
}

/// A context whose sink answers the first `refuse` requests `StoreFull`, then stores.
fn refusing_context(dev: DeviceConfig, refuse: usize) -> (DriverContext, mpsc::UnboundedReceiver<DevicePunch>) {
    let metrics = DriverMetrics::default();
    let (sink, mut rx) = PunchSink::channel(8, metrics.clone());
    let (tx, punches) = mpsc::unbounded_channel();
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let refused = seen.fetch_add(1, Ordering::SeqCst) < refuse;
            let outcomes = req
                .punches
                .into_iter()
                .map(|p| {
                    if refused {
                        Outcome::Rejected(Rejection::StoreFull)
                    } else {
                        let _ = tx.send(p);
                        Outcome::Stored { punch_id: "p".into(), duplicate: false }
                    }
                })
                .collect();
            let _ = req.reply.send(outcomes);
        }
    });
    let ctx = DriverContext {
        sink: sink.for_driver(super::DRIVER),
        device: dev,
        cancel: CancellationToken::new(),
        metrics: metrics.clone(),
        status: StatusBoard::new(metrics),
        timezone: jiff::tz::TimeZone::UTC,
        history: crate::history::History::default(),
        people: crate::people::PeopleFeed::default(),
    };
    (ctx, punches)
}

#[tokio::test]
async fn an_event_the_store_refuses_is_not_acknowledged_and_comes_back_from_the_log() {
    let sim = Zk4370Sim::new(Layout::Long40, None, tz());
    let (port, _stop) = tcp(&sim).await;
    // The log is empty at connect (no request); the first request is the live event: refused.
    let (ctx, mut punches) = refusing_context(device(&port, None), 1);
    let cancel = ctx.cancel.clone();
    let status = ctx.status.clone();
    let task = tokio::spawn(super::run(ctx));
    until("online", || status.get("dev1").is_some_and(|s| s.online)).await;
    sim.punch_at("1001", 15, 0, at("2026-11-22T08:59:30"));
    until("the event sent", || sim.stats().events_sent == 1).await;
    // The session ends without an acknowledgement; the next one reads the punch from the log.
    let p = testkit::next_punch(&mut punches).await;
    assert_eq!(p.subject, Subject::Employee("1001".into()));
    assert!(!p.realtime, "fetched by the log read after the reconnect");
    assert!(sim.acked().is_empty(), "a punch that was not stored was acknowledged");
    assert!(sim.stats().connects >= 2);
    cancel.cancel();
    assert!(task.await.unwrap().is_ok());
}

#[tokio::test]
async fn line_faults_are_counted_and_the_driver_recovers() {
    let sim = Zk4370Sim::new(Layout::Long40, None, tz());
    let (port, _stop) = tcp(&sim).await;
    let mut run = Running::start(device(&port, None), super::run);
    until("online", || run.status.get("dev1").is_some_and(|s| s.online)).await;
    sim.inject(Fault::Garbage(b"\x13\x37noise".to_vec()));
    sim.punch_at("1001", 15, 0, at("2026-11-22T08:59:30"));
    assert!(testkit::next_punch(&mut run.punches).await.realtime);
    // A corrupted event is dropped and not acknowledged; the next poll sees one record more than it has and reads it
    // from the log.
    sim.inject(Fault::CorruptChecksum);
    sim.punch_at("1002", 15, 0, at("2026-11-22T09:00:00"));
    // The read takes the records after the previous read: the acknowledged 1001 again (the store knows it), and 1002.
    let p = take(&mut run.punches, 2).await;
    assert_eq!((p[1].subject.clone(), p[1].realtime), (Subject::Employee("1002".into()), false));
    assert_eq!(sim.stats().log_reads, 1, "the log was empty at connect: this is the first read");
    assert_eq!(sim.acked().len(), 1);
    let garbage = run.metrics.rejected_count(super::DRIVER, "dev1", "garbage");
    let checksum = run.metrics.rejected_count(super::DRIVER, "dev1", "bad_checksum");
    assert!(garbage >= 1 && checksum >= 1, "garbage {garbage}, checksum {checksum}");
    run.stop().await;
}

#[tokio::test]
async fn roster_people_become_terminal_users_and_removals_leave_hand_enrolled_users_alone() {
    use std::collections::BTreeMap;

    use crate::adms::commands::CommandQueue;
    use crate::people::{PeopleFeed, TerminalUser};
    use crate::zk4370::records::User;

    let sim = Zk4370Sim::new(Layout::Long40, None, tz());
    // Enrolled on the terminal by hand: not the gateway's to delete.
    sim.add_user(User { uid: 1, user_id: "9001".into(), name: "Admin".into(), card: 0, privilege: 14 });
    // Already there under another name: rewritten in place.
    sim.add_user(User { uid: 5, user_id: "1002".into(), name: "Old Name".into(), card: 0, privilege: 0 });
    let (port, _stop) = tcp(&sim).await;
    let person = |name: &str, card: Option<&str>| TerminalUser { name: name.into(), card: card.map(str::to_owned) };
    let first: BTreeMap<String, TerminalUser> = [
        ("1001".to_owned(), person("Zhang San", Some("77705923"))),
        ("1002".to_owned(), person("Li Si", None)),
        ("E1003".to_owned(), person("A name much longer than the terminal keeps", None)),
    ]
    .into();
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(first));
    let db = sled::Config::new().temporary(true).open().unwrap();
    let ledger = CommandQueue::open(&db).unwrap();
    let (mut ctx, _punches) = testkit::context(device(&port, None));
    ctx.people = PeopleFeed::new(rx, ledger.clone());
    let (cancel, status) = (ctx.cancel.clone(), ctx.status.clone());
    let task = tokio::spawn(super::run(ctx));
    let users = |sim: &Zk4370Sim| -> BTreeMap<String, (u16, String, u32)> {
        sim.users().into_iter().map(|u| (u.user_id, (u.uid, u.name, u.card))).collect()
    };
    until("the roster on the terminal", || users(&sim).len() == 4).await;
    let got = users(&sim);
    assert_eq!(got["1001"], (6, "Zhang San".to_owned(), 77_705_923), "a new user under the next free number");
    assert_eq!(got["1002"], (5, "Li Si".to_owned(), 0), "rewritten in place");
    assert_eq!(got["E1003"].1, "A name much longer than");
    assert_eq!(got["9001"].1, "Admin");
    until("online", || status.get("dev1").is_some_and(|s| s.online)).await;

    // A removal: the person goes, the hand-enrolled admin stays; an unchanged roster writes nothing.
    let commands = sim.stats().commands;
    let second: BTreeMap<String, TerminalUser> = [("1001".to_owned(), person("Zhang San", Some("77705923")))].into();
    tx.send(Arc::new(second)).unwrap();
    until("the removals", || users(&sim).len() == 2).await;
    assert_eq!(users(&sim).keys().cloned().collect::<Vec<_>>(), ["1001", "9001"]);
    assert_eq!(ledger.users("dev1").unwrap().keys().cloned().collect::<Vec<_>>(), ["1001"]);
    let after = sim.stats().commands;
    assert!(after > commands);
    cancel.cancel();
    assert!(task.await.unwrap().is_ok());
}
