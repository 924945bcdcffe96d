//! The durable punch store, on sled 0.34.
//!
//! # Layout
//! Punches are an append-only log; everything else is derived from it. The log and its index are split into
//! *partitions* by runs of sequence numbers, one sled database each under `parts/` (see [`parts`]), so that retention
//! deletes whole databases and gives the disk back; the trees below are those of each partition. The store's own
//! `meta` tree and the other stages' trees are in the main database (the store directory itself).
//!
//! Tree `punch_log` (the durable path; one sled insert per block of punches, always at the end of the tree):
//!
//! | key             | value                               | purpose                           |
//! |-----------------|-------------------------------------|-----------------------------------|
//! | first:u64be     | encoded punch, or a block of them   | the punches, in arrival order     |
//!
//! A value holds the punch with sequence number `first`, or a *block*: the punches `first`, `first + 1`, … written by
//! one group commit (at most [`codec::BLOCK_MAX_PUNCHES`] punches or [`codec::BLOCK_MAX_BYTES`] bytes per block). sled
//! costs about the same per insert whatever the value's size, so a block makes a group commit of 256 punches a handful
//! of inserts instead of 256, and the log a few sled keys per thousand punches instead of a thousand. The punch with
//! sequence number `s` is in the value with the greatest key not above `s`.
//!
//! Tree `punch_index` (derived; written after the punches it covers are durable, see *Indexing* below):
//!
//! | key                                                  | value                         | purpose                    |
//! |------------------------------------------------------|-------------------------------|----------------------------|
//! | `N` prefix 0x00 bucket:u64be first:u64be             | posting                       | idempotency, lookup by id  |
//! | `I` punch_id                                         | seq:u64be                     | idempotency, lookup by id  |
//! | `T` minute:i64be^sign first:u64be                    | posting                       | punches by device time     |
//! | `D` device_id 0x00 hour:i64be^sign first:u64be       | posting                       | punches by device          |
//! | `S` group:u8 day:i64be^sign first:u64be              | posting                       | punches by employee/credential |
//! | `C`                                                  | seq:u64be                     | the index cursor           |
//!
//! Times and time buckets (minute, hour, day numbers since the Unix epoch, of device time) have the sign bit flipped so
//! byte order is time order. A *posting* is a version byte followed by `(device_time:i64be, seq:u64be)` pairs: the
//! punches of one indexing round that fall in that bucket, at most 256 per value (`first` = its first sequence number).
//! Punch ids of devices that number their punches (`{gateway}:{device}:{n}`) are indexed the same way under `N`, by
//! `prefix` = `{gateway}:{device}` and `bucket` = n / 256, with `(n, seq)` pairs: one sled insert per device and round
//! instead of one per punch. Other ids (hashed, see [`crate::punch::punch_id`]) have one `I` key each. The subject
//! `group` is the first byte of SHA-256 over `e:`/`c:` and the subject, so 256 groups share the subject postings and
//! readers filter by subject. Device ids and subjects cannot contain 0x00 (checked at ingest). The `meta` tree holds
//! `format` = [`FORMAT`] and `index` = the index layout; an index of another layout is dropped and rebuilt at open.
//!
//! # Encoding
//! A stored punch is one version byte ([`ENCODING_V1`]) followed by the protobuf `gatewayd.store.v1.StoredPunch`; a
//! block is its own version byte ([`codec::BLOCK_V1`]), the count and lengths of its punches, then the punches, each
//! encoded as on its own (see [`codec::encode_block`]). A log value of a single punch is the punch itself, as the
//! layout before blocks stored every punch, so those stores are read as they are. A posting starts with its own version
//! byte. Every punch carries its sequence number, and reads check it against the place the log gives it. New fields
//! may be added to the message; a new incompatible layout gets a new version byte, and readers reject versions they do
//! not know with [`StoreError::Decode`] instead of guessing. A store of the first layout ([`FORMAT_V1`]: punches and
//! indexes in one tree `punches`) is migrated when opened.
//!
//! # Durability point
//! A punch is durable when the `flush` that follows the write holding it has returned ([`Store::flush`]): sled's
//! `flush_async`, then an `fdatasync` of sled's log file. sled 0.34 makes its log stable with `sync_file_range`, which
//! persists neither the file's size and extents nor the disk's write cache, so without the `fdatasync` an acknowledged
//! punch could vanish in a power cut (docs/robustness.md has the experiment). sled also never syncs the blob files it
//! writes for log messages over 128 KiB; the store keeps its values small enough that sled needs none (blocks of 4 KiB,
//! postings of 4 KiB: a leaf of 17 values stays well under), and the flush syncs any blob file there is before the
//! log. The store directory and its parent are fsynced when the store is opened, so the files' directory entries
//! survive a power cut too. The ingest writer ([`crate::ingest`]) answers callers only then, and publishes the highest
//! durable sequence number on a watch channel, so later stages (the engine, the outbox) only ever read durable punches.
//! sled's own background flush may make writes durable earlier; nothing relies on it.
//!
//! # Indexing
//! Only the punch goes through the durable path. [`Store::index_pending`] (run by the ingest writer's index follower, and
//! by the writer itself if the follower falls more than [`MAX_INDEX_LAG`] punches behind) writes the index entries of
//! every durable punch not yet indexed, and the new cursor, in one atomic sled batch. Until then a punch is found through
//! the in-memory table of unindexed punch ids (for idempotency) and by scanning the log after the cursor (for reads), so
//! every read sees every written punch. After a crash the cursor is wherever the last durable index batch left it, and
//! [`Store::open`] indexes the rest of the log before it returns.
//!
//! # Damage
//! sled 0.34 stops reading its log at the first entry it cannot read and opens what came before without an error, so a
//! damaged log can silently lose its tail. The store therefore keeps a watermark outside sled: the file
//! `gatewayd-durable` in the store directory (`gatewayd-durable v1 SEQ`, replaced atomically and fsynced), which the
//! index follower updates at most once a second with the highest durable sequence number. Opening a store whose log
//! ends before its watermark, or before its index cursor, is a [`StoreError::Open`] naming both numbers (the daemon
//! then quarantines the store). Damage to the last second of punches before a crash is not detected this way.
//!
//! # Errors
//! Opening or decoding never panics: a locked, corrupt or foreign database is a [`StoreError`] naming the path and what to
//! do.

