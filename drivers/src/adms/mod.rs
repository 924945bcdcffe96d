//! ZKTeco PUSH ("ADMS" / iclock) terminals over HTTP (SPEC 3.2), served as routes of the API listener.
//!
//! A terminal is known by its serial number (`SN=` on every request); unknown serial numbers get 403. A terminal with
//! `allow_from` must also push from one of those addresses: a request from elsewhere gets 403 and is counted in
//! `gatewayd_device_requests_refused{reason="source_address"}`. The peer address is the [`Peer`] extension the server
//! puts on each request (plain HTTP and TLS alike); without one, such a terminal is refused. The exchange:
//! - `GET /iclock/cdata?SN=…&options=all`: the handshake. The reply starts `GET OPTION FROM: {SN}` and sets
//!   `ATTLOGStamp` (the last stamp this gateway stored for the device), `Delay` (seconds between polls), `TransFlag`
//!   (attendance records only), `TimeZone` (the site's UTC offset now: hours when whole, else minutes, as the protocol
//!   reads values outside -12..14 as minutes) and `Realtime=1`; the HTTP `Date` header carries the gateway's clock.
//! - `POST /iclock/cdata?SN=…&table=ATTLOG&Stamp=…`: records, one per line ([`attlog`]). All records of the upload go
//!   to the store in one `submit_many`; the answer `OK: {n}` is sent only after they are durable. Malformed lines are
//!   counted and skipped (re-sending them would not make them valid). If the store cannot take the upload (full,
//!   failing, shutting down) the answer is 503 and the device re-sends the whole upload later; records already stored are
//!   recognised by their punch id (a hash of device, PIN, method and time: ATTLOG has no sequence numbers), so
//!   re-uploads, including those after a stamp reset, create no duplicates.
//! - `GET /iclock/getrequest` (command poll: no commands, `OK`), `POST /iclock/devicecmd` (command results: `OK`),
//!   `GET /iclock/ping` (`OK`).
//!
//! # Stamps
//! The terminal sends the stamp of its newest record with each upload (`Stamp=`); the handshake hands the last stamp
//! back as `ATTLOGStamp`, so the terminal sends only newer records. A stamp is recorded only after its upload is durable
//! and, with [`Adms::persist_stamps`], written to a small JSON file (`{SN: stamp}`, temporary file + rename) so that
//! after a restart the terminal does not re-send its whole log. A lost or stale stamp file costs a re-upload, never a
//! duplicate (punch ids are content hashes); an unreadable file is logged and ignored.
//!
//! Device times are read in the terminal's `timezone` (else the site's), and the handshake's `TimeZone` is that zone's
//! offset now. A record counts as real-time (so the rules may flag `clock_skew`) when the device has
//! been polling without a gap for [`SETTLE`] and the upload is small; uploads right after a handshake are backlogs.

pub mod attlog;
pub mod commands;
pub mod sim;
pub mod stamps;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::commands::{CommandQueue, CommandResult, TerminalUser};
use self::stamps::StampFile;
use crate::config::{DeviceConfig, DriverKind};
use crate::history::History;
use crate::sink::{Outcome, PunchSink, Rejection};
use crate::status::StatusBoard;

/// The driver label of ADMS terminals.
pub const DRIVER: &str = "adms";
/// The stamp file's name in the data dir.
pub const STAMP_FILE: &str = "adms-stamps.json";
/// Seconds between the terminal's command polls (`Delay` option).
pub const DELAY_SECS: u64 = 10;
/// A terminal silent this long is offline.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(6 * DELAY_SECS);
/// How long a terminal must have been polling without a gap before its uploads count as real-time.
pub const SETTLE: Duration = Duration::from_secs(30);
/// Uploads with more records than this are backlogs, not real-time.
pub const REALTIME_MAX_RECORDS: usize = 10;

/// A terminal silent longer than this has its records of the gap asked for (`DATA QUERY ATTLOG`) once it is back,
/// unless [`SILENCE_ENV`] says otherwise.
pub const SILENCE: Duration = OFFLINE_AFTER;
/// The environment variable that sets [`SILENCE`] in milliseconds (100 to 3,600,000), for tests. Not a configuration
/// key: the terminal's own upload interval is what it follows.
pub const SILENCE_ENV: &str = "GATEWAYD_ADMS_SILENCE_MS";
/// How many past days the daily count check compares.
pub const COUNT_DAYS: i64 = 7;
/// How long a roster or query command may wait for its terminal.
pub const COMMAND_TTL_MS: i64 = 7 * 86_400_000;
/// A backfill after silence starts this long before the latest stored punch of the terminal.
pub const BACKFILL_OVERLAP_MS: i64 = 10 * 60_000;

/// [`SILENCE`], or [`SILENCE_ENV`] when set to a number of milliseconds from 100 to 3,600,000.
pub fn silence() -> Duration {
    std::env::var(SILENCE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| (100..=3_600_000).contains(ms))
        .map_or(SILENCE, Duration::from_millis)
}

#[derive(Debug, Default)]
struct Seen {
    last: Option<Instant>,
    online_since: Option<Instant>,
}

