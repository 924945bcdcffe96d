//! Encoding of stored punches: [`super::ENCODING_V1`] followed by the protobuf `StoredPunch`.

use drivers::sink::{GeoPoint, Subject};
use drivers::Method;
use prost::Message;

use super::ENCODING_V1;
use crate::proto::store::{Attribute, StoredPunch};
use crate::punch::Punch;

pub fn encode(p: &Punch) -> Vec<u8> {
    let (employee, credential) = match &p.subject {
        Subject::Employee(e) => (e.clone(), String::new()),
        Subject::Credential(c) => (String::new(), c.clone()),
    };
    let msg = StoredPunch {
        seq: p.seq,
        punch_id: p.punch_id.clone(),
        device_id: p.device_id.clone(),
        driver: p.driver.clone(),
        device_seq: p.device_seq,
        method: p.method.as_str().to_owned(),
        employee,
        credential,
        device_time_ms: p.device_time_ms,
        received_time_ms: p.received_time_ms,
        realtime: p.realtime,
        lat: p.geo.map(|g| g.lat),
        lng: p.geo.map(|g| g.lng),
        accuracy_m: p.geo.and_then(|g| g.accuracy_m),
        score: p.score,
        attributes: p
            .attributes
            .iter()
            .map(|(key, value)| Attribute { key: key.clone(), value: value.clone() })
            .collect(),
    };
    let mut out = Vec::with_capacity(1 + msg.encoded_len());
    out.push(ENCODING_V1);
    msg.encode(&mut out).unwrap_or_default();
    out
}

/// Decodes a stored punch; the error says what is wrong.
pub fn decode(bytes: &[u8]) -> Result<Punch, String> {
    let (&version, body) = bytes.split_first().ok_or("empty value")?;
    if version != ENCODING_V1 {
        return Err(format!("unknown encoding version {version} (this build reads version {ENCODING_V1})"));
    }
    let m = StoredPunch::decode(body).map_err(|e| format!("protobuf: {e}"))?;
    let method = Method::parse(&m.method).ok_or_else(|| format!("unknown method `{}`", m.method))?;
    let subject = match (m.employee.is_empty(), m.credential.is_empty()) {
        (false, true) => Subject::Employee(m.employee),
        (true, false) => Subject::Credential(m.credential),
        _ => return Err("exactly one of employee and credential must be set".into()),
    };
    let geo = match (m.lat, m.lng) {
        (Some(lat), Some(lng)) => Some(GeoPoint { lat, lng, accuracy_m: m.accuracy_m }),
        (None, None) => None,
        _ => return Err("lat without lng or lng without lat".into()),
    };
    Ok(Punch {
        seq: m.seq,
        punch_id: m.punch_id,
        device_id: m.device_id,
        driver: m.driver,
        device_seq: m.device_seq,
        method,
        subject,
        device_time_ms: m.device_time_ms,
        received_time_ms: m.received_time_ms,
        realtime: m.realtime,
        geo,
        score: m.score,
        attributes: m.attributes.into_iter().map(|a| (a.key, a.value)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Punch {
        Punch {
            seq: 7,
            punch_id: "gw:d:1".into(),
            device_id: "d".into(),
            driver: "mqtt".into(),
            device_seq: Some(1),
            method: Method::Gps,
            subject: Subject::Employee("E1".into()),
            device_time_ms: 1_700_000_000_000,
            received_time_ms: 1_700_000_000_500,
            realtime: true,
            geo: Some(GeoPoint { lat: 31.2, lng: 121.4, accuracy_m: Some(12.0) }),
            score: Some(0.9),
            attributes: vec![("status".into(), "0".into())],
        }
    }

    #[test]
    fn round_trip() {
        let p = sample();
        assert_eq!(decode(&encode(&p)), Ok(p));
    }

    #[test]
    fn rejects_unknown_version_and_garbage() {
        let mut bytes = encode(&sample());
        bytes[0] = 9;
        assert!(decode(&bytes).unwrap_err().contains("unknown encoding version 9"));
        assert_eq!(decode(&[]), Err("empty value".into()));
        assert!(decode(&[ENCODING_V1, 0xff, 0xff, 0xff]).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}
