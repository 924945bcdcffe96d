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

use self::stamps::StampFile;
use crate::config::{DeviceConfig, DriverKind};
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
        };
        adms.update_devices(devices);
        adms
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

    /// Records a request from `sn`; returns whether the terminal has been polling steadily for [`SETTLE`].
    fn touch(&self, sn: &str, device: &str, handshake: bool) -> bool {
        self.touch_at(sn, device, handshake, Instant::now())
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
            .route("/iclock/ping", get(poll))
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
    text(StatusCode::OK, "OK\n".into())
}

async fn command_result(State(adms): State<Adms>, Query(q): Params, _body: Result<Bytes, BytesRejection>) -> Response {
    let (sn, device) = match identify(&adms, &q) {
        Ok(x) => x,
        Err(refusal) => return refusal.into_response(),
    };
    adms.touch(&sn, &device, false);
    text(StatusCode::OK, "OK\n".into())
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
    fn handshake_has_the_options() {
        let r = handshake_reply("CKJG201960012", None, 8 * 3600);
        assert!(r.starts_with("GET OPTION FROM: CKJG201960012\n"));
        for opt in ["ATTLOGStamp=None", "Delay=10", "TransFlag=TransData AttLog", "TimeZone=8", "Realtime=1"] {
            assert!(r.lines().any(|l| l == opt), "{opt} missing in {r}");
        }
    }
}
