//! The packet format of R307/R503-family (and compatible ZFM/AS608) fingerprint modules.
//!
//! ```text
//! EF 01 | ADDR (4, big endian) | PID (1) | LEN (2, big endian) | payload (LEN - 2) | SUM (2, big endian)
//! ```
//! `PID` is 01 command, 02 data, 07 acknowledge, 08 end of data. `LEN` counts the payload and the checksum; `SUM` is the
//! low 16 bits of `PID + LEN_hi + LEN_lo + payload bytes`. A command payload starts with its instruction code; an
//! acknowledge payload starts with a confirmation code (00 = success) and carries no instruction code, so the driver
//! checks the reply's shape against the command it sent.
//!
//! The decoder finds packets by the `EF 01` header. Bytes before a header are reported once per run as
//! [`PacketError::Garbage`]; a bad length, unknown PID or checksum error drops only the two header bytes, so a real
//! packet hidden behind a bogus header is still found.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::framing::{find2, FrameFault};

pub const HEADER: [u8; 2] = [0xEF, 0x01];
pub const PID_COMMAND: u8 = 0x01;
pub const PID_DATA: u8 = 0x02;
pub const PID_ACK: u8 = 0x07;
pub const PID_END: u8 = 0x08;
/// The factory default module address.
pub const DEFAULT_ADDRESS: u32 = 0xFFFF_FFFF;
/// The largest payload of any packet (data packets carry at most 256 bytes).
pub const MAX_PAYLOAD: usize = 256;

/// Instruction codes the gateway uses.
pub mod cmd {
    pub const GEN_IMG: u8 = 0x01;
    pub const IMG_2_TZ: u8 = 0x02;
    pub const SEARCH: u8 = 0x04;
    pub const READ_SYS_PARA: u8 = 0x0F;
    pub const VFY_PWD: u8 = 0x13;
    pub const AURA_LED_CONFIG: u8 = 0x35;
}

/// Confirmation codes in acknowledge packets.
pub mod confirm {
    pub const OK: u8 = 0x00;
    pub const PACKET_ERROR: u8 = 0x01;
    pub const NO_FINGER: u8 = 0x02;
    pub const IMAGE_FAIL: u8 = 0x03;
    pub const DISORDERLY_IMAGE: u8 = 0x06;
    pub const FEW_FEATURES: u8 = 0x07;
    pub const NO_MATCH: u8 = 0x09;
    pub const WRONG_PASSWORD: u8 = 0x13;
    pub const INVALID_IMAGE: u8 = 0x15;
}

/// One packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub address: u32,
    pub pid: u8,
    pub payload: Vec<u8>,
}

impl Packet {
    /// A command packet: instruction code and parameters.
    pub fn command(address: u32, code: u8, params: &[u8]) -> Packet {
        let mut payload = Vec::with_capacity(params.len() + 1);
        payload.push(code);
        payload.extend_from_slice(params);
        Packet { address, pid: PID_COMMAND, payload }
    }

    /// An acknowledge packet: confirmation code and data.
    pub fn ack(address: u32, confirmation: u8, data: &[u8]) -> Packet {
        let mut payload = Vec::with_capacity(data.len() + 1);
        payload.push(confirmation);
        payload.extend_from_slice(data);
        Packet { address, pid: PID_ACK, payload }
    }
}

/// Input that did not make a packet. The decoder has resynchronised when it reports one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("{skipped} bytes of line noise before a packet")]
    Garbage { skipped: usize },
    #[error("packet length {len} is out of range 2..={}", MAX_PAYLOAD + 2)]
    BadLength { len: usize },
    #[error("unknown packet identifier {pid:#04x}")]
    BadPid { pid: u8 },
    #[error("packet checksum mismatch")]
    Checksum,
    #[error("packet truncated: the stream ended after {have} bytes of it")]
    Truncated { have: usize },
}

impl FrameFault for PacketError {
    fn label(&self) -> &'static str {
        match self {
            PacketError::Garbage { .. } => "garbage",
            PacketError::BadLength { .. } | PacketError::BadPid { .. } => "bad_header",
            PacketError::Checksum => "bad_checksum",
            PacketError::Truncated { .. } => "truncated",
        }
    }
}

