//! Table-driven tests for every rule of SPEC section 4, and property tests for order, duplication and restart invariance.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use drivers::sink::{GeoPoint, Subject};
use drivers::Method;
use jiff::tz::TimeZone;
use proptest::prelude::*;

use super::engine::{Engine, EngineSettings, Input, StoredDay, Watermarks};
use crate::proto::upstream::{AttendanceRecord, Punch as UpPunch};
use crate::punch::Punch;
use crate::reconcile::changes::Change;
use crate::reconcile::roster::Roster;
use crate::reconcile::rules::Rules;

mod fences;
mod plans;

const RULES: &str = r#"
dedupe_window = "5m"
max_clock_skew = "5m"

[[shift]]
id = "day"
start = "09:00"
end = "18:00"
late_grace = "10m"
early_grace = "0m"
opens_before = "2h"
closes_after = "6h"
overtime_after = "30m"

[[shift]]
id = "night"
start = "22:00"
end = "06:00"
late_grace = "10m"
opens_before = "2h"
closes_after = "4h"
overtime_after = "30m"

[[group]]
id = "office"
departments = ["D-DAY"]
shift = "day"
workdays = ["mon", "tue", "wed", "thu", "fri"]

[[group]]
id = "nights"
departments = ["D-NIGHT"]
shift = "night"
workdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

[[group]]
id = "dual"
departments = ["D-DUAL"]
shift = "day"
verification = { require = ["fingerprint", "card"], window = "20m" }

[[group]]
id = "dual15"
departments = ["D-DUAL15"]
shift = "day"
verification = { require = ["fingerprint", "card"], window = "15m" }

[[group]]
id = "field"
departments = ["D-GEO"]
shift = "day"
geofence = { center = [31.2304, 121.4737], radius_m = 200 }

[[group]]
id = "yard"
departments = ["D-POLY"]
shift = "day"
geofence = { polygon = [[31.0, 121.0], [31.0, 121.01], [31.01, 121.01], [31.01, 121.0]] }

[[group]]
id = "line"
departments = ["D-ROT"]
rotation = { pattern = ["day", "day", "night", "night", "off", "off"], starts = "2026-11-02" }
workdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

[calendar]
holidays = ["2026-10-01"]
workdays = ["2026-10-10"]
"#;

const ROSTER: &str = "employee,name,department,card,fingerprint,face,pin,manages\n\
E-DAY,Day Worker,D-DAY,0A0A0A01,,face-day,101,\n\
E-NIGHT,Night Worker,D-NIGHT,0A0A0A02,,,102,\n\
E-DUAL,Dual Worker,D-DUAL,0A0A0A03,line1-fp:3,,103,\n\
E-DUAL15,Dual Worker 15,D-DUAL15,0A0A0A04,4,,104,\n\
E-GEO,Field Worker,D-GEO,,,,105,\n\
E-POLY,Yard Worker,D-POLY,,,,106,\n\
E-ROT,Line Worker,D-ROT,,,,107,\n\
M-1,Manager,D-ADMIN,,,,900,D-GEO|D-DAY\n";

fn tz() -> TimeZone {
    TimeZone::get("Asia/Shanghai").unwrap()
}

/// Unix ms of a site-local `YYYY-MM-DDTHH:MM[:SS]`.
fn at(local: &str) -> i64 {
    let dt: jiff::civil::DateTime = local.parse().unwrap();
    tz().to_timestamp(dt).unwrap().as_millisecond()
}

fn rules(text: &str) -> Arc<Rules> {
    Arc::new(Rules::parse(Path::new("rules.toml"), text).unwrap_or_else(|p| panic!("{p:?}")))
}

fn roster(text: &str) -> Arc<Roster> {
    Arc::new(Roster::parse_csv(text).unwrap())
}

fn engine_with(rules_text: &str, roster_text: &str) -> Engine {
    let settings = EngineSettings { gateway_id: "gw".into(), tz: tz() };
    let mut versions = BTreeMap::new();
    versions.insert(1, rules(rules_text));
    Engine::new(settings, Watermarks::default(), versions, 1, roster(roster_text))
}

fn engine() -> Engine {
    engine_with(RULES, ROSTER)
}

/// A punch by an employee id (`E…`) or a credential (anything else), received when it happened.
fn punch(seq: u64, who: &str, method: Method, local: &str) -> Punch {
    let t = at(local);
    let subject = if who.starts_with('E') { Subject::Employee(who.into()) } else { Subject::Credential(who.into()) };
    Punch {
        seq,
        punch_id: format!("gw:dev:{seq}"),
        device_id: "dev".into(),
        driver: "test".into(),
        device_seq: Some(seq),
        method,
        subject,
        device_time_ms: t,
        received_time_ms: t,
        realtime: true,
        geo: None,
        score: None,
        attributes: vec![],
    }
}

/// Latest revision of every record in a change stream.
fn latest(changes: &[Change]) -> BTreeMap<String, AttendanceRecord> {
    let mut out = BTreeMap::new();
    for c in changes {
        if let Change::Record(r) = c {
            out.insert(r.record_id.clone(), r.clone());
        }
    }
    out
}

fn punches_out(changes: &[Change]) -> Vec<UpPunch> {
    changes.iter().filter_map(|c| if let Change::Punch(p) = c { Some(p.clone()) } else { None }).collect()
}

fn days_closed(changes: &[Change]) -> Vec<String> {
    changes.iter().filter_map(|c| if let Change::DayClosed(d) = c { Some(d.clone()) } else { None }).collect()
}

/// Runs punches through a fresh engine (first tick just before the first punch's date), then ticks to `now`.
fn run(punches: Vec<Punch>, now: &str) -> (Engine, Vec<Change>) {
    let mut e = engine();
    let mut all = e.apply(Input::Tick(at("2026-09-01T00:00")));
    all.extend(e.apply_batch(punches.into_iter().map(Input::Punch)));
    all.extend(e.apply(Input::Tick(at(now))));
    (e, all)
}

fn record_of<'a>(
    records: &'a BTreeMap<String, AttendanceRecord>,
    employee: &str,
    date: &str,
) -> Option<&'a AttendanceRecord> {
    records.values().find(|r| r.employee_id == employee && r.work_date == date)
}

/// What a table row expects of a record.
#[derive(Debug, PartialEq)]
struct Expect {
    clock_in: Option<String>,
    clock_out: Option<String>,
    statuses: Vec<String>,
    late: i32,
    early: i32,
    worked: i32,
    overtime: i32,
}

fn expect(clock_in: Option<&str>, clock_out: Option<&str>, statuses: &[&str]) -> Expect {
    Expect {
        clock_in: clock_in.map(str::to_owned),
        clock_out: clock_out.map(str::to_owned),
        statuses: statuses.iter().map(|s| (*s).to_owned()).collect(),
        late: 0,
        early: 0,
        worked: 0,
        overtime: 0,
    }
}

fn observed(r: &AttendanceRecord) -> Expect {
    let fmt = |ms: Option<i64>| {
        ms.map(|m| {
            jiff::Timestamp::from_millisecond(m).unwrap().to_zoned(tz()).strftime("%Y-%m-%dT%H:%M:%S").to_string()
        })
    };
    Expect {
        clock_in: fmt(r.clock_in_ms),
        clock_out: fmt(r.clock_out_ms),
        statuses: r.statuses.clone(),
        late: r.late_minutes,
        early: r.early_leave_minutes,
        worked: r.worked_minutes,
        overtime: r.overtime_minutes,
    }
}

