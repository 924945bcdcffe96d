//! Reading punches: by sequence number, by id, after a sequence number, and through the time, device and subject
//! postings of the index.

use super::*;

impl Store {
    /// The first sequence number of the log value holding `seq`, and the value.
    pub(super) fn value_holding(&self, seq: u64) -> Result<Option<(u64, sled::IVec)>, StoreError> {
        let Some(part) = self.part_for(seq) else { return Ok(None) };
        match part.log.range(..=seq.to_be_bytes()).next_back().transpose()? {
            Some((k, v)) => {
                let first = log_key(&k)?;
                Ok(Some((first, v)))
            }
            None => Ok(None),
        }
    }

    /// The punch with sequence number `seq`.
    pub fn get(&self, seq: u64) -> Result<Punch, StoreError> {
        let decode_error = |message| StoreError::Decode { key: format!("seq {seq}"), message };
        let Some((first, value)) = self.value_holding(seq)? else {
            return Err(decode_error("missing".into()));
        };
        let punches = codec::split_log_value(&value).map_err(decode_error)?;
        match punches.get((seq - first) as usize) {
            Some(bytes) => codec::decode_at(seq, bytes).map_err(decode_error),
            None => Err(decode_error("missing".into())),
        }
    }

    /// The punch with this `punch_id`, if stored.
    pub fn get_by_id(&self, punch_id: &str) -> Result<Option<Punch>, StoreError> {
        let seq = {
            let mut unindexed = lock(&self.inner.unindexed);
            self.seq_of(&mut unindexed, punch_id)?
        };
        seq.map(|seq| self.get(seq)).transpose()
    }

    /// The sequence number of the punch with this `punch_id`, if stored.
    pub fn seq_by_id(&self, punch_id: &str) -> Result<Option<u64>, StoreError> {
        let mut unindexed = lock(&self.inner.unindexed);
        self.seq_of(&mut unindexed, punch_id)
    }

    /// Punches with sequence number greater than `after`, in order (for stages that follow the store).
    pub fn after(&self, after: u64) -> impl Iterator<Item = Result<Punch, StoreError>> + '_ {
        let from = after.saturating_add(1);
        // Start at the value holding `from`: a block may begin before it.
        let (start, error) = match self.value_holding(from) {
            Ok(found) => (found.map_or(from, |(first, _)| first), None),
            Err(e) => (from, Some(e)),
        };
        // The part holding `start`, then every later one.
        let parts: std::collections::VecDeque<Arc<Part>> = {
            let all = self.parts();
            let from_part = all.iter().rposition(|p| p.first <= start).unwrap_or(0);
            all.into_iter().skip(from_part).collect()
        };
        LogIter { parts, start, values: None, after, ready: Vec::new().into_iter(), error }
    }

    /// `(device_time, seq)` of the punches in `[from_ms, to_ms)` of one index group, indexed or not, in time order.
    pub(super) fn postings(
        &self,
        group: &[u8],
        width: i64,
        from_ms: i64,
        to_ms: i64,
        tail_matches: impl Fn(&Punch) -> bool,
    ) -> Result<Vec<(i64, u64)>, StoreError> {
        if from_ms >= to_ms {
            return Ok(Vec::new());
        }
        // Read the cursor first: what the index holds up to it is complete; the log after it is scanned.
        let cursor = self.inner.indexed.load(Ordering::Acquire);
        let (lo, hi) = index::range(group, width, from_ms, to_ms);
        let mut found = Vec::new();
        for part in self.parts() {
            for r in part.index.range::<Vec<u8>, _>((Bound::Included(lo.clone()), Bound::Included(hi.clone()))) {
                let (k, v) = r?;
                found.extend(posting(&k, &v)?.into_iter().filter(|&(t, _)| t >= from_ms && t < to_ms));
            }
        }
        for p in self.after(cursor) {
            let p = p?;
            if p.device_time_ms >= from_ms && p.device_time_ms < to_ms && tail_matches(&p) {
                found.push((p.device_time_ms, p.seq));
            }
        }
        found.sort_unstable();
        found.dedup();
        Ok(found)
    }

    /// Loads the punches of `postings` lazily, keeping those `keep` accepts; an error of the lookup comes first.
    pub(super) fn load(
        &self,
        postings: Result<Vec<(i64, u64)>, StoreError>,
        keep: impl Fn(&Punch) -> bool + 'static,
    ) -> impl Iterator<Item = Result<Punch, StoreError>> + '_ {
        let (seqs, error) = match postings {
            Ok(v) => (v, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        error.map(Err).into_iter().chain(
            seqs.into_iter()
                .map(move |(_, seq)| (seq, self.get(seq)))
                .filter(move |(seq, r)| r.is_ok() || !self.maybe_expired(*seq))
                .map(|(_, r)| r)
                .filter(move |r| r.as_ref().map_or(true, &keep)),
        )
    }

    /// Punches with device time in `[from_ms, to_ms)`, in time order.
    pub fn by_time(&self, from_ms: i64, to_ms: i64) -> impl Iterator<Item = Result<Punch, StoreError>> + '_ {
        self.load(self.postings(&[index::K_TIME], index::TIME_BUCKET, from_ms, to_ms, |_| true), |_| true)
    }

    /// Punches of one device with device time in `[from_ms, to_ms)`, in time order.
    pub fn by_device(
        &self,
        device: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Iterator<Item = Result<Punch, StoreError>> + '_ {
        let group = index::device_group(device);
        let postings = self.postings(&group, index::DEVICE_BUCKET, from_ms, to_ms, |p| p.device_id.as_str() == device);
        self.load(postings, |_| true)
    }

    /// Punches reported for one employee id or credential with device time in `[from_ms, to_ms)`, in time order.
    pub fn by_subject(
        &self,
        subject: &Subject,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Iterator<Item = Result<Punch, StoreError>> + '_ {
        let group = index::subject_group(subject);
        let postings = self.postings(&group, index::SUBJECT_BUCKET, from_ms, to_ms, |p| &p.subject == subject);
        let subject = subject.clone();
        self.load(postings, move |p| p.subject == subject)
    }
}

/// The punches of the log after a sequence number, value by value.
pub(super) struct LogIter {
    /// The parts still to read, in order.
    parts: std::collections::VecDeque<Arc<Part>>,
    /// The log key to start the first part at.
    start: u64,
    values: Option<sled::Iter>,
    after: u64,
    ready: std::vec::IntoIter<Punch>,
    /// An error finding where to start, reported first.
    error: Option<StoreError>,
}

impl Iterator for LogIter {
    type Item = Result<Punch, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        loop {
            if let Some(p) = self.ready.next() {
                return Some(Ok(p));
            }
            let next = match self.values.as_mut() {
                Some(values) => values.next(),
                None => None,
            };
            let (k, v) = match next {
                Some(Ok(kv)) => kv,
                Some(Err(e)) => return Some(Err(e.into())),
                None => {
                    let part = self.parts.pop_front()?;
                    self.values = Some(part.log.range(self.start.to_be_bytes()..));
                    continue;
                }
            };
            let first = match log_key(&k) {
                Ok(first) => first,
                Err(e) => return Some(Err(e)),
            };
            match codec::decode_log_value(first, &v) {
                Ok(punches) => {
                    let after = self.after;
                    self.ready = punches.into_iter().filter(|p| p.seq > after).collect::<Vec<_>>().into_iter();
                }
                Err(message) => return Some(Err(StoreError::Decode { key: format!("seq {first}"), message })),
            }
        }
    }
}
