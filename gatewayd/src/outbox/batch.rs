//! Batches: the open batch (`O`), assigning items to it, its body, and the acknowledgement that removes them.

use super::*;

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

/// Assembles an `UploadBatch` from stored items without decoding punches and records.
#[derive(Default)]
pub(super) struct BodyBuilder {
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

impl Outbox {
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

    /// The key of the chunk holding item `item` (or where it would start).
    pub(super) fn chunk_key_of(&self, item: u64) -> Result<Vec<u8>, OutboxError> {
        Ok(match self.tree.range(q_key(0)..=q_key(item)).next_back() {
            Some(entry) => entry?.0.to_vec(),
            None => q_key(item).to_vec(),
        })
    }

    /// Calls `f(item, stored)` for the queued items from `from` through `through` in order, until it returns false.
    pub(super) fn for_items(
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
    pub(super) fn remove_range(&self, b: &mut sled::Batch, open: &OpenBatch) -> Result<(), OutboxError> {
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
}
