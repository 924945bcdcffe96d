//! The punch model (SPEC section 3): one identification event, as stored.
//!
//! A [`Punch`] is what the store keeps for a [`DevicePunch`] it accepted: the device's report, the gateway's arrival time,
//! a stable `punch_id` and the store sequence number. Stored punches are never edited or deleted.

use drivers::sink::{GeoPoint, Subject};
use drivers::{DevicePunch, Method};
use sha2::{Digest, Sha256};

/// Earliest device time accepted: 2000-01-01T00:00:00Z.
pub const MIN_DEVICE_TIME_MS: i64 = 946_684_800_000;
/// Latest device time accepted, relative to arrival: one day ahead.
pub const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;
/// Longest employee id or credential accepted.
pub const MAX_SUBJECT_LEN: usize = 128;

#[derive(Clone, Debug, PartialEq)]
pub struct Punch {
    /// Store sequence number: arrival order, starts at 1, never reused.
    pub seq: u64,
    pub punch_id: String,
    pub device_id: String,
    pub driver: String,
    pub device_seq: Option<u64>,
    pub method: Method,
    pub subject: Subject,
    pub device_time_ms: i64,
    pub received_time_ms: i64,
    pub realtime: bool,
    pub geo: Option<GeoPoint>,
    pub score: Option<f32>,
    pub attributes: Vec<(String, String)>,
}

impl Punch {
    pub fn employee(&self) -> Option<&str> {
        match &self.subject {
            Subject::Employee(e) => Some(e),
            Subject::Credential(_) => None,
        }
    }

    pub fn credential(&self) -> Option<&str> {
        match &self.subject {
            Subject::Credential(c) => Some(c),
            Subject::Employee(_) => None,
        }
    }

    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Feeds a subject to a hash as `e:` or `c:` followed by the id (the form punch ids and the store's subject index use).
pub(crate) fn hash_subject(h: &mut Sha256, subject: &Subject) {
    let (tag, value): (&[u8], &str) = match subject {
        Subject::Employee(e) => (b"e:", e),
        Subject::Credential(c) => (b"c:", c),
    };
    h.update(tag);
    h.update(value.as_bytes());
}

/// The stable id of a punch: `{gateway}:{device}:{device_seq}` when the device numbers its punches, else
/// `{gateway}:{device}:h{hash}` with the first 16 bytes (hex) of SHA-256 over the device id and the punch content
/// (method, subject, device time in ms, GPS point). Arrival time is not part of it, so a re-send gets the same id.
pub fn punch_id(gateway_id: &str, p: &DevicePunch) -> String {
    match p.device_seq {
        Some(seq) => format!("{gateway_id}:{}:{seq}", p.device_id),
        None => {
            let mut h = Sha256::new();
            h.update(p.device_id.as_bytes());
            h.update([0]);
            h.update(p.method.as_str().as_bytes());
            h.update([0]);
            hash_subject(&mut h, &p.subject);
            h.update([0]);
            h.update(p.device_time_ms.to_be_bytes());
            if let Some(g) = p.geo {
                h.update(g.lat.to_bits().to_be_bytes());
                h.update(g.lng.to_bits().to_be_bytes());
            }
            let digest = h.finalize();
            format!("{gateway_id}:{}:h{}", p.device_id, hex::encode(&digest[..16]))
        }
    }
}

/// Checks a device punch before it is stored. The error text is what the device is told.
pub fn check(p: &DevicePunch) -> Result<(), String> {
    let (kind, value) = match &p.subject {
        Subject::Employee(e) => ("employee", e),
        Subject::Credential(c) => ("credential", c),
    };
    if value.is_empty() {
        return Err(format!("{kind} is empty"));
    }
    if value.len() > MAX_SUBJECT_LEN {
        return Err(format!("{kind} is longer than {MAX_SUBJECT_LEN} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{kind} contains control characters"));
    }
    if p.device_time_ms < MIN_DEVICE_TIME_MS {
        return Err("time is before 2000-01-01".into());
    }
    if p.device_time_ms > p.received_time_ms.saturating_add(MAX_FUTURE_MS) {
        return Err("time is more than a day in the future".into());
    }
    if let Some(g) = p.geo {
        if !(g.lat.is_finite() && (-90.0..=90.0).contains(&g.lat)) {
            return Err("lat must be between -90 and 90".into());
        }
        if !(g.lng.is_finite() && (-180.0..=180.0).contains(&g.lng)) {
            return Err("lng must be between -180 and 180".into());
        }
        if let Some(a) = g.accuracy_m {
            if !(a.is_finite() && a >= 0.0) {
                return Err("accuracy_m must be a non-negative number".into());
            }
        }
    }
    if p.method == Method::Gps && p.geo.is_none() {
        return Err("a gps punch needs lat and lng".into());
    }
    if let Some(s) = p.score {
        if !s.is_finite() {
            return Err("score must be a number".into());
        }
    }
    if p.attributes.len() > 16 || p.attributes.iter().any(|(k, v)| k.len() > 64 || v.len() > 256) {
        return Err("too many or too long device attributes".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> DevicePunch {
        DevicePunch {
            device_id: "hall-face-1".into(),
            device_seq: None,
            method: Method::Face,
            subject: Subject::Employee("E1001".into()),
            device_time_ms: 1_795_827_570_000,
            received_time_ms: 1_795_827_571_000,
            realtime: true,
            geo: None,
            score: Some(0.93),
            attributes: vec![],
        }
    }

    #[test]
    fn punch_id_is_stable_and_ignores_arrival() {
        let a = sample();
        let mut b = sample();
        b.received_time_ms += 60_000;
        b.score = Some(0.5);
        assert_eq!(punch_id("gw", &a), punch_id("gw", &b));
        let mut c = sample();
        c.device_time_ms += 1000;
        assert_ne!(punch_id("gw", &a), punch_id("gw", &c));
        let mut d = sample();
        d.device_seq = Some(42);
        assert_eq!(punch_id("gw", &d), "gw:hall-face-1:42");
        assert!(punch_id("gw", &a).starts_with("gw:hall-face-1:h"));
    }

    #[test]
    fn checks_reject_bad_punches() {
        assert_eq!(check(&sample()), Ok(()));
        let mut p = sample();
        p.device_time_ms = 0;
        assert!(check(&p).is_err());
        let mut p = sample();
        p.device_time_ms = p.received_time_ms + MAX_FUTURE_MS + 1;
        assert!(check(&p).is_err());
        let mut p = sample();
        p.subject = Subject::Credential(String::new());
        assert!(check(&p).is_err());
        let mut p = sample();
        p.method = Method::Gps;
        assert_eq!(check(&p), Err("a gps punch needs lat and lng".into()));
        p.geo = Some(GeoPoint { lat: 91.0, lng: 0.0, accuracy_m: None });
        assert!(check(&p).is_err());
    }
}
