//! The day index (`D`, `C`): which items belong to which work date, for digests, `resend_dates` and compaction.

use super::*;

pub(super) fn day_prefix(date: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(12);
    k.push(K_DAY);
    k.extend_from_slice(date.as_bytes());
    k
}

pub(super) fn day_key(date: &str, kind: u8, id: &str) -> Vec<u8> {
    let mut k = day_prefix(date);
    k.push(kind);
    k.extend_from_slice(id.as_bytes());
    k
}

pub(super) fn closed_key(date: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(11);
    k.push(K_CLOSED);
    k.extend_from_slice(date.as_bytes());
    k
}

/// A valid `YYYY-MM-DD` date, as given by a receiver in `resend_dates`.
pub fn valid_date(date: &str) -> bool {
    date.len() == 10 && date.parse::<jiff::civil::Date>().is_ok()
}

impl Outbox {
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
