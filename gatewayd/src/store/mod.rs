//! The durable punch store, on sled 0.34.
//!
//! # Key layout
//! All punch data lives in one sled tree, `punches`, so that one group commit is one atomic `apply_batch`: after a crash
//! either a punch and all its index entries are there, or none of them. Keys start with a one-byte kind:
//!
//! | key                                          | value                        | purpose                              |
//! |----------------------------------------------|------------------------------|--------------------------------------|
//! | `P` seq:u64be                                | encoded punch                | the punch, in arrival order          |
//! | `I` punch_id                                 | seq:u64be                    | idempotency: a re-send finds its seq |
//! | `T` device_time:i64be^sign seq:u64be         | empty                        | punches by device time               |
//! | `D` device_id 0x00 device_time seq           | empty                        | punches by device                    |
//! | `S` kind(`e`/`c`) subject 0x00 device_time seq | empty                      | punches by employee or credential    |
//!
//! Times are Unix milliseconds with the sign bit flipped so that byte order is time order. Device ids and subjects cannot
//! contain 0x00 (checked at ingest). The `meta` tree holds `format` = [`FORMAT`].
//!
//! # Encoding
//! A stored punch is one version byte ([`ENCODING_V1`]) followed by the protobuf `gatewayd.store.v1.StoredPunch`. New
//! fields may be added to the message; a new incompatible layout gets a new version byte, and readers reject versions
//! they do not know with [`StoreError::Decode`] instead of guessing.
//!
//! # Durability point
//! A punch is durable when the `flush` that follows the batch holding it has returned. The ingest writer
//! ([`crate::ingest`]) answers callers only then, and publishes the highest durable sequence number on a watch channel, so
//! later stages (the engine, the outbox) only ever read durable punches. sled's own background flush may make writes durable
//! earlier; nothing relies on it.
//!
//! # Errors
//! Opening or decoding never panics: a locked, corrupt or foreign database is an [`StoreError`] naming the path and what to do.

pub mod codec;

use std::ops::Bound;
use std::path::{Path, PathBuf};

use drivers::sink::Subject;
use drivers::DevicePunch;

use crate::punch::{punch_id, Punch};

/// The store format marker kept in the `meta` tree.
pub const FORMAT: &[u8] = b"gatewayd-punch-store-v1";
/// The encoding version byte of stored punches.
pub const ENCODING_V1: u8 = 1;

const K_PUNCH: u8 = b'P';
const K_ID: u8 = b'I';
const K_TIME: u8 = b'T';
const K_DEVICE: u8 = b'D';
const K_SUBJECT: u8 = b'S';

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: another gatewayd process is using it (only one process may open a sled database)")]
    Locked { path: PathBuf },
    #[error("store {path}: cannot open: {message}. If the files are damaged, move the directory aside and start again; punches not yet delivered upstream are in it")]
    Open { path: PathBuf, message: String },
    #[error("store {path}: not a gatewayd punch store (format marker is {found:?}); refusing to use it")]
    Foreign { path: PathBuf, found: String },
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store: flush failed: {0}")]
    Flush(String),
    #[error("store: stored punch {key} cannot be decoded: {message}")]
    Decode { key: String, message: String },
}

/// The outcome of inserting one punch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inserted {
    pub punch_id: String,
    pub seq: u64,
    pub duplicate: bool,
}

