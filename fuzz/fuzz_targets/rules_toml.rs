//! Fuzzes the rules.toml parser and validator: any text gives rules or problems, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = gatewayd::reconcile::rules::Rules::parse(std::path::Path::new("rules.toml"), text);
    }
});
