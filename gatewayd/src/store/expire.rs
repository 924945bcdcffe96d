//! Expiry: removing delivered punches past retention, with their index entries.
//!
//! Punches live in parts (see [`super::parts`]). [`Store::rotate`] starts a new part once the newest holds a period of
//! punches; [`Store::expire`] deletes every part but the newest whose punches are all expirable (see [`Expiry`]),
//! database files and all, which gives the disk back at once. Part 0 of a store made before partitions (the main
//! database's trees) cannot be deleted as a whole: its punches are removed value by value, as below, and sled reuses
//! their space.
//!
//! # Part 0, value by value
//! The log is in arrival order, so the punches to remove are at its head. The walk removes every log value whose
//! punches are all expirable; a value with one punch that must stay is kept whole and looked at again by the next pass.
//! It stops at the first value received after the cutoff, and it never removes the newest value of the store (the
//! log's end is what the open-time damage check compares with the watermark, and what numbers the next punch). Each
//! round (at most [`ROUND_PUNCHES`] punches) first rewrites the index postings without the round's punches (one atomic
//! batch on the index tree), then removes the log values (one atomic batch on the log tree). sled recovers a prefix of
//! its operations, so a crash leaves either nothing done, or the index entries gone with the values still in the log:
//! the next pass finds those values again at the head of the log, rewrites postings that no longer hold them (nothing
//! to do) and removes them. No reader ever follows an index entry to a removed value; a reader that got its postings
//! just before a round skips what the round removed.
//!
//! # Whole parts
//! A part goes when it is not the newest, every punch in it is indexed and at most [`Expiry::through_seq`], the next
//! part began before the cutoff (so every punch of this one arrived before it, by the clock retention runs on), and its
//! latest device time (the last key of its time index) falls on a date before [`Expiry::date_before`]. It is taken out of the store's list first (readers holding it finish), and
//! its directory renamed, then removed ([`super::parts::delete`]); a crash in between leaves a renamed directory that
//! the next open removes, never a half part.

use super::*;

/// The most punches one round of [`Store::expire`] removes.
pub const ROUND_PUNCHES: usize = 4096;

/// Which punches may go: received before `received_before_ms`, of a device date before `date_before` (site time zone),
/// and at most sequence number `through_seq` (the outbox has delivered every punch up to it).
#[derive(Clone, Debug)]
pub struct Expiry {
    pub received_before_ms: i64,
    pub date_before: jiff::civil::Date,
    pub through_seq: u64,
    pub tz: jiff::tz::TimeZone,
}

impl Expiry {
    fn allows(&self, p: &Punch) -> bool {
        p.seq <= self.through_seq
            && p.received_time_ms < self.received_before_ms
            && self.dated_before(p.device_time_ms).unwrap_or(true)
    }

    /// Whether device time `t_ms` falls on a date before [`Expiry::date_before`]; `None` for a time out of range.
    fn dated_before(&self, t_ms: i64) -> Option<bool> {
        let t = jiff::Timestamp::from_millisecond(t_ms).ok()?;
        Some(t.to_zoned(self.tz.clone()).date() < self.date_before)
    }
}

/// What one [`Store::expire`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    pub punches: u64,
    pub log_values: u64,
    pub index_keys_rewritten: u64,
    /// Whole parts deleted.
    pub parts: u64,
    /// Bytes of the deleted parts' files.
    pub bytes: u64,
}

impl Store {
    /// Starts a new part when the newest holds punches and began before `now_ms - period_ms` (both by the clock
    /// retention runs on). Returns whether it did. Blocking (creating a part makes and syncs a directory).
    pub fn rotate(&self, now_ms: i64, period_ms: i64) -> Result<bool, StoreError> {
        let Some(newest) = self.parts().last().cloned() else { return Ok(false) };
        if newest.started() > now_ms {
            // Began "after now": the clock is behind the one the part was stamped with. Count from now.
            newest.restamp(now_ms)?;
        }
        if newest.log.is_empty() || newest.started() >= now_ms.saturating_sub(period_ms) {
            return Ok(false);
        }
        // No insert runs while the list is held for writing, so `written` is the last number the newest part got.
        let mut parts = self.inner.parts.write().unwrap_or_else(|p| p.into_inner());
        let first = self.inner.written.load(Ordering::Acquire) + 1;
        let part = Part::create(&self.inner.path, first, now_ms, self.inner.cache_mb)?;
        parts.push(Arc::new(part));
        tracing::info!(first, parts = parts.len(), "store: new punch partition");
        Ok(true)
    }

    /// Removes the punches `expiry` allows: whole parts, and in part 0 whole log values, with their index entries. Only
    /// indexed punches are removed. Returns what went.
    pub fn expire(&self, expiry: &Expiry) -> Result<Expired, StoreError> {
        let mut total = self.expire_parts(expiry)?;
        let Some(main) = self.parts().into_iter().find(|p| !p.own_dir) else { return Ok(total) };
        let mut from = 0u64;
        loop {
            let (round, next, done) = self.expire_round(&main, expiry, from)?;
            total.punches += round.punches;
            total.log_values += round.log_values;
            total.index_keys_rewritten += round.index_keys_rewritten;
            if done {
                return Ok(total);
            }
            from = next;
        }
    }

