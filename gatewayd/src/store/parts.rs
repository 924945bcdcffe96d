//! Partitions of the punch log: the log and its index live in one sled database per period, so that retention gives
//! the disk back by deleting whole databases.
//!
//! sled 0.34 reuses the space of removed keys for new writes but shortens its file only when its last segments are
//! free, which a database that keeps taking new punches almost never has: deleting old punches stops the file from
//! growing, it does not make it smaller. A *part* is a sled database of its own under `parts/` in the store directory,
//! holding the trees `punch_log` and `punch_index` for a run of sequence numbers. The newest part takes new punches;
//! [`super::Store::rotate`] starts a new one once the newest holds a period of punches, and retention deletes a part
//! whose punches are all delivered and past `retention_days` ([`super::Store::expire`]), directory and all.
//!
//! A store made before partitions keeps its punches in the main database's trees: that is part 0 ([`Part::main`]),
//! read like any other, and expired key by key; new punches go to the parts under `parts/` once the first rotation
//! made one. A new store starts with a part under `parts/` at once.
//!
//! # Files and crashes
//! A part's directory is `parts/p-{first:020}` where `first` is the first sequence number it may hold. It is made as
//! `parts/tmp-{first}`, with the marker `first` in its tree `part` flushed, then renamed (atomic) and the `parts`
//! directory synced: a crash leaves either no part or a complete one, and a left-over `tmp-` directory is removed at
//! open. A part whose marker is missing or names another sequence number is damage (sled opens unreadable files as an
//! empty database), reported as such. A deleted part is first renamed to `x-{first}` (atomic), then removed; a left-over
//! `x-` directory is removed at open.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{codec, log_key, open_error, seq_from, StoreError, INDEX_TREE, LOG_TREE};

/// The directory of the parts, inside the store directory.
pub const PARTS_DIR: &str = "parts";
const PART_PREFIX: &str = "p-";
const TMP_PREFIX: &str = "tmp-";
const DELETED_PREFIX: &str = "x-";
const PART_TREE: &str = "part";
const PART_FIRST: &[u8] = b"first";
const PART_STARTED: &[u8] = b"started";

/// One sled database of punches (or the main database's punch trees, for part 0 of an older store).
pub struct Part {
    /// The first sequence number this part may hold.
    pub first: u64,
    /// When the part began taking punches (Unix ms, by the clock retention runs on; for part 0 the receipt of its first
    /// punch). A part's punches all arrived before the next part began. See [`Part::started`].
    started_ms: std::sync::atomic::AtomicI64,
    /// The sled directory.
    pub path: PathBuf,
    /// False for part 0 in the main database (it cannot be deleted as a whole).
    pub own_dir: bool,
    pub db: sled::Db,
    /// sled's log file, for the `fdatasync` that completes each flush.
    pub file: Arc<std::fs::File>,
    pub log: sled::Tree,
    pub index: sled::Tree,
    /// The blob files already synced (see [`super::open::sync_blobs`]).
    pub synced_blobs: Arc<Mutex<HashSet<OsString>>>,
}

impl std::fmt::Debug for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Part").field("first", &self.first).field("path", &self.path).finish()
    }
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Open { path: path.to_owned(), message: format!("{what}: {e}") }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| io_error(dir, "cannot sync the directory", e))
}

impl Part {
    /// Part 0: the punch trees of the main database, synced through the main database's files.
    pub fn main(path: &Path, db: &sled::Db, sync: &super::MainSync) -> Result<Part, StoreError> {
        let log = db.open_tree(LOG_TREE).map_err(open_error(path))?;
        let started_ms = match log.first().map_err(open_error(path))? {
            Some((k, v)) => {
                let first = log_key(&k)?;
                codec::decode_log_value(first, &v)
                    .map_err(|message| StoreError::Decode { key: format!("seq {first}"), message })?
                    .iter()
                    .map(|p| p.received_time_ms)
                    .min()
                    .unwrap_or(0)
            }
            None => 0,
        };
        Ok(Part {
            first: 1,
            started_ms: started_ms.into(),
            path: path.to_owned(),
            own_dir: false,
            db: db.clone(),
            file: sync.file.clone(),
            log,
            index: db.open_tree(INDEX_TREE).map_err(open_error(path))?,
            synced_blobs: sync.synced_blobs.clone(),
        })
    }

    /// Opens the part in `dir` (named `p-{first}`), checking its marker.
    pub fn open(dir: &Path, first: u64, cache_mb: u64) -> Result<Part, StoreError> {
        let db = super::open::open_sled(dir, cache_mb)?;
        let tree = db.open_tree(PART_TREE).map_err(open_error(dir))?;
        let marker = tree.get(PART_FIRST).map_err(open_error(dir))?;
        let started_ms =
            tree.get(PART_STARTED).map_err(open_error(dir))?.as_deref().and_then(seq_from).map_or(0, |v| v as i64);
        if marker.as_deref().and_then(seq_from) != Some(first) {
            return Err(StoreError::Open {
                path: dir.to_owned(),
                message: "damaged database: a punch partition without its marker (its files cannot be read)".into(),
            });
        }
        let file = std::fs::File::open(dir.join("db")).map_err(|e| io_error(dir, "cannot open the log file", e))?;
        Ok(Part {
            first,
            started_ms: started_ms.into(),
            path: dir.to_owned(),
            own_dir: true,
            log: db.open_tree(LOG_TREE).map_err(open_error(dir))?,
            index: db.open_tree(INDEX_TREE).map_err(open_error(dir))?,
            db,
            file: Arc::new(file),
            synced_blobs: Arc::default(),
        })
    }

