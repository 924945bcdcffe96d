//! Fuzzes ZKTeco PUSH ATTLOG upload bodies: decoding (UTF-8 / GB18030), line parsing and conversion to punches; and
//! the same bytes as the terminals' stamp file (`adms-stamps.json`) and as a `Stamp=` value.
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
    let _ = drivers::adms::stamps::parse(data);
    if let Some(stamp) = drivers::adms::stamps::clean(&text) {
        assert!(stamp.bytes().all(|b| b.is_ascii_digit()));
    }
});
