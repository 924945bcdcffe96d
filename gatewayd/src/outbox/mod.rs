//! The outbox: what is to be delivered upstream, durable and in order.
//!
//! The outbox follows the engine's [change log](crate::changes) and turns each change into an *item* — a punch as it
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

pub mod budget;
pub mod digest;
pub mod feeder;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::Message;
use tokio::sync::watch;

use crate::changes::{Change, ChangeLog};
use crate::proto::upstream::{AttendanceRecord, DayDigest, Punch};
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

/// One thing to deliver.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Punch(Punch),
    Record(AttendanceRecord),
    Digest(DayDigest),
}

impl Item {
    fn kind(&self) -> u8 {
        match self {
            Item::Punch(_) => KIND_PUNCH,
            Item::Record(_) => KIND_RECORD,
            Item::Digest(_) => KIND_DIGEST,
        }
    }

    /// The stored form: version, kind, enqueued time, protobuf body.
    pub fn encode(&self, enqueued_ms: i64) -> Vec<u8> {
        let len = match self {
            Item::Punch(m) => m.encoded_len(),
            Item::Record(m) => m.encoded_len(),
            Item::Digest(m) => m.encoded_len(),
        };
        let mut out = Vec::with_capacity(ITEM_HEADER + len);
        out.push(ITEM_V1);
        out.push(self.kind());
        out.extend_from_slice(&enqueued_ms.to_be_bytes());
        // Encoding into a Vec cannot run out of space.
        let _ = match self {
            Item::Punch(m) => m.encode(&mut out),
            Item::Record(m) => m.encode(&mut out),
            Item::Digest(m) => m.encode(&mut out),
        };
        out
    }

    /// Decodes the stored form: the item and when it was enqueued.
    pub fn decode(bytes: &[u8]) -> Result<(Item, i64), String> {
        let raw = RawItem::parse(bytes)?;
        let item = match raw.kind {
            KIND_PUNCH => Item::Punch(Punch::decode(raw.body).map_err(|e| format!("punch: {e}"))?),
            KIND_RECORD => Item::Record(AttendanceRecord::decode(raw.body).map_err(|e| format!("record: {e}"))?),
            _ => Item::Digest(DayDigest::decode(raw.body).map_err(|e| format!("digest: {e}"))?),
        };
        Ok((item, raw.enqueued_ms))
    }
}

/// A stored item without decoding its body.
#[derive(Clone, Copy, Debug)]
pub struct RawItem<'a> {
    pub kind: u8,
    pub enqueued_ms: i64,
    pub body: &'a [u8],
}

impl<'a> RawItem<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<RawItem<'a>, String> {
        if bytes.len() < ITEM_HEADER {
            return Err(format!("{} bytes is shorter than the item header", bytes.len()));
        }
        if bytes[0] != ITEM_V1 {
            return Err(format!("unknown item encoding version {} (this build reads {ITEM_V1})", bytes[0]));
        }
        let kind = bytes[1];
        if ![KIND_PUNCH, KIND_RECORD, KIND_DIGEST].contains(&kind) {
            return Err(format!("unknown item kind {kind:#04x}"));
        }
        let mut at = [0u8; 8];
        at.copy_from_slice(&bytes[2..ITEM_HEADER]);
        Ok(RawItem { kind, enqueued_ms: i64::from_be_bytes(at), body: &bytes[ITEM_HEADER..] })
    }
}

/// The batch assigned to the sender and not yet acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenBatch {
    pub batch_seq: u64,
    /// First and last item numbers (inclusive).
    pub first: u64,
    pub last: u64,
    /// Items in the batch.
    pub count: u64,
}

