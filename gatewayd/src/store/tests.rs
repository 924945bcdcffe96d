use std::collections::BTreeSet;

use drivers::sink::Subject;
use drivers::{DevicePunch, Method};
use proptest::prelude::*;

use super::expire::{Expired, Expiry};
use super::*;

fn punch(device: &str, seq: u64, subject: &str, time_ms: i64) -> DevicePunch {
    DevicePunch {
        device_id: device.into(),
        device_seq: Some(seq),
        method: Method::Card,
        subject: Subject::Employee(subject.into()),
        device_time_ms: time_ms,
        received_time_ms: time_ms + 100,
        realtime: true,
        geo: None,
        score: None,
        attributes: Vec::new(),
    }
}

struct Rig {
    dir: tempfile::TempDir,
    store: Store,
    next: u64,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8).unwrap();
        Rig { dir, store, next: 1 }
    }

    /// A store made before partitions: its punches (one to start with, seq 1 of device `d0`) in the main database.
    fn legacy() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta").unwrap().insert("format", FORMAT).unwrap();
            let p = Punch {
                seq: 1,
                punch_id: "gw:d0:1".into(),
                device_id: "d0".into(),
                driver: "test".into(),
                device_seq: Some(1),
                method: Method::Card,
                subject: Subject::Employee("E0".into()),
                device_time_ms: 500,
                received_time_ms: 600,
                realtime: true,
                geo: None,
                score: None,
                attributes: Vec::new(),
            };
            db.open_tree(LOG_TREE).unwrap().insert(1u64.to_be_bytes(), codec::encode(&p)).unwrap();
            db.flush().unwrap();
        }
        let store = reopen(dir.path()).unwrap();
        assert!(store.parts().iter().all(|p| !p.own_dir), "part 0 only");
        Rig { dir, store, next: 2 }
    }

    fn insert(&mut self, punches: &[DevicePunch]) -> Vec<Inserted> {
        let refs: Vec<(&str, &DevicePunch)> = punches.iter().map(|p| ("test", p)).collect();
        self.store.insert_batch("gw", &refs, &mut self.next).unwrap()
    }

    fn flush(&self) {
        futures_lite_block_on(self.store.flush()).unwrap();
    }

    fn reopen(&mut self) {
        let dir = self.dir.path().to_owned();
        let old = std::mem::replace(&mut self.store, Store::open(&tempfile::tempdir().unwrap().keep(), 1).unwrap());
        drop(old);
        self.store = reopen(&dir).unwrap();
    }
}

/// Opens the store in `dir` once the previous handle has let go of it: sled's background threads may hold the
/// database for a moment after the last handle is dropped (polls the lock, up to 5 s).
fn reopen(dir: &std::path::Path) -> Result<Store, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Store::open(dir, 8) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            other => return other,
        }
    }
}

fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

fn seqs(it: impl Iterator<Item = Result<Punch, StoreError>>) -> Vec<u64> {
    it.map(|p| p.unwrap().seq).collect()
}

#[test]
fn a_resent_punch_is_found_before_and_after_indexing_and_after_reopen() {
    let mut r = Rig::new();
    let p = punch("d1", 1, "E1", 1_000);
    let first = r.insert(&[p.clone(), p.clone()]);
    assert!(!first[0].duplicate && first[1].duplicate && first[0].seq == first[1].seq);
    // Written, not durable, not indexed: found through the unindexed table.
    assert!(r.insert(std::slice::from_ref(&p))[0].duplicate);
    assert_eq!(r.store.index_pending(100).unwrap(), 0, "nothing durable yet");
    r.flush();
    assert_eq!(r.store.index_pending(100).unwrap(), 1);
    assert_eq!(r.store.index_lag(), 0);
    // Indexed: found through the id index.
    assert!(r.insert(std::slice::from_ref(&p))[0].duplicate);
    assert_eq!(r.store.get_by_id("gw:d1:1").unwrap().map(|p| p.seq), Some(1));
    r.reopen();
    assert!(r.insert(std::slice::from_ref(&p))[0].duplicate);
    assert_eq!(r.store.count().unwrap(), 1);
}

