use super::*;

/// A calendar app's export of the 2026 public holidays of mainland China (CRLF, folded lines, a VTIMEZONE, a make-up
/// day written as a timed event with an alarm, a DURATION, an observance).
const CN_2026: &str = include_str!("../../../../tests/data/cn-public-holidays-2026.ics");

fn shanghai() -> TimeZone {
    TimeZone::get("Asia/Shanghai").expect("tzdb")
}

fn d(text: &str) -> Date {
    text.parse().expect("date")
}

fn dates(list: &[&str]) -> BTreeSet<Date> {
    list.iter().map(|t| d(t)).collect()
}

/// Every date from `first` to `last`, inclusive.
fn range(first: &str, last: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut day = d(first);
    while day <= d(last) {
        out.push(day.to_string());
        day = day.tomorrow().expect("date");
    }
    out
}

fn read(text: &str) -> Result<CalendarDays, IcsError> {
    parse(text, &shanghai(), &Classify::default())
}

/// A calendar around `events` (LF line ends).
fn calendar(events: &str) -> String {
    format!("BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//test//EN\n{events}END:VCALENDAR\n")
}

fn event(props: &str) -> String {
    format!("BEGIN:VEVENT\n{props}END:VEVENT\n")
}

fn problems(text: &str) -> String {
    match read(text) {
        Ok(days) => panic!("expected problems, got {days:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_2026_public_holidays_of_mainland_china() {
    assert!(CN_2026.contains("\r\n"), "the test file has CRLF line ends");
    assert!(CN_2026.contains("\r\n "), "the test file has folded lines");
    let days = read(CN_2026).expect("the 2026 calendar imports");
    assert_eq!(days.name.as_deref(), Some("中国法定节假日 2026"));
    let holidays: Vec<String> = [
        range("2026-01-01", "2026-01-03"),
        range("2026-02-15", "2026-02-23"),
        range("2026-04-04", "2026-04-06"),
        range("2026-05-01", "2026-05-05"),
        range("2026-06-19", "2026-06-21"),
        range("2026-09-25", "2026-09-27"),
        range("2026-10-01", "2026-10-07"),
    ]
    .concat();
    assert_eq!(days.holidays, holidays.iter().map(|t| d(t)).collect::<BTreeSet<_>>());
    assert_eq!(days.holidays.len(), 33);
    // Make-up working days, all on weekends: 2026-02-14 is written 09:00 to 18:00 in Asia/Shanghai.
    let workdays = dates(&["2026-01-04", "2026-02-14", "2026-02-28", "2026-05-09", "2026-09-20", "2026-10-10"]);
    assert_eq!(days.workdays, workdays);
    assert!(days.workdays.iter().all(|w| w.weekday().to_monday_zero_offset() >= 5), "{:?}", days.workdays);
    // Women's Day is an observance, not a day off.
    assert_eq!(days.ignored.len(), 1, "{:?}", days.ignored);
    assert_eq!(days.ignored[0].event.summary.as_deref(), Some("妇女节"));
    assert!(days.ignored[0].reason.contains("observance"), "{:?}", days.ignored[0]);
    let line = days.ignored[0].event.line.expect("the event's line is known");
    assert_eq!(CN_2026.lines().nth(line - 1), Some("BEGIN:VEVENT\r").map(|l| l.trim_end_matches('\r')));
}

#[test]
fn the_2026_calendar_with_lf_line_ends_and_a_byte_order_mark_reads_the_same() {
    let lf = format!("\u{feff}{}", CN_2026.replace("\r\n", "\n"));
    assert_eq!(read(&lf), read(CN_2026));
}

#[test]
fn summaries_of_published_feeds_are_classified() {
    // (summary, categories, description, holiday?) as published by several feeds.
    let cases = [
        ("元旦假期", "", "", true),
        ("上班(补春节假期)", "", "", false),
        ("春节 假期 第1天/共8天", "", "", true),
        ("春节 补班 第1天/共2天", "", "", false),
        ("国庆节 休", "", "", true),
        ("国庆节 (休)", "", "", true),
        ("国庆节（班）", "", "", false),
        ("班｜国庆节", "", "", false),
        ("调休上班", "", "", false),
        ("春节", "", "", true),
        ("春节调休", "上班", "", false),
        ("Makeup workday", "", "", false),
        ("Working day (Spring Festival)", "", "", false),
        ("National Day", "", "Public holiday", true),
    ];
    for (i, (summary, categories, description, holiday)) in cases.iter().enumerate() {
        let day = format!("202610{:02}", i + 1);
        let mut props = format!("UID:{i}\nDTSTART;VALUE=DATE:{day}\nSUMMARY:{summary}\n");
        if !categories.is_empty() {
            props.push_str(&format!("CATEGORIES:{categories}\n"));
        }
        if !description.is_empty() {
            props.push_str(&format!("DESCRIPTION:{description}\n"));
        }
        let days = read(&calendar(&event(&props))).unwrap_or_else(|e| panic!("{summary}: {e}"));
        let date = Date::strptime("%Y%m%d", &day).expect("date");
        assert_eq!(days.holidays.contains(&date), *holiday, "{summary}");
        assert_eq!(days.workdays.contains(&date), !*holiday, "{summary}");
    }
}

#[test]
fn observances_and_cancelled_events_are_ignored() {
    let text = calendar(&format!(
        "{}{}{}",
        event("UID:a\nDTSTART;VALUE=DATE:20261001\nSUMMARY:National Day\nDESCRIPTION:Public holiday\n"),
        event("UID:b\nDTSTART;VALUE=DATE:20260214\nSUMMARY:Valentine's Day\nDESCRIPTION:Observance\\nTo hide observances\\, go to settings\n"),
        event("UID:c\nDTSTART;VALUE=DATE:20261002\nSUMMARY:国庆节 休\nSTATUS:CANCELLED\n"),
    ));
    let days = read(&text).expect("imports");
    assert_eq!(days.holidays, dates(&["2026-10-01"]));
    let reasons: Vec<(Option<&str>, &str)> =
        days.ignored.iter().map(|i| (i.event.uid.as_deref(), i.reason.as_str())).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[0].0, Some("b"));
    assert!(reasons[0].1.contains("observance"));
    assert_eq!(reasons[1].0, Some("c"));
    assert!(reasons[1].1.contains("CANCELLED"));
}

#[test]
fn apple_marks_decide_and_unmarked_festivals_are_ignored() {
    // Apple's calendar lists festivals (some repeating yearly) beside the marked days off and make-up days.
    let text = calendar(&format!(
        "{}{}{}{}",
        event(
            "UID:1\nDTSTART;VALUE=DATE:20251230\nDTEND;VALUE=DATE:20260102\nSUMMARY;LANGUAGE=zh_CN:元旦（休）\n\
             CATEGORIES:節慶\nX-APPLE-SPECIAL-DAY:WORK-HOLIDAY\n"
        ),
        event("UID:2\nDTSTART;VALUE=DATE:20260101\nSUMMARY;LANGUAGE=zh_CN:元旦\nRRULE:FREQ=YEARLY;COUNT=6\n"),
        event("UID:3\nDTSTART;VALUE=DATE:20260104\nSUMMARY;LANGUAGE=zh_CN:班\nX-APPLE-SPECIAL-DAY:ALTERNATE-WORKDAY\n"),
        event("UID:4\nDTSTART;VALUE=DATE:20260105\nSUMMARY;LANGUAGE=zh_CN:小寒\n"),
    ));
    let days = read(&text).expect("imports");
    assert_eq!(days.holidays, dates(&["2025-12-30", "2025-12-31", "2026-01-01"]));
    assert_eq!(days.workdays, dates(&["2026-01-04"]));
    let ignored: Vec<&str> = days.ignored.iter().filter_map(|i| i.event.uid.as_deref()).collect();
    assert_eq!(ignored, ["2", "4"]);
}

#[test]
fn callers_can_name_their_own_keywords() {
    let text = calendar(&format!(
        "{}{}{}",
        event("UID:1\nDTSTART;VALUE=DATE:20261001\nSUMMARY:Nationalfeiertag\n"),
        event("UID:2\nDTSTART;VALUE=DATE:20261010\nSUMMARY:Arbeitstag (Ausgleich)\n"),
        event("UID:3\nDTSTART;VALUE=DATE:20261031\nSUMMARY:Halloween\n"),
    ));
    let classify = Classify {
        workday_keywords: Classify::keywords("arbeitstag, ").expect("keywords"),
        holiday_keywords: Classify::keywords("Feiertag"),
    };
    let days = parse(&text, &shanghai(), &classify).expect("imports");
    assert_eq!(days.holidays, dates(&["2026-10-01"]));
    assert_eq!(days.workdays, dates(&["2026-10-10"]));
    assert_eq!(days.ignored.len(), 1);
    assert_eq!(days.ignored[0].reason, "matches no holiday keyword");
    assert_eq!(Classify::keywords(" , ,"), None);
}

#[test]
fn all_day_events_end_before_dtend_or_last_their_duration() {
    let cases = [
        ("DTSTART;VALUE=DATE:20261001\nDTEND;VALUE=DATE:20261008\n", range("2026-10-01", "2026-10-07")),
        ("DTSTART;VALUE=DATE:20261001\n", range("2026-10-01", "2026-10-01")),
        ("DTSTART:20261001\n", range("2026-10-01", "2026-10-01")),
        // DTEND equal to DTSTART: one day, as some feeds write single days.
        ("DTSTART;VALUE=DATE:20261001\nDTEND;VALUE=DATE:20261001\n", range("2026-10-01", "2026-10-01")),
        ("DTSTART;VALUE=DATE:20261001\nDURATION:P7D\n", range("2026-10-01", "2026-10-07")),
        ("DTSTART;VALUE=DATE:20261001\nDURATION:P1W\n", range("2026-10-01", "2026-10-07")),
        ("DTSTART;VALUE=DATE:20261001\nDURATION:PT36H\n", range("2026-10-01", "2026-10-02")),
        // Across the year's end.
        ("DTSTART;VALUE=DATE:20261231\nDTEND;VALUE=DATE:20270103\n", range("2026-12-31", "2027-01-02")),
    ];
    for (props, want) in cases {
        let days =
            read(&calendar(&event(&format!("SUMMARY:假期\n{props}")))).unwrap_or_else(|e| panic!("{props}: {e}"));
        let want: BTreeSet<Date> = want.iter().map(|t| d(t)).collect();
        assert_eq!(days.holidays, want, "{props}");
    }
}

#[test]
fn timed_events_take_the_dates_they_overlap_in_the_site_time_zone() {
    let cases = [
        // Floating: the site's wall clock.
        ("DTSTART:20260214T090000\nDTEND:20260214T180000\n", vec!["2026-02-14"]),
        ("DTSTART;TZID=Asia/Shanghai:20260214T090000\nDTEND;TZID=Asia/Shanghai:20260214T180000\n", vec!["2026-02-14"]),
        // 02:00 UTC is 10:00 in Shanghai; 20:00 UTC on the 13th is 04:00 on the 14th.
        ("DTSTART:20260214T020000Z\nDURATION:PT8H\n", vec!["2026-02-14"]),
        ("DTSTART:20260213T200000Z\nDTEND:20260214T020000Z\n", vec!["2026-02-14"]),
        // 09:00 in Los Angeles is 01:00 the next day in Shanghai.
        ("DTSTART;TZID=America/Los_Angeles:20260213T090000\nDURATION:PT1H\n", vec!["2026-02-14"]),
        // Midnight to midnight: one date (the end is exclusive).
        ("DTSTART:20261001T000000\nDTEND:20261002T000000\n", vec!["2026-10-01"]),
        ("DTSTART:20261001T220000\nDTEND:20261002T020000\n", vec!["2026-10-01", "2026-10-02"]),
        // No end: a moment.
        ("DTSTART:20261001T120000\n", vec!["2026-10-01"]),
    ];
    for (props, want) in cases {
        let days =
            read(&calendar(&event(&format!("SUMMARY:补班\n{props}")))).unwrap_or_else(|e| panic!("{props}: {e}"));
        assert_eq!(days.workdays, dates(&want), "{props}");
    }
}

#[test]
fn a_date_both_a_holiday_and_a_workday_names_both_events() {
    let text = calendar(&format!(
        "{}{}",
        event("UID:off-1\nDTSTART;VALUE=DATE:20261001\nDTEND;VALUE=DATE:20261004\nSUMMARY:国庆节 休\n"),
        event("UID:work-1\nDTSTART;VALUE=DATE:20261003\nSUMMARY:国庆节 补班\n"),
    ));
    let message = problems(&text);
    assert_eq!(
        message,
        "2026-10-03 is a holiday in event 1 at line 4 (UID `off-1`, SUMMARY `国庆节 休`) and a make-up working day in \
         event 2 at line 10 (UID `work-1`, SUMMARY `国庆节 补班`)"
    );
}

#[test]
fn malformed_calendars_are_refused_with_the_reason() {
    let ok = "DTSTART;VALUE=DATE:20261001\nSUMMARY:假期\n";
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "not an iCalendar file"),
        ("<!doctype html><html>rate limited</html>".into(), "not an iCalendar file"),
        ("BEGIN:VCARD\nVERSION:4.0\nEND:VCARD\n".into(), "not an iCalendar file"),
        ("BEGIN:VCALENDAR\nVERSION:2.0\nEND:VCALENDAR\n".into(), "has no event"),
        ("BEGIN:VCALENDAR\nBEGIN:VTODO\nSUMMARY:x\nEND:VTODO\nEND:VCALENDAR\n".into(), "has no event"),
        (
            "BEGIN:VCALENDAR\nBEGIN:VEVENT\nSUMMARY:x\nEND:VCALENDAR\n".into(),
            "line 4 (`END:VCALENDAR`): an END that does not match the open BEGIN",
        ),
        ("BEGIN:VCALENDAR\nBEGIN:VEVENT\nSUMMARY x\nEND:VEVENT\nEND:VCALENDAR\n".into(), "line 3"),
        ("BEGIN:VCALENDAR\nBEGIN:VEVENT\n\nEND:VEVENT\nEND:VCALENDAR\n".into(), "line 3: an empty line inside"),
        (
            "BEGIN:VCALENDAR\nBEGIN:VEVENT\n".into(),
            "line 2 (`BEGIN:VEVENT`): the component that begins here cannot be read",
        ),
        (calendar(&event("UID:u1\nSUMMARY:元旦\n")), "event 1 at line 4 (UID `u1`, SUMMARY `元旦`): has no DTSTART"),
        (calendar(&event("SUMMARY:元旦\nDTSTART;VALUE=DATE:2026-10-01\n")), "DTSTART `2026-10-01` is not a date"),
        (calendar(&event("SUMMARY:元旦\nDTSTART;VALUE=DATE:20261301\n")), "DTSTART `20261301` is not a date"),
        (calendar(&event("SUMMARY:元旦\nDTSTART:tomorrow\n")), "neither a date"),
        (calendar(&event("SUMMARY:元旦\nDTSTART;VALUE=DATE:-0261001\n")), "DTSTART `-0261001` is not a date"),
        (calendar(&event("SUMMARY:元旦\nDTSTART:+20261001T090000\n")), "neither a date"),
        (
            calendar(&event("SUMMARY:元旦\nDTSTART;VALUE=DATE:20261005\nDTEND;VALUE=DATE:20261001\n")),
            "ends (2026-10-01) before it starts (2026-10-05)",
        ),
        (calendar(&event("SUMMARY:元旦\nDTSTART:20261005T100000\nDTEND:20261005T090000\n")), "before it starts"),
        (calendar(&event("SUMMARY:元旦\nDTSTART;VALUE=DATE:20260101\nDTEND;VALUE=DATE:20270103\n")), "spans 367 days"),
        (calendar(&event("SUMMARY:元旦\nDTSTART;VALUE=DATE:20260101\nDURATION:P400D\n")), "spans 400 days"),
        (calendar(&event("SUMMARY:元旦\nDTSTART;VALUE=DATE:20260101\nDURATION:-P1D\n")), "is negative"),
        (calendar(&event("SUMMARY:元旦\nDTSTART;VALUE=DATE:20260101\nDURATION:soon\n")), "not an ISO 8601 duration"),
        (
            calendar(&event("SUMMARY:元旦\nDTSTART;VALUE=DATE:20260101\nDTEND;VALUE=DATE:20260102\nDURATION:P1D\n")),
            "both DTEND and DURATION",
        ),
        (
            calendar(&event("SUMMARY:元旦\nDTSTART;VALUE=DATE:20260101\nDTEND:20260102T000000\n")),
            "write both the same way",
        ),
        (
            calendar(&event("SUMMARY:元旦\nDTSTART;TZID=China Standard Time:20260101T090000\n")),
            "TZID `China Standard Time`",
        ),
        (calendar(&event("SUMMARY:元旦\nDTSTART;VALUE=DATE:20260101\nRRULE:FREQ=YEARLY\n")), "repeats (RRULE)"),
        (
            calendar(&event("SUMMARY:Valentine's Day\nDTSTART;VALUE=DATE:20260214\nDESCRIPTION:Observance\n")),
            "all of its 1 events were ignored",
        ),
        (
            calendar(&event(ok)).replace("BEGIN:VCALENDAR", "BEGIN:VCALENDAR\nBEGIN:VEVENT\nEND:VEVENT"),
            "has no DTSTART",
        ),
    ];
    for (text, want) in cases {
        let message = match read(&text) {
            Ok(days) => panic!("{text:?} imports: {days:?}"),
            Err(e) => e.to_string(),
        };
        assert!(message.contains(want), "{text:?}: `{message}` does not contain `{want}`");
    }
}

