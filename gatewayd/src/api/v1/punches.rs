//! `GET|POST /api/v1/punches`: stored punches in the caller's scope, and employees' own GPS/QR punches.

use super::*;
use crate::reconcile::approvals::Kind;

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
    /// For a self-punch: the time the client claimed (evidence; the punch is timed at its arrival).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_time: Option<String>,
    /// For an approved offline claim: when the claim arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline_claim_received: Option<String>,
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
            claimed_time: local_time(attribute_ms(&punch.attributes, CLAIMED_TIME), &tz),
            offline_claim_received: local_time(attribute_ms(&punch.attributes, "offline_claim"), &tz),
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

fn attribute_ms(attributes: &[(String, String)], key: &str) -> Option<i64> {
    attributes.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.parse().ok())
}

/// `POST /api/v1/punches`: an employee's own GPS or QR punch. It is timed by the gateway when it arrives; `time` is
/// kept as the client's claim. With `"offline": true` it is an offline claim for `time`, held for a manager.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PunchRequest {
    /// RFC 3339 with offset, e.g. `2026-11-20T09:01:00+08:00`: the client's claim (evidence), required when offline.
    pub time: Option<String>,
    pub method: Method,
    pub lat: Option<f64>,
    pub lng: Option<f64>,
    pub accuracy_m: Option<f64>,
    /// The scanned QR code (kept as evidence).
    pub code: Option<String>,
    /// A Wi-Fi punch: the access point's BSSID (`aa:bb:cc:dd:ee:ff`), checked against the group's `wifi` list.
    pub bssid: Option<String>,
    /// A Wi-Fi punch: the network name (kept as evidence).
    pub ssid: Option<String>,
    /// Made while the phone was offline: counts at `time` only once a manager approves.
    #[serde(default)]
    pub offline: bool,
}

/// What a valid `POST /api/v1/punches` body becomes.
#[derive(Debug, PartialEq)]
pub enum Posted {
    /// A punch timed by the gateway (the client's time, if any, in the `claimed_time` attribute).
    Punch(DevicePunch),
    /// An offline claim for a manager to decide ([`Kind::OfflineClaim`]).
    OfflineClaim(Kind),
}

/// The attribute a self-punch keeps the client's claimed time in (Unix milliseconds).
pub const CLAIMED_TIME: &str = "claimed_time";

/// The checks of a `POST /api/v1/punches` body, giving what `employee` (the token's) posts at `now_ms`; an offline
/// claim older than `offline_limit_ms` (or in the future) is refused.
pub fn punch_from_request(
    req: PunchRequest,
    employee: String,
    token_id: &str,
    now_ms: i64,
    offline_limit_ms: i64,
) -> ApiResult<Posted> {
    if !matches!(req.method, Method::Gps | Method::Qr | Method::Wifi) {
        return Err(ApiError::bad("method: only `gps`, `qr` and `wifi` punches can be posted"));
    }
    let bssid = match (req.method, req.bssid.as_deref()) {
        (Method::Wifi, Some(b)) => Some(
            crate::reconcile::rules::normalize_bssid(b)
                .ok_or_else(|| ApiError::bad("bssid: not a BSSID (six hex pairs like aa:bb:cc:dd:ee:ff)"))?,
        ),
        (Method::Wifi, None) => return Err(ApiError::bad("bssid: required for a wifi punch")),
        (_, None) if req.ssid.is_none() => None,
        _ => return Err(ApiError::bad("bssid/ssid: only for wifi punches")),
    };
    if let Some(ssid) = &req.ssid {
        if ssid.len() > 32 || ssid.chars().any(char::is_control) {
            return Err(ApiError::bad("ssid: at most 32 bytes without control characters"));
        }
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
        (None, None) if matches!(req.method, Method::Qr | Method::Wifi) => None,
        _ => return Err(ApiError::bad("lat and lng are required for a gps punch")),
    };
    if let Some(code) = &req.code {
        if code.len() > 512 || code.chars().any(char::is_control) {
            return Err(ApiError::bad("code: at most 512 characters without control characters"));
        }
    }
    let claimed = req.time.as_deref().map(parse_time).transpose()?;
    if req.offline {
        let Some(time_ms) = claimed else {
            return Err(ApiError::bad("time: an offline claim needs the time it was made"));
        };
        if time_ms > now_ms {
            return Err(ApiError::bad("time: an offline claim cannot be in the future"));
        }
        if now_ms - time_ms > offline_limit_ms {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "refused: an offline claim must be posted within offline_claim_limit ({} minutes) of its time",
                    offline_limit_ms / 60_000
                ),
            ));
        }
        return Ok(Posted::OfflineClaim(Kind::OfflineClaim {
            time_ms,
            received_ms: now_ms,
            method: req.method,
            lat: geo.map(|g| g.lat),
            lng: geo.map(|g| g.lng),
            accuracy_m: geo.and_then(|g| g.accuracy_m),
            code: req.code,
            bssid,
            ssid: req.ssid,
        }));
    }
    let mut attributes = vec![("token".to_owned(), token_id.to_owned())];
    if let Some(code) = req.code {
        attributes.push(("qr".into(), code));
    }
    if let Some(t) = claimed {
        attributes.push((CLAIMED_TIME.into(), t.to_string()));
    }
    if let Some(b) = bssid {
        attributes.push(("bssid".into(), b));
    }
    if let Some(ssid) = req.ssid {
        attributes.push(("ssid".into(), ssid));
    }
    Ok(Posted::Punch(DevicePunch {
        device_id: API_DEVICE.into(),
        device_seq: None,
        method: req.method,
        subject: Subject::Employee(employee),
        device_time_ms: now_ms,
        received_time_ms: now_ms,
        realtime: true,
        geo,
        score: None,
        attributes,
    }))
}

