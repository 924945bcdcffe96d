//! The PN532 HSU (high-speed UART) frame format, after NXP UM0701-02 section 6.2.
//!
//! ```text
//! normal information frame   00 00 FF LEN LCS TFI PD0 .. PDn DCS 00        LEN = 1 + n + 1 (TFI and data), LEN + LCS = 0
//! extended information frame 00 00 FF FF FF LENM LENL LCS TFI PD0 .. DCS 00  LENM + LENL + LCS = 0
//! ACK                        00 00 FF 00 FF 00
//! NACK                       00 00 FF FF 00 00
//! application error frame    00 00 FF 01 FF 7F 81 00
//! ```
//! `TFI` is `D4` from host to PN532 and `D5` back; `TFI + PD0 + .. + PDn + DCS = 0`. `PD0` is the command code; the
//! PN532 answers command `C` with response code `C + 1`.
//!
//! The decoder finds frames by their `00 FF` start code. Preamble and postamble `00` bytes are optional and skipped
//! silently; any other bytes before a start code are reported once per run as [`FrameError::Garbage`]. A header or data
//! checksum error drops only the two start-code bytes, so a real frame hidden inside a bogus one is still found.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::framing::{find2, FrameFault};

/// Frame identifier of frames from the host to the PN532.
pub const TFI_HOST: u8 = 0xD4;
/// Frame identifier of frames from the PN532 to the host.
pub const TFI_PN532: u8 = 0xD5;
/// The ACK frame.
pub const ACK: [u8; 6] = [0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00];
/// The NACK frame (asks the other side to send its last frame again).
pub const NACK: [u8; 6] = [0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00];
/// The application-level error frame.
pub const ERROR_FRAME: [u8; 8] = [0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00];
/// Longest `TFI + data` the PN532 handles (its internal buffer is 264 bytes of data plus TFI).
pub const MAX_BODY: usize = 265;

/// One PN532 frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Ack,
    Nack,
    /// The application-level error frame: the PN532 could not make sense of the last command.
    Error,
    /// An information frame: `tfi` (D4/D5) and the data starting with the command or response code.
    Info {
        tfi: u8,
        data: Vec<u8>,
    },
}

impl Frame {
    /// A host-to-PN532 command frame.
    pub fn command(code: u8, params: &[u8]) -> Frame {
        let mut data = Vec::with_capacity(params.len() + 1);
        data.push(code);
        data.extend_from_slice(params);
        Frame::Info { tfi: TFI_HOST, data }
    }

    /// A PN532-to-host response frame for command `code` (response code `code + 1`).
    pub fn response(code: u8, payload: &[u8]) -> Frame {
        let mut data = Vec::with_capacity(payload.len() + 1);
        data.push(code.wrapping_add(1));
        data.extend_from_slice(payload);
        Frame::Info { tfi: TFI_PN532, data }
    }
}

/// Input that did not make a frame. The decoder has resynchronised when it reports one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("{skipped} bytes of line noise before a frame")]
    Garbage { skipped: usize },
    #[error("frame length checksum mismatch")]
    LengthChecksum,
    #[error("frame data checksum mismatch")]
    DataChecksum,
    #[error("frame length {len} is out of range 1..={MAX_BODY}")]
    BadLength { len: usize },
    #[error("frame truncated: the stream ended after {have} bytes of it")]
    Truncated { have: usize },
}

impl FrameFault for FrameError {
    fn label(&self) -> &'static str {
        match self {
            FrameError::Garbage { .. } => "garbage",
            FrameError::LengthChecksum | FrameError::DataChecksum => "bad_checksum",
            FrameError::BadLength { .. } => "bad_length",
            FrameError::Truncated { .. } => "truncated",
        }
    }
}

/// The HSU frame codec. Decodes frames from either side (the TFI is data) and encodes [`Frame`]s.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pn532Codec;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// Drops `n` bytes from the front; reports them as garbage unless they are all preamble/postamble zeros.
fn skip(buf: &mut BytesMut, n: usize) -> Option<FrameError> {
    if n == 0 {
        return None;
    }
    let junk = buf.split_to(n);
    junk.iter().any(|b| *b != 0).then_some(FrameError::Garbage { skipped: n })
}