#[test]
fn every_bad_event_is_reported_up_to_a_limit() {
    let one = calendar(&format!("{}{}", event("SUMMARY:a\n"), event("SUMMARY:b\nDTSTART:x\n")));
    assert_eq!(problems(&one).lines().count(), 2, "{}", problems(&one));
    let many: String = (0..50).map(|i| event(&format!("UID:{i}\nSUMMARY:假期\n"))).collect();
    let message = problems(&calendar(&many));
    assert_eq!(message.lines().count(), MAX_PROBLEMS + 1, "{message}");
    assert!(message.ends_with(&format!("(more problems after the first {MAX_PROBLEMS})")), "{message}");
}

#[test]
fn lines_are_those_of_the_file_as_sent_with_folds() {
    let text = "BEGIN:VCALENDAR\r\nX-WR-CALDESC:a long\r\n  description\r\nBEGIN:VEVENT\r\nSUMMARY:假\r\n 期\r\nEND:VEVENT\r\n\
                BEGIN:VEVENT\r\nSUMMARY:元旦\r\nDTSTART;VALUE=DATE:2026-01-01\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let message = problems(text);
    assert!(message.starts_with("event 1 at line 4 (SUMMARY `假期`): has no DTSTART"), "{message}");
    assert!(message.contains("\nevent 2 at line 8 (SUMMARY `元旦`)"), "{message}");
    let broken = "BEGIN:VCALENDAR\r\nX-WR-CALDESC:a long\r\n  description\r\nBEGIN:VEVENT\r\nSUMMARY no colon\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    assert!(problems(broken).starts_with("not valid iCalendar at line 5 (`SUMMARY no colon`)"), "{}", problems(broken));
}

