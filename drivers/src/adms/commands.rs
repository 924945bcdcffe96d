//! The command channel of PUSH terminals (SPEC 6.4): a durable queue of commands per terminal, handed out on
//! `GET /iclock/getrequest` as `C:{id}:{command}` lines, answered on `POST /iclock/devicecmd` with
//! `ID={id}&Return={code}&CMD={name}` lines (and, for some commands, `key=value` lines after).
//!
//! # Storage
//! sled tree `adms_commands` (opened by the daemon in its database, beside the store's trees):
//!
//! | key                          | value                         | purpose                                   |
//! |------------------------------|-------------------------------|-------------------------------------------|
//! | `c` device 0x00 id:u64be     | the [`Command`] as JSON       | the queue, in id order per terminal       |
//! | `u` device 0x00 PIN          | [`TerminalUser`] as JSON      | the users the gateway has put on a terminal |
//! | `k` device                   | the last count-check day      | one count check per terminal and day      |
//!
//! Ids come from sled's `generate_id` (unique and increasing across restarts). A command is durable once the tree is
//! flushed, which the routes do before they answer.
//!
//! # Life of a command
//! `queued` → `sent` (handed to the terminal; `attempts` counts it) → `done` (`Return` ≥ 0) or `failed` (`Return` < 0,
//! or [`MAX_ATTEMPTS`] hand-outs without a result). A command sent and not answered within [`RESEND_AFTER`] is handed
//! out again. A command not done by its `expires_ms` is `expired` and never sent again. Finished commands are kept
//! [`KEEP_FINISHED`] for the API, then deleted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The sled tree of the queue.
pub const TREE: &str = "adms_commands";
/// Hand-outs of one command without a result before it fails.
pub const MAX_ATTEMPTS: u32 = 5;
/// A command sent this long ago without a result is sent again.
pub const RESEND_AFTER_MS: i64 = 60_000;
/// Finished commands are deleted this long after they finished.
pub const KEEP_FINISHED_MS: i64 = 7 * 86_400_000;
/// Most commands handed out in one `getrequest` answer.
pub const MAX_PER_POLL: usize = 32;
/// Most result lines read from one `devicecmd` body.
pub const MAX_RESULTS: usize = 1024;

/// Where a command is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Sent,
    Done,
    Failed,
    Expired,
}

impl State {
    pub fn finished(self) -> bool {
        matches!(self, State::Done | State::Failed | State::Expired)
    }
}

/// One command for one terminal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    pub device: String,
    /// The command line as the terminal gets it (after `C:{id}:`).
    pub command: String,
    /// Why the gateway sent it (`roster`, `backfill`, `silence`, `count_check`, `count_mismatch`, `info`).
    pub reason: String,
    pub state: State,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub attempts: u32,
    pub sent_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// The terminal's `Return` code.
    pub result: Option<i64>,
    /// What else the terminal reported with the result (`key=value` fields), e.g. a count.
    #[serde(default)]
    pub reply: BTreeMap<String, String>,
}

/// A user the gateway has put on a terminal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalUser {
    pub name: String,
    pub card: Option<String>,
}

/// One result line of `devicecmd`, with the `key=value` fields that followed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandResult {
    pub id: u64,
    pub code: i64,
    pub cmd: String,
    pub fields: BTreeMap<String, String>,
}

