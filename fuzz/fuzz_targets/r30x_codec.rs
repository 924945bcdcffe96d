//! R30x packet decoder on arbitrary bytes: never panics, every decoded packet re-encodes to a packet that decodes to
//! itself.
#![no_main]

use drivers::r30x::codec::{decode_all, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for packet in decode_all(data).into_iter().flatten() {
        if let Ok(bytes) = encode(packet.clone()) {
            assert_eq!(decode_all(&bytes), vec![Ok(packet)]);
        }
    }
});
