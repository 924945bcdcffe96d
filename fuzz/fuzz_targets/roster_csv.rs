//! Fuzzes the roster CSV import: any text gives a roster or problems naming lines, never a panic; a roster that imports
//! exports to CSV that imports to the same roster.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(roster) = gatewayd::reconcile::roster::Roster::parse_csv(text) {
            let again = gatewayd::reconcile::roster::Roster::parse_csv(&roster.to_csv());
            assert_eq!(again.ok().as_ref(), Some(&roster));
        }
    }
});
