//! What the serial framing codecs ([`crate::pn532::codec`], [`crate::r30x::codec`]) share: pure `tokio_util` codecs,
//! no I/O, fuzzable.
//!
//! Both decoders yield `Result<Frame, FrameError>` items instead of failing the stream: a checksum error, a truncated
//! frame or line noise is one `Err` item the driver counts (under its [`FrameFault::label`]), after which the decoder
//! has already resynchronised on the next start code. The decoder's own `Error` type is `std::io::Error` and only
//! carries errors of the underlying byte stream. Memory is bounded: a frame longer than the protocol allows is refused
//! from its header, before its body is buffered.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

/// Input that did not make a frame, counted by the driver under a short stable label.
pub trait FrameFault {
    /// The label for metrics (`gatewayd_punches_rejected_total{reason=...}`).
    fn label(&self) -> &'static str;
}

/// Encodes one item to bytes with `codec`.
pub(crate) fn encode_with<C: Encoder<T, Error = std::io::Error>, T>(
    mut codec: C,
    item: T,
) -> Result<Vec<u8>, std::io::Error> {
    let mut buf = BytesMut::new();
    codec.encode(item, &mut buf)?;
    Ok(buf.to_vec())
}

/// Decodes everything in `input` as one stream that then ends (the fuzz targets' entry point).
pub(crate) fn decode_all_with<C: Decoder>(mut codec: C, input: &[u8]) -> Vec<C::Item> {
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    // Every item consumes at least one byte, so this ends; the bound is a second guard.
    for _ in 0..=input.len() + 1 {
        match codec.decode_eof(&mut buf) {
            Ok(Some(item)) => out.push(item),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Decodes `input` fed to `codec` in pieces of `chunk` bytes, as a serial port delivers it, then the end of the stream.
#[cfg(test)]
pub(crate) fn decode_chunked<C: Decoder<Error = std::io::Error>>(
    mut codec: C,
    input: &[u8],
    chunk: usize,
) -> Vec<C::Item> {
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            got.push(item);
        }
    }
    while let Some(item) = codec.decode_eof(&mut buf).unwrap() {
        got.push(item);
    }
    got
}

/// Finds `needle` (two bytes) in `haystack`.
pub(crate) fn find2(haystack: &[u8], needle: [u8; 2]) -> Option<usize> {
    haystack.windows(2).position(|w| w == needle)
}
