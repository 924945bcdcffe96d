//! Fuzzes what MQTT devices send: the punch JSON parser and the front's MQTT 3.1.1 frame readers.
#![no_main]

use drivers::mqtt::{front, payload, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tz = jiff::tz::TimeZone::UTC;
    let _ = payload::parse_punch("fuzz-dev", data, &tz, 1_795_827_600_000, 4096);
    let _ = payload::peek_seq(data);
    if let Ok(Some((header, body))) = wire::frame_len(data, 1 << 20) {
        if let Some(frame) = data.get(header..header + body) {
            let _ = wire::parse_connect(frame);
            let _ = front::check_frame("fuzz-dev", data[0], frame);
        }
    }
    if let Ok(c) = wire::parse_connect(data) {
        let _ = wire::encode_connect(&c);
    }
});
