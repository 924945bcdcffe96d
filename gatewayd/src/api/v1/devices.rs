//! `GET /api/v1/devices`: the devices and their state.

use super::*;

pub(super) async fn devices(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<impl IntoResponse> {
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
