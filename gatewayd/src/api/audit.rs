//! The audit log: one entry per write through the API or the control socket (who, what, when, from where, outcome).
//!
//! # Key layout (sled tree `audit`)
//! | key                              | value                 |
//! |----------------------------------|-----------------------|
//! | id:u64 BE (`Db::generate_id` + 1) | [`AuditEntry`] as JSON |
//!
//! Append-only: entries are only ever inserted under a fresh id; nothing in the daemon updates them, and retention
//! removes those older than `retention_days` ([`AuditLog::expire_before`]).
//! Ids are increasing, so the tree is in write order. An entry is flushed before the write it describes is answered.

use serde::{Deserialize, Serialize};

/// One audited write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: u64,
    pub at_ms: i64,
    /// `token:{id}` or `control-socket`.
    pub who: String,
    /// The role of the token (`admin`, `manager`, `employee`) or `local` for the control socket.
    pub role: String,
    /// The peer address, or `local`.
    pub from: String,
    /// What was asked, e.g. `PUT /api/v1/rules` or `token create`.
    pub action: String,
    /// The subject: an approval id, an employee id, a token id … (empty when none).
    pub target: String,
    /// `ok` or the error answered.
    pub outcome: String,
}

/// The audit log. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    db: sled::Db,
    tree: sled::Tree,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("entries", &self.tree.len()).finish()
    }
}

/// The audit fields of one write, before it gets an id and a time.
#[derive(Clone, Debug)]
pub struct Actor {
    pub who: String,
    pub role: String,
    pub from: String,
}

impl AuditLog {
    pub fn open(db: &sled::Db) -> Result<AuditLog, sled::Error> {
        Ok(AuditLog { db: db.clone(), tree: db.open_tree("audit")? })
    }

    /// Appends an entry and flushes it.
    /// Removes the entries written before `before_ms` (retention). Entries are in write order, so this walks the head
    /// of the tree. Returns how many went. Blocking.
    pub fn expire_before(&self, before_ms: i64) -> Result<u64, sled::Error> {
        let mut removed = 0u64;
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0u64;
            let mut done = true;
            for item in self.tree.iter() {
                let (k, v) = item?;
                let at_ms = serde_json::from_slice::<AuditEntry>(&v).map(|e| e.at_ms).unwrap_or(i64::MAX);
                if at_ms >= before_ms {
                    break;
                }
                batch.remove(k);
                n += 1;
                if n == 4096 {
                    done = false;
                    break;
                }
            }
            self.tree.apply_batch(batch)?;
            removed += n;
            if done {
                return Ok(removed);
            }
        }
    }

    pub async fn append(&self, actor: &Actor, action: &str, target: &str, outcome: &str) -> Result<u64, sled::Error> {
        let id = self.db.generate_id()?.saturating_add(1);
        let entry = AuditEntry {
            id,
            at_ms: jiff::Timestamp::now().as_millisecond(),
            who: actor.who.clone(),
            role: actor.role.clone(),
            from: actor.from.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome: outcome.to_owned(),
        };
        self.tree.insert(id.to_be_bytes(), serde_json::to_vec(&entry).unwrap_or_default())?;
        self.tree.flush_async().await?;
        Ok(id)
    }

    /// The newest `limit` entries with id greater than `after`, oldest first.
    pub fn list(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, sled::Error> {
        let mut out = Vec::new();
        for item in self.tree.range(after.saturating_add(1).to_be_bytes()..).rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item?;
            if let Ok(e) = serde_json::from_slice::<AuditEntry>(&v) {
                out.push(e);
            }
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_in_order() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let log = AuditLog::open(&db).unwrap();
        let actor = Actor { who: "token:1".into(), role: "admin".into(), from: "127.0.0.1:1".into() };
        let a = log.append(&actor, "PUT /api/v1/rules", "", "ok").await.unwrap();
        let b = log.append(&actor, "POST /api/v1/employees/import", "", "400: bad").await.unwrap();
        assert!(b > a);
        let all = log.list(0, 10).unwrap();
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(log.list(0, 1).unwrap()[0].id, b, "the newest when limited");
        assert_eq!(log.list(a, 10).unwrap().len(), 1);
    }
}
