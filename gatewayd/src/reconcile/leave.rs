//! Leave (请假): what an approved leave covers, and the book of approved leave the engine reads.
//!
//! A leave is asked for through the approvals ([`crate::reconcile::approvals::Kind::Leave`]) and counts once a manager
//! of the employee's department approves it. It covers either whole work dates ([`Period::Days`]: every record of those
//! dates, night shifts included, which belong to their start date) or a stretch of time ([`Period::Time`]: a partial
//! day). On a working day:
//! - a record whose shift the leave covers entirely is `on_leave`, never `absent`, `missing_in`, `missing_out`, `late`
//!   or `early_leave`;
//! - a record the leave covers in part is `on_leave` too, and its expectations shrink: leave over the shift's start
//!   moves the time late is measured from to the leave's end, leave over its end moves the time early leave is measured
//!   against to the leave's start, and a flexible shift's `hours` shrink by the leave's length within the shift. The
//!   rest of the shift is expected as usual (no punch at all is still `absent`).
//!
//! Leave on rest days changes nothing.

use std::collections::BTreeMap;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::reconcile::day::LeaveCover;
use crate::reconcile::rules::{local_date, Shift, ShiftSpan};

/// The longest leave accepted, in days.
pub const MAX_DAYS: i64 = 366;

/// The kinds of leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveType {
    Annual,
    Sick,
    Personal,
    Other,
}

impl LeaveType {
    pub fn parse(s: &str) -> Option<LeaveType> {
        match s {
            "annual" => Some(LeaveType::Annual),
            "sick" => Some(LeaveType::Sick),
            "personal" => Some(LeaveType::Personal),
            "other" => Some(LeaveType::Other),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LeaveType::Annual => "annual",
            LeaveType::Sick => "sick",
            LeaveType::Personal => "personal",
            LeaveType::Other => "other",
        }
    }
}

/// What a leave covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "unit", rename_all = "snake_case")]
pub enum Period {
    /// Whole work dates, `from` to `to` inclusive.
    Days { from: Date, to: Date },
    /// From `from_ms` (inclusive) to `to_ms` (exclusive), Unix ms.
    Time { from_ms: i64, to_ms: i64 },
}

impl Period {
    /// Reads `from` and `to` as written in a request: two dates (`YYYY-MM-DD`, whole days, inclusive), or two times
    /// (`YYYY-MM-DDTHH:MM[:SS]` on the site's clock in `tz`, or RFC 3339 with an offset; `to` exclusive).
    pub fn parse(from: &str, to: &str, tz: &TimeZone) -> Result<Period, String> {
        let date = |s: &str| crate::reconcile::rules::parse_date(s).ok();
        if let (Some(f), Some(t)) = (date(from), date(to)) {
            if t < f {
                return Err(format!("`to` ({t}) is before `from` ({f})"));
            }
            let days = i64::from(f.until(t).map(|s| s.get_days()).unwrap_or(i32::MAX)) + 1;
            if days > MAX_DAYS {
                return Err(format!("a leave covers at most {MAX_DAYS} days"));
            }
            return Ok(Period::Days { from: f, to: t });
        }
        if date(from).is_some() || date(to).is_some() {
            return Err(
                "give `from` and `to` both as dates (2026-12-07: whole days) or both as times (2026-12-07T09:00: part \
                 of a day)"
                    .into(),
            );
        }
        let time = |s: &str, name: &str| -> Result<i64, String> {
            if let Ok(ts) = s.parse::<jiff::Timestamp>() {
                return Ok(ts.as_millisecond());
            }
            s.parse::<jiff::civil::DateTime>()
                .ok()
                .and_then(|dt| tz.to_timestamp(dt).ok())
                .map(|ts| ts.as_millisecond())
                .ok_or_else(|| {
                    format!(
                        "`{name}`: `{s}` is neither a date (2026-12-07) nor a time (2026-12-07T09:00, site time, or \
                         RFC 3339); give both as dates (whole days) or both as times (part of a day)"
                    )
                })
        };
        let (f, t) = (time(from, "from")?, time(to, "to")?);
        if t <= f {
            return Err("`to` must be after `from`".into());
        }
        if t - f > MAX_DAYS * 86_400_000 {
            return Err(format!("a leave covers at most {MAX_DAYS} days"));
        }
        Ok(Period::Time { from_ms: f, to_ms: t })
    }

    /// The work dates the leave can touch (a time leave: the local dates of its ends, one day earlier for a night
    /// shift started the day before).
    pub fn dates(&self, tz: &TimeZone) -> (Date, Date) {
        match *self {
            Period::Days { from, to } => (from, to),
            Period::Time { from_ms, to_ms } => {
                let from = local_date(from_ms, tz);
                (from.yesterday().unwrap_or(from), local_date(to_ms - 1, tz))
            }
        }
    }

    /// Whether two leaves cover some of the same time (a time leave and a whole-day leave overlap when the time
    /// falls on one of the days).
    pub fn overlaps(&self, other: &Period, tz: &TimeZone) -> bool {
        match (*self, *other) {
            (Period::Days { from: a, to: b }, Period::Days { from: c, to: d }) => a <= d && c <= b,
            (Period::Time { from_ms: a, to_ms: b }, Period::Time { from_ms: c, to_ms: d }) => a < d && c < b,
            (Period::Days { from, to }, Period::Time { from_ms, to_ms })
            | (Period::Time { from_ms, to_ms }, Period::Days { from, to }) => {
                local_date(from_ms, tz) <= to && from <= local_date(to_ms - 1, tz)
            }
        }
    }
}

