//! `GET|POST /api/v1/punches`: stored punches in the caller's scope, and employees' own GPS/QR punches.

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PunchFilter {
    /// First local date (default: 30 days before `to`).
    pub from: Option<String>,
    /// Last local date, inclusive (default: today).
    pub to: Option<String>,
    pub employee: Option<String>,
    pub department: Option<String>,
    pub device: Option<String>,
    pub limit: Option<usize>,
}

/// A punch as the API shows it. Credentials (card numbers, PINs) are shown to admins only.
#[derive(Debug, Serialize)]
pub struct PunchView {
    pub punch_id: String,
    pub seq: u64,
    pub device_id: String,
    pub driver: String,
    pub method: Method,
    pub employee: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    pub time: Option<String>,
    pub received: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lng: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
}

pub(super) async fn punches(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Query(f): Query<PunchFilter>,
) -> ApiResult<impl IntoResponse> {
    let roster = state.roster()?;
    check_filters(&p, &roster, f.employee.as_deref(), f.department.as_deref())?;
    let tz = state.config().timezone();
    let to = match &f.to {
        Some(t) => parse_date("to", t)?,
        None => jiff::Timestamp::now().to_zoned(tz.clone()).date(),
    };
    let from = match &f.from {
        Some(t) => parse_date("from", t)?,
        None => to.checked_sub(jiff::Span::new().days(30)).map_err(|e| ApiError::bad(e.to_string()))?,
    };
    let end = to.tomorrow().map_err(|e| ApiError::bad(e.to_string()))?;
    let (from_ms, to_ms) = (day_start_ms(from, &tz)?, day_start_ms(end, &tz)?);
    let limit = f.limit.unwrap_or(MAX_LIST).min(MAX_LIST);
    let admin = p.role() == Role::Admin;
    let mut out = Vec::new();
    for item in state.store.by_time(from_ms, to_ms) {
        if out.len() >= limit {
            break;
        }
        let punch = item.map_err(ApiError::internal)?;
        let employee = match &punch.subject {
            Subject::Employee(e) => roster.resolve_employee(e).map(|x| x.id.clone()).or_else(|| Some(e.clone())),
            Subject::Credential(c) => roster.resolve(c, &punch.device_id, punch.method).map(|x| x.id.clone()),
        };
        let visible = match &employee {
            Some(e) => p.sees_employee(&roster, e),
            None => admin,
        };
        let wanted = f.device.as_deref().is_none_or(|d| d == punch.device_id)
            && f.employee.as_deref().is_none_or(|e| employee.as_deref() == Some(e))
            && f.department
                .as_deref()
                .is_none_or(|d| employee.as_deref().and_then(|e| roster.get(e)).is_some_and(|x| x.department == d));
        if !(visible && wanted) {
            continue;
        }
        out.push(PunchView {
            credential: if admin { punch.credential().map(str::to_owned) } else { None },
            time: local_time(Some(punch.device_time_ms), &tz),
            received: local_time(Some(punch.received_time_ms), &tz),
            lat: punch.geo.as_ref().map(|g| g.lat),
            lng: punch.geo.as_ref().map(|g| g.lng),
            score: punch.score,
            punch_id: punch.punch_id,
            seq: punch.seq,
            device_id: punch.device_id,
            driver: punch.driver,
            method: punch.method,
            employee,
        });
    }
    Ok(axum::Json(serde_json::json!({ "punches": out })))
}

/// `POST /api/v1/punches`: an employee's own GPS or QR punch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PunchRequest {
    /// RFC 3339 with offset, e.g. `2026-11-20T09:01:00+08:00`.
    pub time: String,
    pub method: Method,
    pub lat: Option<f64>,
    pub lng: Option<f64>,
    pub accuracy_m: Option<f64>,
    /// The scanned QR code (kept as evidence).
    pub code: Option<String>,
}

/// The checks of a `POST /api/v1/punches` body, giving the punch `employee` (the token's) posts at `now_ms`.
pub fn punch_from_request(req: PunchRequest, employee: String, token_id: &str, now_ms: i64) -> ApiResult<DevicePunch> {
    if !matches!(req.method, Method::Gps | Method::Qr) {
        return Err(ApiError::bad("method: only `gps` and `qr` punches can be posted"));
    }
    let geo = match (req.lat, req.lng) {
        (Some(lat), Some(lng)) => {
            if !(lat.is_finite() && lng.is_finite() && (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng))
            {
                return Err(ApiError::bad("lat/lng: out of range"));
            }
            if req.accuracy_m.is_some_and(|a| !a.is_finite() || a < 0.0) {
                return Err(ApiError::bad("accuracy_m: must be a non-negative number"));
            }
            Some(GeoPoint { lat, lng, accuracy_m: req.accuracy_m })
        }
        (None, None) if req.method == Method::Qr => None,
        _ => return Err(ApiError::bad("lat and lng are required for a gps punch")),
    };
    let mut attributes = vec![("token".to_owned(), token_id.to_owned())];
    if let Some(code) = req.code {
        if code.len() > 512 || code.chars().any(char::is_control) {
            return Err(ApiError::bad("code: at most 512 characters without control characters"));
        }
        attributes.push(("qr".into(), code));
    }
    Ok(DevicePunch {
        device_id: API_DEVICE.into(),
        device_seq: None,
        method: req.method,
        subject: Subject::Employee(employee),
        device_time_ms: parse_time(&req.time)?,
        received_time_ms: now_ms,
        realtime: true,
        geo,
        score: None,
        attributes,
    })
}

pub(super) async fn post_punch(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Json(req): Json<PunchRequest>,
) -> ApiResult<impl IntoResponse> {
    require(&p, &[Role::Employee], "post punches (punches come from devices and employees)")?;
    let employee = p.employee().ok_or_else(|| ApiError::forbidden("this token names no employee"))?.to_owned();
    let punch = punch_from_request(req, employee, &p.token.id, now_ms())?;
    match state.sink.submit(punch).await {
        Outcome::Stored { punch_id, duplicate } => Ok((
            if duplicate { StatusCode::OK } else { StatusCode::CREATED },
            axum::Json(serde_json::json!({ "punch_id": punch_id, "duplicate": duplicate })),
        )),
        Outcome::Rejected(r @ drivers::sink::Rejection::Invalid(_)) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, r.to_string()))
        }
        Outcome::Rejected(r) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, r.to_string())),
    }
}