/// The address a request came from, put on the request by the server (the routes run behind plain HTTP and TLS
/// listeners alike, which know it differently).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer(pub std::net::IpAddr);

/// A terminal as configured: its device id, the networks it may push from (empty: any) and the time zone of its clock.
#[derive(Clone, Debug)]
struct Terminal {
    id: String,
    allow_from: Arc<[ipnet::IpNet]>,
    timezone: jiff::tz::TimeZone,
}

/// The shared state of the ADMS routes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Adms {
    /// Serial number → the terminal.
    devices: Arc<RwLock<HashMap<String, Terminal>>>,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    /// Serial number → the last `Stamp` of a durable upload.
    stamps: Arc<Mutex<HashMap<String, String>>>,
    /// Where stamps survive restarts ([`Adms::persist_stamps`]).
    stamp_file: Option<Arc<StampFile>>,
    sink: PunchSink,
    status: StatusBoard,
    timezone: jiff::tz::TimeZone,
    max_body_bytes: usize,
    /// The command channel ([`Adms::with_commands`]); without it every poll is answered `OK`.
    commands: Option<CommandQueue>,
    /// What the store holds (for backfill ranges and count checks).
    history: History,
    silence: Duration,
}

impl Adms {
    /// `sink` is relabelled for [`DRIVER`]; `max_body_bytes` is the API body limit (named in the 413 answer).
    pub fn new(
        devices: &[DeviceConfig],
        sink: &PunchSink,
        status: StatusBoard,
        timezone: jiff::tz::TimeZone,
        max_body_bytes: usize,
    ) -> Adms {
        let adms = Adms {
            devices: Arc::default(),
            seen: Arc::default(),
            stamps: Arc::default(),
            stamp_file: None,
            sink: sink.for_driver(DRIVER),
            status,
            timezone,
            max_body_bytes,
            commands: None,
            history: History::default(),
            silence: silence(),
        };
        adms.update_devices(devices);
        adms
    }

    /// Serves the command channel from `queue`, asking `history` what the store holds.
    pub fn with_commands(mut self, queue: CommandQueue, history: History) -> Adms {
        self.commands = Some(queue);
        self.history = history;
        self
    }

    /// The command queue, when there is one (for the API).
    pub fn commands(&self) -> Option<&CommandQueue> {
        self.commands.as_ref()
    }

    /// The device ids of the configured terminals.
    pub fn terminals(&self) -> Vec<String> {
        self.devices.read().map(|t| t.values().map(|d| d.id.clone()).collect()).unwrap_or_default()
    }

    fn sn_of(&self, device: &str) -> Option<String> {
        self.devices.read().ok().and_then(|t| t.iter().find(|(_, d)| d.id == device).map(|(sn, _)| sn.clone()))
    }

    /// Queues `DATA QUERY ATTLOG` for `[from, to)` (Unix ms) of terminal `device`, in the terminal's local time.
    pub async fn backfill(
        &self,
        device: &str,
        from_ms: i64,
        to_ms: i64,
        reason: &str,
    ) -> Result<commands::Command, String> {
        let queue = self.commands.as_ref().ok_or("the command channel is not enabled")?;
        let sn = self.sn_of(device).ok_or_else(|| format!("`{device}` is not an adms terminal"))?;
        let command = query_attlog(&self.timezone_of(&sn), from_ms, to_ms)?;
        let now = jiff::Timestamp::now().as_millisecond();
        let c = queue.enqueue(device, &command, reason, now, COMMAND_TTL_MS).map_err(|e| e.to_string())?;
        queue.flush().await.map_err(|e| e.to_string())?;
        tracing::info!(device = %device, id = c.id, reason, command = %c.command, "adms backfill queued");
        Ok(c)
    }

    /// Brings every terminal's users to `people` (PIN → user): `DATA UPDATE USERINFO` for new or changed people,
    /// `DATA DELETE USERINFO` for those no longer there. Returns the number of commands queued.
    pub async fn sync_users(&self, people: &std::collections::BTreeMap<String, TerminalUser>) -> Result<usize, String> {
        let Some(queue) = self.commands.as_ref() else { return Ok(0) };
        let now = jiff::Timestamp::now().as_millisecond();
        let mut queued = 0;
        for device in self.terminals() {
            let on_terminal = queue.users(&device).map_err(|e| e.to_string())?;
            for (pin, user) in people {
                if on_terminal.get(pin) != Some(user) {
                    queue
                        .enqueue(&device, &update_userinfo(pin, user), "roster", now, COMMAND_TTL_MS)
                        .map_err(|e| e.to_string())?;
                    queue.set_user(&device, pin, Some(user)).map_err(|e| e.to_string())?;
                    queued += 1;
                }
            }
            for pin in on_terminal.keys().filter(|pin| !people.contains_key(*pin)) {
                queue
                    .enqueue(
                        &device,
                        &format!("DATA DELETE USERINFO PIN={}", clean(pin)),
                        "roster",
                        now,
                        COMMAND_TTL_MS,
                    )
                    .map_err(|e| e.to_string())?;
                queue.set_user(&device, pin, None).map_err(|e| e.to_string())?;
                queued += 1;
            }
        }
        queue.flush().await.map_err(|e| e.to_string())?;
        Ok(queued)
    }

