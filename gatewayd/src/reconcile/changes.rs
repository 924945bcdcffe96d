//! The change log: what the attendance engine decided, in order, for the outbox to deliver.
//!
//! # Key layout
//! sled tree `changes`. Every change has a sequence number (starting at 1, never reused). A key is the sequence number
//! (u64 big-endian) of the first change its value holds, and a value is either
//! - a *chunk* ([`CHUNK_V2`]): the version byte, the number of changes (u32 big-endian), then each change as its length
//!   (u32 big-endian) and its single-change encoding ([`crate::chunk`], as the outbox's queue): consecutive changes of
//!   one engine batch, at most [`CHUNK_MAX`] and about [`CHUNK_BYTES`] bytes (some 25 punches), numbered on from the
//!   key; or
//! - a single change ([`ENCODING_V1`] followed by the protobuf `gatewayd.store.v1.ChangeEntry`: a punch as it goes
//!   upstream, a record revision, or "this work date closed"), the layout before chunks, still read.
//!
//! A key per chunk instead of one per change: at about 50,000 punches/s the engine inserted 50,000 keys a second into a
//! sled transaction and the outbox removed as many, one at a time; the removal alone took about a tenth of the daemon's
//! CPU time (perf, docs/benchmarks.md).
//!
//! # Writers and readers
//! One writer (the engine stage) appends with [`ChangeLog::append`]; the tree can also take part in a sled transaction with
//! the engine's own trees through [`ChangeLog::tree`] and [`encode_chunks`], so engine state and its changes commit together.
//! Readers (the outbox) follow [`ChangeLog::after`] and wake on [`ChangeLog::subscribe`], which is advanced only after
//! [`ChangeLog::flush`], so a reader never delivers a change that a crash could take back.
//!
//! # Retention
//! The outbox removes entries it has delivered (and no longer needs) with [`ChangeLog::remove_through`]; a chunk goes
//! when all of its changes are through.

use prost::Message;
use tokio::sync::watch;

use crate::chunk;
use crate::proto::store::{change_entry::Kind, ChangeEntry};
use crate::proto::upstream::{AttendanceRecord, Punch};
use crate::store::StoreError;

/// The encoding version byte of change entries.
pub const ENCODING_V1: u8 = 1;
/// The version byte of a chunk of consecutive changes.
pub const CHUNK_V2: u8 = 2;
/// Most changes in one chunk.
pub const CHUNK_MAX: usize = 64;
/// A chunk ends before the change that would take it past this many bytes (a single larger change is a chunk of its
/// own). As for the outbox's chunks: sled 0.34 rewrites a whole leaf (up to 17 keys) when it consolidates one, and
/// keeps values that size inline, never in blob files.
pub const CHUNK_BYTES: usize = 4096;

/// One decided change.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Punch(Punch),
    Record(AttendanceRecord),
    DayClosed(String),
}

impl Change {
    fn to_entry(&self) -> ChangeEntry {
        let kind = match self {
            Change::Punch(p) => Kind::Punch(p.clone()),
            Change::Record(r) => Kind::Record(r.clone()),
            Change::DayClosed(d) => Kind::DayClosed(d.clone()),
        };
        ChangeEntry { kind: Some(kind) }
    }
}

/// Encodes a change as stored.
pub fn encode(change: &Change) -> Vec<u8> {
    let entry = change.to_entry();
    let mut out = Vec::with_capacity(1 + entry.encoded_len());
    out.push(ENCODING_V1);
    entry.encode(&mut out).unwrap_or_default();
    out
}

/// Decodes a stored change; the error says what is wrong.
pub fn decode(bytes: &[u8]) -> Result<Change, String> {
    let (&version, body) = bytes.split_first().ok_or("empty value")?;
    if version != ENCODING_V1 {
        return Err(format!("unknown change encoding version {version} (this build reads {ENCODING_V1})"));
    }
    let entry = ChangeEntry::decode(body).map_err(|e| format!("protobuf: {e}"))?;
    match entry.kind {
        Some(Kind::Punch(p)) => Ok(Change::Punch(p)),
        Some(Kind::Record(r)) => Ok(Change::Record(r)),
        Some(Kind::DayClosed(d)) => Ok(Change::DayClosed(d)),
        None => Err("change entry without a kind".into()),
    }
}

/// Encodes `changes` as one chunk.
pub fn encode_chunk(changes: &[Change]) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = changes.iter().map(encode).collect();
    chunk_of(&encoded)
}

fn chunk_of(encoded: &[Vec<u8>]) -> Vec<u8> {
    chunk::encode(CHUNK_V2, encoded.iter().map(Vec::as_slice))
}

