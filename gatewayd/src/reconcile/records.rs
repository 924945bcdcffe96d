//! The engine's own sled trees: the latest revision of every record, and the engine's bookkeeping.
//!
//! # Key layout
//! | tree                 | key                                        | value                                        |
//! |----------------------|--------------------------------------------|----------------------------------------------|
//! | `records`            | work_date `YYYY-MM-DD` 0x00 employee 0x00 shift | [`ENCODING_V1`] + protobuf `AttendanceRecord` (latest revision) |
//! | `records_by_employee`| employee 0x00 work_date 0x00 shift          | empty (index)                                |
//! | `engine`             | `applied_seq`                              | u64 BE: every punch up to this store sequence number has been applied and forwarded |
//! | `engine`             | `watermarks`                               | JSON [`Watermarks`]                          |
//! | `engine`             | `rules/` version:u32 BE                    | the rules text of that version (empty text = no rules file) |
//! | `engine`             | `rules_current`                            | u32 BE: the version in force                 |
//! | `engine`             | `expired_before`                           | `YYYY-MM-DD`: records of earlier dates were removed by retention |
//!
//! # Atomicity
//! [`RecordStore::commit`] writes one engine batch — its changes into the change log, the record revisions, the applied
//! sequence number and the watermarks — in ONE sled transaction over the four trees. After a crash either all of a
//! batch is there or none of it: a restart re-derives records from punches, compares with these revisions and finds
//! exactly what was not yet committed. Durability comes with the following [`crate::reconcile::changes::ChangeLog::flush`].

use std::collections::BTreeMap;

use jiff::civil::Date;
use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::engine::Watermarks;
use crate::proto::upstream::AttendanceRecord;
use crate::reconcile::changes::{self, Change, ChangeLog};
use crate::reconcile::roster::Roster;
use crate::store::StoreError;

/// The encoding version byte of stored records.
pub const ENCODING_V1: u8 = 1;

const APPLIED_SEQ: &[u8] = b"applied_seq";
const WATERMARKS: &[u8] = b"watermarks";
const RULES_PREFIX: &[u8] = b"rules/";
const RULES_CURRENT: &[u8] = b"rules_current";
const EXPIRED_BEFORE: &[u8] = b"expired_before";
/// The most records one expiry batch removes.
const EXPIRE_CHUNK: usize = 4096;

/// A filter for [`RecordStore::query`]. Dates are inclusive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordQuery {
    pub from: Option<Date>,
    pub to: Option<Date>,
    pub employee: Option<String>,
    /// Employees whose roster department is this one.
    pub department: Option<String>,
    /// At most this many records (0 = no limit).
    pub limit: usize,
}

/// The engine's trees. Cheap to clone.
#[derive(Clone)]
pub struct RecordStore {
    records: sled::Tree,
    by_employee: sled::Tree,
    meta: sled::Tree,
}

impl std::fmt::Debug for RecordStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStore").field("records", &self.records.len()).finish()
    }
}

fn record_key(date: &str, employee: &str, shift: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(date.len() + employee.len() + shift.len() + 2);
    k.extend_from_slice(date.as_bytes());
    k.push(0);
    k.extend_from_slice(employee.as_bytes());
    k.push(0);
    k.extend_from_slice(shift.as_bytes());
    k
}

fn employee_key(employee: &str, date: &str, shift: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(date.len() + employee.len() + shift.len() + 2);
    k.extend_from_slice(employee.as_bytes());
    k.push(0);
    k.extend_from_slice(date.as_bytes());
    k.push(0);
    k.extend_from_slice(shift.as_bytes());
    k
}

/// Encodes a record as stored.
pub fn encode(r: &AttendanceRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + r.encoded_len());
    out.push(ENCODING_V1);
    r.encode(&mut out).unwrap_or_default();
    out
}

/// Decodes a stored record.
pub fn decode(bytes: &[u8]) -> Result<AttendanceRecord, String> {
    let (&version, body) = bytes.split_first().ok_or("empty value")?;
    if version != ENCODING_V1 {
        return Err(format!("unknown record encoding version {version} (this build reads {ENCODING_V1})"));
    }
    AttendanceRecord::decode(body).map_err(|e| format!("protobuf: {e}"))
}

fn decode_at(key: &[u8], value: &[u8]) -> Result<AttendanceRecord, StoreError> {
    decode(value).map_err(|message| StoreError::Decode {
        key: format!("record {}", String::from_utf8_lossy(key).replace('\0', "/")),
        message,
    })
}