impl OpenBatch {
    fn encode(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[0..8].copy_from_slice(&self.batch_seq.to_be_bytes());
        out[8..16].copy_from_slice(&self.first.to_be_bytes());
        out[16..24].copy_from_slice(&self.last.to_be_bytes());
        out[24..32].copy_from_slice(&self.count.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<OpenBatch> {
        let field = |i: usize| bytes.get(i * 8..i * 8 + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        Some(OpenBatch { batch_seq: field(0)?, first: field(1)?, last: field(2)?, count: field(3)? })
    }
}

/// A batch read from the queue ([`Outbox::prepare`]) and not yet assigned a `batch_seq`.
pub struct Prepared {
    /// First and last item numbers (inclusive).
    pub first: u64,
    pub last: u64,
    pub count: u64,
    body: BodyBuilder,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("first", &self.first).field("last", &self.last).finish()
    }
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

/// The items of one `Q` value whose key names item `first`: (item number, stored item).
pub fn chunk_items(first: u64, value: &[u8]) -> Result<Vec<(u64, &[u8])>, String> {
    match value.first() {
        Some(&ITEM_V1) => Ok(vec![(first, value)]),
        Some(&CHUNK_V1) => (0..)
            .zip(crate::chunk::items(value)?)
            .map(|(i, item)| Ok((first.checked_add(i).ok_or("chunk item numbers overflow")?, item)))
            .collect(),
        Some(v) => Err(format!("unknown queue value version {v}")),
        None => Err("empty queue value".into()),
    }
}

/// Encodes items as one chunk value.
fn encode_chunk<'a>(items: impl ExactSizeIterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    crate::chunk::encode(CHUNK_V1, items)
}

fn decode_err(key: &[u8]) -> impl FnOnce(String) -> OutboxError + '_ {
    move |message| OutboxError::Decode { key: format!("queue chunk {}", item_of(key)), message }
}

fn day_prefix(date: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(12);
    k.push(K_DAY);
    k.extend_from_slice(date.as_bytes());
    k
}

fn day_key(date: &str, kind: u8, id: &str) -> Vec<u8> {
    let mut k = day_prefix(date);
    k.push(kind);
    k.extend_from_slice(id.as_bytes());
    k
}

fn closed_key(date: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(11);
    k.push(K_CLOSED);
    k.extend_from_slice(date.as_bytes());
    k
}

/// A valid `YYYY-MM-DD` date, as given by a receiver in `resend_dates`.
pub fn valid_date(date: &str) -> bool {
    date.len() == 10 && date.parse::<jiff::civil::Date>().is_ok()
}

/// The outbox. Cheap to clone; one feeder (the task following the change log) and one sender use it.
#[derive(Clone)]
pub struct Outbox {
    db: sled::Db,
    tree: sled::Tree,
    tz: jiff::tz::TimeZone,
    durable: watch::Sender<u64>,
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
        let outbox = Outbox { db: db.clone(), tree, tz, durable: watch::channel(0).0 };
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

    /// The last change log entry consumed.
    pub fn cursor(&self) -> Result<u64, OutboxError> {
        self.meta(M_CURSOR)
    }

    /// Wakes when more items are durable; the value is the highest durable item number.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// Flushes the database and publishes how far the queue is durable.
    pub async fn flush(&self) -> Result<(), OutboxError> {
        let last = self.meta(M_NEXT_ITEM)?.saturating_sub(1);
        self.db.flush_async().await?;
        self.durable.send_if_modified(|v| {
            let changed = *v != last;
            *v = last;
            changed
        });
        Ok(())
    }

