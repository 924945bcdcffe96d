//! `/api/v1`: records, punches, rules, roster, devices, approvals, reports and the audit log (SPEC section 5).
//!
//! # Roles and isolation
//! Every handler gets the [`Principal`] the auth middleware put on the request and decides with it:
//! - `admin` reads everything and writes rules and roster; it never posts punches and never decides approvals.
//! - `manager` reads and decides only for the departments of its token; asking for another department or for an
//!   employee outside them is 403; lists are filtered to its departments.
//! - `employee` reads only itself, posts its own GPS/QR punches and asks for make-up punches.
//!
//! Department membership is the roster in force. Employees not in the roster are visible to admins only. Error
//! messages only ever repeat what the caller sent; they never confirm that an out-of-scope id exists.
//!
//! # Errors
//! Every error is JSON `{"error": "…"}`. Bad JSON, wrong types and unknown fields are 400 with serde's message; bodies
//! over `[api].max_body_bytes` are 413; internal failures are logged and answered 500 without detail.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use drivers::sink::{GeoPoint, Subject};
use drivers::status::StatusBoard;
use drivers::{DevicePunch, Method, Outcome, PunchSink};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::audit::AuditLog;
use super::auth::{self, Principal, RateLimiter};
use crate::approvals::{ApprovalError, Decider};
use crate::config::Config;
use crate::proto::upstream::AttendanceRecord;
use crate::reconcile::{Attendance, RecordQuery};
use crate::roster::{Employee, Roster};
use crate::store::Store;
use crate::tokens::{Role, TokenStore};

/// The device id of punches posted through the API.
pub const API_DEVICE: &str = "api";
/// Most punches or records one list answer holds.
pub const MAX_LIST: usize = 10_000;
/// Longest date range of an export, in days.
pub const MAX_EXPORT_DAYS: i64 = 366;

/// What the `/api/v1` handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub config: watch::Receiver<Arc<Config>>,
    pub store: Store,
    pub sink: PunchSink,
    pub status: StatusBoard,
    pub attendance: Attendance,
    pub tokens: TokenStore,
    pub audit: AuditLog,
    pub limiter: Arc<RateLimiter>,
}

/// An error answered as JSON.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    /// Logged in full, answered without detail.
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "api request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the gateway log)")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// `axum::Json` with rejections answered as [`ApiError`] (400 with the parser's message, 413 when too large).
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            // Wrong types and unknown fields are 400 like bad syntax (axum says 422); size and content type keep theirs.
            Err(rejection) => {
                let status = match rejection.status() {
                    StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
                    other => other,
                };
                Err(ApiError::new(status, rejection.body_text()))
            }
        }
    }
}

/// `axum::extract::Query` with rejections answered as 400 JSON.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rejection) => Err(ApiError::bad(rejection.body_text())),
        }
    }
}

/// A raw body, with the size limit answered as JSON.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(Body(b)),
            Err(rejection) => Err(ApiError::new(rejection.status(), rejection.body_text())),
        }
    }
}

impl Body {
    fn text(&self) -> ApiResult<&str> {
        std::str::from_utf8(&self.0).map_err(|_| ApiError::bad("the body is not valid UTF-8"))
    }
}

/// The `/api/v1` routes behind the auth middleware.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/records", get(records))
        .route("/api/v1/punches", get(punches).post(post_punch))
        .route("/api/v1/rules", get(get_rules).put(put_rules))
        .route("/api/v1/employees", get(employees).put(put_employees))
        .route("/api/v1/employees/import", post(import_employees))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/approvals", get(approvals).post(request_makeup))
        .route("/api/v1/approvals/{id}/approve", post(approve))
        .route("/api/v1/approvals/{id}/reject", post(reject))
        .route("/api/v1/reports/export", get(export))
        .route("/api/v1/reports/summary", get(summary))
        .route("/api/v1/audit", get(audit))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .with_state(state)
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn require(p: &Principal, roles: &[Role], what: &str) -> ApiResult<()> {
    if roles.contains(&p.role()) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("a {} token cannot {what}", p.role().as_str())))
    }
}

impl ApiState {
    fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    fn roster(&self) -> ApiResult<Roster> {
        self.attendance.roster.load().map_err(ApiError::internal)
    }
}

fn parse_date(what: &str, text: &str) -> ApiResult<Date> {
    text.parse::<Date>().map_err(|_| ApiError::bad(format!("{what}: `{text}` is not a date (YYYY-MM-DD)")))
}

