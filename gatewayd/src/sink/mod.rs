//! `gatewayd upstream-sink`: the reference receiver of the upstream protocol (SPEC section 6,
//! `docs/upstream-protocol.md`). Cloud teams can read and run it as the executable specification of the receiving side.
//!
//! What it does, in the order a receiver must do it:
//! 1. **TLS**: requires a client certificate chaining to `--ca` (TLS 1.2/1.3); connections without one are refused in
//!    the handshake.
//! 2. **Request**: `POST /v1/batches` (any path prefix), `Content-Type: application/x-protobuf`, body `UploadBatch`
//!    (at most [`MAX_BODY`] bytes). Anything else is 404/405/415; a body that does not decode or lacks ids is 400 with an
//!    `UploadAck { accepted: false, error }` — a sender must treat 4xx as "an operator must look", not retry blindly.
//! 3. **Apply**, idempotently, per gateway: a punch is new unless its `punch_id` was seen; a record revision is new only
//!    if it is higher than the highest seen for its `record_id` (equal or lower: stale, ignored). New items are appended
//!    to `--out` as JSON lines and the file is synced to disk *before* the answer: an acknowledged batch is never lost.
//! 4. **Digests**: each `DayDigest` is checked against the punches received with `device_time_ms` in
//!    `[from_ms, to_ms)` (count and SHA-256 of the sorted ids, each followed by "\n"). On a mismatch the date is asked for
//!    again in `resend_dates` (at most [`MAX_RESEND_ASKS`] times per date, so a gap that cannot be filled does not loop).
//! 5. **Answer** `200` with `UploadAck { batch_seq, accepted: true, resend_dates }`.
//!
//! A restarted sink reads `--out` back, so re-sent batches stay idempotent across its restarts. Batches are applied one at
//! a time by one thread (the *ledger*), which owns the state and the file; connections only decode and wait for it.
//! `--fail PLAN` injects faults ([`faults`]) for testing senders.

pub mod faults;

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prost::Message;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::outbox::digest::ids_sha256;
use crate::proto::upstream::{AttendanceRecord, DayDigest, Punch, UploadAck, UploadBatch};
use faults::{Fault, FaultPlan};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 << 20;
/// How often one date is asked for again after a digest mismatch.
pub const MAX_RESEND_ASKS: u32 = 3;
/// Batches waiting for the ledger.
pub const LEDGER_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("upstream-sink: {0}")]
    Tls(#[from] crate::upstream::tls::TlsError),
    #[error("upstream-sink: cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream-sink: {path}: {source}")]
    Out {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Decodes a request body as an `UploadBatch` and checks the ids a receiver relies on.
pub fn decode_batch(body: &[u8]) -> Result<UploadBatch, String> {
    let batch = UploadBatch::decode(body).map_err(|e| format!("body is not an UploadBatch: {e}"))?;
    if batch.gateway_id.is_empty() {
        return Err("gateway_id is empty".into());
    }
    if let Some(i) = batch.punches.iter().position(|p| p.punch_id.is_empty()) {
        return Err(format!("punch {i} has no punch_id"));
    }
    if let Some(i) = batch.records.iter().position(|r| r.record_id.is_empty()) {
        return Err(format!("record {i} has no record_id"));
    }
    if let Some(d) = batch.digests.iter().find(|d| d.work_date.is_empty() || d.to_ms < d.from_ms) {
        return Err(format!("digest `{}` has no work_date or an empty range", d.work_date));
    }
    Ok(batch)
}

/// What one line of `--out` contributes to the state when the sink restarts.
#[derive(Clone, Debug, PartialEq)]
pub enum Restored {
    Punch { gateway_id: String, punch_id: String, device_time_ms: i64 },
    Record { gateway_id: String, record_id: String, revision: u32 },
    Other,
}

/// Parses one line of `--out`.
pub fn restore_line(line: &str) -> Result<Restored, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned).ok_or(format!("no string `{k}`"));
    match v.get("kind").and_then(|k| k.as_str()) {
        Some("punch") => Ok(Restored::Punch {
            gateway_id: text("gateway_id")?,
            punch_id: text("punch_id")?,
            device_time_ms: v.get("device_time_ms").and_then(|x| x.as_i64()).ok_or("no integer `device_time_ms`")?,
        }),
        Some("record") => Ok(Restored::Record {
            gateway_id: text("gateway_id")?,
            record_id: text("record_id")?,
            revision: v
                .get("revision")
                .and_then(|x| x.as_u64())
                .and_then(|r| u32::try_from(r).ok())
                .ok_or("no integer `revision`")?,
        }),
        Some(_) => Ok(Restored::Other),
        None => Err("no `kind`".into()),
    }
}