#[test]
fn reopening_indexes_what_a_crash_left_unindexed() {
    let mut r = Rig::new();
    r.insert(&[punch("d1", 1, "E1", 1_000), punch("d2", 1, "E2", 2_000)]);
    r.flush();
    // No index round ran (as if the process died right after the flush).
    r.reopen();
    assert_eq!(r.store.index_lag(), 0);
    assert_eq!(seqs(r.store.by_time(0, 10_000)), vec![1, 2]);
    assert_eq!(seqs(r.store.by_device("d2", 0, 10_000)), vec![2]);
    assert!(r.insert(&[punch("d1", 1, "E1", 1_000)])[0].duplicate);
}

#[test]
fn the_writer_indexes_itself_when_the_follower_falls_behind() {
    let mut r = Rig::new();
    r.store.inner.max_lag.store(8, Ordering::Relaxed);
    for i in 0..5u64 {
        let batch: Vec<_> = (0..4).map(|j| punch("d1", i * 4 + j, "E1", (i * 4 + j) as i64)).collect();
        r.insert(&batch);
        r.flush();
        assert!(r.store.index_lag() <= 8 + 4, "lag {}", r.store.index_lag());
    }
    assert!(r.store.inner.indexed.load(Ordering::Acquire) > 0, "the writer indexed");
}

#[test]
fn a_damaged_posting_is_an_error_not_a_panic() {
    let mut r = Rig::new();
    r.insert(&[punch("d1", 1, "E1", 1_000)]);
    r.flush();
    r.store.index_pending(10).unwrap();
    let part = r.store.parts().last().cloned().unwrap();
    let key = part.index.scan_prefix([index::K_TIME]).next().unwrap().unwrap().0;
    part.index.insert(key, &[1u8, 2, 3][..]).unwrap();
    let results: Vec<_> = r.store.by_time(0, 10_000).collect();
    assert!(matches!(results.as_slice(), [Err(StoreError::Decode { .. })]), "{results:?}");
}

#[test]
fn a_store_of_the_first_layout_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let p = Punch {
        seq: 1,
        punch_id: "gw:d1:7".into(),
        device_id: "d1".into(),
        driver: "mqtt".into(),
        device_seq: Some(7),
        method: Method::Face,
        subject: Subject::Employee("E1".into()),
        device_time_ms: 5_000,
        received_time_ms: 5_100,
        realtime: true,
        geo: None,
        score: None,
        attributes: Vec::new(),
    };
    {
        // The first layout, written the way its code wrote it.
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("meta").unwrap().insert("format", FORMAT_V1).unwrap();
        let old = db.open_tree("punches").unwrap();
        for (seq, p) in
            [(1u64, &p), (2, &Punch { seq: 2, punch_id: "gw:d1:8".into(), device_seq: Some(8), ..p.clone() })]
        {
            let mut k = vec![b'P'];
            k.extend_from_slice(&seq.to_be_bytes());
            old.insert(k, codec::encode(p)).unwrap();
            let mut i = vec![b'I'];
            i.extend_from_slice(p.punch_id.as_bytes());
            old.insert(i, &seq.to_be_bytes()).unwrap();
        }
        db.flush().unwrap();
    }
    let store = Store::open(dir.path(), 8).unwrap();
    assert_eq!(store.get(1).unwrap(), p);
    assert_eq!(seqs(store.after(0)), vec![1, 2]);
    assert_eq!(store.get_by_id("gw:d1:8").unwrap().map(|p| p.seq), Some(2));
    assert_eq!(seqs(store.by_subject(&Subject::Employee("E1".into()), 0, 10_000)), vec![1, 2]);
    assert!(!store.db().tree_names().iter().any(|n| n.as_ref() == b"punches"));
    assert_eq!(store.db().open_tree("meta").unwrap().get("format").unwrap().as_deref(), Some(FORMAT));
    let mut next = 3;
    let again = store.insert_batch("gw", &[("mqtt", &punch("d1", 8, "E1", 5_000))], &mut next).unwrap();
    assert!(again[0].duplicate);
}