pub mod budget;
pub mod codec;
pub mod expire;
pub mod footprint;
pub mod index;
pub mod metrics;
mod migrate;
mod open;
pub mod parts;
mod read;

use open::{open_error, sync_blobs};
use parts::Part;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use drivers::sink::Subject;
use drivers::DevicePunch;

use crate::punch::{punch_id, Punch};

/// The store format marker kept in the `meta` tree.
pub const FORMAT: &[u8] = b"gatewayd-punch-store-v2";
/// The marker of the first layout (one tree `punches`), migrated on open.
pub const FORMAT_V1: &[u8] = b"gatewayd-punch-store-v1";
/// The encoding version byte of stored punches.
pub const ENCODING_V1: u8 = 1;
/// How many written punches the indexes may trail by before the writer indexes them itself.
pub const MAX_INDEX_LAG: u64 = 131_072;
/// The most punches one indexing round takes.
pub const INDEX_ROUND: u64 = 16_384;

const LOG_TREE: &str = "punch_log";
/// The file, beside sled's, that records a durable sequence number outside sled (see *Damage* in the module docs).
const WATERMARK_FILE: &str = "gatewayd-durable";
const WATERMARK_HEADER: &str = "gatewayd-durable v1";
const INDEX_TREE: &str = "punch_index";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: another gatewayd process is using it (only one process may open a sled database)")]
    Locked { path: PathBuf },
    #[error("store {path}: cannot open: {message}. If the files are damaged, move the directory aside and start again; punches not yet delivered upstream are in it")]
    Open { path: PathBuf, message: String },
    #[error("store {path}: not a gatewayd punch store (format marker is {found:?}); refusing to use it")]
    Foreign { path: PathBuf, found: String },
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store: flush failed: {0}")]
    Flush(String),
    #[error("store: stored punch {key} cannot be decoded: {message}")]
    Decode { key: String, message: String },
}

