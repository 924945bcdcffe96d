//! MQTT 3.1.1 packets as the front reads and writes them, through `mqttbytes` (rumqttc's v4 packet parser and encoder,
//! `rumqttc::mqttbytes`).
//!
//! Read: frame boundaries ([`frame`], the size limit checked from the fixed header before a body is buffered), the
//! CONNECT (to authenticate and rewrite it), the topic of a PUBLISH and the filters of a SUBSCRIBE or UNSUBSCRIBE (to tie
//! them to the authenticated device), and the broker's CONNACK. Written: the rewritten CONNECT, CONNACK, SUBACK, UNSUBACK,
//! the QoS 0 PUBLISHes that carry acks, DISCONNECT. Everything else a device sends is forwarded to the broker byte for
//! byte. Every function is pure over a byte slice, so they can be fuzzed.
//!
//! Where mqttbytes is more lenient than the front must be, a few lines here check what it lets through:
//! - its v4 CONNECT reader accepts protocol level 5 and then misreads the MQTT 5 properties as the client id, does not
//!   know MQTT 3.1 (`MQIsdp`, level 3; its packet is 3.1.1's under another name), does not check the reserved connect
//!   flag and ignores bytes after the payload: [`parse_connect`] reads the protocol name, level and flags itself (the
//!   first bytes of the variable header), hands mqttbytes the packet as MQTT 3.1.1, and checks the length it parsed;
//! - it keeps only the QoS bits of a subscription's options byte, where MQTT 3.1.1 §3.8.3.1 makes the reserved bits
//!   malformed, and accepts an UNSUBSCRIBE without a topic filter: [`subscribe`] and [`unsubscribe`] check both.
//!
//! One difference from the front's former hand-written reader: mqttbytes reads the CONNECT password as UTF-8 text, as
//! every device secret is, so a binary password now makes a malformed CONNECT (closed) instead of a wrong password
//! (`CONNACK 4`).

use std::fmt;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{self, ConnAck, LastWill, Login, SubAck, SubscribeReasonCode, UnsubAck};
use rumqttc::mqttbytes::{self, FixedHeader, QoS};

pub use rumqttc::mqttbytes::v4::{ConnectReturnCode, Subscribe, Unsubscribe};
pub use rumqttc::mqttbytes::PacketType;

/// Why bytes from a client are not a well-formed MQTT 3.1.1 packet.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// mqttbytes refused the packet.
    #[error("{0}")]
    Mqtt(#[from] mqttbytes::Error),
    /// The packet is larger than the front accepts.
    #[error("packet larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// Something mqttbytes lets through that breaks the protocol.
    #[error("{0}")]
    Protocol(String),
}

/// Where the next frame in a buffer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// A whole frame of this many bytes (fixed header included) starts the buffer.
    Whole(usize),
    /// At least this many more bytes are needed.
    Partial(usize),
}

/// Where the next frame in `buf` ends. A frame larger than `limit` (fixed header included) is an error as soon as its
/// fixed header is in, before its body is.
pub fn frame(buf: &[u8], limit: usize) -> Result<Framing, WireError> {
    match mqttbytes::check(buf.iter(), limit) {
        Ok(header) if header.frame_length() > limit => Err(WireError::TooLarge { limit }),
        Ok(header) => Ok(Framing::Whole(header.frame_length())),
        // Once the fixed header is in, `more` completes the frame; before, the total is at most 6 bytes.
        Err(mqttbytes::Error::InsufficientBytes(more)) if buf.len().saturating_add(more) > limit => {
            Err(WireError::TooLarge { limit })
        }
        Err(mqttbytes::Error::InsufficientBytes(more)) => Ok(Framing::Partial(more)),
        Err(mqttbytes::Error::PayloadSizeLimitExceeded(_)) => Err(WireError::TooLarge { limit }),
        Err(e) => Err(e.into()),
    }
}

/// The fixed header of `frame` (one whole frame) and the packet bytes mqttbytes reads.
fn packet(frame: &[u8]) -> Result<(FixedHeader, Bytes), WireError> {
    let header = mqttbytes::check(frame.iter(), usize::MAX)?;
    let len = header.frame_length();
    Ok((header, Bytes::copy_from_slice(&frame[..len])))
}

/// The packet type of a frame's first byte (`Err` for the reserved types 0 and 15).
pub fn packet_type(first: u8) -> Result<PacketType, WireError> {
    Ok(FixedHeader::new(first, 0, 0).packet_type()?)
}