struct Row {
    name: &'static str,
    employee: &'static str,
    punches: &'static [(Method, &'static str)],
    date: &'static str,
    /// Tick to this time before reading (the window of the day shift closes at 24:00).
    now: &'static str,
    want: Option<Expect>,
}

#[test]
fn table_of_rules() {
    use Method::{Card, Face, Fingerprint as Fp};
    const MON: &str = "2026-11-23";
    const CLOSED: &str = "2026-11-25T12:00";
    const OPEN: &str = "2026-11-23T20:00";
    let rows = vec![
        Row {
            name: "on time, no overtime before overtime_after",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-23T08:55"), (Face, "2026-11-23T18:05")],
            date: MON,
            now: CLOSED,
            want: Some(Expect { worked: 550, ..expect(Some("2026-11-23T08:55:00"), Some("2026-11-23T18:05:00"), &[]) }),
        },
        Row {
            name: "exactly at the grace end is on time",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-23T09:10:00"), (Face, "2026-11-23T18:00")],
            date: MON,
            now: CLOSED,
            want: Some(Expect { worked: 530, ..expect(Some("2026-11-23T09:10:00"), Some("2026-11-23T18:00:00"), &[]) }),
        },
        Row {
            name: "one second after the grace is late, whole minutes from start rounded down (SPEC: 09:10:01 -> 10)",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-23T09:10:01"), (Face, "2026-11-23T18:00")],
            date: MON,
            now: CLOSED,
            want: Some(Expect {
                late: 10,
                worked: 529,
                ..expect(Some("2026-11-23T09:10:01"), Some("2026-11-23T18:00:00"), &["late"])
            }),
        },
        Row {
            name: "late minutes round down: 09:59:59 is 59 minutes late",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-23T09:59:59"), (Face, "2026-11-23T18:00")],
            date: MON,
            now: CLOSED,
            want: Some(Expect {
                late: 59,
                worked: 480,
                ..expect(Some("2026-11-23T09:59:59"), Some("2026-11-23T18:00:00"), &["late"])
            }),
        },
        Row {
            name: "early leave minutes round up: out at 17:59:59 is one minute early",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-23T09:00"), (Face, "2026-11-23T17:59:59")],
            date: MON,
            now: CLOSED,
            want: Some(Expect {
                early: 1,
                worked: 539,
                ..expect(Some("2026-11-23T09:00:00"), Some("2026-11-23T17:59:59"), &["early_leave"])
            }),
        },
        Row {
            name: "overtime minutes round down: out at 18:45:59 is 45 minutes",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-23T09:00"), (Face, "2026-11-23T18:45:59")],
            date: MON,
            now: CLOSED,
            want: Some(Expect {
                overtime: 45,
                worked: 585,
                ..expect(Some("2026-11-23T09:00:00"), Some("2026-11-23T18:45:59"), &["overtime"])
            }),
        },
        Row {
            name: "early leave",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-23T09:00"), (Face, "2026-11-23T17:30")],
            date: MON,
            now: CLOSED,
            want: Some(Expect {
                early: 30,
                worked: 510,
                ..expect(Some("2026-11-23T09:00:00"), Some("2026-11-23T17:30:00"), &["early_leave"])
            }),
        },
        Row {
            name: "overtime counts from end once clock-out reaches end + overtime_after",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-23T09:00"), (Face, "2026-11-23T18:30")],
            date: MON,
            now: CLOSED,
            want: Some(Expect {
                overtime: 30,
                worked: 570,
                ..expect(Some("2026-11-23T09:00:00"), Some("2026-11-23T18:30:00"), &["overtime"])
            }),
        },
        Row {
            name: "one second short of overtime_after is no overtime",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-23T09:00"), (Face, "2026-11-23T18:29:59")],
            date: MON,
            now: CLOSED,
            want: Some(Expect { worked: 569, ..expect(Some("2026-11-23T09:00:00"), Some("2026-11-23T18:29:59"), &[]) }),
        },
        Row {
            name: "clock-in only: missing_out once the window closed",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-23T09:00")],
            date: MON,
            now: CLOSED,
            want: Some(expect(Some("2026-11-23T09:00:00"), None, &["missing_out"])),
        },
        Row {
            name: "clock-in only: nothing missing while the window is open",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-23T09:00")],
            date: MON,
            now: OPEN,
            want: Some(expect(Some("2026-11-23T09:00:00"), None, &[])),
        },
        Row {
            name: "a single late punch is a (very late) clock-in and no clock-out",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-23T18:05")],
            date: MON,
            now: CLOSED,
            want: Some(Expect { late: 545, ..expect(Some("2026-11-23T18:05:00"), None, &["late", "missing_out"]) }),
        },
        Row {
            name: "no punch on a workday: absent",
            employee: "E-DAY",
            punches: &[],
            date: MON,
            now: CLOSED,
            want: Some(expect(None, None, &["absent"])),
        },
        Row {
            name: "no punch: absent as soon as the day window closes (24:00), before Monday's night window (10:00 Tuesday)",
            employee: "E-DAY",
            punches: &[],
            date: MON,
            now: "2026-11-24T00:00:01",
            want: Some(expect(None, None, &["absent"])),
        },
        Row {
            name: "no punch: nothing while the day window is open",
            employee: "E-DAY",
            punches: &[],
            date: MON,
            now: "2026-11-23T23:59:59",
            want: None,
        },
        Row {
            name: "no punch on a night shift: absent when the night window closes (10:00 the next day)",
            employee: "E-NIGHT",
            punches: &[],
            date: MON,
            now: "2026-11-24T10:00:01",
            want: Some(expect(None, None, &["absent"])),
        },
        Row {
            name: "no punch on a night shift: nothing at 09:59 the next day (the window is open)",
            employee: "E-NIGHT",
            punches: &[],
            date: MON,
            now: "2026-11-24T09:59:00",
            want: None,
        },
        Row {
            name: "dual verification, one factor only: missing_in and missing_out at the day window's close",
            employee: "E-DUAL",
            punches: &[(Card, "2026-11-23T09:00")],
            date: MON,
            now: "2026-11-24T00:00:01",
            want: Some(expect(None, None, &["missing_in", "missing_out", "single_factor"])),
        },
        Row {
            name: "rotation: a day-shift day of the rotation is absent at the day window's close",
            employee: "E-ROT",
            punches: &[],
            date: "2026-11-26",
            now: "2026-11-27T00:00:01",
            want: Some(expect(None, None, &["absent"])),
        },
        Row {
            name: "a Sunday raises nothing when its window closes",
            employee: "E-DAY",
            punches: &[],
            date: "2026-11-22",
            now: "2026-11-23T00:00:01",
            want: None,
        },
        Row {
            name: "a holiday raises nothing when its window closes",
            employee: "E-DAY",
            punches: &[],
            date: "2026-10-01",
            now: "2026-10-02T00:00:01",
            want: None,
        },
        Row {
            name: "punches outside the window belong to no record",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-23T06:59:59")],
            date: MON,
            now: CLOSED,
            want: Some(expect(None, None, &["absent"])),
        },
        Row {
            name: "no punch on a Sunday: no record",
            employee: "E-DAY",
            punches: &[],
            date: "2026-11-22",
            now: CLOSED,
            want: None,
        },
        Row {
            name: "work on a Saturday is rest_day_work and counts as overtime",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-21T10:00"), (Face, "2026-11-21T14:00")],
            date: "2026-11-21",
            now: CLOSED,
            want: Some(Expect {
                worked: 240,
                overtime: 240,
                ..expect(Some("2026-11-21T10:00:00"), Some("2026-11-21T14:00:00"), &["overtime", "rest_day_work"])
            }),
        },
        Row {
            name: "a holiday on a weekday raises no absent",
            employee: "E-DAY",
            punches: &[],
            date: "2026-10-01",
            now: "2026-10-03T00:00",
            want: None,
        },
        Row {
            name: "work on a holiday on a weekday is rest_day_work, never late",
            employee: "E-DAY",
            punches: &[(Face, "2026-10-01T11:00"), (Face, "2026-10-01T12:00")],
            date: "2026-10-01",
            now: "2026-10-03T00:00",
            want: Some(Expect {
                worked: 60,
                overtime: 60,
                ..expect(Some("2026-10-01T11:00:00"), Some("2026-10-01T12:00:00"), &["overtime", "rest_day_work"])
            }),
        },
        Row {
            name: "a make-up workday on a Saturday: absent without punches",
            employee: "E-DAY",
            punches: &[],
            date: "2026-10-10",
            now: "2026-10-12T00:00",
            want: Some(expect(None, None, &["absent"])),
        },
        Row {
            name: "a make-up workday on a Saturday: late like any workday",
            employee: "E-DAY",
            punches: &[(Face, "2026-10-10T09:30"), (Face, "2026-10-10T18:00")],
            date: "2026-10-10",
            now: "2026-10-12T00:00",
            want: Some(Expect {
                late: 30,
                worked: 510,
                ..expect(Some("2026-10-10T09:30:00"), Some("2026-10-10T18:00:00"), &["late"])
            }),
        },
        Row {
            name: "duplicates within dedupe_window are merged: the second punch is not the clock-out",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-23T09:00"), (Face, "2026-11-23T09:04")],
            date: MON,
            now: CLOSED,
            want: Some(expect(Some("2026-11-23T09:00:00"), None, &["missing_out"])),
        },
        Row {
            name: "merging is per method: a card right after a face punch is kept",
            employee: "E-DAY",
            punches: &[(Face, "2026-11-23T09:00"), (Card, "2026-11-23T09:01")],
            date: MON,
            now: CLOSED,
            want: Some(Expect {
                worked: 1,
                early: 539,
                ..expect(Some("2026-11-23T09:00:00"), Some("2026-11-23T09:01:00"), &["early_leave"])
            }),
        },
        Row {
            name: "night shift across midnight belongs to its start date",
            employee: "E-NIGHT",
            punches: &[(Face, "2026-11-23T21:55"), (Face, "2026-11-24T06:10")],
            date: MON,
            now: CLOSED,
            want: Some(Expect { worked: 495, ..expect(Some("2026-11-23T21:55:00"), Some("2026-11-24T06:10:00"), &[]) }),
        },
        Row {
            name: "night shift across a month end",
            employee: "E-NIGHT",
            punches: &[(Face, "2026-11-30T22:12"), (Face, "2026-12-01T06:45")],
            date: "2026-11-30",
            now: "2026-12-02T00:00",
            want: Some(Expect {
                late: 12,
                worked: 513,
                overtime: 45,
                ..expect(Some("2026-11-30T22:12:00"), Some("2026-12-01T06:45:00"), &["late", "overtime"])
            }),
        },
        Row {
            name: "dual verification: fingerprint 08:50 + card 09:06 verified (window 20m), clock-in at the first factor",
            employee: "E-DUAL",
            punches: &[
                (Fp, "2026-11-23T08:50"),
                (Card, "2026-11-23T09:06"),
                (Fp, "2026-11-23T18:00"),
                (Card, "2026-11-23T18:02"),
            ],
            date: MON,
            now: CLOSED,
            want: Some(Expect { worked: 552, ..expect(Some("2026-11-23T08:50:00"), Some("2026-11-23T18:02:00"), &[]) }),
        },
        Row {
            name: "dual verification: fingerprint 09:10:00 + card 09:10:30 is on time (the first factor is the clock-in)",
            employee: "E-DUAL",
            punches: &[
                (Fp, "2026-11-23T09:10:00"),
                (Card, "2026-11-23T09:10:30"),
                (Fp, "2026-11-23T18:00"),
                (Card, "2026-11-23T18:01"),
            ],
            date: MON,
            now: CLOSED,
            want: Some(Expect { worked: 531, ..expect(Some("2026-11-23T09:10:00"), Some("2026-11-23T18:01:00"), &[]) }),
        },
        Row {
            name: "dual verification: fingerprint 09:10:01 + card 09:11:00 is 10 minutes late, not 11",
            employee: "E-DUAL",
            punches: &[
                (Fp, "2026-11-23T09:10:01"),
                (Card, "2026-11-23T09:11:00"),
                (Fp, "2026-11-23T18:00"),
                (Card, "2026-11-23T18:01"),
            ],
            date: MON,
            now: CLOSED,
            want: Some(Expect {
                late: 10,
                worked: 530,
                ..expect(Some("2026-11-23T09:10:01"), Some("2026-11-23T18:01:00"), &["late"])
            }),
        },
        Row {
            name: "dual verification: the clock-out is the later punch of the last pair (card 17:58 + fingerprint 18:03)",
            employee: "E-DUAL",
            punches: &[
                (Card, "2026-11-23T08:58"),
                (Fp, "2026-11-23T09:00"),
                (Card, "2026-11-23T17:58"),
                (Fp, "2026-11-23T18:03"),
            ],
            date: MON,
            now: CLOSED,
            want: Some(Expect { worked: 545, ..expect(Some("2026-11-23T08:58:00"), Some("2026-11-23T18:03:00"), &[]) }),
        },
        Row {
            name: "dual verification: the first factor of the first pair, not a lone earlier factor (fp 08:30, fp 08:50 + card 08:55)",
            employee: "E-DUAL15",
            punches: &[
                (Fp, "2026-11-23T08:30"),
                (Fp, "2026-11-23T08:50"),
                (Card, "2026-11-23T08:55"),
                (Fp, "2026-11-23T18:00"),
                (Card, "2026-11-23T18:01"),
            ],
            date: MON,
            now: CLOSED,
            want: Some(Expect { worked: 551, ..expect(Some("2026-11-23T08:50:00"), Some("2026-11-23T18:01:00"), &[]) }),
        },
        Row {
            name: "dual verification: card 30 minutes after the fingerprint is dual_timeout",
            employee: "E-DUAL",
            punches: &[(Fp, "2026-11-23T08:50"), (Card, "2026-11-23T09:20")],
            date: MON,
            now: CLOSED,
            want: Some(expect(None, None, &["missing_in", "missing_out", "dual_timeout"])),
        },
        Row {
            name: "dual verification: a card alone is single_factor",
            employee: "E-DUAL",
            punches: &[(Card, "2026-11-23T09:00")],
            date: MON,
            now: CLOSED,
            want: Some(expect(None, None, &["missing_in", "missing_out", "single_factor"])),
        },
        Row {
            name: "dual verification: the window is inclusive (15m apart with a 15m window)",
            employee: "E-DUAL15",
            punches: &[
                (Fp, "2026-11-23T08:50"),
                (Card, "2026-11-23T09:05:00"),
                (Fp, "2026-11-23T18:00"),
                (Card, "2026-11-23T18:01"),
            ],
            date: MON,
            now: CLOSED,
            want: Some(Expect { worked: 551, ..expect(Some("2026-11-23T08:50:00"), Some("2026-11-23T18:01:00"), &[]) }),
        },
        Row {
            name: "dual verification: one second beyond the window is dual_timeout",
            employee: "E-DUAL15",
            punches: &[(Fp, "2026-11-23T08:50"), (Card, "2026-11-23T09:05:01")],
            date: MON,
            now: CLOSED,
            want: Some(expect(None, None, &["missing_in", "missing_out", "dual_timeout"])),
        },
        Row {
            name: "dual verification: verified clock-in, clock-out with a card only is single_factor",
            employee: "E-DUAL",
            punches: &[(Fp, "2026-11-23T08:50"), (Card, "2026-11-23T08:52"), (Card, "2026-11-23T18:00")],
            date: MON,
            now: CLOSED,
            want: Some(expect(Some("2026-11-23T08:50:00"), None, &["missing_out", "single_factor"])),
        },
        Row {
            name: "dual verification: a face punch does not count for a fingerprint+card group",
            employee: "E-DUAL",
            punches: &[(Face, "2026-11-23T09:00"), (Face, "2026-11-23T18:00")],
            date: MON,
            now: CLOSED,
            want: Some(expect(None, None, &["missing_in", "missing_out"])),
        },
        Row {
            name: "make-up punches count alone even under dual verification",
            employee: "E-DUAL",
            punches: &[(Method::Makeup, "2026-11-23T09:00"), (Fp, "2026-11-23T18:00"), (Card, "2026-11-23T18:01")],
            date: MON,
            now: CLOSED,
            want: Some(Expect { worked: 541, ..expect(Some("2026-11-23T09:00:00"), Some("2026-11-23T18:01:00"), &[]) }),
        },
        Row {
            name: "rotation: 21 days after the start is the second night",
            employee: "E-ROT",
            punches: &[(Face, "2026-11-23T21:58"), (Face, "2026-11-24T06:02")],
            date: MON,
            now: CLOSED,
            want: Some(Expect { worked: 484, ..expect(Some("2026-11-23T21:58:00"), Some("2026-11-24T06:02:00"), &[]) }),
        },
        Row {
            name: "rotation: an off day raises no absent",
            employee: "E-ROT",
            punches: &[],
            date: "2026-11-25",
            now: "2026-11-27T00:00",
            want: None,
        },
    ];
    let mut failures = Vec::new();
    for row in &rows {
        let punches =
            row.punches.iter().enumerate().map(|(i, (m, t))| punch(i as u64 + 1, row.employee, *m, t)).collect();
        let (_, changes) = run(punches, row.now);
        let records = latest(&changes);
        let got = record_of(&records, row.employee, row.date).map(observed);
        if got != row.want {
            failures.push(format!("{}:\n    got  {got:?}\n    want {:?}", row.name, row.want));
        }
    }
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
}