#[test]
fn text_values_in_messages_are_cleaned_and_shortened() {
    let long = "x".repeat(200);
    let text = calendar(&event(&format!("UID:{long}\nSUMMARY:a\\nb\n")));
    let message = problems(&text);
    assert!(message.contains(&format!("UID `{}…`", "x".repeat(80))), "{message}");
    assert!(message.contains("SUMMARY `a b`"), "{message}");
}

#[test]
fn a_line_folded_inside_a_character_is_unfolded_before_it_is_read() {
    let text = calendar(&event("DTSTART;VALUE=DATE:20261001\nSUMMARY:国庆节 休\n"));
    let at = text.find("庆").expect("in the text") + 1;
    let mut bytes = text.as_bytes()[..at].to_vec();
    bytes.extend_from_slice(b"\r\n ");
    bytes.extend_from_slice(&text.as_bytes()[at..]);
    assert!(std::str::from_utf8(&bytes).is_err());
    let days = parse_bytes(&bytes, &shanghai(), &Classify::default()).expect("imports");
    assert_eq!(days.holidays, dates(&["2026-10-01"]));
    let bad = [b"BEGIN:VCALENDAR\n".as_slice(), &[0xff, 0xfe], b"\n"].concat();
    assert_eq!(parse_bytes(&bad, &shanghai(), &Classify::default()), Err(IcsError::NotUtf8(2)));
}