/// One punch line of `--out`, serialised straight from the decoded message (no intermediate JSON tree).
#[derive(serde::Serialize)]
struct PunchLine<'a> {
    kind: &'static str,
    gateway_id: &'a str,
    batch_seq: u64,
    punch_id: &'a str,
    device_id: &'a str,
    employee_id: &'a str,
    credential: &'a str,
    method: &'a str,
    device_time_ms: i64,
    received_time_ms: i64,
    flags: &'a [String],
    lat: Option<f64>,
    lng: Option<f64>,
    score: Option<f32>,
}

fn punch_line<'a>(gateway_id: &'a str, batch_seq: u64, p: &'a Punch) -> PunchLine<'a> {
    PunchLine {
        kind: "punch",
        gateway_id,
        batch_seq,
        punch_id: &p.punch_id,
        device_id: &p.device_id,
        employee_id: &p.employee_id,
        credential: &p.credential,
        method: &p.method,
        device_time_ms: p.device_time_ms,
        received_time_ms: p.received_time_ms,
        flags: &p.flags,
        lat: p.lat,
        lng: p.lng,
        score: p.score,
    }
}

/// One record line of `--out`.
#[derive(serde::Serialize)]
struct RecordLine<'a> {
    kind: &'static str,
    gateway_id: &'a str,
    batch_seq: u64,
    record_id: &'a str,
    revision: u32,
    employee_id: &'a str,
    work_date: &'a str,
    shift_id: &'a str,
    clock_in_ms: Option<i64>,
    clock_out_ms: Option<i64>,
    statuses: &'a [String],
    late_minutes: i32,
    early_leave_minutes: i32,
    worked_minutes: i32,
    overtime_minutes: i32,
    punch_ids: &'a [String],
    closed: bool,
    rules_version: u32,
}

fn record_line<'a>(gateway_id: &'a str, batch_seq: u64, r: &'a AttendanceRecord) -> RecordLine<'a> {
    RecordLine {
        kind: "record",
        gateway_id,
        batch_seq,
        record_id: &r.record_id,
        revision: r.revision,
        employee_id: &r.employee_id,
        work_date: &r.work_date,
        shift_id: &r.shift_id,
        clock_in_ms: r.clock_in_ms,
        clock_out_ms: r.clock_out_ms,
        statuses: &r.statuses,
        late_minutes: r.late_minutes,
        early_leave_minutes: r.early_leave_minutes,
        worked_minutes: r.worked_minutes,
        overtime_minutes: r.overtime_minutes,
        punch_ids: &r.punch_ids,
        closed: r.closed,
        rules_version: r.rules_version,
    }
}

/// Appends one JSON line.
fn json_line(text: &mut Vec<u8>, value: &impl serde::Serialize) -> Result<(), std::io::Error> {
    serde_json::to_writer(&mut *text, value).map_err(std::io::Error::other)?;
    text.push(b'\n');
    Ok(())
}

/// The result of checking one digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestCheck {
    pub work_date: String,
    pub ok: bool,
    /// Punches the gateway has for the day.
    pub expected: u64,
    /// Punches received for the day.
    pub received: u64,
}

/// What one batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchSummary {
    pub gateway_id: String,
    pub batch_seq: u64,
    pub punches: u64,
    pub punch_duplicates: u64,
    pub records: u64,
    pub records_stale: u64,
    pub digests: Vec<DigestCheck>,
    pub resend_dates: Vec<String>,
}

impl std::fmt::Display for BatchSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "batch {} from {}: {} punches ({} duplicate), {} records ({} stale)",
            self.batch_seq, self.gateway_id, self.punches, self.punch_duplicates, self.records, self.records_stale
        )?;
        for d in &self.digests {
            let verdict = if d.ok { "complete" } else { "INCOMPLETE" };
            write!(f, ", digest {} {verdict} ({}/{} punches)", d.work_date, d.received, d.expected)?;
        }
        if !self.resend_dates.is_empty() {
            write!(f, ", asked again for {}", self.resend_dates.join(" "))?;
        }
        Ok(())
    }
}

