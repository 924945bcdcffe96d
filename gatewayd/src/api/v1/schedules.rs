//! `GET|PUT /api/v1/schedules`: per-employee day assignments (排班) that override the group's shift or rotation.

use super::*;
use crate::reconcile::schedule;

/// `GET /api/v1/schedules?from=&to=&employee=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFilter {
    pub from: String,
    pub to: String,
    pub employee: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ScheduleEntry {
    pub employee: String,
    pub date: String,
    /// A shift id, or `off`.
    pub shift: String,
}

pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<ScheduleFilter>,
) -> ApiResult<Response> {
    require(&p, &[Role::Admin, Role::Manager, Role::Employee], "read schedules")?;
    let (from, to) = (parse_date("from", &q.from)?, parse_date("to", &q.to)?);
    if to < from {
        return Err(ApiError::bad("to: before from"));
    }
    let roster = state.roster()?;
    let employee = match p.role() {
        Role::Employee => {
            let me = p.employee().ok_or_else(|| ApiError::forbidden("this token names no employee"))?;
            if q.employee.as_deref().is_some_and(|e| e != me) {
                return Err(ApiError::forbidden("an employee token reads its own schedule only"));
            }
            Some(me.to_owned())
        }
        _ => q.employee.clone(),
    };
    check_filters(&p, &roster, employee.as_deref(), None)?;
    let schedule = state.attendance.schedule(&state.config()).map_err(update_error)?;
    let entries: Vec<ScheduleEntry> = schedule
        .between(employee.as_deref(), from, to)
        .filter(|(e, _, _)| p.sees_employee(&roster, e))
        .take(MAX_LIST)
        .map(|(e, d, a)| ScheduleEntry { employee: e.to_owned(), date: d.to_string(), shift: a.as_str().to_owned() })
        .collect();
    Ok(axum::Json(serde_json::json!({ "from": q.from, "to": q.to, "schedule": entries })).into_response())
}

/// `PUT /api/v1/schedules`: CSV `employee,date,shift` (header first). Each row sets that (employee, date); an empty
/// `shift` takes the override away. Rows are checked against the rules in force (unknown shift ids are refused) before
/// anything is written.
pub(super) async fn put(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Body,
) -> ApiResult<Response> {
    require(&p, &[Role::Admin], "change schedules")?;
    let text = body.text()?;
    let config = state.config();
    let rules =
        crate::reconcile::rules::file_in_force(&config).and_then(|f| crate::reconcile::rules::Rules::load(&f).ok());
    let update = schedule::parse_rows(std::path::Path::new("body"), text, rules.as_ref().map(|(r, _)| r), true)
        .map_err(|ps| update_error(UpdateError::invalid(&ps)))?;
    let updated = state.attendance.update_schedule(&config, update).await.map_err(update_error)?;
    Ok(axum::Json(serde_json::json!({
        "written": updated.file.display().to_string(),
        "rows": updated.rows,
        "changed": updated.changed,
    }))
    .into_response())
}
