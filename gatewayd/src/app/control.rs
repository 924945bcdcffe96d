//! The local control socket: how `gatewayd token …` (and later admin commands) change state while the daemon runs.
//!
//! sled allows one process per database, so a second `gatewayd` cannot open the store while the daemon runs. The daemon
//! listens on a unix socket `control.sock` in the data dir, mode 0660 (owner and group: whoever may read the data dir
//! may manage tokens; the socket is created 0755 by the umask, so nobody else can connect before the chmod). The CLI
//! connects to it; when no daemon listens (no socket, or a stale one nobody accepts on) it opens the store itself.
//!
//! # Protocol
//! One request per connection: a JSON line ([`Request`]), answered by one JSON line ([`Response`]). Lines are at most
//! [`MAX_LINE`] bytes. Every request that changes state is written to the audit log as `control-socket` from `local`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::audit::{Actor, AuditLog};
use crate::tokens::{NewToken, TokenStore};

/// The socket file in the data dir.
pub const SOCKET_FILE: &str = "control.sock";
/// Longest request line.
pub const MAX_LINE: usize = 64 * 1024;

/// A request over the control socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    TokenCreate {
        role: crate::tokens::Role,
        #[serde(default)]
        departments: Vec<String>,
        #[serde(default)]
        employee: Option<String>,
    },
    TokenList,
    TokenRevoke {
        id: String,
    },
}

/// The answer: `result` on success, `error` otherwise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    fn ok(v: serde_json::Value) -> Response {
        Response { ok: true, result: Some(v), error: None }
    }

    fn err(e: impl ToString) -> Response {
        Response { ok: false, result: None, error: Some(e.to_string()) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: bad answer from the daemon: {message}")]
    Protocol { path: PathBuf, message: String },
}

/// The socket path for a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Parses one request line (the fuzz target `control_request` calls this).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice::<Request>(line).map_err(|e| format!("bad request: {e}"))
}

/// Carries out a request against the store (in the daemon, or in the CLI when no daemon runs).
pub async fn handle(req: Request, tokens: &TokenStore, audit: &AuditLog) -> Response {
    let actor = Actor { who: "control-socket".into(), role: "local".into(), from: "local".into() };
    match req {
        Request::TokenList => match tokens.list() {
            Ok(list) => Response::ok(serde_json::to_value(list).unwrap_or_default()),
            Err(e) => Response::err(e),
        },
        Request::TokenCreate { role, departments, employee } => {
            let token = NewToken { role, departments, employee };
            let result = tokens.create(&token, now_ms());
            let (target, outcome) = match &result {
                Ok((rec, _)) => (format!("token {} ({})", rec.id, rec.role.as_str()), "ok".to_owned()),
                Err(e) => (format!("token ({})", token.role.as_str()), e.to_string()),
            };
            if let Err(e) = audit.append(&actor, "token create", &target, &outcome).await {
                return Response::err(format!("audit log: {e}"));
            }
            match result {
                Ok((rec, text)) => Response::ok(serde_json::json!({ "token": text, "record": rec })),
                Err(e) => Response::err(e),
            }
        }
        Request::TokenRevoke { id } => {
            let result = tokens.revoke(&id, now_ms());
            let outcome = match &result {
                Ok(_) => "ok".to_owned(),
                Err(e) => e.to_string(),
            };
            if let Err(e) = audit.append(&actor, "token revoke", &format!("token {id}"), &outcome).await {
                return Response::err(format!("audit log: {e}"));
            }
            match result {
                Ok(rec) => Response::ok(serde_json::to_value(rec).unwrap_or_default()),
                Err(e) => Response::err(e),
            }
        }
    }
}

