use std::path::{Path, PathBuf};

use jiff::civil::date;

use super::*;

fn parse(text: &str) -> Result<Rules, Vec<Problem>> {
    Rules::parse(Path::new("rules.toml"), text)
}

/// The first problem as `LINE: key: message`.
fn first_problem(text: &str) -> String {
    match parse(text) {
        Ok(_) => "ok".into(),
        Err(problems) => {
            let p = &problems[0];
            format!("{}: {}: {}", p.line, p.key, p.message)
        }
    }
}

const BASE: &str = r#"
[[shift]]
id = "day"
start = "09:00"
end = "18:00"
late_grace = "10m"

[[group]]
id = "office"
departments = ["D-OFF"]
shift = "day"
"#;

#[test]
fn shipped_rules_parse() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/rules.toml");
    let (rules, _) = Rules::load(&path).unwrap_or_else(|p| panic!("{p:?}"));
    assert_eq!(rules.shifts.len(), 2);
    assert_eq!(rules.groups.len(), 2);
    let night = &rules.shifts[1];
    assert!(night.crosses_midnight());
    assert_eq!(rules.dedupe_window_ms, 300_000);
    assert_eq!(rules.group_of("E1", "D-ASM"), Some(1));
    assert_eq!(rules.group_of("E1", "D-NONE"), None);
    let asm = &rules.groups[1];
    assert_eq!(asm.verification.map(|v| v.window_ms), Some(900_000));
    assert!(matches!(asm.geofence, Some(Geofence::Circle { radius_m, .. }) if radius_m == 200.0));
}

#[test]
fn defaults_apply() {
    let rules = parse(BASE).unwrap();
    let s = &rules.shifts[0];
    assert_eq!((s.start_s, s.end_s), (9 * 3600, 18 * 3600));
    assert_eq!(s.late_grace_ms, 600_000);
    assert_eq!(s.early_grace_ms, 0);
    assert_eq!(s.opens_before_ms, 2 * 3_600_000);
    assert_eq!(s.closes_after_ms, 6 * 3_600_000);
    assert_eq!(s.overtime_after_ms, 30 * 60_000);
    assert_eq!(rules.groups[0].workdays, [true, true, true, true, true, false, false]);
    assert_eq!(rules.reconcile_days, DEFAULT_RECONCILE_DAYS);
}

