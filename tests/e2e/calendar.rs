//! Public-holiday calendars imported through the API of the real daemon (`POST /api/v1/calendar/import`, SPEC 4
//! "Calendar import"): the 2026 calendar of mainland China as a calendar app exports it joins the rules, keeping the
//! admin's comments; a bad file, or a caller who is not an admin, changes nothing. Then live, with a shift whose window
//! closes during the test: an imported holiday on a working day raises no absence and a punch on it is
//! `rest_day_work`; an imported make-up day on a group's rest day raises `absent` at the window's close; and the month
//! summary covers the attendance cycle that starts in the month (`[reports] cycle_start_day`).
//!
//! A date's rules are fixed once one of its windows has closed, so each live case runs its own daemon.

use std::path::PathBuf;
use std::time::Duration;

use gatewayd::reconcile::rules::Rules;
use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp};

use crate::harness::{base_config, http_bytes, upload_attlog, wait_until, Gateway};

const LIMIT: Duration = Duration::from_secs(30);
const SN: &str = "CALENDAR01";

fn calendar_2026() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/cn-public-holidays-2026.ics");
    std::fs::read(path).unwrap()
}

/// A request with an optional token: (status, body as JSON, or the text when it is not JSON).
fn call(gw: &Gateway, method: &str, path: &str, token: &str, body: Option<Vec<u8>>) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    let (status, bytes) = http_bytes(method, gw.addr("api"), path, &[("Authorization", &auth)], body);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

fn import(gw: &Gateway, token: &str, query: &str, ics: impl Into<Vec<u8>>) -> (u16, serde_json::Value) {
    call(gw, "POST", &format!("/api/v1/calendar/import{query}"), token, Some(ics.into()))
}

/// `GET /api/v1/rules`: (version, text).
fn rules_view(gw: &Gateway, admin: &str) -> (u64, String) {
    let (status, v) = call(gw, "GET", "/api/v1/rules", admin, None);
    assert_eq!(status, 200, "{v}");
    (v["version"].as_u64().unwrap(), v["text"].as_str().unwrap().to_owned())
}

fn wait_rules_version(gw: &Gateway, admin: &str, version: u64) -> String {
    let what = format!("rules version {version} in force");
    wait_until(&what, LIMIT, || rules_view(gw, admin), |(v, _)| *v == version).1
}

fn dates(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_owned()).collect()
}

fn day(text: &str) -> Date {
    text.parse().unwrap()
}

const RULES_2026: &str = "# Site rules, kept by HR.\n\
    [[shift]]\nid = \"day\"\nstart = \"09:00\"\nend = \"18:00\"\n\n\
    [[group]]\nid = \"office\"\ndepartments = [\"D-A\"]\nshift = \"day\"\n\n\
    # The public holidays.\n[calendar]\nholidays = [\"2026-10-01\"]   # National Day\n\
    workdays = [\"2026-10-07\"]\n";

