//! Fuzzes ZKTeco PUSH ATTLOG upload bodies: decoding (UTF-8 / GB18030), line parsing and conversion to punches.
#![no_main]

use drivers::adms::attlog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = attlog::decode_body(data);
    let (records, _errors) = attlog::parse_attlog(&text);
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap_or(jiff::tz::TimeZone::UTC);
    for r in &records {
        let _ = attlog::to_punch("fuzz-dev", r, &tz, 0, true);
    }
});
