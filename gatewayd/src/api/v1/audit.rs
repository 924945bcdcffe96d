//! `GET /api/v1/audit`: the audit log.

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries with a greater id.
    pub after: Option<u64>,
    pub limit: Option<usize>,
}

pub(super) async fn audit(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<impl IntoResponse> {
    require(&p, &[Role::Admin], "read the audit log")?;
    let list =
        state.audit.list(q.after.unwrap_or(0), q.limit.unwrap_or(1000).min(MAX_LIST)).map_err(ApiError::internal)?;
    Ok(axum::Json(serde_json::json!({ "entries": list })))
}
