//! Quarantine of a damaged store: the daemon keeps running on a fresh store instead of refusing to start.
//!
//! When the persistent state in `<data_dir>/store` cannot be opened because it is damaged (sled reports corruption,
//! the files hold no readable gatewayd data, a stored record does not decode, or sled panicked while reading the
//! files), [`open_state`] moves the whole store directory aside to `<data_dir>/quarantine/<UTC time>/store`, writes
//! `REASON.txt` beside it, logs an ERROR and opens a fresh, empty store. The moved bytes are never changed, so whatever
//! punches they still hold can be recovered (see docs/operations.md, "A damaged store").
//!
//! What is NOT damage, and stays a start-up error: another process holding the store's lock (a second daemon on the
//! same data dir), and I/O errors such as permission denied or a full disk (moving the files would not help and the
//! operator must act).
//!
//! `gatewayd_store_quarantines` counts the directories under `<data_dir>/quarantine`, so the alarm stays raised across
//! restarts until the operator has dealt with them.

use std::path::{Path, PathBuf};

use crate::api::audit::AuditLog;
use crate::app::AppError;
use crate::outbox::{Outbox, OutboxError};
use crate::reconcile::changes::ChangeLog;
use crate::store::metrics::events;
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;
use crate::tokens::{TokenError, TokenStore};

/// The directory under the data dir that holds quarantined stores.
pub const QUARANTINE_DIR: &str = "quarantine";
/// The store directory under the data dir.
pub const STORE_DIR: &str = "store";
/// The file written next to a quarantined store saying why it was moved.
pub const REASON_FILE: &str = "REASON.txt";

/// Everything the daemon keeps in the sled database, opened.
pub struct State {
    pub store: Store,
    pub changes: ChangeLog,
    pub outbox: Outbox,
    pub tokens: TokenStore,
    pub audit: AuditLog,
    /// Where the damaged store was moved, when this start quarantined one.
    pub quarantined: Option<PathBuf>,
}

/// The prefix sled gives its I/O errors (`sled::Error::Io` displays as `IO error: …`); `StoreError::Open` carries
/// sled's message only, so this is how an I/O failure is told apart from damage.
const SLED_IO_PREFIX: &str = "IO error:";

fn sled_is_damage(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Corruption { .. } | sled::Error::Unsupported(_) | sled::Error::ReportableBug(_))
}

/// Why `e` means the store files are damaged, or `None` when it is another kind of failure (lock held, I/O error,
/// configuration) that moving the files would not cure.
pub fn damage(e: &AppError) -> Option<String> {
    let store = |e: &StoreError| match e {
        StoreError::Locked { .. } | StoreError::Flush(_) => None,
        StoreError::Open { message, .. } if message.starts_with(SLED_IO_PREFIX) => None,
        StoreError::Open { .. } | StoreError::Foreign { .. } | StoreError::Decode { .. } => Some(e.to_string()),
        StoreError::Sled(s) => sled_is_damage(s).then(|| e.to_string()),
    };
    match e {
        AppError::Store(s) => store(s),
        AppError::Outbox(o) => match o {
            OutboxError::Sled(s) => sled_is_damage(s).then(|| o.to_string()),
            OutboxError::Store(s) => store(s),
            OutboxError::Decode { .. } | OutboxError::Digest(_) => Some(o.to_string()),
            OutboxError::Date(_) => None,
        },
        AppError::Tokens(t) => match t {
            TokenError::Sled(s) => sled_is_damage(s).then(|| t.to_string()),
            TokenError::Decode { .. } => Some(t.to_string()),
            TokenError::NotFound(_) | TokenError::Invalid(_) => None,
        },
        _ => None,
    }
}

async fn open_all(data_dir: &Path, cache_mb: u64, tz: jiff::tz::TimeZone) -> Result<State, AppError> {
    let store = crate::app::open_store(data_dir, cache_mb).await?;
    let db = store.db().clone();
    let sync = store.main_sync();
    // The trees are read on open (the outbox counts its items): blocking work, off the runtime.
    let opened = tokio::task::spawn_blocking(move || {
        // sled may panic on some kinds of damage that only show when a tree is read; contain it here.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<_, AppError> {
            let changes = ChangeLog::open(&db)?.durable_with(sync.clone());
            let outbox = Outbox::open(&db, tz)?.durable_with(sync);
            let tokens = TokenStore::open(&db)?;
            let audit = AuditLog::open(&db).map_err(StoreError::from)?;
            Ok((changes, outbox, tokens, audit))
        }))
    })
    .await;
    let panicked = |message: String| {
        AppError::Store(StoreError::Open {
            path: store.path().to_owned(),
            message: format!("damaged database ({message})"),
        })
    };
    match opened {
        Ok(Ok(Ok((changes, outbox, tokens, audit)))) => {
            Ok(State { store, changes, outbox, tokens, audit, quarantined: None })
        }
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(panic)) => Err(panicked(panic_message(panic.as_ref()))),
        Err(join) => Err(panicked(join.to_string())),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic while reading the files".into())
}