    /// Applies a (re)loaded device list: serial numbers added or removed take effect on the next request.
    pub fn update_devices(&self, devices: &[DeviceConfig]) {
        let table: HashMap<String, Terminal> = devices
            .iter()
            .filter(|d| d.driver == DriverKind::Adms)
            .filter_map(|d| {
                let allow_from =
                    d.allow_from.iter().flatten().filter_map(|a| crate::config::parse_allow(a).ok()).collect();
                let timezone = d.device_timezone(&self.timezone);
                d.serial_number.clone().map(|sn| (sn, Terminal { id: d.id.clone(), allow_from, timezone }))
            })
            .collect();
        for t in table.values() {
            if self.status.get(&t.id).is_none() {
                self.status.register(&t.id, DRIVER);
            }
        }
        if let Ok(mut t) = self.devices.write() {
            *t = table;
        }
    }

    fn device_of(&self, sn: &str) -> Option<String> {
        self.devices.read().ok().and_then(|t| t.get(sn).map(|d| d.id.clone()))
    }

    /// The time zone of the terminal's clock: its own `timezone`, else the site's.
    fn timezone_of(&self, sn: &str) -> jiff::tz::TimeZone {
        self.terminal(sn).map_or_else(|| self.timezone.clone(), |t| t.timezone)
    }

    fn terminal(&self, sn: &str) -> Option<Terminal> {
        self.devices.read().ok().and_then(|t| t.get(sn).cloned())
    }

    /// Records a request from `sn`; returns whether the terminal has been polling steadily for [`SETTLE`]. A terminal
    /// that comes back after more than [`silence`] has the records of its silence asked for.
    fn touch(&self, sn: &str, device: &str, handshake: bool) -> bool {
        let now = Instant::now();
        let silent = self
            .seen
            .lock()
            .ok()
            .and_then(|seen| seen.get(sn).and_then(|s| s.last))
            .is_some_and(|l| now.duration_since(l) > self.silence);
        if silent && self.commands.is_some() {
            let (adms, device) = (self.clone(), device.to_owned());
            tokio::spawn(async move { adms.backfill_silence(&device).await });
        }
        self.touch_at(sn, device, handshake, now)
    }

    /// Queues the backfill of a terminal that was silent: from its latest stored punch (less an overlap; a day back
    /// when there is none) to now.
    async fn backfill_silence(&self, device: &str) {
        let now = jiff::Timestamp::now().as_millisecond();
        let from = match self.history.latest_device_time(device).await {
            Ok(Some(t)) => t - BACKFILL_OVERLAP_MS,
            Ok(None) => now - 86_400_000,
            Err(e) => {
                tracing::warn!(device = %device, error = %e, "adms backfill after silence not queued: store unreadable");
                return;
            }
        };
        if let Err(e) = self.backfill(device, from, now + 60_000, "silence").await {
            tracing::warn!(device = %device, error = %e, "adms backfill after silence not queued");
        }
    }

    /// [`Adms::touch`] at `now` (the time is a parameter so the heuristic can be tested).
    fn touch_at(&self, sn: &str, device: &str, handshake: bool, now: Instant) -> bool {
        let (settled, came_online) = match self.seen.lock() {
            Ok(mut seen) => {
                let s = seen.entry(sn.to_owned()).or_default();
                let gap = s.last.is_none_or(|l| now.duration_since(l) > OFFLINE_AFTER);
                let came_online = gap;
                if gap || handshake {
                    s.online_since = Some(now);
                }
                s.last = Some(now);
                (s.online_since.is_some_and(|t| now.duration_since(t) >= SETTLE), came_online)
            }
            Err(_) => (false, false),
        };
        if came_online {
            self.status.set_online(device, DRIVER, true);
        } else {
            self.status.seen(device, DRIVER);
        }
        settled
    }

    /// Keeps stamps in `path` (read now, rewritten whenever a stamp changes), so they survive restarts. A missing
    /// file is an empty one; an unreadable one is logged and replaced on the next upload.
    pub fn persist_stamps(mut self, path: impl Into<std::path::PathBuf>) -> Adms {
        let file = StampFile::new(path.into());
        match file.load() {
            Ok(loaded) => {
                tracing::debug!(path = %file.path().display(), terminals = loaded.len(), "adms stamps loaded");
                if let Ok(mut stamps) = self.stamps.lock() {
                    stamps.extend(loaded);
                }
            }
            Err(e) => tracing::warn!(error = %e, "adms stamps not loaded; terminals may re-send their logs"),
        }
        self.stamp_file = Some(Arc::new(file));
        self
    }

    fn stamp(&self, sn: &str) -> Option<String> {
        self.stamps.lock().ok().and_then(|s| s.get(sn).cloned())
    }