/// Binds the control socket (replacing a stale file: the caller holds the store, so no other daemon runs) and serves
/// it until `cancel` fires.
pub fn start(
    data_dir: &Path,
    tokens: TokenStore,
    audit: AuditLog,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<PathBuf, ControlError> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    let io = |source| ControlError::Io { path: path.clone(), source };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    let inner = tracker.clone();
    let shown = path.clone();
    tracker.spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(path = %shown.display(), error = %e, "control socket accept failed");
                        continue;
                    }
                },
            };
            let (tokens, audit) = (tokens.clone(), audit.clone());
            inner.spawn(async move {
                if let Err(e) = serve_one(stream, &tokens, &audit).await {
                    tracing::warn!(error = %e, "control socket request failed");
                }
            });
        }
        let _ = std::fs::remove_file(&shown);
    });
    Ok(path)
}

async fn serve_one(stream: tokio::net::UnixStream, tokens: &TokenStore, audit: &AuditLog) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_LINE as u64 + 1);
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), reader.read_until(b'\n', &mut line)).await;
    let response = match read {
        Err(_) => Response::err("no request within 10 s"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if line.len() > MAX_LINE => Response::err(format!("request longer than {MAX_LINE} bytes")),
        Ok(Ok(_)) => match parse_request(&line) {
            Ok(req) => handle(req, tokens, audit).await,
            Err(e) => Response::err(e),
        },
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Sends a request to the running daemon. `Ok(None)` when no daemon listens on the data dir's socket.
pub fn call(data_dir: &Path, req: &Request) -> Result<Option<Response>, ControlError> {
    use std::io::{BufRead, Read, Write};
    let path = socket_path(data_dir);
    let io = |source| ControlError::Io { path: path.clone(), source };
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).map_err(io)?;
    let mut line = serde_json::to_vec(req).unwrap_or_default();
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream).take(MAX_LINE as u64).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(|e| ControlError::Protocol { path: path.clone(), message: e.to_string() })
}

/// Runs a request for the CLI: through the daemon's control socket when one listens, else against the store directly.
pub fn run_cli(data_dir: &Path, cache_mb: u64, req: Request) -> Result<Response, String> {
    if let Some(r) = call(data_dir, &req).map_err(|e| e.to_string())? {
        return Ok(r);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let store = crate::app::open_store(data_dir, cache_mb).await.map_err(|e| {
            format!("no daemon answers on {} and the store cannot be opened: {e}", socket_path(data_dir).display())
        })?;
        let tokens = TokenStore::open(store.db()).map_err(|e| e.to_string())?;
        let audit = AuditLog::open(store.db()).map_err(|e| e.to_string())?;
        let response = handle(req, &tokens, &audit).await;
        store.flush().await.map_err(|e| e.to_string())?;
        Ok(response)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_round_trip_and_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let req = Request::TokenList;
        assert!(call(dir.path(), &req).unwrap().is_none(), "no daemon: fall back");
        let db = sled::Config::new().temporary(true).open().unwrap();
        let (tokens, audit) = (TokenStore::open(&db).unwrap(), AuditLog::open(&db).unwrap());
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let path = start(dir.path(), tokens.clone(), audit.clone(), cancel.clone(), &tracker).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o660);
        let dir_path = dir.path().to_owned();
        let create = Request::TokenCreate {
            role: crate::tokens::Role::Employee,
            departments: vec![],
            employee: Some("E1".into()),
        };
        let resp = tokio::task::spawn_blocking(move || call(&dir_path, &create)).await.unwrap().unwrap().unwrap();
        assert!(resp.ok, "{resp:?}");
        let token = resp.result.unwrap()["token"].as_str().unwrap().to_owned();
        assert!(tokens.verify(&token).unwrap().is_some());
        assert_eq!(audit.list(0, 10).unwrap()[0].action, "token create");
        // Malformed input gets an error line, not a dropped connection.
        let dir_path = dir.path().to_owned();
        let bad = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::os::unix::net::UnixStream::connect(socket_path(&dir_path)).unwrap();
            s.write_all(b"{\"op\":\"nope\"}\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert!(bad.contains("\"ok\":false") && bad.contains("bad request"), "{bad}");
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = parse_request(&bytes);
            let _ = crate::tokens::token_id(&String::from_utf8_lossy(&bytes));
        }
    }
}