/// The R30x packet codec (both directions).
#[derive(Clone, Copy, Debug, Default)]
pub struct R30xCodec;

fn checksum(pid: u8, len: u16, payload: &[u8]) -> u16 {
    let [hi, lo] = len.to_be_bytes();
    payload.iter().fold(u16::from(pid).wrapping_add(u16::from(hi)).wrapping_add(u16::from(lo)), |acc, b| {
        acc.wrapping_add(u16::from(*b))
    })
}

const HEAD_LEN: usize = 9;

impl Decoder for R30xCodec {
    type Item = Result<Packet, PacketError>;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        let start = match find2(buf, HEADER) {
            Some(p) => p,
            None => buf.len() - usize::from(buf.last() == Some(&HEADER[0])),
        };
        if start > 0 {
            buf.advance(start);
            return Ok(Some(Err(PacketError::Garbage { skipped: start })));
        }
        if buf.len() < HEAD_LEN {
            return Ok(None);
        }
        let pid = buf[6];
        if !matches!(pid, PID_COMMAND | PID_DATA | PID_ACK | PID_END) {
            buf.advance(2);
            return Ok(Some(Err(PacketError::BadPid { pid })));
        }
        let len = usize::from(u16::from_be_bytes([buf[7], buf[8]]));
        if !(2..=MAX_PAYLOAD + 2).contains(&len) {
            buf.advance(2);
            return Ok(Some(Err(PacketError::BadLength { len })));
        }
        if buf.len() < HEAD_LEN + len {
            buf.reserve(HEAD_LEN + len - buf.len());
            return Ok(None);
        }
        let payload = &buf[HEAD_LEN..HEAD_LEN + len - 2];
        let sum = u16::from_be_bytes([buf[HEAD_LEN + len - 2], buf[HEAD_LEN + len - 1]]);
        if checksum(pid, len as u16, payload) != sum {
            buf.advance(2);
            return Ok(Some(Err(PacketError::Checksum)));
        }
        let packet =
            Packet { address: u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]), pid, payload: payload.to_vec() };
        buf.advance(HEAD_LEN + len);
        Ok(Some(Ok(packet)))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        if let Some(item) = self.decode(buf)? {
            return Ok(Some(item));
        }
        if buf.starts_with(&HEADER) {
            let have = buf.len();
            buf.advance(2);
            return Ok(Some(Err(PacketError::Truncated { have })));
        }
        let have = buf.len();
        buf.clear();
        Ok((have > 0).then_some(Err(PacketError::Truncated { have })))
    }
}

impl Encoder<Packet> for R30xCodec {
    type Error = std::io::Error;

    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), Self::Error> {
        if packet.payload.len() > MAX_PAYLOAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("R30x packet payload of {} bytes exceeds {MAX_PAYLOAD}", packet.payload.len()),
            ));
        }
        let len = (packet.payload.len() + 2) as u16;
        dst.reserve(HEAD_LEN + usize::from(len));
        dst.extend_from_slice(&HEADER);
        dst.put_u32(packet.address);
        dst.put_u8(packet.pid);
        dst.put_u16(len);
        dst.extend_from_slice(&packet.payload);
        dst.put_u16(checksum(packet.pid, len, &packet.payload));
        Ok(())
    }
}

/// Encodes one packet to bytes.
pub fn encode(packet: Packet) -> Result<Vec<u8>, std::io::Error> {
    crate::framing::encode_with(R30xCodec, packet)
}