    /// Consumes up to `max` durable changes after the cursor (through `through`): enqueues items, indexes them by day,
    /// turns `DayClosed` into a digest, and re-digests closed days that received a late punch. Not durable until
    /// [`Outbox::flush`]. Blocking (sled I/O and digest scans): call it from a blocking thread.
    pub fn fill(
        &self,
        changes: &ChangeLog,
        store: &Store,
        through: u64,
        max: usize,
        now_ms: i64,
    ) -> Result<Filled, OutboxError> {
        let mut w = Writer::new(self, now_ms)?;
        let mut filled = Filled { cursor: w.cursor, ..Filled::default() };
        let mut redigest: BTreeSet<String> = BTreeSet::new();
        let mut revisions: HashMap<Vec<u8>, u32> = HashMap::new();
        for entry in changes.after(w.cursor) {
            let (seq, change) = entry?;
            if seq > through || filled.changes >= max {
                break;
            }
            match change {
                Change::Punch(p) => {
                    let date = digest::local_date(p.device_time_ms, &self.tz).map_err(OutboxError::Date)?;
                    if self.tree.contains_key(closed_key(&date))? {
                        redigest.insert(date.clone());
                    }
                    w.push_punch(Item::Punch(p), &date);
                    filled.punches += 1;
                }
                Change::Record(r) => {
                    let key = day_key(&r.work_date, KIND_RECORD, &r.record_id);
                    let known = match revisions.get(&key) {
                        Some(&rev) => Some(rev),
                        None => self.stored_revision(&key)?,
                    };
                    // The day index keeps the newest revision; every revision is still sent (receivers keep the highest).
                    let index = known.is_none_or(|rev| r.revision >= rev);
                    if index {
                        revisions.insert(key.clone(), r.revision);
                    }
                    w.push(Item::Record(r), index.then_some(key));
                    filled.records += 1;
                }
                Change::DayClosed(date) => {
                    if !valid_date(&date) {
                        return Err(OutboxError::Date(format!("change {seq}: closed day `{date}` is not YYYY-MM-DD")));
                    }
                    // The digest must see every record enqueued before it.
                    w.cursor = seq.saturating_sub(1);
                    w.apply()?;
                    let digest = self.digest(store, &date)?;
                    w.batch.insert(closed_key(&date), &[]);
                    w.push(Item::Digest(digest), None);
                    redigest.remove(&date);
                    filled.digests += 1;
                }
            }
            w.cursor = seq;
            filled.changes += 1;
        }
        w.apply()?;
        for date in redigest {
            let digest = self.digest(store, &date)?;
            w.push(Item::Digest(digest), None);
            filled.digests += 1;
        }
        w.apply()?;
        filled.cursor = w.cursor;
        Ok(filled)
    }

    fn stored_revision(&self, key: &[u8]) -> Result<Option<u32>, OutboxError> {
        match self.tree.get(key)? {
            Some(v) => match Item::decode(&v) {
                Ok((Item::Record(r), _)) => Ok(Some(r.revision)),
                Ok(_) => Ok(None),
                Err(message) => Err(OutboxError::Decode { key: String::from_utf8_lossy(key).into_owned(), message }),
            },
            None => Ok(None),
        }
    }

    /// The digest of a date as things stand in the day index: the punches and records of that date enqueued so far.
    ///
    /// The day index, not the punch store: a digest must describe exactly what the receiver got before it
    /// (docs/upstream-protocol.md section 3). The engine announces a closed date again with every batch that touches it;
    /// counted from the punch store, a digest also counted punches stored but not yet through the engine, so after an
    /// outage every digest but the last failed at the receiver, which asked for the date again (three times).
    pub fn digest(&self, _store: &Store, date: &str) -> Result<DayDigest, OutboxError> {
        let (from_ms, to_ms) = digest::day_bounds(date, &self.tz).map_err(OutboxError::Date)?;
        let mut prefix = day_prefix(date);
        prefix.push(KIND_RECORD);
        let records = self.tree.scan_prefix(&prefix).keys().try_fold(0u64, |n, k| k.map(|_| n + 1))?;
        prefix.pop();
        prefix.push(KIND_PUNCH);
        let mut ids = Vec::new();
        for entry in self.tree.scan_prefix(&prefix) {
            let (k, v) = entry?;
            let bad = |message| OutboxError::Decode { key: String::from_utf8_lossy(&k).into_owned(), message };
            for (_, stored) in chunk_items(0, &v).map_err(bad)? {
                let raw = RawItem::parse(stored).map_err(bad)?;
                ids.push(Punch::decode(raw.body).map_err(|e| bad(format!("punch: {e}")))?.punch_id);
            }
        }
        let (punch_count, sha) = digest::ids_sha256(ids);
        Ok(DayDigest {
            work_date: date.to_owned(),
            punch_count,
            punch_ids_sha256: sha,
            record_count: records,
            from_ms,
            to_ms,
        })
    }