    /// Deletes the parts (not the newest) that hold nothing but expirable punches.
    fn expire_parts(&self, expiry: &Expiry) -> Result<Expired, StoreError> {
        let mut total = Expired::default();
        let parts = self.parts();
        let indexed = self.inner.indexed.load(Ordering::Acquire);
        for (part, next) in parts.iter().zip(parts.iter().skip(1)) {
            if !part.own_dir {
                continue;
            }
            let Some(last) = part.last_seq()? else { continue };
            if last > indexed || last > expiry.through_seq {
                continue;
            }
            // Every punch of the part arrived before the next part began.
            if next.started() >= expiry.received_before_ms {
                continue;
            }
            let latest_device = match part.index.scan_prefix([index::K_TIME]).next_back().transpose()? {
                Some((k, v)) => posting(&k, &v)?.iter().map(|&(t, _)| t).max(),
                None => None,
            };
            let date_ok = latest_device.is_none_or(|t| expiry.dated_before(t) == Some(true));
            if !date_ok {
                continue;
            }
            let punches = last + 1 - part.first;
            let bytes = part.size_on_disk();
            {
                let mut list = self.inner.parts.write().unwrap_or_else(|p| p.into_inner());
                list.retain(|p| !Arc::ptr_eq(p, part));
            }
            lock(&self.inner.dirty).retain(|p| !Arc::ptr_eq(p, part));
            self.inner.expired_through.fetch_max(last, Ordering::AcqRel);
            parts::delete(&part.path)?;
            tracing::info!(first = part.first, last, bytes, "store: punch partition past retention deleted");
            total.parts += 1;
            total.punches += punches;
            total.bytes += bytes;
        }
        Ok(total)
    }

    /// One round from log key `from` on: the values to remove (at most [`ROUND_PUNCHES`] punches), then their index
    /// entries, then the values. Returns what went, where the next round starts, and whether the walk is over.
    fn expire_round(&self, part: &Part, expiry: &Expiry, from: u64) -> Result<(Expired, u64, bool), StoreError> {
        // One indexing round at a time: the index follower never writes postings of punches this round removes.
        let _round = lock(&self.inner.indexing);
        let indexed = self.inner.indexed.load(Ordering::Acquire);
        // The newest value of the store stays; in an older part every value may go.
        let is_newest = self.parts().last().is_some_and(|p| std::ptr::eq(p.as_ref(), part));
        let newest = match part.log.last()? {
            Some((k, _)) if is_newest => log_key(&k)?,
            Some(_) => u64::MAX,
            None => return Ok((Expired::default(), from, true)),
        };
        let mut victims: Vec<(u64, Vec<Punch>)> = Vec::new();
        let mut count = 0usize;
        let mut next = from;
        let mut done = true;
        for entry in part.log.range(from.to_be_bytes()..) {
            let (k, v) = entry?;
            let first = log_key(&k)?;
            if first >= newest {
                break;
            }
            let punches = codec::decode_log_value(first, &v)
                .map_err(|message| StoreError::Decode { key: format!("seq {first}"), message })?;
            next = first + 1;
            // Arrival order: the first punch received after the cutoff ends the walk.
            if punches.iter().any(|p| p.received_time_ms >= expiry.received_before_ms) {
                break;
            }
            let last = punches.last().map_or(first, |p| p.seq);
            if last > indexed {
                break;
            }
            if punches.iter().all(|p| expiry.allows(p)) {
                count += punches.len();
                victims.push((first, punches));
            }
            if count >= ROUND_PUNCHES {
                done = false;
                break;
            }
        }
        if victims.is_empty() {
            return Ok((Expired::default(), next, true));
        }
        let gone: HashSet<u64> = victims.iter().flat_map(|(_, ps)| ps.iter().map(|p| p.seq)).collect();
        let prefixes: std::collections::BTreeSet<Vec<u8>> =
            victims.iter().flat_map(|(_, ps)| ps.iter().flat_map(index::entry_prefixes)).collect();
        let mut index_batch = sled::Batch::default();
        let mut rewritten = 0u64;
        for prefix in &prefixes {
            if prefix.first() == Some(&index::K_ID) {
                index_batch.remove(prefix.as_slice());
                rewritten += 1;
                continue;
            }
            for entry in part.index.scan_prefix(prefix) {
                let (k, v) = entry?;
                match index::without(&v, |seq| gone.contains(&seq))
                    .map_err(|message| StoreError::Decode { key: format!("index {k:?}"), message })?
                {
                    None => {}
                    Some(None) => {
                        index_batch.remove(k);
                        rewritten += 1;
                    }
                    Some(Some(value)) => {
                        index_batch.insert(k, value);
                        rewritten += 1;
                    }
                }
            }
        }
        part.index.apply_batch(index_batch)?;
        let mut log_batch = sled::Batch::default();
        for (first, _) in &victims {
            log_batch.remove(&first.to_be_bytes());
        }
        part.log.apply_batch(log_batch)?;
        if let Some(max) = gone.iter().max() {
            self.inner.expired_through.fetch_max(*max, Ordering::AcqRel);
        }
        let expired = Expired {
            punches: gone.len() as u64,
            log_values: victims.len() as u64,
            index_keys_rewritten: rewritten,
            ..Expired::default()
        };
        Ok((expired, next, done))
    }

    /// True when `seq` may have been removed by expiry in this process: a reader that found it in the index just before
    /// a round and cannot read it skips it.
    pub(super) fn maybe_expired(&self, seq: u64) -> bool {
        seq <= self.inner.expired_through.load(Ordering::Acquire)
    }
}
