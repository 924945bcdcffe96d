use super::*;
use drivers::sink::Subject;
use drivers::{DevicePunch, Method};

const TZ: &str = "Asia/Shanghai";
/// 2026-11-22 00:00 in Shanghai.
const DAY_START: i64 = 1_795_276_800_000;

fn tz() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::get(TZ).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    changes: ChangeLog,
    outbox: Outbox,
    next_seq: u64,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    let changes = ChangeLog::open(store.db()).unwrap();
    let outbox = Outbox::open(store.db(), tz()).unwrap();
    Fixture { _dir: dir, store, changes, outbox, next_seq: 1 }
}

fn device_punch(seq: u64, time_ms: i64) -> DevicePunch {
    DevicePunch {
        device_id: "face-1".into(),
        device_seq: Some(seq),
        method: Method::Face,
        subject: Subject::Employee("E1".into()),
        device_time_ms: time_ms,
        received_time_ms: time_ms,
        realtime: true,
        geo: None,
        score: None,
        attributes: vec![],
    }
}

impl Fixture {
    /// Stores a punch and appends it to the change log as the engine would.
    fn punch(&mut self, seq: u64, time_ms: i64) -> Punch {
        let dp = device_punch(seq, time_ms);
        let inserted = self.store.insert_batch("gw", &[("mqtt", &dp)], &mut self.next_seq).unwrap();
        let p = Punch {
            punch_id: inserted[0].punch_id.clone(),
            device_id: "face-1".into(),
            employee_id: "E1".into(),
            method: "face".into(),
            device_time_ms: time_ms,
            received_time_ms: time_ms,
            ..Default::default()
        };
        self.changes.append(&[Change::Punch(p.clone())]).unwrap();
        p
    }

    fn record(&self, id: &str, revision: u32, date: &str) -> AttendanceRecord {
        let r = AttendanceRecord {
            record_id: id.into(),
            revision,
            work_date: date.into(),
            employee_id: "E1".into(),
            ..Default::default()
        };
        self.changes.append(&[Change::Record(r.clone())]).unwrap();
        r
    }

    fn fill(&self) -> Filled {
        let through = self.changes.last_seq().unwrap();
        self.outbox.fill(&self.changes, &self.store, through, usize::MAX, 1_000).unwrap()
    }

    /// Assigns, decodes and acknowledges every batch; returns them in order.
    fn drain(&self, max_items: usize, max_bytes: usize) -> Vec<UploadBatch> {
        let mut out = Vec::new();
        while let Some(open) = self.outbox.assign_batch(max_items, max_bytes, u64::MAX).unwrap() {
            let body = self.outbox.batch_body(&open, "gw").unwrap();
            let batch = UploadBatch::decode(body.as_slice()).unwrap();
            assert_eq!(batch.batch_seq, open.batch_seq);
            self.outbox.ack(&open).unwrap();
            out.push(batch);
        }
        out
    }
}

use crate::proto::upstream::UploadBatch;