    /// Enqueues everything the day index holds for `date` again (punches, the newest revision of each record), then the
    /// date's digest if the date has closed. Returns the number of items enqueued. Blocking; streams in chunks.
    pub fn resend_date(&self, date: &str, store: &Store, now_ms: i64) -> Result<usize, OutboxError> {
        if !valid_date(date) {
            return Err(OutboxError::Date(format!("`{date}` is not a date (YYYY-MM-DD)")));
        }
        let mut w = Writer::new(self, now_ms)?;
        let mut n = 0;
        for entry in self.tree.scan_prefix(day_prefix(date)) {
            let (k, v) = entry?;
            let bad = |message| OutboxError::Decode { key: String::from_utf8_lossy(&k).into_owned(), message };
            // Punch entries are chunks (or single items of the earlier layout); record entries single items.
            for (_, stored) in chunk_items(0, &v).map_err(bad)? {
                let mut item = stored.to_vec();
                RawItem::parse(&item).map_err(bad)?;
                item[2..ITEM_HEADER].copy_from_slice(&now_ms.to_be_bytes());
                w.push_raw(item);
                n += 1;
            }
            if w.pending >= FILL_CHUNK {
                w.apply()?;
            }
        }
        if self.tree.contains_key(closed_key(date))? {
            w.apply()?;
            let digest = self.digest(store, date)?;
            w.push(Item::Digest(digest), None);
            n += 1;
        }
        w.apply()?;
        Ok(n)
    }

    /// The batch assigned and not yet acknowledged, if any.
    pub fn open_batch(&self) -> Result<Option<OpenBatch>, OutboxError> {
        Ok(self.tree.get([K_OPEN])?.and_then(|v| OpenBatch::decode(&v)))
    }