#[test]
fn blank_lines_around_the_calendar_are_allowed() {
    let text = format!("\r\n{}\r\n\r\n", calendar(&event("DTSTART;VALUE=DATE:20261001\nSUMMARY:国庆节 休\n")));
    assert_eq!(read(&text).map(|d| d.holidays), Ok(dates(&["2026-10-01"])));
}

proptest::proptest! {
    #[test]
    fn parsing_never_panics(text in "\\PC{0,400}") {
        let _ = read(&text);
        let _ = read(&format!("BEGIN:VCALENDAR\n{text}"));
    }

    #[test]
    fn parsing_structured_noise_never_panics(
        start in "[0-9TZ]{0,17}", end in "[0-9TZ]{0,17}", duration in "[-+PTWDHMS0-9]{0,8}",
        value in "(DATE|DATE-TIME|)", tzid in "(Asia/Shanghai|UTC|Nowhere|)", summary in "\\PC{0,12}",
        mark in "(WORK-HOLIDAY|ALTERNATE-WORKDAY|x|)", fold in 0usize..60,
    ) {
        let mut props = format!("SUMMARY:{summary}\nDTSTART;VALUE={value};TZID={tzid}:{start}\n");
        if !end.is_empty() {
            props.push_str(&format!("DTEND;TZID={tzid}:{end}\n"));
        }
        if !duration.is_empty() {
            props.push_str(&format!("DURATION:{duration}\n"));
        }
        if !mark.is_empty() {
            props.push_str(&format!("X-APPLE-SPECIAL-DAY:{mark}\n"));
        }
        let text = calendar(&format!("{}{}", event(&props), event("SUMMARY:补班\nDTSTART:20261010\n")));
        let _ = read(&text);
        let cut = text.char_indices().nth(fold).map_or(text.len(), |(i, _)| i);
        let _ = read(&format!("{}\r\n {}", &text[..cut], &text[cut..]));
    }
}

#[test]
fn a_file_naming_more_dates_than_years_of_holidays_is_refused() {
    let events: String = (0..11)
        .map(|i| event(&format!("UID:{i}\nSUMMARY:假期\nDTSTART;VALUE=DATE:{}0101\nDURATION:P366D\n", 2030 + 2 * i)))
        .collect();
    let message = problems(&calendar(&events));
    assert!(message.starts_with(&format!("the calendar names more than {MAX_DATES} dates (at event 11 ")), "{message}");
}