/// Totals since the sink started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub batches: u64,
    pub punches: u64,
    pub punch_duplicates: u64,
    pub records: u64,
    pub records_stale: u64,
    pub digests_ok: u64,
    pub digests_incomplete: u64,
    pub refused: u64,
    pub faults_injected: u64,
    pub tls_refused: u64,
    /// Items read back from `--out` at start.
    pub restored: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "upstream-sink summary: {} batches; {} punches ({} duplicates ignored); {} record revisions ({} stale \
             ignored); digests {} complete, {} incomplete; {} requests refused; {} faults injected; {} TLS handshakes \
             refused; {} items restored from the output file",
            self.batches,
            self.punches,
            self.punch_duplicates,
            self.records,
            self.records_stale,
            self.digests_ok,
            self.digests_incomplete,
            self.refused,
            self.faults_injected,
            self.tls_refused,
            self.restored
        )
    }
}

#[derive(Default)]
struct GatewayState {
    /// punch_id -> device_time_ms
    punches: HashMap<String, i64>,
    /// record_id -> highest revision
    records: HashMap<String, u32>,
    /// work date -> times asked again
    asked: HashMap<String, u32>,
}

/// The receiver's state and its output file. Owned by one thread.
pub struct Ledger {
    gateways: HashMap<String, GatewayState>,
    out: BufWriter<std::fs::File>,
    path: PathBuf,
    summary: Summary,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).field("summary", &self.summary).finish()
    }
}

