//! Expiry: removing delivered punches past retention, with their index entries.
//!
//! The log is in arrival order, so the punches to remove are at its head. [`Store::expire`] walks the log from the
//! first value and removes every value whose punches are all expirable (see [`Expiry`]); a value with one punch that
//! must stay is kept whole and looked at again by the next pass. It stops at the first value received after the
//! cutoff, and it never removes the newest value of the log (the log's end is what the open-time damage check compares
//! with the watermark, and what numbers the next punch).
//!
//! # Order and crashes
//! Each round (at most [`ROUND_PUNCHES`] punches) first rewrites the index postings without the round's punches (one
//! atomic batch on the index tree), then removes the log values (one atomic batch on the log tree). sled recovers a
//! prefix of its operations, so a crash leaves either nothing done, or the index entries gone with the values still in
//! the log: the next pass finds those values again at the head of the log, rewrites postings that no longer hold them
//! (nothing to do) and removes them. No reader ever follows an index entry to a removed value; a reader that got its
//! postings just before a round skips what the round removed.

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
            && jiff::Timestamp::from_millisecond(p.device_time_ms)
                .map(|t| t.to_zoned(self.tz.clone()).date() < self.date_before)
                .unwrap_or(true)
    }
}

/// What one [`Store::expire`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    pub punches: u64,
    pub log_values: u64,
    pub index_keys_rewritten: u64,
}

impl Store {
    /// Removes the punches `expiry` allows (whole log values only) and their index entries. Only indexed punches are
    /// removed. Returns what went.
    pub fn expire(&self, expiry: &Expiry) -> Result<Expired, StoreError> {
        let mut total = Expired::default();
        let mut from = 0u64;
        loop {
            let (round, next, done) = self.expire_round(expiry, from)?;
            total.punches += round.punches;
            total.log_values += round.log_values;
            total.index_keys_rewritten += round.index_keys_rewritten;
            if done {
                return Ok(total);
            }
            from = next;
        }
    }

    /// One round from log key `from` on: the values to remove (at most [`ROUND_PUNCHES`] punches), then their index
    /// entries, then the values. Returns what went, where the next round starts, and whether the walk is over.
    fn expire_round(&self, expiry: &Expiry, from: u64) -> Result<(Expired, u64, bool), StoreError> {
        // One indexing round at a time: the index follower never writes postings of punches this round removes.
        let _round = lock(&self.inner.indexing);
        let indexed = self.inner.indexed.load(Ordering::Acquire);
        let newest = match self.inner.log.last()? {
            Some((k, _)) => log_key(&k)?,
            None => return Ok((Expired::default(), from, true)),
        };
        let mut victims: Vec<(u64, Vec<Punch>)> = Vec::new();
        let mut count = 0usize;
        let mut next = from;
        let mut done = true;
        for entry in self.inner.log.range(from.to_be_bytes()..) {
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
            for entry in self.inner.index.scan_prefix(prefix) {
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
        self.inner.index.apply_batch(index_batch)?;
        let mut log_batch = sled::Batch::default();
        for (first, _) in &victims {
            log_batch.remove(&first.to_be_bytes());
        }
        self.inner.log.apply_batch(log_batch)?;
        if let Some(max) = gone.iter().max() {
            self.inner.expired_through.fetch_max(*max, Ordering::AcqRel);
        }
        let expired =
            Expired { punches: gone.len() as u64, log_values: victims.len() as u64, index_keys_rewritten: rewritten };
        Ok((expired, next, done))
    }

    /// True when `seq` may have been removed by expiry in this process: a reader that found it in the index just before
    /// a round and cannot read it skips it.
    pub(super) fn maybe_expired(&self, seq: u64) -> bool {
        seq <= self.inner.expired_through.load(Ordering::Acquire)
    }
}
