//! The little of MQTT 3.1.1 the gateway's front needs to read: frame boundaries, CONNECT (to authenticate and rewrite
//! it), the topic of a PUBLISH and the filters of a SUBSCRIBE (to tie them to the authenticated device), and CONNACK.
//!
//! Pure functions over byte slices, so they can be fuzzed; nothing here allocates more than the input it is given.
//! Everything else a device sends is forwarded to the broker byte for byte.

use std::fmt;

/// The largest remaining length MQTT can express (four length bytes).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Control packet types (the high nibble of the first byte).
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
}

/// CONNACK return codes of MQTT 3.1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectReturn {
    Accepted = 0,
    UnacceptableProtocol = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUsernameOrPassword = 4,
    NotAuthorized = 5,
}

/// Why bytes from a client are not a well-formed MQTT 3.1.1 packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The remaining-length field uses more than four bytes.
    BadLength,
    /// The packet is larger than the front accepts.
    TooLarge { size: usize, limit: usize },
    /// The packet ends before a field it announces.
    Truncated(&'static str),
    /// A string field is not UTF-8.
    NotUtf8(&'static str),
    /// Anything else that breaks the protocol.
    Protocol(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadLength => f.write_str("malformed remaining length"),
            WireError::TooLarge { size, limit } => write!(f, "packet of {size} bytes exceeds the limit of {limit}"),
            WireError::Truncated(what) => write!(f, "packet ends inside {what}"),
            WireError::NotUtf8(what) => write!(f, "{what} is not UTF-8"),
            WireError::Protocol(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for WireError {}

/// Where the next frame in `buf` ends: `Ok(Some((header_len, body_len)))` once the fixed header is complete,
/// `Ok(None)` when more bytes are needed. The body may not be in `buf` yet.
pub fn frame_len(buf: &[u8], limit: usize) -> Result<Option<(usize, usize)>, WireError> {
    let mut len: usize = 0;
    let mut shift = 0;
    for i in 1..=4 {
        let Some(&b) = buf.get(i) else { return Ok(None) };
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            let header = i + 1;
            if header + len > limit {
                return Err(WireError::TooLarge { size: header + len, limit });
            }
            return Ok(Some((header, len)));
        }
        shift += 7;
    }
    Err(WireError::BadLength)
}

/// Appends a remaining-length field.
fn put_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
}

/// A cursor over a packet body.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        let (&b, rest) = self.buf.split_first().ok_or(WireError::Truncated(what))?;
        self.buf = rest;
        Ok(b)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let hi = self.u8(what)?;
        let lo = self.u8(what)?;
        Ok(u16::from_be_bytes([hi, lo]))
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
        let n = usize::from(self.u16(what)?);
        if self.buf.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.bytes(what)?).map_err(|_| WireError::NotUtf8(what))
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Callers only pass fields that came out of a 16-bit length field, or short strings of our own.
    let n = b.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&b[..n]);
}

/// The last will of a CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub message: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// A parsed CONNECT packet.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    /// 4 for MQTT 3.1.1, 3 for MQTT 3.1, 5 for MQTT 5.
    pub level: u8,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("level", &self.level)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "****"))
            .finish()
    }
}

/// Parses the body of a CONNECT (after the fixed header). MQTT 5 is recognised by its level so it can be refused
/// properly, but its properties are not parsed.
pub fn parse_connect(body: &[u8]) -> Result<Connect, WireError> {
    let mut r = Reader { buf: body };
    let name = r.bytes("protocol name")?;
    let level = r.u8("protocol level")?;
    if !matches!((name, level), (b"MQTT", 4) | (b"MQIsdp", 3) | (b"MQTT", 5)) {
        return Err(WireError::Protocol(format!(
            "unsupported protocol {:?} level {level}",
            String::from_utf8_lossy(name)
        )));
    }
    let flags = r.u8("connect flags")?;
    let keep_alive = r.u16("keep alive")?;
    if level == 5 {
        return Ok(Connect {
            level,
            clean_session: flags & 0x02 != 0,
            keep_alive,
            client_id: String::new(),
            will: None,
            username: None,
            password: None,
        });
    }
    if flags & 0x01 != 0 {
        return Err(WireError::Protocol("reserved connect flag is set".into()));
    }
    let client_id = r.str("client id")?.to_owned();
    let will = if flags & 0x04 != 0 {
        let qos = (flags >> 3) & 0x03;
        if qos == 3 {
            return Err(WireError::Protocol("will QoS 3".into()));
        }
        let topic = r.str("will topic")?.to_owned();
        let message = r.bytes("will message")?.to_vec();
        Some(Will { topic, message, qos, retain: flags & 0x20 != 0 })
    } else {
        if flags & 0x38 != 0 {
            return Err(WireError::Protocol("will QoS or retain set without a will".into()));
        }
        None
    };
    let username = if flags & 0x80 != 0 { Some(r.str("username")?.to_owned()) } else { None };
    let password = if flags & 0x40 != 0 { Some(r.bytes("password")?.to_vec()) } else { None };
    if !r.buf.is_empty() {
        return Err(WireError::Protocol("bytes after the CONNECT payload".into()));
    }
    Ok(Connect { level, clean_session: flags & 0x02 != 0, keep_alive, client_id, will, username, password })
}