#[test]
fn a_public_holiday_calendar_joins_the_rules_and_a_bad_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), RULES_2026).unwrap();
    std::fs::write(dir.path().join("roster.csv"), "employee,name,department\nE1,Li Wei,D-A\n").unwrap();
    let config =
        format!("{}[rules]\nfile = \"rules.toml\"\n\n[roster]\nfile = \"roster.csv\"\n", base_config("cal-gw"));
    let gw = Gateway::start_in(dir, &config);
    let admin = gw.token(&["--role", "admin"]);
    let manager = gw.token(&["--role", "manager", "--department", "D-A"]);
    let employee = gw.token(&["--role", "employee", "--employee", "E1"]);
    let before = rules_view(&gw, &admin);
    assert_eq!(before.1, RULES_2026);

    // Refused, and nothing changes.
    let conflict = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:off-1\r\nDTSTART;VALUE=DATE:20261001\r\n\
                    DTEND;VALUE=DATE:20261004\r\nSUMMARY:国庆节 休\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:work-1\r\n\
                    DTSTART;VALUE=DATE:20261003\r\nSUMMARY:国庆节 补班\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let too_long = "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:long\nSUMMARY:春节 休\nDTSTART;VALUE=DATE:20260215\n\
                    DURATION:P400D\nEND:VEVENT\nEND:VCALENDAR\n";
    let mut not_utf8 = b"BEGIN:VCALENDAR\nBEGIN:VEVENT\nSUMMARY:".to_vec();
    not_utf8.extend_from_slice(&[0xb9, 0xfa, 0xc7, 0xec]); // 国庆 in GB2312
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("", b"<html>not found</html>".to_vec(), "calendar: not an iCalendar file"),
        ("", b"BEGIN:VCALENDAR\nVERSION:2.0\nEND:VCALENDAR\n".to_vec(), "calendar: the calendar has no event (VEVENT)"),
        (
            "",
            conflict.into(),
            "calendar: 2026-10-03 is a holiday in event 1 at line 3 (UID `off-1`, SUMMARY `国庆节 休`) and a make-up \
             working day in event 2 at line 9 (UID `work-1`, SUMMARY `国庆节 补班`)",
        ),
        ("", too_long.into(), "calendar: event 1 at line 2 (UID `long`, SUMMARY `春节 休`): spans 400 days"),
        ("", not_utf8, "calendar: not UTF-8 text (line 3)"),
        ("?holiday_keywords=,", calendar_2026(), "holiday_keywords: give at least one keyword"),
        ("?colour=red", calendar_2026(), "unknown field `colour`"),
    ];
    for (query, body, want) in bad {
        let (status, v) = import(&gw, &admin, query, body);
        assert_eq!(status, 400, "{want}: {v}");
        let message = v["error"].as_str().unwrap();
        assert!(message.contains(want), "`{message}` does not contain `{want}`");
    }
    for token in [&manager, &employee] {
        let (status, v) = import(&gw, token, "", calendar_2026());
        assert_eq!(status, 403, "{v}");
    }
    assert_eq!(rules_view(&gw, &admin), before, "a refused import changed the rules");
    assert!(!gw.data_dir().join("api-rules.toml").exists(), "a refused import wrote the rules");

    // The 2026 calendar: 33 days off (2026-10-01 already listed, 2026-10-07 moved out of workdays), six make-up
    // working days on weekends (2026-02-14 written 09:00 to 18:00), Women's Day ignored as an observance.
    let (status, v) = import(&gw, &admin, "", calendar_2026());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["calendar"], "中国法定节假日 2026");
    assert_eq!(dates(&v["holidays"]["already_present"]), ["2026-10-01"]);
    assert_eq!(dates(&v["holidays"]["moved"]), ["2026-10-07"]);
    assert_eq!(dates(&v["holidays"]["added"]).len(), 31, "{v}");
    let workdays = ["2026-01-04", "2026-02-14", "2026-02-28", "2026-05-09", "2026-09-20", "2026-10-10"];
    assert_eq!(dates(&v["workdays"]["added"]), workdays);
    assert_eq!(v["ignored"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(
        v["ignored"][0]["event"],
        "event 6 at line 77 (UID `2026-womens-day@holidays.example.cn`, SUMMARY `妇女节`)"
    );
    assert_eq!(v["written"], gw.data_dir().join("api-rules.toml").display().to_string());
    assert_eq!(v["reloading"], true);

    let text = wait_rules_version(&gw, &admin, before.0 + 1);
    assert!(text.starts_with("# Site rules, kept by HR.\n"), "{text}");
    assert!(text.contains("# The public holidays.\n[calendar]\n"), "{text}");
    assert!(text.contains("]   # National Day\n"), "{text}");
    assert!(text.contains("# imported "), "{text}");
    let rules = Rules::parse(std::path::Path::new("rules.toml"), &text).unwrap();
    assert_eq!(rules.holidays.len(), 33);
    assert!(rules.holidays.contains(&day("2026-10-07")) && rules.holidays.contains(&day("2026-02-15")));
    assert_eq!(rules.makeup_workdays, workdays.iter().map(|d| day(d)).collect());

    // Again: every date is already there, nothing is written.
    let (status, v) = import(&gw, &admin, "", calendar_2026());
    assert_eq!(status, 200, "{v}");
    assert_eq!(dates(&v["holidays"]["already_present"]).len(), 33);
    assert_eq!(dates(&v["holidays"]["added"]).len() + dates(&v["workdays"]["added"]).len(), 0);
    assert_eq!((&v["written"], &v["reloading"]), (&serde_json::Value::Null, &serde_json::json!(false)));
    assert_eq!(rules_view(&gw, &admin).0, before.0 + 1);

    // Every attempt is in the audit log, refused ones included.
    let (status, audit) = call(&gw, "GET", "/api/v1/audit", &admin, None);
    assert_eq!(status, 200);
    let outcomes: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "POST /api/v1/calendar/import")
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["400", "400", "400", "400", "400", "400", "400", "403", "403", "200", "200"]);
}

/// The records of `date` through the API.
fn records_of(gw: &Gateway, admin: &str, date: Date) -> Vec<serde_json::Value> {
    let (status, v) = call(gw, "GET", &format!("/api/v1/records?from={date}&to={date}"), admin, None);
    assert_eq!(status, 200, "{v}");
    v["records"].as_array().unwrap().clone()
}

fn record<'a>(records: &'a [serde_json::Value], employee: &str) -> Option<&'a serde_json::Value> {
    records.iter().find(|r| r["employee_id"] == employee)
}