    /// Records the stamp of a durable upload, and writes the stamp file when it changed. Stamps are numbers; anything
    /// else (which would end up in the handshake reply) is ignored.
    async fn set_stamp(&self, sn: &str, stamp: &str) {
        let Some(stamp) = stamps::clean(stamp) else {
            tracing::debug!(sn = %sn, "adms upload with an unusable Stamp ignored");
            return;
        };
        match self.stamps.lock() {
            Ok(mut stamps) => {
                if stamps.get(sn) == Some(&stamp) {
                    return;
                }
                stamps.insert(sn.to_owned(), stamp);
            }
            Err(_) => return,
        }
        let Some(file) = self.stamp_file.clone() else { return };
        let stamps = self.stamps.clone();
        match tokio::task::spawn_blocking(move || file.save(&stamps)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "adms stamp not saved; after a restart the terminal re-sends"),
            Err(e) => tracing::warn!(error = %e, "adms stamp not saved"),
        }
    }

    /// Marks terminals offline once they fall silent; runs until cancelled.
    pub fn spawn_presence(&self, cancel: CancellationToken, tasks: &TaskTracker) {
        let adms = self.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(DELAY_SECS));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = cancel.cancelled() => return,
                }
                let gone: Vec<String> = match adms.seen.lock() {
                    Ok(mut seen) => seen
                        .iter_mut()
                        .filter(|(_, s)| s.last.is_some_and(|l| l.elapsed() > OFFLINE_AFTER))
                        .map(|(sn, s)| {
                            s.online_since = None;
                            s.last = None;
                            sn.clone()
                        })
                        .collect(),
                    Err(_) => Vec::new(),
                };
                for sn in gone {
                    if let Some(device) = adms.device_of(&sn) {
                        adms.status.set_online(&device, DRIVER, false);
                    }
                }
            }
        });
    }

    /// The `/iclock/*` routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/iclock/cdata", get(handshake).post(upload))
            .route("/iclock/getrequest", get(poll))
            .route("/iclock/devicecmd", axum::routing::post(command_result))
            .route("/iclock/ping", get(ping))
            .route_layer(axum::middleware::from_fn_with_state(self.clone(), source_guard))
            .with_state(self.clone())
    }
}

type Params = Query<HashMap<String, String>>;

/// Refuses a request for a terminal with `allow_from` that does not come from one of its networks (IPv4-mapped IPv6
/// addresses are read as IPv4). Requests for unknown serial numbers pass on, to be refused by [`identify`].
async fn source_guard(State(adms): State<Adms>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let sn = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .ok()
        .and_then(|Query(q)| param(&q, "SN").map(str::to_owned));
    if let Some(t) = sn.as_deref().and_then(|sn| adms.terminal(sn)) {
        if !t.allow_from.is_empty() {
            let peer = req.extensions().get::<Peer>().map(|Peer(ip)| ip.to_canonical());
            if !peer.is_some_and(|ip| t.allow_from.iter().any(|n| n.contains(&ip))) {
                let shown = peer.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
                tracing::warn!(device = %t.id, peer = %shown, "adms request from an address not in allow_from refused");
                adms.sink.metrics().refused(DRIVER, &t.id, "source_address");
                return Refusal(StatusCode::FORBIDDEN, "ERROR: this device may not push from this address\n")
                    .into_response();
            }
        }
    }
    next.run(req).await
}

/// A plain-text answer with the HTTP `Date` header (the terminals set their clock from it).
fn text(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    let now = jiff::Timestamp::now();
    let mut date = String::new();
    if jiff::fmt::rfc2822::DateTimePrinter::new().print_timestamp_rfc9110(&now, &mut date).is_ok() {
        if let Ok(v) = HeaderValue::from_str(&date) {
            headers.insert(header::DATE, v);
        }
    }
    resp
}

fn param<'a>(q: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    q.get(key).or_else(|| q.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v)).map(String::as_str)
}

/// A request refused before it reached a device: status and body.
struct Refusal(StatusCode, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        text(self.0, self.1.to_owned())
    }
}

/// Resolves the `SN` parameter to a configured device, or the error answer.
fn identify(adms: &Adms, q: &HashMap<String, String>) -> Result<(String, String), Refusal> {
    let Some(sn) = param(q, "SN").filter(|s| !s.is_empty()) else {
        return Err(Refusal(StatusCode::BAD_REQUEST, "ERROR: missing SN parameter\n"));
    };
    match adms.device_of(sn) {
        Some(device) => Ok((sn.to_owned(), device)),
        None => {
            tracing::warn!(sn = %sn.chars().take(64).collect::<String>(), "adms request from an unknown serial number");
            Err(Refusal(StatusCode::FORBIDDEN, "ERROR: unknown device serial number\n"))
        }
    }
}

/// The `TimeZone` option: the site's current UTC offset in hours when whole, else in minutes.
pub fn timezone_option(offset_seconds: i32) -> String {
    if offset_seconds % 3600 == 0 {
        (offset_seconds / 3600).to_string()
    } else {
        (offset_seconds / 60).to_string()
    }
}