/// An RFC 3339 time with offset (punch and make-up request bodies), in Unix milliseconds.
pub fn parse_time(text: &str) -> ApiResult<i64> {
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| ApiError::bad(format!("time: `{text}` is not an RFC 3339 time with offset: {e}")))
}

fn day_start_ms(date: Date, tz: &TimeZone) -> ApiResult<i64> {
    date.to_zoned(tz.clone()).map(|z| z.timestamp().as_millisecond()).map_err(|e| ApiError::bad(e.to_string()))
}

/// Checks explicit `employee` / `department` filters against the caller's scope (403 when outside).
fn check_filters(p: &Principal, roster: &Roster, employee: Option<&str>, department: Option<&str>) -> ApiResult<()> {
    if let Some(d) = department {
        if !p.sees_department(d) {
            return Err(ApiError::forbidden(format!("department `{d}` is outside this token's scope")));
        }
    }
    if let Some(e) = employee {
        if !p.sees_employee(roster, e) {
            return Err(ApiError::forbidden(format!("employee `{e}` is outside this token's scope")));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Records

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordFilter {
    pub from: Option<String>,
    pub to: Option<String>,
    pub employee: Option<String>,
    pub department: Option<String>,
    pub limit: Option<usize>,
}

/// A record as the API shows it.
#[derive(Debug, Serialize)]
pub struct RecordView {
    pub record_id: String,
    pub revision: u32,
    pub employee_id: String,
    pub department: Option<String>,
    pub work_date: String,
    pub shift_id: String,
    pub clock_in: Option<String>,
    pub clock_out: Option<String>,
    pub statuses: Vec<String>,
    pub late_minutes: i32,
    pub early_leave_minutes: i32,
    pub worked_minutes: i32,
    pub overtime_minutes: i32,
    pub punch_ids: Vec<String>,
    pub closed: bool,
    pub rules_version: u32,
}

fn local_time(ms: Option<i64>, tz: &TimeZone) -> Option<String> {
    let ts = jiff::Timestamp::from_millisecond(ms?).ok()?;
    Some(ts.to_zoned(tz.clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string())
}

fn view(r: AttendanceRecord, roster: &Roster, tz: &TimeZone) -> RecordView {
    RecordView {
        department: roster.get(&r.employee_id).map(|e| e.department.clone()),
        clock_in: local_time(r.clock_in_ms, tz),
        clock_out: local_time(r.clock_out_ms, tz),
        record_id: r.record_id,
        revision: r.revision,
        employee_id: r.employee_id,
        work_date: r.work_date,
        shift_id: r.shift_id,
        statuses: r.statuses,
        late_minutes: r.late_minutes,
        early_leave_minutes: r.early_leave_minutes,
        worked_minutes: r.worked_minutes,
        overtime_minutes: r.overtime_minutes,
        punch_ids: r.punch_ids,
        closed: r.closed,
        rules_version: r.rules_version,
    }
}

/// The records a caller may see for a filter (explicit out-of-scope filters are 403).
fn scoped_records(state: &ApiState, p: &Principal, f: &RecordFilter) -> ApiResult<(Vec<AttendanceRecord>, Roster)> {
    let roster = state.roster()?;
    check_filters(p, &roster, f.employee.as_deref(), f.department.as_deref())?;
    let employee = match p.role() {
        Role::Employee => p.employee().map(str::to_owned),
        _ => f.employee.clone(),
    };
    let q = RecordQuery {
        from: f.from.as_deref().map(|t| parse_date("from", t)).transpose()?,
        to: f.to.as_deref().map(|t| parse_date("to", t)).transpose()?,
        employee,
        department: f.department.clone(),
        limit: 0,
    };
    let limit = f.limit.unwrap_or(MAX_LIST).min(MAX_LIST);
    let mut out = state.attendance.records.query(&q, &roster).map_err(ApiError::internal)?;
    out.retain(|r| p.sees_employee(&roster, &r.employee_id));
    out.truncate(limit);
    Ok((out, roster))
}

async fn records(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Query(f): Query<RecordFilter>,
) -> ApiResult<impl IntoResponse> {
    let (list, roster) = scoped_records(&state, &p, &f)?;
    let tz = state.config().timezone();
    let views: Vec<RecordView> = list.into_iter().map(|r| view(r, &roster, &tz)).collect();
    Ok(axum::Json(serde_json::json!({ "records": views })))
}

// ---------------------------------------------------------------------------------------------------------------
// Punches

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PunchFilter {
    /// First local date (default: 30 days before `to`).
    pub from: Option<String>,
    /// Last local date, inclusive (default: today).
    pub to: Option<String>,
    pub employee: Option<String>,
    pub department: Option<String>,
    pub device: Option<String>,
    pub limit: Option<usize>,
}

/// A punch as the API shows it. Credentials (card numbers, PINs) are shown to admins only.
#[derive(Debug, Serialize)]
pub struct PunchView {
    pub punch_id: String,
    pub seq: u64,
    pub device_id: String,
    pub driver: String,
    pub method: Method,
    pub employee: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    pub time: Option<String>,
    pub received: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lng: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
}

async fn punches(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Query(f): Query<PunchFilter>,
) -> ApiResult<impl IntoResponse> {
    let roster = state.roster()?;
    check_filters(&p, &roster, f.employee.as_deref(), f.department.as_deref())?;
    let tz = state.config().timezone();
    let to = match &f.to {
        Some(t) => parse_date("to", t)?,
        None => jiff::Timestamp::now().to_zoned(tz.clone()).date(),
    };
    let from = match &f.from {
        Some(t) => parse_date("from", t)?,
        None => to.checked_sub(jiff::Span::new().days(30)).map_err(|e| ApiError::bad(e.to_string()))?,
    };
    let end = to.tomorrow().map_err(|e| ApiError::bad(e.to_string()))?;
    let (from_ms, to_ms) = (day_start_ms(from, &tz)?, day_start_ms(end, &tz)?);
    let limit = f.limit.unwrap_or(MAX_LIST).min(MAX_LIST);
    let admin = p.role() == Role::Admin;
    let mut out = Vec::new();
    for item in state.store.by_time(from_ms, to_ms) {
        if out.len() >= limit {
            break;
        }
        let punch = item.map_err(ApiError::internal)?;
        let employee = match &punch.subject {
            Subject::Employee(e) => roster.resolve_employee(e).map(|x| x.id.clone()).or_else(|| Some(e.clone())),
            Subject::Credential(c) => roster.resolve(c, &punch.device_id, punch.method).map(|x| x.id.clone()),
        };
        let visible = match &employee {
            Some(e) => p.sees_employee(&roster, e),
            None => admin,
        };
        let wanted = f.device.as_deref().is_none_or(|d| d == punch.device_id)
            && f.employee.as_deref().is_none_or(|e| employee.as_deref() == Some(e))
            && f.department
                .as_deref()
                .is_none_or(|d| employee.as_deref().and_then(|e| roster.get(e)).is_some_and(|x| x.department == d));
        if !(visible && wanted) {
            continue;
        }
        out.push(PunchView {
            credential: if admin { punch.credential().map(str::to_owned) } else { None },
            time: local_time(Some(punch.device_time_ms), &tz),
            received: local_time(Some(punch.received_time_ms), &tz),
            lat: punch.geo.as_ref().map(|g| g.lat),
            lng: punch.geo.as_ref().map(|g| g.lng),
            score: punch.score,
            punch_id: punch.punch_id,
            seq: punch.seq,
            device_id: punch.device_id,
            driver: punch.driver,
            method: punch.method,
            employee,
        });
    }
    Ok(axum::Json(serde_json::json!({ "punches": out })))
}

/// `POST /api/v1/punches`: an employee's own GPS or QR punch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PunchRequest {
    /// RFC 3339 with offset, e.g. `2026-11-20T09:01:00+08:00`.
    pub time: String,
    pub method: Method,
    pub lat: Option<f64>,
    pub lng: Option<f64>,
    pub accuracy_m: Option<f64>,
    /// The scanned QR code (kept as evidence).
    pub code: Option<String>,
}

/// The checks of a `POST /api/v1/punches` body, giving the punch `employee` (the token's) posts at `now_ms`.
pub fn punch_from_request(req: PunchRequest, employee: String, token_id: &str, now_ms: i64) -> ApiResult<DevicePunch> {
    if !matches!(req.method, Method::Gps | Method::Qr) {
        return Err(ApiError::bad("method: only `gps` and `qr` punches can be posted"));
    }
    let geo = match (req.lat, req.lng) {
        (Some(lat), Some(lng)) => {
            if !(lat.is_finite() && lng.is_finite() && (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng))
            {
                return Err(ApiError::bad("lat/lng: out of range"));
            }
            if req.accuracy_m.is_some_and(|a| !a.is_finite() || a < 0.0) {
                return Err(ApiError::bad("accuracy_m: must be a non-negative number"));
            }
            Some(GeoPoint { lat, lng, accuracy_m: req.accuracy_m })
        }
        (None, None) if req.method == Method::Qr => None,
        _ => return Err(ApiError::bad("lat and lng are required for a gps punch")),
    };
    let mut attributes = vec![("token".to_owned(), token_id.to_owned())];
    if let Some(code) = req.code {
        if code.len() > 512 || code.chars().any(char::is_control) {
            return Err(ApiError::bad("code: at most 512 characters without control characters"));
        }
        attributes.push(("qr".into(), code));
    }
    Ok(DevicePunch {
        device_id: API_DEVICE.into(),
        device_seq: None,
        method: req.method,
        subject: Subject::Employee(employee),
        device_time_ms: parse_time(&req.time)?,
        received_time_ms: now_ms,
        realtime: true,
        geo,
        score: None,
        attributes,
    })
}

async fn post_punch(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Json(req): Json<PunchRequest>,
) -> ApiResult<impl IntoResponse> {
    require(&p, &[Role::Employee], "post punches (punches come from devices and employees)")?;
    let employee = p.employee().ok_or_else(|| ApiError::forbidden("this token names no employee"))?.to_owned();
    let punch = punch_from_request(req, employee, &p.token.id, now_ms())?;
    match state.sink.submit(punch).await {
        Outcome::Stored { punch_id, duplicate } => Ok((
            if duplicate { StatusCode::OK } else { StatusCode::CREATED },
            axum::Json(serde_json::json!({ "punch_id": punch_id, "duplicate": duplicate })),
        )),
        Outcome::Rejected(r @ drivers::sink::Rejection::Invalid(_)) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, r.to_string()))
        }
        Outcome::Rejected(r) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, r.to_string())),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Rules