/// The length of the fixed header of a frame `check` accepted: the first byte and one to four length bytes.
fn fixed_header_len(frame: &[u8]) -> usize {
    1 + frame.iter().skip(1).take(4).position(|b| b & 0x80 == 0).map_or(4, |i| i + 1)
}

/// A CONNECT as the front reads it.
#[derive(Clone, PartialEq, Eq)]
pub enum Connect {
    /// MQTT 5 (protocol level 5), which the front refuses with `CONNACK 1`; nothing after its keep alive is read.
    Mqtt5,
    /// MQTT 3.1.1 (or 3.1), as the packet mqttbytes read.
    V4(Box<ConnectV4>),
}

/// An MQTT 3.1.1 or 3.1 CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectV4 {
    /// 4 for MQTT 3.1.1, 3 for MQTT 3.1.
    pub level: u8,
    /// The packet as MQTT 3.1.1. Its `login` is as mqttbytes reads it (an absent field is empty); [`ConnectV4::username`]
    /// and [`ConnectV4::password`] tell an absent field from an empty one.
    pub packet: v4::Connect,
    has_username: bool,
    has_password: bool,
}

impl fmt::Debug for ConnectV4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectV4")
            .field("level", &self.level)
            .field("client_id", &self.packet.client_id)
            .field("username", &self.username())
            .field("password", &self.password().map(|_| "****"))
            .finish()
    }
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Connect::Mqtt5 => f.write_str("Mqtt5"),
            Connect::V4(c) => c.fmt(f),
        }
    }
}

impl ConnectV4 {
    /// The username, when the CONNECT has one.
    pub fn username(&self) -> Option<&str> {
        self.has_username.then(|| self.packet.login.as_ref().map_or("", |l| l.username.as_str()))
    }

    /// The password, when the CONNECT has one.
    pub fn password(&self) -> Option<&[u8]> {
        self.has_password.then(|| self.packet.login.as_ref().map_or(&b""[..], |l| l.password.as_bytes()))
    }

    /// The last will, when the CONNECT has one.
    pub fn will(&self) -> Option<&LastWill> {
        self.packet.last_will.as_ref()
    }

    /// This CONNECT as MQTT 3.1.1 with client id and username `id` and password `password` (the front's rewrite for
    /// the broker); keep alive, clean session and last will unchanged.
    pub fn rewritten(&self, id: &str, password: &str) -> Result<Vec<u8>, WireError> {
        let mut packet = self.packet.clone();
        packet.client_id = id.to_owned();
        packet.login = Some(Login::new(id, password));
        encode(|out| packet.write(out))
    }
}

/// Parses a CONNECT frame (fixed header included).
pub fn parse_connect(frame: &[u8]) -> Result<Connect, WireError> {
    let header = mqttbytes::check(frame.iter(), usize::MAX)?;
    if header.packet_type()? != PacketType::Connect {
        return Err(WireError::Protocol("not a CONNECT".into()));
    }
    let body = &frame[fixed_header_len(frame)..header.frame_length()];
    // Protocol name (a string), level, connect flags and keep alive: read here, see the module documentation.
    let truncated = || WireError::Protocol("packet ends inside its variable header".into());
    let name_len =
        usize::from(u16::from_be_bytes([*body.first().ok_or_else(truncated)?, *body.get(1).ok_or_else(truncated)?]));
    let (name, level, flags) = match body.get(2..2 + name_len + 4) {
        Some([name @ .., level, flags, _, _]) => (name, *level, *flags),
        _ => return Err(truncated()),
    };
    match (name, level) {
        (b"MQTT", 5) => return Ok(Connect::Mqtt5),
        (b"MQTT", 4) | (b"MQIsdp", 3) => {}
        _ => {
            return Err(WireError::Protocol(format!(
                "unsupported protocol {:?} level {level}",
                String::from_utf8_lossy(name)
            )))
        }
    }
    if flags & 0x01 != 0 {
        return Err(WireError::Protocol("reserved connect flag is set".into()));
    }
    // The packet as MQTT 3.1.1: a placeholder fixed header of two bytes, the 3.1.1 protocol name and level, the rest.
    let rest = &body[3 + name_len..];
    let mut v311 = BytesMut::with_capacity(9 + rest.len());
    v311.extend_from_slice(&[0x10, 0, 0, 4, b'M', b'Q', b'T', b'T', 4]);
    v311.extend_from_slice(rest);
    let packet = v4::Connect::read(FixedHeader::new(0x10, 1, v311.len() - 2), v311.freeze())?;
    let (has_username, has_password) = (flags & 0x80 != 0, flags & 0x40 != 0);
    let login = packet.login.as_ref();
    let field = |present: bool, len: usize| if present { 2 + len } else { 0 };
    let parsed = 2
        + name_len
        + 4
        + 2
        + packet.client_id.len()
        + packet.last_will.as_ref().map_or(0, |w| 4 + w.topic.len() + w.message.len())
        + field(has_username, login.map_or(0, |l| l.username.len()))
        + field(has_password, login.map_or(0, |l| l.password.len()));
    if parsed != body.len() {
        return Err(WireError::Protocol("bytes after the CONNECT payload".into()));
    }
    Ok(Connect::V4(Box::new(ConnectV4 { level, packet, has_username, has_password })))
}

