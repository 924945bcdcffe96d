//! The control socket's request line and the token format: arbitrary bytes never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gatewayd::app::control::parse_request(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = gatewayd::tokens::token_id(text);
    }
});
