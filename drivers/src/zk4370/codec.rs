//! Packets of the ZKTeco "4370" binary protocol (the standalone SDK protocol of terminals without PUSH).
//!
//! A packet is an 8-byte header and its data, all little endian:
//! ```text
//! command (2) | checksum (2) | session id (2) | reply number (2) | data
//! ```
//! - `command` is a command code (client to terminal) or a reply code (`CMD_ACK_OK`, `CMD_DATA`, …). Real-time events
//!   from the terminal carry `CMD_REG_EVENT`, the event code in the session id field and reply number 0.
//! - `checksum` is the 16-bit one's-complement sum of the packet's little-endian 16-bit words with the checksum field
//!   zero (an odd last byte is padded with zero), folded and complemented ([`checksum`]).
//! - `session id` is 0 in `CMD_CONNECT`; the terminal's reply assigns it and every later packet carries it.
//! - `reply number` is chosen by the client, counted up per command, and echoed by the terminal's reply.
//!
//! Over UDP a datagram is one bare packet. Over TCP each packet is preceded by `50 50 82 7D` and its length as a
//! 32-bit little-endian number ([`TcpCodec`]). Both decoders yield `Result<Packet, PacketError>` items: a bad checksum,
//! a short packet or bytes that do not start a frame are one `Err` the driver counts, and the TCP decoder has by then
//! resynchronised on the next start tag. A frame longer than [`MAX_PACKET`] is refused from its header.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::framing::FrameFault;

/// The start tag of a TCP frame.
pub const START: [u8; 4] = [0x50, 0x50, 0x82, 0x7D];
/// The header of a packet: command, checksum, session id, reply number.
pub const HEADER_LEN: usize = 8;
/// The longest packet accepted (a read-buffer chunk of 64 KiB and its header, with room to spare).
pub const MAX_PACKET: usize = 0x1_0000 + 1024;
/// The 16-bit modulus the protocol's counters wrap at.
pub const USHRT_MAX: u16 = 0xFFFF;

/// Command and reply codes used by the gateway and its simulator.
pub mod cmd {
    pub const CONNECT: u16 = 1000;
    pub const EXIT: u16 = 1001;
    pub const ENABLE_DEVICE: u16 = 1002;
    pub const DISABLE_DEVICE: u16 = 1003;
    pub const REFRESH_DATA: u16 = 1013;
    pub const AUTH: u16 = 1102;
    pub const PREPARE_DATA: u16 = 1500;
    pub const DATA: u16 = 1501;
    pub const FREE_DATA: u16 = 1502;
    /// Prepares a buffered read of a table (`_CMD_PREPARE_BUFFER`, a.k.a. `CMD_DATA_WRRQ`).
    pub const PREPARE_BUFFER: u16 = 1503;
    /// Reads one chunk of a prepared buffer (`_CMD_READ_BUFFER`, a.k.a. `CMD_DATA_RDY`).
    pub const READ_BUFFER: u16 = 1504;
    pub const USER_WRQ: u16 = 8;
    pub const USERTEMP_RRQ: u16 = 9;
    pub const ATTLOG_RRQ: u16 = 13;
    pub const DELETE_USER: u16 = 18;
    pub const GET_FREE_SIZES: u16 = 50;
    pub const GET_TIME: u16 = 201;
    pub const SET_TIME: u16 = 202;
    pub const REG_EVENT: u16 = 500;
    pub const ACK_OK: u16 = 2000;
    pub const ACK_ERROR: u16 = 2001;
    pub const ACK_DATA: u16 = 2002;
    pub const ACK_UNAUTH: u16 = 2005;
    pub const ACK_UNKNOWN: u16 = 0xFFFF;
}

/// Real-time event codes (the session id field of a `CMD_REG_EVENT` packet, and the flags registered for).
pub mod event {
    /// An attendance record was made.
    pub const ATTLOG: u16 = 1;
}

/// One packet, without its TCP frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub command: u16,
    pub session: u16,
    pub reply: u16,
    pub data: Vec<u8>,
}

impl Packet {
    pub fn new(command: u16, session: u16, reply: u16, data: impl Into<Vec<u8>>) -> Packet {
        Packet { command, session, reply, data: data.into() }
    }

