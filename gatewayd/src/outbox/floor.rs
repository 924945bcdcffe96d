//! What is still undelivered, as retention needs it: the lowest store sequence number of a punch in the queue and the
//! earliest work date of anything in it. Retention removes nothing at or after either.

use super::*;

/// The oldest undelivered data in the queue (`None`: nothing of that kind is queued).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Floor {
    /// The lowest store sequence number of a queued punch.
    pub punch_seq: Option<u64>,
    /// The earliest work date of a queued punch (local date of its device time), record or digest.
    pub date: Option<jiff::civil::Date>,
    /// Items in the queue.
    pub items: u64,
}

impl Outbox {
    /// Reads the whole queue (blocking; the queue is what is undelivered, usually little). A queued punch the store no
    /// longer knows cannot hold anything back and is skipped.
    pub fn undelivered_floor(&self, store: &Store) -> Result<Floor, OutboxError> {
        let mut floor = Floor::default();
        let mut lower_date = |d: jiff::civil::Date| floor_min(&mut floor.date, d);
        let mut seqs: Option<u64> = None;
        let mut items = 0u64;
        for entry in self.tree.scan_prefix([K_QUEUE]) {
            let (k, v) = entry?;
            for (_, stored) in chunk_items(item_of(&k), &v).map_err(decode_err(&k))? {
                items += 1;
                let (item, _) = Item::decode(stored).map_err(|message| OutboxError::Decode {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    message,
                })?;
                match item {
                    Item::Punch(p) => {
                        if let Ok(t) = jiff::Timestamp::from_millisecond(p.device_time_ms) {
                            lower_date(t.to_zoned(self.tz.clone()).date());
                        }
                        if let Some(seq) = store.seq_by_id(&p.punch_id)? {
                            seqs = Some(seqs.map_or(seq, |s| s.min(seq)));
                        }
                    }
                    Item::Record(r) => {
                        if let Ok(d) = r.work_date.parse() {
                            lower_date(d);
                        }
                    }
                    Item::Digest(d) => {
                        if let Ok(d) = d.work_date.parse() {
                            lower_date(d);
                        }
                    }
                }
            }
        }
        floor.punch_seq = seqs;
        floor.items = items;
        Ok(floor)
    }
}

fn floor_min(slot: &mut Option<jiff::civil::Date>, d: jiff::civil::Date) {
    *slot = Some(slot.map_or(d, |s| s.min(d)));
}