/// The handshake answer for `sn`.
pub fn handshake_reply(sn: &str, stamp: Option<&str>, offset_seconds: i32) -> String {
    let mut out = String::with_capacity(256);
    let _ = writeln!(out, "GET OPTION FROM: {sn}");
    let _ = writeln!(out, "ATTLOGStamp={}", stamp.unwrap_or("None"));
    // 9999: do not send operation logs or photos; this gateway stores attendance records only.
    let _ = writeln!(out, "OPERLOGStamp=9999");
    let _ = writeln!(out, "ATTPHOTOStamp=9999");
    let _ = writeln!(out, "ErrorDelay=30");
    let _ = writeln!(out, "Delay={DELAY_SECS}");
    let _ = writeln!(out, "TransTimes=00:00;14:05");
    let _ = writeln!(out, "TransInterval=1");
    let _ = writeln!(out, "TransFlag=TransData AttLog");
    let _ = writeln!(out, "TimeZone={}", timezone_option(offset_seconds));
    let _ = writeln!(out, "Realtime=1");
    let _ = writeln!(out, "Encrypt=None");
    out
}

async fn handshake(State(adms): State<Adms>, Query(q): Params) -> Response {
    let (sn, device) = match identify(&adms, &q) {
        Ok(x) => x,
        Err(refusal) => return refusal.into_response(),
    };
    adms.touch(&sn, &device, true);
    if let Some(queue) = &adms.commands {
        // The terminal's firmware, users and log count for the devices API.
        let now = jiff::Timestamp::now().as_millisecond();
        if let Err(e) = queue.enqueue(&device, "INFO", "info", now, 86_400_000) {
            tracing::warn!(device = %device, error = %e, "adms INFO not queued");
        }
    }
    let offset = adms.timezone_of(&sn).to_offset(jiff::Timestamp::now()).seconds();
    if let Some(ver) = param(&q, "pushver") {
        adms.status.detail(&device, DRIVER, format!("SN {sn}, push {}", ver.chars().take(16).collect::<String>()));
    }
    tracing::info!(device = %device, sn = %sn, "adms handshake");
    text(StatusCode::OK, handshake_reply(&sn, adms.stamp(&sn).as_deref(), offset))
}

async fn upload(State(adms): State<Adms>, Query(q): Params, body: Result<Bytes, BytesRejection>) -> Response {
    let (sn, device) = match identify(&adms, &q) {
        Ok(x) => x,
        Err(refusal) => return refusal.into_response(),
    };
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            adms.sink.count_unparsed(&device, "body_too_large");
            let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!(
                    "ERROR: upload larger than {} bytes (api.max_body_bytes); the device should send fewer records per \
                     request\n",
                    adms.max_body_bytes
                )
            } else {
                format!("ERROR: cannot read the upload: {rejection}\n")
            };
            tracing::warn!(device = %device, %status, "adms upload refused");
            return text(status, msg);
        }
    };
    let settled = adms.touch(&sn, &device, false);
    let table = param(&q, "table").unwrap_or_default();
    if !table.eq_ignore_ascii_case("ATTLOG") {
        // Operation logs, photos, user data: not punches. Acknowledge so the terminal moves on.
        let lines = attlog::decode_body(&body).lines().filter(|l| !l.trim().is_empty()).count();
        return text(StatusCode::OK, format!("OK: {lines}\n"));
    }
    let text_body = attlog::decode_body(&body);
    let (records, errors) = attlog::parse_attlog(&text_body);
    let now = jiff::Timestamp::now().as_millisecond();
    let timezone = adms.timezone_of(&sn);
    let realtime = settled && records.len() <= REALTIME_MAX_RECORDS;
    let mut punches = Vec::with_capacity(records.len());
    let mut bad = errors.len();
    for e in &errors {
        tracing::debug!(device = %device, line = e.line, reason = %e.reason, "adms line skipped");
        adms.sink.count_unparsed(&device, "malformed_line");
    }
    for r in &records {
        match attlog::to_punch(&device, r, &timezone, now, realtime) {
            Ok(p) => punches.push(p),
            Err(e) => {
                bad += 1;
                tracing::debug!(device = %device, line = e.line, reason = %e.reason, "adms line skipped");
                adms.sink.count_unparsed(&device, "malformed_line");
            }
        }
    }
    if bad > 0 {
        adms.status.error(&device, DRIVER, format!("{bad} malformed ATTLOG line(s) skipped in the last upload"));
    }
    let outcomes = adms.sink.submit_many(punches).await;
    let mut stored = 0usize;
    for o in &outcomes {
        match o {
            Outcome::Stored { .. } => stored += 1,
            Outcome::Rejected(Rejection::Invalid(_)) => {}
            Outcome::Rejected(r) => {
                tracing::warn!(device = %device, reason = %r, "adms upload not stored; the terminal will re-send");
                return text(StatusCode::SERVICE_UNAVAILABLE, format!("ERROR: {r}\n"));
            }
        }
    }
    if let Some(stamp) = param(&q, "Stamp") {
        adms.set_stamp(&sn, stamp).await;
    }
    tracing::debug!(device = %device, stored, skipped = bad, "adms upload stored");
    text(StatusCode::OK, format!("OK: {stored}\n"))
}