async fn get_rules(State(state): State<ApiState>, Extension(p): Extension<Principal>) -> ApiResult<Response> {
    require(&p, &[Role::Admin], "read the rules")?;
    let records = &state.attendance.records;
    let version = records.current_rules().map_err(ApiError::internal)?;
    let text = records.rules_versions().map_err(ApiError::internal)?.remove(&version).unwrap_or_default();
    let config = state.config();
    let file = crate::rules::file_in_force(&config);
    let source = match &file {
        Some(f) if *f == config.gateway.data_dir.join(crate::rules::API_FILE) => "api",
        Some(_) => "config",
        None => "none",
    };
    let file = file.map(|f| f.display().to_string());
    Ok(axum::Json(serde_json::json!({ "version": version, "file": file, "source": source, "text": text }))
        .into_response())
}

/// `PUT /api/v1/rules`: a new rules.toml (the body, as text). It is validated in full, written to
/// [`crate::rules::API_FILE`] in the data dir (atomically), which from then on wins over `[rules].file`, and put in
/// force as SIGHUP does. The configured file is never written (under the hardened unit it is read-only).
async fn put_rules(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Body,
) -> ApiResult<Response> {
    require(&p, &[Role::Admin], "change the rules")?;
    let text = body.text()?;
    let config = state.config();
    let file = config.gateway.data_dir.join(crate::rules::API_FILE);
    if let Err(problems) = crate::rules::Rules::parse(std::path::Path::new("rules.toml"), text) {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(ApiError::bad(list.join("\n")));
    }
    if let Err(e) = crate::atomic_file::write_atomic(&file, text.as_bytes()) {
        return Err(ApiError::internal(format!("cannot write {}: {e}", file.display())));
    }
    reload()?;
    Ok(axum::Json(serde_json::json!({ "written": file.display().to_string(), "reloading": true })).into_response())
}

