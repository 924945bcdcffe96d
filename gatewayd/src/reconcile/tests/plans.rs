//! Leave, flexible shifts and schedules: table rows in the form of the rules table, and the engine's revisions when
//! leave is approved or a schedule changes after the fact.

use super::*;
use crate::reconcile::leave::{Leave, LeaveBook, LeaveType, Period};
use crate::reconcile::schedule::Schedule;

/// [`RULES`] plus a flexible shift (core 10:00–16:00, 8 hours, within 07:00–20:00) and its group.
fn plans_rules() -> String {
    format!(
        "{RULES}\n[[shift]]\nid = \"flexi\"\nstart = \"07:00\"\nend = \"20:00\"\nopens_before = \"1h\"\n\
         closes_after = \"3h\"\nflex = {{ core = [\"10:00\", \"16:00\"], hours = \"8h\" }}\n\n\
         [[group]]\nid = \"flex\"\ndepartments = [\"D-FLEX\"]\nshift = \"flexi\"\n"
    )
}

fn plans_roster() -> String {
    format!("{ROSTER}E-FLEX,Flex Worker,D-FLEX,,,,108,\n")
}

fn plans_engine() -> Engine {
    engine_with(&plans_rules(), &plans_roster())
}

fn leave(approval: u64, employee: &str, from: &str, to: &str) -> Leave {
    Leave {
        approval,
        employee: employee.into(),
        leave_type: LeaveType::Annual,
        period: Period::parse(from, to, &tz()).unwrap(),
    }
}

fn book(leaves: Vec<Leave>) -> Input {
    Input::Leaves(Arc::new(LeaveBook::new(leaves)))
}

fn schedule(csv: &str) -> Input {
    let text = format!("employee,date,shift\n{csv}");
    Input::Schedule(Arc::new(Schedule::parse(Path::new("s.csv"), &text, Some(&rules(&plans_rules()))).unwrap()))
}

struct PlanRow {
    name: &'static str,
    employee: &'static str,
    leave: &'static [(&'static str, &'static str)],
    schedule: &'static str,
    punches: &'static [(Method, &'static str)],
    date: &'static str,
    want: Option<Expect>,
}