/// One approved leave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leave {
    /// The approval it was granted by.
    pub approval: u64,
    pub employee: String,
    pub leave_type: LeaveType,
    pub period: Period,
}

/// Every approved leave, by employee.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaveBook {
    by_employee: BTreeMap<String, Vec<Leave>>,
}

impl LeaveBook {
    pub fn new(leaves: impl IntoIterator<Item = Leave>) -> LeaveBook {
        let mut by_employee: BTreeMap<String, Vec<Leave>> = BTreeMap::new();
        for l in leaves {
            by_employee.entry(l.employee.clone()).or_default().push(l);
        }
        for list in by_employee.values_mut() {
            list.sort_by_key(|l| l.approval);
        }
        LeaveBook { by_employee }
    }

    pub fn is_empty(&self) -> bool {
        self.by_employee.is_empty()
    }

    /// The approved leave of `employee`.
    pub fn of(&self, employee: &str) -> &[Leave] {
        self.by_employee.get(employee).map_or(&[], Vec::as_slice)
    }

    /// The leave of `employee` on the record of work date `date` whose shift is `span`, as intervals `[from, to)`: a
    /// whole-day leave covers the whole window.
    pub fn intervals(&self, employee: &str, date: Date, span: &ShiftSpan) -> Vec<(i64, i64)> {
        self.of(employee)
            .iter()
            .filter_map(|l| match l.period {
                Period::Days { from, to } => (from <= date && date <= to).then_some((span.open_ms, span.close_ms)),
                Period::Time { from_ms, to_ms } => {
                    (from_ms < span.end_ms && span.start_ms < to_ms).then_some((from_ms, to_ms))
                }
            })
            .collect()
    }

    /// The leave of `employee` on the record of `date` whose shift is `shift`, scheduled as `span`, as the evaluation
    /// uses it; `None` without leave there.
    pub fn cover(&self, employee: &str, date: Date, span: &ShiftSpan, shift: &Shift) -> Option<LeaveCover> {
        if self.by_employee.is_empty() {
            return None;
        }
        LeaveCover::of(&self.intervals(employee, date, span), span, shift.flex.map(|f| f.hours_ms))
    }

    /// The (employee, work dates) whose leave differs between `self` and `other`: each changed leave's dates.
    pub fn differences(&self, other: &LeaveBook, tz: &TimeZone) -> Vec<(String, Date, Date)> {
        let mut out = Vec::new();
        let employees: std::collections::BTreeSet<&String> =
            self.by_employee.keys().chain(other.by_employee.keys()).collect();
        for e in employees {
            let (a, b) = (self.of(e), other.of(e));
            for l in a.iter().filter(|l| !b.contains(l)).chain(b.iter().filter(|l| !a.contains(l))) {
                let (from, to) = l.period.dates(tz);
                out.push((e.clone(), from, to));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tz() -> TimeZone {
        TimeZone::get("Asia/Shanghai").unwrap()
    }

    #[test]
    fn periods_parse_from_dates_or_times() {
        let d = |s: &str| s.parse::<Date>().unwrap();
        assert_eq!(
            Period::parse("2026-12-07", "2026-12-08", &tz()),
            Ok(Period::Days { from: d("2026-12-07"), to: d("2026-12-08") })
        );
        let p = Period::parse("2026-12-07T09:00", "2026-12-07T12:30", &tz()).unwrap();
        let nine = "2026-12-07T01:00:00Z".parse::<jiff::Timestamp>().unwrap().as_millisecond();
        assert_eq!(p, Period::Time { from_ms: nine, to_ms: nine + 210 * 60_000 });
        assert_eq!(Period::parse("2026-12-07T01:00:00Z", "2026-12-07T04:30:00Z", &tz()), Ok(p));
        for (from, to, says) in [
            ("2026-12-08", "2026-12-07", "before"),
            ("2026-12-07", "2028-12-07", "at most 366"),
            ("2026-12-07T12:00", "2026-12-07T09:00", "after"),
            ("2026-12-07", "2026-12-07T12:00", "both as dates"),
            ("yesterday", "today", "neither a date"),
            ("", "", "neither a date"),
        ] {
            let e = Period::parse(from, to, &tz()).unwrap_err();
            assert!(e.contains(says), "{from}..{to}: {e}");
        }
    }

    #[test]
    fn overlaps_and_differences() {
        let days = Period::parse("2026-12-07", "2026-12-08", &tz()).unwrap();
        let morning = Period::parse("2026-12-08T09:00", "2026-12-08T12:00", &tz()).unwrap();
        let later = Period::parse("2026-12-09T09:00", "2026-12-09T12:00", &tz()).unwrap();
        assert!(days.overlaps(&morning, &tz()) && morning.overlaps(&days, &tz()));
        assert!(!days.overlaps(&later, &tz()) && !morning.overlaps(&later, &tz()));
        assert!(days.overlaps(&days, &tz()));
        let leave = |approval, period| Leave { approval, employee: "E1".into(), leave_type: LeaveType::Sick, period };
        let a = LeaveBook::new([leave(1, days)]);
        let b = LeaveBook::new([leave(1, days), leave(2, later)]);
        let d = |s: &str| s.parse::<Date>().unwrap();
        assert_eq!(a.differences(&b, &tz()), vec![("E1".to_owned(), d("2026-12-08"), d("2026-12-09"))]);
        assert_eq!(b.differences(&b, &tz()), vec![]);
    }
}