/// Consumes the optional postamble byte when it is already buffered.
fn take_postamble(buf: &mut BytesMut) {
    if buf.first() == Some(&0x00) && buf.get(1) != Some(&0xFF) {
        buf.advance(1);
    }
}

impl Decoder for Pn532Codec {
    type Item = Result<Frame, FrameError>;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        match find2(buf, [0x00, 0xFF]) {
            None => {
                // Keep a trailing 00: it may be the first half of a start code.
                let keep = usize::from(buf.last() == Some(&0x00));
                let n = buf.len() - keep;
                return Ok(skip(buf, n).map(Err));
            }
            Some(p) => {
                if let Some(e) = skip(buf, p) {
                    return Ok(Some(Err(e)));
                }
            }
        }
        // The buffer starts with the start code 00 FF.
        if buf.len() < 4 {
            return Ok(None);
        }
        let (a, b) = (buf[2], buf[3]);
        match (a, b) {
            (0x00, 0xFF) => {
                buf.advance(4);
                take_postamble(buf);
                Ok(Some(Ok(Frame::Ack)))
            }
            (0xFF, 0x00) => {
                buf.advance(4);
                take_postamble(buf);
                Ok(Some(Ok(Frame::Nack)))
            }
            (0xFF, 0xFF) => {
                if buf.len() < 7 {
                    return Ok(None);
                }
                let (m, l, lcs) = (buf[4], buf[5], buf[6]);
                if m.wrapping_add(l).wrapping_add(lcs) != 0 {
                    buf.advance(2);
                    return Ok(Some(Err(FrameError::LengthChecksum)));
                }
                let len = usize::from(m) << 8 | usize::from(l);
                self.body(buf, 7, len)
            }
            (len, lcs) => {
                if len.wrapping_add(lcs) != 0 {
                    buf.advance(2);
                    return Ok(Some(Err(FrameError::LengthChecksum)));
                }
                self.body(buf, 4, usize::from(len))
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        if let Some(item) = self.decode(buf)? {
            return Ok(Some(item));
        }
        // What is left is a trailing 00 or the start of a frame that never completed: report the frame and look for
        // another start code behind its first two bytes.
        if buf.starts_with(&[0x00, 0xFF]) {
            let have = buf.len();
            buf.advance(2);
            return Ok(Some(Err(FrameError::Truncated { have })));
        }
        buf.clear();
        Ok(None)
    }
}

impl Pn532Codec {
    /// Decodes the body of an information frame whose header (`header` bytes, length checked) starts `buf`.
    fn body(
        &mut self,
        buf: &mut BytesMut,
        header: usize,
        len: usize,
    ) -> Result<Option<Result<Frame, FrameError>>, std::io::Error> {
        if len == 0 || len > MAX_BODY {
            buf.advance(2);
            return Ok(Some(Err(FrameError::BadLength { len })));
        }
        if buf.len() < header + len + 1 {
            buf.reserve(header + len + 1 - buf.len());
            return Ok(None);
        }
        let body = &buf[header..header + len];
        if checksum(body).wrapping_add(buf[header + len]) != 0 {
            buf.advance(2);
            return Ok(Some(Err(FrameError::DataChecksum)));
        }
        let frame = if len == 1 && body[0] == 0x7F {
            Frame::Error
        } else {
            Frame::Info { tfi: body[0], data: body[1..].to_vec() }
        };
        buf.advance(header + len + 1);
        take_postamble(buf);
        Ok(Some(Ok(frame)))
    }
}

impl Encoder<Frame> for Pn532Codec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), Self::Error> {
        match frame {
            Frame::Ack => dst.extend_from_slice(&ACK),
            Frame::Nack => dst.extend_from_slice(&NACK),
            Frame::Error => dst.extend_from_slice(&ERROR_FRAME),
            Frame::Info { tfi, data } => {
                let len = data.len() + 1;
                if len > MAX_BODY {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("PN532 frame of {len} bytes exceeds {MAX_BODY}"),
                    ));
                }
                dst.reserve(len + 10);
                dst.extend_from_slice(&[0x00, 0x00, 0xFF]);
                if len <= 0xFF {
                    let l = len as u8;
                    dst.extend_from_slice(&[l, l.wrapping_neg()]);
                } else {
                    let (m, l) = ((len >> 8) as u8, len as u8);
                    dst.extend_from_slice(&[0xFF, 0xFF, m, l, m.wrapping_add(l).wrapping_neg()]);
                }
                dst.put_u8(tfi);
                dst.extend_from_slice(&data);
                dst.put_u8(tfi.wrapping_add(checksum(&data)).wrapping_neg());
                dst.put_u8(0x00);
            }
        }
        Ok(())
    }
}