#[derive(Debug, Clone)]
enum Step {
    Insert(Vec<(u8, u8, i64)>),
    Flush,
    Index(u64),
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => proptest::collection::vec((0u8..4, 0u8..6, -200_000i64..200_000_000), 1..12).prop_map(Step::Insert),
        // Group commits big enough to fill several blocks.
        1 => proptest::collection::vec((0u8..4, 0u8..6, -200_000i64..200_000_000), 60..200).prop_map(Step::Insert),
        2 => Just(Step::Flush),
        2 => (1u64..20).prop_map(Step::Index),
        1 => Just(Step::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever mix of writes, flushes, index rounds and reopenings: every read equals a filter over all punches, and
    /// no punch id is stored twice.
    #[test]
    fn reads_always_match_a_full_scan(steps in proptest::collection::vec(step(), 1..30)) {
        let mut r = Rig::new();
        let mut device_seq = 0u64;
        let mut all: Vec<(u64, String, String, i64)> = Vec::new();
        for s in steps {
            match s {
                Step::Insert(items) => {
                    let batch: Vec<DevicePunch> = items.iter().map(|&(d, e, t)| {
                        device_seq += 1;
                        // Every third punch re-sends the previous one.
                        let seq = if device_seq.is_multiple_of(3) { device_seq - 1 } else { device_seq };
                        punch(&format!("d{d}"), seq, &format!("E{e}"), t)
                    }).collect();
                    for ins in r.insert(&batch) {
                        if !ins.duplicate {
                            let p = r.store.get(ins.seq).unwrap();
                            all.push((p.seq, p.device_id.clone(), p.employee().unwrap_or_default().to_owned(), p.device_time_ms));
                        }
                    }
                }
                Step::Flush => r.flush(),
                Step::Index(n) => { r.store.index_pending(n).unwrap(); }
                Step::Reopen => { r.flush(); r.reopen(); }
            }
        }
        let ids: BTreeSet<String> = r.store.after(0).map(|p| p.unwrap().punch_id).collect();
        prop_assert_eq!(ids.len() as u64, r.store.count().unwrap());
        for (from, to) in [(i64::MIN, i64::MAX), (0, 100_000_000), (-100_000, 3_600_000), (50_000_000, 50_000_001)] {
            let mut want: Vec<_> = all.iter().filter(|a| a.3 >= from && a.3 < to).map(|a| (a.3, a.0)).collect();
            want.sort();
            let want: Vec<u64> = want.into_iter().map(|(_, s)| s).collect();
            prop_assert_eq!(seqs(r.store.by_time(from, to)), want.clone());
            for d in 0..4 {
                let dev = format!("d{d}");
                let w: Vec<u64> = want.iter().copied().filter(|s| all.iter().any(|a| a.0 == *s && a.1 == dev)).collect();
                prop_assert_eq!(seqs(r.store.by_device(&dev, from, to)), w);
            }
            for e in 0..6 {
                let emp = format!("E{e}");
                let w: Vec<u64> = want.iter().copied().filter(|s| all.iter().any(|a| a.0 == *s && a.2 == emp)).collect();
                prop_assert_eq!(seqs(r.store.by_subject(&Subject::Employee(emp), from, to)), w);
            }
        }
    }
}

#[test]
fn a_group_commit_is_written_as_blocks_and_read_punch_by_punch() {
    let mut r = Rig::new();
    let mut batch: Vec<DevicePunch> = (1..=300).map(|i| punch("d1", i, "E1", i as i64 * 1_000)).collect();
    // Large punches close a block by size before it is full by count.
    for p in &mut batch[200..] {
        p.attributes = vec![("photo".into(), "x".repeat(1_000))];
    }
    batch.push(punch("d1", 5, "E1", 5_000));
    let inserted = r.insert(&batch);
    assert!(inserted[300].duplicate && inserted[300].seq == 5);
    r.flush();
    let log = r.store.parts().last().unwrap().log.clone();
    let firsts: Vec<u64> = log.iter().keys().map(|k| seq_from(&k.unwrap()).unwrap()).collect();
    drop(log);
    // Small punches in blocks of BLOCK_MAX_PUNCHES; the block from 193 takes 8 small and 3 large punches (about 1 KiB
    // each): a fourth would take it past BLOCK_MAX_BYTES; then blocks of 3 large punches.
    assert_eq!(&firsts[..5], &[1, 65, 129, 193, 204]);
    assert!(firsts[4..].windows(2).all(|w| w[1] - w[0] == 3), "{firsts:?}");
    assert_eq!(firsts.last(), Some(&300));
    // No value is much over the limit, so no sled leaf of them reaches the size sled writes as a blob file.
    for v in r.store.parts().last().unwrap().log.clone().iter().values() {
        assert!(v.unwrap().len() <= codec::BLOCK_MAX_BYTES + 5 + 4 * codec::BLOCK_MAX_PUNCHES);
    }
    for seq in 1..=300 {
        assert_eq!(r.store.get(seq).unwrap().seq, seq);
    }
    assert!(r.store.get(301).is_err() && r.store.get(0).is_err());
    for after in [0, 1, 63, 64, 65, 199, 200, 296, 299, 300] {
        assert_eq!(seqs(r.store.after(after)), (after + 1..=300).collect::<Vec<_>>(), "after {after}");
    }
    r.reopen();
    assert_eq!(r.store.count().unwrap(), 300);
    assert_eq!(seqs(r.store.by_time(10_000, 70_000)), (10..70).collect::<Vec<_>>());
    assert!(r.insert(&[punch("d1", 250, "E1", 250_000)])[0].duplicate);
    assert_eq!(r.insert(&[punch("d1", 301, "E1", 301_000)])[0].seq, 301);
}

#[test]
fn numbered_ids_below_above_and_between_the_indexed_ones() {
    let mut r = Rig::new();
    r.insert(&[punch("d1", 300, "E1", 1_000), punch("d1", 10, "E1", 2_000)]);
    r.flush();
    r.store.index_pending(100).unwrap();
    // Lower numbers, other buckets, a number equal to the highest: each found or new as it should be.
    let ins = r.insert(&[punch("d1", 5, "E1", 3_000), punch("d1", 300, "E1", 1_000), punch("d1", 10, "E1", 2_000)]);
    assert_eq!(ins.iter().map(|i| (i.seq, i.duplicate)).collect::<Vec<_>>(), vec![(3, false), (1, true), (2, true)]);
    r.flush();
    r.store.index_pending(100).unwrap();
    assert!(r.insert(&[punch("d1", 5, "E1", 3_000)])[0].duplicate);
    assert_eq!(r.insert(&[punch("d1", 301, "E1", 4_000)])[0].seq, 4);
    r.flush();
    r.reopen();
    // The maximum is learned again from the index after a restart.
    for (n, seq) in [(5, 3), (10, 2), (300, 1), (301, 4)] {
        let ins = r.insert(&[punch("d1", n, "E1", 0)]);
        assert_eq!((ins[0].seq, ins[0].duplicate), (seq, true), "number {n}");
    }
    assert_eq!(r.insert(&[punch("d1", 299, "E1", 0)])[0].seq, 5);
}

#[test]
fn an_index_of_the_previous_layout_is_rebuilt() {
    let mut r = Rig::new();
    r.insert(&[punch("d1", 8, "E1", 1_000), DevicePunch { device_seq: None, ..punch("d2", 0, "E2", 2_000) }]);
    r.flush();
    r.store.index_pending(10).unwrap();
    let hashed = r.store.get(2).unwrap().punch_id;
    // The previous layout: one `I` key per id, and no index layout in `meta`.
    let index = r.store.parts().last().unwrap().index.clone();
    index.clear().unwrap();
    index.insert(index::id_key("gw:d1:8"), &1u64.to_be_bytes()).unwrap();
    index.insert(index::CURSOR, &2u64.to_be_bytes()).unwrap();
    r.store.db().open_tree("meta").unwrap().remove(index::META_KEY).unwrap();
    drop(index);
    r.flush();
    r.reopen();
    let index = r.store.parts().last().unwrap().index.clone();
    assert_eq!(index.get(index::id_key("gw:d1:8")).unwrap(), None);
    assert_eq!(index.scan_prefix([index::K_NUMBERED_ID]).count(), 1);
    assert!(index.get(index::id_key(&hashed)).unwrap().is_some());
    drop(index);
    assert_eq!(r.store.get_by_id("gw:d1:8").unwrap().map(|p| p.seq), Some(1));
    assert_eq!(r.store.get_by_id(&hashed).unwrap().map(|p| p.seq), Some(2));
    assert_eq!(r.store.get_by_id("gw:d1:08").unwrap(), None);
    assert!(r.insert(&[punch("d1", 8, "E1", 1_000)])[0].duplicate);
    assert_eq!(seqs(r.store.by_device("d2", 0, 10_000)), vec![2]);
}

#[test]
fn a_damaged_block_is_an_error_not_a_panic() {
    let mut r = Rig::new();
    r.insert(&(1..=10).map(|i| punch("d1", i, "E1", i as i64)).collect::<Vec<_>>());
    r.flush();
    let log = r.store.parts().last().unwrap().log.clone();
    let block = log.get(1u64.to_be_bytes()).unwrap().unwrap();
    // The same block under the wrong key: its punches carry other sequence numbers.
    log.insert(11u64.to_be_bytes(), block.clone()).unwrap();
    assert!(r.store.get(12).unwrap_err().to_string().contains("holds sequence number 2 where 12 belongs"));
    log.insert(11u64.to_be_bytes(), &block[..block.len() - 3]).unwrap();
    r.flush();
    let dir = r.dir.path().to_owned();
    drop((log, r.store));
    let err = reopen(&dir).unwrap_err();
    assert!(matches!(err, StoreError::Decode { .. }) && err.to_string().contains("runs past the end"), "{err}");
}

#[test]
fn a_log_that_lost_its_tail_is_reported_as_damaged() {
    let mut r = Rig::new();
    r.insert(&[punch("d1", 1, "E1", 1_000), punch("d1", 2, "E1", 2_000)]);
    r.flush();
    r.store.save_watermark().unwrap();
    r.reopen();
    // The watermark says 2 punches were durable; pretend sled dropped the second one.
    std::fs::write(r.dir.path().join(WATERMARK_FILE), format!("{WATERMARK_HEADER} 3\n")).unwrap();
    let dir = r.dir.path().to_owned();
    drop(r.store);
    let err = reopen(&dir).unwrap_err().to_string();
    assert!(err.contains("damaged database") && err.contains("ends at sequence 2"), "{err}");
    std::fs::write(dir.join(WATERMARK_FILE), "garbage").unwrap();
    let err = reopen(&dir).unwrap_err().to_string();
    assert!(err.contains("does not hold a watermark"), "{err}");
    std::fs::write(dir.join(WATERMARK_FILE), format!("{WATERMARK_HEADER} 2\n")).unwrap();
    assert_eq!(reopen(&dir).unwrap().count().unwrap(), 2);
}

#[test]
fn blob_files_are_synced_once_and_forgotten_when_sled_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let synced = Mutex::new(HashSet::new());
    // No blobs directory yet: nothing to do.
    sync_blobs(dir.path(), &synced).unwrap();
    std::fs::create_dir(dir.path().join("blobs")).unwrap();
    std::fs::write(dir.path().join("blobs").join("42"), b"blob").unwrap();
    sync_blobs(dir.path(), &synced).unwrap();
    assert_eq!(lock(&synced).iter().map(|n| n.to_string_lossy().into_owned()).collect::<Vec<_>>(), vec!["42"]);
    std::fs::remove_file(dir.path().join("blobs").join("42")).unwrap();
    sync_blobs(dir.path(), &synced).unwrap();
    assert!(lock(&synced).is_empty());
}