#[test]
fn table_of_leave_flex_and_schedules() {
    use Method::Face;
    const MON: &str = "2026-11-23";
    const SAT: &str = "2026-11-28";
    let rows = vec![
        PlanRow {
            name: "flex: present through the core and 8 hours worked is on time",
            employee: "E-FLEX",
            leave: &[],
            schedule: "",
            punches: &[(Face, "2026-11-23T08:00"), (Face, "2026-11-23T16:10")],
            date: MON,
            want: Some(Expect { worked: 490, ..expect(Some("2026-11-23T08:00:00"), Some("2026-11-23T16:10:00"), &[]) }),
        },
        PlanRow {
            name: "flex: through the core but short of the hours is short_hours only",
            employee: "E-FLEX",
            leave: &[],
            schedule: "",
            punches: &[(Face, "2026-11-23T09:00"), (Face, "2026-11-23T16:30")],
            date: MON,
            want: Some(Expect {
                worked: 450,
                ..expect(Some("2026-11-23T09:00:00"), Some("2026-11-23T16:30:00"), &["short_hours"])
            }),
        },
        PlanRow {
            name: "flex: late and early only against the core",
            employee: "E-FLEX",
            leave: &[],
            schedule: "",
            punches: &[(Face, "2026-11-23T10:05:30"), (Face, "2026-11-23T15:59:30")],
            date: MON,
            want: Some(Expect {
                late: 5,
                early: 1,
                worked: 354,
                ..expect(
                    Some("2026-11-23T10:05:30"),
                    Some("2026-11-23T15:59:30"),
                    &["late", "early_leave", "short_hours"],
                )
            }),
        },
        PlanRow {
            name: "flex: overtime is the time beyond the hours, once it reaches overtime_after",
            employee: "E-FLEX",
            leave: &[],
            schedule: "",
            punches: &[(Face, "2026-11-23T07:30"), (Face, "2026-11-23T17:00")],
            date: MON,
            want: Some(Expect {
                worked: 570,
                overtime: 90,
                ..expect(Some("2026-11-23T07:30:00"), Some("2026-11-23T17:00:00"), &["overtime"])
            }),
        },
        PlanRow {
            name: "flex: 20 minutes beyond the hours is not overtime yet",
            employee: "E-FLEX",
            leave: &[],
            schedule: "",
            punches: &[(Face, "2026-11-23T08:00"), (Face, "2026-11-23T16:20")],
            date: MON,
            want: Some(Expect { worked: 500, ..expect(Some("2026-11-23T08:00:00"), Some("2026-11-23T16:20:00"), &[]) }),
        },
        PlanRow {
            name: "whole-day leave replaces absent",
            employee: "E-DAY",
            leave: &[(MON, MON)],
            schedule: "",
            punches: &[],
            date: MON,
            want: Some(expect(None, None, &["on_leave"])),
        },
        PlanRow {
            name: "whole-day leave covers a night shift, which belongs to its start date",
            employee: "E-NIGHT",
            leave: &[(MON, MON)],
            schedule: "",
            punches: &[],
            date: MON,
            want: Some(expect(None, None, &["on_leave"])),
        },
        PlanRow {
            name: "morning leave: late is measured from the leave's end",
            employee: "E-DAY",
            leave: &[("2026-11-23T09:00", "2026-11-23T12:00")],
            schedule: "",
            punches: &[(Face, "2026-11-23T12:09"), (Face, "2026-11-23T18:00")],
            date: MON,
            want: Some(Expect {
                worked: 351,
                ..expect(Some("2026-11-23T12:09:00"), Some("2026-11-23T18:00:00"), &["on_leave"])
            }),
        },
        PlanRow {
            name: "morning leave: late minutes from the leave's end, rounded down",
            employee: "E-DAY",
            leave: &[("2026-11-23T09:00", "2026-11-23T12:00")],
            schedule: "",
            punches: &[(Face, "2026-11-23T12:15:40"), (Face, "2026-11-23T18:00")],
            date: MON,
            want: Some(Expect {
                late: 15,
                worked: 344,
                ..expect(Some("2026-11-23T12:15:40"), Some("2026-11-23T18:00:00"), &["late", "on_leave"])
            }),
        },
        PlanRow {
            name: "afternoon leave: leaving at its start is not early",
            employee: "E-DAY",
            leave: &[("2026-11-23T15:00", "2026-11-23T18:00")],
            schedule: "",
            punches: &[(Face, "2026-11-23T09:00"), (Face, "2026-11-23T15:00")],
            date: MON,
            want: Some(Expect {
                worked: 360,
                ..expect(Some("2026-11-23T09:00:00"), Some("2026-11-23T15:00:00"), &["on_leave"])
            }),
        },
        PlanRow {
            name: "part-day leave and no punch at all is still absent",
            employee: "E-DAY",
            leave: &[("2026-11-23T09:00", "2026-11-23T12:00")],
            schedule: "",
            punches: &[],
            date: MON,
            want: Some(expect(None, None, &["absent", "on_leave"])),
        },
        PlanRow {
            name: "flex with four hours of leave expects four hours",
            employee: "E-FLEX",
            leave: &[("2026-11-23T13:00", "2026-11-23T17:00")],
            schedule: "",
            punches: &[(Face, "2026-11-23T08:30"), (Face, "2026-11-23T13:00")],
            date: MON,
            want: Some(Expect {
                worked: 270,
                ..expect(Some("2026-11-23T08:30:00"), Some("2026-11-23T13:00:00"), &["on_leave"])
            }),
        },
        PlanRow {
            name: "leave on a rest day changes nothing",
            employee: "E-DAY",
            leave: &[(SAT, SAT)],
            schedule: "",
            punches: &[],
            date: SAT,
            want: None,
        },
        PlanRow {
            name: "schedule: a day worker put on the night shift",
            employee: "E-DAY",
            leave: &[],
            schedule: "E-DAY,2026-11-23,night\n",
            punches: &[(Face, "2026-11-23T21:55"), (Face, "2026-11-24T06:00")],
            date: MON,
            want: Some(Expect { worked: 485, ..expect(Some("2026-11-23T21:55:00"), Some("2026-11-24T06:00:00"), &[]) }),
        },
        PlanRow {
            name: "schedule: off on a working day raises no absence",
            employee: "E-DAY",
            leave: &[],
            schedule: "E-DAY,2026-11-23,off\n",
            punches: &[],
            date: MON,
            want: None,
        },
        PlanRow {
            name: "schedule: off on a working day, work on it is rest_day_work",
            employee: "E-DAY",
            leave: &[],
            schedule: "E-DAY,2026-11-23,off\n",
            punches: &[(Face, "2026-11-23T09:00"), (Face, "2026-11-23T12:00")],
            date: MON,
            want: Some(Expect {
                worked: 180,
                overtime: 180,
                ..expect(Some("2026-11-23T09:00:00"), Some("2026-11-23T12:00:00"), &["overtime", "rest_day_work"])
            }),
        },
        PlanRow {
            name: "schedule: a Saturday assigned the day shift is a working day",
            employee: "E-DAY",
            leave: &[],
            schedule: "E-DAY,2026-11-28,day\n",
            punches: &[],
            date: SAT,
            want: Some(expect(None, None, &["absent"])),
        },
        PlanRow {
            name: "schedule: an assigned holiday is a working day",
            employee: "E-DAY",
            leave: &[],
            schedule: "E-DAY,2026-10-01,day\n",
            punches: &[(Face, "2026-10-01T09:00"), (Face, "2026-10-01T18:00")],
            date: "2026-10-01",
            want: Some(Expect { worked: 540, ..expect(Some("2026-10-01T09:00:00"), Some("2026-10-01T18:00:00"), &[]) }),
        },
    ];
    let mut failures = Vec::new();
    for row in &rows {
        let mut e = plans_engine();
        let mut all = e.apply(Input::Tick(at("2026-09-01T00:00")));
        let leaves = row.leave.iter().enumerate().map(|(i, (f, t))| leave(i as u64 + 1, row.employee, f, t)).collect();
        all.extend(e.apply_batch([book(leaves), schedule(row.schedule)]));
        let punches =
            row.punches.iter().enumerate().map(|(i, (m, t))| Input::Punch(punch(i as u64 + 1, row.employee, *m, t)));
        all.extend(e.apply_batch(punches));
        all.extend(e.apply(Input::Tick(at("2026-11-30T12:00"))));
        let got = record_of(&latest(&all), row.employee, row.date).map(observed);
        if got != row.want {
            failures.push(format!("{}:\n    got  {got:?}\n    want {:?}", row.name, row.want));
        }
    }
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
}