    /// The packet as sent: header with its checksum, then the data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.data.len());
        out.extend_from_slice(&self.command.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.session.to_le_bytes());
        out.extend_from_slice(&self.reply.to_le_bytes());
        out.extend_from_slice(&self.data);
        let sum = checksum(&out);
        out[2..4].copy_from_slice(&sum.to_le_bytes());
        out
    }

    /// Reads one bare packet (a UDP datagram, or the body of a TCP frame), checking its checksum.
    pub fn parse(bytes: &[u8]) -> Result<Packet, PacketError> {
        if bytes.len() < HEADER_LEN {
            return Err(PacketError::Short(bytes.len()));
        }
        if bytes.len() > MAX_PACKET {
            return Err(PacketError::TooLong(bytes.len()));
        }
        let word = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let got = word(2);
        let mut zeroed = bytes.to_vec();
        zeroed[2] = 0;
        zeroed[3] = 0;
        let want = checksum(&zeroed);
        if got != want {
            return Err(PacketError::Checksum { got, want });
        }
        Ok(Packet { command: word(0), session: word(4), reply: word(6), data: bytes[HEADER_LEN..].to_vec() })
    }

    /// The packet in a TCP frame: start tag, length, packet.
    pub fn to_tcp_frame(&self) -> Vec<u8> {
        let body = self.to_bytes();
        let mut out = Vec::with_capacity(8 + body.len());
        out.extend_from_slice(&START);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// The protocol's checksum over a packet whose checksum field is zero: the sum of its little-endian 16-bit words (an
/// odd last byte padded with zero), with the carries folded back in, complemented.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = u16::from_le_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
        // Fold as we go so the sum never overflows, however long the packet.
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// The `CMD_AUTH` data for a communication key (`comm_key`, the number set on the terminal) and the session id the
/// terminal assigned: the key's 32 bits reversed, plus the session id; its bytes XORed with `Z K S O`; its two 16-bit
/// halves swapped; then XORed with a tick byte (50) except the third byte, which is the tick itself.
pub fn comm_key_hash(comm_key: u32, session: u16) -> [u8; 4] {
    const TICKS: u8 = 50;
    let k = comm_key.reverse_bits().wrapping_add(u32::from(session)).to_le_bytes();
    let x = [k[0] ^ b'Z', k[1] ^ b'K', k[2] ^ b'S', k[3] ^ b'O'];
    let swapped = [x[2], x[3], x[0], x[1]];
    [swapped[0] ^ TICKS, swapped[1] ^ TICKS, TICKS, swapped[3] ^ TICKS]
}

/// Input that did not make a packet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("{0} bytes before a frame start tag")]
    Garbage(usize),
    #[error("packet of {0} bytes is shorter than its 8-byte header")]
    Short(usize),
    #[error("packet of {0} bytes is longer than the protocol allows")]
    TooLong(usize),
    #[error("checksum {got:#06x}, expected {want:#06x}")]
    Checksum { got: u16, want: u16 },
    #[error("the stream ended inside a frame ({0} bytes)")]
    Truncated(usize),
}

impl FrameFault for PacketError {
    fn label(&self) -> &'static str {
        match self {
            PacketError::Garbage(_) => "garbage",
            PacketError::Short(_) | PacketError::Truncated(_) => "truncated",
            PacketError::TooLong(_) => "too_long",
            PacketError::Checksum { .. } => "bad_checksum",
        }
    }
}

/// The TCP framing: `50 50 82 7D`, length (u32 LE), packet.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpCodec;

fn find_start(buf: &[u8]) -> Option<usize> {
    buf.windows(START.len()).position(|w| w == START)
}

impl Decoder for TcpCodec {
    type Item = Result<Packet, PacketError>;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, std::io::Error> {
        if buf.is_empty() {
            return Ok(None);
        }
        match find_start(buf) {
            Some(0) => {}
            Some(n) => {
                buf.advance(n);
                return Ok(Some(Err(PacketError::Garbage(n))));
            }
            None => {
                // Keep the longest tail that may be the beginning of a start tag.
                let keep = (1..START.len()).rev().find(|&n| buf.len() >= n && buf[buf.len() - n..] == START[..n]);
                let drop = buf.len() - keep.unwrap_or(0);
                if drop == 0 {
                    return Ok(None);
                }
                buf.advance(drop);
                return Ok(Some(Err(PacketError::Garbage(drop))));
            }
        }
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        if !(HEADER_LEN..=MAX_PACKET).contains(&len) {
            // Not a frame we can take: drop its start tag and look for the next one.
            buf.advance(START.len());
            return Ok(Some(Err(if len < HEADER_LEN { PacketError::Short(len) } else { PacketError::TooLong(len) })));
        }
        if buf.len() < 8 + len {
            buf.reserve(8 + len - buf.len());
            return Ok(None);
        }
        let frame = buf.split_to(8 + len);
        let parsed = Packet::parse(&frame[8..]);
        Ok(Some(parsed))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, std::io::Error> {
        match self.decode(buf)? {
            Some(item) => Ok(Some(item)),
            None if buf.is_empty() => Ok(None),
            None => {
                let n = buf.len();
                buf.clear();
                Ok(Some(Err(PacketError::Truncated(n))))
            }
        }
    }
}

impl Encoder<Packet> for TcpCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: Packet, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        let body = item.to_bytes();
        dst.reserve(8 + body.len());
        dst.put_slice(&START);
        dst.put_u32_le(body.len() as u32);
        dst.put_slice(&body);
        Ok(())
    }
}