#[test]
fn the_table_of_unindexed_ids_gives_its_room_back_after_a_burst() {
    let mut r = Rig::new();
    let burst: Vec<DevicePunch> = (1..=20_000).map(|i| punch("d1", i, "E1", i as i64)).collect();
    r.insert(&burst);
    assert!(lock(&r.store.inner.unindexed).by_id.capacity() >= 20_000);
    r.flush();
    while r.store.index_pending(INDEX_ROUND).unwrap() > 0 {}
    let unindexed = lock(&r.store.inner.unindexed);
    assert!(unindexed.by_id.is_empty() && unindexed.by_id.capacity() <= 4096, "{}", unindexed.by_id.capacity());
    drop(unindexed);
    // Still found (through the index) after the table let go of them.
    assert!(r.insert(&[punch("d1", 19_999, "E1", 19_999)])[0].duplicate);
}

#[test]
fn expiry_removes_delivered_old_punches_from_the_log_and_every_index_and_keeps_the_rest() {
    const DAY: i64 = 86_400_000;
    // Part 0 (a store made before partitions) is expired value by value; its first value is seq 1 (device d0).
    let mut r = Rig::legacy();
    let mut hashed = punch("d9", 0, "E9", 5_000);
    hashed.device_seq = None;
    r.insert(&[punch("d1", 1, "E1", 1_000), punch("d2", 1, "E2", 2_000), hashed]);
    r.insert(&[punch("d1", 2, "E1", DAY + 1_000)]);
    r.insert(&[punch("d1", 3, "E1", 2 * DAY + 1_000), punch("d2", 2, "E2", 2 * DAY + 2_000)]);
    r.flush();
    r.store.index_pending(u64::MAX).unwrap();
    let utc = jiff::tz::TimeZone::UTC;
    let date = |d: i64| jiff::Timestamp::from_millisecond(d * DAY).unwrap().to_zoned(utc.clone()).date();
    let hashed_id = r.store.get(4).unwrap().punch_id;

    // Only what is delivered goes: through seq 3 leaves the second value (seqs 2-4) whole.
    let limited = Expiry { received_before_ms: 3 * DAY, date_before: date(3), through_seq: 3, tz: utc.clone() };
    assert_eq!(r.store.expire(&limited).unwrap().punches, 1, "seq 1 only");

    // Received before day 2 and dated before day 2: the second value.
    let expiry = Expiry { received_before_ms: DAY + 500, date_before: date(2), through_seq: 7, tz: utc.clone() };
    let gone = r.store.expire(&expiry).unwrap();
    assert_eq!((gone.punches, gone.log_values), (3, 1));
    assert_eq!(seqs(r.store.by_time(0, 3 * DAY)), vec![5, 6, 7]);
    assert_eq!(seqs(r.store.by_device("d2", 0, 3 * DAY)), vec![7]);
    assert_eq!(seqs(r.store.by_subject(&Subject::Employee("E1".into()), 0, 3 * DAY)), vec![5, 6]);
    assert_eq!(r.store.get_by_id("gw:d1:1").unwrap(), None);
    assert_eq!(r.store.get_by_id(&hashed_id).unwrap(), None);
    assert_eq!(r.store.get_by_id("gw:d1:2").unwrap().map(|p| p.seq), Some(5));
    assert_eq!(r.store.expire(&expiry).unwrap(), Expired::default(), "a second pass finds nothing");

    // Everything is old enough: all but the newest log value goes (the log's end numbers the next punch).
    let all = Expiry { received_before_ms: 9 * DAY, date_before: date(9), through_seq: 7, tz: utc };
    assert_eq!(r.store.expire(&all).unwrap().punches, 1);
    assert_eq!(seqs(r.store.by_time(0, 3 * DAY)), vec![6, 7]);
    assert_eq!(r.store.count().unwrap(), 7);

    // A reopened store keeps numbering after the newest punch and still knows the kept ids.
    r.reopen();
    assert!(r.insert(&[punch("d1", 3, "E1", 2 * DAY + 1_000)])[0].duplicate);
    assert_eq!(r.insert(&[punch("d1", 4, "E1", 2 * DAY + 9_000)])[0].seq, 8);
    r.flush();
    r.store.index_pending(u64::MAX).unwrap();
    assert_eq!(seqs(r.store.by_time(0, 3 * DAY)), vec![6, 7, 8]);
}

