//! The reference receiver's input parsers: request bodies (`UploadBatch`), its own output file read back at start,
//! fault plans from the command line, and stored outbox items and queue chunks. The first byte picks the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 5 {
        0 => {
            let _ = gatewayd::cli::upstream_sink::decode_batch(rest);
        }
        1 => {
            let _ = gatewayd::cli::upstream_sink::restore_line(&String::from_utf8_lossy(rest));
        }
        2 => {
            if let Ok(mut plan) = gatewayd::cli::upstream_sink::faults::FaultPlan::parse(&String::from_utf8_lossy(rest)) {
                for _ in 0..4 {
                    plan.next_fault();
                }
            }
        }
        3 => {
            let _ = gatewayd::outbox::Item::decode(rest);
        }
        _ => {
            if let Ok(items) = gatewayd::outbox::chunk_items(u64::from(which), rest) {
                for (_, item) in items {
                    let _ = gatewayd::outbox::Item::decode(item);
                }
            }
        }
    }
});
