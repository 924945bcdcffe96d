//! Opening the store: the format check, migration from layout 1, the damage check against the durable watermark,
//! and indexing what the index cursor had not reached.

use super::*;

impl Store {
    /// Opens (or creates) the store in `dir`, migrating an older layout and indexing what the last run left unindexed.
    /// Never panics on a damaged or foreign directory.
    pub fn open(dir: &Path, cache_mb: u64) -> Result<Store, StoreError> {
        let path = dir.to_owned();
        // sled treats a log it cannot parse as empty. If the files were there before, an empty result means damage,
        // not a new store: remember what existed so that case is reported instead of silently starting over.
        let existed = std::fs::metadata(dir.join("db")).map(|m| m.len() > 0).unwrap_or(false);
        let db = open_sled(dir, cache_mb)?;
        // sled does not sync directories: make the entries of the store's files (and of the store directory) durable.
        for d in [Some(dir), dir.parent()].into_iter().flatten().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(d).and_then(|f| f.sync_all()).map_err(|e| StoreError::Open {
                path: path.clone(),
                message: format!("cannot sync the directory: {e}"),
            })?;
        }
        let meta = db.open_tree("meta").map_err(open_error(&path))?;
        match meta.get("format").map_err(open_error(&path))? {
            Some(v) if v.as_ref() == FORMAT => migrate::drop_v1_tree(&db).map_err(open_error(&path))?,
            Some(v) if v.as_ref() == FORMAT_V1 => migrate::v1_to_v2(&db, &meta, LOG_TREE)?,
            Some(v) => return Err(StoreError::Foreign { path, found: String::from_utf8_lossy(&v).into_owned() }),
            None => {
                if existed {
                    return Err(StoreError::Open {
                        path,
                        message: "the database files exist but hold no readable gatewayd data (damaged, or not a gatewayd store)"
                            .into(),
                    });
                }
                let holds_data = db
                    .tree_names()
                    .iter()
                    .any(|name| name.as_ref() != b"meta" && db.open_tree(name).map(|t| !t.is_empty()).unwrap_or(true));
                if holds_data {
                    return Err(StoreError::Foreign { path, found: "(none)".into() });
                }
                meta.insert("format", FORMAT)?;
                db.flush()?;
            }
        }
        let fresh_index = meta.get(index::META_KEY).map_err(open_error(&path))?.as_deref() != Some(index::LAYOUT);

        // The parts: part 0 in the main database when it holds punches (a store made before partitions), then those
        // under `parts/`. A new store starts with a part of its own.
        let main_file = std::fs::File::open(dir.join("db"))
            .map_err(|e| StoreError::Open { path: path.clone(), message: format!("cannot open the log file: {e}") })?;
        let main_sync =
            MainSync { path: path.clone(), file: Arc::new(main_file), synced_blobs: Arc::new(Mutex::default()) };
        let mut parts = Vec::new();
        let main = Part::main(&path, &db, &main_sync)?;
        let listed = parts::list(&path)?;
        if !main.log.is_empty() || !main.index.is_empty() {
            parts.push(Arc::new(main));
        }
        for (first, dir) in listed {
            parts.push(Arc::new(Part::open(&dir, first, cache_mb)?));
        }
        if parts.is_empty() {
            parts.push(Arc::new(Part::create(&path, 1, jiff::Timestamp::now().as_millisecond(), cache_mb)?));
        }
        if fresh_index {
            // An index of another layout (or none): drop it; it is rebuilt from the log below.
            for part in &parts {
                part.index.clear().map_err(open_error(&path))?;
            }
            meta.insert(index::META_KEY, index::LAYOUT).map_err(open_error(&path))?;
            db.flush().map_err(open_error(&path))?;
        }
        let newest = parts
            .last()
            .map(Arc::clone)
            .ok_or_else(|| StoreError::Open { path: path.clone(), message: "no punch partition".into() })?;
        let written = newest.last_seq()?.unwrap_or(newest.first - 1);
        // Parts before the newest were rotated away from with punches in them: an empty one lost its files.
        for part in parts.iter().rev().skip(1).filter(|p| p.own_dir) {
            if part.log.is_empty() {
                return Err(StoreError::Open {
                    path: part.path.clone(),
                    message: "damaged database: a punch partition that held punches reads as empty".into(),
                });
            }
        }
        let mut indexed = parts.first().map_or(0, |p| p.first - 1);
        for part in &parts {
            if let Some(c) = part.cursor()? {
                indexed = indexed.max(c);
            }
        }
        let watermark = read_watermark(&path)?;
        for (what, seq) in
            [("the watermark file says punches up to", watermark), ("the index covers punches up to", indexed)]
        {
            if seq > written {
                return Err(StoreError::Open {
                    path,
                    message: format!(
                        "damaged database: the punch log ends at sequence {written} but {what} {seq} were durable"
                    ),
                });
            }
        }
        let store = Store {
            inner: Arc::new(Inner {
                path,
                db,
                cache_mb,
                parts: RwLock::new(parts),
                dirty: Mutex::new(Vec::new()),
                written: AtomicU64::new(written),
                // What sled recovered from disk is durable by definition.
                durable: AtomicU64::new(written),
                indexed: AtomicU64::new(indexed),
                unindexed: Mutex::new(Unindexed::default()),
                indexing: Mutex::new(()),
                max_lag: AtomicU64::new(MAX_INDEX_LAG),
                watermark: AtomicU64::new(watermark),
                expired_through: AtomicU64::new(0),
                main_sync,
            }),
        };
        // Read the newest punch back: a store whose tail does not decode is reported now, not on first use.
        if written > 0 && newest.last_seq()?.is_some() {
            store.get(written)?;
        }
        // Index what the last run wrote but did not index (a crash between the flush and the index round).
        while store.index_pending(INDEX_ROUND)? > 0 {}
        Ok(store)
    }

    /// Records the highest durable sequence number in the watermark file (replaced atomically and durably, see
    /// [`crate::atomic_file::write_atomic`]), if it moved since the last call.
    pub fn save_watermark(&self) -> Result<(), StoreError> {
        let durable = self.inner.durable.load(Ordering::Acquire);
        if durable <= self.inner.watermark.load(Ordering::Acquire) {
            return Ok(());
        }
        let dir = &self.inner.path;
        crate::atomic_file::write_atomic(
            &dir.join(WATERMARK_FILE),
            format!("{WATERMARK_HEADER} {durable}\n").as_bytes(),
        )
        .map_err(|e| StoreError::Flush(format!("watermark file in {}: {e}", dir.display())))?;
        self.inner.watermark.fetch_max(durable, Ordering::AcqRel);
        Ok(())
    }
}