/// The punch store. Cheap to clone (sled handles are reference counted).
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    punches: sled::Tree,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn time_key(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

fn seq_from(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

fn subject_prefix(subject: &Subject) -> Vec<u8> {
    let (kind, value) = match subject {
        Subject::Employee(e) => (b'e', e),
        Subject::Credential(c) => (b'c', c),
    };
    let mut k = Vec::with_capacity(value.len() + 3);
    k.push(K_SUBJECT);
    k.push(kind);
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    k
}

fn device_prefix(device: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(device.len() + 2);
    k.push(K_DEVICE);
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k
}

fn index_key(prefix: &[u8], time_ms: i64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 16);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&time_key(time_ms));
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn punch_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = K_PUNCH;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn id_key(punch_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(punch_id.len() + 1);
    k.push(K_ID);
    k.extend_from_slice(punch_id.as_bytes());
    k
}

impl Store {
    /// Opens (or creates) the store in `dir`. Never panics on a damaged or foreign directory.
    pub fn open(dir: &Path, cache_mb: u64) -> Result<Store, StoreError> {
        let path = dir.to_owned();
        // sled treats a log it cannot parse as empty. If the files were there before, an empty result means damage,
        // not a new store: remember what existed so that case is reported instead of silently starting over.
        let existed = std::fs::metadata(dir.join("db")).map(|m| m.len() > 0).unwrap_or(false);
        let config =
            sled::Config::new().path(dir).cache_capacity(cache_mb.max(1) * 1024 * 1024).flush_every_ms(Some(500));
        // sled 0.34 may panic on some kinds of damage instead of returning an error; contain that here.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(sled::Error::Io(e)))
                if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") =>
            {
                return Err(StoreError::Locked { path })
            }
            Ok(Err(e)) => return Err(StoreError::Open { path, message: e.to_string() }),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "the database files are damaged".into());
                return Err(StoreError::Open { path, message: format!("damaged database ({message})") });
            }
        };
        let meta = db.open_tree("meta").map_err(|e| StoreError::Open { path: path.clone(), message: e.to_string() })?;
        let punches =
            db.open_tree("punches").map_err(|e| StoreError::Open { path: path.clone(), message: e.to_string() })?;
        match meta.get("format").map_err(|e| StoreError::Open { path: path.clone(), message: e.to_string() })? {
            Some(v) if v.as_ref() == FORMAT => {}
            Some(v) => return Err(StoreError::Foreign { path, found: String::from_utf8_lossy(&v).into_owned() }),
            None => {
                if existed {
                    return Err(StoreError::Open {
                        path,
                        message: "the database files exist but hold no readable gatewayd data (damaged, or not a gatewayd store)"
                            .into(),
                    });
                }
                if !punches.is_empty() {
                    return Err(StoreError::Foreign { path, found: "(none)".into() });
                }
                meta.insert("format", FORMAT)?;
                db.flush()?;
            }
        }
        let store = Store { path, db, punches };
        // Read the newest punch back: a store whose tail does not decode is reported now, not on first use.
        if let Some(last) = store.last_seq()? {
            store.get(last)?;
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sled database, for other stages that keep their own trees in it (engine state, outbox).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The highest sequence number stored, if any.
    pub fn last_seq(&self) -> Result<Option<u64>, StoreError> {
        let last = self.punches.scan_prefix([K_PUNCH]).next_back().transpose()?;
        Ok(last.and_then(|(k, _)| seq_from(&k[1..])))
    }

    /// Number of stored punches.
    pub fn count(&self) -> Result<u64, StoreError> {
        Ok(self.punches.scan_prefix([K_ID]).count() as u64)
    }

    /// Bytes the database uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Writes punches in one atomic batch (not yet durable: call [`Store::flush`]). Punches whose `punch_id` is already
    /// stored, or appears earlier in the same batch, are reported as duplicates with the existing sequence number.
    pub fn insert_batch(
        &self,
        gateway_id: &str,
        punches: &[(&str, &DevicePunch)],
        next_seq: &mut u64,
    ) -> Result<Vec<Inserted>, StoreError> {
        let mut batch = sled::Batch::default();
        let mut pending: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(punches.len());
        for &(driver, p) in punches {
            let id = punch_id(gateway_id, p);
            if let Some(&seq) = pending.get(&id) {
                out.push(Inserted { punch_id: id, seq, duplicate: true });
                continue;
            }
            if let Some(existing) = self.punches.get(id_key(&id))? {
                let seq = seq_from(&existing).unwrap_or(0);
                out.push(Inserted { punch_id: id, seq, duplicate: true });
                continue;
            }
            let seq = *next_seq;
            *next_seq += 1;
            let punch = Punch {
                seq,
                punch_id: id.clone(),
                device_id: p.device_id.clone(),
                driver: driver.to_owned(),
                device_seq: p.device_seq,
                method: p.method,
                subject: p.subject.clone(),
                device_time_ms: p.device_time_ms,
                received_time_ms: p.received_time_ms,
                realtime: p.realtime,
                geo: p.geo,
                score: p.score,
                attributes: p.attributes.clone(),
            };
            batch.insert(&punch_key(seq), codec::encode(&punch));
            batch.insert(id_key(&id), &seq.to_be_bytes());
            batch.insert(index_key(&[K_TIME], p.device_time_ms, seq), &[]);
            batch.insert(index_key(&device_prefix(&p.device_id), p.device_time_ms, seq), &[]);
            batch.insert(index_key(&subject_prefix(&p.subject), p.device_time_ms, seq), &[]);
            pending.insert(id.clone(), seq);
            out.push(Inserted { punch_id: id, seq, duplicate: false });
        }
        self.punches.apply_batch(batch)?;
        Ok(out)
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// The punch with sequence number `seq`.
    pub fn get(&self, seq: u64) -> Result<Punch, StoreError> {
        match self.punches.get(punch_key(seq))? {
            Some(v) => codec::decode(&v).map_err(|message| StoreError::Decode { key: format!("seq {seq}"), message }),
            None => Err(StoreError::Decode { key: format!("seq {seq}"), message: "missing".into() }),
        }
    }

    /// The punch with this `punch_id`, if stored.
    pub fn get_by_id(&self, punch_id: &str) -> Result<Option<Punch>, StoreError> {
        match self.punches.get(id_key(punch_id))? {
            Some(v) => match seq_from(&v) {
                Some(seq) => self.get(seq).map(Some),
                None => {
                    Err(StoreError::Decode { key: format!("id {punch_id}"), message: "bad sequence number".into() })
                }
            },
            None => Ok(None),
        }
    }

    /// Punches with sequence number greater than `after`, in order (for stages that follow the store).
    pub fn after(&self, after: u64) -> impl Iterator<Item = Result<Punch, StoreError>> + '_ {
        let start = punch_key(after.saturating_add(1));
        let end = punch_key(u64::MAX);
        self.punches.range(start..=end).map(|r| {
            let (k, v) = r?;
            codec::decode(&v).map_err(|message| StoreError::Decode { key: format!("{:?}", seq_from(&k[1..])), message })
        })
    }

    fn index_scan(
        &self,
        prefix: Vec<u8>,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Iterator<Item = Result<Punch, StoreError>> + '_ {
        let lo = index_key(&prefix, from_ms, 0);
        let hi = index_key(&prefix, to_ms, 0);
        let plen = prefix.len();
        self.punches.range::<Vec<u8>, _>((Bound::Included(lo), Bound::Excluded(hi))).map(move |r| {
            let (k, _) = r?;
            let seq = seq_from(&k[plen + 8..]).unwrap_or(0);
            self.get(seq)
        })
    }

    /// Punches with device time in `[from_ms, to_ms)`, in time order.
    pub fn by_time(&self, from_ms: i64, to_ms: i64) -> impl Iterator<Item = Result<Punch, StoreError>> + '_ {
        self.index_scan(vec![K_TIME], from_ms, to_ms)
    }

    /// Punches of one device with device time in `[from_ms, to_ms)`.
    pub fn by_device(
        &self,
        device: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Iterator<Item = Result<Punch, StoreError>> + '_ {
        self.index_scan(device_prefix(device), from_ms, to_ms)
    }

    /// Punches reported for one employee id or credential with device time in `[from_ms, to_ms)`.
    pub fn by_subject(
        &self,
        subject: &Subject,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Iterator<Item = Result<Punch, StoreError>> + '_ {
        self.index_scan(subject_prefix(subject), from_ms, to_ms)
    }
}