async fn ping(State(adms): State<Adms>, Query(q): Params) -> Response {
    let (sn, device) = match identify(&adms, &q) {
        Ok(x) => x,
        Err(refusal) => return refusal.into_response(),
    };
    adms.touch(&sn, &device, false);
    text(StatusCode::OK, "OK\n".into())
}

/// `GET /iclock/getrequest`: the terminal's queued commands (`C:{id}:{command}` lines), or `OK`. The first poll of a
/// day queues that day's count check.
async fn poll(State(adms): State<Adms>, Query(q): Params) -> Response {
    let (sn, device) = match identify(&adms, &q) {
        Ok(x) => x,
        Err(refusal) => return refusal.into_response(),
    };
    adms.touch(&sn, &device, false);
    if let Some(info) = param(&q, "INFO") {
        // Firmware version, user count, … as the terminal reports them.
        adms.status.detail(&device, DRIVER, format!("SN {sn}, info {}", info.chars().take(80).collect::<String>()));
    }
    let Some(queue) = adms.commands.as_ref() else { return text(StatusCode::OK, "OK\n".into()) };
    let now = jiff::Timestamp::now();
    let tz = adms.timezone_of(&sn);
    let today = now.to_zoned(tz.clone()).date();
    let mut checks_queued = false;
    match queue.count_check_due(&device, &today.to_string()) {
        Ok(true) => {
            checks_queued = true;
            for back in 1..=COUNT_DAYS {
                let Ok(day) = today.checked_sub(jiff::Span::new().days(back)) else { continue };
                let Ok((from, to)) = day_range(&tz, day) else { continue };
                if let Ok(range) = query_range(&tz, from, to) {
                    let _ = queue.enqueue(
                        &device,
                        &format!("VERIFY SUM ATTLOG {range}"),
                        "count_check",
                        now.as_millisecond(),
                        86_400_000,
                    );
                }
            }
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(device = %device, error = %e, "adms count check not queued"),
    }
    let taken = match queue.take(&device, now.as_millisecond()) {
        Ok(taken) => taken,
        Err(e) => {
            tracing::error!(device = %device, error = %e, "adms command queue unreadable");
            return text(StatusCode::OK, "OK\n".into());
        }
    };
    if taken.is_empty() && !checks_queued {
        // Nothing handed out or queued (an expiry written on the way is re-derived if lost): no flush per idle poll.
        return text(StatusCode::OK, "OK\n".into());
    }
    if let Err(e) = queue.flush().await {
        tracing::error!(device = %device, error = %e, "adms command queue not flushed");
        return text(StatusCode::SERVICE_UNAVAILABLE, "ERROR: command queue unavailable\n".into());
    }
    if taken.is_empty() {
        return text(StatusCode::OK, "OK\n".into());
    }
    let mut body = String::new();
    for c in &taken {
        let _ = writeln!(body, "C:{}:{}", c.id, c.command);
    }
    tracing::debug!(device = %device, commands = taken.len(), "adms commands handed out");
    text(StatusCode::OK, body)
}

/// `POST /iclock/devicecmd`: the results of commands. A count check's result is compared with the store; a terminal
/// that has more records of a day than the store has that day backfilled.
async fn command_result(State(adms): State<Adms>, Query(q): Params, body: Result<Bytes, BytesRejection>) -> Response {
    let (sn, device) = match identify(&adms, &q) {
        Ok(x) => x,
        Err(refusal) => return refusal.into_response(),
    };
    adms.touch(&sn, &device, false);
    let (Some(queue), Ok(body)) = (adms.commands.as_ref(), body) else { return text(StatusCode::OK, "OK\n".into()) };
    let (results, bad) = commands::parse_results(&attlog::decode_body(&body));
    for _ in 0..bad {
        adms.sink.count_unparsed(&device, "malformed_command_result");
    }
    let now = jiff::Timestamp::now().as_millisecond();
    for r in &results {
        match queue.complete(&device, r, now) {
            Ok(Some(c)) => adms.on_result(&sn, &device, &c, r).await,
            Ok(None) => tracing::debug!(device = %device, id = r.id, "adms result for no pending command"),
            Err(e) => tracing::error!(device = %device, error = %e, "adms command result not recorded"),
        }
    }
    if let Err(e) = queue.flush().await {
        tracing::error!(device = %device, error = %e, "adms command results not flushed");
        return text(StatusCode::SERVICE_UNAVAILABLE, "ERROR: command queue unavailable\n".into());
    }
    text(StatusCode::OK, "OK\n".into())
}

impl Adms {
    async fn on_result(&self, sn: &str, device: &str, c: &commands::Command, r: &CommandResult) {
        tracing::info!(device = %device, id = c.id, code = r.code, command = %c.command, "adms command done");
        if r.code < 0 {
            if c.reason == "count_check" {
                // Firmware without VERIFY SUM (it answers an error code): the count check is not available there.
                tracing::debug!(device = %device, code = r.code, "adms count check not supported by the terminal");
            } else {
                self.status.error(
                    device,
                    DRIVER,
                    format!("command {} failed on the terminal: Return={}", c.id, r.code),
                );
            }
            return;
        }
        if r.cmd.eq_ignore_ascii_case("INFO") || c.command == "INFO" {
            let f =
                |k: &str| r.fields.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)).map_or("?", |(_, v)| v.as_str());
            self.status.detail(
                device,
                DRIVER,
                format!(
                    "SN {sn}, {} firmware {}, {} users, {} fingerprints, {} faces, {} records",
                    f("DeviceName"),
                    f("FWVersion"),
                    f("UserCount"),
                    f("FPCount"),
                    f("FaceCount"),
                    f("TransactionCount")
                ),
            );
            return;
        }
        let Some(range) = c.command.strip_prefix("VERIFY SUM ATTLOG ") else { return };
        let Some(terminal) = commands::reported_count(r) else {
            tracing::warn!(device = %device, id = c.id, "adms count check answered without a count");
            return;
        };
        let tz = self.timezone_of(sn);
        let Ok((from, to)) = parse_query_range(&tz, range) else { return };
        let stored = match self.history.count_between(device, from, to).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(device = %device, error = %e, "adms count check: store unreadable");
                return;
            }
        };
        if stored == terminal {
            return;
        }
        let day = jiff::Timestamp::from_millisecond(from)
            .map(|t| t.to_zoned(tz.clone()).date().to_string())
            .unwrap_or_default();
        let message = format!("count check {day}: the terminal has {terminal} records, the gateway {stored}");
        tracing::warn!(device = %device, day = %day, terminal, stored, "adms count mismatch");
        self.status.error(device, DRIVER, message);
        if terminal > stored {
            if let Err(e) = self.backfill(device, from, to, "count_mismatch").await {
                tracing::warn!(device = %device, error = %e, "adms backfill after a count mismatch not queued");
            }
        }
    }
}

