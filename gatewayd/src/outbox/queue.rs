//! The queue (`Q`): filling it from the change log in chunks of items, one atomic sled batch per fill.

use super::*;

impl Outbox {
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

    pub(super) fn stored_revision(&self, key: &[u8]) -> Result<Option<u32>, OutboxError> {
        match self.tree.get(key)? {
            Some(v) => match Item::decode(&v) {
                Ok((Item::Record(r), _)) => Ok(Some(r.revision)),
                Ok(_) => Ok(None),
                Err(message) => Err(OutboxError::Decode { key: String::from_utf8_lossy(key).into_owned(), message }),
            },
            None => Ok(None),
        }
    }
}

/// Accumulates one atomic write of the feeder: queue chunks, day index entries, the cursor and `next_item`.
pub(super) struct Writer<'a> {
    pub(super) outbox: &'a Outbox,
    pub(super) batch: sled::Batch,
    pub(super) pending: usize,
    pub(super) cursor: u64,
    pub(super) next_item: u64,
    pub(super) now_ms: i64,
    /// The chunk being filled: its first item and its items.
    pub(super) chunk_first: u64,
    pub(super) chunk: Vec<Vec<u8>>,
    pub(super) chunk_bytes: usize,
    /// Day index chunks of punches being filled, by key prefix (`D` date `p`).
    pub(super) day_chunks: BTreeMap<Vec<u8>, DayChunk>,
}

impl<'a> Writer<'a> {
    pub(super) fn new(outbox: &'a Outbox, now_ms: i64) -> Result<Writer<'a>, OutboxError> {
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
    pub(super) fn push_punch(&mut self, item: Item, date: &str) {
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
    pub(super) fn seal_day(&mut self, prefix: Vec<u8>) {
        if let Some((first, items, _)) = self.day_chunks.remove(&prefix) {
            let mut key = prefix;
            key.extend_from_slice(&first.to_be_bytes());
            self.batch.insert(key, encode_chunk(items.iter().map(Vec::as_slice)));
        }
    }

    pub(super) fn push(&mut self, item: Item, day_key: Option<Vec<u8>>) {
        let bytes = item.encode(self.now_ms);
        if let Some(k) = day_key {
            self.batch.insert(k, bytes.clone());
        }
        self.push_raw(bytes);
    }

    pub(super) fn push_raw(&mut self, bytes: Vec<u8>) {
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
    pub(super) fn seal(&mut self) {
        if self.chunk.is_empty() {
            return;
        }
        let value = encode_chunk(self.chunk.iter().map(Vec::as_slice));
        self.batch.insert(&q_key(self.chunk_first), value);
        self.chunk.clear();
        self.chunk_bytes = 0;
    }

    pub(super) fn apply(&mut self) -> Result<(), OutboxError> {
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
pub(super) fn encode_chunk<'a>(items: impl ExactSizeIterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    crate::chunk::encode(CHUNK_V1, items)
}
