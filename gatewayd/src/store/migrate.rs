//! Migration of a store of the first layout ([`super::FORMAT_V1`]) to the current one.
//!
//! The first layout kept punches and their indexes in one tree, `punches`, with prefixed keys (`P` seq → punch, `I`, `T`,
//! `D`, `S` index keys). Punch values are unchanged; only their keys move (`P` seq → seq, in tree `punch_log`). The
//! indexes are not copied: [`super::Store::open`] rebuilds them from the log.
//!
//! Crash safety: the format marker changes only after the copied punches are flushed, and the old tree is dropped only
//! after the marker is flushed. A crash before the marker repeats the copy (it overwrites the same keys); a crash after
//! it leaves an old tree that the next open drops.

use super::{seq_from, StoreError};

const V1_TREE: &str = "punches";
const V1_PUNCH: u8 = b'P';
const COPY_BATCH: usize = 16_384;

pub(super) fn v1_to_v2(db: &sled::Db, meta: &sled::Tree, log_tree: &str) -> Result<(), StoreError> {
    let old = db.open_tree(V1_TREE)?;
    let log = db.open_tree(log_tree)?;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    let mut copied = 0u64;
    for r in old.scan_prefix([V1_PUNCH]) {
        let (k, v) = r?;
        let seq = seq_from(&k[1..]).ok_or_else(|| StoreError::Decode {
            key: format!("{k:?}"),
            message: "bad sequence key (layout 1)".into(),
        })?;
        batch.insert(&seq.to_be_bytes(), v);
        in_batch += 1;
        copied += 1;
        if in_batch == COPY_BATCH {
            log.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    }
    log.apply_batch(batch)?;
    db.flush()?;
    meta.insert("format", super::FORMAT)?;
    db.flush()?;
    drop_v1_tree(db)?;
    tracing::info!(punches = copied, "store migrated from layout 1 to layout 2");
    Ok(())
}

/// Drops the tree of the first layout if a migration left it behind.
pub(super) fn drop_v1_tree(db: &sled::Db) -> Result<(), sled::Error> {
    if db.tree_names().iter().any(|n| n.as_ref() == V1_TREE.as_bytes()) {
        db.drop_tree(V1_TREE)?;
        db.flush()?;
    }
    Ok(())
}