fn be_u64(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn be_u32(v: &[u8]) -> u32 {
    v.try_into().map(u32::from_be_bytes).unwrap_or(0)
}

impl RecordStore {
    pub fn open(db: &sled::Db) -> Result<RecordStore, StoreError> {
        Ok(RecordStore {
            records: db.open_tree("records")?,
            by_employee: db.open_tree("records_by_employee")?,
            meta: db.open_tree("engine")?,
        })
    }

    /// Number of records kept.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The latest revision of one record.
    pub fn get(&self, work_date: &str, employee: &str, shift: &str) -> Result<Option<AttendanceRecord>, StoreError> {
        let key = record_key(work_date, employee, shift);
        match self.records.get(&key)? {
            Some(v) => decode_at(&key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Records with work dates in `[from, to]` (inclusive), by date then employee.
    pub fn between(&self, from: Date, to: Date) -> impl Iterator<Item = Result<AttendanceRecord, StoreError>> + '_ {
        let lo = from.to_string().into_bytes();
        let mut hi = to.to_string().into_bytes();
        hi.push(1);
        self.records.range(lo..hi).map(|item| {
            let (k, v) = item?;
            decode_at(&k, &v)
        })
    }

    /// Records matching a query, by date then employee (or by employee then date when filtering by employee or
    /// department). `roster` gives the members of a department.
    pub fn query(&self, q: &RecordQuery, roster: &Roster) -> Result<Vec<AttendanceRecord>, StoreError> {
        let from = q.from.unwrap_or(Date::MIN);
        let to = q.to.unwrap_or(Date::MAX);
        let limit = if q.limit == 0 { usize::MAX } else { q.limit };
        let mut out = Vec::new();
        let employees: Option<Vec<String>> = match (&q.employee, &q.department) {
            (Some(e), Some(d)) => {
                Some(if roster.get(e).is_some_and(|x| &x.department == d) { vec![e.clone()] } else { vec![] })
            }
            (Some(e), None) => Some(vec![e.clone()]),
            (None, Some(d)) => Some(roster.in_department(d).map(|e| e.id.clone()).collect()),
            (None, None) => None,
        };
        match employees {
            None => {
                for r in self.between(from, to) {
                    if out.len() >= limit {
                        break;
                    }
                    out.push(r?);
                }
            }
            Some(list) => {
                for e in list {
                    let lo = employee_key(&e, &from.to_string(), "");
                    let mut hi = employee_key(&e, &to.to_string(), "");
                    hi.pop();
                    hi.push(1);
                    for item in self.by_employee.range(lo..hi) {
                        if out.len() >= limit {
                            return Ok(out);
                        }
                        let (k, _) = item?;
                        let mut parts = k.split(|&b| b == 0);
                        let (_, date, shift) = (parts.next(), parts.next(), parts.next());
                        let date = String::from_utf8_lossy(date.unwrap_or_default());
                        let shift = String::from_utf8_lossy(shift.unwrap_or_default());
                        if let Some(r) = self.get(&date, &e, &shift)? {
                            out.push(r);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every punch up to this store sequence number has been applied and forwarded.
    /// The date before which retention removed the records (and the punches), if it ever ran: such a date is never
    /// reconciled again.
    pub fn expired_before(&self) -> Result<Option<Date>, StoreError> {
        Ok(self.meta.get(EXPIRED_BEFORE)?.and_then(|v| std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok())))
    }

    /// Removes the records of work dates before `before`, and their employee index entries. The date is written
    /// first (so the engine stops reconciling those dates), then the index entries, then the records, in batches:
    /// after a crash the next call removes the rest. Returns the number of records removed. Blocking.
    pub fn expire_before(&self, before: Date) -> Result<u64, StoreError> {
        if self.expired_before()?.is_none_or(|b| b < before) {
            self.meta.insert(EXPIRED_BEFORE, before.to_string().as_bytes())?;
        }
        let hi = before.to_string().into_bytes();
        let mut removed = 0u64;
        loop {
            let mut keys = Vec::new();
            for k in self.records.range(..hi.clone()).keys().take(EXPIRE_CHUNK) {
                keys.push(k?);
            }
            if keys.is_empty() {
                return Ok(removed);
            }
            let mut by_employee = sled::Batch::default();
            let mut records = sled::Batch::default();
            for k in &keys {
                let mut parts = k.splitn(3, |&b| b == 0);
                let (date, employee, shift) = (parts.next(), parts.next(), parts.next());
                if let (Some(date), Some(employee), Some(shift)) = (date, employee, shift) {
                    let (date, employee, shift) = (
                        String::from_utf8_lossy(date),
                        String::from_utf8_lossy(employee),
                        String::from_utf8_lossy(shift),
                    );
                    by_employee.remove(employee_key(&employee, &date, &shift));
                }
                records.remove(k.clone());
            }
            self.by_employee.apply_batch(by_employee)?;
            self.records.apply_batch(records)?;
            removed += keys.len() as u64;
        }
    }

    pub fn applied_seq(&self) -> Result<u64, StoreError> {
        Ok(self.meta.get(APPLIED_SEQ)?.map(|v| be_u64(&v)).unwrap_or(0))
    }

    pub fn watermarks(&self) -> Result<Watermarks, StoreError> {
        match self.meta.get(WATERMARKS)? {
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| StoreError::Decode { key: "engine watermarks".into(), message: e.to_string() }),
            None => Ok(Watermarks::default()),
        }
    }

    /// Every stored rules version with its text.
    pub fn rules_versions(&self) -> Result<BTreeMap<u32, String>, StoreError> {
        let mut out = BTreeMap::new();
        for item in self.meta.scan_prefix(RULES_PREFIX) {
            let (k, v) = item?;
            out.insert(be_u32(&k[RULES_PREFIX.len()..]), String::from_utf8_lossy(&v).into_owned());
        }
        Ok(out)
    }

    /// The version in force (0 = none stored yet).
    pub fn current_rules(&self) -> Result<u32, StoreError> {
        Ok(self.meta.get(RULES_CURRENT)?.map(|v| be_u32(&v)).unwrap_or(0))
    }

    /// Puts rules text in force: the current version if the text is the same, else a new version. Returns the version
    /// and whether it is new.
    pub fn register_rules(&self, text: &str) -> Result<(u32, bool), StoreError> {
        let versions = self.rules_versions()?;
        let current = self.current_rules()?;
        if current > 0 && versions.get(&current).is_some_and(|t| t == text) {
            return Ok((current, false));
        }
        let version = versions.keys().next_back().copied().unwrap_or(0) + 1;
        let mut key = RULES_PREFIX.to_vec();
        key.extend_from_slice(&version.to_be_bytes());
        let mut batch = sled::Batch::default();
        batch.insert(key, text.as_bytes());
        batch.insert(RULES_CURRENT, &version.to_be_bytes());
        self.meta.apply_batch(batch)?;
        Ok((version, true))
    }

    /// Writes one engine batch atomically: `changes` appended to the change log, record revisions into the record
    /// trees, `applied_seq` and the watermarks. Returns the change log's last sequence number.
    pub fn commit(
        &self,
        log: &ChangeLog,
        changes: &[Change],
        applied_seq: u64,
        marks: &Watermarks,
    ) -> Result<u64, StoreError> {
        let first = log.last_seq()? + 1;
        let chunks = changes::encode_chunks(first, changes);
        let records: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Record(r) => Some((
                    record_key(&r.work_date, &r.employee_id, &r.shift_id),
                    employee_key(&r.employee_id, &r.work_date, &r.shift_id),
                    encode(r),
                )),
                _ => None,
            })
            .collect();
        let marks_json = serde_json::to_vec(marks).unwrap_or_default();
        let result: Result<(), TransactionError<()>> = (log.tree(), &self.records, &self.by_employee, &self.meta)
            .transaction(|(c, r, e, m)| {
                for (key, value) in &chunks {
                    c.insert(key, value.as_slice())?;
                }
                for (rk, ek, value) in &records {
                    r.insert(rk.as_slice(), value.as_slice())?;
                    e.insert(ek.as_slice(), &[])?;
                }
                m.insert(APPLIED_SEQ, &applied_seq.to_be_bytes())?;
                m.insert(WATERMARKS, marks_json.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match result {
            Ok(()) => Ok(first + changes.len() as u64 - 1),
            Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e)),
            Err(TransactionError::Abort(())) => {
                Err(StoreError::Decode { key: "engine batch".into(), message: "transaction aborted".into() })
            }
        }
    }
}