/// Encodes a CONNECT as MQTT 3.1.1 (whatever level it was read as).
pub fn encode_connect(c: &Connect) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    put_bytes(&mut body, b"MQTT");
    body.push(4);
    let mut flags = 0u8;
    if c.clean_session {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos & 0x03) << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&c.keep_alive.to_be_bytes());
    put_bytes(&mut body, c.client_id.as_bytes());
    if let Some(w) = &c.will {
        put_bytes(&mut body, w.topic.as_bytes());
        put_bytes(&mut body, &w.message);
    }
    if let Some(u) = &c.username {
        put_bytes(&mut body, u.as_bytes());
    }
    if let Some(p) = &c.password {
        put_bytes(&mut body, p);
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(kind::CONNECT << 4);
    put_length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// A CONNACK packet with `code` (session not present).
pub fn connack(code: ConnectReturn) -> [u8; 4] {
    [kind::CONNACK << 4, 2, 0, code as u8]
}

/// The return code of a CONNACK frame (header included), if it is one.
pub fn connack_code(frame: &[u8]) -> Option<u8> {
    match frame {
        [b0, 2, _, code] if b0 >> 4 == kind::CONNACK => Some(*code),
        _ => None,
    }
}

/// The topic of a PUBLISH packet, given its first byte and body.
pub fn publish_topic(first: u8, body: &[u8]) -> Result<&str, WireError> {
    let qos = (first >> 1) & 0x03;
    if qos == 3 {
        return Err(WireError::Protocol("PUBLISH with QoS 3".into()));
    }
    let mut r = Reader { buf: body };
    let topic = r.str("topic")?;
    if qos > 0 {
        r.u16("packet id")?;
    }
    Ok(topic)
}

/// A parsed SUBSCRIBE or UNSUBSCRIBE body.
#[derive(Debug, PartialEq, Eq)]
pub struct Subscription<'a> {
    pub packet_id: u16,
    /// Each topic filter with its requested QoS (0 for UNSUBSCRIBE).
    pub filters: Vec<(&'a str, u8)>,
}

/// Parses a SUBSCRIBE (or UNSUBSCRIBE when `with_qos` is false) body.
pub fn subscription(body: &[u8], with_qos: bool) -> Result<Subscription<'_>, WireError> {
    let mut r = Reader { buf: body };
    let packet_id = r.u16("packet id")?;
    let mut filters = Vec::new();
    while !r.buf.is_empty() {
        let filter = r.str("topic filter")?;
        let mut qos = 0;
        if with_qos {
            qos = r.u8("requested QoS")?;
            if qos > 2 {
                return Err(WireError::Protocol(format!("requested QoS {qos}")));
            }
        }
        filters.push((filter, qos));
    }
    if filters.is_empty() {
        return Err(WireError::Protocol("subscription without a topic filter".into()));
    }
    Ok(Subscription { packet_id, filters })
}

/// The topic filters of a SUBSCRIBE (or UNSUBSCRIBE when `with_qos` is false) body.
pub fn subscription_filters(body: &[u8], with_qos: bool) -> Result<Vec<&str>, WireError> {
    Ok(subscription(body, with_qos)?.filters.into_iter().map(|(f, _)| f).collect())
}

/// A SUBACK granting `granted` (one return code per filter, in order).
pub fn suback(packet_id: u16, granted: &[u8]) -> Vec<u8> {
    let mut out = vec![kind::SUBACK << 4];
    put_length(&mut out, 2 + granted.len());
    out.extend_from_slice(&packet_id.to_be_bytes());
    out.extend_from_slice(granted);
    out
}

/// An UNSUBACK.
pub fn unsuback(packet_id: u16) -> [u8; 4] {
    let [hi, lo] = packet_id.to_be_bytes();
    [kind::UNSUBACK << 4, 2, hi, lo]
}

/// A QoS 0 PUBLISH of `payload` to `topic`.
pub fn publish_qos0(topic: &str, payload: &[u8]) -> Vec<u8> {
    let topic = &topic.as_bytes()[..topic.len().min(usize::from(u16::MAX))];
    let mut out = Vec::with_capacity(5 + 2 + topic.len() + payload.len());
    out.push(kind::PUBLISH << 4);
    put_length(&mut out, 2 + topic.len() + payload.len());
    put_bytes(&mut out, topic);
    out.extend_from_slice(payload);
    out
}