/// Decodes a TCP byte stream to its packets and errors (the fuzz targets' entry point).
pub fn decode_tcp_stream(input: &[u8]) -> Vec<Result<Packet, PacketError>> {
    crate::framing::decode_all_with(TcpCodec, input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn checksum_matches_the_published_vectors() {
        // The test vectors of the protocol description (payloads without the TCP frame).
        let mut p = unhex("0b005a17f38d03005a4b4661636556657273696f6e00");
        p[2] = 0;
        p[3] = 0;
        assert_eq!(checksum(&p), 0x175a);
        let packet = Packet::parse(&unhex("0b005a17f38d03005a4b4661636556657273696f6e00")).unwrap();
        assert_eq!((packet.command, packet.session, packet.reply), (11, 0x8df3, 3));
        assert_eq!(packet.data, b"ZKFaceVersion\0");
        let ack = Packet::parse(&unhex("d007296af38d0a0009")).unwrap();
        assert_eq!((ack.command, ack.session, ack.reply, ack.data.as_slice()), (cmd::ACK_OK, 0x8df3, 10, &[9u8][..]));
    }

    #[test]
    fn packets_round_trip_bare_and_framed() {
        let p = Packet::new(cmd::SET_TIME, 0x1234, 7, vec![1, 2, 3]);
        assert_eq!(Packet::parse(&p.to_bytes()), Ok(p.clone()));
        let frame = p.to_tcp_frame();
        assert_eq!(&frame[..4], &START);
        assert_eq!(u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]), 11);
        assert_eq!(decode_tcp_stream(&frame), vec![Ok(p.clone())]);
        let mut encoded = BytesMut::new();
        TcpCodec.encode(p, &mut encoded).unwrap();
        assert_eq!(encoded.to_vec(), frame);
    }

    #[test]
    fn malformed_input_is_reported_and_the_stream_resynchronises() {
        let good = Packet::new(cmd::ACK_OK, 9, 1, vec![]);
        let mut bad_sum = good.to_tcp_frame();
        bad_sum[10] ^= 0xFF;
        let mut stream = b"noise".to_vec();
        stream.extend_from_slice(&bad_sum);
        // A start tag with an absurd length, then a short one.
        stream.extend_from_slice(&START);
        stream.extend_from_slice(&u32::MAX.to_le_bytes());
        stream.extend_from_slice(&START);
        stream.extend_from_slice(&3u32.to_le_bytes());
        stream.extend_from_slice(&good.to_tcp_frame());
        stream.extend_from_slice(&good.to_tcp_frame()[..12]);
        let items = decode_tcp_stream(&stream);
        let labels: Vec<&str> = items.iter().map(|i| i.as_ref().map_or_else(|e| e.label(), |_| "ok")).collect();
        assert_eq!(labels.first(), Some(&"garbage"));
        assert!(labels.contains(&"bad_checksum"), "{labels:?}");
        assert!(labels.contains(&"too_long"), "{labels:?}");
        assert_eq!(labels.iter().filter(|l| **l == "ok").count(), 1, "{labels:?}");
        assert_eq!(labels.last(), Some(&"truncated"));
        assert_eq!(Packet::parse(&[1, 2, 3]), Err(PacketError::Short(3)));
        assert!(matches!(Packet::parse(&vec![0; MAX_PACKET + 1]), Err(PacketError::TooLong(_))));
    }

    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let a = Packet::new(cmd::REG_EVENT, event::ATTLOG, 0, vec![7; 40]);
        let b = Packet::new(cmd::ACK_OK, 3, 4, vec![]);
        let mut stream = a.to_tcp_frame();
        stream.extend_from_slice(&b.to_tcp_frame());
        for chunk in 1..stream.len() {
            let got = crate::framing::decode_chunked(TcpCodec, &stream, chunk);
            assert_eq!(got, vec![Ok(a.clone()), Ok(b.clone())], "chunk {chunk}");
        }
    }

    #[test]
    fn comm_key_hash_is_deterministic_and_depends_on_key_and_session() {
        // Key 0 and session 0: only the XOR constants and the tick remain.
        let zero = comm_key_hash(0, 0);
        assert_eq!(zero, [b'S' ^ 50, b'O' ^ 50, 50, b'K' ^ 50]);
        assert_ne!(comm_key_hash(123_456, 77), comm_key_hash(123_457, 77));
        // The low byte of the sum is dropped (the tick takes its place), so sessions differ above it.
        assert_ne!(comm_key_hash(123_456, 77), comm_key_hash(123_456, 77 + 256));
        assert_eq!(comm_key_hash(123_456, 0x1200), comm_key_hash(123_456, 0x1201));
        assert_eq!(comm_key_hash(123_456, 77), comm_key_hash(123_456, 77));
        // Key 1 is bit 31 once reversed: it lands in the fourth byte, which the half swap moves to the second.
        let one = comm_key_hash(1, 0);
        assert_eq!(one[1], (0x80 ^ b'O') ^ 50);
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_tcp_stream(&bytes);
            let _ = Packet::parse(&bytes);
        }

        #[test]
        fn any_packet_round_trips(command: u16, session: u16, reply: u16,
                                  data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let p = Packet::new(command, session, reply, data);
            prop_assert_eq!(Packet::parse(&p.to_bytes()), Ok(p.clone()));
            prop_assert_eq!(decode_tcp_stream(&p.to_tcp_frame()), vec![Ok(p)]);
        }
    }
}