/// The keys and values that store `changes` numbered from `first` on: chunks of at most [`CHUNK_MAX`] changes and
/// about [`CHUNK_BYTES`] bytes.
pub fn encode_chunks(first: u64, changes: &[Change]) -> Vec<([u8; 8], Vec<u8>)> {
    let mut out = Vec::new();
    let mut start = first;
    let mut chunk: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 5;
    for change in changes {
        let e = encode(change);
        if !chunk.is_empty() && (chunk.len() == CHUNK_MAX || bytes + 4 + e.len() > CHUNK_BYTES) {
            out.push((start.to_be_bytes(), chunk_of(&chunk)));
            start += chunk.len() as u64;
            chunk.clear();
            bytes = 5;
        }
        bytes += 4 + e.len();
        chunk.push(e);
    }
    if !chunk.is_empty() {
        out.push((start.to_be_bytes(), chunk_of(&chunk)));
    }
    out
}

/// How many changes a stored value holds (1 for a single change), from its header.
pub fn chunk_len(value: &[u8]) -> Result<u64, String> {
    match value.first() {
        Some(&ENCODING_V1) => Ok(1),
        Some(&CHUNK_V2) => {
            let count = chunk::count(value)?;
            if count == 0 {
                return Err("empty chunk".into());
            }
            Ok(u64::from(count))
        }
        Some(v) => Err(format!("unknown change encoding version {v} (this build reads {ENCODING_V1} and {CHUNK_V2})")),
        None => Err("empty value".into()),
    }
}

/// Decodes a stored value: a chunk, or a single change (a chunk of one).
pub fn decode_chunk(value: &[u8]) -> Result<Vec<Change>, String> {
    let count = chunk_len(value)?;
    if value[0] == ENCODING_V1 {
        return Ok(vec![decode(value)?]);
    }
    chunk::items(value)?
        .into_iter()
        .enumerate()
        .map(|(i, body)| decode(body).map_err(|e| format!("change {i} of {count}: {e}")))
        .collect()
}

/// The change log. Cheap to clone.
#[derive(Clone)]
pub struct ChangeLog {
    db: sled::Db,
    tree: sled::Tree,
    durable: watch::Sender<u64>,
    /// Makes a flush survive a power cut (the daemon sets it; see [`ChangeLog::durable_with`]).
    sync: Option<crate::store::MainSync>,
}

impl std::fmt::Debug for ChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeLog").field("last", &*self.durable.borrow()).finish()
    }
}

fn seq_of(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

impl ChangeLog {
    /// Opens the log in the store's database.
    pub fn open(db: &sled::Db) -> Result<ChangeLog, StoreError> {
        let tree = db.open_tree("changes")?;
        let last = last_in(&tree)?;
        let (durable, _) = watch::channel(last);
        Ok(ChangeLog { db: db.clone(), tree, durable, sync: None })
    }

    /// The sled tree, for transactions that include engine state.
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// The highest sequence number written (durable or not).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        last_in(&self.tree)
    }

    /// Appends changes in one atomic batch; returns the sequence number of the last one. Not durable until [`Self::flush`].
    pub fn append(&self, changes: &[Change]) -> Result<u64, StoreError> {
        let last = self.last_seq()?;
        let mut batch = sled::Batch::default();
        for (key, value) in encode_chunks(last + 1, changes) {
            batch.insert(&key, value);
        }
        self.tree.apply_batch(batch)?;
        Ok(last + changes.len() as u64)
    }

    /// Makes every flush end with an `fdatasync` of the database's files, so a power cut keeps what a flush returned.
    pub fn durable_with(mut self, sync: crate::store::MainSync) -> ChangeLog {
        self.sync = Some(sync);
        self
    }

    /// Flushes the database and tells readers how far the log is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let last = self.last_seq()?;
        match &self.sync {
            Some(sync) => sync.flush(&self.db).await?,
            None => {
                self.db.flush_async().await?;
            }
        }
        self.durable.send_replace(last);
        Ok(())
    }

    /// Wakes when more of the log is durable; the value is the highest durable sequence number.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// Entries with sequence number greater than `after`, in order.
    pub fn after(&self, after: u64) -> impl Iterator<Item = Result<(u64, Change), StoreError>> + '_ {
        let from = after.saturating_add(1);
        // The chunk holding `from` starts at or before it.
        let (start, failed) = match self.tree.range(..=from.to_be_bytes()).next_back().transpose() {
            Ok(Some((k, _))) => (seq_of(&k), None),
            Ok(None) => (from, None),
            Err(e) => (from, Some(StoreError::from(e))),
        };
        let chunks = self.tree.range(start.to_be_bytes()..).take(if failed.is_some() { 0 } else { usize::MAX });
        failed.map(Err).into_iter().chain(chunks.flat_map(move |r| {
            let entries: Vec<Result<(u64, Change), StoreError>> = match r {
                Err(e) => vec![Err(e.into())],
                Ok((k, v)) => {
                    let first = seq_of(&k);
                    match decode_chunk(&v) {
                        Ok(changes) => changes
                            .into_iter()
                            .enumerate()
                            .map(|(i, c)| (first.saturating_add(i as u64), c))
                            .filter(|(seq, _)| *seq >= from)
                            .map(Ok)
                            .collect(),
                        Err(message) => vec![Err(damaged(first)(message))],
                    }
                }
            };
            entries
        }))
    }

    /// Removes entries up to and including `seq` (the outbox calls this once they are no longer needed): every chunk
    /// whose changes are all through `seq`. Returns the number of changes removed.
    pub fn remove_through(&self, seq: u64) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for r in self.tree.range(..=seq.to_be_bytes()) {
            let (k, v) = r?;
            let first = seq_of(&k);
            let len = chunk_len(&v).map_err(damaged(first))?;
            if first.saturating_add(len - 1) > seq {
                break;
            }
            batch.remove(k);
            n += len as usize;
        }
        self.tree.apply_batch(batch)?;
        Ok(n)
    }
}

