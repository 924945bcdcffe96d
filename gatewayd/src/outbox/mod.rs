//! The outbox: what is to be delivered upstream, durable and in order.
//!
//! The outbox follows the engine's [change log](crate::reconcile::changes) and turns each change into an *item* — a punch as it
//! goes upstream, an attendance record revision, or a [`DayDigest`] when a work date closes — numbered in order. The
//! upstream sender ([`crate::upstream`]) takes items from the front in batches with a monotonic `batch_seq`, and removes
//! them only after the receiver acknowledged the batch.
//!
//! # Key layout
//! Everything lives in one sled tree, `outbox`, so that each step is one atomic `apply_batch`. Keys start with a kind byte:
//!
//! | key                               | value                            | purpose                                       |
//! |-----------------------------------|----------------------------------|-----------------------------------------------|
//! | `Q` item:u64be                    | chunk of items from `item` on    | the queue of undelivered items, in order      |
//! | `O`                               | batch_seq, first, last, count    | the open batch: assigned, not yet acknowledged|
//! | `D` date(10) `p` item:u64be       | chunk of punch items             | day index: every punch of the date, chunked like `Q` |
//! | `D` date(10) `r` record_id        | item                             | day index: the newest revision of every record of the date |
//! | `C` date(10)                      | empty                            | this work date has closed (its digest went out)|
//! | `M` name                          | u64be                            | `cursor` (last change consumed), `next_item`, `next_batch` |
//! | `Moutbox_id`                      | 16 lowercase hex digits          | `UploadBatch.outbox_id`, made once ([`Outbox::outbox_id`]) |
//!
//! An item is one version byte ([`ITEM_V1`]), one kind byte (`p` punch, `r` record, `d` digest), the time it was enqueued
//! (Unix ms, i64be), then the protobuf message exactly as it goes on the wire (`Punch`, `AttendanceRecord`, `DayDigest`
//! of `gatewayd.upstream.v1`). Batches are assembled from these bytes without decoding them. Dates are `YYYY-MM-DD` in
//! the site time zone: a punch's date is the local date of its device time, a record's its `work_date`.
//!
//! A `Q` value is a *chunk*: consecutive items from the key's item number on, at most [`CHUNK_MAX_ITEMS`] items and
//! about [`CHUNK_MAX_BYTES`] bytes: [`CHUNK_V1`], the item count (u32be), then each item as length (u32be) and bytes ([`crate::chunk`]). A
//! value that starts with [`ITEM_V1`] is a single item (the layout before chunks; still read). Chunks keep the queue
//! tree small: sled 0.34 splits a leaf above 16 keys and keeps per-page bookkeeping in memory for every page, so one key
//! per item meant a page per ~10 items and 5,000 key removals per acknowledged batch; with chunks a batch of 5,000
//! items is about 150 keys to read and to remove.
//!
//! # Ordering and batches
//! Items are numbered by `next_item` and never renumbered; the chunks of `Q` hold contiguous item numbers from the
//! oldest undelivered item on. A batch is a contiguous range of items (it may start or end inside a chunk): the sender writes `O` (with `batch_seq = next_batch`, and `next_batch + 1`) and
//! flushes before sending, so a batch that may have reached the receiver is re-sent after a crash with the same
//! `batch_seq` and the same items. One batch is in flight at a time, which keeps batches in order. A batch ends before a
//! punch of a date whose digest it already holds, so a digest always describes its batch and the batches before it.
//!
//! # Ack/delete rule
//! Items leave `Q` only when the receiver acknowledged their batch (`UploadAck.accepted = true`): one `apply_batch`
//! removes the range and `O` (the chunks wholly inside the batch are removed; a chunk that reaches past the batch's last
//! item is written again under the key of its first remaining item). A refused batch (4xx or `accepted = false`) stays open and is held, never dropped.
//! Delivered punches and records stay in the `D` index; entries of work dates older than `retention_days` are compacted
//! away ([`Outbox::compact`]), together with their `C` markers. Compaction never touches `Q`: undelivered data is never
//! dropped. `resend_dates` from the receiver copy a date's `D` entries (and its digest) to the end of `Q` again.
//!
//! # Durability and crash recovery
//! Consuming the change log writes the new items, the `D` entries and the advanced `cursor` in one `apply_batch`; the
//! outbox then flushes, and only after that trims the change log through the cursor ([`ChangeLog::remove_through`],
//! always keeping the newest entry so the log's numbering continues after a restart) and tells the sender how far `Q`
//! is durable. After a crash the outbox resumes from the persisted `cursor`: a change is never lost (the log keeps it
//! until the outbox's flush) and never enqueued twice (the cursor moves atomically with the items). An open batch found
//! at start is re-sent as is. At-least-once on the wire, exactly-once in effect: receivers dedupe punches by `punch_id`
//! and keep the highest `revision` of each record.
//!
//! # Memory
//! Nothing holds more than one batch (bounded by `batch_max_items` and `batch_max_bytes`) or one pass over the change
//! log ([`FILL_CHUNK`] changes) in memory; a backlog of millions of items is streamed from sled. A digest sorts the punch
//! ids of one day.