fn statuses(r: &serde_json::Value) -> Vec<String> {
    r["statuses"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
}

/// A live site, the engine ticking every 200 ms: one short shift today whose window closes 25 s after the start, for
/// group `all-week` (E1, E2: today is one of its working days) and group `weekdays` (E3: today is one of its rest
/// days). `calendar` is the rules' `[calendar]` table, `cycle_start_day` their `[reports]`.
struct Live {
    gw: Gateway,
    admin: String,
    today: Date,
    tz: jiff::tz::TimeZone,
    start: Timestamp,
    close: Timestamp,
}

impl Live {
    fn start(id: &str, calendar: &str, cycle_start_day: i8) -> Live {
        let zone = crate::engine::daytime_zone();
        let tz = jiff::tz::TimeZone::get(zone).unwrap();
        let close = Timestamp::from_second(Timestamp::now().as_second() + 25).unwrap();
        let (start, end) = (close - SignedDuration::from_mins(3), close - SignedDuration::from_mins(1));
        let hms = |t: Timestamp| t.to_zoned(tz.clone()).strftime("%H:%M:%S").to_string();
        let today = start.to_zoned(tz.clone()).date();
        let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let not_today: Vec<String> = days
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != today.weekday().to_monday_zero_offset() as usize)
            .map(|(_, d)| format!("\"{d}\""))
            .collect();
        let rules = format!(
            "# Live rules for the calendar tests.\n\
             [[shift]]\nid = \"short\"\nstart = \"{}\"\nend = \"{}\"\nopens_before = \"1h\"\ncloses_after = \"1m\"\n\n\
             [[group]]\nid = \"all-week\"\ndepartments = [\"D-A\"]\nshift = \"short\"\n\
             workdays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n\n\
             [[group]]\nid = \"weekdays\"\ndepartments = [\"D-B\"]\nshift = \"short\"\nworkdays = [{}]\n\n\
             {calendar}\n[reports]\ncycle_start_day = {cycle_start_day} # the site's payroll month\n",
            hms(start),
            hms(end),
            not_today.join(", "),
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.toml"), &rules).unwrap();
        std::fs::write(
            dir.path().join("roster.csv"),
            "employee,name,department\nE1,Li Wei,D-A\nE2,Wang Fang,D-A\nE3,Zhang Min,D-B\n",
        )
        .unwrap();
        let config = format!(
            "{}[[device]]\nid = \"zk\"\ndriver = \"adms\"\nserial_number = \"{SN}\"\n\n\
             [rules]\nfile = \"rules.toml\"\n\n[roster]\nfile = \"roster.csv\"\n",
            base_config(id)
        )
        .replace("Asia/Shanghai", zone)
        .replace("[api]\n", "[api]\nrate_per_sec = 1000\nrate_burst = 1000\n");
        let gw = Gateway::start_in_env(dir, &config, &[("GATEWAYD_ENGINE_TICK_MS", "200")]);
        let admin = gw.token(&["--role", "admin"]);
        Live { gw, admin, today, tz, start, close }
    }

    /// Imports `calendar` and waits until the rules it wrote are in force.
    fn import(&self, calendar: String) -> serde_json::Value {
        let version = rules_view(&self.gw, &self.admin).0;
        let (status, v) = import(&self.gw, &self.admin, "", calendar);
        assert_eq!(status, 200, "{v}");
        let text = wait_rules_version(&self.gw, &self.admin, version + 1);
        assert!(text.starts_with("# Live rules for the calendar tests.\n"), "{text}");
        assert!(Timestamp::now() < self.close, "the daemon took too long to start for this test");
        v
    }

    /// Today's records once `done` holds for them, after the window's close.
    fn records_after_close(&self, what: &str, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let records = wait_until(what, LIMIT, || records_of(&self.gw, &self.admin, self.today), |r| done(r));
        assert!(Timestamp::now() >= self.close, "{what} before the window closed: {records:?}");
        records
    }
}

/// A calendar of one all-day event per (date, summary), as a calendar app writes it.
fn ics(events: &[(Date, &str)]) -> String {
    let mut out = String::from(
        "BEGIN:VCALENDAR\r\nPRODID:-//gatewayd tests//EN\r\nVERSION:2.0\r\nCALSCALE:GREGORIAN\r\nX-WR-CALNAME:Site days\r\n",
    );
    for (i, (date, summary)) in events.iter().enumerate() {
        let (start, end) = (date.strftime("%Y%m%d"), date.tomorrow().unwrap().strftime("%Y%m%d"));
        out.push_str(&format!(
            "BEGIN:VEVENT\r\nUID:{i}@tests\r\nDTSTAMP:20260101T000000Z\r\nDTSTART;VALUE=DATE:{start}\r\n\
             DTEND;VALUE=DATE:{end}\r\nSUMMARY:{summary}\r\nTRANSP:TRANSPARENT\r\nEND:VEVENT\r\n"
        ));
    }
    out.push_str("END:VCALENDAR\r\n");
    out
}

fn days_from(date: Date, days: i64) -> Date {
    date.checked_add(jiff::Span::new().days(days)).unwrap()
}

/// SPEC 4: a holiday raises no absence, and work on it is `rest_day_work`. An imported calendar makes today, a working
/// day of group `all-week`, a holiday: at the window's close E1 (no punch) has no record and E2's punch is
/// `rest_day_work`.
#[test]
fn an_imported_holiday_on_a_working_day_raises_no_absence() {
    let live = Live::start("cal-holiday", "[calendar]\nholidays = []\n", 1);
    let today = live.today;
    let v = live.import(ics(&[(today, "站点日 休"), (days_from(today, 7), "站点日 补班")]));
    assert_eq!(dates(&v["holidays"]["added"]), [today.to_string()]);
    assert_eq!(dates(&v["workdays"]["added"]), [days_from(today, 7).to_string()]);
    // E2 clocks in a minute before the shift (a ZKTeco terminal's upload).
    let punch_at = (live.start - SignedDuration::from_mins(1)).to_zoned(live.tz.clone()).strftime("%Y-%m-%d %H:%M:%S");
    upload_attlog(&live.gw, SN, 1, format!("E2\t{punch_at}\t0\t15\n"));

    let records = live.records_after_close("E2's record closed at the window's close", |r| {
        record(r, "E2").is_some_and(|e| e["closed"] == true)
    });
    let e2 = record(&records, "E2").unwrap();
    assert!(statuses(e2).contains(&"rest_day_work".to_owned()), "{e2}");
    assert!(!statuses(e2).iter().any(|s| s == "absent" || s == "missing_out"), "{e2}");
    // E2's closed record and E1's absence would come in the same engine batch: E1 has none.
    assert_eq!(record(&records, "E1"), None, "no absence on a holiday: {records:?}");
    assert_eq!(record(&records, "E3"), None, "{records:?}");
}

/// SPEC 4: a make-up working day raises `absent` at the window's close like any working day. The rules list today as
/// a holiday; an imported calendar makes it a make-up working day (the date moves out of `holidays`): E3, whose group
/// rests on today's weekday, is absent at the close. The month summary then covers the attendance cycle that starts
/// in the month (`[reports] cycle_start_day`): today is counted in exactly one of two consecutive months.
#[test]
fn an_imported_make_up_day_on_a_rest_day_raises_absent_at_the_close() {
    let today = Timestamp::now().to_zoned(jiff::tz::TimeZone::get(crate::engine::daytime_zone()).unwrap()).date();
    // The cycle starts the day after today (today belongs to the one that started last month), or on the 2nd.
    let start_day = if today.day() < 28 { today.day() + 1 } else { 2 };
    let live = Live::start("cal-makeup", &format!("[calendar]\nholidays = [\"{today}\"] # by mistake\n"), start_day);
    assert_eq!(live.today, today, "the test started at midnight");
    let v = live.import(ics(&[(days_from(today, -7), "站点日 休"), (today, "站点日 补班")]));
    assert_eq!(dates(&v["workdays"]["moved"]), [today.to_string()]);
    assert_eq!(dates(&v["holidays"]["added"]), [days_from(today, -7).to_string()]);

    let records = live.records_after_close("E3 absent at the window's close", |r| {
        record(r, "E3").is_some_and(|e| statuses(e) == ["absent"])
    });
    let after_close = Timestamp::now().duration_since(live.close);
    assert!(after_close < SignedDuration::from_secs(10), "absent {after_close:?} after the close");
    let e3 = record(&records, "E3").unwrap();
    assert_eq!((e3["shift_id"].as_str(), e3["closed"].as_bool()), (Some("short"), Some(true)), "{e3}");

    let cycle = |first: Date| {
        let from = first.with().day(start_day).build().unwrap();
        (from, from.checked_add(jiff::Span::new().months(1)).unwrap().yesterday().unwrap())
    };
    let this_month = today.first_of_month();
    let last_month = this_month.checked_sub(jiff::Span::new().months(1)).unwrap();
    let (holding, other) = if today.day() >= start_day { (this_month, last_month) } else { (last_month, this_month) };
    for (month, counted) in [(holding, true), (other, false)] {
        let path = format!("/api/v1/reports/summary?month={}", month.strftime("%Y-%m"));
        let (status, v) = call(&live.gw, "GET", &path, &live.admin, None);
        assert_eq!(status, 200, "{v}");
        let (from, to) = cycle(month);
        assert_eq!((v["from"].as_str(), v["to"].as_str()), (Some(&*from.to_string()), Some(&*to.to_string())), "{v}");
        assert_eq!(counted, (from..=to).contains(&today));
        let n = v["records"].as_u64().unwrap();
        assert!(if counted { n >= 1 } else { n == 0 }, "{month}: {v}");
    }
}