/// True when the topic filter `filter` (with `+` and `#` wildcards) matches the topic `topic` (MQTT 3.1.1 §4.7).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        match (f, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_acks_and_publishes_encode_as_mqtt_3_1_1() {
        // SUBSCRIBE body: packet id 10, "a/b" QoS 1, "c/#" QoS 0.
        let body = [0, 10, 0, 3, b'a', b'/', b'b', 1, 0, 3, b'c', b'/', b'#', 0];
        let sub = subscription(&body, true).unwrap();
        assert_eq!(sub, Subscription { packet_id: 10, filters: vec![("a/b", 1), ("c/#", 0)] });
        assert!(subscription(&[0, 10, 0, 1, b'a', 3], true).unwrap_err().to_string().contains("requested QoS 3"));
        assert!(subscription(&[0, 10], true).is_err());
        assert_eq!(suback(10, &[1, 0]), vec![0x90, 4, 0, 10, 1, 0]);
        assert_eq!(unsuback(0x1234), [0xb0, 2, 0x12, 0x34]);
        let p = publish_qos0("gw/v1/dev/a/ack", b"{}");
        assert_eq!(&p[..4], &[0x30, 2 + 15 + 2, 0, 15]);
        assert_eq!(publish_topic(p[0], &p[2..]).unwrap(), "gw/v1/dev/a/ack");
        assert_eq!(frame_len(&p, 1024).unwrap(), Some((2, p.len() - 2)));
        // A payload long enough for a two-byte remaining length.
        let long = publish_qos0("t", &[7; 200]);
        assert_eq!(frame_len(&long, 1024).unwrap(), Some((3, 203)));
    }

    #[test]
    fn topic_filters_match_like_mqtt() {
        let topic = "gw/v1/dev/a/ack";
        for yes in
            ["gw/v1/dev/a/ack", "gw/v1/dev/a/#", "gw/v1/dev/+/ack", "gw/#", "#", "gw/v1/dev/a/ack/#", "+/+/+/+/+"]
        {
            assert!(filter_matches(yes, topic), "{yes}");
        }
        for no in ["gw/v1/dev/a", "gw/v1/dev/b/ack", "gw/v1/dev/a/ack/x", "gw/v1/dev/+", "+/+/+/+", "gw/v1/dev/a/+/x"] {
            assert!(!filter_matches(no, topic), "{no}");
        }
    }

    fn sample() -> Connect {
        Connect {
            level: 4,
            clean_session: true,
            keep_alive: 30,
            client_id: "face-1".into(),
            will: Some(Will {
                topic: "gw/v1/dev/face-1/status".into(),
                message: b"offline".to_vec(),
                qos: 1,
                retain: true,
            }),
            username: Some("face-1".into()),
            password: Some(b"secret-1".to_vec()),
        }
    }

    #[test]
    fn connect_round_trips() {
        let bytes = encode_connect(&sample());
        let (header, body) = frame_len(&bytes, 1 << 20).unwrap().unwrap();
        assert_eq!(header + body, bytes.len());
        assert_eq!(parse_connect(&bytes[header..]).unwrap(), sample());
    }

    #[test]
    fn lengths() {
        assert_eq!(frame_len(&[0x30], 100), Ok(None));
        assert_eq!(frame_len(&[0x30, 0x80], 1 << 20), Ok(None));
        assert_eq!(frame_len(&[0x30, 0xc1, 0x02], 1 << 20), Ok(Some((3, 321))));
        assert_eq!(frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], usize::MAX), Err(WireError::BadLength));
        assert!(matches!(frame_len(&[0x30, 0x7f], 10), Err(WireError::TooLarge { .. })));
        let mut out = Vec::new();
        put_length(&mut out, 321);
        assert_eq!(out, [0xc1, 0x02]);
    }

    #[test]
    fn malformed_connects_are_errors() {
        let bytes = encode_connect(&sample());
        let body = &bytes[2..];
        for cut in 0..body.len() {
            assert!(parse_connect(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = body.to_vec();
        bad[6] = 9; // protocol level
        assert!(parse_connect(&bad).is_err());
        let mut reserved = body.to_vec();
        reserved[7] |= 1;
        assert!(parse_connect(&reserved).is_err());
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert!(parse_connect(&trailing).is_err());
    }

    #[test]
    fn publish_and_subscribe_fields() {
        let mut body = Vec::new();
        put_bytes(&mut body, b"gw/v1/dev/a/punch");
        body.extend_from_slice(&[0, 7]);
        body.extend_from_slice(b"{}");
        assert_eq!(publish_topic(0x32, &body), Ok("gw/v1/dev/a/punch"));
        assert!(publish_topic(0x36, &body).is_err());
        assert!(publish_topic(0x32, &body[..3]).is_err());
        let mut sub = vec![0, 1];
        put_bytes(&mut sub, b"gw/v1/dev/a/ack");
        sub.push(1);
        assert_eq!(subscription_filters(&sub, true), Ok(vec!["gw/v1/dev/a/ack"]));
        assert!(subscription_filters(&sub[..2], true).is_err());
        sub.push(3);
        assert!(subscription_filters(&sub, true).is_err());
    }

    #[test]
    fn connack_codes() {
        assert_eq!(connack_code(&connack(ConnectReturn::NotAuthorized)), Some(5));
        assert_eq!(connack_code(&[0x30, 2, 0, 0]), None);
    }
}
