//! ZKTeco PUSH command results (`POST /iclock/devicecmd` bodies, `INFO` answers) and the backfill ranges the gateway
//! reads back from its own commands: never panics; a range the gateway writes reads back to itself (to the second).
#![no_main]

use drivers::adms::commands::{parse_results, reported_count};
use drivers::adms::{parse_query_range, query_range};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = drivers::adms::attlog::decode_body(data);
    let (results, _) = parse_results(&text);
    for r in &results {
        let _ = reported_count(r);
    }
    let tz = jiff::tz::TimeZone::get("Asia/Kolkata").unwrap_or(jiff::tz::TimeZone::UTC);
    if let Ok((from, to)) = parse_query_range(&tz, &text) {
        if let Ok(again) = query_range(&tz, from, to) {
            assert_eq!(parse_query_range(&tz, &again), Ok((from, to)), "{again}");
        }
    }
});