impl Ledger {
    /// Opens (or creates) the output file and reads back what it holds. Unreadable lines are counted and skipped.
    pub fn open(path: &Path) -> Result<Ledger, SinkError> {
        let io = |source| SinkError::Out { path: path.to_owned(), source };
        let mut gateways: HashMap<String, GatewayState> = HashMap::new();
        let mut restored = 0;
        let mut bad = 0;
        if path.exists() {
            let file = std::fs::File::open(path).map_err(io)?;
            for line in std::io::BufReader::new(file).lines() {
                let line = line.map_err(io)?;
                if line.trim().is_empty() {
                    continue;
                }
                match restore_line(&line) {
                    Ok(Restored::Punch { gateway_id, punch_id, device_time_ms }) => {
                        gateways.entry(gateway_id).or_default().punches.insert(punch_id, device_time_ms);
                        restored += 1;
                    }
                    Ok(Restored::Record { gateway_id, record_id, revision }) => {
                        let rev = gateways.entry(gateway_id).or_default().records.entry(record_id).or_insert(0);
                        *rev = (*rev).max(revision);
                        restored += 1;
                    }
                    Ok(Restored::Other) => {}
                    Err(_) => bad += 1,
                }
            }
        }
        if bad > 0 {
            tracing::warn!(path = %path.display(), lines = bad, "upstream-sink: unreadable lines in the output file skipped");
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        Ok(Ledger {
            gateways,
            out: BufWriter::with_capacity(1 << 20, file),
            path: path.to_owned(),
            summary: Summary { restored, ..Summary::default() },
        })
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Applies one batch: appends what is new, syncs the file, and returns the acknowledgement.
    pub fn apply(&mut self, batch: &UploadBatch) -> Result<(UploadAck, BatchSummary), SinkError> {
        let io = |source| SinkError::Out { path: self.path.clone(), source };
        let gw = &batch.gateway_id;
        let state = self.gateways.entry(gw.clone()).or_default();
        let mut s = BatchSummary { gateway_id: gw.clone(), batch_seq: batch.batch_seq, ..BatchSummary::default() };
        // The new lines of this batch, serialised into one buffer and written to the file in one go.
        let mut text: Vec<u8> = Vec::with_capacity(batch.punches.len() * 320 + batch.records.len() * 480 + 512);
        for p in &batch.punches {
            if state.punches.contains_key(&p.punch_id) {
                s.punch_duplicates += 1;
                continue;
            }
            state.punches.insert(p.punch_id.clone(), p.device_time_ms);
            json_line(&mut text, &punch_line(gw, batch.batch_seq, p)).map_err(io)?;
            s.punches += 1;
        }
        for r in &batch.records {
            let known = state.records.get(&r.record_id).copied();
            if known.is_some_and(|rev| rev >= r.revision) {
                s.records_stale += 1;
                continue;
            }
            state.records.insert(r.record_id.clone(), r.revision);
            json_line(&mut text, &record_line(gw, batch.batch_seq, r)).map_err(io)?;
            s.records += 1;
        }
        for d in &batch.digests {
            let check = check_digest(state, d);
            if !check.ok {
                let asked = state.asked.entry(d.work_date.clone()).or_insert(0);
                if *asked < MAX_RESEND_ASKS {
                    *asked += 1;
                    s.resend_dates.push(d.work_date.clone());
                }
            }
            json_line(
                &mut text,
                &json!({
                    "kind": "digest", "gateway_id": gw, "batch_seq": batch.batch_seq, "work_date": d.work_date,
                    "punch_count": d.punch_count, "punch_ids_sha256": hex::encode(&d.punch_ids_sha256),
                    "record_count": d.record_count, "from_ms": d.from_ms, "to_ms": d.to_ms,
                    "complete": check.ok, "received_punch_count": check.received,
                }),
            )
            .map_err(io)?;
            s.digests.push(check);
        }
        self.out.write_all(&text).map_err(io)?;
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_data().map_err(io)?;
        let t = &mut self.summary;
        t.batches += 1;
        t.punches += s.punches;
        t.punch_duplicates += s.punch_duplicates;
        t.records += s.records;
        t.records_stale += s.records_stale;
        t.digests_ok += s.digests.iter().filter(|d| d.ok).count() as u64;
        t.digests_incomplete += s.digests.iter().filter(|d| !d.ok).count() as u64;
        let ack = UploadAck {
            batch_seq: batch.batch_seq,
            accepted: true,
            error: String::new(),
            resend_dates: s.resend_dates.clone(),
        };
        Ok((ack, s))
    }
}

fn check_digest(state: &GatewayState, d: &DayDigest) -> DigestCheck {
    let ids = state.punches.iter().filter(|(_, &t)| t >= d.from_ms && t < d.to_ms).map(|(id, _)| id.as_str());
    let (received, sha) = ids_sha256(ids);
    DigestCheck {
        work_date: d.work_date.clone(),
        ok: received == d.punch_count && sha == d.punch_ids_sha256,
        expected: d.punch_count,
        received,
    }
}

/// Something the sink wants its operator (or the demo) to see.
#[derive(Clone, Debug)]
pub enum SinkEvent {
    Batch(BatchSummary),
    Refused { peer: SocketAddr, status: u16, error: String },
    Fault { peer: SocketAddr, fault: Fault },
    TlsRefused { peer: SocketAddr, error: String },
}

/// An answer the ledger thread prepared for a connection.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    delay: Duration,
    /// Close the connection without answering.
    close: bool,
}

struct Job {
    body: Bytes,
    peer: SocketAddr,
    reply: oneshot::Sender<Answer>,
}

fn ack_answer(status: StatusCode, batch_seq: u64, error: String) -> Answer {
    let ack = UploadAck { batch_seq, accepted: false, error, resend_dates: Vec::new() };
    Answer { status, body: ack.encode_to_vec(), delay: Duration::ZERO, close: false }
}

/// The ledger thread: decodes, injects faults, applies, answers. Returns the totals when every sender is gone.
fn ledger_thread(
    mut ledger: Ledger,
    mut plan: FaultPlan,
    mut jobs: mpsc::Receiver<Job>,
    events: Option<mpsc::UnboundedSender<SinkEvent>>,
    tls_refused: Arc<std::sync::atomic::AtomicU64>,
) -> Summary {
    let emit = |e: SinkEvent| {
        if let Some(tx) = &events {
            let _ = tx.send(e);
        }
    };
    while let Some(job) = jobs.blocking_recv() {
        let batch = match decode_batch(&job.body) {
            Ok(b) => b,
            Err(error) => {
                ledger.summary.refused += 1;
                emit(SinkEvent::Refused { peer: job.peer, status: 400, error: error.clone() });
                let _ = job.reply.send(ack_answer(StatusCode::BAD_REQUEST, 0, error));
                continue;
            }
        };
        let fault = plan.next_fault();
        if fault != Fault::Ok {
            ledger.summary.faults_injected += 1;
            emit(SinkEvent::Fault { peer: job.peer, fault });
        }
        let answer = match fault {
            Fault::Status(code) => {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                ack_answer(status, batch.batch_seq, format!("injected fault: HTTP {code}"))
            }
            Fault::Reject => ack_answer(StatusCode::OK, batch.batch_seq, "injected fault: not accepted".into()),
            Fault::Drop => Answer { status: StatusCode::OK, body: Vec::new(), delay: Duration::ZERO, close: true },
            Fault::Ok | Fault::Slow(_) | Fault::Reset => match ledger.apply(&batch) {
                Ok((ack, summary)) => {
                    emit(SinkEvent::Batch(summary));
                    let delay = if let Fault::Slow(d) = fault { d } else { Duration::ZERO };
                    Answer { status: StatusCode::OK, body: ack.encode_to_vec(), delay, close: fault == Fault::Reset }
                }
                Err(e) => {
                    tracing::error!(error = %e, "upstream-sink: cannot write the output file");
                    ack_answer(StatusCode::SERVICE_UNAVAILABLE, batch.batch_seq, e.to_string())
                }
            },
        };
        let _ = job.reply.send(answer);
    }
    let mut summary = ledger.summary.clone();
    summary.tls_refused = tls_refused.load(std::sync::atomic::Ordering::Relaxed);
    summary
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    r
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    jobs: mpsc::Sender<Job>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    if !req.uri().path().ends_with("/v1/batches") {
        return Ok(plain(StatusCode::NOT_FOUND, "not found: batches go to POST .../v1/batches\n"));
    }
    if req.method() != hyper::Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"));
    }
    let content_type = req.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with(crate::upstream::client::PROTOBUF) {
        return Ok(plain(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/x-protobuf\n"));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(plain(StatusCode::PAYLOAD_TOO_LARGE, &format!("body: {e}\n"))),
    };
    let (reply, answer) = oneshot::channel();
    if jobs.send(Job { body, peer, reply }).await.is_err() {
        return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"));
    }
    let Ok(answer) = answer.await else { return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")) };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    if answer.close {
        // An error from the service makes hyper close the connection without writing a response.
        return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected fault: connection reset"));
    }
    let mut r = Response::new(Full::new(Bytes::from(answer.body)));
    *r.status_mut() = answer.status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(crate::upstream::client::PROTOBUF),
    );
    Ok(r)
}

/// Serves until `cancel` fires, then returns the totals. Each connection runs in its own task; batches are applied
/// in the order they reach the ledger.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ledger: Ledger,
    plan: FaultPlan,
    events: Option<mpsc::UnboundedSender<SinkEvent>>,
    cancel: CancellationToken,
) -> Summary {
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(LEDGER_QUEUE);
    let tls_refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = tls_refused.clone();
    let ev = events.clone();
    let ledger_summary = ledger.summary.clone();
    let thread = std::thread::Builder::new()
        .name("sink-ledger".into())
        .spawn(move || ledger_thread(ledger, plan, jobs_rx, ev, counter));
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "upstream-sink: cannot start the ledger thread");
            return ledger_summary;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "upstream-sink: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let acceptor = acceptor.clone();
        let jobs = jobs_tx.clone();
        let events = events.clone();
        let refused = tls_refused.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(tx) = &events {
                        let _ = tx.send(SinkEvent::TlsRefused { peer, error: e.to_string() });
                    }
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| handle(req, peer, jobs.clone()));
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, error = %e, "upstream-sink: connection ended") },
                _ = cancel.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
    drop(jobs_tx);
    match tokio::task::spawn_blocking(move || thread.join()).await {
        Ok(Ok(summary)) => summary,
        _ => ledger_summary,
    }
}

