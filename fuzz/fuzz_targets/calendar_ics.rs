//! Fuzzes the public-holiday calendar import (`POST /api/v1/calendar/import`): any bytes give dates or problems, never
//! a panic; the dates of a calendar that imports, merged into valid rules, give valid rules listing exactly them.
#![no_main]

use std::collections::BTreeSet;
use std::path::Path;

use gatewayd::reconcile::rules::calendar_merge::merge;
use gatewayd::reconcile::rules::ics::{parse_bytes, Classify};
use gatewayd::reconcile::rules::Rules;
use libfuzzer_sys::fuzz_target;

const RULES: &str = "# site rules\n[[shift]]\nid = \"day\"\nstart = \"09:00\"\nend = \"18:00\"\n\n\
                     [calendar]\nholidays = [\n  \"2026-10-01\", # National Day\n]\nworkdays = [\"2026-10-10\"]\n";

fuzz_target!(|data: &[u8]| {
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").expect("bundled tzdb");
    let keywords = Classify { holiday_keywords: Classify::keywords("休,假"), ..Classify::default() };
    let _ = parse_bytes(data, &tz, &keywords);
    let Ok(days) = parse_bytes(data, &tz, &Classify::default()) else { return };
    assert!(days.holidays.is_disjoint(&days.workdays));
    let merged = merge(RULES, &days.holidays, &days.workdays, "imported").expect("valid rules take any dates");
    let rules = Rules::parse(Path::new("rules.toml"), &merged.text).expect("the merged rules are valid");
    let old_h: BTreeSet<_> = ["2026-10-01".parse().expect("date")].into();
    let old_w: BTreeSet<_> = ["2026-10-10".parse().expect("date")].into();
    let want_h: BTreeSet<_> = old_h.difference(&days.workdays).chain(&days.holidays).copied().collect();
    let want_w: BTreeSet<_> = old_w.difference(&days.holidays).chain(&days.workdays).copied().collect();
    assert_eq!(rules.holidays, want_h);
    assert_eq!(rules.makeup_workdays, want_w);
});
