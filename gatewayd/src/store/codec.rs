//! Encoding of stored punches: [`super::ENCODING_V1`] followed by the protobuf `StoredPunch`; and of the values of the
//! punch log, which hold one such punch or a block of them ([`BLOCK_V1`]).

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

/// The version byte of a log value holding a block of consecutive punches.
pub const BLOCK_V1: u8 = 2;
/// The most punches in one block.
pub const BLOCK_MAX_PUNCHES: usize = 64;
/// The most bytes of punches in a block (a single larger punch makes a block of its own). sled rewrites a whole leaf
/// node (up to 17 values) as one log message and stores messages over 128 KiB (a quarter of its 512 KiB segment) as
/// separate blob files, which it never syncs; 4 KiB blocks keep a full leaf of blocks well below that.
pub const BLOCK_MAX_BYTES: usize = 4 * 1024;

/// Encodes a block of encoded punches (each as [`encode`] makes it): [`BLOCK_V1`], the count (u32 big-endian), each
/// punch's length (u32 big-endian), then the punches.
pub fn encode_block(punches: &[Vec<u8>]) -> Vec<u8> {
    let body: usize = punches.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(5 + 4 * punches.len() + body);
    out.push(BLOCK_V1);
    out.extend_from_slice(&(punches.len() as u32).to_be_bytes());
    for p in punches {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
    }
    for p in punches {
        out.extend_from_slice(p);
    }
    out
}

/// The encoded punches of one log value, in sequence order: the value itself for a single punch, the block's punches
/// for a block. The error says what is wrong; nothing is decoded yet.
pub fn split_log_value(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let (&version, rest) = bytes.split_first().ok_or("empty value")?;
    match version {
        ENCODING_V1 => Ok(vec![bytes]),
        BLOCK_V1 => {
            let (count, rest) = rest.split_first_chunk::<4>().ok_or("block: truncated count")?;
            let count = u32::from_be_bytes(*count) as usize;
            if count == 0 {
                return Err("block: no punches".into());
            }
            let table = count.checked_mul(4).filter(|&t| t <= rest.len()).ok_or("block: truncated length table")?;
            let (lengths, mut body) = rest.split_at(table);
            let mut out = Vec::with_capacity(count);
            for len in lengths.chunks_exact(4) {
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                if len > body.len() {
                    return Err(format!("block: punch {} of {count} runs past the end", out.len() + 1));
                }
                let (punch, tail) = body.split_at(len);
                out.push(punch);
                body = tail;
            }
            if !body.is_empty() {
                return Err(format!("block: {} bytes after the last punch", body.len()));
            }
            Ok(out)
        }
        v => Err(format!("unknown log value version {v} (this build reads versions {ENCODING_V1} and {BLOCK_V1})")),
    }
}

/// Decodes every punch of a log value whose key is `first` (the sequence number of its first punch), checking that each
/// punch carries the sequence number its place gives it.
pub fn decode_log_value(first: u64, bytes: &[u8]) -> Result<Vec<Punch>, String> {
    split_log_value(bytes)?.into_iter().enumerate().map(|(i, p)| decode_at(first.saturating_add(i as u64), p)).collect()
}

/// Decodes one punch that must have sequence number `seq`.
pub fn decode_at(seq: u64, bytes: &[u8]) -> Result<Punch, String> {
    let p = decode(bytes)?;
    if p.seq != seq {
        return Err(format!("holds sequence number {} where {seq} belongs", p.seq));
    }
    Ok(p)
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

    #[test]
    fn block_round_trip() {
        let punches: Vec<Punch> = (10..13).map(|seq| Punch { seq, ..sample() }).collect();
        let block = encode_block(&punches.iter().map(encode).collect::<Vec<_>>());
        assert_eq!(block[0], BLOCK_V1);
        assert_eq!(decode_log_value(10, &block), Ok(punches.clone()));
        // A single punch is a log value too (the layout before blocks).
        assert_eq!(decode_log_value(10, &encode(&punches[0])), Ok(vec![punches[0].clone()]));
        // A block read under the wrong key is caught by the sequence numbers its punches carry.
        assert!(decode_log_value(11, &block).unwrap_err().contains("holds sequence number 10 where 11 belongs"));
    }

    #[test]
    fn damaged_blocks_are_errors() {
        let block = encode_block(&[encode(&sample()), encode(&sample())]);
        assert_eq!(split_log_value(&[BLOCK_V1, 0, 0]), Err("block: truncated count".into()));
        assert_eq!(split_log_value(&[BLOCK_V1, 0, 0, 0, 0]), Err("block: no punches".into()));
        assert_eq!(split_log_value(&[BLOCK_V1, 0xff, 0xff, 0xff, 0xff]), Err("block: truncated length table".into()));
        assert!(split_log_value(&block[..block.len() - 1]).unwrap_err().contains("punch 2 of 2 runs past the end"));
        let mut longer = block.clone();
        longer.push(0);
        assert_eq!(split_log_value(&longer), Err("block: 1 bytes after the last punch".into()));
        assert!(split_log_value(&[7]).unwrap_err().contains("unknown log value version 7"));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
            let _ = decode_log_value(1, &bytes);
        }
    }
}