/// Options of `gatewayd upstream-sink`.
#[derive(Clone, Debug)]
pub struct SinkOptions {
    pub listen: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub out: PathBuf,
    pub faults: FaultPlan,
    /// Print nothing per batch (only the address and the summary).
    pub quiet: bool,
}

/// Loads the TLS material, binds, and returns the listener and its configuration (so problems are reported before
/// anything is served).
pub async fn bind(opts: &SinkOptions) -> Result<(TcpListener, Arc<rustls::ServerConfig>, Ledger), SinkError> {
    let tls = crate::upstream::tls::server_config(&opts.ca, &opts.cert, &opts.key)?;
    let ledger = Ledger::open(&opts.out)?;
    let listener = TcpListener::bind(&opts.listen)
        .await
        .map_err(|source| SinkError::Bind { addr: opts.listen.clone(), source })?;
    Ok((listener, tls, ledger))
}

/// Prints events as lines on stdout.
pub fn print_event(e: &SinkEvent) {
    match e {
        SinkEvent::Batch(b) => println!("{b}"),
        SinkEvent::Refused { peer, status, error } => println!("refused a request from {peer}: HTTP {status}: {error}"),
        SinkEvent::Fault { peer, fault } => println!("injected fault for {peer}: {fault:?}"),
        SinkEvent::TlsRefused { peer, error } => println!("refused a TLS connection from {peer}: {error}"),
    }
}

