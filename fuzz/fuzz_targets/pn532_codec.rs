//! PN532 HSU frame decoder on arbitrary bytes: never panics, every decoded frame re-encodes to a frame that decodes
//! to itself.
#![no_main]

use drivers::pn532::codec::{decode_all, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for frame in decode_all(data).into_iter().flatten() {
        if let Ok(bytes) = encode(frame.clone()) {
            assert_eq!(decode_all(&bytes), vec![Ok(frame)]);
        }
    }
});
