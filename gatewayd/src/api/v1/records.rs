//! `GET /api/v1/records`: attendance records in the caller's scope.

use super::*;

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

pub(super) fn view(r: AttendanceRecord, roster: &Roster, tz: &TimeZone) -> RecordView {
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
pub(super) fn scoped_records(
    state: &ApiState,
    p: &Principal,
    f: &RecordFilter,
) -> ApiResult<(Vec<AttendanceRecord>, Roster)> {
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

pub(super) async fn records(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Query(f): Query<RecordFilter>,
) -> ApiResult<impl IntoResponse> {
    let (list, roster) = scoped_records(&state, &p, &f)?;
    let tz = state.config().timezone();
    let views: Vec<RecordView> = list.into_iter().map(|r| view(r, &roster, &tz)).collect();
    Ok(axum::Json(serde_json::json!({ "records": views })))
}