/// A clean-session MQTT 3.1.1 CONNECT of `client_id` with username `client_id` and `password`.
pub fn login(client_id: &str, password: &str, keep_alive: u16) -> Result<Vec<u8>, WireError> {
    let mut packet = v4::Connect::new(client_id);
    packet.keep_alive = keep_alive;
    packet.set_login(client_id, password);
    encode(|out| packet.write(out))
}

/// Encodes with mqttbytes.
fn encode(write: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>) -> Result<Vec<u8>, WireError> {
    let mut out = BytesMut::new();
    write(&mut out)?;
    Ok(out.to_vec())
}

/// A CONNACK with `code` (session not present).
pub fn connack(code: ConnectReturnCode) -> Vec<u8> {
    // [0x20, 2, 0, code]: a CONNACK always encodes.
    encode(|out| ConnAck::new(code, false).write(out)).unwrap_or_default()
}

/// The return code of a CONNACK frame (header included), if it is one; also a code MQTT 3.1.1 does not define.
pub fn connack_code(frame: &[u8]) -> Option<u8> {
    let (header, bytes) = packet(frame).ok()?;
    if header.packet_type().ok()? != PacketType::ConnAck {
        return None;
    }
    match ConnAck::read(header, bytes) {
        Ok(ack) => Some(ack.code as u8),
        Err(mqttbytes::Error::InvalidConnectReturnCode(code)) => Some(code),
        Err(_) => None,
    }
}

/// A DISCONNECT.
pub fn disconnect() -> Vec<u8> {
    encode(|out| v4::Disconnect.write(out)).unwrap_or_default()
}

/// The topic of a PUBLISH frame.
pub fn publish_topic(frame: &[u8]) -> Result<String, WireError> {
    let (header, bytes) = packet(frame)?;
    Ok(v4::Publish::read(header, bytes)?.topic)
}

/// Parses a SUBSCRIBE frame.
pub fn subscribe(frame: &[u8]) -> Result<Subscribe, WireError> {
    let (header, bytes) = packet(frame)?;
    let sub = Subscribe::read(header, bytes)?;
    // mqttbytes keeps only the QoS bits of each options byte: the packet must encode back to itself.
    let again = encode(|out| sub.write(out))?;
    if again.get(fixed_header_len(&again)..) != frame.get(fixed_header_len(frame)..header.frame_length()) {
        return Err(WireError::Protocol("reserved bits set in a subscription's options".into()));
    }
    Ok(sub)
}

/// Parses an UNSUBSCRIBE frame.
pub fn unsubscribe(frame: &[u8]) -> Result<Unsubscribe, WireError> {
    let (header, bytes) = packet(frame)?;
    let unsub = Unsubscribe::read(header, bytes)?;
    if unsub.topics.is_empty() {
        return Err(WireError::Protocol("subscription without a topic filter".into()));
    }
    Ok(unsub)
}

/// A SUBACK granting each filter of `sub` the QoS it asked for, at most 1.
pub fn suback(sub: &Subscribe) -> Vec<u8> {
    let granted = sub
        .filters
        .iter()
        .map(|f| {
            SubscribeReasonCode::Success(if f.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce })
        })
        .collect();
    // A SUBACK has one byte per filter of a SUBSCRIBE that fitted a frame: it always encodes.
    encode(|out| SubAck::new(sub.pkid, granted).write(out)).unwrap_or_default()
}

/// An UNSUBACK.
pub fn unsuback(pkid: u16) -> Vec<u8> {
    encode(|out| UnsubAck::new(pkid).write(out)).unwrap_or_default()
}