/// Asks the daemon to reload as SIGHUP does (the signal handler is the one reload path).
fn reload() -> ApiResult<()> {
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).map_err(ApiError::internal)
}

// ---------------------------------------------------------------------------------------------------------------
// Employees

/// An employee as the API accepts it (`PUT /api/v1/employees`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmployeeIn {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub department: String,
    #[serde(default)]
    pub cards: Vec<String>,
    /// `page` or `device:page`.
    #[serde(default)]
    pub fingerprints: Vec<String>,
    #[serde(default)]
    pub faces: Vec<String>,
    #[serde(default)]
    pub pins: Vec<String>,
    #[serde(default)]
    pub manages: Vec<String>,
}

/// An employee as the API shows it; credentials only to admins.
#[derive(Debug, Serialize)]
pub struct EmployeeView {
    pub id: String,
    pub name: String,
    pub department: String,
    pub manages: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cards: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprints: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faces: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pins: Option<Vec<String>>,
}

async fn employees(State(state): State<ApiState>, Extension(p): Extension<Principal>) -> ApiResult<impl IntoResponse> {
    let roster = state.roster()?;
    let admin = p.role() == Role::Admin;
    let list: Vec<EmployeeView> = roster
        .employees()
        .iter()
        .filter(|e| p.sees_employee(&roster, &e.id))
        .map(|e| EmployeeView {
            id: e.id.clone(),
            name: e.name.clone(),
            department: e.department.clone(),
            manages: e.manages.clone(),
            cards: admin.then(|| e.cards.clone()),
            fingerprints: admin.then(|| e.fingerprints.iter().map(ToString::to_string).collect()),
            faces: admin.then(|| e.faces.clone()),
            pins: admin.then(|| e.pins.clone()),
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "employees": list })))
}