#[test]
fn record_ids_statuses_and_punch_ids() {
    let (_, changes) = run(
        vec![
            punch(1, "E-DAY", Method::Face, "2026-11-23T09:00"),
            punch(2, "E-DAY", Method::Face, "2026-11-23T09:03"),
            punch(3, "E-DAY", Method::Face, "2026-11-23T18:00"),
        ],
        "2026-11-25T00:00",
    );
    let records = latest(&changes);
    let r = record_of(&records, "E-DAY", "2026-11-23").unwrap();
    assert_eq!(r.record_id, "gw:E-DAY:2026-11-23:day");
    assert_eq!(r.shift_id, "day");
    assert!(r.closed);
    assert_eq!(r.rules_version, 1);
    // Merged punches are kept as evidence.
    assert_eq!(r.punch_ids, vec!["gw:dev:1", "gw:dev:2", "gw:dev:3"]);
    let flags: BTreeMap<String, Vec<String>> =
        punches_out(&changes).into_iter().map(|p| (p.punch_id, p.flags)).collect();
    assert_eq!(flags["gw:dev:2"], vec!["duplicate_merged"]);
    assert!(flags["gw:dev:1"].is_empty());
    // Each work date closes once, in order.
    let closed = days_closed(&changes);
    assert!(closed.windows(2).all(|w| w[0] < w[1]), "{closed:?}");
    assert!(closed.contains(&"2026-11-23".to_owned()));
}