#[test]
fn items_go_out_in_order_with_monotonic_batch_seq() {
    let mut f = fixture();
    let mut sent = Vec::new();
    for i in 0..25 {
        sent.push(f.punch(i + 1, DAY_START + i as i64 * 60_000).punch_id);
    }
    let r = f.record("r1", 1, "2026-11-22");
    let filled = f.fill();
    assert_eq!((filled.changes, filled.punches, filled.records), (26, 25, 1));
    assert_eq!(f.outbox.stats().unwrap().depth, 26);
    let batches = f.drain(10, 1 << 20);
    assert_eq!(batches.iter().map(|b| b.batch_seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    let got: Vec<String> = batches.iter().flat_map(|b| b.punches.iter().map(|p| p.punch_id.clone())).collect();
    assert_eq!(got, sent);
    assert_eq!(batches[2].records, vec![r]);
    assert!(batches.iter().all(|b| b.gateway_id == "gw"));
    assert_eq!(f.outbox.stats().unwrap(), QueueStats::default());
    // Nothing new: nothing to assign, and the next batch continues the numbering.
    assert!(f.outbox.assign_batch(10, 1 << 20, u64::MAX).unwrap().is_none());
    f.punch(100, DAY_START);
    f.fill();
    assert_eq!(f.drain(10, 1 << 20)[0].batch_seq, 4);
}

#[test]
fn assigning_with_the_body_matches_the_two_step_path() {
    let mut f = fixture();
    for i in 0..12 {
        f.punch(i + 1, DAY_START + i as i64);
    }
    f.changes.append(&[Change::DayClosed("2026-11-22".into())]).unwrap();
    f.fill();
    let (open, body) = f.outbox.assign_with_body(20, 1 << 20, u64::MAX, "gw").unwrap().unwrap();
    assert_eq!((open.first, open.last, open.count), (1, 13, 13));
    assert_eq!(f.outbox.batch_body(&open, "gw").unwrap(), body);
    // While it is open, the same batch comes back.
    assert_eq!(f.outbox.assign_with_body(5, 1 << 20, u64::MAX, "gw").unwrap(), Some((open, body)));
    f.outbox.ack(&open).unwrap();
    assert!(f.outbox.assign_with_body(5, 1 << 20, u64::MAX, "gw").unwrap().is_none());
}

#[test]
fn batches_respect_the_byte_limit_but_always_carry_one_item() {
    let mut f = fixture();
    for i in 0..10 {
        f.punch(i + 1, DAY_START + i as i64);
    }
    f.fill();
    let batches = f.drain(1000, 1);
    assert_eq!(batches.len(), 10);
    assert!(batches.iter().all(|b| b.punches.len() == 1));
}

#[test]
fn a_digest_follows_a_closed_day_and_is_redone_after_a_late_punch() {
    let mut f = fixture();
    let a = f.punch(1, DAY_START + 9 * 3_600_000);
    let b = f.punch(2, DAY_START + 18 * 3_600_000);
    f.punch(3, DAY_START + 25 * 3_600_000); // the next day
    f.record("r1", 1, "2026-11-22");
    f.record("r1", 2, "2026-11-22");
    f.record("r2", 1, "2026-11-22");
    f.changes.append(&[Change::DayClosed("2026-11-22".into())]).unwrap();
    let filled = f.fill();
    assert_eq!(filled.digests, 1);
    let batches = f.drain(1000, 1 << 20);
    assert_eq!(batches.len(), 1);
    let d = &batches[0].digests[0];
    let (count, sha) = digest::ids_sha256([a.punch_id.as_str(), b.punch_id.as_str()]);
    assert_eq!(
        (d.work_date.as_str(), d.punch_count, &d.punch_ids_sha256, d.record_count),
        ("2026-11-22", count, &sha, 2)
    );
    assert_eq!((d.from_ms, d.to_ms), (DAY_START, DAY_START + 86_400_000));

    // A punch of the closed day arrives late: a fresh digest follows it.
    let late = f.punch(4, DAY_START + 12 * 3_600_000);
    let filled = f.fill();
    assert_eq!((filled.punches, filled.digests), (1, 1));
    let batches = f.drain(1000, 1 << 20);
    assert_eq!(batches[0].punches[0], late);
    assert_eq!(batches[0].digests[0].punch_count, 3);
}

#[test]
fn several_digests_of_one_date_in_a_batch_keep_the_newest() {
    let mut f = fixture();
    f.punch(1, DAY_START);
    f.changes.append(&[Change::DayClosed("2026-11-22".into())]).unwrap();
    let r = f.record("r1", 1, "2026-11-22");
    f.changes.append(&[Change::DayClosed("2026-11-22".into())]).unwrap();
    f.fill();
    let batches = f.drain(1000, 1 << 20);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].records, vec![r]);
    assert_eq!(batches[0].digests.len(), 1);
    assert_eq!((batches[0].digests[0].punch_count, batches[0].digests[0].record_count), (1, 1));
}