/// Puts an imported roster in force: first written to [`crate::roster::API_FILE`] in the data dir (so a SIGHUP or a
/// restart keeps it: it wins over `[roster].file`), then the roster tree, then the engine.
async fn replace_roster(state: &ApiState, roster: Roster) -> ApiResult<Response> {
    let file = state.config().gateway.data_dir.join(crate::roster::API_FILE);
    let csv = roster.to_csv();
    let written = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || crate::atomic_file::write_atomic(&file, csv.as_bytes())).await
    };
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ApiError::internal(format!("cannot write {}: {e}", file.display()))),
        Err(e) => return Err(ApiError::internal(e)),
    }
    let changed = state.attendance.roster.replace(&roster).map_err(ApiError::internal)?;
    state.store.db().flush_async().await.map_err(ApiError::internal)?;
    let count = roster.len();
    if changed {
        state.attendance.engine.roster_replaced(Arc::new(roster)).await;
    }
    Ok(axum::Json(serde_json::json!({ "employees": count, "changed": changed })).into_response())
}

/// The checks of a `PUT /api/v1/employees` body: the roster it describes, or every problem found.
pub fn roster_from_employees(list: Vec<EmployeeIn>) -> ApiResult<Roster> {
    let mut employees = Vec::with_capacity(list.len());
    let mut problems = Vec::new();
    for (i, e) in list.into_iter().enumerate() {
        let mut fingerprints = Vec::new();
        for f in &e.fingerprints {
            match crate::roster::parse_fingerprint(f) {
                Ok(fp) => fingerprints.push(fp),
                Err(m) => problems.push(format!("employee {} (`{}`): fingerprints: {m}", i + 1, e.id)),
            }
        }
        employees.push(Employee {
            id: e.id,
            name: e.name,
            department: e.department,
            cards: e.cards.iter().map(|c| c.to_ascii_uppercase()).collect(),
            fingerprints,
            faces: e.faces,
            pins: e.pins,
            manages: e.manages,
        });
    }
    // The CSV import is the one validator of employee fields: round-trip through it.
    match Roster::from_employees(employees, &[]) {
        Ok(r) if problems.is_empty() => Roster::parse_csv(&r.to_csv())
            .map_err(|ps| ApiError::bad(ps.iter().map(|p| p.message.clone()).collect::<Vec<_>>().join("\n"))),
        Ok(_) => Err(ApiError::bad(problems.join("\n"))),
        Err(ps) => {
            problems.extend(ps.iter().map(|p| p.message.clone()));
            Err(ApiError::bad(problems.join("\n")))
        }
    }
}

async fn put_employees(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Json(list): Json<Vec<EmployeeIn>>,
) -> ApiResult<Response> {
    require(&p, &[Role::Admin], "change the roster")?;
    let roster = roster_from_employees(list)?;
    replace_roster(&state, roster).await
}

/// `POST /api/v1/employees/import`: a roster CSV (the roster file format), validated whole before anything changes.
async fn import_employees(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Body,
) -> ApiResult<Response> {
    require(&p, &[Role::Admin], "import the roster")?;
    let roster = roster_from_csv(&body.0)?;
    replace_roster(&state, roster).await
}

