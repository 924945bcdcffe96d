//! `GET /api/v1/devices`: the devices and their state. `GET /api/v1/devices/{id}/commands` and
//! `POST /api/v1/devices/{id}/backfill`: the command queue of a PUSH terminal, and asking it for a range of its log.

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

fn adms_terminal(state: &ApiState, id: &str) -> ApiResult<()> {
    let config = state.config();
    match config.devices.iter().find(|d| d.id == id) {
        Some(d) if d.driver == drivers::DriverKind::Adms => Ok(()),
        Some(d) => {
            Err(ApiError::bad(format!("device `{id}` is a {} device; only adms terminals take commands", d.driver)))
        }
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no device `{id}`"))),
    }
}

/// `GET /api/v1/devices/{id}/commands` (admin): the terminal's commands, oldest first.
pub(super) async fn commands(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    require(&p, &[Role::Admin], "read a device's commands")?;
    adms_terminal(&state, &id)?;
    let queue = state.adms.commands().ok_or_else(|| ApiError::internal("the command channel is not enabled"))?.clone();
    let device = id.clone();
    let list = tokio::task::spawn_blocking(move || queue.list(&device))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(axum::Json(serde_json::json!({ "device": id, "commands": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackfillRequest {
    from: String,
    to: String,
}

/// A backfill bound: an RFC 3339 time, or a date (the start of that day in the site's time zone; for `to`, the end).
fn bound(text: &str, tz: &TimeZone, end: bool) -> ApiResult<i64> {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let date: Date = text
        .parse()
        .map_err(|_| ApiError::bad(format!("`{text}` is neither a time like 2026-11-22T08:00:00+08:00 nor a date")))?;
    let date = if end { date.tomorrow().map_err(|e| ApiError::bad(e.to_string()))? } else { date };
    let zoned = date.to_zoned(tz.clone()).map_err(|e| ApiError::bad(e.to_string()))?;
    Ok(zoned.timestamp().as_millisecond())
}

/// `POST /api/v1/devices/{id}/backfill` (admin) with `{"from", "to"}`: queues `DATA QUERY ATTLOG` for the range; the
/// terminal uploads it on its next poll (records the store has are recognised, not stored twice).
pub(super) async fn backfill(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    Json(req): Json<BackfillRequest>,
) -> ApiResult<impl IntoResponse> {
    require(&p, &[Role::Admin], "ask a terminal for its records")?;
    adms_terminal(&state, &id)?;
    let tz = state.config().timezone();
    let (from, to) = (bound(&req.from, &tz, false)?, bound(&req.to, &tz, true)?);
    if from >= to {
        return Err(ApiError::bad("`from` must be before `to`"));
    }
    if to - from > MAX_EXPORT_DAYS * 86_400_000 {
        return Err(ApiError::bad(format!("a backfill covers at most {MAX_EXPORT_DAYS} days")));
    }
    let command = state.adms.backfill(&id, from, to, "api").await.map_err(ApiError::internal)?;
    Ok((StatusCode::ACCEPTED, axum::Json(serde_json::json!({ "command": command }))))
}