    /// Makes a new, empty part for sequence numbers from `first` on, started at `started_ms`, durably (see *Files and
    /// crashes*).
    pub fn create(store_dir: &Path, first: u64, started_ms: i64, cache_mb: u64) -> Result<Part, StoreError> {
        let parts = store_dir.join(PARTS_DIR);
        std::fs::create_dir_all(&parts).map_err(|e| io_error(&parts, "cannot create the partitions directory", e))?;
        let tmp = parts.join(format!("{TMP_PREFIX}{first:020}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io_error(&tmp, "cannot remove an unfinished partition", e))?;
        }
        {
            let db = super::open::open_sled(&tmp, 1)?;
            db.open_tree(PART_TREE)
                .and_then(|t| {
                    t.insert(PART_STARTED, &(started_ms.max(0) as u64).to_be_bytes())?;
                    t.insert(PART_FIRST, &first.to_be_bytes())
                })
                .and_then(|_| db.flush())
                .map_err(open_error(&tmp))?;
        }
        // sled's background threads may hold the database a moment after the last handle went.
        sync_dir(&tmp)?;
        let dir = parts.join(part_name(first));
        std::fs::rename(&tmp, &dir).map_err(|e| io_error(&dir, "cannot name the new partition", e))?;
        sync_dir(&parts)?;
        sync_dir(store_dir)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Part::open(&dir, first, cache_mb) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                other => return other,
            }
        }
    }

    /// When the part began taking punches (see the field).
    pub fn started(&self) -> i64 {
        self.started_ms.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Moves the part's start back to `started_ms`, durably: for a clock that is behind the one the part was stamped with
    /// (the system clock was set back, or retention runs on a clock of its own), so that rotation keeps working.
    pub fn restamp(&self, started_ms: i64) -> Result<(), StoreError> {
        if self.own_dir {
            let tree = self.db.open_tree(PART_TREE)?;
            tree.insert(PART_STARTED, &(started_ms.max(0) as u64).to_be_bytes())?;
            self.db.flush()?;
        }
        self.started_ms.store(started_ms, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// The highest sequence number in this part.
    pub fn last_seq(&self) -> Result<Option<u64>, StoreError> {
        match self.log.last()? {
            Some((k, v)) => {
                let first = log_key(&k)?;
                let punches = codec::split_log_value(&v)
                    .map_err(|message| StoreError::Decode { key: format!("seq {first}"), message })?;
                Ok(Some(first + punches.len() as u64 - 1))
            }
            None => Ok(None),
        }
    }

    /// The index cursor of this part: the highest sequence number whose index entries are written here.
    pub fn cursor(&self) -> Result<Option<u64>, StoreError> {
        match self.index.get(super::index::CURSOR)? {
            Some(v) => seq_from(&v).map(Some).ok_or_else(|| StoreError::Decode {
                key: "index cursor".into(),
                message: "bad sequence number".into(),
            }),
            None => Ok(None),
        }
    }

    /// Bytes the part's own files use (part 0 is counted with the main database).
    pub fn size_on_disk(&self) -> u64 {
        if self.own_dir {
            self.db.size_on_disk().unwrap_or(0)
        } else {
            0
        }
    }
}

fn part_name(first: u64) -> String {
    format!("{PART_PREFIX}{first:020}")
}

/// The parts under `store_dir/parts`, by first sequence number; removes what an interrupted creation or deletion left.
pub fn list(store_dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let parts = store_dir.join(PARTS_DIR);
    let entries = match std::fs::read_dir(&parts) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(&parts, "cannot read the partitions directory", e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(&parts, "cannot read the partitions directory", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TMP_PREFIX) || name.starts_with(DELETED_PREFIX) {
            std::fs::remove_dir_all(entry.path())
                .map_err(|e| io_error(&entry.path(), "cannot remove a left-over partition", e))?;
            continue;
        }
        match name.strip_prefix(PART_PREFIX).and_then(|n| n.parse::<u64>().ok()) {
            Some(first) => out.push((first, entry.path())),
            None => {
                return Err(StoreError::Open {
                    path: entry.path(),
                    message: "an unknown file among the punch partitions; move it out of the store".into(),
                })
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Deletes a part's directory: renamed first (atomic), then removed. The caller has let go of the part's database.
pub fn delete(part: &Path) -> Result<(), StoreError> {
    let Some(name) = part.file_name().map(|n| n.to_string_lossy().into_owned()) else { return Ok(()) };
    let Some(parent) = part.parent() else { return Ok(()) };
    let gone = parent.join(format!("{DELETED_PREFIX}{}", name.trim_start_matches(PART_PREFIX)));
    std::fs::rename(part, &gone).map_err(|e| io_error(part, "cannot delete a partition", e))?;
    sync_dir(parent)?;
    std::fs::remove_dir_all(&gone).map_err(|e| io_error(&gone, "cannot remove a deleted partition", e))?;
    Ok(())
}
