//! Fuzzes the schedule CSV (`employee,date,shift`): any text gives a schedule or problems naming lines, never a panic;
//! a schedule that parses writes CSV that parses to the same schedule; an update through the API's reading (empty
//! shifts allowed) applies without a panic and keeps the row count consistent.
#![no_main]

use std::path::Path;

use gatewayd::reconcile::schedule::{parse_rows, Schedule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let text = format!("employee,date,shift\n{text}");
    if let Ok(schedule) = Schedule::parse(Path::new("s.csv"), &text, None) {
        let again = Schedule::parse(Path::new("s.csv"), &schedule.to_csv(), None);
        assert_eq!(again.ok().as_ref(), Some(&schedule));
    }
    if let Ok(update) = parse_rows(Path::new("body"), &text, None, true) {
        let mut s = Schedule::default();
        let assigned = update.iter().filter(|(_, _, a)| a.is_some()).count();
        s.apply(update);
        assert_eq!(s.len(), assigned, "rows are distinct (employee, date), so each assignment is one row");
        assert_eq!(s.len(), s.to_csv().lines().count() - 1);
    }
});