/// The checks of a `POST /api/v1/employees/import` body: UTF-8 roster CSV, an optional byte order mark first.
pub fn roster_from_csv(body: &[u8]) -> ApiResult<Roster> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad("the body is not valid UTF-8"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    Roster::parse_csv(text)
        .map_err(|ps| ApiError::bad(ps.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))
}

// ---------------------------------------------------------------------------------------------------------------
// Devices

async fn devices(State(state): State<ApiState>, Extension(p): Extension<Principal>) -> ApiResult<impl IntoResponse> {
    require(&p, &[Role::Admin], "list devices")?;
    let config = state.config();
    let status: HashMap<String, drivers::status::DeviceStatus> = state.status.snapshot().into_iter().collect();
    let list: Vec<serde_json::Value> = config
        .devices
        .iter()
        .map(|d| {
            serde_json::json!({
                "id": d.id,
                "driver": d.driver.as_str(),
                "status": status.get(&d.id),
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "devices": list })))
}

// ---------------------------------------------------------------------------------------------------------------
// Approvals

async fn approvals(State(state): State<ApiState>, Extension(p): Extension<Principal>) -> ApiResult<impl IntoResponse> {
    let list = state.attendance.approvals.list().map_err(ApiError::internal)?;
    let list: Vec<_> = list
        .into_iter()
        .filter(|a| match p.role() {
            Role::Admin => true,
            Role::Manager => p.sees_department(&a.department),
            Role::Employee => p.employee() == Some(a.employee.as_str()),
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "approvals": list })))
}

/// `POST /api/v1/approvals`: an employee asks for a make-up punch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MakeupRequest {
    /// RFC 3339 with offset: when the missed punch should have been.
    pub time: String,
    pub reason: String,
}

fn approval_error(e: ApprovalError) -> ApiError {
    match e {
        ApprovalError::Invalid(m) => ApiError::bad(m),
        ApprovalError::UnknownEmployee(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "this token's employee is not in the roster")
        }
        ApprovalError::AlreadyDecided { id, state } => {
            ApiError::new(StatusCode::CONFLICT, format!("approval {id} is already {state}"))
        }
        ApprovalError::OwnRequest(_) => ApiError::forbidden("nobody decides their own request"),
        ApprovalError::NotFound(id) => ApiError::forbidden(format!("approval {id} is outside this token's scope")),
        ApprovalError::NotAllowed { .. } => ApiError::forbidden("the approval is outside this token's scope"),
        e @ ApprovalError::PunchNotStored { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        other => ApiError::internal(other),
    }
}

async fn request_makeup(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Json(req): Json<MakeupRequest>,
) -> ApiResult<Response> {
    require(&p, &[Role::Employee], "ask for make-up punches (employees ask, managers decide)")?;
    let employee = p.employee().ok_or_else(|| ApiError::forbidden("this token names no employee"))?;
    let roster = state.roster()?;
    let time = parse_time(&req.time)?;
    let who = p.who.clone();
    let a = state
        .attendance
        .approvals
        .request_makeup(&roster, employee, time, &req.reason, &who, now_ms())
        .await
        .map_err(approval_error)?;
    Ok((StatusCode::CREATED, axum::Json(a)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub note: Option<String>,
}

impl Decision {
    /// The body of an approve/reject request: empty (or only whitespace), or `{"note": "..."}`.
    pub fn from_body(body: &[u8]) -> ApiResult<Decision> {
        if body.iter().all(u8::is_ascii_whitespace) {
            Ok(Decision::default())
        } else {
            serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("body: {e}")))
        }
    }
}

async fn approve(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    decide(&state, &p, &id, &body, true).await
}

async fn reject(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    decide(&state, &p, &id, &body, false).await
}