#[test]
fn revisions_increase_and_close_on_the_timer() {
    let mut e = engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    let c1 = e.apply(Input::Punch(punch(1, "E-DAY", Method::Face, "2026-11-23T09:00")));
    let r1 = latest(&c1).into_values().next().unwrap();
    assert_eq!((r1.revision, r1.closed, r1.statuses.len()), (1, false, 0));
    let c2 = e.apply(Input::Punch(punch(2, "E-DAY", Method::Face, "2026-11-23T18:00")));
    let r2 = latest(&c2).into_values().next().unwrap();
    assert_eq!((r2.revision, r2.clock_out_ms), (2, Some(at("2026-11-23T18:00"))));
    // Nothing changes before the window closes at 24:00 …
    assert!(latest(&e.apply(Input::Tick(at("2026-11-23T23:59")))).is_empty());
    // … then the record closes (revision 3) …
    let c3 = e.apply(Input::Tick(at("2026-11-24T00:00:01")));
    let r3 = latest(&c3).remove("gw:E-DAY:2026-11-23:day").unwrap();
    assert_eq!((r3.revision, r3.closed), (3, true));
    // … and the work date closes when its last window (the night shift, until 10:00) has closed.
    assert!(days_closed(&c3).is_empty());
    assert!(days_closed(&e.apply(Input::Tick(at("2026-11-24T10:00:00")))).is_empty());
    assert_eq!(days_closed(&e.apply(Input::Tick(at("2026-11-24T10:00:01")))), vec!["2026-11-23"]);
    // A re-sent punch changes nothing.
    assert!(e.apply(Input::Punch(punch(2, "E-DAY", Method::Face, "2026-11-23T18:00"))).is_empty());
}

#[test]
fn absent_records_for_everyone_scheduled_when_the_day_closes() {
    let mut e = engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    let changes = e.apply(Input::Tick(at("2026-11-24T12:00")));
    let records = latest(&changes);
    let mut absent: Vec<&str> =
        records.values().filter(|r| r.statuses == ["absent"]).map(|r| r.employee_id.as_str()).collect();
    absent.sort();
    // Everyone in a day-shift group is absent on Monday 23rd; E-ROT works the night that day and E-NIGHT's window
    // closes at 10:00 on the 24th, so they are absent too; the manager has no group.
    assert_eq!(absent, vec!["E-DAY", "E-DUAL", "E-DUAL15", "E-GEO", "E-NIGHT", "E-POLY", "E-ROT"]);
    assert_eq!(days_closed(&changes), vec!["2026-11-23"]);
}