#[test]
fn a_round_cut_after_its_index_batch_is_finished_by_the_next_pass() {
    let mut r = Rig::legacy();
    r.insert(&[punch("d1", 1, "E1", 1_000)]);
    r.insert(&[punch("d1", 2, "E1", 2_000)]);
    r.flush();
    r.store.index_pending(u64::MAX).unwrap();
    // As if a crash came between the index batch and the log batch: the index no longer holds seq 2, the log does.
    let p = r.store.get(2).unwrap();
    let part = r.store.parts()[0].clone();
    let mut batch = sled::Batch::default();
    for prefix in index::entry_prefixes(&p) {
        for k in part.index.scan_prefix(&prefix).keys() {
            batch.remove(k.unwrap());
        }
    }
    part.index.apply_batch(batch).unwrap();
    drop(part);
    r.reopen();
    let expiry = Expiry {
        received_before_ms: 1_500,
        date_before: jiff::civil::date(1970, 1, 2),
        through_seq: 3,
        tz: jiff::tz::TimeZone::UTC,
    };
    assert_eq!(r.store.expire(&expiry).unwrap().log_values, 2, "seq 1, and seq 2 whose index entries went");
    assert!(r.store.get(2).is_err());
    assert_eq!(r.store.get(3).unwrap().seq, 3);
}