/// The outcome of inserting one punch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inserted {
    pub punch_id: String,
    pub seq: u64,
    pub duplicate: bool,
}

/// Punches written to the log whose index entries are not written yet.
#[derive(Default)]
struct Unindexed {
    by_id: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
    /// Per `{gateway}:{device}` prefix of numbered ids, the highest number in the index (`None`: none), learned on first
    /// use and raised by each index round. A new punch numbered above it is not in the index, which spares the lookup
    /// of almost every new punch.
    max_numbered: HashMap<String, Option<u64>>,
}

struct Inner {
    /// The store directory (the main sled database; the parts are under `parts/`).
    path: PathBuf,
    /// The main database: the store's `meta` and the other stages' trees (and part 0 of an older store).
    db: sled::Db,
    /// The cache size each part's database is opened with.
    cache_mb: u64,
    /// The parts of the punch log, by first sequence number; the last takes new punches (see [`parts`]).
    parts: RwLock<Vec<Arc<Part>>>,
    /// The parts written since the last flush.
    dirty: Mutex<Vec<Arc<Part>>>,
    /// Highest sequence number written to the log.
    written: AtomicU64,
    /// Highest sequence number known durable (covered by a [`Store::flush`], or found on disk at open).
    durable: AtomicU64,
    /// Highest sequence number whose index entries are written (the cursor).
    indexed: AtomicU64,
    unindexed: Mutex<Unindexed>,
    /// One indexing round at a time.
    indexing: Mutex<()>,
    /// [`MAX_INDEX_LAG`], lowered by tests.
    max_lag: AtomicU64,
    /// The durable sequence number last written to the watermark file.
    watermark: AtomicU64,
    /// The highest sequence number expiry removed in this process (see [`expire`]).
    expired_through: AtomicU64,
    /// The main database's files.
    main_sync: MainSync,
}

/// The main database's files, for the stages that keep their trees there (change log, outbox, engine, approvals):
/// a flush that survives a power cut needs sled's flush and then an `fdatasync` of its log file (see *Durability point*),
/// which sled does not expose. Cheap to clone.
#[derive(Clone)]
pub struct MainSync {
    path: PathBuf,
    file: Arc<std::fs::File>,
    synced_blobs: Arc<Mutex<HashSet<std::ffi::OsString>>>,
}

impl std::fmt::Debug for MainSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MainSync").field("path", &self.path).finish()
    }
}

impl MainSync {
    /// Makes what sled flushed durable: its blob files, then its log file. Blocking; call after sled's flush.
    pub fn sync(&self) -> Result<(), StoreError> {
        sync_blobs(&self.path, &self.synced_blobs)
            .map_err(|e| StoreError::Flush(format!("fsync of the blob files: {e}")))?;
        self.file.sync_data().map_err(|e| StoreError::Flush(format!("fdatasync of the log file: {e}")))
    }

    /// Flushes `db` (the main database) and makes it durable.
    pub async fn flush(&self, db: &sled::Db) -> Result<(), StoreError> {
        db.flush_async().await?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.sync()).await.map_err(|e| StoreError::Flush(e.to_string()))?
    }
}

/// The punch store. Cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.inner.path).finish()
    }
}