async fn decide(state: &ApiState, p: &Principal, id: &str, body: &Body, approve: bool) -> ApiResult<Response> {
    require(p, &[Role::Manager], "decide approvals (managers of the employee's department do)")?;
    let id: u64 = id.parse().map_err(|_| ApiError::bad(format!("`{id}` is not an approval id")))?;
    let decision = Decision::from_body(&body.0)?;
    let hidden = || ApiError::forbidden(format!("approval {id} is outside this token's scope"));
    let approvals = &state.attendance.approvals;
    match approvals.get(id) {
        Ok(a) if p.sees_department(&a.department) => {}
        Ok(_) | Err(ApprovalError::NotFound(_)) => return Err(hidden()),
        Err(e) => return Err(ApiError::internal(e)),
    }
    let decider = Decider {
        name: p.employee().map(str::to_owned).unwrap_or_else(|| p.who.clone()),
        departments: p.token.departments.clone(),
    };
    let a =
        approvals.decide(id, &decider, approve, decision.note.as_deref(), now_ms()).await.map_err(approval_error)?;
    Ok(axum::Json(a).into_response())
}

// ---------------------------------------------------------------------------------------------------------------
// Reports

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub format: Option<String>,
    pub department: Option<String>,
    pub employee: Option<String>,
}

/// One CSV cell: quoted when needed; a leading `=`, `+`, `-` or `@` is prefixed with `'` so spreadsheets do not run it.
pub fn csv_cell(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text.to_owned() };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// The export header.
pub const EXPORT_COLUMNS: [&str; 16] = [
    "record_id",
    "employee_id",
    "name",
    "department",
    "work_date",
    "shift_id",
    "clock_in",
    "clock_out",
    "statuses",
    "late_minutes",
    "early_leave_minutes",
    "worked_minutes",
    "overtime_minutes",
    "closed",
    "revision",
    "rules_version",
];

async fn export(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<ExportQuery>,
) -> ApiResult<Response> {
    if q.format.as_deref().is_some_and(|f| f != "csv") {
        return Err(ApiError::bad("format: only `csv` is supported"));
    }
    let (from, to) = (parse_date("from", &q.from)?, parse_date("to", &q.to)?);
    let days = (to - from).get_days();
    if !(0..MAX_EXPORT_DAYS).contains(&i64::from(days)) {
        return Err(ApiError::bad(format!("from..to must be 1 to {MAX_EXPORT_DAYS} days, from first to last")));
    }
    let f = RecordFilter {
        from: Some(q.from.clone()),
        to: Some(q.to.clone()),
        employee: q.employee.clone(),
        department: q.department.clone(),
        limit: Some(usize::MAX),
    };
    let roster = state.roster()?;
    check_filters(&p, &roster, f.employee.as_deref(), f.department.as_deref())?;
    let employee = if p.role() == Role::Employee { p.employee().map(str::to_owned) } else { f.employee.clone() };
    let query = RecordQuery { from: Some(from), to: Some(to), employee, department: f.department.clone(), limit: 0 };
    let mut list = state.attendance.records.query(&query, &roster).map_err(ApiError::internal)?;
    list.retain(|r| p.sees_employee(&roster, &r.employee_id));
    let tz = state.config().timezone();
    let mut out = String::from("\u{feff}");
    out.push_str(&EXPORT_COLUMNS.join(","));
    out.push_str("\r\n");
    for r in list {
        let e = roster.get(&r.employee_id);
        let cells = [
            r.record_id.clone(),
            r.employee_id.clone(),
            e.map(|e| e.name.clone()).unwrap_or_default(),
            e.map(|e| e.department.clone()).unwrap_or_default(),
            r.work_date.clone(),
            r.shift_id.clone(),
            local_time(r.clock_in_ms, &tz).unwrap_or_default(),
            local_time(r.clock_out_ms, &tz).unwrap_or_default(),
            r.statuses.join("|"),
            r.late_minutes.to_string(),
            r.early_leave_minutes.to_string(),
            r.worked_minutes.to_string(),
            r.overtime_minutes.to_string(),
            r.closed.to_string(),
            r.revision.to_string(),
            r.rules_version.to_string(),
        ];
        out.push_str(&cells.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    let name = format!("attachment; filename=\"attendance-{from}-{to}.csv\"");
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, name)], out)
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryQuery {
    /// `YYYY-MM`.
    pub month: String,
    pub department: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct LateEntry {
    pub employee_id: String,
    pub name: String,
    pub department: String,
    pub late_count: u32,
    pub late_minutes: i64,
}

/// The month summary of records in scope: attendance rate (workday records without `absent`, of all workday records),
/// the ten employees late most often, overtime minutes per department.
pub fn summarize(records: &[AttendanceRecord], roster: &Roster) -> serde_json::Value {
    let mut expected = 0u64;
    let mut attended = 0u64;
    let mut late: BTreeMap<String, LateEntry> = BTreeMap::new();
    let mut overtime: BTreeMap<String, i64> = BTreeMap::new();
    for r in records {
        let has = |s: &str| r.statuses.iter().any(|x| x == s);
        let department = roster.get(&r.employee_id).map(|e| e.department.clone()).unwrap_or_default();
        if !has("rest_day_work") {
            expected += 1;
            if !has("absent") {
                attended += 1;
            }
        }
        if has("late") {
            let e = late.entry(r.employee_id.clone()).or_insert_with(|| LateEntry {
                employee_id: r.employee_id.clone(),
                name: roster.get(&r.employee_id).map(|e| e.name.clone()).unwrap_or_default(),
                department: department.clone(),
                ..LateEntry::default()
            });
            e.late_count += 1;
            e.late_minutes += i64::from(r.late_minutes);
        }
        *overtime.entry(department).or_default() += i64::from(r.overtime_minutes);
    }
    let mut top: Vec<LateEntry> = late.into_values().collect();
    top.sort_by(|a, b| b.late_count.cmp(&a.late_count).then(b.late_minutes.cmp(&a.late_minutes)));
    top.truncate(10);
    let rate = if expected == 0 { None } else { Some(attended as f64 / expected as f64) };
    let by_department: Vec<serde_json::Value> =
        overtime.into_iter().map(|(d, m)| serde_json::json!({ "department": d, "overtime_minutes": m })).collect();
    serde_json::json!({
        "records": records.len(),
        "expected_days": expected,
        "attended_days": attended,
        "attendance_rate": rate,
        "late_top10": top,
        "overtime_by_department": by_department,
    })
}

async fn summary(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<SummaryQuery>,
) -> ApiResult<Response> {
    let first = parse_date("month", &format!("{}-01", q.month))
        .map_err(|_| ApiError::bad(format!("month: `{}` is not YYYY-MM", q.month)))?;
    let last = first.last_of_month();
    let roster = state.roster()?;
    check_filters(&p, &roster, None, q.department.as_deref())?;
    let employee = if p.role() == Role::Employee { p.employee().map(str::to_owned) } else { None };
    let query = RecordQuery { from: Some(first), to: Some(last), employee, department: q.department.clone(), limit: 0 };
    let mut list = state.attendance.records.query(&query, &roster).map_err(ApiError::internal)?;
    list.retain(|r| p.sees_employee(&roster, &r.employee_id));
    let mut body = summarize(&list, &roster);
    body["month"] = serde_json::Value::String(q.month.clone());
    Ok(axum::Json(body).into_response())
}

// ---------------------------------------------------------------------------------------------------------------
// Audit

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries with a greater id.
    pub after: Option<u64>,
    pub limit: Option<usize>,
}