#[test]
fn a_digest_describes_its_batch_and_the_ones_before() {
    // After a digest, a punch of its date (the engine announces the date again later) goes into the next batch, so
    // the receiver never sees a digest next to punches it does not count.
    let mut f = fixture();
    let first = f.punch(1, DAY_START);
    f.changes.append(&[Change::DayClosed("2026-11-22".into())]).unwrap();
    let other_day = f.punch(2, DAY_START + 86_400_000);
    let late = f.punch(3, DAY_START + 1);
    f.changes.append(&[Change::DayClosed("2026-11-22".into())]).unwrap();
    f.fill();
    let batches = f.drain(1000, 1 << 20);
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].punches, vec![first, other_day]);
    assert_eq!(batches[0].digests[0].punch_count, 1);
    assert_eq!(batches[1].punches, vec![late]);
    assert_eq!(batches[1].digests[0].punch_count, 2);
}

#[test]
fn the_cursor_survives_a_restart_and_nothing_is_enqueued_twice() {
    let mut f = fixture();
    for i in 0..5 {
        f.punch(i + 1, DAY_START + i as i64);
    }
    f.fill();
    // A restart: a new Outbox on the same database resumes after the cursor.
    let again = Outbox::open(f.store.db(), tz()).unwrap();
    assert_eq!(again.cursor().unwrap(), 5);
    let through = f.changes.last_seq().unwrap();
    assert_eq!(again.fill(&f.changes, &f.store, through, usize::MAX, 0).unwrap().changes, 0);
    f.punch(6, DAY_START + 6);
    assert_eq!(again.fill(&f.changes, &f.store, u64::MAX, usize::MAX, 0).unwrap().changes, 1);
    assert_eq!(again.stats().unwrap().depth, 6);
}

#[test]
fn fill_stops_at_the_durable_point_and_the_chunk_size() {
    let mut f = fixture();
    for i in 0..10 {
        f.punch(i + 1, DAY_START + i as i64);
    }
    assert_eq!(f.outbox.fill(&f.changes, &f.store, 4, usize::MAX, 0).unwrap().changes, 4);
    assert_eq!(f.outbox.fill(&f.changes, &f.store, 10, 3, 0).unwrap().cursor, 7);
    assert_eq!(f.outbox.fill(&f.changes, &f.store, 10, 100, 0).unwrap().cursor, 10);
}

#[test]
fn an_open_batch_is_resent_unchanged_after_a_restart() {
    let mut f = fixture();
    for i in 0..6 {
        f.punch(i + 1, DAY_START + i as i64);
    }
    f.fill();
    let open = f.outbox.assign_batch(4, 1 << 20, u64::MAX).unwrap().unwrap();
    let body = f.outbox.batch_body(&open, "gw").unwrap();
    let again = Outbox::open(f.store.db(), tz()).unwrap();
    assert_eq!(again.open_batch().unwrap(), Some(open));
    // Asking for a batch returns the open one, not a new one.
    assert_eq!(again.assign_batch(100, 1 << 20, u64::MAX).unwrap(), Some(open));
    assert_eq!(again.batch_body(&open, "gw").unwrap(), body);
    again.ack(&open).unwrap();
    let next = again.assign_batch(100, 1 << 20, u64::MAX).unwrap().unwrap();
    assert_eq!((next.batch_seq, next.count), (open.batch_seq + 1, 2));
}

#[test]
fn the_day_index_keeps_the_newest_revision_and_resend_uses_it() {
    let mut f = fixture();
    let p = f.punch(1, DAY_START + 1000);
    f.record("r1", 1, "2026-11-22");
    let newest = f.record("r1", 3, "2026-11-22");
    f.record("r1", 2, "2026-11-22"); // out of order: still sent, not indexed
    f.changes.append(&[Change::DayClosed("2026-11-22".into())]).unwrap();
    f.fill();
    assert_eq!(f.drain(1000, 1 << 20)[0].records.len(), 3);

    let n = f.outbox.resend_date("2026-11-22", &f.store, 5).unwrap();
    assert_eq!(n, 3); // the punch, r1 at revision 3, the digest
    let batches = f.drain(1000, 1 << 20);
    assert_eq!(batches[0].punches, vec![p]);
    assert_eq!(batches[0].records, vec![newest]);
    assert_eq!(batches[0].digests[0].record_count, 1);
    assert_eq!(f.outbox.resend_date("2026-01-01", &f.store, 5).unwrap(), 0);
    assert!(f.outbox.resend_date("../etc", &f.store, 5).is_err());
}

