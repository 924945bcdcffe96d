//! Fuzzes what MQTT devices send: the punch JSON parser and the front's MQTT 3.1.1 frame readers.
#![no_main]

use drivers::mqtt::wire::{self, Framing};
use drivers::mqtt::{front, payload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tz = jiff::tz::TimeZone::UTC;
    let _ = payload::parse_punch("fuzz-dev", data, &tz, 1_795_827_600_000, 4096);
    let _ = payload::peek_seq(data);
    if let Ok(Framing::Whole(len)) = wire::frame(data, 1 << 20) {
        let frame = &data[..len];
        if let Ok(wire::Connect::V4(c)) = wire::parse_connect(frame) {
            let _ = c.rewritten("fuzz-dev", "token");
        }
        let _ = front::check_frame("fuzz-dev", frame);
        let _ = wire::connack_code(frame);
    }
});
