//! The MQTT front's view of a device connection: the bytes a device sends, cut into frames the way the front does
//! (first a CONNECT within its size limit, then every frame checked against the topic rules before it may reach the
//! broker). Malformed CONNECTs, huge or overlong remaining lengths, zero-length topics and floods of frames end in an
//! error, never a panic; an accepted CONNECT rewritten for the broker parses back to itself.
#![no_main]

use drivers::mqtt::wire::{self, Connect, Framing};
use drivers::mqtt::{front, FRAME_LIMIT};
use libfuzzer_sys::fuzz_target;

/// The front's limit for the first frame (`front::CONNECT_LIMIT`).
const CONNECT_LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(Framing::Whole(len)) = wire::frame(data, CONNECT_LIMIT) else { return };
    let frame = &data[..len];
    if wire::packet_type(frame[0]).ok() != Some(wire::PacketType::Connect) {
        return;
    }
    let Ok(Connect::V4(connect)) = wire::parse_connect(frame) else { return };
    // What the front forwards: the device id as client id and username, the broker token as password.
    let bytes = connect.rewritten("dev-1", "broker-token").expect("an accepted CONNECT encodes");
    assert_eq!(wire::frame(&bytes, usize::MAX).ok(), Some(Framing::Whole(bytes.len())));
    let Ok(Connect::V4(back)) = wire::parse_connect(&bytes) else { panic!("a rewritten CONNECT parses") };
    assert_eq!((back.level, back.username(), back.password()), (4, Some("dev-1"), Some(&b"broker-token"[..])));
    assert_eq!(back.packet.client_id, "dev-1");
    assert_eq!(
        (back.packet.keep_alive, back.packet.clean_session, back.will()),
        (connect.packet.keep_alive, connect.packet.clean_session, connect.will())
    );
    // The rest of the stream, frame by frame, until a frame is incomplete or breaks a rule.
    let mut rest = &data[len..];
    while let Ok(Framing::Whole(len)) = wire::frame(rest, FRAME_LIMIT) {
        if front::check_frame("dev-1", &rest[..len]).is_err() {
            return;
        }
        rest = &rest[len..];
    }
});