async fn audit(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<impl IntoResponse> {
    require(&p, &[Role::Admin], "read the audit log")?;
    let list =
        state.audit.list(q.after.unwrap_or(0), q.limit.unwrap_or(1000).min(MAX_LIST)).map_err(ApiError::internal)?;
    Ok(axum::Json(serde_json::json!({ "entries": list })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_cell("-1,2"), "\"'-1,2\"");
    }

    #[test]
    fn summary_counts() {
        let roster = Roster::parse_csv("employee,name,department\nE1,Ann,D-A\nE2,Bob,D-B\n").expect("roster parses");
        let rec = |e: &str, statuses: &[&str], late: i32, ot: i32| AttendanceRecord {
            employee_id: e.into(),
            statuses: statuses.iter().map(|s| (*s).to_owned()).collect(),
            late_minutes: late,
            overtime_minutes: ot,
            ..AttendanceRecord::default()
        };
        let list = [
            rec("E1", &["late"], 5, 0),
            rec("E1", &["late"], 7, 30),
            rec("E2", &["absent"], 0, 0),
            rec("E2", &["rest_day_work"], 0, 60),
        ];
        let s = summarize(&list, &roster);
        assert_eq!(s["expected_days"], 3);
        assert_eq!(s["attended_days"], 2);
        assert_eq!(s["late_top10"][0]["employee_id"], "E1");
        assert_eq!(s["late_top10"][0]["late_minutes"], 12);
        assert_eq!(s["overtime_by_department"][0]["department"], "D-A");
        assert_eq!(s["overtime_by_department"][1]["overtime_minutes"], 60);
    }
}