#[test]
fn approved_leave_revises_an_absence() {
    let mut e = plans_engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    let first = latest(&e.apply(Input::Tick(at("2026-11-24T12:00"))));
    let absent = &first["gw:E-DAY:2026-11-23:day"];
    assert_eq!((absent.statuses.clone(), absent.revision), (vec!["absent".to_owned()], 1));
    // The leave is approved on Tuesday, for Monday.
    let c = e.apply(book(vec![leave(7, "E-DAY", "2026-11-23", "2026-11-23")]));
    let r = &latest(&c)["gw:E-DAY:2026-11-23:day"];
    assert_eq!((r.statuses.clone(), r.revision), (vec!["on_leave".to_owned()], 2));
    assert_eq!(days_closed(&c), vec!["2026-11-23"], "the closed day is announced again for its digest");
    // The same book again changes nothing; taking the leave away brings the absence back.
    assert!(e.apply(book(vec![leave(7, "E-DAY", "2026-11-23", "2026-11-23")])).is_empty());
    let back = latest(&e.apply(book(vec![])));
    assert_eq!(back["gw:E-DAY:2026-11-23:day"].statuses, vec!["absent"]);
    assert_eq!(back["gw:E-DAY:2026-11-23:day"].revision, 3);
}

#[test]
fn a_schedule_change_moves_the_record_to_the_new_shift() {
    let mut e = plans_engine();
    e.apply(Input::Tick(at("2026-11-23T00:00")));
    let mut all = e.apply_batch([
        Input::Punch(punch(1, "E-DAY", Method::Face, "2026-11-23T21:50")),
        Input::Punch(punch(2, "E-DAY", Method::Face, "2026-11-24T06:05")),
    ]);
    all.extend(e.apply(Input::Tick(at("2026-11-24T12:00"))));
    // Without a schedule the evening punch is the day shift's overtime and the morning one Tuesday's early clock-in.
    let before = latest(&all);
    assert_eq!(before["gw:E-DAY:2026-11-23:day"].punch_ids, vec!["gw:dev:1"]);
    // HR enters Monday's night shift after the fact: the day record is cleared, the night record made.
    let c = latest(&e.apply(schedule("E-DAY,2026-11-23,night\n")));
    let day = &c["gw:E-DAY:2026-11-23:day"];
    assert!(day.statuses.is_empty() && day.punch_ids.is_empty(), "{day:?}");
    let night = &c["gw:E-DAY:2026-11-23:night"];
    assert_eq!(night.punch_ids, vec!["gw:dev:1", "gw:dev:2"]);
    assert!(night.statuses.is_empty(), "{night:?}");
}