mod batch;
mod day_index;
pub mod digest;
pub mod feeder;
mod floor;
mod item;
pub mod metrics;
mod queue;

pub use batch::{OpenBatch, Prepared};
pub use day_index::valid_date;
use day_index::{closed_key, day_key, day_prefix};
pub use floor::Floor;
pub use item::{Item, RawItem};
pub use queue::chunk_items;
use queue::{encode_chunk, Writer};

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::Message;
use tokio::sync::watch;

use crate::proto::upstream::{AttendanceRecord, DayDigest, Punch};
use crate::reconcile::changes::{Change, ChangeLog};
use crate::store::{Store, StoreError};

/// The encoding version byte of items.
pub const ITEM_V1: u8 = 1;
/// Header bytes of an item before its protobuf body: version, kind, enqueued time.
pub const ITEM_HEADER: usize = 10;
/// Most changes consumed in one pass (bounds memory and the time one blocking pass takes).
pub const FILL_CHUNK: usize = 4096;
/// The version byte of a queue chunk (distinct from [`ITEM_V1`], which marks a single-item `Q` value).
pub const CHUNK_V1: u8 = 2;
/// Most items in one queue chunk.
pub const CHUNK_MAX_ITEMS: usize = 32;
/// A chunk is sealed once it holds this many bytes (a leaf of 17 chunks then stays well below sled's 128 KiB inline
/// limit, so nothing goes to blob files).
pub const CHUNK_MAX_BYTES: usize = 4096;

const K_QUEUE: u8 = b'Q';
const K_OPEN: u8 = b'O';
const K_DAY: u8 = b'D';
const K_CLOSED: u8 = b'C';

const KIND_PUNCH: u8 = b'p';
const KIND_RECORD: u8 = b'r';
const KIND_DIGEST: u8 = b'd';

const M_CURSOR: &[u8] = b"Mcursor";
const M_NEXT_ITEM: &[u8] = b"Mnext_item";
const M_NEXT_BATCH: &[u8] = b"Mnext_batch";
const M_OUTBOX_ID: &[u8] = b"Moutbox_id";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox: {0}")]
    Sled(#[from] sled::Error),
    #[error("outbox: {0}")]
    Store(#[from] StoreError),
    #[error("outbox: item {key} cannot be decoded: {message}")]
    Decode { key: String, message: String },
    #[error("outbox: {0}")]
    Digest(#[from] digest::DigestError),
    #[error("outbox: {0}")]
    Date(String),
}

/// What one pass over the change log did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filled {
    /// Changes consumed.
    pub changes: usize,
    pub punches: usize,
    pub records: usize,
    pub digests: usize,
    /// The change log cursor after the pass.
    pub cursor: u64,
}

/// Depth and age of the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub depth: u64,
    pub oldest_enqueued_ms: Option<i64>,
}

fn q_key(item: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = K_QUEUE;
    k[1..].copy_from_slice(&item.to_be_bytes());
    k
}

fn item_of(key: &[u8]) -> u64 {
    key.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
}

fn decode_err(key: &[u8]) -> impl FnOnce(String) -> OutboxError + '_ {
    move |message| OutboxError::Decode { key: format!("queue chunk {}", item_of(key)), message }
}

/// The outbox. Cheap to clone; one feeder (the task following the change log) and one sender use it.
#[derive(Clone)]
pub struct Outbox {
    db: sled::Db,
    tree: sled::Tree,
    tz: jiff::tz::TimeZone,
    durable: watch::Sender<u64>,
    /// Makes a flush survive a power cut (the daemon sets it; see [`Outbox::durable_with`]).
    sync: Option<crate::store::MainSync>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("durable_item", &*self.durable.borrow()).finish()
    }
}