fn seq_from(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

/// The sequence number of a `punch_log` key.
fn log_key(k: &[u8]) -> Result<u64, StoreError> {
    seq_from(k).ok_or_else(|| StoreError::Decode { key: format!("{k:?}"), message: "bad sequence key".into() })
}

/// The `(value, seq)` pairs of the posting stored under index key `k`.
fn posting(k: &[u8], v: &[u8]) -> Result<Vec<(i64, u64)>, StoreError> {
    index::decode_posting(v).map_err(|message| StoreError::Decode { key: format!("index {k:?}"), message })
}

/// A lock that a panicking holder cannot poison for everyone else (the data it guards stays consistent per operation).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store {
    /// The parts, oldest first (a snapshot: cheap clones of the handles).
    pub(super) fn parts(&self) -> Vec<Arc<Part>> {
        self.inner.parts.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The part holding (or that would hold) `seq`: the one with the greatest first sequence number not above it.
    pub(super) fn part_for(&self, seq: u64) -> Option<Arc<Part>> {
        let parts = self.inner.parts.read().unwrap_or_else(|p| p.into_inner());
        parts.iter().rev().find(|p| p.first <= seq).cloned()
    }

    /// How many parts the punch log has.
    pub fn part_count(&self) -> usize {
        self.inner.parts.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The sled database, for other stages that keep their own trees in it (engine state, outbox).
    pub fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    /// What makes a flush of the main database durable (see [`MainSync`]).
    pub fn main_sync(&self) -> MainSync {
        self.inner.main_sync.clone()
    }

    /// The highest sequence number stored, if any.
    pub fn last_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(Some(self.inner.written.load(Ordering::Acquire)).filter(|&s| s > 0))
    }

    /// Number of punches ever stored (sequence numbers are dense; expiry removes old ones, the count stays).
    pub fn count(&self) -> Result<u64, StoreError> {
        Ok(self.inner.written.load(Ordering::Acquire))
    }

    /// How many durable punches are not indexed yet.
    pub fn index_lag(&self) -> u64 {
        self.inner.durable.load(Ordering::Acquire).saturating_sub(self.inner.indexed.load(Ordering::Acquire))
    }

    /// Bytes the database uses on disk: the main database and every part.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0) + self.parts().iter().map(|p| p.size_on_disk()).sum::<u64>()
    }

    /// The highest number of the numbered ids with this prefix in the index.
    fn max_indexed_number(&self, prefix: &str) -> Result<Option<u64>, StoreError> {
        let group = index::numbered_prefix(prefix);
        let prefix_len = group.len();
        let mut max = None;
        for part in self.parts() {
            let Some(last) = part.index.scan_prefix(&group).keys().next_back().transpose()? else { continue };
            // Every posting of the highest bucket (one per round that had numbers in it).
            let bucket = last.get(..prefix_len + 8).unwrap_or(&last);
            for r in part.index.scan_prefix(bucket) {
                let (k, v) = r?;
                let entries = posting(&k, &v)?;
                max = max.max(entries.iter().map(|&(n, _)| n as u64).max());
            }
        }
        Ok(max)
    }

    /// The sequence number of an already stored punch id (written, indexed or not).
    fn seq_of(&self, unindexed: &mut Unindexed, punch_id: &str) -> Result<Option<u64>, StoreError> {
        if let Some(&seq) = unindexed.by_id.get(punch_id) {
            return Ok(Some(seq));
        }
        if let Some((prefix, n)) = index::numbered(punch_id) {
            let max = match unindexed.max_numbered.get(prefix) {
                Some(&max) => max,
                None => {
                    let max = self.max_indexed_number(prefix)?;
                    unindexed.max_numbered.insert(prefix.to_owned(), max);
                    max
                }
            };
            if max.is_none_or(|max| n > max) {
                return Ok(None);
            }
            for part in self.parts().iter().rev() {
                for r in part.index.scan_prefix(index::numbered_group(prefix, n)) {
                    let (k, v) = r?;
                    if let Some(seq) = index::find_numbered(&posting(&k, &v)?, n) {
                        return Ok(Some(seq));
                    }
                }
            }
            return Ok(None);
        }
        let key = index::id_key(punch_id);
        for part in self.parts().iter().rev() {
            if let Some(v) = part.index.get(&key)? {
                return seq_from(&v).map(Some).ok_or_else(|| StoreError::Decode {
                    key: format!("id {punch_id}"),
                    message: "bad sequence number".into(),
                });
            }
        }
        Ok(None)
    }

    /// Writes punches in one atomic batch (not yet durable: call [`Store::flush`]). Punches whose `punch_id` is already
    /// stored, or appears earlier in the same batch, are reported as duplicates with the existing sequence number.
    /// `next_seq` must be the sequence number after [`Store::last_seq`]; it is advanced past the new punches.
    pub fn insert_batch(
        &self,
        gateway_id: &str,
        punches: &[(&str, &DevicePunch)],
        next_seq: &mut u64,
    ) -> Result<Vec<Inserted>, StoreError> {
        let max_lag = self.inner.max_lag.load(Ordering::Relaxed);
        if self.index_lag() > max_lag {
            // The follower is behind (or absent): index here, which also slows the writer down to the index's pace.
            while self.index_lag() > max_lag / 2 && self.index_pending(INDEX_ROUND)? > 0 {}
        }
        let mut batch = sled::Batch::default();
        let mut block = Block::default();
        let mut pending: HashMap<String, u64> = HashMap::new();
        let mut out = Vec::with_capacity(punches.len());
        let mut unindexed = lock(&self.inner.unindexed);
        for &(driver, p) in punches {
            let id = punch_id(gateway_id, p);
            if let Some(&seq) = pending.get(&id) {
                out.push(Inserted { punch_id: id, seq, duplicate: true });
                continue;
            }
            if let Some(seq) = self.seq_of(&mut unindexed, &id)? {
                out.push(Inserted { punch_id: id, seq, duplicate: true });
                continue;
            }
            let seq = *next_seq;
            *next_seq += 1;
            let punch = Punch {
                seq,
                punch_id: id.clone(),
                device_id: p.device_id.clone(),
                driver: driver.to_owned(),
                device_seq: p.device_seq,
                method: p.method,
                subject: p.subject.clone(),
                device_time_ms: p.device_time_ms,
                received_time_ms: p.received_time_ms,
                realtime: p.realtime,
                geo: p.geo,
                score: p.score,
                attributes: p.attributes.clone(),
            };
            block.push(seq, codec::encode(&punch), &mut batch);
            pending.insert(id.clone(), seq);
            out.push(Inserted { punch_id: id, seq, duplicate: false });
        }
        block.close(&mut batch);
        {
            // Hold the parts while writing: a rotation waits until this batch is in the part it was numbered for.
            let parts = self.inner.parts.read().unwrap_or_else(|p| p.into_inner());
            let part = parts.last().ok_or_else(|| StoreError::Flush("no punch partition".into()))?;
            part.log.apply_batch(batch)?;
            // Still under the lock: a rotation numbers the next part from `written`.
            self.inner.written.fetch_max(next_seq.saturating_sub(1), Ordering::AcqRel);
            let mut dirty = lock(&self.inner.dirty);
            if !dirty.iter().any(|d| Arc::ptr_eq(d, part)) {
                dirty.push(part.clone());
            }
        }
        for ins in out.iter().filter(|i| !i.duplicate) {
            unindexed.by_id.insert(ins.punch_id.clone(), ins.seq);
            unindexed.order.push_back((ins.seq, ins.punch_id.clone()));
        }
        Ok(out)
    }

    /// Makes every write so far durable: flushes each part written since the last flush (usually the newest only).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let written = self.inner.written.load(Ordering::Acquire);
        let mut parts: Vec<Arc<Part>> = std::mem::take(&mut *lock(&self.inner.dirty));
        if parts.is_empty() {
            parts.extend(self.parts().last().cloned());
        }
        for part in &parts {
            part.db.flush_async().await?;
        }
        tokio::task::spawn_blocking(move || {
            for part in &parts {
                // Blob files first: a log made durable must not point to a blob that is not.
                sync_blobs(&part.path, &part.synced_blobs)
                    .map_err(|e| StoreError::Flush(format!("fsync of the blob files: {e}")))?;
                part.file.sync_data().map_err(|e| StoreError::Flush(format!("fdatasync of the log file: {e}")))?;
            }
            Ok::<(), StoreError>(())
        })
        .await
        .map_err(|e| StoreError::Flush(e.to_string()))??;
        self.inner.durable.fetch_max(written, Ordering::AcqRel);
        Ok(())
    }

    /// Writes the index entries of up to `max` durable, not yet indexed punches (one atomic sled batch, with the new
    /// cursor). Returns how many punches it indexed; 0 when the index is current. Not needed for correctness (reads and
    /// idempotency see unindexed punches too), only for speed; run by the ingest writer's follower.
    pub fn index_pending(&self, max: u64) -> Result<u64, StoreError> {
        let _round = lock(&self.inner.indexing);
        let from = self.inner.indexed.load(Ordering::Acquire) + 1;
        let Some(part) = self.part_for(from) else { return Ok(0) };
        let mut to = self.inner.durable.load(Ordering::Acquire).min(from.saturating_add(max.max(1) - 1));
        // A round stays in one part: its postings and cursor go into that part's index.
        if let Some(next) = self.parts().iter().find(|p| p.first > part.first) {
            to = to.min(next.first - 1);
        }
        if to < from {
            return Ok(0);
        }
        let mut punches = Vec::with_capacity((to - from + 1) as usize);
        for p in self.after(from - 1) {
            match p {
                Ok(p) if p.seq > to => break,
                Ok(p) => punches.push(p),
                // The log keeps the bytes; reads report them. The index cannot hold what it cannot read.
                Err(e) => tracing::error!(error = %e, "stored punches cannot be decoded; not indexed"),
            }
        }
        let mut batch = sled::Batch::default();
        index::build(&punches, to, &mut batch);
        part.index.apply_batch(batch)?;
        self.inner.indexed.store(to, Ordering::Release);
        let mut unindexed = lock(&self.inner.unindexed);
        // Raise the known maxima before the ids leave the table: a lookup must find each id in one or the other.
        for p in &punches {
            if let Some((prefix, n)) = index::numbered(&p.punch_id) {
                if let Some(max) = unindexed.max_numbered.get_mut(prefix) {
                    *max = (*max).max(Some(n));
                }
            }
        }
        while unindexed.order.front().is_some_and(|(seq, _)| *seq <= to) {
            if let Some((_, id)) = unindexed.order.pop_front() {
                unindexed.by_id.remove(&id);
            }
        }
        // A burst grows the table up to MAX_INDEX_LAG ids; give the room back once the index caught up.
        let len = unindexed.by_id.len();
        if unindexed.by_id.capacity() > 4 * len + 4096 {
            unindexed.by_id.shrink_to(2 * len);
            unindexed.order.shrink_to(2 * len);
        }
        Ok(to - from + 1)
    }
}