/// Opens the store and every tree kept in it. A damaged store is moved aside (see the module docs) and a fresh one
/// opened; any other failure is returned.
pub async fn open_state(
    data_dir: &Path,
    cache_mb: u64,
    tz: jiff::tz::TimeZone,
    metrics: &Metrics,
) -> Result<State, AppError> {
    let first = open_all(data_dir, cache_mb, tz.clone()).await;
    let quarantined = match first {
        Ok(state) => {
            events::store_quarantines(metrics, count(data_dir));
            return Ok(state);
        }
        Err(e) => {
            let Some(reason) = damage(&e) else { return Err(e) };
            // Every handle on the damaged database was dropped with `first`: sled has closed its files.
            let moved = quarantine(data_dir, &reason)
                .map_err(|source| AppError::Quarantine { path: data_dir.join(STORE_DIR), source })?;
            events::store_quarantined(metrics, &moved, &reason);
            moved
        }
    };
    let mut state = open_all(data_dir, cache_mb, tz).await?;
    state.quarantined = Some(quarantined);
    events::store_quarantines(metrics, count(data_dir));
    Ok(state)
}

/// Number of quarantined stores kept under `data_dir`.
pub fn count(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join(QUARANTINE_DIR)).map(|d| d.flatten().count()).unwrap_or(0)
}

/// Moves `<data_dir>/store` to `<data_dir>/quarantine/<UTC time>/store` with a `REASON.txt`, durably (the directories
/// involved are synced). Returns the new place of the store directory.
pub fn quarantine(data_dir: &Path, reason: &str) -> std::io::Result<PathBuf> {
    let now = jiff::Timestamp::now();
    let stamp = now.strftime("%Y%m%dT%H%M%SZ").to_string();
    let parent = data_dir.join(QUARANTINE_DIR);
    std::fs::create_dir_all(&parent)?;
    // Two quarantines in the same second get distinct directories.
    let mut target = parent.join(&stamp);
    let mut n = 1;
    while target.exists() {
        n += 1;
        target = parent.join(format!("{stamp}-{n}"));
    }
    std::fs::create_dir(&target)?;
    let text = format!(
        "gatewayd moved this store aside at {now} because it could not be opened:\n{reason}\n\n\
         The files under store/ are exactly as they were found. To recover punches from them, see \
         \"A damaged store\" in docs/operations.md.\n"
    );
    std::fs::write(target.join(REASON_FILE), text)?;
    let moved = target.join(STORE_DIR);
    std::fs::rename(data_dir.join(STORE_DIR), &moved)?;
    for dir in [&target, &parent, &data_dir.to_path_buf()] {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_and_io_errors_are_not_damage() {
        let path = PathBuf::from("/x/store");
        let locked = AppError::Store(StoreError::Locked { path: path.clone() });
        assert_eq!(damage(&locked), None);
        let io = AppError::Store(StoreError::Open {
            path: path.clone(),
            message: sled::Error::Io(std::io::Error::from(std::io::ErrorKind::PermissionDenied)).to_string(),
        });
        assert_eq!(damage(&io), None);
        let corrupt = AppError::Store(StoreError::Sled(sled::Error::Corruption { at: None, bt: () }));
        assert!(damage(&corrupt).is_some());
        let empty = AppError::Store(StoreError::Open { path, message: "the database files exist but hold no".into() });
        assert!(damage(&empty).is_some());
        let token = AppError::Tokens(TokenError::Decode { id: "t".into(), message: "bad".into() });
        assert!(damage(&token).is_some());
    }

    #[test]
    fn quarantine_moves_the_bytes_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join(STORE_DIR);
        std::fs::create_dir_all(store.join("blobs")).unwrap();
        std::fs::write(store.join("db"), b"damaged bytes").unwrap();
        let first = quarantine(dir.path(), "flipped bits").unwrap();
        assert!(!store.exists());
        assert_eq!(std::fs::read(first.join("db")).unwrap(), b"damaged bytes");
        let reason = std::fs::read_to_string(first.parent().unwrap().join(REASON_FILE)).unwrap();
        assert!(reason.contains("flipped bits"), "{reason}");
        // A second quarantine in the same second gets its own directory.
        std::fs::create_dir_all(&store).unwrap();
        let second = quarantine(dir.path(), "again").unwrap();
        assert_ne!(first, second);
        assert_eq!(count(dir.path()), 2);
    }
}
