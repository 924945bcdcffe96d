//! Framing codecs for the serial device protocols: pure `tokio_util` codecs, no I/O, fuzzable.
//!
//! Both decoders yield `Result<Frame, FrameError>` items instead of failing the stream: a checksum error, a truncated
//! frame or line noise is one `Err` item the driver counts, after which the decoder has already resynchronised on the next
//! start code. The decoder's own `Error` type is `std::io::Error` and only carries errors of the underlying byte stream.
//! Memory is bounded: a frame longer than the protocol allows is refused from its header, before its body is buffered.

pub mod pn532;
pub mod r30x;

/// Finds `needle` (two bytes) in `haystack`.
fn find2(haystack: &[u8], needle: [u8; 2]) -> Option<usize> {
    haystack.windows(2).position(|w| w == needle)
}