pub(super) async fn post_punch(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Json(req): Json<PunchRequest>,
) -> ApiResult<Response> {
    require(&p, &[Role::Employee], "post punches (punches come from devices and employees)")?;
    let employee = p.employee().ok_or_else(|| ApiError::forbidden("this token names no employee"))?.to_owned();
    let limit_ms = i64::try_from(state.config().api.offline_claim_limit().as_millis()).unwrap_or(i64::MAX);
    let now = now_ms();
    let posted = punch_from_request(req, employee.clone(), &p.token.id, now, limit_ms)?;
    // A QR punch carries a code of its step or the one before (an offline claim: of its claimed time).
    let qr = match &posted {
        Posted::Punch(punch) if punch.method == Method::Qr => {
            Some((punch.attributes.iter().find(|(k, _)| k == "qr").map(|(_, v)| v.clone()), now))
        }
        Posted::OfflineClaim(Kind::OfflineClaim { method: Method::Qr, code, time_ms, .. }) => {
            Some((code.clone(), *time_ms))
        }
        _ => None,
    };
    if let Some((code, at_ms)) = qr {
        if let Err(refusal) = state.qr.check(code.as_deref(), u64::try_from(at_ms / 1000).unwrap_or(0)) {
            crate::api::qr::qr_refused(&state.metrics, refusal);
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, refusal.message()));
        }
    }
    let punch = match posted {
        Posted::Punch(punch) => punch,
        Posted::OfflineClaim(kind) => {
            let roster = state.roster()?;
            let a = state
                .attendance
                .approvals
                .request_offline_claim(&roster, &employee, kind, &p.who, now)
                .await
                .map_err(approvals::approval_error)?;
            return Ok((StatusCode::ACCEPTED, axum::Json(serde_json::json!({ "pending_approval": a }))).into_response());
        }
    };
    match state.sink.submit(punch).await {
        Outcome::Stored { punch_id, duplicate } => Ok((
            if duplicate { StatusCode::OK } else { StatusCode::CREATED },
            axum::Json(serde_json::json!({ "punch_id": punch_id, "duplicate": duplicate })),
        )
            .into_response()),
        Outcome::Rejected(r @ drivers::sink::Rejection::Invalid(_)) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, r.to_string()))
        }
        Outcome::Rejected(r) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, r.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_827_600_000;
    const LIMIT: i64 = 4 * 3_600_000;

    fn post(body: &str) -> ApiResult<Posted> {
        let req: PunchRequest = serde_json::from_str(body).map_err(|e| ApiError::bad(e.to_string()))?;
        punch_from_request(req, "E1".into(), "tok", NOW, LIMIT)
    }

    #[test]
    fn a_self_punch_is_timed_on_arrival_and_keeps_the_claim() {
        let Ok(Posted::Punch(p)) = post(r#"{"time":"2026-11-01T09:00:00+08:00","method":"qr","code":"c"}"#) else {
            panic!("a punch")
        };
        assert_eq!(p.device_time_ms, NOW);
        let claim = p.attributes.iter().find(|(k, _)| k == CLAIMED_TIME).map(|(_, v)| v.clone());
        assert_eq!(claim, Some(parse_time("2026-11-01T09:00:00+08:00").unwrap().to_string()));
        let Ok(Posted::Punch(p)) = post(r#"{"method":"gps","lat":1,"lng":2}"#) else { panic!("no time is fine") };
        assert!(p.attributes.iter().all(|(k, _)| k != CLAIMED_TIME));
    }

    #[test]
    fn wifi_punches_keep_the_access_point() {
        let Ok(Posted::Punch(p)) = post(r#"{"method":"wifi","bssid":"AA-BB-CC-DD-EE-0F","ssid":"plant-a"}"#) else {
            panic!("a punch")
        };
        assert_eq!(p.method, Method::Wifi);
        let attr = |k: &str| p.attributes.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        assert_eq!(attr("bssid").as_deref(), Some("aa:bb:cc:dd:ee:0f"));
        assert_eq!(attr("ssid").as_deref(), Some("plant-a"));
        let t = jiff::Timestamp::from_millisecond(NOW - 60_000).unwrap();
        let claim = post(&format!(r#"{{"time":"{t}","method":"wifi","bssid":"aa:bb:cc:dd:ee:0f","offline":true}}"#));
        assert!(
            matches!(claim, Ok(Posted::OfflineClaim(Kind::OfflineClaim { bssid: Some(b), .. })) if b == "aa:bb:cc:dd:ee:0f")
        );
    }

    #[test]
    fn offline_claims_are_held_within_the_limit() {
        let t = jiff::Timestamp::from_millisecond(NOW - 3_600_000).unwrap();
        let ok = post(&format!(r#"{{"time":"{t}","method":"gps","lat":1,"lng":2,"offline":true}}"#));
        assert!(
            matches!(ok, Ok(Posted::OfflineClaim(Kind::OfflineClaim { time_ms, .. })) if time_ms == NOW - 3_600_000)
        );
        let old = jiff::Timestamp::from_millisecond(NOW - LIMIT - 1).unwrap();
        let e = post(&format!(r#"{{"time":"{old}","method":"qr","offline":true}}"#)).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.message.contains("offline_claim_limit"), "{}", e.message);
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let future = jiff::Timestamp::from_millisecond(NOW + 1000).unwrap();
        for bad in [
            "{",
            r#"{"method":"qr","offline":true}"#,
            &format!(r#"{{"time":"{future}","method":"qr","offline":true}}"#),
            r#"{"time":"soon","method":"qr"}"#,
            r#"{"method":"qr","offline":1}"#,
            r#"{"method":"card"}"#,
            r#"{"method":"gps","lat":1}"#,
            r#"{"method":"gps","lat":91,"lng":0}"#,
            r#"{"method":"gps","lat":1,"lng":1,"accuracy_m":-1}"#,
            r#"{"method":"qr","code":"a\u0000b"}"#,
            r#"{"method":"qr","employee":"E2"}"#,
            r#"{"method":"wifi"}"#,
            r#"{"method":"wifi","bssid":"aa:bb:cc:dd:ee"}"#,
            r#"{"method":"wifi","bssid":"aa:bb:cc:dd:ee:fg"}"#,
            r#"{"method":"wifi","bssid":"aabbccddeeff"}"#,
            r#"{"method":"wifi","bssid":"aa:bb:cc:dd:ee:ff","ssid":"thirty-three-bytes-long-ssid-name"}"#,
            r#"{"method":"gps","lat":1,"lng":1,"bssid":"aa:bb:cc:dd:ee:ff"}"#,
            r#"{"method":"qr","ssid":"plant"}"#,
        ] {
            let e = post(bad).err().unwrap_or_else(|| panic!("accepted {bad}"));
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}: {}", e.message);
        }
    }
}
