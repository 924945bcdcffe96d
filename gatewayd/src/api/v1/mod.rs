//! `/api/v1`: records, punches, rules, roster, devices, approvals, reports and the audit log (SPEC section 5).
//!
//! # Roles and isolation
//! Every handler gets the [`Principal`] the auth middleware put on the request and decides with it:
//! - `admin` reads everything and writes rules and roster; it never posts punches and never decides approvals.
//! - `manager` reads and decides only for the departments its employee manages in the roster in force (the `manages`
//!   column), narrowed by the token's departments; asking for another department or for an employee outside them is
//!   403; lists are filtered to its departments. A manager token naming no employee reads the departments it names
//!   and decides nothing. Nobody decides their own request.
//! - `employee` reads only itself, posts its own GPS/QR punches and asks for make-up punches.
//! - `kiosk` reads the current QR code and nothing else (the middleware refuses every other path).
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

mod approvals;
mod audit;
mod calendar;
mod devices;
mod employees;
mod leave;
mod punches;
mod qr;
mod records;
mod reports;
mod rules;
mod schedules;

pub use approvals::{Decision, MakeupRequest};
pub use employees::{roster_from_csv, roster_from_employees, EmployeeIn, EmployeeView};
pub use leave::{LeaveFilter, LeaveRequest, LeaveView};
pub use punches::{punch_from_request, Posted, PunchFilter, PunchRequest, PunchView, CLAIMED_TIME};
pub use qr::QrQuery;
pub use records::{RecordFilter, RecordView};
pub use reports::{csv_cell, summarize, ExportQuery, LateEntry, SummaryQuery, EXPORT_COLUMNS};
pub use schedules::{ScheduleEntry, ScheduleFilter};

use super::audit::AuditLog;
use super::auth::{self, AuthState, Principal, RateLimiter};
pub use super::error::ApiError;
use super::error::ApiResult;
use super::qr::QrCodes;
use crate::config::Config;
use crate::proto::upstream::AttendanceRecord;
use crate::reconcile::approvals::{ApprovalError, Decider};
use crate::reconcile::attendance::UpdateError;
use crate::reconcile::roster::{Employee, Roster};
use crate::reconcile::{Attendance, RecordQuery};
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
    /// The gateway's rotating QR codes.
    pub qr: QrCodes,
    /// Where refused QR punches are counted.
    pub metrics: crate::telemetry::Metrics,
    /// Asks the daemon to reload (after the rules were written), as SIGHUP does.
    pub reload: crate::daemon::ReloadHandle,
    /// The PUSH terminals and their command queues.
    pub adms: drivers::adms::Adms,
}

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
        .route("/api/v1/records", get(records::records))
        .route("/api/v1/punches", get(punches::punches).post(punches::post_punch))
        .route("/api/v1/rules", get(rules::get_rules).put(rules::put_rules))
        .route("/api/v1/calendar/import", post(calendar::import))
        .route("/api/v1/employees", get(employees::employees).put(employees::put_employees))
        .route("/api/v1/employees/import", post(employees::import_employees))
        .route("/api/v1/devices", get(devices::devices))
        .route("/api/v1/devices/{id}/commands", get(devices::commands))
        .route("/api/v1/devices/{id}/backfill", post(devices::backfill))
        .route("/api/v1/approvals", get(approvals::approvals).post(approvals::request_makeup))
        .route("/api/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/api/v1/approvals/{id}/reject", post(approvals::reject))
        .route("/api/v1/leave", get(leave::list).post(leave::request))
        .route("/api/v1/schedules", get(schedules::list).put(schedules::put))
        .route("/api/v1/reports/export", get(reports::export))
        .route("/api/v1/reports/summary", get(reports::summary))
        .route("/api/v1/audit", get(audit::audit))
        .route("/api/v1/qr/current", get(qr::current))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .route_layer(axum::middleware::from_fn_with_state(state.auth(), auth::authenticate))
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
    /// What the authentication middleware needs of it.
    fn auth(&self) -> AuthState {
        AuthState {
            config: self.config.clone(),
            tokens: self.tokens.clone(),
            audit: self.audit.clone(),
            limiter: self.limiter.clone(),
            roster: self.attendance.roster.clone(),
        }
    }

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

fn local_time(ms: Option<i64>, tz: &TimeZone) -> Option<String> {
    let ts = jiff::Timestamp::from_millisecond(ms?).ok()?;
    Some(ts.to_zoned(tz.clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string())
}

fn update_error(e: UpdateError) -> ApiError {
    match e {
        UpdateError::Invalid(problems) => ApiError::bad(problems),
        other => ApiError::internal(other),
    }
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