/// A command value without tabs, line breaks or other control characters (they separate fields and commands).
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// `DATA UPDATE USERINFO` for one person.
pub fn update_userinfo(pin: &str, user: &TerminalUser) -> String {
    let mut c = format!("DATA UPDATE USERINFO PIN={}\tName={}\tPri=0", clean(pin), clean(&user.name));
    if let Some(card) = &user.card {
        let _ = write!(c, "\tCard={}", clean(card));
    }
    c
}

/// Local midnight to the next local midnight of `day` in `tz`, as Unix ms.
pub fn day_range(tz: &jiff::tz::TimeZone, day: jiff::civil::Date) -> Result<(i64, i64), String> {
    let start = day.to_zoned(tz.clone()).map_err(|e| e.to_string())?;
    let end = start.tomorrow().map_err(|e| e.to_string())?;
    Ok((start.timestamp().as_millisecond(), end.timestamp().as_millisecond()))
}

/// `StartTime=…\tEndTime=…` of `[from, to)` in the terminal's local time (the end is the last second inside).
pub fn query_range(tz: &jiff::tz::TimeZone, from_ms: i64, to_ms: i64) -> Result<String, String> {
    let local = |ms: i64| -> Result<String, String> {
        let t = jiff::Timestamp::from_millisecond(ms).map_err(|e| e.to_string())?;
        Ok(t.to_zoned(tz.clone()).strftime("%Y-%m-%d %H:%M:%S").to_string())
    };
    if from_ms >= to_ms {
        return Err("the range is empty".into());
    }
    Ok(format!("StartTime={}\tEndTime={}", local(from_ms)?, local(to_ms - 1000)?))
}

/// Reads a `StartTime=…\tEndTime=…` range back as `[from, to)` Unix ms.
pub fn parse_query_range(tz: &jiff::tz::TimeZone, range: &str) -> Result<(i64, i64), String> {
    let field = |name: &str| -> Result<i64, String> {
        let v = range
            .split('\t')
            .find_map(|f| f.trim().strip_prefix(name).and_then(|r| r.strip_prefix('=')))
            .ok_or_else(|| format!("no {name}"))?;
        let t = jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", v.trim()).map_err(|e| e.to_string())?;
        Ok(t.to_zoned(tz.clone()).map_err(|e| e.to_string())?.timestamp().as_millisecond())
    };
    Ok((field("StartTime")?, field("EndTime")? + 1000))
}

