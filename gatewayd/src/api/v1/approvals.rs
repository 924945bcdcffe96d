//! `GET|POST /api/v1/approvals`, `POST /api/v1/approvals/{id}/approve|reject`: make-up requests and out-of-fence punches.

use super::*;
use crate::api::auth::AuditTarget;

pub(super) async fn approvals(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<impl IntoResponse> {
    let list = state.attendance.approvals.list().map_err(ApiError::internal)?;
    let list: Vec<_> = list
        .into_iter()
        .filter(|a| match p.role() {
            Role::Admin => true,
            Role::Manager => p.sees_department(&a.department) || p.employee() == Some(a.employee.as_str()),
            Role::Employee => p.employee() == Some(a.employee.as_str()),
            Role::Kiosk => false,
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

pub(super) fn approval_error(e: ApprovalError) -> ApiError {
    match e {
        ApprovalError::Invalid(m) => ApiError::bad(m),
        ApprovalError::UnknownEmployee(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "this token's employee is not in the roster")
        }
        ApprovalError::AlreadyDecided { id, state } => {
            ApiError::new(StatusCode::CONFLICT, format!("approval {id} is already {state}"))
        }
        e @ ApprovalError::Overlaps { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        ApprovalError::OwnRequest(_) => ApiError::forbidden("nobody decides their own request"),
        ApprovalError::NotFound(id) => ApiError::forbidden(format!("approval {id} is outside this token's scope")),
        ApprovalError::NotAllowed { .. } => ApiError::forbidden("the approval is outside this token's scope"),
        e @ ApprovalError::PunchNotStored { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        other => ApiError::internal(other),
    }
}

pub(super) async fn request_makeup(
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

pub(super) async fn approve(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    decide(&state, &p, &id, &body, true).await
}

pub(super) async fn reject(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    decide(&state, &p, &id, &body, false).await
}

/// Decides, and says in the audit entry who decided on which scope (refusals included).
pub(super) async fn decide(state: &ApiState, p: &Principal, id: &str, body: &Body, approve: bool) -> Response {
    let verb = if approve { "approve" } else { "reject" };
    let who = p.employee().map_or_else(|| format!("{} (names no employee)", p.who), |e| format!("employee {e}"));
    let target =
        format!("approval {} {verb} by {who} ({}) on scope [{}]", id.escape_debug(), p.who, p.departments.join(", "));
    let mut response = match decide_inner(state, p, id, body, approve).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    response.extensions_mut().insert(AuditTarget(target));
    response
}

/// The rules: only a manager, only one naming its employee, only within its scope, never its own request.
async fn decide_inner(state: &ApiState, p: &Principal, id: &str, body: &Body, approve: bool) -> ApiResult<Response> {
    require(p, &[Role::Manager], "decide approvals (managers of the employee's department do)")?;
    let id: u64 = id.parse().map_err(|_| ApiError::bad(format!("`{id}` is not an approval id")))?;
    let decision = Decision::from_body(&body.0)?;
    let Some(me) = p.employee() else {
        return Err(ApiError::forbidden(
            "a manager token naming no employee cannot decide: create one with --employee (its roster `manages` is the scope)",
        ));
    };
    let hidden = || ApiError::forbidden(format!("approval {id} is outside this token's scope"));
    let approvals = &state.attendance.approvals;
    match approvals.get(id) {
        Ok(a) if a.employee == me => return Err(ApiError::forbidden("nobody decides their own request")),
        Ok(a) if p.sees_department(&a.department) => {}
        Ok(_) | Err(ApprovalError::NotFound(_)) => return Err(hidden()),
        Err(e) => return Err(ApiError::internal(e)),
    }
    let decider = Decider { name: me.to_owned(), departments: p.departments.clone() };
    let a =
        approvals.decide(id, &decider, approve, decision.note.as_deref(), now_ms()).await.map_err(approval_error)?;
    Ok(axum::Json(a).into_response())
}
