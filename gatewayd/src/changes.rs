//! The change log: what the attendance engine decided, in order, for the outbox to deliver.
//!
//! # Key layout
//! sled tree `changes`: key = change sequence number (u64 big-endian, starting at 1, never reused), value = one version byte
//! ([`ENCODING_V1`]) followed by the protobuf `gatewayd.store.v1.ChangeEntry` (a punch as it goes upstream, a record
//! revision, or "this work date closed").
//!
//! # Writers and readers
//! One writer (the engine stage) appends with [`ChangeLog::append`]; the tree can also take part in a sled transaction with
//! the engine's own trees through [`ChangeLog::tree`] and [`ChangeLog::encode`], so engine state and its changes commit together.
//! Readers (the outbox) follow [`ChangeLog::after`] and wake on [`ChangeLog::subscribe`], which is advanced only after
//! [`ChangeLog::flush`], so a reader never delivers a change that a crash could take back.
//!
//! # Retention
//! The outbox removes entries it has delivered (and no longer needs) with [`ChangeLog::remove_through`].

use prost::Message;
use tokio::sync::watch;

use crate::proto::store::{change_entry::Kind, ChangeEntry};
use crate::proto::upstream::{AttendanceRecord, Punch};
use crate::store::StoreError;

/// The encoding version byte of change entries.
pub const ENCODING_V1: u8 = 1;

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

/// The change log. Cheap to clone.
#[derive(Clone)]
pub struct ChangeLog {
    db: sled::Db,
    tree: sled::Tree,
    durable: watch::Sender<u64>,
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
        let last = tree.last()?.map(|(k, _)| seq_of(&k)).unwrap_or(0);
        let (durable, _) = watch::channel(last);
        Ok(ChangeLog { db: db.clone(), tree, durable })
    }

    /// The sled tree, for transactions that include engine state.
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// The highest sequence number written (durable or not).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.tree.last()?.map(|(k, _)| seq_of(&k)).unwrap_or(0))
    }

    /// Appends changes in one atomic batch; returns the sequence number of the last one. Not durable until [`Self::flush`].
    pub fn append(&self, changes: &[Change]) -> Result<u64, StoreError> {
        let mut seq = self.last_seq()?;
        let mut batch = sled::Batch::default();
        for change in changes {
            seq += 1;
            batch.insert(&seq.to_be_bytes(), encode(change));
        }
        self.tree.apply_batch(batch)?;
        Ok(seq)
    }

    /// Flushes the database and tells readers how far the log is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let last = self.last_seq()?;
        self.db.flush_async().await?;
        self.durable.send_replace(last);
        Ok(())
    }

    /// Wakes when more of the log is durable; the value is the highest durable sequence number.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// Entries with sequence number greater than `after`, in order.
    pub fn after(&self, after: u64) -> impl Iterator<Item = Result<(u64, Change), StoreError>> + '_ {
        self.tree.range(after.saturating_add(1).to_be_bytes()..).map(|r| {
            let (k, v) = r?;
            let seq = seq_of(&k);
            decode(&v).map(|c| (seq, c)).map_err(|message| StoreError::Decode { key: format!("change {seq}"), message })
        })
    }

    /// Removes entries up to and including `seq` (the outbox calls this once they are no longer needed).
    pub fn remove_through(&self, seq: u64) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for r in self.tree.range(..=seq.to_be_bytes()) {
            let (k, _) = r?;
            batch.remove(k);
            n += 1;
        }
        self.tree.apply_batch(batch)?;
        Ok(n)
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

    #[test]
    fn decode_rejects_garbage() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[2, 1, 2]).unwrap_err().contains("version 2"));
        assert!(decode(&[ENCODING_V1]).unwrap_err().contains("without a kind"));
    }
}
