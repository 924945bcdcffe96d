//! The JSON of SPEC 3.1: punches devices publish on `gw/v1/dev/{id}/punch` and the acks the gateway answers with on
//! `gw/v1/dev/{id}/ack`.
//!
//! [`parse_punch`] is pure (the site time zone and the arrival time are parameters) so it can be fuzzed. Every error
//! carries the `seq` when the payload had a readable one, so the device can match the rejection to its punch.

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::sink::{DevicePunch, GeoPoint, Method, Subject};

/// A punch payload as published by a device. Unknown fields are ignored (devices add their own).
#[derive(Debug, Deserialize)]
struct Wire {
    seq: Option<serde_json::Value>,
    time: Option<String>,
    method: Option<String>,
    employee: Option<String>,
    credential: Option<String>,
    score: Option<f64>,
    lat: Option<f64>,
    lng: Option<f64>,
    accuracy_m: Option<f64>,
}

/// Why a payload is not a punch. `reason` is what the device is told; `label` is the metric reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadError {
    pub seq: Option<u64>,
    pub label: &'static str,
    pub reason: String,
}

impl PayloadError {
    fn new(seq: Option<u64>, label: &'static str, reason: impl Into<String>) -> PayloadError {
        PayloadError { seq, label, reason: reason.into() }
    }
}

/// Reads just the `seq` of a payload that is otherwise unusable (too large, or wrong somewhere else).
pub fn peek_seq(payload: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct SeqOnly {
        seq: Option<serde_json::Value>,
    }
    serde_json::from_slice::<SeqOnly>(payload).ok()?.seq.and_then(|v| v.as_u64())
}

/// Parses a device time: RFC 3339 with an offset, or a civil date-time read in the site time zone.
pub fn parse_time(text: &str, tz: &TimeZone) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    match text.parse::<jiff::civil::DateTime>() {
        Ok(dt) => dt
            .to_zoned(tz.clone())
            .map(|z| z.timestamp().as_millisecond())
            .map_err(|e| format!("time `{text}` does not exist in the site time zone: {e}")),
        Err(_) => Err(format!("time `{}` is not an ISO 8601 date-time", text.chars().take(40).collect::<String>())),
    }
}

/// Parses a punch payload of device `device_id`, received at `received_ms`.
///
/// `max_bytes` bounds the payload. Checks that depend on the store (time range, subject length) are left to the ingest
/// writer, which answers them as rejections too.
pub fn parse_punch(
    device_id: &str,
    payload: &[u8],
    tz: &TimeZone,
    received_ms: i64,
    max_bytes: usize,
) -> Result<DevicePunch, PayloadError> {
    if payload.len() > max_bytes {
        return Err(PayloadError::new(
            peek_seq(payload),
            "oversized",
            format!("payload is {} bytes, more than the {max_bytes} allowed", payload.len()),
        ));
    }
    let wire: Wire = serde_json::from_slice(payload).map_err(|e| {
        let what = if e.is_data() { "a field has the wrong type" } else { "not valid JSON" };
        PayloadError::new(peek_seq(payload), "malformed", format!("payload is {what}: {e}"))
    })?;
    let seq = match wire.seq {
        None => return Err(PayloadError::new(None, "missing_field", "missing field `seq`")),
        Some(v) => match v.as_u64() {
            Some(s) => s,
            None => return Err(PayloadError::new(None, "malformed", "`seq` must be a non-negative integer")),
        },
    };
    let seq_some = Some(seq);
    let time = wire.time.ok_or_else(|| PayloadError::new(seq_some, "missing_field", "missing field `time`"))?;
    let device_time_ms = parse_time(&time, tz).map_err(|e| PayloadError::new(seq_some, "bad_time", e))?;
    let method_text =
        wire.method.ok_or_else(|| PayloadError::new(seq_some, "missing_field", "missing field `method`"))?;
    let method = match Method::parse(&method_text) {
        Some(Method::Makeup | Method::Other) | None => {
            return Err(PayloadError::new(
                seq_some,
                "unknown_method",
                format!(
                    "unknown method `{}` (use face, fingerprint, card, pin, password, palm, gps or qr)",
                    method_text.chars().take(32).collect::<String>()
                ),
            ))
        }
        Some(m) => m,
    };
    let subject = match (wire.employee, wire.credential) {
        (Some(e), None) => Subject::Employee(e),
        (None, Some(c)) => Subject::Credential(c),
        (Some(_), Some(_)) => {
            return Err(PayloadError::new(seq_some, "malformed", "give either `employee` or `credential`, not both"))
        }
        (None, None) => {
            return Err(PayloadError::new(seq_some, "missing_field", "missing field `employee` or `credential`"))
        }
    };
    let geo = match (wire.lat, wire.lng) {
        (Some(lat), Some(lng)) => Some(GeoPoint { lat, lng, accuracy_m: wire.accuracy_m }),
        (None, None) if wire.accuracy_m.is_none() => None,
        _ => return Err(PayloadError::new(seq_some, "malformed", "`lat` and `lng` go together")),
    };
    let score = match wire.score {
        None => None,
        Some(s) if s.is_finite() && (0.0..=1_000_000.0).contains(&s) => Some(s as f32),
        Some(_) => return Err(PayloadError::new(seq_some, "malformed", "`score` must be a non-negative number")),
    };
    Ok(DevicePunch {
        device_id: device_id.to_owned(),
        device_seq: Some(seq),
        method,
        subject,
        device_time_ms,
        received_time_ms: received_ms,
        realtime: true,
        geo,
        score,
        attributes: Vec::new(),
    })
}