#[test]
fn flex_rules_are_checked() {
    let bad = |flex: &str| {
        let text = format!("[[shift]]\nid = \"f\"\nstart = \"07:00\"\nend = \"20:00\"\nflex = {flex}\n");
        Rules::parse(Path::new("rules.toml"), &text).unwrap_err().iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    let p = bad(r#"{ core = ["06:00", "16:00"], hours = "8h" }"#);
    assert!(p[0].contains("rules.toml:5: shift[f].flex.core") && p[0].contains("not within the shift"), "{p:?}");
    let p = bad(r#"{ core = ["16:00", "10:00"], hours = "8h" }"#);
    assert!(p[0].contains("not within the shift"), "{p:?}");
    let p = bad(r#"{ core = ["10:00", "16:00"], hours = "14h" }"#);
    assert!(p[0].contains("shift[f].flex.hours") && p[0].contains("does not fit"), "{p:?}");
    let p = bad(r#"{ core = ["10:00"], hours = "8h" }"#);
    assert!(p[0].contains("shift[f].flex.core"), "{p:?}");
    let p = bad(r#"{ core = ["10:00", "25:00"], hours = "eight" }"#);
    assert_eq!(p.len(), 2, "{p:?}");
    // A night shift's core may cross midnight.
    let text = "[[shift]]\nid = \"n\"\nstart = \"22:00\"\nend = \"08:00\"\nflex = { core = [\"23:00\", \"03:00\"], hours = \"8h\" }\n";
    assert!(Rules::parse(Path::new("rules.toml"), text).is_ok());
}

/// Schedules and leave books for the property below: none, or a few assignments and leaves over the punches' days.
fn arb_plans() -> impl Strategy<Value = (String, Vec<Leave>)> {
    let schedules = [
        "",
        "E-DAY,2026-11-23,night\nE-DAY,2026-11-24,off\n",
        "E-NIGHT,2026-11-24,day\nE-DUAL,2026-11-25,night\nE-ROT,2026-11-23,flexi\n",
        "E-GEO,2026-11-23,off\nE-DAY,2026-11-25,flexi\n",
    ];
    let leaves = (0..4usize).prop_map(|k| match k {
        0 => vec![],
        1 => vec![leave(1, "E-DAY", "2026-11-24", "2026-11-24")],
        2 => vec![
            leave(1, "E-NIGHT", "2026-11-23T23:00", "2026-11-24T03:00"),
            leave(2, "E-DUAL", "2026-11-23T09:00", "2026-11-23T12:00"),
        ],
        _ => vec![
            leave(1, "E-ROT", "2026-11-23", "2026-11-25"),
            leave(2, "E-DAY", "2026-11-25T15:00", "2026-11-25T18:00"),
        ],
    });
    (0..schedules.len(), leaves).prop_map(move |(s, l)| (schedules[s].to_owned(), l))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// A schedule and approved leave give the same records whether they are in force before the punches come or arrive
    /// at any point among them (after windows closed too), whatever the punches' order.
    #[test]
    fn schedules_and_leave_give_the_same_records_whenever_they_arrive(
        punches in arb_punches(),
        (sched, leaves) in arb_plans(),
        at_batch in 0usize..8,
        reversed in any::<bool>(),
        mid_tick in proptest::option::of(0i64..(4 * 24 * 60)),
    ) {
        let start = at("2026-11-22T00:00");
        let end = at("2026-11-29T00:00");
        let mut a = plans_engine();
        let mut ca = a.apply(Input::Tick(start));
        ca.extend(a.apply_batch([schedule(&sched), book(leaves.clone())]));
        ca.extend(a.apply_batch(punches.iter().cloned().map(Input::Punch)));
        ca.extend(a.apply(Input::Tick(end)));

        let mut order = punches.clone();
        if reversed {
            order.reverse();
        }
        let mut b = plans_engine();
        let mut cb = b.apply(Input::Tick(start));
        let chunks: Vec<&[Punch]> = order.chunks(4).collect();
        for i in 0..=chunks.len() {
            if i == at_batch.min(chunks.len()) {
                cb.extend(b.apply_batch([schedule(&sched), book(leaves.clone())]));
            }
            if let Some(chunk) = chunks.get(i) {
                cb.extend(b.apply_batch(chunk.iter().cloned().map(Input::Punch)));
            }
            if let (Some(minute), 1) = (mid_tick, i) {
                cb.extend(b.apply(Input::Tick(start + 24 * 3_600_000 + minute * 60_000)));
            }
        }
        cb.extend(b.apply(Input::Tick(end)));
        // A record the schedule took away is withdrawn with a cleared revision (no statuses, no punches): the same as
        // never having had it.
        let live = |c: &[Change]| -> BTreeMap<String, AttendanceRecord> {
            content(&latest(c)).into_iter().filter(|(_, r)| !(r.statuses.is_empty() && r.punch_ids.is_empty())).collect()
        };
        prop_assert_eq!(live(&ca), live(&cb));
        check_revisions_increase(&cb)?;
    }
}