    /// Items in the queue up to item `through` (the durable ones, when `through` comes from [`Outbox::subscribe`]).
    pub fn ready(&self, through: u64) -> Result<u64, OutboxError> {
        match self.tree.scan_prefix([K_QUEUE]).keys().next() {
            Some(k) => {
                let first = item_of(&k?);
                Ok(if through >= first { through - first + 1 } else { 0 })
            }
            None => Ok(0),
        }
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

    /// The key of the chunk holding item `item` (or where it would start).
    fn chunk_key_of(&self, item: u64) -> Result<Vec<u8>, OutboxError> {
        Ok(match self.tree.range(q_key(0)..=q_key(item)).next_back() {
            Some(entry) => entry?.0.to_vec(),
            None => q_key(item).to_vec(),
        })
    }

    /// Calls `f(item, stored)` for the queued items from `from` through `through` in order, until it returns false.
    fn for_items(
        &self,
        from: u64,
        through: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<bool, OutboxError>,
    ) -> Result<(), OutboxError> {
        if through < from {
            return Ok(());
        }
        let start = self.chunk_key_of(from)?;
        for entry in self.tree.range(start..=q_key(through).to_vec()) {
            let (k, v) = entry?;
            for (item, stored) in chunk_items(item_of(&k), &v).map_err(decode_err(&k))? {
                if item < from {
                    continue;
                }
                if item > through || !f(item, stored)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Assigns the next batch: up to `max_items` items and about `max_bytes` bytes (at least one item) from the front of
    /// the queue, none after item `through`. Writes it as the open batch with the next `batch_seq`; the caller flushes
    /// ([`Outbox::flush`]) before sending it. Returns `None` when nothing is ready.
    pub fn assign_batch(
        &self,
        max_items: usize,
        max_bytes: usize,
        through: u64,
    ) -> Result<Option<OpenBatch>, OutboxError> {
        if let Some(open) = self.open_batch()? {
            return Ok(Some(open));
        }
        Ok(self.assign_with_body(max_items, max_bytes, through, "")?.map(|(open, _)| open))
    }

    /// The protobuf `UploadBatch` of an open batch, assembled from the stored bytes. Punches, then records, then
    /// digests (of several digests of one date in a batch only the newest is kept), each kind in queue order.
    pub fn batch_body(&self, open: &OpenBatch, gateway_id: &str) -> Result<Vec<u8>, OutboxError> {
        let mut body = BodyBuilder::default();
        self.for_items(open.first, open.last, |item, v| {
            body.add(item, v)?;
            Ok(true)
        })?;
        Ok(body.finish(gateway_id, open.batch_seq))
    }

    /// [`Outbox::assign_batch`] and [`Outbox::batch_body`] in one pass over the queue (the sender's fast path).
    pub fn assign_with_body(
        &self,
        max_items: usize,
        max_bytes: usize,
        through: u64,
        gateway_id: &str,
    ) -> Result<Option<(OpenBatch, Vec<u8>)>, OutboxError> {
        if let Some(open) = self.open_batch()? {
            let body = self.batch_body(&open, gateway_id)?;
            return Ok(Some((open, body)));
        }
        let Some(next) = self.prepare(0, max_items, max_bytes, through)? else { return Ok(None) };
        let batch_seq = self.meta(M_NEXT_BATCH)?.max(1);
        let open = OpenBatch { batch_seq, first: next.first, last: next.last, count: next.count };
        let mut b = sled::Batch::default();
        b.insert(&[K_OPEN], &open.encode());
        b.insert(M_NEXT_BATCH, &(batch_seq + 1).to_be_bytes());
        self.tree.apply_batch(b)?;
        Ok(Some((open, next.body.finish(gateway_id, batch_seq))))
    }

    /// Reads the next batch from the queue without assigning it: up to `max_items` items and about `max_bytes` bytes
    /// (at least one item) after item `after`, none after item `through`. Items in `Q` never change once written, so
    /// the sender can prepare batch N+1 while batch N is in flight and assign it with [`Outbox::ack_and_assign`].
    pub fn prepare(
        &self,
        after: u64,
        max_items: usize,
        max_bytes: usize,
        through: u64,
    ) -> Result<Option<Prepared>, OutboxError> {
        let mut body = BodyBuilder::default();
        let mut first = None;
        let mut last = 0;
        let mut count = 0u64;
        let mut bytes = 0usize;
        self.for_items(after + 1, through, |item, v| {
            let size = v.len().saturating_sub(ITEM_HEADER) + 6;
            if count > 0 && (count as usize >= max_items || bytes + size > max_bytes) {
                return Ok(false);
            }
            // A digest describes its batch and the batches before it: a punch of its date enqueued after it goes in
            // the next batch.
            if body.follows_digest_of_its_date(v, &self.tz) {
                return Ok(false);
            }
            body.add(item, v)?;
            first.get_or_insert(item);
            last = item;
            count += 1;
            bytes += size;
            Ok(true)
        })?;
        Ok(first.map(|first| Prepared { first, last, count, body }))
    }

    /// The receiver acknowledged `open`: its items leave the queue and the batch is closed, atomically. Only the chunks
    /// the batch covers are read (about `count / CHUNK_MAX_ITEMS` keys).
    pub fn ack(&self, open: &OpenBatch) -> Result<(), OutboxError> {
        let mut b = sled::Batch::default();
        self.remove_range(&mut b, open)?;
        b.remove(&[K_OPEN]);
        self.tree.apply_batch(b)?;
        Ok(())
    }

    /// Adds to `b` the removal of items `open.first..=open.last` from `Q`: chunks wholly inside are removed, a chunk
    /// reaching past the end is written again from its first remaining item on.
    fn remove_range(&self, b: &mut sled::Batch, open: &OpenBatch) -> Result<(), OutboxError> {
        let start = self.chunk_key_of(open.first)?;
        for entry in self.tree.range(start..=q_key(open.last).to_vec()) {
            let (k, v) = entry?;
            let items = chunk_items(item_of(&k), &v).map_err(decode_err(&k))?;
            let before: Vec<&[u8]> = items.iter().filter(|(n, _)| *n < open.first).map(|(_, v)| *v).collect();
            let after: Vec<&(u64, &[u8])> = items.iter().filter(|(n, _)| *n > open.last).collect();
            if before.is_empty() {
                b.remove(k);
            } else if before.len() < items.len() {
                b.insert(k, encode_chunk(before.into_iter()));
            }
            if let Some(&&(from, _)) = after.first() {
                b.insert(&q_key(from), encode_chunk(after.into_iter().map(|(_, v)| *v)));
            }
        }
        Ok(())
    }

    /// [`Outbox::ack`] of `open` and the assignment of `next` (prepared right after it) as the new open batch, in one
    /// atomic write. Returns the new open batch and its body; the caller flushes before sending it, as after
    /// [`Outbox::assign_with_body`]. A `next` that does not start right after `open` is not assigned (plain ack).
    pub fn ack_and_assign(
        &self,
        open: &OpenBatch,
        next: Prepared,
        gateway_id: &str,
    ) -> Result<Option<(OpenBatch, Vec<u8>)>, OutboxError> {
        if next.first != open.last + 1 {
            self.ack(open)?;
            return Ok(None);
        }
        let batch_seq = self.meta(M_NEXT_BATCH)?.max(open.batch_seq + 1);
        let assigned = OpenBatch { batch_seq, first: next.first, last: next.last, count: next.count };
        let mut b = sled::Batch::default();
        self.remove_range(&mut b, open)?;
        b.insert(&[K_OPEN], &assigned.encode());
        b.insert(M_NEXT_BATCH, &(batch_seq + 1).to_be_bytes());
        self.tree.apply_batch(b)?;
        Ok(Some((assigned, next.body.finish(gateway_id, batch_seq))))
    }

    /// Removes day index entries and closed-day markers of dates before `before` (YYYY-MM-DD). Never touches the queue.
    /// Returns the number of entries removed. Blocking; works in chunks.
    pub fn compact(&self, before: &str) -> Result<usize, OutboxError> {
        let mut removed = 0;
        for kind in [K_DAY, K_CLOSED] {
            loop {
                let mut b = sled::Batch::default();
                let mut n = 0;
                let lo = vec![kind];
                let mut hi = vec![kind];
                hi.extend_from_slice(before.as_bytes());
                for k in self.tree.range(lo..hi).keys().take(FILL_CHUNK) {
                    b.remove(k?);
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                self.tree.apply_batch(b)?;
                removed += n;
            }
        }
        Ok(removed)
    }
}

/// Assembles an `UploadBatch` from stored items without decoding punches and records.
#[derive(Default)]
struct BodyBuilder {
    punches: Vec<u8>,
    records: Vec<u8>,
    digests: Vec<(String, Vec<u8>)>,
}

impl BodyBuilder {
    fn add(&mut self, item: u64, stored: &[u8]) -> Result<(), OutboxError> {
        use prost::encoding::{encode_key, encode_varint, WireType};
        let raw =
            RawItem::parse(stored).map_err(|message| OutboxError::Decode { key: format!("item {item}"), message })?;
        let (field, out) = match raw.kind {
            KIND_PUNCH => (3, &mut self.punches),
            KIND_RECORD => (4, &mut self.records),
            _ => {
                let d = DayDigest::decode(raw.body).map_err(|e| OutboxError::Decode {
                    key: format!("item {item}"),
                    message: format!("digest: {e}"),
                })?;
                self.digests.retain(|(date, _)| *date != d.work_date);
                self.digests.push((d.work_date, raw.body.to_vec()));
                return Ok(());
            }
        };
        encode_key(field, WireType::LengthDelimited, out);
        encode_varint(raw.body.len() as u64, out);
        out.extend_from_slice(raw.body);
        Ok(())
    }

    /// Whether `stored` is a punch whose date already has a digest in this batch.
    fn follows_digest_of_its_date(&self, stored: &[u8], tz: &jiff::tz::TimeZone) -> bool {
        if self.digests.is_empty() {
            return false;
        }
        let Ok(raw) = RawItem::parse(stored) else { return false };
        if raw.kind != KIND_PUNCH {
            return false;
        }
        let Ok(p) = Punch::decode(raw.body) else { return false };
        let Ok(date) = digest::local_date(p.device_time_ms, tz) else { return false };
        self.digests.iter().any(|(d, _)| *d == date)
    }

    fn finish(self, gateway_id: &str, batch_seq: u64) -> Vec<u8> {
        use prost::encoding::{encode_key, encode_varint, WireType};
        let mut body = Vec::with_capacity(self.punches.len() + self.records.len() + 64);
        prost::encoding::string::encode(1, &gateway_id.to_owned(), &mut body);
        prost::encoding::uint64::encode(2, &batch_seq, &mut body);
        body.extend_from_slice(&self.punches);
        body.extend_from_slice(&self.records);
        for (_, d) in self.digests {
            encode_key(5, WireType::LengthDelimited, &mut body);
            encode_varint(d.len() as u64, &mut body);
            body.extend_from_slice(&d);
        }
        body
    }
}

/// Accumulates one atomic write of the feeder: queue chunks, day index entries, the cursor and `next_item`.
struct Writer<'a> {
    outbox: &'a Outbox,
    batch: sled::Batch,
    pending: usize,
    cursor: u64,
    next_item: u64,
    now_ms: i64,
    /// The chunk being filled: its first item and its items.
    chunk_first: u64,
    chunk: Vec<Vec<u8>>,
    chunk_bytes: usize,
    /// Day index chunks of punches being filled, by key prefix (`D` date `p`).
    day_chunks: BTreeMap<Vec<u8>, DayChunk>,
}

/// A day index chunk being filled: its first item number, its items, their bytes.
type DayChunk = (u64, Vec<Vec<u8>>, usize);

impl<'a> Writer<'a> {
    fn new(outbox: &'a Outbox, now_ms: i64) -> Result<Writer<'a>, OutboxError> {
        Ok(Writer {
            outbox,
            batch: sled::Batch::default(),
            pending: 0,
            cursor: outbox.meta(M_CURSOR)?,
            next_item: outbox.meta(M_NEXT_ITEM)?.max(1),
            now_ms,
            chunk_first: 0,
            chunk: Vec::new(),
            chunk_bytes: 0,
            day_chunks: BTreeMap::new(),
        })
    }

    /// A punch: into the queue, and into the day index chunk of its date.
    fn push_punch(&mut self, item: Item, date: &str) {
        let bytes = item.encode(self.now_ms);
        let mut prefix = day_prefix(date);
        prefix.push(KIND_PUNCH);
        let next_item = self.next_item;
        let day = self.day_chunks.entry(prefix).or_insert_with(|| (next_item, Vec::new(), 0));
        day.2 += bytes.len() + 4;
        day.1.push(bytes.clone());
        if day.1.len() >= CHUNK_MAX_ITEMS || day.2 >= CHUNK_MAX_BYTES {
            let mut prefix = day_prefix(date);
            prefix.push(KIND_PUNCH);
            self.seal_day(prefix);
        }
        self.push_raw(bytes);
    }

    /// Puts a day index chunk into the write, under `D` date `p` first-item.
    fn seal_day(&mut self, prefix: Vec<u8>) {
        if let Some((first, items, _)) = self.day_chunks.remove(&prefix) {
            let mut key = prefix;
            key.extend_from_slice(&first.to_be_bytes());
            self.batch.insert(key, encode_chunk(items.iter().map(Vec::as_slice)));
        }
    }

    fn push(&mut self, item: Item, day_key: Option<Vec<u8>>) {
        let bytes = item.encode(self.now_ms);
        if let Some(k) = day_key {
            self.batch.insert(k, bytes.clone());
        }
        self.push_raw(bytes);
    }

    fn push_raw(&mut self, bytes: Vec<u8>) {
        if self.chunk.is_empty() {
            self.chunk_first = self.next_item;
        }
        self.chunk_bytes += bytes.len() + 4;
        self.chunk.push(bytes);
        self.next_item += 1;
        self.pending += 1;
        if self.chunk.len() >= CHUNK_MAX_ITEMS || self.chunk_bytes >= CHUNK_MAX_BYTES {
            self.seal();
        }
    }

    /// Puts the chunk being filled into the write.
    fn seal(&mut self) {
        if self.chunk.is_empty() {
            return;
        }
        let value = encode_chunk(self.chunk.iter().map(Vec::as_slice));
        self.batch.insert(&q_key(self.chunk_first), value);
        self.chunk.clear();
        self.chunk_bytes = 0;
    }

    fn apply(&mut self) -> Result<(), OutboxError> {
        self.seal();
        let days: Vec<Vec<u8>> = self.day_chunks.keys().cloned().collect();
        for prefix in days {
            self.seal_day(prefix);
        }
        let mut batch = std::mem::take(&mut self.batch);
        batch.insert(M_CURSOR, &self.cursor.to_be_bytes());
        batch.insert(M_NEXT_ITEM, &self.next_item.to_be_bytes());
        self.outbox.tree.apply_batch(batch)?;
        self.pending = 0;
        Ok(())
    }
}

/// How far the change log may be trimmed once the outbox consumed through `cursor`: everything consumed, except that the
/// newest entry of the log is always kept, so the log's numbering continues after a restart.
pub fn trim_point(cursor: u64, log_last: u64) -> u64 {
    cursor.min(log_last.saturating_sub(1))
}

#[cfg(test)]
mod tests;