#[test]
fn compaction_removes_old_delivered_days_but_never_the_queue() {
    let mut f = fixture();
    f.punch(1, DAY_START - 86_400_000); // 2026-11-21
    f.punch(2, DAY_START); // 2026-11-22
    f.changes.append(&[Change::DayClosed("2026-11-21".into())]).unwrap();
    f.fill();
    // Before delivery: compaction of everything removes index entries only.
    let removed = f.outbox.compact("2026-11-22").unwrap();
    assert_eq!(removed, 2); // D for the 21st, C for the 21st
    assert_eq!(f.outbox.stats().unwrap().depth, 3);
    assert_eq!(f.outbox.resend_date("2026-11-21", &f.store, 0).unwrap(), 0);
    assert_eq!(f.outbox.resend_date("2026-11-22", &f.store, 0).unwrap(), 1);
}

#[test]
fn a_large_backlog_streams_in_bounded_batches() {
    let f = fixture();
    let punches: Vec<Change> = (0..20_000)
        .map(|i| {
            Change::Punch(Punch {
                punch_id: format!("gw:d:{i:06}"),
                device_time_ms: DAY_START + i,
                ..Default::default()
            })
        })
        .collect();
    f.changes.append(&punches).unwrap();
    let mut cursor = 0;
    while cursor < 20_000 {
        cursor = f.outbox.fill(&f.changes, &f.store, u64::MAX, FILL_CHUNK, 0).unwrap().cursor;
    }
    let mut expected = 0;
    let mut batches = 0;
    while let Some(open) = f.outbox.assign_batch(3000, 1 << 20, u64::MAX).unwrap() {
        let batch = UploadBatch::decode(f.outbox.batch_body(&open, "gw").unwrap().as_slice()).unwrap();
        assert!(batch.punches.len() <= 3000);
        for p in &batch.punches {
            assert_eq!(p.punch_id, format!("gw:d:{expected:06}"));
            expected += 1;
        }
        f.outbox.ack(&open).unwrap();
        batches += 1;
    }
    assert_eq!((expected, batches), (20_000, 7));
}

#[test]
fn trimming_keeps_the_newest_log_entry() {
    assert_eq!(trim_point(10, 10), 9);
    assert_eq!(trim_point(5, 10), 5);
    assert_eq!(trim_point(0, 0), 0);
}