/// Appends a QoS 0 PUBLISH of `payload` to `topic` to `out`.
pub fn put_publish_qos0(out: &mut BytesMut, topic: &str, payload: Vec<u8>) -> Result<(), WireError> {
    v4::Publish::from_bytes(topic, QoS::AtMostOnce, Bytes::from(payload)).write(out)?;
    Ok(())
}

/// True when the topic filter `filter` (with `+` and `#` wildcards) matches the topic `topic` (MQTT 3.1.1 §4.7).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    mqttbytes::matches(topic, filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_len(out: &mut Vec<u8>, mut len: usize) {
        loop {
            let b = (len % 128) as u8;
            len /= 128;
            out.push(if len > 0 { b | 0x80 } else { b });
            if len == 0 {
                return;
            }
        }
    }

    fn put_str(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }

    fn frame_of(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        put_len(&mut out, body.len());
        out.extend_from_slice(body);
        out
    }

    /// A CONNECT body: protocol `name` level `level`, a will, username and password.
    fn connect_body(name: &[u8], level: u8) -> Vec<u8> {
        let mut b = Vec::new();
        put_str(&mut b, name);
        b.push(level);
        b.push(0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02);
        b.extend_from_slice(&30u16.to_be_bytes());
        put_str(&mut b, b"face-1");
        put_str(&mut b, b"gw/v1/dev/face-1/status");
        put_str(&mut b, b"offline");
        put_str(&mut b, b"face-1");
        put_str(&mut b, b"secret-1");
        b
    }

    fn v4(c: Connect) -> ConnectV4 {
        match c {
            Connect::V4(c) => *c,
            Connect::Mqtt5 => panic!("MQTT 5"),
        }
    }

    #[test]
    fn connects_of_3_1_1_and_3_1_parse_and_rewrite() {
        for (name, level) in [(&b"MQTT"[..], 4), (&b"MQIsdp"[..], 3)] {
            let c = v4(parse_connect(&frame_of(0x10, &connect_body(name, level))).unwrap());
            assert_eq!(c.level, level);
            assert_eq!((c.username(), c.password()), (Some("face-1"), Some(&b"secret-1"[..])));
            assert_eq!(
                (c.packet.client_id.as_str(), c.packet.keep_alive, c.packet.clean_session),
                ("face-1", 30, true)
            );
            let will = c.will().unwrap();
            assert_eq!(
                (will.topic.as_str(), &will.message[..], will.qos, will.retain),
                ("gw/v1/dev/face-1/status", &b"offline"[..], QoS::AtLeastOnce, true)
            );
            // The rewrite for the broker is MQTT 3.1.1 with the new identity, and parses back.
            let back = v4(parse_connect(&c.rewritten("dev-9", "token").unwrap()).unwrap());
            assert_eq!(back.level, 4);
            assert_eq!((back.username(), back.password()), (Some("dev-9"), Some(&b"token"[..])));
            assert_eq!((back.packet.client_id.as_str(), back.will()), ("dev-9", c.will()));
        }
        // Without username and password; an empty username is still a username.
        let mut b = Vec::new();
        put_str(&mut b, b"MQTT");
        b.extend_from_slice(&[4, 0x02, 0, 10]);
        put_str(&mut b, b"x");
        let c = v4(parse_connect(&frame_of(0x10, &b)).unwrap());
        assert_eq!((c.username(), c.password(), c.will()), (None, None, None));
        b[7] |= 0x80;
        put_str(&mut b, b"");
        assert_eq!(v4(parse_connect(&frame_of(0x10, &b)).unwrap()).username(), Some(""));
    }

    #[test]
    fn mqtt_5_is_recognised_by_its_level() {
        let mut body = connect_body(b"MQTT", 5);
        body.truncate(10); // whatever follows the keep alive (properties) is not read
        assert_eq!(parse_connect(&frame_of(0x10, &body)).unwrap(), Connect::Mqtt5);
    }

    #[test]
    fn malformed_connects_are_errors() {
        let body = connect_body(b"MQTT", 4);
        for cut in 0..body.len() {
            assert!(parse_connect(&frame_of(0x10, &body[..cut])).is_err(), "cut at {cut}");
        }
        let broken = |at: usize, value: u8| {
            let mut b = body.clone();
            b[at] = value;
            parse_connect(&frame_of(0x10, &b)).unwrap_err().to_string()
        };
        assert!(broken(6, 9).contains("unsupported protocol"));
        assert!(broken(2, b'X').contains("unsupported protocol"));
        assert!(broken(7, body[7] | 0x01).contains("reserved connect flag"));
        assert!(broken(7, body[7] | 0x18).contains("QoS"), "will QoS 3");
        assert!(broken(12, 0xff).contains("UTF-8"), "client id not UTF-8");
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(parse_connect(&frame_of(0x10, &trailing)).unwrap_err().to_string().contains("bytes after"));
        assert!(parse_connect(&frame_of(0x30, &body)).is_err(), "a PUBLISH is not a CONNECT");
    }

    #[test]
    fn frames_and_their_limits() {
        assert_eq!(frame(&[0x30], 100).unwrap(), Framing::Partial(1));
        assert!(matches!(frame(&[0x30, 0x80], 1 << 20).unwrap(), Framing::Partial(_)));
        assert_eq!(frame(&[0x30, 0xc1, 0x02], 1 << 20).unwrap(), Framing::Partial(321));
        assert_eq!(frame(&[0xc0, 0x00, 0xe0], 1 << 20).unwrap(), Framing::Whole(2));
        assert!(matches!(frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], usize::MAX), Err(WireError::Mqtt(_))));
        // The limit counts the fixed header too, and is checked before the body is in.
        assert!(matches!(frame(&[0x30, 0x7f], 10), Err(WireError::TooLarge { limit: 10 })));
        assert!(matches!(frame(&[0x30, 9], 10), Err(WireError::TooLarge { .. })));
        assert_eq!(frame(&[0x30, 8], 10).unwrap(), Framing::Partial(8));
        assert!(matches!(frame(&[0x30, 0xff, 0xff, 0xff, 0x7f], 1 << 20), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn publishes_subscriptions_and_acks() {
        let mut p = BytesMut::new();
        put_publish_qos0(&mut p, "gw/v1/dev/a/ack", b"{}".to_vec()).unwrap();
        assert_eq!(&p[..4], &[0x30, 2 + 15 + 2, 0, 15]);
        assert_eq!(publish_topic(&p).unwrap(), "gw/v1/dev/a/ack");
        assert_eq!(frame(&p, 1024).unwrap(), Framing::Whole(p.len()));
        let mut body = Vec::new();
        put_str(&mut body, b"gw/v1/dev/a/punch");
        body.extend_from_slice(&[0, 7]);
        body.extend_from_slice(b"{}");
        assert_eq!(publish_topic(&frame_of(0x32, &body)).unwrap(), "gw/v1/dev/a/punch");
        assert!(publish_topic(&frame_of(0x36, &body)).is_err(), "QoS 3");
        assert!(publish_topic(&frame_of(0x32, &body[..3])).is_err());

        // SUBSCRIBE: packet id 10, "a/b" QoS 1, "c/#" QoS 2; granted at most QoS 1.
        let body = [0, 10, 0, 3, b'a', b'/', b'b', 1, 0, 3, b'c', b'/', b'#', 2];
        let sub = subscribe(&frame_of(0x82, &body)).unwrap();
        assert_eq!(sub.filters.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["a/b", "c/#"]);
        assert_eq!(suback(&sub), [0x90, 4, 0, 10, 1, 1]);
        assert!(subscribe(&frame_of(0x82, &[0, 10, 0, 1, b'a', 3])).is_err(), "QoS 3");
        assert!(subscribe(&frame_of(0x82, &[0, 10, 0, 1, b'a', 4])).is_err(), "reserved option bits");
        assert!(subscribe(&frame_of(0x82, &[0, 10])).is_err(), "no filter");
        let unsub = unsubscribe(&frame_of(0xa2, &[0, 11, 0, 3, b'a', b'/', b'b'])).unwrap();
        assert_eq!((unsub.pkid, unsub.topics), (11, vec!["a/b".to_owned()]));
        assert!(unsubscribe(&frame_of(0xa2, &[0, 11])).is_err(), "no filter");
        assert_eq!(unsuback(0x1234), [0xb0, 2, 0x12, 0x34]);
        assert_eq!(connack(ConnectReturnCode::RefusedProtocolVersion), [0x20, 2, 0, 1]);
        assert_eq!(connack_code(&connack(ConnectReturnCode::NotAuthorized)), Some(5));
        assert_eq!(connack_code(&[0x20, 2, 0, 9]), Some(9));
        assert_eq!(connack_code(&[0x30, 2, 0, 0]), None);
        assert_eq!(disconnect(), [0xe0, 0]);
        assert!(packet_type(0x00).is_err() && packet_type(0xf0).is_err());
        assert_eq!(packet_type(0xc0).unwrap(), PacketType::PingReq);
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
}