/// Decodes everything in `input` as one stream that then ends: the entry point of the fuzz target.
pub fn decode_all(input: &[u8]) -> Vec<Result<Packet, PacketError>> {
    crate::framing::decode_all_with(R30xCodec, input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packets(items: Vec<Result<Packet, PacketError>>) -> Vec<Packet> {
        items.into_iter().filter_map(Result::ok).collect()
    }

    #[test]
    fn known_packets() {
        // GenImg as in the R307 manual: EF 01 FF FF FF FF 01 00 03 01 00 05.
        let gen = encode(Packet::command(DEFAULT_ADDRESS, cmd::GEN_IMG, &[])).unwrap();
        assert_eq!(gen, [0xEF, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00, 0x03, 0x01, 0x00, 0x05]);
        // Search hit: page 7, score 120.
        let hit = [0xEF, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0x07, 0x00, 0x07, 0x00, 0x00, 0x07, 0x00, 0x78, 0x00, 0x8D];
        assert_eq!(decode_all(&hit), vec![Ok(Packet::ack(DEFAULT_ADDRESS, 0x00, &[0x00, 0x07, 0x00, 0x78]))]);
    }

    #[test]
    fn malformed_input_is_reported_and_skipped() {
        let good = encode(Packet::ack(DEFAULT_ADDRESS, confirm::NO_FINGER, &[])).unwrap();
        let mut bad_sum = good.clone();
        let last = bad_sum.len() - 1;
        bad_sum[last] ^= 1;
        let mut input = b"\x13\x37noise".to_vec();
        input.extend_from_slice(&bad_sum);
        input.extend_from_slice(&good);
        let out = decode_all(&input);
        assert_eq!(out[0], Err(PacketError::Garbage { skipped: 7 }));
        assert!(out.contains(&Err(PacketError::Checksum)));
        assert_eq!(packets(out), vec![Packet::ack(DEFAULT_ADDRESS, confirm::NO_FINGER, &[])]);

        assert_eq!(decode_all(&[0xEF, 0x01, 0, 0, 0, 0, 0x05, 0, 3])[0], Err(PacketError::BadPid { pid: 5 }));
        assert_eq!(decode_all(&[0xEF, 0x01, 0, 0, 0, 0, 0x07, 0x10, 0])[0], Err(PacketError::BadLength { len: 4096 }));
        assert_eq!(decode_all(&[0xEF, 0x01, 0, 0, 0, 0, 0x07, 0, 1])[0], Err(PacketError::BadLength { len: 1 }));
        assert!(matches!(decode_all(&good[..10])[0], Err(PacketError::Truncated { have: 10 })));
        assert!(encode(Packet { address: 0, pid: PID_DATA, payload: vec![0; MAX_PAYLOAD + 1] }).is_err());
    }

    #[test]
    fn packet_hidden_behind_a_bogus_header_is_found() {
        let good = encode(Packet::ack(DEFAULT_ADDRESS, 0x00, &[0x00, 0x07, 0x00, 0x78])).unwrap();
        let mut input = vec![0xEF, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0x07, 0x00, 0x40];
        input.extend_from_slice(&good);
        input.extend_from_slice(&[0x22; 70]);
        assert_eq!(packets(decode_all(&input)), vec![Packet::ack(DEFAULT_ADDRESS, 0x00, &[0x00, 0x07, 0x00, 0x78])]);
    }

    fn arb_packet() -> impl Strategy<Value = Packet> {
        (
            any::<u32>(),
            prop_oneof![Just(PID_COMMAND), Just(PID_DATA), Just(PID_ACK), Just(PID_END)],
            proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD),
        )
            .prop_map(|(address, pid, payload)| Packet { address, pid, payload })
    }

    proptest! {
        #[test]
        fn never_panics(input in proptest::collection::vec(any::<u8>(), 0..600)) {
            let out = decode_all(&input);
            prop_assert!(out.len() <= input.len() + 1);
        }

        #[test]
        fn packets_survive_noise_and_chunking(
            items in proptest::collection::vec((arb_packet(), proptest::collection::vec(0u8..=0xEE, 0..8)), 1..6),
            chunk in 1usize..17,
        ) {
            let mut input = Vec::new();
            for (packet, noise) in &items {
                input.extend_from_slice(noise);
                input.extend_from_slice(&encode(packet.clone()).unwrap());
            }
            let got = crate::framing::decode_chunked(R30xCodec, &input, chunk);
            let want: Vec<Packet> = items.into_iter().map(|(p, _)| p).collect();
            prop_assert_eq!(packets(got), want);
        }
    }
}