/// Encodes one frame to bytes.
pub fn encode(frame: Frame) -> Result<Vec<u8>, std::io::Error> {
    crate::framing::encode_with(Pn532Codec, frame)
}

/// Decodes everything in `input` as one stream that then ends: the entry point of the fuzz target.
pub fn decode_all(input: &[u8]) -> Vec<Result<Frame, FrameError>> {
    crate::framing::decode_all_with(Pn532Codec, input)
}

/// The UID of the first target in an InListPassiveTarget (106 kbps type A) response payload (after the response code):
/// `NbTg [Tg SENS_RES(2) SEL_RES NFCIDLength NFCID1..]`. `Ok(None)` when no card is in the field.
pub fn parse_passive_target(payload: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    let (&count, rest) = payload.split_first().ok_or("empty InListPassiveTarget response")?;
    if count == 0 {
        return Ok(None);
    }
    // Tg, SENS_RES (2), SEL_RES, NFCIDLength
    let header = rest.get(..5).ok_or("InListPassiveTarget response too short for a target")?;
    let uid_len = usize::from(header[4]);
    if !(4..=10).contains(&uid_len) {
        return Err("InListPassiveTarget response has a UID length outside 4..=10");
    }
    let uid = rest.get(5..5 + uid_len).ok_or("InListPassiveTarget response shorter than its UID length")?;
    Ok(Some(uid.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(items: Vec<Result<Frame, FrameError>>) -> Vec<Frame> {
        items.into_iter().filter_map(Result::ok).collect()
    }

    #[test]
    fn known_frames_decode() {
        // GetFirmwareVersion response from the PN532 user manual: D5 03 32 01 06 07.
        let fw = [0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD5, 0x03, 0x32, 0x01, 0x06, 0x07, 0xE8, 0x00];
        assert_eq!(decode_all(&fw), vec![Ok(Frame::Info { tfi: TFI_PN532, data: vec![0x03, 0x32, 0x01, 0x06, 0x07] })]);
        assert_eq!(decode_all(&ACK), vec![Ok(Frame::Ack)]);
        assert_eq!(decode_all(&NACK), vec![Ok(Frame::Nack)]);
        assert_eq!(decode_all(&ERROR_FRAME), vec![Ok(Frame::Error)]);
        // SAMConfiguration as libnfc sends it.
        let sam = encode(Frame::command(0x14, &[0x01, 0x14, 0x01])).unwrap();
        assert_eq!(sam, [0x00, 0x00, 0xFF, 0x05, 0xFB, 0xD4, 0x14, 0x01, 0x14, 0x01, 0x02, 0x00]);
    }

    #[test]
    fn extended_frames_roundtrip() {
        let data: Vec<u8> = (0..=255u8).chain(0..3).collect();
        let frame = Frame::Info { tfi: TFI_PN532, data };
        let bytes = encode(frame.clone()).unwrap();
        assert_eq!(&bytes[..5], &[0x00, 0x00, 0xFF, 0xFF, 0xFF]);
        assert_eq!(decode_all(&bytes), vec![Ok(frame)]);
        assert!(encode(Frame::Info { tfi: TFI_HOST, data: vec![0; MAX_BODY] }).is_err());
    }

    #[test]
    fn malformed_input_is_reported_and_skipped() {
        let good = encode(Frame::response(0x4A, &[0x00])).unwrap();
        // Bad length checksum.
        let mut input = vec![0x00, 0xFF, 0x03, 0x03, 0xD5, 0x4B, 0x00, 0xE0];
        input.extend_from_slice(&good);
        let out = decode_all(&input);
        assert!(out.contains(&Err(FrameError::LengthChecksum)));
        assert_eq!(frames(out), vec![Frame::response(0x4A, &[0x00])]);
        // Bad data checksum.
        let mut bad = good.clone();
        let dcs = bad.len() - 2;
        bad[dcs] ^= 0x55;
        bad.extend_from_slice(&good);
        let out = decode_all(&bad);
        assert_eq!(out[0], Err(FrameError::DataChecksum));
        assert_eq!(frames(out), vec![Frame::response(0x4A, &[0x00])]);
        // Noise before a frame, and a frame cut off by the end of the stream.
        let mut noisy = b"hello".to_vec();
        noisy.extend_from_slice(&good);
        noisy.extend_from_slice(&good[..5]);
        let out = decode_all(&noisy);
        assert_eq!(out[0], Err(FrameError::Garbage { skipped: 6 })); // the noise and the preamble 00
        assert_eq!(out[1], Ok(Frame::response(0x4A, &[0x00])));
        assert!(matches!(out[2], Err(FrameError::Truncated { .. })));
        // Zero length and an extended length beyond the PN532's buffer.
        assert_eq!(decode_all(&[0x00, 0xFF, 0x00, 0x00, 0x00])[0], Err(FrameError::BadLength { len: 0 }));
        assert_eq!(
            decode_all(&[0x00, 0xFF, 0xFF, 0xFF, 0x10, 0x00, 0xF0])[0],
            Err(FrameError::BadLength { len: 4096 })
        );
        // Preamble zeros alone are not noise.
        assert!(decode_all(&[0, 0, 0, 0]).is_empty());
    }

    #[test]
    fn frame_hidden_behind_a_truncated_one_is_found() {
        let good =
            encode(Frame::response(0x4A, &[0x01, 0x01, 0x00, 0x04, 0x08, 0x04, 0xA1, 0xB2, 0xC3, 0xD4])).unwrap();
        // A header claiming 40 bytes, then the real frame: the bogus one fails its checksum, the real one decodes.
        let mut input = vec![0x00, 0x00, 0xFF, 40, 40u8.wrapping_neg(), 0xD5];
        input.extend_from_slice(&good);
        input.extend_from_slice(&[0x11; 40]);
        let out = frames(decode_all(&input));
        assert!(out.contains(&Frame::Info {
            tfi: TFI_PN532,
            data: vec![0x4B, 0x01, 0x01, 0x00, 0x04, 0x08, 0x04, 0xA1, 0xB2, 0xC3, 0xD4]
        }));
    }

    #[test]
    fn passive_target_parses() {
        assert_eq!(parse_passive_target(&[0x00]), Ok(None));
        assert_eq!(
            parse_passive_target(&[0x01, 0x01, 0x00, 0x04, 0x08, 0x04, 0xA1, 0xB2, 0xC3, 0xD4]),
            Ok(Some(vec![0xA1, 0xB2, 0xC3, 0xD4]))
        );
        assert!(parse_passive_target(&[]).is_err());
        assert!(parse_passive_target(&[0x01, 0x01, 0x00]).is_err());
        assert!(parse_passive_target(&[0x01, 0x01, 0x00, 0x04, 0x08, 0x07, 0xA1]).is_err());
        assert!(parse_passive_target(&[0x01, 0x01, 0x00, 0x04, 0x08, 0x00]).is_err());
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            Just(Frame::Ack),
            Just(Frame::Nack),
            Just(Frame::Error),
            (prop_oneof![Just(TFI_HOST), Just(TFI_PN532)], proptest::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(tfi, data)| Frame::Info { tfi, data }),
        ]
    }

    proptest! {
        #[test]
        fn never_panics(input in proptest::collection::vec(any::<u8>(), 0..600)) {
            let out = decode_all(&input);
            prop_assert!(out.len() <= input.len() + 1);
        }

        #[test]
        fn frames_survive_noise_and_chunking(
            items in proptest::collection::vec((arb_frame(), proptest::collection::vec(1u8..=0xFE, 0..8)), 1..8),
            chunk in 1usize..17,
        ) {
            let items: Vec<(Frame, Vec<u8>)> = items.into_iter()
                .filter(|(f, _)| !matches!(f, Frame::Info { data, .. } if data.len() + 1 > MAX_BODY))
                .collect();
            let mut input = Vec::new();
            for (frame, noise) in &items {
                input.extend_from_slice(noise);
                input.extend_from_slice(&encode(frame.clone()).unwrap());
            }
            let got = crate::framing::decode_chunked(Pn532Codec, &input, chunk);
            let want: Vec<Frame> = items.into_iter().map(|(f, _)| f).collect();
            prop_assert_eq!(frames(got), want);
        }
    }
}