/// `gatewayd upstream-sink`: serves until SIGINT/SIGTERM, printing one line per batch and a summary at the end.
pub async fn run(opts: SinkOptions) -> Result<Summary, SinkError> {
    let (listener, tls, ledger) = bind(&opts).await?;
    let addr = listener.local_addr().map_err(|source| SinkError::Bind { addr: opts.listen.clone(), source })?;
    if ledger.summary.restored > 0 {
        println!("restored {} items from {}", ledger.summary.restored, opts.out.display());
    }
    println!("upstream-sink listening on https://{addr}/v1/batches (client certificates from {})", opts.ca.display());
    let _ = std::io::stdout().flush();
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let quiet = opts.quiet;
    let printer = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            if !quiet || !matches!(e, SinkEvent::Batch(_)) {
                print_event(&e);
                let _ = std::io::stdout().flush();
            }
        }
    });
    let stop = cancel.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => tracing::warn!("upstream-sink: cannot install signal handlers"),
        }
        stop.cancel();
    });
    let summary = serve(listener, tls, ledger, opts.faults, Some(tx), cancel).await;
    let _ = printer.await;
    println!("{summary}");
    let _ = std::io::stdout().flush();
    Ok(summary)
}

/// For `gatewayd demo`: throwaway certificates in `dir`, a receiver behind mTLS on a free loopback port that prints
/// each accepted batch, and the `[upstream]` configuration section that points a gateway at it (client certificate
/// included). The receiver stops when `cancel` fires.
pub async fn demo_receiver(
    dir: &Path,
    gateway_id: &str,
    cancel: CancellationToken,
) -> Result<(String, tokio::task::JoinHandle<Summary>), SinkError> {
    let certs = crate::certs::write_dev_set(dir, gateway_id, 365)
        .map_err(|e| SinkError::Out { path: dir.to_owned(), source: std::io::Error::other(e) })?;
    let opts = SinkOptions {
        listen: "127.0.0.1:0".into(),
        ca: certs.ca.clone(),
        cert: certs.server_cert,
        key: certs.server_key,
        out: dir.join("received.jsonl"),
        faults: FaultPlan::default(),
        quiet: false,
    };
    let (listener, tls, ledger) = bind(&opts).await?;
    let addr = listener.local_addr().map_err(|source| SinkError::Bind { addr: opts.listen.clone(), source })?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            match e {
                SinkEvent::Batch(b) => println!("  cloud  {b}"),
                other => {
                    print!("  cloud  ");
                    print_event(&other);
                }
            }
        }
    });
    println!(
        "  cloud    https://{addr}/v1/batches (reference receiver, mTLS; accepted items in {})",
        opts.out.display()
    );
    let task = tokio::spawn(serve(listener, tls, ledger, opts.faults, Some(tx), cancel));
    let section = format!(
        "\n[upstream]\nurl = \"https://localhost:{port}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nlinger = \"500ms\"\n",
        port = addr.port(),
        ca = certs.ca.display(),
        cert = certs.client_cert.display(),
        key = certs.client_key.display()
    );
    Ok((section, task))
}

#[cfg(test)]
mod tests;