#[test]
fn absence_follows_a_group_change_during_the_day() {
    const MON: &str = "2026-11-23";
    let mut e = engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    // At 23:00 on Monday E-DAY moves to the night group, while its day window is still open...
    let moved = ROSTER.replace("E-DAY,Day Worker,D-DAY", "E-DAY,Day Worker,D-NIGHT");
    let mut all = e.apply_batch([Input::Tick(at("2026-11-23T23:00")), Input::Roster(roster(&moved))]);
    // ...so the day window's close raises nothing for it.
    all.extend(e.apply(Input::Tick(at("2026-11-24T00:00:01"))));
    assert!(record_of(&latest(&all), "E-DAY", MON).is_none(), "{:?}", record_of(&latest(&all), "E-DAY", MON));
    assert_eq!(latest(&all)["gw:E-DUAL:2026-11-23:day"].statuses, vec!["absent"]);
    // At 03:00 E-NIGHT moves to the day group, whose Monday window has closed: absent at once.
    let moved = moved.replace("E-NIGHT,Night Worker,D-NIGHT", "E-NIGHT,Night Worker,D-DAY");
    let c = e.apply_batch([Input::Tick(at("2026-11-24T03:00")), Input::Roster(roster(&moved))]);
    let r = latest(&c);
    assert_eq!(r.get("gw:E-NIGHT:2026-11-23:day").map(|r| r.statuses.clone()), Some(vec!["absent".to_owned()]));
    // E-DAY is absent from Monday's night shift when that window closes, at 10:00 on Tuesday.
    assert!(latest(&e.apply(Input::Tick(at("2026-11-24T10:00:00")))).is_empty());
    let c = e.apply(Input::Tick(at("2026-11-24T10:00:01")));
    let r = latest(&c);
    assert_eq!(r.get("gw:E-DAY:2026-11-23:night").map(|r| r.statuses.clone()), Some(vec!["absent".to_owned()]));
    assert!(record_of(&r, "E-NIGHT", MON).is_none(), "no second record for E-NIGHT: {r:?}");
}

#[test]
fn late_punch_re_reconciles_a_closed_day() {
    let mut e = engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    e.apply(Input::Punch(punch(1, "E-DAY", Method::Face, "2026-11-23T09:00")));
    let closing = e.apply(Input::Tick(at("2026-11-24T12:00")));
    let r = latest(&closing).remove("gw:E-DAY:2026-11-23:day").unwrap();
    assert_eq!(r.statuses, vec!["missing_out"]);
    // The device was offline: its clock-out arrives the next morning.
    let late = e.apply(Input::Punch(punch(2, "E-DAY", Method::Face, "2026-11-23T18:01")));
    let r2 = latest(&late).remove("gw:E-DAY:2026-11-23:day").unwrap();
    assert!(r2.revision > r.revision);
    assert!(r2.statuses.is_empty());
    assert!(r2.closed);
    assert_eq!(days_closed(&late), vec!["2026-11-23"], "the closed day is announced again for its digest");
}

#[test]
fn unknown_credentials_are_forwarded_then_resolved_when_the_roster_learns_them() {
    let mut e = engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    let c = e.apply(Input::Punch(punch(1, "DEADBEEF", Method::Card, "2026-11-23T09:00")));
    let p = &punches_out(&c)[0];
    assert_eq!((p.employee_id.as_str(), p.credential.as_str()), ("", "DEADBEEF"));
    assert_eq!(p.flags, vec!["unknown_credential"]);
    assert!(latest(&c).is_empty());
    // Cards resolve case-insensitively; fingerprints per device.
    let c = e.apply(Input::Punch(punch(2, "0a0a0a01", Method::Card, "2026-11-23T18:00")));
    assert_eq!(punches_out(&c)[0].employee_id, "E-DAY");
    let c = e.apply(Input::Punch(punch(3, "fp:3", Method::Fingerprint, "2026-11-23T09:00")));
    assert_eq!(punches_out(&c)[0].employee_id, "", "page 3 is registered for line1-fp, not dev");
    // The roster learns the card: the punch goes upstream again with its employee, and the record follows.
    let learned = format!("{ROSTER}E-NEW,New Hire,D-DAY,DEADBEEF,,,,\n");
    let c = e.apply(Input::Roster(roster(&learned)));
    let resent = punches_out(&c);
    assert_eq!(resent.len(), 1);
    assert_eq!((resent[0].punch_id.as_str(), resent[0].employee_id.as_str()), ("gw:dev:1", "E-NEW"));
    assert!(resent[0].flags.is_empty());
    let r = latest(&c).remove("gw:E-NEW:2026-11-23:day").unwrap();
    assert_eq!(r.clock_in_ms, Some(at("2026-11-23T09:00")));
}

#[test]
fn unknown_credentials_keep_their_strings_across_evictions() {
    // The engine keeps devices, subjects and id heads as numbers and frees the unused ones when the horizon moves: an
    // unresolved punch kept across that must still say who and where when the roster learns its card.
    let from = |seq: u64, who: &str, device: &str, local: &str| {
        let mut p = punch(seq, who, Method::Card, local);
        p.device_id = device.into();
        p.punch_id = format!("gw:{device}:{seq}");
        p
    };
    let mut e = engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    e.apply(Input::Punch(from(1, "OLDCARD", "old-dev", "2026-11-23T09:00")));
    e.apply(Input::Tick(at("2026-12-20T00:00")));
    e.apply(Input::Punch(from(2, "DEADBEEF", "dev2", "2026-12-20T09:00")));
    // The 23 November punch leaves the horizon, and its strings are freed...
    e.apply(Input::Tick(at("2027-01-01T00:00")));
    assert_eq!(e.punches_kept(), 1);
    // ...and numbered again for new ones.
    let c = e.apply(Input::Punch(from(3, "FRESHCARD", "dev3", "2027-01-01T09:00")));
    assert_eq!((punches_out(&c)[0].device_id.as_str(), punches_out(&c)[0].credential.as_str()), ("dev3", "FRESHCARD"));
    let learned = format!("{ROSTER}E-NEW,New Hire,D-DAY,DEADBEEF,,,,\n");
    let c = e.apply(Input::Roster(roster(&learned)));
    let resent = punches_out(&c);
    assert_eq!(resent.len(), 1);
    let p = &resent[0];
    assert_eq!(
        (p.punch_id.as_str(), p.device_id.as_str(), p.credential.as_str(), p.employee_id.as_str()),
        ("gw:dev2:2", "dev2", "DEADBEEF", "E-NEW")
    );
}

#[test]
fn ads_pins_resolve_to_employees() {
    let mut e = engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    let c = e.apply(Input::Punch(punch(1, "E-DAY", Method::Fingerprint, "2026-11-23T09:00")));
    assert_eq!(punches_out(&c)[0].employee_id, "E-DAY");
    let mut p = punch(2, "E-DAY", Method::Fingerprint, "2026-11-23T18:00");
    p.subject = Subject::Employee("101".into());
    let c = e.apply(Input::Punch(p));
    assert_eq!(punches_out(&c)[0].employee_id, "E-DAY");
    assert_eq!(latest(&c)["gw:E-DAY:2026-11-23:day"].clock_out_ms, Some(at("2026-11-23T18:00")));
}

fn gps(seq: u64, who: &str, local: &str, lat: f64, lng: f64) -> Punch {
    let mut p = punch(seq, who, Method::Gps, local);
    p.geo = Some(GeoPoint { lat, lng, accuracy_m: Some(10.0) });
    p
}

