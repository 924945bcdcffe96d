//! `GET|PUT /api/v1/rules`: the rules in force, and new rules from an admin.

use super::*;

pub(super) async fn get_rules(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Response> {
    require(&p, &[Role::Admin], "read the rules")?;
    let records = &state.attendance.records;
    let version = records.current_rules().map_err(ApiError::internal)?;
    let text = records.rules_versions().map_err(ApiError::internal)?.remove(&version).unwrap_or_default();
    let config = state.config();
    let file = crate::reconcile::rules::file_in_force(&config);
    let source = match &file {
        Some(f) if *f == config.gateway.data_dir.join(crate::reconcile::rules::API_FILE) => "api",
        Some(_) => "config",
        None => "none",
    };
    let file = file.map(|f| f.display().to_string());
    Ok(axum::Json(serde_json::json!({ "version": version, "file": file, "source": source, "text": text }))
        .into_response())
}

/// `PUT /api/v1/rules`: a new rules.toml (the body, as text). It is validated in full, written to
/// [`crate::reconcile::rules::API_FILE`] in the data dir (atomically), which from then on wins over `[rules].file`, and put in
/// force as SIGHUP does. The configured file is never written (under the hardened unit it is read-only).
pub(super) async fn put_rules(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Body,
) -> ApiResult<Response> {
    require(&p, &[Role::Admin], "change the rules")?;
    let text = body.text()?;
    let file = state.attendance.write_rules(&state.config(), text).map_err(update_error)?;
    state.reload.request();
    Ok(axum::Json(serde_json::json!({ "written": file.display().to_string(), "reloading": true })).into_response())
}
