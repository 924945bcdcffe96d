//! The MQTT front's view of a device connection: the bytes a device sends, cut into frames the way the front does
//! (first a CONNECT within its size limit, then every frame checked against the topic rules before it may reach the
//! broker). Malformed CONNECTs, huge or overlong remaining lengths, zero-length topics and floods of frames end in an
//! error, never a panic; an accepted CONNECT rewritten for the broker parses back to itself.
#![no_main]

use drivers::mqtt::{front, wire, FRAME_LIMIT};
use libfuzzer_sys::fuzz_target;

/// The front's limit for the first frame (`front::CONNECT_LIMIT`).
const CONNECT_LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((header, body))) = wire::frame_len(data, CONNECT_LIMIT) else { return };
    let Some(frame) = data.get(header..header + body) else { return };
    if data[0] >> 4 != wire::kind::CONNECT {
        return;
    }
    let Ok(mut connect) = wire::parse_connect(frame) else { return };
    if matches!(connect.level, 3 | 4) {
        // What the front forwards: the device id as client id and username, the broker token as password.
        connect.client_id = "dev-1".into();
        connect.username = Some("dev-1".into());
        connect.password = Some(b"broker-token".to_vec());
        let bytes = wire::encode_connect(&connect);
        let (h, b) = wire::frame_len(&bytes, usize::MAX).ok().flatten().expect("an encoded CONNECT has a length");
        assert_eq!(h + b, bytes.len());
        let mut back = wire::parse_connect(&bytes[h..]).expect("an encoded CONNECT parses");
        back.level = connect.level;
        assert_eq!(back, connect);
    }
    // The rest of the stream, frame by frame, until a frame is incomplete or breaks a rule.
    let mut rest = &data[header + body..];
    loop {
        match wire::frame_len(rest, FRAME_LIMIT) {
            Ok(Some((h, b))) if rest.len() >= h + b => {
                if front::check_frame("dev-1", rest[0], &rest[h..h + b]).is_err() {
                    return;
                }
                rest = &rest[h + b..];
            }
            _ => return,
        }
    }
});
