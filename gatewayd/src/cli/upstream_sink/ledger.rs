//! The receiver's state: what each gateway sent (punch ids, record revisions, dates asked again), the output file it is
//! appended to and read back from, and the checks a batch goes through ([`Ledger::apply`]).

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use serde_json::json;

use super::{SinkError, MAX_RESEND_ASKS};
use crate::outbox::digest::ids_sha256;
use crate::proto::upstream::{AttendanceRecord, DayDigest, Punch, UploadAck, UploadBatch};

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
    pub(super) summary: Summary,
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
