//! Durability of the punch store: a punch acknowledged as durable survives SIGKILL; re-sends are stored once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use drivers::sink::Subject;
use drivers::telemetry::DriverMetrics;
use drivers::{DevicePunch, Method, Outcome, PunchSink};
use gatewayd::ingest::{run_writer, IngestSettings};
use gatewayd::store::Store;
use tokio_util::sync::CancellationToken;

const DIR_ENV: &str = "GATEWAYD_DURABILITY_DIR";

fn punch(seq: u64) -> DevicePunch {
    let now = 1_795_827_570_000 + seq as i64 * 1000;
    DevicePunch {
        device_id: "face-1".into(),
        device_seq: Some(seq),
        method: Method::Face,
        subject: Subject::Employee(format!("E{}", 1000 + seq % 50)),
        device_time_ms: now,
        received_time_ms: now,
        realtime: true,
        geo: None,
        score: Some(0.9),
        attributes: vec![],
    }
}

/// Starts a store and its ingest writer in this process.
fn start(dir: &std::path::Path) -> (Store, PunchSink, CancellationToken, tokio::task::JoinHandle<()>) {
    let store = Store::open(dir, 8).expect("open store");
    let (sink, rx) = PunchSink::channel(64, DriverMetrics::default());
    let (durable, _) = tokio::sync::watch::channel(0);
    let cancel = CancellationToken::new();
    let settings = IngestSettings { gateway_id: "gw".into(), max_batch: 256 };
    let writer =
        tokio::spawn(run_writer(store.clone(), settings, rx, durable, gatewayd::app::metrics(), cancel.clone()));
    (store, sink.for_driver("mqtt"), cancel, writer)
}

/// The child half of `acknowledged_punches_survive_sigkill`: stores punches one by one and prints each acknowledgement.
#[tokio::test]
#[ignore = "run as a child process by acknowledged_punches_survive_sigkill"]
async fn child_writer() {
    let Ok(dir) = std::env::var(DIR_ENV) else { return };
    let (_store, sink, _cancel, _writer) = start(std::path::Path::new(&dir));
    let mut seq = 0;
    loop {
        seq += 1;
        if let Outcome::Stored { punch_id, .. } = sink.submit(punch(seq)).await {
            println!("ACK {punch_id}");
        }
    }
}

#[test]
fn acknowledged_punches_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["store_durability::child_writer", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(DIR_ENV, &store_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.push(id.to_owned());
            if acked.len() == 200 {
                // Kill right after the acknowledgement: no graceful flush, no destructors.
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(acked.len(), 200, "child acknowledged too few punches");
    let store = Store::open(&store_dir, 8).expect("store reopens after SIGKILL");
    for id in &acked {
        assert!(store.get_by_id(id).unwrap().is_some(), "acknowledged punch {id} lost");
    }
}

#[tokio::test]
async fn a_punch_resent_100_times_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sink, cancel, writer) = start(dir.path());
    let mut ids = std::collections::HashSet::new();
    let mut duplicates = 0;
    // Half sent one after the other, half at once (they meet in one group commit).
    for _ in 0..50 {
        match sink.submit(punch(7)).await {
            Outcome::Stored { punch_id, duplicate } => {
                ids.insert(punch_id);
                duplicates += usize::from(duplicate);
            }
            other => panic!("{other:?}"),
        }
    }
    let together = futures::future::join_all((0..50).map(|_| sink.submit(punch(7)))).await;
    for outcome in together {
        match outcome {
            Outcome::Stored { punch_id, duplicate } => {
                ids.insert(punch_id);
                duplicates += usize::from(duplicate);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(duplicates, 99);
    assert_eq!(store.count().unwrap(), 1);
    // Re-sends without a device sequence number are recognised by content.
    let mut unnumbered = punch(8);
    unnumbered.device_seq = None;
    for _ in 0..100 {
        let mut p = unnumbered.clone();
        p.received_time_ms += 5000; // arrival time differs on every re-send
        assert!(sink.submit(p).await.is_stored());
    }
    assert_eq!(store.count().unwrap(), 2);
    cancel.cancel();
    writer.await.unwrap();
}

#[tokio::test]
async fn invalid_punches_are_rejected_with_a_reason_and_others_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sink, cancel, writer) = start(dir.path());
    let mut bad = punch(1);
    bad.device_time_ms = 0;
    let outcomes = sink.submit_many(vec![punch(2), bad, punch(3)]).await;
    assert!(outcomes[0].is_stored() && outcomes[2].is_stored());
    match &outcomes[1] {
        Outcome::Rejected(r) => assert_eq!(r.to_string(), "time is before 2000-01-01"),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.count().unwrap(), 2);
    cancel.cancel();
    writer.await.unwrap();
    // After shutdown the sink answers "shutting down" instead of hanging.
    assert!(matches!(sink.submit(punch(4)).await, Outcome::Rejected(drivers::Rejection::ShuttingDown)));
}

#[test]
fn indexes_read_by_time_device_and_subject() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(async {
        let (store, sink, cancel, writer) = start(dir.path());
        let mut other = punch(100);
        other.device_id = "face-2".into();
        let mut batch: Vec<DevicePunch> = (1..=10).map(punch).collect();
        batch.push(other);
        sink.submit_many(batch).await;
        cancel.cancel();
        writer.await.unwrap();
        store
    });
    let t0 = punch(1).device_time_ms;
    let by_time: Vec<_> = store.by_time(t0 + 2000, t0 + 5000).map(|p| p.unwrap().device_seq).collect();
    assert_eq!(by_time, vec![Some(3), Some(4), Some(5)]);
    assert_eq!(store.by_device("face-2", 0, i64::MAX).count(), 1);
    assert_eq!(store.by_device("face-1", 0, i64::MAX).count(), 10);
    let e1003 = Subject::Employee("E1003".into());
    let seqs: Vec<_> = store.by_subject(&e1003, 0, i64::MAX).map(|p| p.unwrap().device_seq).collect();
    assert_eq!(seqs, vec![Some(3)]);
    let after: Vec<_> = store.after(9).map(|p| p.unwrap().seq).collect();
    assert_eq!(after, vec![10, 11]);
}