#[test]
fn geofence_circle_pending_then_decided() {
    let mut e = engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    // Inside (about 110 m north of the centre).
    let c = e.apply(Input::Punch(gps(1, "E-GEO", "2026-11-23T09:00", 31.2314, 121.4737)));
    assert!(punches_out(&c)[0].flags.is_empty());
    // Outside (about 1.1 km north).
    let c = e.apply(Input::Punch(gps(2, "E-GEO", "2026-11-23T18:00", 31.2404, 121.4737)));
    assert_eq!(punches_out(&c)[0].flags, vec!["out_of_fence"]);
    let r = latest(&c).remove("gw:E-GEO:2026-11-23:day").unwrap();
    assert_eq!(r.statuses, vec!["out_of_fence", "pending_approval"]);
    assert_eq!(r.clock_out_ms, Some(at("2026-11-23T18:00")), "counts provisionally");
    let requests = e.take_fence_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!((requests[0].punch_id.as_str(), requests[0].department.as_str()), ("gw:dev:2", "D-GEO"));
    // Rejected: the punch stops counting; the record says out_of_fence and is no longer pending.
    let c = e.apply(Input::FenceDecision { punch_id: "gw:dev:2".into(), approved: false });
    let r = latest(&c).remove("gw:E-GEO:2026-11-23:day").unwrap();
    assert_eq!((r.clock_out_ms, r.statuses.clone()), (None, vec!["out_of_fence".to_owned()]));
    // Changed to approved: it counts again.
    let c = e.apply(Input::FenceDecision { punch_id: "gw:dev:2".into(), approved: true });
    let r = latest(&c).remove("gw:E-GEO:2026-11-23:day").unwrap();
    assert_eq!(r.clock_out_ms, Some(at("2026-11-23T18:00")));
    assert!(e.take_fence_requests().is_empty());
}

#[test]
fn geofence_polygon() {
    let mut e = engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    let c = e.apply(Input::Punch(gps(1, "E-POLY", "2026-11-23T09:00", 31.005, 121.005)));
    assert!(punches_out(&c)[0].flags.is_empty());
    let c = e.apply(Input::Punch(gps(2, "E-POLY", "2026-11-23T18:00", 31.005, 121.02)));
    assert_eq!(punches_out(&c)[0].flags, vec!["out_of_fence"]);
}

#[test]
fn clock_skew_is_flagged_for_real_time_devices_only() {
    let mut e = engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    let mut p = punch(1, "E-DAY", Method::Face, "2026-11-23T09:00");
    p.received_time_ms += 5 * 60_000 + 1;
    let c = e.apply(Input::Punch(p.clone()));
    assert_eq!(punches_out(&c)[0].flags, vec!["clock_skew"]);
    assert_eq!(latest(&c)["gw:E-DAY:2026-11-23:day"].statuses, vec!["clock_skew"]);
    // A backlog upload (not real-time) arriving hours later is not skew.
    let mut q = punch(2, "E-DAY", Method::Face, "2026-11-23T18:00");
    q.received_time_ms += 3 * 3_600_000;
    q.realtime = false;
    let c = e.apply(Input::Punch(q));
    assert!(punches_out(&c)[0].flags.is_empty());
}

#[test]
fn rules_changes_do_not_rewrite_closed_days() {
    let mut e = engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    e.apply(Input::Punch(punch(1, "E-DAY", Method::Face, "2026-11-23T09:05")));
    e.apply(Input::Punch(punch(2, "E-DAY", Method::Face, "2026-11-23T18:00")));
    e.apply(Input::Tick(at("2026-11-24T08:00")));
    e.apply(Input::Punch(punch(3, "E-DAY", Method::Face, "2026-11-24T09:05")));
    let strict = RULES.replace("late_grace = \"10m\"\nearly_grace", "late_grace = \"0m\"\nearly_grace");
    let c = e.apply(Input::Rules { version: 2, rules: rules(&strict) });
    let records = latest(&c);
    // The open day (24th) follows the new rules: late. The closed 23rd does not change.
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records["gw:E-DAY:2026-11-24:day"];
    assert_eq!((r.statuses.clone(), r.late_minutes, r.rules_version), (vec!["late".to_owned()], 5, 2));
    // A late punch on the 23rd is reconciled with the rules frozen for it (version 1: on time).
    let c = e.apply(Input::Punch(punch(4, "E-DAY", Method::Face, "2026-11-23T19:00")));
    let r = &latest(&c)["gw:E-DAY:2026-11-23:day"];
    assert_eq!((r.statuses.clone(), r.late_minutes, r.rules_version), (vec!["overtime".to_owned()], 0, 1));
}

#[test]
fn no_rules_still_forwards_punches_and_closes_days_at_midnight() {
    let settings = EngineSettings { gateway_id: "gw".into(), tz: tz() };
    let mut versions = BTreeMap::new();
    versions.insert(1, Arc::new(Rules::none()));
    let mut e = Engine::new(settings, Watermarks::default(), versions, 1, Arc::new(Roster::empty()));
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    let c = e.apply(Input::Punch(punch(1, "E-X", Method::Face, "2026-11-23T09:00")));
    assert_eq!(punches_out(&c)[0].employee_id, "E-X");
    assert!(latest(&c).is_empty());
    assert!(days_closed(&e.apply(Input::Tick(at("2026-11-23T23:59:59")))).is_empty());
    assert_eq!(days_closed(&e.apply(Input::Tick(at("2026-11-24T00:00:01")))), vec!["2026-11-23"]);
}

/// What the stage does for dates beyond the horizon, with `store` as the punch store and `stored` as the record store:
/// every date on the engine's backfill set is reconciled from the punches in its range; the record store is updated.
fn backfill(e: &mut Engine, store: &[Punch], stored: &mut BTreeMap<String, AttendanceRecord>) -> Vec<Change> {
    let mut out = Vec::new();
    while let Some(date) = e.backfill_next() {
        let records: Vec<AttendanceRecord> =
            stored.values().filter(|r| r.work_date == date.to_string()).cloned().collect();
        let version = e.stored_day_version(date, &records);
        let (from, to) = e.stored_day_range(date, version, None);
        let punches = store.iter().filter(|p| (from..to).contains(&p.device_time_ms)).cloned();
        let changes =
            e.reconcile_stored_day(StoredDay { date, records, version, rules: None, decisions: vec![] }, punches);
        stored.extend(latest(&changes));
        out.extend(changes);
    }
    out
}

#[test]
fn punches_older_than_the_horizon_reconcile_their_day_from_the_store() {
    let mut e = engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    let mut store = vec![punch(1, "E-DAY", Method::Face, "2026-09-01T09:20")];
    let mut stored = BTreeMap::new();
    // Forwarded at once (no flag: it is reconciled), no record in memory; its date waits for the store.
    let c = e.apply(Input::Punch(store[0].clone()));
    assert_eq!(
        punches_out(&c).iter().map(|p| (p.punch_id.as_str(), p.flags.len())).collect::<Vec<_>>(),
        [("gw:dev:1", 0)]
    );
    assert!(latest(&c).is_empty());
    assert_eq!(e.watermarks().backfill.iter().map(ToString::to_string).collect::<Vec<_>>(), ["2026-09-01"]);
    let c = backfill(&mut e, &store, &mut stored);
    let r = &latest(&c)["gw:E-DAY:2026-09-01:day"];
    assert_eq!((r.revision, r.closed, r.late_minutes), (1, true, 20));
    assert_eq!(r.statuses, ["late", "missing_out"]);
    assert_eq!(days_closed(&c), ["2026-09-01"], "the day's digest goes again");
    // Its clock-out, also weeks late: the record is revised like any late punch's.
    store.push(punch(2, "E-DAY", Method::Face, "2026-09-01T18:00"));
    e.apply(Input::Punch(store[1].clone()));
    let c = backfill(&mut e, &store, &mut stored);
    let r = &latest(&c)["gw:E-DAY:2026-09-01:day"];
    assert_eq!((r.revision, r.statuses.clone(), r.worked_minutes), (2, vec!["late".to_owned()], 520));
    // Sent again: nothing changes. And the engine keeps nothing of that date.
    e.apply(Input::Punch(store[1].clone()));
    assert!(backfill(&mut e, &store, &mut stored).is_empty());
    assert_eq!((e.punches_kept(), e.records_tracked()), (0, 0));
    assert!(e.watermarks().backfill.is_empty());
    // Restored after a restart, an old punch does not ask for its date again (it was reconciled when it came).
    e.apply(Input::Restore(store[1].clone()));
    assert!(e.watermarks().backfill.is_empty());
}

