//! `GET /api/v1/qr/current`: the rotating QR code a site's kiosk shows (kiosk and admin tokens).

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QrQuery {
    /// The site the kiosk stands at (echoed; codes are per gateway).
    pub site: Option<String>,
}

pub(super) async fn current(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<QrQuery>,
) -> ApiResult<impl IntoResponse> {
    require(&p, &[Role::Kiosk, Role::Admin], "read the QR code (kiosks show it)")?;
    if q.site.as_ref().is_some_and(|s| s.len() > 128 || s.chars().any(char::is_control)) {
        return Err(ApiError::bad("site: at most 128 characters without control characters"));
    }
    let now_s = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let (code, until) = state.qr.current(now_s);
    let tz = state.config().timezone();
    Ok(axum::Json(serde_json::json!({
        "code": code,
        "step_s": crate::api::qr::STEP_S,
        "valid_until": local_time(i64::try_from(until).ok().map(|s| s * 1000), &tz),
        "site": q.site,
    })))
}
