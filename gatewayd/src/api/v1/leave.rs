//! `GET|POST /api/v1/leave`: leave requests (请假). An employee asks; a manager of the employee's department decides
//! through `POST /api/v1/approvals/{id}/approve|reject`, like any approval.

use super::approvals::approval_error;
use super::*;
use crate::reconcile::approvals::{Approval, Kind};
use crate::reconcile::leave::{LeaveType, Period};

/// `POST /api/v1/leave`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaveRequest {
    /// `annual`, `sick`, `personal` or `other`.
    #[serde(rename = "type")]
    pub leave_type: String,
    /// Whole days: two dates `YYYY-MM-DD` (inclusive). Part of a day: two times `YYYY-MM-DDTHH:MM` on the site's clock
    /// (or RFC 3339 with offset), `to` exclusive.
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub reason: String,
}

/// A leave request as listed.
#[derive(Debug, Serialize)]
pub struct LeaveView {
    pub id: u64,
    pub employee: String,
    pub department: String,
    #[serde(rename = "type")]
    pub leave_type: LeaveType,
    /// `days` (whole work dates) or `time` (part of a day).
    pub unit: &'static str,
    /// Dates for whole days; local times with offset for part of a day (`to` exclusive).
    pub from: String,
    pub to: String,
    pub reason: String,
    pub state: crate::reconcile::approvals::State,
    pub requested_at: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub note: Option<String>,
}

fn view(a: Approval, tz: &TimeZone) -> Option<LeaveView> {
    let Kind::Leave { leave_type, period, reason } = a.kind else { return None };
    let (unit, from, to) = match period {
        Period::Days { from, to } => ("days", from.to_string(), to.to_string()),
        Period::Time { from_ms, to_ms } => {
            ("time", local_time(Some(from_ms), tz).unwrap_or_default(), local_time(Some(to_ms), tz).unwrap_or_default())
        }
    };
    Some(LeaveView {
        id: a.id,
        employee: a.employee,
        department: a.department,
        leave_type,
        unit,
        from,
        to,
        reason,
        state: a.state,
        requested_at: local_time(Some(a.requested_at_ms), tz),
        decided_by: a.decided_by,
        decided_at: local_time(a.decided_at_ms, tz),
        note: a.note,
    })
}

/// `GET /api/v1/leave?employee=`: leave requests in the caller's scope (employees: their own), oldest first.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaveFilter {
    pub employee: Option<String>,
}

pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<LeaveFilter>,
) -> ApiResult<Response> {
    require(&p, &[Role::Admin, Role::Manager, Role::Employee], "read leave")?;
    let roster = state.roster()?;
    check_filters(&p, &roster, q.employee.as_deref(), None)?;
    let tz = state.config().timezone();
    let list = state.attendance.approvals.list().map_err(ApiError::internal)?;
    let leave: Vec<LeaveView> = list
        .into_iter()
        .filter(|a| q.employee.as_deref().is_none_or(|e| e == a.employee))
        .filter(|a| match p.role() {
            Role::Admin => true,
            Role::Manager => p.sees_department(&a.department) || p.employee() == Some(a.employee.as_str()),
            Role::Employee => p.employee() == Some(a.employee.as_str()),
            Role::Kiosk => false,
        })
        .filter_map(|a| view(a, &tz))
        .collect();
    Ok(axum::Json(serde_json::json!({ "leave": leave })).into_response())
}

pub(super) async fn request(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Json(req): Json<LeaveRequest>,
) -> ApiResult<Response> {
    require(&p, &[Role::Employee], "ask for leave (employees ask, managers decide)")?;
    let employee = p.employee().ok_or_else(|| ApiError::forbidden("this token names no employee"))?;
    let leave_type = LeaveType::parse(&req.leave_type).ok_or_else(|| {
        ApiError::bad(format!("type: `{}` is not a leave type (annual, sick, personal, other)", req.leave_type))
    })?;
    let tz = state.config().timezone();
    let period = Period::parse(&req.from, &req.to, &tz).map_err(ApiError::bad)?;
    let roster = state.roster()?;
    let who = p.who.clone();
    let a = state
        .attendance
        .approvals
        .request_leave(&roster, employee, leave_type, period, &req.reason, &who, now_ms(), &tz)
        .await
        .map_err(approval_error)?;
    let body = view(a, &tz).ok_or_else(|| ApiError::internal("the filed leave request is not a leave"))?;
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}