#[test]
fn invalid_rules_name_line_key_and_problem() {
    let cases: &[(&str, &str)] = &[
        ("dedupe_window = \"soon\"\n", "1: dedupe_window: `soon` is not a duration"),
        ("dedupe_window = \"2h\"\n", "1: dedupe_window: must be between 0s and 1h"),
        ("max_clock_skew = \"0s\"\n", "1: max_clock_skew: must be between 1s and 24h"),
        ("reconcile_days = 0\n", "1: reconcile_days: must be between 1 and 366"),
        ("colour = \"red\"\n", "1: colour: unknown field `colour`"),
        ("[[shift]]\nid = \"day\"\nstart = \"9:00\"\nend = \"18:00\"\n", "3: shift[day].start: `9:00` is not a time of day"),
        ("[[shift]]\nid = \"day\"\nstart = \"09:00\"\nend = \"24:00\"\n", "4: shift[day].end: `24:00` is not a time of day"),
        ("[[shift]]\nid = \"day\"\nstart = \"09:00\"\nend = \"09:00\"\n", "4: shift[day].end: must differ from start"),
        ("[[shift]]\nid = \"off\"\nstart = \"09:00\"\nend = \"10:00\"\n", "2: shift[off].id: `off` is reserved"),
        (
            "[[shift]]\nid = \"a\"\nstart = \"09:00\"\nend = \"10:00\"\n[[shift]]\nid = \"a\"\nstart = \"09:00\"\nend = \"10:00\"\n",
            "6: shift[a].id: `a` is used by another shift",
        ),
        (
            "[[shift]]\nid = \"d\"\nstart = \"09:00\"\nend = \"18:00\"\nopens_before = \"25h\"\n",
            "5: shift[d].opens_before: must be between 0s and 24h",
        ),
        (
            "[[shift]]\nid = \"d\"\nstart = \"09:00\"\nend = \"18:00\"\ncloses_after = \"1h\"\novertime_after = \"2h\"\n",
            "6: shift[d].overtime_after: must not exceed closes_after (1h)",
        ),
        (
            "[[shift]]\nid = \"d\"\nstart = \"09:00\"\nend = \"10:00\"\nlate_grace = \"1h\"\n",
            "5: shift[d].late_grace: must be shorter than the shift",
        ),
        (
            &format!("{BASE}[[group]]\nid = \"g2\"\ndepartments = [\"X\"]\nshift = \"evening\"\n"),
            "15: group[g2].shift: unknown shift `evening` (defined: day)",
        ),
        (
            &format!("{BASE}[[group]]\nid = \"g2\"\ndepartments = [\"D-OFF\"]\nshift = \"day\"\n"),
            "14: group[g2].departments: department `D-OFF` is already in group `office`",
        ),
        (
            &format!("{BASE}[[group]]\nid = \"office\"\ndepartments = [\"X\"]\nshift = \"day\"\n"),
            "13: group[office].id: `office` is used by another group",
        ),
        (
            &format!("{BASE}[[group]]\nid = \"g2\"\ndepartments = [\"X\"]\n"),
            "13: group[g2].shift: missing: give shift or rotation",
        ),
        (
            &format!("{BASE}[[group]]\nid = \"g2\"\nshift = \"day\"\n"),
            "12: group[g2].departments: missing: a group needs departments or employees",
        ),
        (
            &format!(
                "{BASE}[[group]]\nid = \"g2\"\ndepartments = [\"X\"]\n\
                 rotation = {{ pattern = [\"day\", \"off\", \"late\"], starts = \"2026-11-02\" }}\n"
            ),
            "15: group[g2].rotation.pattern[2]: unknown shift `late` (defined: day; or `off`)",
        ),
        (
            &format!(
                "{BASE}[[group]]\nid = \"g2\"\ndepartments = [\"X\"]\n\
                 rotation = {{ pattern = [\"day\"], starts = \"2026-13-02\" }}\n"
            ),
            "15: group[g2].rotation.starts: `2026-13-02` is not a valid calendar date",
        ),
        (
            &format!(
                "{BASE}[[group]]\nid = \"g2\"\ndepartments = [\"X\"]\n\
                 rotation = {{ pattern = [\"off\", \"off\"], starts = \"2026-11-02\" }}\n"
            ),
            "15: group[g2].rotation.pattern: has no working day",
        ),
        (
            &format!("{BASE}workdays = [\"mon\", \"funday\"]\n"),
            "12: group[office].workdays: `funday` is not a weekday",
        ),
        (
            &format!("{BASE}geofence = {{ center = [31.2, 121.4], radius_m = 20 }}\n"),
            "12: group[office].geofence.radius_m: 20 is out of range: must be between 50 and 5000 metres",
        ),
        (
            &format!("{BASE}geofence = {{ center = [31.2, 121.4], radius_m = 5001 }}\n"),
            "12: group[office].geofence.radius_m: 5001 is out of range",
        ),
        (
            &format!("{BASE}geofence = {{ center = [91.0, 121.4], radius_m = 100 }}\n"),
            "12: group[office].geofence.center: must be [lat, lng]",
        ),
        (
            &format!("{BASE}geofence = {{ center = [31.2, 121.4] }}\n"),
            "12: group[office].geofence.radius_m: missing",
        ),
        (
            &format!("{BASE}geofence = {{ polygon = [[0.0, 0.0], [1.0, 1.0]] }}\n"),
            "12: group[office].geofence.polygon: must have 3 to 1000 vertices",
        ),
        (
            &format!("{BASE}geofence = {{ polygon = [[0.0, 0.0], [1.0, 1.0], [1.0, 200.0]] }}\n"),
            "12: group[office].geofence.polygon[2]: must be [lat, lng]",
        ),
        (
            &format!("{BASE}geofence = {{ center = [1.0, 1.0], radius_m = 100, polygon = [[0.0, 0.0], [1.0, 1.0], [1.0, 2.0]] }}\n"),
            "12: group[office].geofence.polygon: give either",
        ),
        (
            &format!("{BASE}verification = {{ require = [\"fingerprint\"], window = \"15m\" }}\n"),
            "12: group[office].verification.require: must name exactly two methods",
        ),
        (
            &format!("{BASE}verification = {{ require = [\"card\", \"card\"], window = \"15m\" }}\n"),
            "12: group[office].verification.require: the two methods must differ",
        ),
        (
            &format!("{BASE}verification = {{ require = [\"card\", \"makeup\"], window = \"15m\" }}\n"),
            "12: group[office].verification.require: `makeup` is not a method",
        ),
        (
            &format!("{BASE}verification = {{ require = [\"card\", \"face\"], window = \"3h\" }}\n"),
            "12: group[office].verification.window: must be between 1s and 2h",
        ),
        (
            "[calendar]\nholidays = [\"2026-10-01\", \"2026/10/02\"]\n",
            "2: calendar.holidays: `2026/10/02` is not a date like 2026-10-01",
        ),
        (
            "[calendar]\nholidays = [\"2026-10-01\"]\nworkdays = [\"2026-10-01\"]\n",
            "3: calendar.workdays: 2026-10-01 is also a holiday",
        ),
        ("[[shift]]\nid = \"d\"\nstart = 9\nend = \"18:00\"\n", "3: shift[0].start: invalid type"),
    ];
    let mut failures = Vec::new();
    for (text, want) in cases {
        let got = first_problem(text);
        if !got.starts_with(want) {
            failures.push(format!("rules:\n{text}\n  got:    {got}\n  wanted: {want}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_problem_is_reported() {
    let text = "dedupe_window = \"x\"\nmax_clock_skew = \"y\"\n[calendar]\nholidays = [\"nope\"]\n";
    let problems = parse(text).unwrap_err();
    let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![1, 2, 4]);
    assert!(problems[0].to_string().starts_with("rules.toml:1: dedupe_window: "));
}

#[test]
fn day_plans_follow_weekdays_calendar_and_rotation() {
    let text = r#"
[[shift]]
id = "day"
start = "09:00"
end = "18:00"

[[shift]]
id = "night"
start = "22:00"
end = "06:00"

[[group]]
id = "office"
departments = ["D-OFF"]
shift = "day"

[[group]]
id = "line"
departments = ["D-ASM"]
rotation = { pattern = ["day", "day", "night", "night", "off", "off"], starts = "2026-11-02" }
workdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

[calendar]
holidays = ["2026-10-01"]
workdays = ["2026-10-10"]
"#;
    let rules = parse(text).unwrap();
    let plan = |g, d| rules.plan(g, d).unwrap();
    // 2026-10-01 is a Thursday holiday; 2026-10-10 a make-up Saturday; 2026-10-11 an ordinary Sunday.
    assert_eq!(plan(0, date(2026, 9, 30)), DayPlan { shift: 0, workday: true });
    assert_eq!(plan(0, date(2026, 10, 1)), DayPlan { shift: 0, workday: false });
    assert_eq!(plan(0, date(2026, 10, 10)), DayPlan { shift: 0, workday: true });
    assert_eq!(plan(0, date(2026, 10, 11)), DayPlan { shift: 0, workday: false });
    // Rotation: day, day, night, night, off, off from Monday 2026-11-02, also before the start date.
    let shifts: Vec<(usize, bool)> = (0..8)
        .map(|i| {
            let p = plan(1, date(2026, 11, 2).checked_add(jiff::Span::new().days(i)).unwrap());
            (p.shift, p.workday)
        })
        .collect();
    assert_eq!(shifts, vec![(0, true), (0, true), (1, true), (1, true), (0, false), (0, false), (0, true), (0, true)]);
    let before = plan(1, date(2026, 11, 1));
    assert_eq!(before, DayPlan { shift: 0, workday: false });
    assert_eq!(rules.plan(7, date(2026, 11, 1)), None);
}

#[test]
fn spans_are_dst_safe_and_cross_midnight() {
    let rules = parse(
        "[[shift]]\nid = \"night\"\nstart = \"22:00\"\nend = \"06:00\"\nopens_before = \"2h\"\ncloses_after = \"4h\"\n",
    )
    .unwrap();
    let night = &rules.shifts[0];
    let shanghai = TimeZone::get("Asia/Shanghai").unwrap();
    let span = night.span(date(2026, 10, 31), &shanghai);
    // 22:00 +08:00 on Oct 31 to 06:00 on Nov 1 (across a month end).
    assert_eq!(span.start_ms, "2026-10-31T22:00+08:00".parse::<jiff::Timestamp>().unwrap().as_millisecond());
    assert_eq!(span.end_ms - span.start_ms, 8 * 3_600_000);
    assert_eq!(span.close_ms - span.end_ms, 4 * 3_600_000);
    // New York falls back on 2026-11-01: that night is 9 hours long.
    let ny = TimeZone::get("America/New_York").unwrap();
    let span = night.span(date(2026, 10, 31), &ny);
    assert_eq!(span.end_ms - span.start_ms, 9 * 3_600_000);
    // The day closes when the last window closes: 10:00 the next morning here.
    assert_eq!(rules.day_close_ms(date(2026, 10, 31), &shanghai), span_close(&rules, &shanghai));
}

fn span_close(rules: &Rules, tz: &TimeZone) -> i64 {
    rules.shifts[0].span(date(2026, 10, 31), tz).close_ms
}

#[test]
fn no_rules_close_days_at_midnight() {
    let tz = TimeZone::get("Asia/Shanghai").unwrap();
    let rules = Rules::none();
    assert_eq!(rules.day_close_ms(date(2026, 11, 22), &tz), local_ms(date(2026, 11, 23), 0, &tz));
    assert_eq!(local_date(local_ms(date(2026, 11, 23), 0, &tz) - 1, &tz), date(2026, 11, 22));
}

proptest::proptest! {
    #[test]
    fn parsing_never_panics(text in "\\PC{0,400}") {
        let _ = parse(&text);
    }

    #[test]
    fn parsing_structured_noise_never_panics(
        start in "[0-9:]{0,6}", end in "[0-9:]{0,6}", grace in "[0-9a-z ]{0,5}", radius in -10.0f64..10000.0,
        day in "[a-z]{0,4}", date_text in "[0-9-]{0,11}",
    ) {
        let text = format!(
            "[[shift]]\nid = \"s\"\nstart = \"{start}\"\nend = \"{end}\"\nlate_grace = \"{grace}\"\n\
             [[group]]\nid = \"g\"\ndepartments = [\"D\"]\nshift = \"s\"\nworkdays = [\"{day}\"]\n\
             geofence = {{ center = [1.0, 2.0], radius_m = {radius} }}\n[calendar]\nholidays = [\"{date_text}\"]\n"
        );
        let _ = parse(&text);
    }
}

#[test]
fn the_attendance_cycle_starts_on_a_day_every_month_has() {
    assert_eq!(parse(BASE).unwrap().cycle_start_day, 1);
    assert_eq!(parse(&format!("{BASE}[reports]\ncycle_start_day = 26\n")).unwrap().cycle_start_day, 26);
    assert_eq!(parse("[reports]\ncycle_start_day = 28\n").unwrap().cycle_start_day, 28);
    for bad in [0, 29, 31, -1, 300] {
        assert_eq!(
            first_problem(&format!("\n[reports]\ncycle_start_day = {bad}\n")),
            format!(
                "3: reports.cycle_start_day: {bad} is out of range: must be between 1 and 28 (every month has the day)"
            )
        );
    }
    assert_eq!(
        first_problem("[reports]\nstart = 2\n"),
        "2: reports.start: unknown field `start`, expected `cycle_start_day`"
    );
}