/// The error for a stored value under key `first` that does not decode.
fn damaged(first: u64) -> impl FnOnce(String) -> StoreError {
    move |message| StoreError::Decode { key: format!("change {first}"), message }
}

/// The sequence number of the last change in `tree` (0 when empty).
fn last_in(tree: &sled::Tree) -> Result<u64, StoreError> {
    match tree.last()? {
        None => Ok(0),
        Some((k, v)) => {
            let first = seq_of(&k);
            let len = chunk_len(&v).map_err(damaged(first))?;
            Ok(first.saturating_add(len - 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn append_read_and_trim() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let log = ChangeLog::open(&db).unwrap();
        let mut rx = log.subscribe();
        let punch = Punch { punch_id: "gw:d:1".into(), ..Default::default() };
        let record = AttendanceRecord { record_id: "r1".into(), revision: 2, ..Default::default() };
        let last = log.append(&[Change::Punch(punch.clone()), Change::Record(record.clone())]).unwrap();
        assert_eq!(last, 2);
        log.flush().await.unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), 2);
        log.append(&[Change::DayClosed("2026-11-22".into())]).unwrap();
        let all: Vec<_> = log.after(0).map(|r| r.unwrap()).collect();
        assert_eq!(
            all,
            vec![(1, Change::Punch(punch)), (2, Change::Record(record)), (3, Change::DayClosed("2026-11-22".into()))]
        );
        assert_eq!(log.remove_through(2).unwrap(), 2);
        assert_eq!(log.after(0).count(), 1);
        // A reopened log continues numbering after the last entry.
        drop(log);
        let log = ChangeLog::open(&db).unwrap();
        assert_eq!(log.append(&[Change::DayClosed("2026-11-23".into())]).unwrap(), 4);
    }

    fn closed(day: u32) -> Change {
        Change::DayClosed(format!("2026-11-{day:02}"))
    }

    fn seqs(log: &ChangeLog, after: u64) -> Vec<u64> {
        log.after(after).map(|r| r.unwrap().0).collect()
    }

    #[test]
    fn a_batch_is_one_chunk_read_from_any_point_and_removed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let log = ChangeLog::open(&db).unwrap();
        assert_eq!(log.append(&[closed(1), closed(2), closed(3)]).unwrap(), 3);
        assert_eq!(log.append(&[closed(4), closed(5)]).unwrap(), 5);
        assert_eq!(log.append(&[]).unwrap(), 5);
        assert_eq!(log.tree().len(), 2, "one key per batch");
        assert_eq!(seqs(&log, 1), vec![2, 3, 4, 5]);
        let from_inside: Vec<_> = log.after(3).map(|r| r.unwrap()).collect();
        assert_eq!(from_inside, vec![(4, closed(4)), (5, closed(5))]);
        assert!(log.after(5).next().is_none());
        // Through 4: the first chunk (1–3) goes, the second (4–5) stays until all of it is through.
        assert_eq!(log.remove_through(4).unwrap(), 3);
        assert_eq!(seqs(&log, 0), vec![4, 5]);
        assert_eq!(log.remove_through(4).unwrap(), 0);
        assert_eq!(log.last_seq().unwrap(), 5);
        drop(log);
        let log = ChangeLog::open(&db).unwrap();
        assert_eq!(log.last_seq().unwrap(), 5);
        assert_eq!(log.append(&[closed(6)]).unwrap(), 6);
    }

    #[test]
    fn a_large_batch_is_split_into_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let log = ChangeLog::open(&db).unwrap();
        // Small changes: chunks of CHUNK_MAX.
        let many: Vec<Change> = (0..CHUNK_MAX + 2).map(|i| closed(1 + (i % 28) as u32)).collect();
        assert_eq!(log.append(&many).unwrap(), many.len() as u64);
        assert_eq!(log.tree().len(), 2);
        assert_eq!(
            seqs(&log, CHUNK_MAX as u64 - 1),
            vec![CHUNK_MAX as u64, CHUNK_MAX as u64 + 1, CHUNK_MAX as u64 + 2]
        );
        let read: Vec<Change> = log.after(0).map(|r| r.unwrap().1).collect();
        assert_eq!(read, many);
        // Large changes: chunks of about CHUNK_BYTES, and a change larger than that alone in its chunk.
        let big = |n: usize| Change::Punch(Punch { punch_id: "p".repeat(n), ..Default::default() });
        let sizes = [1000, 1000, 1000, 1000, 5000, 10];
        let first = log.last_seq().unwrap() + 1;
        let chunks = encode_chunks(first, &sizes.map(big));
        let lens: Vec<u64> = chunks.iter().map(|(_, v)| chunk_len(v).unwrap()).collect();
        assert_eq!(lens, vec![4, 1, 1]);
        assert!(chunks[0].1.len() <= CHUNK_BYTES);
        assert_eq!(chunks[1].0, (first + 4).to_be_bytes());
        assert_eq!(log.append(&sizes.map(big)).unwrap(), first + 5);
        let read: Vec<Change> = log.after(first - 1).map(|r| r.unwrap().1).collect();
        assert_eq!(read, sizes.map(big).to_vec());
    }

    #[test]
    fn single_change_entries_of_the_old_layout_are_still_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("changes").unwrap();
        tree.insert(1u64.to_be_bytes(), encode(&closed(1))).unwrap();
        tree.insert(2u64.to_be_bytes(), encode(&closed(2))).unwrap();
        let log = ChangeLog::open(&db).unwrap();
        assert_eq!(log.last_seq().unwrap(), 2);
        assert_eq!(log.append(&[closed(3), closed(4)]).unwrap(), 4);
        let read: Vec<_> = log.after(1).map(|r| r.unwrap()).collect();
        assert_eq!(read, vec![(2, closed(2)), (3, closed(3)), (4, closed(4))]);
        assert_eq!(log.remove_through(3).unwrap(), 2);
        assert_eq!(seqs(&log, 0), vec![3, 4]);
    }

    #[test]
    fn malformed_chunks_are_errors() {
        let one = encode(&closed(1));
        let mut good = vec![CHUNK_V2, 0, 0, 0, 1];
        good.extend_from_slice(&(one.len() as u32).to_be_bytes());
        good.extend_from_slice(&one);
        assert_eq!(decode_chunk(&good).unwrap(), vec![closed(1)]);
        assert_eq!(good, encode_chunk(&[closed(1)]));
        let mut trailing = good.clone();
        trailing.push(0);
        let mut overlong = good.clone();
        overlong[5..9].copy_from_slice(&1000u32.to_be_bytes());
        let mut bad_inner = good.clone();
        bad_inner[9] = 7;
        let mut huge_count = good.clone();
        huge_count[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        for (what, value) in [
            ("empty", vec![]),
            ("header cut", vec![CHUNK_V2, 0, 0]),
            ("no changes", vec![CHUNK_V2, 0, 0, 0, 0]),
            ("cut", good[..good.len() - 1].to_vec()),
            ("trailing bytes", trailing),
            ("length past the end", overlong),
            ("bad change inside", bad_inner),
            ("count larger than the value", huge_count),
            ("unknown version", vec![9, 0, 0, 0, 1]),
        ] {
            assert!(decode_chunk(&value).is_err(), "{what}");
        }
        // A damaged value in the tree is reported by every reader, not a panic.
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.open_tree("changes").unwrap().insert(u64::MAX.to_be_bytes(), vec![9]).unwrap();
        assert!(matches!(ChangeLog::open(&db), Err(StoreError::Decode { .. })));
        let tree = db.open_tree("changes").unwrap();
        // The last chunk's header is whole (its changes are not), and the first value is of no known version.
        tree.insert(u64::MAX.to_be_bytes(), vec![CHUNK_V2, 0, 0, 0, 3]).unwrap();
        tree.insert(1u64.to_be_bytes(), vec![9]).unwrap();
        let log = ChangeLog::open(&db).unwrap();
        assert_eq!(log.last_seq().unwrap(), u64::MAX);
        let read: Vec<_> = log.after(0).collect();
        assert!(read.len() == 2 && read.iter().all(|r| r.is_err()), "{read:?}");
        assert!(log.remove_through(5).is_err());
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[2, 1, 2]).unwrap_err().contains("version 2"));
        assert!(decode(&[ENCODING_V1]).unwrap_err().contains("without a kind"));
    }
}