/// `DATA QUERY ATTLOG` for `[from, to)`.
pub fn query_attlog(tz: &jiff::tz::TimeZone, from_ms: i64, to_ms: i64) -> Result<String, String> {
    Ok(format!("DATA QUERY ATTLOG {}", query_range(tz, from_ms, to_ms)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timezone_units() {
        assert_eq!(timezone_option(8 * 3600), "8");
        assert_eq!(timezone_option(-5 * 3600), "-5");
        assert_eq!(timezone_option(5 * 3600 + 1800), "330");
        assert_eq!(timezone_option(0), "0");
    }

    fn adms() -> Adms {
        let metrics = crate::telemetry::DriverMetrics::default();
        let (sink, _rx) = PunchSink::channel(1, metrics.clone());
        let device: DeviceConfig =
            serde_json::from_value(serde_json::json!({"id": "zk", "driver": "adms", "serial_number": "SN1"})).unwrap();
        Adms::new(&[device], &sink, StatusBoard::new(metrics), jiff::tz::TimeZone::UTC, 1 << 20)
    }

    #[test]
    fn uploads_count_as_realtime_only_after_steady_polling() {
        let a = adms();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!a.touch_at("SN1", "zk", true, at(0)), "right after the handshake: a backlog");
        assert!(!a.touch_at("SN1", "zk", false, at(10)));
        assert!(!a.touch_at("SN1", "zk", false, at(20)));
        assert!(a.touch_at("SN1", "zk", false, at(30)), "polling without a gap for SETTLE");
        assert!(a.touch_at("SN1", "zk", false, at(40)));
        // A handshake (the terminal restarted) starts over.
        assert!(!a.touch_at("SN1", "zk", true, at(50)));
        assert!(a.touch_at("SN1", "zk", false, at(80)));
        // Silent longer than OFFLINE_AFTER: the next upload is a backlog again.
        let back = 80 + OFFLINE_AFTER.as_secs() + 1;
        assert!(!a.touch_at("SN1", "zk", false, at(back)));
        assert!(!a.touch_at("SN1", "zk", false, at(back + 10)));
        assert!(a.touch_at("SN1", "zk", false, at(back + SETTLE.as_secs())));
    }

    #[tokio::test]
    async fn stamps_are_numbers_and_persist_in_the_file() {
        let dir = std::env::temp_dir().join(format!("adms-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(STAMP_FILE);
        let a = adms().persist_stamps(&path);
        assert_eq!(a.stamp("SN1"), None);
        a.set_stamp("SN1", "1700000000").await;
        a.set_stamp("SN1", "1\nDelay=0").await;
        assert_eq!(a.stamp("SN1").as_deref(), Some("1700000000"));
        let b = adms().persist_stamps(&path);
        assert_eq!(b.stamp("SN1").as_deref(), Some("1700000000"), "read back after a restart");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_terminal_with_its_own_time_zone_gets_its_offset_and_its_times_read_in_it() {
        let metrics = crate::telemetry::DriverMetrics::default();
        let (sink, _rx) = PunchSink::channel(1, metrics.clone());
        let devices: Vec<DeviceConfig> = serde_json::from_value(serde_json::json!([
            {"id": "zk-in", "driver": "adms", "serial_number": "SNIN", "timezone": "Asia/Kolkata"},
            {"id": "zk-cn", "driver": "adms", "serial_number": "SNCN"}
        ]))
        .unwrap();
        let site = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
        let a = Adms::new(&devices, &sink, StatusBoard::new(metrics), site, 1 << 20);
        let now = jiff::Timestamp::now();
        let offset = |sn: &str| timezone_option(a.timezone_of(sn).to_offset(now).seconds());
        assert_eq!(offset("SNIN"), "330", "+05:30 in minutes");
        assert_eq!(offset("SNCN"), "8", "+08:00 in hours");
        assert_eq!(offset("SNXX"), "8", "unknown terminals: the site's");
    }

    #[test]
    fn command_texts_and_ranges() {
        let tz = jiff::tz::TimeZone::get("Asia/Kolkata").unwrap();
        let day: jiff::civil::Date = "2026-11-22".parse().unwrap();
        let (from, to) = day_range(&tz, day).unwrap();
        assert_eq!(to - from, 86_400_000);
        let range = query_range(&tz, from, to).unwrap();
        assert_eq!(range, "StartTime=2026-11-22 00:00:00\tEndTime=2026-11-22 23:59:59");
        assert_eq!(parse_query_range(&tz, &range), Ok((from, to)));
        assert_eq!(query_attlog(&tz, from, to).unwrap(), format!("DATA QUERY ATTLOG {range}"));
        assert!(query_range(&tz, to, from).is_err());
        for bad in ["", "StartTime=2026-11-22 00:00:00", "StartTime=x\tEndTime=y", "EndTime=2026-11-22 00:00:00"] {
            assert!(parse_query_range(&tz, bad).is_err(), "{bad:?}");
        }
        let user = TerminalUser { name: "Zhang\tSan\n".into(), card: Some("77705923".into()) };
        assert_eq!(
            update_userinfo("1001", &user),
            "DATA UPDATE USERINFO PIN=1001\tName=ZhangSan\tPri=0\tCard=77705923"
        );
        let plain = TerminalUser { name: "Li Si".into(), card: None };
        assert_eq!(update_userinfo("10\n02", &plain), "DATA UPDATE USERINFO PIN=1002\tName=Li Si\tPri=0");
    }

    #[test]
    fn handshake_has_the_options() {
        let r = handshake_reply("CKJG201960012", None, 8 * 3600);
        assert!(r.starts_with("GET OPTION FROM: CKJG201960012\n"));
        for opt in ["ATTLOGStamp=None", "Delay=10", "TransFlag=TransData AttLog", "TimeZone=8", "Realtime=1"] {
            assert!(r.lines().any(|l| l == opt), "{opt} missing in {r}");
        }
    }
}