#[test]
fn a_late_punch_beyond_the_horizon_revises_a_stored_absence() {
    // The engine ran since 1 September: its absences are stored. Today is 23 November (horizon: 23 October).
    let mut e = engine();
    let mut stored = latest(&e.apply(Input::Tick(at("2026-09-01T00:00"))));
    for day in 1..=83 {
        let now = at("2026-09-01T12:00") + day * 86_400_000;
        stored.extend(latest(&e.apply(Input::Tick(now))));
    }
    let absent = stored["gw:E-DAY:2026-09-15:day"].clone();
    assert_eq!((absent.statuses.clone(), absent.revision), (vec!["absent".to_owned()], 1));
    // A terminal offline since then delivers E-DAY's punches of 15 September.
    let store =
        vec![punch(1, "E-DAY", Method::Face, "2026-09-15T08:58"), punch(2, "E-DAY", Method::Face, "2026-09-15T18:01")];
    e.apply_batch(store.iter().cloned().map(Input::Punch));
    let c = backfill(&mut e, &store, &mut stored);
    let records = latest(&c);
    assert_eq!(records.len(), 1, "only the record that changed: {records:?}");
    let r = &records["gw:E-DAY:2026-09-15:day"];
    assert_eq!((r.revision, r.statuses.len(), r.worked_minutes, r.closed), (2, 0, 543, true));
    assert_eq!(days_closed(&c), ["2026-09-15"]);
}

#[test]
fn a_punch_in_the_horizon_for_a_night_shift_before_it_asks_for_that_date() {
    let mut e = engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    // The horizon starts on 23 October; 05:00 that morning ends the night shift of the 22nd.
    let store = vec![
        punch(1, "E-NIGHT", Method::Face, "2026-10-22T22:00"),
        punch(2, "E-NIGHT", Method::Face, "2026-10-23T05:00"),
    ];
    e.apply(Input::Punch(store[1].clone()));
    assert_eq!(e.watermarks().backfill.iter().map(ToString::to_string).collect::<Vec<_>>(), ["2026-10-22"]);
    e.apply(Input::Punch(store[0].clone()));
    let mut stored = BTreeMap::new();
    let c = backfill(&mut e, &store, &mut stored);
    let r = &latest(&c)["gw:E-NIGHT:2026-10-22:night"];
    assert_eq!((r.punch_ids.len(), r.early_leave_minutes), (2, 60));
}

// ---- properties ----

/// Dual verification, by brute force over every pair (an independent reading of SPEC section 4): the clock-in is the
/// earlier punch of the first verified pair, the clock-out the later punch of the last verified pair whose punches both
/// follow the clock-in pair; a `makeup` punch is a clock event alone. Returns (clock-in, clock-out).
fn dual_oracle(punches: &[(Method, i64)], window_ms: i64) -> (Option<i64>, Option<i64>) {
    let of = |m: Method| -> Vec<i64> { punches.iter().filter(|(x, _)| *x == m).map(|(_, t)| *t).collect() };
    let (fp, card, makeup) = (of(Method::Fingerprint), of(Method::Card), of(Method::Makeup));
    // Every clock event as (first punch, last punch).
    let mut events: Vec<(i64, i64)> = makeup.iter().map(|&t| (t, t)).collect();
    for &f in &fp {
        for &c in &card {
            if (f - c).abs() <= window_ms {
                events.push((f.min(c), f.max(c)));
            }
        }
    }
    let Some(&(cin, cin_last)) = events.iter().min() else { return (None, None) };
    let cout = events.iter().filter(|(first, _)| *first > cin_last).map(|(_, last)| *last).max();
    (Some(cin), cout)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, .. ProptestConfig::default() })]

    #[test]
    fn dual_verification_agrees_with_every_pair(
        raw in proptest::collection::vec((0..5u8, 0i64..(90 * 60)), 0..12),
        window_min in 1i64..30,
    ) {
        use super::day::{evaluate, DayContext, DayPunch, Fence};
        use super::rules::Verification;
        let rules = rules(RULES);
        let shift = &rules.shifts[0];
        let span = shift.span(jiff::civil::Date::constant(2026, 11, 23), &tz());
        // Distinct times per method (the engine merges duplicates before pairing; this checks pairing alone).
        let mut punches: Vec<(Method, i64)> = raw
            .iter()
            .map(|&(m, s)| {
                let m = match m { 0 | 1 => Method::Fingerprint, 2 | 3 => Method::Card, _ => Method::Makeup };
                (m, span.open_ms + s * 1000)
            })
            .collect();
        punches.sort_by_key(|&(m, t)| (t, m as u8));
        punches.dedup();
        let window_ms = window_min * 60_000;
        let ctx = DayContext {
            shift,
            span,
            workday: true,
            verification: Some(Verification { methods: [Method::Fingerprint, Method::Card], window_ms }),
            dedupe_window_ms: 0,
            closed: true,
            leave: None,
            claim_pending: false,
        };
        let day: Vec<DayPunch> = punches
            .iter()
            .map(|&(method, time_ms)| DayPunch { time_ms, method, clock_skew: false, fence: Fence::NotApplicable, weak: false })
            .collect();
        let ev = evaluate(&ctx, &day);
        prop_assert_eq!((ev.clock_in_ms, ev.clock_out_ms), dual_oracle(&punches, window_ms), "{:?}", punches);
    }
}

/// A few random days of punches for a few employees: single punches anywhere in three days, and for the
/// dual-verification employees fingerprint + card attempts whose second factor comes 0 to 30 minutes after the first.
fn arb_punches() -> impl Strategy<Value = Vec<Punch>> {
    let employees = ["E-DAY", "E-DUAL", "E-NIGHT", "E-GEO", "0A0A0A01", "fp:4", "E-DUAL15", "E-ROT"];
    let methods = [Method::Face, Method::Card, Method::Fingerprint, Method::Gps];
    let singles = proptest::collection::vec((0..employees.len(), 0..methods.len(), 0i64..(3 * 24 * 60), 0..3u8), 0..40);
    let pairs = proptest::collection::vec((any::<bool>(), any::<bool>(), 0i64..(3 * 24 * 60), 0i64..(30 * 60)), 0..8);
    (singles, pairs).prop_map(move |(items, pairs)| {
        let base = at("2026-11-23T00:00");
        let mut out: Vec<Punch> = items
            .into_iter()
            .enumerate()
            .map(|(i, (e, m, minute, geo))| {
                let mut p = punch(i as u64 + 1, employees[e], methods[m], "2026-11-23T00:00");
                p.device_time_ms = base + minute * 60_000;
                p.received_time_ms = p.device_time_ms + i64::from(geo) * 200_000;
                if methods[m] == Method::Gps || geo == 2 {
                    p.geo = Some(GeoPoint { lat: 31.2304 + f64::from(geo) * 0.004, lng: 121.4737, accuracy_m: None });
                }
                p
            })
            .collect();
        for (dual15, card_first, minute, gap_s) in pairs {
            let who = if dual15 { "E-DUAL15" } else { "E-DUAL" };
            let (m1, m2) =
                if card_first { (Method::Card, Method::Fingerprint) } else { (Method::Fingerprint, Method::Card) };
            let t = base + minute * 60_000;
            for (m, time) in [(m1, t), (m2, t + gap_s * 1000)] {
                let seq = out.len() as u64 + 1;
                let mut p = punch(seq, who, m, "2026-11-23T00:00");
                p.device_time_ms = time;
                p.received_time_ms = time;
                out.push(p);
            }
        }
        out
    })
}