/// Syncs the blob files sled wrote since the last call, and then their directory. sled 0.34 stores a log message over a
/// quarter of its segment size (128 KiB) as a file of its own under `blobs/` and syncs neither the file nor the
/// directory, so without this a power cut could leave a durable log pointing to a blob that is not there. The store's
/// values are kept small enough that sled should not need blobs at all (see [`codec::BLOCK_MAX_BYTES`]); this covers
/// the exceptions (a single very large punch, other stages' trees).
pub(super) fn sync_blobs(dir: &Path, synced: &Mutex<HashSet<std::ffi::OsString>>) -> std::io::Result<()> {
    let blobs = dir.join("blobs");
    let entries = match std::fs::read_dir(&blobs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut synced = lock(synced);
    let mut present = HashSet::new();
    let mut new = false;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if !synced.contains(&name) {
            match std::fs::File::open(entry.path()) {
                Ok(f) => f.sync_data()?,
                // Removed by sled in the meantime: nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            new = true;
        }
        present.insert(name);
    }
    if new {
        std::fs::File::open(&blobs)?.sync_all()?;
    }
    *synced = present;
    Ok(())
}

/// The watermark of the store in `dir` (0 when there is no file yet).
pub(super) fn read_watermark(dir: &Path) -> Result<u64, StoreError> {
    let file = dir.join(WATERMARK_FILE);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::Open { path: dir.to_owned(), message: format!("{}: {e}", file.display()) }),
    };
    text.trim_end().strip_prefix(WATERMARK_HEADER).and_then(|rest| rest.trim().parse::<u64>().ok()).ok_or_else(|| {
        StoreError::Open {
            path: dir.to_owned(),
            message: format!("damaged database: {} does not hold a watermark", file.display()),
        }
    })
}

pub(super) fn open_error(path: &Path) -> impl Fn(sled::Error) -> StoreError + '_ {
    move |e| StoreError::Open { path: path.to_owned(), message: e.to_string() }
}

/// Opens (or creates) the sled database in `dir`. Never panics on a damaged or foreign directory.
pub(super) fn open_sled(dir: &Path, cache_mb: u64) -> Result<sled::Db, StoreError> {
    let path = dir.to_owned();
    let config = sled::Config::new().path(dir).cache_capacity(cache_mb.max(1) * 1024 * 1024).flush_every_ms(Some(500));
    // sled 0.34 may panic on some kinds of damage instead of returning an error; contain that here.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(e))) if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") => {
            Err(StoreError::Locked { path })
        }
        Ok(Err(e)) => Err(StoreError::Open { path, message: e.to_string() }),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "the database files are damaged".into());
            Err(StoreError::Open { path, message: format!("damaged database ({message})") })
        }
    }
}