#[test]
fn rotated_partitions_past_retention_are_deleted_with_their_files() {
    const DAY: i64 = 86_400_000;
    // The first part began now (by the system clock); retention's clock is given to each call.
    let t0 = jiff::Timestamp::now().as_millisecond();
    let mut r = Rig::new();
    let old: Vec<DevicePunch> = (1..=2000).map(|n| punch("d1", n, "E1", 1_000 + n as i64)).collect();
    r.insert(&old);
    r.flush();
    // Not yet a period old: no rotation.
    assert!(!r.store.rotate(t0 + DAY / 2, DAY).unwrap());
    assert!(r.store.rotate(t0 + 3 * DAY, DAY).unwrap());
    assert_eq!(r.store.part_count(), 2);
    r.insert(&[punch("d1", 2001, "E1", 2 * DAY), punch("d2", 1, "E2", 2 * DAY)]);
    r.flush();
    r.store.index_pending(u64::MAX).unwrap();
    let first_part = r.store.parts()[0].path.clone();
    let size_before = r.store.size_on_disk();
    let utc = jiff::tz::TimeZone::UTC;
    let date = |d: i64| jiff::Timestamp::from_millisecond(d * DAY).unwrap().to_zoned(utc.clone()).date();
    let expiry = |received_before_ms, date_before, through_seq| Expiry {
        received_before_ms,
        date_before,
        through_seq,
        tz: jiff::tz::TimeZone::UTC,
    };

    // Not delivered yet (through seq 1,999): the part stays.
    assert_eq!(r.store.expire(&expiry(t0 + 4 * DAY, date(2), 1_999)).unwrap(), Expired::default());
    // A device date not before the limit: the part stays.
    assert_eq!(r.store.expire(&expiry(t0 + 4 * DAY, date(0), 2_002)).unwrap(), Expired::default());
    // The next part began after the cutoff (punches of this one may have arrived after it): the part stays.
    assert_eq!(r.store.expire(&expiry(t0 + 2 * DAY, date(2), 2_002)).unwrap(), Expired::default());

    let gone = r.store.expire(&expiry(t0 + 4 * DAY, date(2), 2_002)).unwrap();
    assert_eq!((gone.parts, gone.punches), (1, 2000));
    assert!(!first_part.exists(), "the part's directory is gone");
    assert!(r.store.size_on_disk() < size_before, "{} < {size_before}", r.store.size_on_disk());
    assert_eq!(r.store.part_count(), 1);
    assert_eq!(seqs(r.store.by_time(0, 3 * DAY)), vec![2001, 2002]);
    assert_eq!(r.store.get_by_id("gw:d1:5").unwrap(), None);
    assert!(r.store.get(5).is_err());
    assert_eq!(r.store.expire(&expiry(i64::MAX, date(9), 2_002)).unwrap(), Expired::default(), "the newest part stays");

    // After a restart: the same parts, numbering goes on, and a deletion interrupted after its rename is finished.
    r.reopen();
    assert_eq!(r.store.part_count(), 1);
    assert_eq!(r.store.parts()[0].started(), t0 + 3 * DAY, "a part keeps when it began");
    // A clock behind the part's start (set back): the part counts from it, and rotates a period later.
    assert!(!r.store.rotate(t0, DAY).unwrap());
    assert_eq!(r.store.parts()[0].started(), t0);
    assert!(r.store.rotate(t0 + 2 * DAY, DAY).unwrap());
    assert_eq!(r.insert(&[punch("d1", 2002, "E1", 2 * DAY + 5)])[0].seq, 2003);
    let parts_dir = r.dir.path().join(parts::PARTS_DIR);
    std::fs::create_dir_all(parts_dir.join("x-00000000000000000001")).unwrap();
    std::fs::create_dir_all(parts_dir.join("tmp-00000000000000009999")).unwrap();
    r.flush();
    r.reopen();
    assert_eq!(std::fs::read_dir(&parts_dir).unwrap().count(), r.store.part_count(), "left-overs removed");
    assert_eq!(r.store.get(2003).unwrap().seq, 2003);
}