impl Outbox {
    /// Opens the outbox in the store's database. `tz` is the site time zone (dates of punches and digests).
    pub fn open(db: &sled::Db, tz: jiff::tz::TimeZone) -> Result<Outbox, OutboxError> {
        let tree = db.open_tree("outbox")?;
        let outbox = Outbox { db: db.clone(), tree, tz, durable: watch::channel(0).0, sync: None };
        // What is on disk at open is durable.
        outbox.durable.send_replace(outbox.meta(M_NEXT_ITEM)?.saturating_sub(1));
        Ok(outbox)
    }

    pub fn timezone(&self) -> &jiff::tz::TimeZone {
        &self.tz
    }

    fn meta(&self, key: &[u8]) -> Result<u64, OutboxError> {
        Ok(self.tree.get(key)?.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)).unwrap_or(0))
    }

    /// This outbox's random id (`UploadBatch.outbox_id`, SPEC 6): made and stored the first time it is asked for, and
    /// the same for the life of the data dir, so a reinstalled gateway (batch_seq from 1 again) is never a replay.
    pub fn outbox_id(&self) -> Result<String, OutboxError> {
        let fresh = format!("{:016x}", rand::random::<u64>());
        // Compare-and-swap: whoever stores first wins, every caller reads the stored id.
        let _ = self.tree.compare_and_swap(M_OUTBOX_ID, None::<&[u8]>, Some(fresh.as_bytes()))?;
        let stored = self.tree.get(M_OUTBOX_ID)?.map(|v| String::from_utf8_lossy(&v).into_owned());
        Ok(stored.unwrap_or(fresh))
    }

    /// The last change log entry consumed.
    pub fn cursor(&self) -> Result<u64, OutboxError> {
        self.meta(M_CURSOR)
    }

    /// Wakes when more items are durable; the value is the highest durable item number.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// Makes every flush end with an `fdatasync` of the database's files, so a power cut keeps what a flush returned
    /// (an open batch, above all: it must be on disk before it is sent).
    pub fn durable_with(mut self, sync: crate::store::MainSync) -> Outbox {
        self.sync = Some(sync);
        self
    }

    /// Flushes the database and publishes how far the queue is durable.
    pub async fn flush(&self) -> Result<(), OutboxError> {
        let last = self.meta(M_NEXT_ITEM)?.saturating_sub(1);
        match &self.sync {
            Some(sync) => sync.flush(&self.db).await?,
            None => {
                self.db.flush_async().await?;
            }
        }
        self.durable.send_if_modified(|v| {
            let changed = *v != last;
            *v = last;
            changed
        });
        Ok(())
    }

    /// Depth of the queue and the enqueue time of its oldest item.
    pub fn stats(&self) -> Result<QueueStats, OutboxError> {
        let mut queue = self.tree.scan_prefix([K_QUEUE]);
        let Some((first_key, first_value)) = queue.next().transpose()? else { return Ok(QueueStats::default()) };
        let first_items = chunk_items(item_of(&first_key), &first_value).map_err(decode_err(&first_key))?;
        let last = match queue.next_back().transpose()? {
            Some((k, v)) => chunk_items(item_of(&k), &v).map_err(decode_err(&k))?.last().map(|(n, _)| *n),
            None => first_items.last().map(|(n, _)| *n),
        };
        let Some(&(first, stored)) = first_items.first() else { return Ok(QueueStats::default()) };
        let oldest = RawItem::parse(stored).ok().map(|r| r.enqueued_ms);
        Ok(QueueStats { depth: last.unwrap_or(first).saturating_sub(first) + 1, oldest_enqueued_ms: oldest })
    }
}

/// A day index chunk being filled: its first item number, its items, their bytes.
type DayChunk = (u64, Vec<Vec<u8>>, usize);

/// How far the change log may be trimmed once the outbox consumed through `cursor`: everything consumed, except that the
/// newest entry of the log is always kept, so the log's numbering continues after a restart.
pub fn trim_point(cursor: u64, log_last: u64) -> u64 {
    cursor.min(log_last.saturating_sub(1))
}

#[cfg(test)]
mod tests;