#[test]
fn malformed_items_are_errors_not_panics() {
    assert!(RawItem::parse(&[]).is_err());
    assert!(RawItem::parse(&[2, b'p', 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err().contains("version 2"));
    assert!(RawItem::parse(&[1, b'x', 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err().contains("kind"));
    assert!(Item::decode(&[1, b'p', 0, 0, 0, 0, 0, 0, 0, 0, 0xff]).is_err());
    let item = Item::Digest(DayDigest { work_date: "2026-11-22".into(), ..Default::default() });
    assert_eq!(Item::decode(&item.encode(42)).unwrap(), (item, 42));
}

proptest::proptest! {
    #[test]
    fn item_decoding_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
        let _ = Item::decode(&bytes);
    }
}

#[tokio::test]
async fn feeder_pass_flushes_trims_the_log_and_wakes_the_sender() {
    let mut f = fixture();
    for i in 0..3 {
        f.punch(i + 1, DAY_START + i as i64);
    }
    let feeder = feeder::Feeder {
        outbox: f.outbox.clone(),
        changes: f.changes.clone(),
        store: f.store.clone(),
        metrics: crate::app::metrics(),
    };
    let mut woken = f.outbox.subscribe();
    assert_eq!(feeder.pass(3).await.unwrap(), 3);
    assert!(woken.has_changed().unwrap());
    assert_eq!(*woken.borrow_and_update(), 3);
    // Entries 1 and 2 are gone; 3 stays so numbering continues.
    assert_eq!(f.changes.after(0).count(), 1);
    assert_eq!(f.changes.append(&[Change::DayClosed("2026-11-22".into())]).unwrap(), 4);
}

/// Punches straight into the change log (the store is not needed for queue mechanics), filled into the outbox.
fn queue_punches(f: &Fixture, from: i64, n: i64) -> Vec<String> {
    let punches: Vec<Change> = (from..from + n)
        .map(|i| {
            Change::Punch(Punch {
                punch_id: format!("gw:d:{i:06}"),
                device_time_ms: DAY_START + i,
                ..Default::default()
            })
        })
        .collect();
    f.changes.append(&punches).unwrap();
    f.fill();
    (from..from + n).map(|i| format!("gw:d:{i:06}")).collect()
}

fn queue_keys(f: &Fixture) -> usize {
    f.outbox.tree.scan_prefix([K_QUEUE]).count()
}

#[test]
fn the_queue_is_stored_in_chunks_and_batches_may_cut_them() {
    let f = fixture();
    let sent = queue_punches(&f, 0, 1000);
    // 1000 items in chunks of at most CHUNK_MAX_ITEMS, not a key per item.
    let keys = queue_keys(&f);
    assert!((1000 / CHUNK_MAX_ITEMS..1000 / 4).contains(&keys), "{keys} keys");
    assert_eq!(f.outbox.stats().unwrap().depth, 1000);
    // Batches of 7 end inside chunks; acknowledging rewrites the rest of the chunk; nothing lost or repeated.
    let mut got = Vec::new();
    let mut seqs = Vec::new();
    for round in 0.. {
        let Some(open) = f.outbox.assign_batch(7, 1 << 20, u64::MAX).unwrap() else { break };
        let batch = UploadBatch::decode(f.outbox.batch_body(&open, "gw").unwrap().as_slice()).unwrap();
        assert_eq!(batch.punches.len() as u64, open.count);
        got.extend(batch.punches.into_iter().map(|p| p.punch_id));
        seqs.push(batch.batch_seq);
        f.outbox.ack(&open).unwrap();
        let stats = f.outbox.stats().unwrap();
        assert_eq!(stats.depth, 1000 - got.len() as u64, "round {round}");
        assert_eq!(f.outbox.ready(1000).unwrap(), stats.depth);
    }
    assert_eq!(got, sent);
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(queue_keys(&f), 0);
}

#[test]
fn only_durable_items_go_into_a_batch_even_inside_a_chunk() {
    let f = fixture();
    queue_punches(&f, 0, 10);
    let open = f.outbox.assign_batch(100, 1 << 20, 4).unwrap().unwrap();
    assert_eq!((open.first, open.last, open.count), (1, 4, 4));
    f.outbox.ack(&open).unwrap();
    let open = f.outbox.assign_batch(100, 1 << 20, u64::MAX).unwrap().unwrap();
    assert_eq!((open.first, open.last, open.count), (5, 10, 6));
}

#[test]
fn a_batch_prepared_in_flight_is_assigned_with_the_acknowledgement() {
    let f = fixture();
    let sent = queue_punches(&f, 0, 95);
    let (mut open, body) = f.outbox.assign_with_body(20, 1 << 20, u64::MAX, "gw").unwrap().unwrap();
    let mut got: Vec<String> =
        UploadBatch::decode(body.as_slice()).unwrap().punches.into_iter().map(|p| p.punch_id).collect();
    loop {
        // While `open` is in flight the next batch is read, not assigned: the open batch stays the same.
        let Some(next) = f.outbox.prepare(open.last, 20, 1 << 20, u64::MAX).unwrap() else {
            f.outbox.ack(&open).unwrap();
            break;
        };
        assert_eq!(f.outbox.open_batch().unwrap(), Some(open));
        let (assigned, body) = f.outbox.ack_and_assign(&open, next, "gw").unwrap().unwrap();
        assert_eq!((assigned.batch_seq, assigned.first), (open.batch_seq + 1, open.last + 1));
        // The assigned batch is the open batch: after a crash it is re-sent with the same seq and items.
        assert_eq!(f.outbox.open_batch().unwrap(), Some(assigned));
        assert_eq!(f.outbox.batch_body(&assigned, "gw").unwrap(), body);
        got.extend(UploadBatch::decode(body.as_slice()).unwrap().punches.into_iter().map(|p| p.punch_id));
        open = assigned;
    }
    assert_eq!(got, sent);
    assert_eq!(f.outbox.stats().unwrap(), QueueStats::default());
    assert_eq!(f.outbox.open_batch().unwrap(), None);
    // A prepared batch that does not follow the acknowledged one is not assigned.
    queue_punches(&f, 95, 10);
    let open = f.outbox.assign_batch(5, 1 << 20, u64::MAX).unwrap().unwrap();
    let stale = f.outbox.prepare(open.last + 2, 5, 1 << 20, u64::MAX).unwrap().unwrap();
    assert!(f.outbox.ack_and_assign(&open, stale, "gw").unwrap().is_none());
    assert_eq!(f.outbox.open_batch().unwrap(), None);
    assert_eq!(f.outbox.stats().unwrap().depth, 5);
}

#[test]
fn single_item_values_of_the_earlier_layout_are_still_read() {
    let f = fixture();
    // Two items as the previous layout stored them (one key per item), then chunked ones after them.
    let legacy = |i: u64| Item::Punch(Punch { punch_id: format!("old-{i}"), ..Default::default() }).encode(5);
    f.outbox.tree.insert(q_key(1), legacy(1)).unwrap();
    f.outbox.tree.insert(q_key(2), legacy(2)).unwrap();
    f.outbox.tree.insert(M_NEXT_ITEM, &3u64.to_be_bytes()).unwrap();
    let new = queue_punches(&f, 0, 3);
    assert_eq!(f.outbox.stats().unwrap(), QueueStats { depth: 5, oldest_enqueued_ms: Some(5) });
    let open = f.outbox.assign_batch(100, 1 << 20, u64::MAX).unwrap().unwrap();
    let batch = UploadBatch::decode(f.outbox.batch_body(&open, "gw").unwrap().as_slice()).unwrap();
    let ids: Vec<String> = batch.punches.into_iter().map(|p| p.punch_id).collect();
    assert_eq!(ids, [vec!["old-1".to_owned(), "old-2".to_owned()], new].concat());
}

#[test]
fn malformed_chunks_are_errors_not_panics() {
    let item = Item::Punch(Punch::default()).encode(1);
    let good = encode_chunk([item.as_slice(), item.as_slice()].into_iter());
    assert_eq!(chunk_items(7, &good).unwrap().iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![7, 8]);
    assert!(chunk_items(1, &[]).unwrap_err().contains("empty"));
    assert!(chunk_items(1, &[9]).unwrap_err().contains("version 9"));
    assert!(chunk_items(1, &[CHUNK_V1, 0, 0]).unwrap_err().contains("header"));
    assert!(chunk_items(1, &good[..good.len() - 1]).unwrap_err().contains("fewer present"));
    assert!(chunk_items(1, &[CHUNK_V1, 0, 0, 0, 1, 0]).unwrap_err().contains("cut off"));
    assert!(chunk_items(1, &[good.as_slice(), &[0]].concat()).unwrap_err().contains("after"));
    // A damaged chunk in the queue is a decode error naming it.
    let f = fixture();
    f.outbox.tree.insert(q_key(1), &[CHUNK_V1, 0, 0, 0, 3][..]).unwrap();
    f.outbox.tree.insert(M_NEXT_ITEM, &2u64.to_be_bytes()).unwrap();
    let e = f.outbox.assign_batch(10, 1 << 20, u64::MAX).unwrap_err();
    assert!(e.to_string().contains("queue chunk 1"), "{e}");
}

proptest::proptest! {
    #[test]
    fn chunk_decoding_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96),
                                   first in proptest::prelude::any::<u64>()) {
        let _ = chunk_items(first, &bytes);
    }
}

#[test]
fn the_day_index_holds_punches_in_chunks_and_resend_streams_them_all() {
    let f = fixture();
    let sent = queue_punches(&f, 0, 100);
    let day_keys = f.outbox.tree.scan_prefix(day_prefix("2026-11-22")).count();
    assert!((100 / CHUNK_MAX_ITEMS..=100 / 4).contains(&day_keys), "{day_keys} day index keys");
    f.drain(1000, 1 << 20);
    assert_eq!(f.outbox.resend_date("2026-11-22", &f.store, 5).unwrap(), 100);
    let again: Vec<String> =
        f.drain(1000, 1 << 20).into_iter().flat_map(|b| b.punches.into_iter().map(|p| p.punch_id)).collect();
    assert_eq!(again, sent);
}