/// Reads a `devicecmd` body: lines `ID=…&Return=…&CMD=…` (extra `&key=value` pairs kept as fields), each followed by
/// any `key=value` lines up to the next result line (the `INFO` answer). Lines that say nothing usable are counted in
/// the second value; a body never fails as a whole.
pub fn parse_results(body: &str) -> (Vec<CommandResult>, usize) {
    let mut results: Vec<CommandResult> = Vec::new();
    let mut bad = 0usize;
    for line in body.split(['\n', '\r']).map(str::trim).filter(|l| !l.is_empty()) {
        if results.len() >= MAX_RESULTS {
            bad += 1;
            continue;
        }
        let pairs: Vec<(&str, &str)> = line.split('&').filter_map(|p| p.split_once('=')).collect();
        let get = |k: &str| pairs.iter().find(|(key, _)| key.trim().eq_ignore_ascii_case(k)).map(|(_, v)| v.trim());
        match (get("ID"), get("Return")) {
            (Some(id), Some(code)) => match (id.parse::<u64>(), code.parse::<i64>()) {
                (Ok(id), Ok(code)) => {
                    let fields = pairs
                        .iter()
                        .filter(|(k, _)| !["id", "return", "cmd"].contains(&k.trim().to_ascii_lowercase().as_str()))
                        .map(|(k, v)| (short(k.trim()), short(v.trim())))
                        .collect();
                    results.push(CommandResult { id, code, cmd: short(get("CMD").unwrap_or_default()), fields });
                }
                _ => bad += 1,
            },
            _ => match (results.last_mut(), line.split_once('=')) {
                // INFO answers follow their result line as `~DeviceName=…`, `UserCount=…`.
                (Some(last), Some((k, v)))
                    if last.fields.len() < 64
                        && !k.trim().is_empty()
                        && !k.trim().eq_ignore_ascii_case("ID")
                        && !line.contains('&') =>
                {
                    last.fields.insert(short(k.trim().trim_start_matches('~')), short(v.trim()));
                }
                _ => bad += 1,
            },
        }
    }
    (results, bad)
}

fn short(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(128).collect()
}

/// The count a `VERIFY SUM` (or count query) result reports: the first field whose name ends in `count`
/// (`AttLogCount`, `ATTLOGCount`, `Count`), as firmware spells it differently.
pub fn reported_count(result: &CommandResult) -> Option<u64> {
    result.fields.iter().find(|(k, _)| k.to_ascii_lowercase().ends_with("count")).and_then(|(_, v)| v.parse().ok())
}

/// Why the queue could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("adms command queue: {0}")]
    Sled(#[from] sled::Error),
    #[error("adms command queue: entry {key}: {message}")]
    Decode { key: String, message: String },
}

/// The durable command queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CommandQueue {
    db: sled::Db,
    tree: sled::Tree,
}

fn prefix(tag: u8, device: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(device.len() + 2);
    k.push(tag);
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k
}

