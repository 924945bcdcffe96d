//! Fuzzes the rotating QR code check and the kiosk's query: any scanned text at any time is accepted only when it is
//! the code of that 30 s step or the one before, refused with a reason otherwise, never a panic; any query string for
//! `GET /api/v1/qr/current` parses or is refused.
#![no_main]

use gatewayd::api::qr::{QrCodes, Refusal, STEP_S};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<8>() else { return };
    let at_s = u64::from_le_bytes(*head) % 4_102_444_800; // up to 2100
    let Ok(codes) = QrCodes::from_key(b"fuzzing-key-of-twenty".to_vec()) else { return };
    let text = String::from_utf8_lossy(rest);
    let (current, until) = codes.current(at_s);
    assert!(until > at_s && until - at_s <= STEP_S);
    assert_eq!(codes.check(Some(&current), at_s), Ok(()));
    match codes.check(Some(&text), at_s) {
        Ok(()) => {
            let previous = codes.current(at_s.saturating_sub(STEP_S)).0;
            assert!(text.trim() == current || text.trim() == previous, "accepted {text:?}");
        }
        Err(Refusal::Missing) => assert!(text.trim().is_empty()),
        Err(_) => {}
    }
    let _ = serde_urlencoded::from_str::<gatewayd::api::v1::QrQuery>(&text);
});
