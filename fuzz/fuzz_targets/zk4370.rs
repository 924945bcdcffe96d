//! The 4370 protocol on arbitrary bytes, first byte picks the parser: the TCP frame stream, a bare UDP packet, an
//! attendance log buffer (with a record count), a real-time event, the free-sizes block, a user table. Never panics;
//! every decoded packet re-encodes to a frame that decodes to itself, and every record that reads re-encodes in its
//! layout to the same record.
#![no_main]

use drivers::zk4370::codec::{decode_tcp_stream, Packet};
use drivers::zk4370::records::{encode_record, parse_event, parse_log, parse_record, parse_users, FreeSizes, User};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    match pick % 6 {
        0 => {
            for packet in decode_tcp_stream(rest).into_iter().flatten() {
                assert_eq!(decode_tcp_stream(&packet.to_tcp_frame()), vec![Ok(packet)]);
            }
        }
        1 => {
            if let Ok(packet) = Packet::parse(rest) {
                assert_eq!(Packet::parse(&packet.to_bytes()), Ok(packet));
            }
        }
        2 => {
            let Some((&count, buffer)) = rest.split_first() else { return };
            if let Ok((layout, records)) = parse_log(buffer, u32::from(count)) {
                // Text user ids are written in at most 23 bytes (the 24th is the terminating NUL).
                for record in records.into_iter().flatten().filter(|r| r.user_id.len() <= 23) {
                    if let Ok(bytes) = encode_record(layout, 1, &record) {
                        assert_eq!(parse_record(layout, &bytes), Ok(record));
                    }
                }
            }
        }
        3 => {
            let _ = parse_event(rest);
        }
        4 => {
            if let Ok(sizes) = FreeSizes::parse(rest) {
                assert_eq!(FreeSizes::parse(&sizes.encode()), Ok(sizes));
            }
        }
        _ => {
            for user in parse_users(rest).into_iter().flatten().flatten() {
                let again = User::parse(&user.encode());
                // Names and ids are cut to 23 bytes on the way out; shorter ones come back as they were.
                if user.name.len() <= 23 && user.user_id.len() <= 23 {
                    assert_eq!(again, Ok(user));
                }
            }
        }
    }
});