fn command_key(device: &str, id: u64) -> Vec<u8> {
    let mut k = prefix(b'c', device);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, QueueError> {
    serde_json::from_slice(value)
        .map_err(|e| QueueError::Decode { key: String::from_utf8_lossy(key).into_owned(), message: e.to_string() })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

impl CommandQueue {
    /// Opens (or creates) the queue's tree in `db`.
    pub fn open(db: &sled::Db) -> Result<CommandQueue, QueueError> {
        Ok(CommandQueue { db: db.clone(), tree: db.open_tree(TREE)? })
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), QueueError> {
        self.tree.flush_async().await?;
        Ok(())
    }

    /// Queues `command` for `device`, to be done within `ttl_ms`.
    pub fn enqueue(
        &self,
        device: &str,
        command: &str,
        reason: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Command, QueueError> {
        let id = self.db.generate_id()?.saturating_add(1);
        let c = Command {
            id,
            device: device.to_owned(),
            command: command.to_owned(),
            reason: reason.to_owned(),
            state: State::Queued,
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(ttl_ms),
            attempts: 0,
            sent_ms: None,
            finished_ms: None,
            result: None,
            reply: BTreeMap::new(),
        };
        self.tree.insert(command_key(device, id), encode(&c))?;
        Ok(c)
    }

    /// The commands of `device`, oldest first.
    pub fn list(&self, device: &str) -> Result<Vec<Command>, QueueError> {
        self.tree
            .scan_prefix(prefix(b'c', device))
            .map(|r| {
                let (k, v) = r?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The commands to hand to `device` now (at most [`MAX_PER_POLL`]), marked sent. Expires, fails and deletes what
    /// is due on the way.
    pub fn take(&self, device: &str, now_ms: i64) -> Result<Vec<Command>, QueueError> {
        let mut out = Vec::new();
        for c in self.list(device)? {
            let key = command_key(device, c.id);
            let mut c = c;
            if c.state.finished() {
                if c.finished_ms.is_some_and(|f| now_ms - f > KEEP_FINISHED_MS) {
                    self.tree.remove(key)?;
                }
                continue;
            }
            if now_ms > c.expires_ms {
                (c.state, c.finished_ms) = (State::Expired, Some(now_ms));
            } else if c.state == State::Sent && c.sent_ms.is_some_and(|s| now_ms - s < RESEND_AFTER_MS) {
                continue;
            } else if c.attempts >= MAX_ATTEMPTS {
                (c.state, c.finished_ms) = (State::Failed, Some(now_ms));
            } else if out.len() < MAX_PER_POLL {
                (c.state, c.sent_ms) = (State::Sent, Some(now_ms));
                c.attempts += 1;
                out.push(c.clone());
            } else {
                continue;
            }
            self.tree.insert(key, encode(&c))?;
        }
        Ok(out)
    }

    /// Records the terminal's result for command `id` of `device`. `None` when there is no such unfinished command
    /// (a repeated or stray result).
    pub fn complete(&self, device: &str, result: &CommandResult, now_ms: i64) -> Result<Option<Command>, QueueError> {
        let key = command_key(device, result.id);
        let Some(v) = self.tree.get(&key)? else { return Ok(None) };
        let mut c: Command = decode(&key, &v)?;
        if c.state.finished() {
            return Ok(None);
        }
        c.state = if result.code >= 0 { State::Done } else { State::Failed };
        c.result = Some(result.code);
        c.finished_ms = Some(now_ms);
        c.reply = result.fields.clone();
        self.tree.insert(key, encode(&c))?;
        Ok(Some(c))
    }

    /// The users the gateway has put on `device`: PIN → user.
    pub fn users(&self, device: &str) -> Result<BTreeMap<String, TerminalUser>, QueueError> {
        let p = prefix(b'u', device);
        self.tree
            .scan_prefix(&p)
            .map(|r| {
                let (k, v) = r?;
                Ok((String::from_utf8_lossy(&k[p.len()..]).into_owned(), decode(&k, &v)?))
            })
            .collect()
    }

    /// Records that `pin` is (or, with `None`, is no longer) on `device`.
    pub fn set_user(&self, device: &str, pin: &str, user: Option<&TerminalUser>) -> Result<(), QueueError> {
        let mut k = prefix(b'u', device);
        k.extend_from_slice(pin.as_bytes());
        match user {
            Some(u) => self.tree.insert(k, encode(u))?,
            None => self.tree.remove(k)?,
        };
        Ok(())
    }

    /// Sets the day of `device`'s last count check; returns whether it was another day (the check is due).
    pub fn count_check_due(&self, device: &str, day: &str) -> Result<bool, QueueError> {
        let mut k = vec![b'k'];
        k.extend_from_slice(device.as_bytes());
        // Read first: the common answer (already checked today) writes nothing.
        if self.tree.get(&k)?.as_deref() == Some(day.as_bytes()) {
            return Ok(false);
        }
        self.tree.insert(k, day.as_bytes())?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn queue() -> CommandQueue {
        let db = sled::Config::new().temporary(true).open().unwrap();
        CommandQueue::open(&db).unwrap()
    }

    #[test]
    fn results_are_read_with_their_fields_and_bad_lines_counted() {
        let body = "ID=7&Return=0&CMD=DATA\nID=8&Return=-1002&CMD=DATA\r\n\
                    ID=9&Return=0&CMD=VERIFY SUM&AttLogCount=42\n\
                    ID=10&Return=0&CMD=INFO\n~DeviceName=F18\nUserCount=3\nFWVersion=Ver 6.60\n\
                    garbage\nID=x&Return=0\nID=11\n=3\n";
        let (results, bad) = parse_results(body);
        assert_eq!(results.iter().map(|r| (r.id, r.code)).collect::<Vec<_>>(), [(7, 0), (8, -1002), (9, 0), (10, 0)]);
        assert_eq!(reported_count(&results[2]), Some(42));
        assert_eq!(results[3].cmd, "INFO");
        assert_eq!(results[3].fields.get("DeviceName").map(String::as_str), Some("F18"));
        assert_eq!(results[3].fields.get("UserCount").map(String::as_str), Some("3"));
        // `garbage` after INFO has no `=`; `ID=x`, `ID=11` (no Return) and `=3` are not results either.
        assert_eq!(bad, 4);
        assert_eq!(parse_results("").0.len(), 0);
        assert_eq!(parse_results("garbage=1\n").1, 1, "fields before any result line");
    }

    #[test]
    fn commands_go_out_come_back_retry_and_expire() {
        let q = queue();
        let a = q.enqueue("zk", "DATA QUERY ATTLOG StartTime=x\tEndTime=y", "backfill", 0, 1_000_000).unwrap();
        let b = q.enqueue("zk", "INFO", "info", 0, 10).unwrap();
        q.enqueue("other", "INFO", "info", 0, 1_000_000).unwrap();
        assert!(b.id > a.id);
        let sent = q.take("zk", 5).unwrap();
        assert_eq!(sent.iter().map(|c| c.id).collect::<Vec<_>>(), [a.id, b.id]);
        assert!(q.take("zk", 6).unwrap().is_empty(), "sent and not yet due again");
        // `b` expires; `a` is sent again after RESEND_AFTER.
        let again = q.take("zk", 5 + RESEND_AFTER_MS).unwrap();
        assert_eq!(again.iter().map(|c| (c.id, c.attempts)).collect::<Vec<_>>(), [(a.id, 2)]);
        let states: Vec<State> = q.list("zk").unwrap().iter().map(|c| c.state).collect();
        assert_eq!(states, [State::Sent, State::Expired]);
        let done = q
            .complete("zk", &CommandResult { id: a.id, code: 12, cmd: "DATA".into(), fields: BTreeMap::new() }, 99)
            .unwrap()
            .unwrap();
        assert_eq!((done.state, done.result), (State::Done, Some(12)));
        let stray = CommandResult { id: a.id, code: 0, cmd: String::new(), fields: BTreeMap::new() };
        assert!(q.complete("zk", &stray, 100).unwrap().is_none(), "a repeated result changes nothing");
        assert!(q.complete("zk", &CommandResult { id: 999, ..stray }, 100).unwrap().is_none());
        // Finished commands are deleted after KEEP_FINISHED.
        q.take("zk", 5 + RESEND_AFTER_MS + KEEP_FINISHED_MS + 1).unwrap();
        assert!(q.list("zk").unwrap().is_empty());
        assert_eq!(q.list("other").unwrap().len(), 1);
    }

    #[test]
    fn unanswered_commands_fail_after_their_attempts() {
        let q = queue();
        q.enqueue("zk", "INFO", "info", 0, i64::MAX / 2).unwrap();
        for n in 0..MAX_ATTEMPTS as i64 {
            assert_eq!(q.take("zk", n * RESEND_AFTER_MS).unwrap().len(), 1);
        }
        assert!(q.take("zk", MAX_ATTEMPTS as i64 * RESEND_AFTER_MS).unwrap().is_empty());
        assert_eq!(q.list("zk").unwrap()[0].state, State::Failed);
    }

    #[test]
    fn users_and_count_days() {
        let q = queue();
        let u = TerminalUser { name: "Zhang San".into(), card: Some("70366915".into()) };
        q.set_user("zk", "1001", Some(&u)).unwrap();
        q.set_user("zk2", "1002", Some(&u)).unwrap();
        assert_eq!(q.users("zk").unwrap().into_iter().collect::<Vec<_>>(), [("1001".to_owned(), u)]);
        q.set_user("zk", "1001", None).unwrap();
        assert!(q.users("zk").unwrap().is_empty());
        assert!(q.count_check_due("zk", "2026-11-22").unwrap());
        assert!(!q.count_check_due("zk", "2026-11-22").unwrap());
        assert!(q.count_check_due("zk", "2026-11-23").unwrap());
    }

    proptest! {
        #[test]
        fn result_parsing_never_panics(body in "[ -~\t\r\n]{0,400}") {
            let (results, _) = parse_results(&body);
            for r in &results {
                let _ = reported_count(r);
            }
        }
    }
}
