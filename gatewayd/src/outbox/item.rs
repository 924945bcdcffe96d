//! An outbox item: a punch, a record or a digest, with its kind and enqueue time ([`ITEM_V1`]).

use super::*;

/// One thing to deliver.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Punch(Punch),
    Record(AttendanceRecord),
    Digest(DayDigest),
}

impl Item {
    fn kind(&self) -> u8 {
        match self {
            Item::Punch(_) => KIND_PUNCH,
            Item::Record(_) => KIND_RECORD,
            Item::Digest(_) => KIND_DIGEST,
        }
    }

    /// The stored form: version, kind, enqueued time, protobuf body.
    pub fn encode(&self, enqueued_ms: i64) -> Vec<u8> {
        let len = match self {
            Item::Punch(m) => m.encoded_len(),
            Item::Record(m) => m.encoded_len(),
            Item::Digest(m) => m.encoded_len(),
        };
        let mut out = Vec::with_capacity(ITEM_HEADER + len);
        out.push(ITEM_V1);
        out.push(self.kind());
        out.extend_from_slice(&enqueued_ms.to_be_bytes());
        // Encoding into a Vec cannot run out of space.
        let _ = match self {
            Item::Punch(m) => m.encode(&mut out),
            Item::Record(m) => m.encode(&mut out),
            Item::Digest(m) => m.encode(&mut out),
        };
        out
    }

    /// Decodes the stored form: the item and when it was enqueued.
    pub fn decode(bytes: &[u8]) -> Result<(Item, i64), String> {
        let raw = RawItem::parse(bytes)?;
        let item = match raw.kind {
            KIND_PUNCH => Item::Punch(Punch::decode(raw.body).map_err(|e| format!("punch: {e}"))?),
            KIND_RECORD => Item::Record(AttendanceRecord::decode(raw.body).map_err(|e| format!("record: {e}"))?),
            _ => Item::Digest(DayDigest::decode(raw.body).map_err(|e| format!("digest: {e}"))?),
        };
        Ok((item, raw.enqueued_ms))
    }
}

/// A stored item without decoding its body.
#[derive(Clone, Copy, Debug)]
pub struct RawItem<'a> {
    pub kind: u8,
    pub enqueued_ms: i64,
    pub body: &'a [u8],
}

impl<'a> RawItem<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<RawItem<'a>, String> {
        if bytes.len() < ITEM_HEADER {
            return Err(format!("{} bytes is shorter than the item header", bytes.len()));
        }
        if bytes[0] != ITEM_V1 {
            return Err(format!("unknown item encoding version {} (this build reads {ITEM_V1})", bytes[0]));
        }
        let kind = bytes[1];
        if ![KIND_PUNCH, KIND_RECORD, KIND_DIGEST].contains(&kind) {
            return Err(format!("unknown item kind {kind:#04x}"));
        }
        let mut at = [0u8; 8];
        at.copy_from_slice(&bytes[2..ITEM_HEADER]);
        Ok(RawItem { kind, enqueued_ms: i64::from_be_bytes(at), body: &bytes[ITEM_HEADER..] })
    }
}
