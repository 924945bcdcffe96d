//! Framing codecs for the serial device protocols: pure `tokio_util` codecs, no I/O, fuzzable.
//!
//! Both decoders yield `Result<Frame, FrameError>` items instead of failing the stream: a checksum error, a truncated
//! frame or line noise is one `Err` item the driver counts, after which the decoder has already resynchronised on the next
//! start code. The decoder's own `Error` type is `std::io::Error` and only carries errors of the underlying byte stream.
//! Memory is bounded: a frame longer than the protocol allows is refused from its header, before its body is buffered.

pub mod pn532;
pub mod r30x;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

/// Encodes one item to bytes with `codec`.
fn encode_with<C: Encoder<T, Error = std::io::Error>, T>(mut codec: C, item: T) -> Result<Vec<u8>, std::io::Error> {
    let mut buf = BytesMut::new();
    codec.encode(item, &mut buf)?;
    Ok(buf.to_vec())
}

/// Decodes everything in `input` as one stream that then ends (the fuzz targets' entry point).
fn decode_all_with<C: Decoder>(mut codec: C, input: &[u8]) -> Vec<C::Item> {
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

/// Finds `needle` (two bytes) in `haystack`.
fn find2(haystack: &[u8], needle: [u8; 2]) -> Option<usize> {
    haystack.windows(2).position(|w| w == needle)
}