/// The block being filled by [`Store::insert_batch`].
#[derive(Default)]
struct Block {
    first: u64,
    punches: Vec<Vec<u8>>,
    bytes: usize,
}

impl Block {
    /// Adds the encoded punch `seq` (the one after the block's last), closing the block into `batch` when full.
    fn push(&mut self, seq: u64, encoded: Vec<u8>, batch: &mut sled::Batch) {
        // A punch that would take the block past its size starts the next one (a block over the size holds one punch).
        if !self.punches.is_empty() && self.bytes + encoded.len() > codec::BLOCK_MAX_BYTES {
            self.close(batch);
        }
        if self.punches.is_empty() {
            self.first = seq;
        }
        self.bytes += encoded.len();
        self.punches.push(encoded);
        if self.punches.len() >= codec::BLOCK_MAX_PUNCHES || self.bytes >= codec::BLOCK_MAX_BYTES {
            self.close(batch);
        }
    }

    /// Writes the block into `batch` (a lone punch as itself) and starts an empty one.
    fn close(&mut self, batch: &mut sled::Batch) {
        let value = match self.punches.len() {
            0 => return,
            1 => self.punches.pop().unwrap_or_default(),
            _ => codec::encode_block(&self.punches),
        };
        batch.insert(&self.first.to_be_bytes(), value);
        self.punches.clear();
        self.bytes = 0;
    }
}

/// Checks `[store]` (called by the configuration loader, [`crate::app::load_config`]).
pub fn check_config(config: &crate::config::Config, out: &mut crate::config::Problems<'_>) {
    use crate::config::Seg;
    let section = &config.store;
    if section.max_batch == 0 || section.max_batch > 65536 {
        out.add(&[Seg::Key("store"), Seg::Key("max_batch")], "store.max_batch", "must be between 1 and 65536".into());
    }
    if section.queue == 0 || section.queue > 1 << 20 {
        out.add(&[Seg::Key("store"), Seg::Key("queue")], "store.queue", "must be between 1 and 1048576".into());
    }
    if !(50..=99).contains(&section.disk_alarm_percent) {
        out.add(
            &[Seg::Key("store"), Seg::Key("disk_alarm_percent")],
            "store.disk_alarm_percent",
            "must be between 50 and 99".into(),
        );
    }
}

#[cfg(test)]
mod tests;