/// Final records of a run, without revision numbers.
fn content(records: &BTreeMap<String, AttendanceRecord>) -> BTreeMap<String, AttendanceRecord> {
    records.iter().map(|(k, r)| (k.clone(), AttendanceRecord { revision: 0, ..r.clone() })).collect()
}

fn check_revisions_increase(changes: &[Change]) -> Result<(), TestCaseError> {
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    for c in changes {
        if let Change::Record(r) = c {
            let prev = seen.insert(&r.record_id, r.revision).unwrap_or(0);
            prop_assert!(r.revision == prev + 1, "{} went from {prev} to {}", r.record_id, r.revision);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Any permutation, any duplication and any batching of the same punches gives the same records, also when windows
    /// close (absences, missing punches) while they arrive.
    #[test]
    fn order_duplication_and_batching_do_not_matter(
        punches in arb_punches(),
        order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..80),
        batch in 1usize..7,
        mid_tick in proptest::option::of(0i64..(4 * 24 * 60)),
    ) {
        let start = at("2026-11-22T00:00");
        let end = at("2026-11-28T00:00");
        // Canonical: everything in one batch.
        let mut a = engine();
        let mut ca = a.apply(Input::Tick(start));
        ca.extend(a.apply_batch(punches.iter().cloned().map(Input::Punch)));
        ca.extend(a.apply(Input::Tick(end)));
        // Shuffled with re-sends, in small batches, maybe with a tick in the middle.
        let mut shuffled: Vec<Punch> = punches.clone();
        for idx in &order {
            if !punches.is_empty() {
                shuffled.push(punches[idx.index(punches.len())].clone());
            }
        }
        for (i, idx) in order.iter().enumerate() {
            let len = shuffled.len();
            if len > 1 {
                shuffled.swap(i % len, idx.index(len));
            }
        }
        let mut b = engine();
        let mut cb = b.apply(Input::Tick(start));
        for (i, chunk) in shuffled.chunks(batch).enumerate() {
            cb.extend(b.apply_batch(chunk.iter().cloned().map(Input::Punch)));
            // A tick somewhere in the middle: some windows close while punches are still coming (late punches).
            if let (Some(minute), 1) = (mid_tick, i) {
                cb.extend(b.apply(Input::Tick(start + 24 * 3_600_000 + minute * 60_000)));
            }
        }
        cb.extend(b.apply(Input::Tick(end)));
        prop_assert_eq!(content(&latest(&ca)), content(&latest(&cb)));
        check_revisions_increase(&cb)?;
        // Every punch goes upstream exactly once.
        let mut ids: Vec<String> = punches_out(&cb).into_iter().map(|p| p.punch_id).collect();
        ids.sort();
        let n = ids.len();
        ids.dedup();
        prop_assert_eq!(n, ids.len());
        prop_assert_eq!(n, punches.len());
    }

    /// A date reconciled from the store (beyond the horizon) gets the records the engine's memory gives it (in the
    /// horizon) for the same punches; and reconciled against the records the memory made, it revises none of them.
    #[test]
    fn the_store_path_agrees_with_the_memory_path(punches in arb_punches()) {
        let strip = |r: &AttendanceRecord| AttendanceRecord { revision: 0, ..r.clone() };
        let dates = ["2026-11-22", "2026-11-23", "2026-11-24", "2026-11-25"];
        let mut a = engine();
        let mut ca = a.apply(Input::Tick(at("2026-11-22T00:00")));
        ca.extend(a.apply_batch(punches.iter().cloned().map(Input::Punch)));
        ca.extend(a.apply(Input::Tick(at("2026-11-29T00:00"))));
        let memory_all = latest(&ca);
        // Records with punches (absences are made at a window's close by the memory path only).
        let memory: BTreeMap<String, AttendanceRecord> = memory_all
            .values()
            .filter(|r| dates.contains(&r.work_date.as_str()) && !r.punch_ids.is_empty())
            .map(|r| (r.record_id.clone(), strip(r)))
            .collect();
        // The same punches, weeks late: their dates are reconciled from the store, once with nothing stored, once
        // with what the memory path stored.
        let mut b = engine();
        b.apply(Input::Tick(at("2026-11-22T00:00")));
        b.apply(Input::Tick(at("2027-01-10T00:00")));
        b.apply_batch(punches.iter().cloned().map(Input::Punch));
        let mut from_store = BTreeMap::new();
        for d in dates {
            let date: jiff::civil::Date = d.parse().unwrap();
            let (from, to) = b.stored_day_range(date, 1, None);
            let day = || punches.iter().filter(|p| (from..to).contains(&p.device_time_ms)).cloned();
            let fresh = StoredDay { date, records: vec![], version: 1, rules: None, decisions: vec![] };
            from_store.extend(latest(&b.reconcile_stored_day(fresh, day())).values().map(|r| (r.record_id.clone(), strip(r))));
            let records = memory_all.values().filter(|r| r.work_date == d).cloned().collect();
            let again = b.reconcile_stored_day(StoredDay { date, records, version: 1, rules: None, decisions: vec![] }, day());
            prop_assert!(again.is_empty(), "{d}: {again:?}");
        }
        prop_assert_eq!(memory, from_store);
    }

    /// A restart that re-derives records from the stored punches and compares with the stored revisions emits nothing.
    #[test]
    fn restart_gives_no_new_revisions(punches in arb_punches(), split in any::<proptest::sample::Index>(), cut in 0i64..(5 * 24 * 60)) {
        let start = at("2026-11-22T00:00");
        let stop = start + cut * 60_000;
        let mut a = engine();
        let mut changes = a.apply(Input::Tick(start));
        let k = if punches.is_empty() { 0 } else { split.index(punches.len()) };
        changes.extend(a.apply_batch(punches[..k].iter().cloned().map(Input::Punch)));
        changes.extend(a.apply(Input::Tick(stop)));
        changes.extend(a.apply_batch(punches[k..].iter().cloned().map(Input::Punch)));
        let stored = latest(&changes);
        // The restarted engine: stored revisions, watermarks and punches.
        let settings = EngineSettings { gateway_id: "gw".into(), tz: tz() };
        let mut versions = BTreeMap::new();
        versions.insert(1, rules(RULES));
        let mut b = Engine::new(settings, a.watermarks().clone(), versions, 1, roster(ROSTER));
        for r in stored.values() {
            b.restore_record(r);
        }
        for r in a.take_fence_requests() {
            b.mark_requested(&r.punch_id);
        }
        let replay = b.apply_batch(punches.iter().cloned().map(Input::Restore));
        prop_assert!(replay.is_empty(), "replay emitted {replay:?}");
        // And both continue identically.
        let later = at("2026-11-29T00:00");
        let ca = a.apply(Input::Tick(later));
        let cb = b.apply(Input::Tick(later));
        prop_assert_eq!(ca, cb);
    }
}