/// What the gateway tells a device about one punch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The punch's `seq`; `null` when the payload had no readable one.
    pub seq: Option<u64>,
    /// `stored` or `rejected`.
    pub status: AckStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    Stored,
    Rejected,
}

impl Ack {
    pub fn stored(seq: u64) -> Ack {
        Ack { seq: Some(seq), status: AckStatus::Stored, error: None }
    }

    pub fn rejected(seq: Option<u64>, error: impl Into<String>) -> Ack {
        Ack { seq, status: AckStatus::Rejected, error: Some(error.into()) }
    }

    /// The JSON published on the ack topic.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{\"seq\":null,\"status\":\"rejected\"}".to_vec())
    }
}

/// `gw/v1/dev/{id}/punch` → `Some((id, "punch"))`.
pub fn split_topic(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix(super::TOPIC_PREFIX)?;
    let (device, leaf) = rest.split_once('/')?;
    if device.is_empty() || leaf.contains('/') {
        return None;
    }
    Some((device, leaf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tz() -> TimeZone {
        TimeZone::get("Asia/Shanghai").unwrap_or(TimeZone::UTC)
    }

    const NOW: i64 = 1_795_827_600_000;

    fn parse(p: &str) -> Result<DevicePunch, PayloadError> {
        parse_punch("face-1", p.as_bytes(), &tz(), NOW, 4096)
    }

    #[test]
    fn spec_example_parses() {
        let p = parse(
            r#"{"seq": 42, "time": "2026-11-22T08:59:30+08:00", "method": "face", "employee": "E1001", "score": 0.93}"#,
        )
        .unwrap();
        assert_eq!(p.device_seq, Some(42));
        assert_eq!(p.method, Method::Face);
        assert_eq!(p.subject, Subject::Employee("E1001".into()));
        assert_eq!(p.device_time_ms, "2026-11-22T00:59:30Z".parse::<jiff::Timestamp>().unwrap().as_millisecond());
        assert_eq!(p.received_time_ms, NOW);
    }

    #[test]
    fn local_time_is_site_time_and_gps_is_read() {
        let p = parse(
            r#"{"seq":1,"time":"2026-11-22T08:59:30","method":"gps","credential":"04A1B2C3","lat":31.2304,"lng":121.4737,"accuracy_m":12}"#,
        )
        .unwrap();
        assert_eq!(p.device_time_ms, "2026-11-22T00:59:30Z".parse::<jiff::Timestamp>().unwrap().as_millisecond());
        assert_eq!(p.subject, Subject::Credential("04A1B2C3".into()));
        assert_eq!(p.geo, Some(GeoPoint { lat: 31.2304, lng: 121.4737, accuracy_m: Some(12.0) }));
    }

    #[test]
    fn malformed_payloads_are_rejected_with_reasons() {
        let cases: &[(&str, &str, Option<u64>)] = &[
            ("", "malformed", None),
            ("not json", "malformed", None),
            ("[1,2]", "malformed", None),
            (r#"{"seq": 7}"#, "missing_field", Some(7)),
            (r#"{"time":"2026-11-22T08:59:30Z","method":"face","employee":"E1"}"#, "missing_field", None),
            (r#"{"seq":-1,"time":"2026-11-22T08:59:30Z","method":"face","employee":"E1"}"#, "malformed", None),
            (r#"{"seq":3,"time":"yesterday","method":"face","employee":"E1"}"#, "bad_time", Some(3)),
            (r#"{"seq":3,"time":"2026-11-22T08:59:30Z","method":"smell","employee":"E1"}"#, "unknown_method", Some(3)),
            (r#"{"seq":3,"time":"2026-11-22T08:59:30Z","method":"makeup","employee":"E1"}"#, "unknown_method", Some(3)),
            (r#"{"seq":3,"time":"2026-11-22T08:59:30Z","method":"face"}"#, "missing_field", Some(3)),
            (
                r#"{"seq":3,"time":"2026-11-22T08:59:30Z","method":"face","employee":"E","credential":"C"}"#,
                "malformed",
                Some(3),
            ),
            (r#"{"seq":3,"time":"2026-11-22T08:59:30Z","method":"gps","employee":"E","lat":1}"#, "malformed", Some(3)),
            (
                r#"{"seq":3,"time":"2026-11-22T08:59:30Z","method":"face","employee":"E","score":-2}"#,
                "malformed",
                Some(3),
            ),
            (r#"{"seq":3,"time":12,"method":"face","employee":"E"}"#, "malformed", Some(3)),
        ];
        for (payload, label, seq) in cases {
            let err = parse(payload).unwrap_err();
            assert_eq!((err.label, err.seq), (*label, *seq), "{payload}: {err:?}");
            assert!(!err.reason.is_empty());
        }
        let big = format!(r#"{{"seq":9,"pad":"{}"}}"#, "x".repeat(5000));
        let err = parse(&big).unwrap_err();
        assert_eq!((err.label, err.seq), ("oversized", Some(9)));
    }

    #[test]
    fn acks_serialise_as_specified() {
        assert_eq!(String::from_utf8(Ack::stored(42).to_json()).unwrap(), r#"{"seq":42,"status":"stored"}"#);
        assert_eq!(
            String::from_utf8(Ack::rejected(Some(42), "bad").to_json()).unwrap(),
            r#"{"seq":42,"status":"rejected","error":"bad"}"#
        );
    }

    #[test]
    fn topics_split() {
        assert_eq!(split_topic("gw/v1/dev/a-1/punch"), Some(("a-1", "punch")));
        assert_eq!(split_topic("gw/v1/dev//punch"), None);
        assert_eq!(split_topic("gw/v1/dev/a/b/punch"), None);
        assert_eq!(split_topic("other/a/punch"), None);
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_punch("d", &bytes, &tz(), NOW, 4096);
        }

        #[test]
        fn never_panics_on_jsonish(seq in any::<i64>(), time in ".{0,40}", method in "[a-z]{0,10}", who in ".{0,20}",
                                   lat in any::<f64>(), score in any::<f64>()) {
            let v = serde_json::json!({"seq": seq, "time": time, "method": method, "employee": who,
                                       "lat": lat, "lng": lat, "score": score});
            let _ = parse_punch("d", v.to_string().as_bytes(), &tz(), NOW, 4096);
        }
    }
}