#[test]
fn a_partition_that_lost_its_files_is_damage_not_an_empty_part() {
    let mut r = Rig::new();
    r.insert(&[punch("d1", 1, "E1", 1_000)]);
    r.flush();
    assert!(r.store.rotate(i64::MAX / 2, 1).unwrap());
    r.insert(&[punch("d1", 2, "E1", 2_000)]);
    r.flush();
    let first = r.store.parts()[0].path.clone();
    let dir = r.dir.path().to_owned();
    let old = std::mem::replace(&mut r.store, Store::open(&tempfile::tempdir().unwrap().keep(), 1).unwrap());
    drop(old);
    // sled opens a directory without its files as a new, empty database.
    std::fs::remove_dir_all(&first).unwrap();
    std::fs::create_dir_all(&first).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let err = loop {
        match Store::open(&dir, 8) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => continue,
            other => break other.unwrap_err(),
        }
    };
    assert!(matches!(&err, StoreError::Open { message, .. } if message.contains("damaged")), "{err}");
}

#[test]
fn punches_written_while_partitions_rotate_are_all_found() {
    let mut r = Rig::new();
    let store = r.store.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rotations = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            let mut now = jiff::Timestamp::now().as_millisecond();
            while !stop.load(Ordering::Relaxed) {
                // Always due: the newest part rotates whenever it holds a punch.
                now += 1;
                if store.rotate(now, 0).unwrap() {
                    n += 1;
                }
            }
            n
        })
    };
    for b in 0..200u64 {
        r.insert(&(0..10).map(|i| punch("d1", b * 10 + i + 1, "E1", (b * 10 + i) as i64)).collect::<Vec<_>>());
    }
    stop.store(true, Ordering::Relaxed);
    let rotated = rotations.join().unwrap();
    assert!(rotated > 1, "{rotated} rotations");
    r.flush();
    assert_eq!(seqs(r.store.after(0)), (1..=2000).collect::<Vec<_>>());
    for seq in [1, 500, 1000, 2000] {
        assert_eq!(r.store.get(seq).unwrap().seq, seq);
    }
    r.store.index_pending(u64::MAX).unwrap();
    while r.store.index_pending(u64::MAX).unwrap() > 0 {}
    assert_eq!(seqs(r.store.by_time(0, 10_000)).len(), 2000);
    r.reopen();
    assert_eq!(seqs(r.store.after(0)).len(), 2000);
}
