//! Schedules (排班): per-employee day assignments that override the group's fixed shift or rotation for those days.
//!
//! A schedule is CSV with the header `employee,date,shift`, one row per (employee, work date): `shift` is a shift id of
//! the rules in force or `off` (a rest day). It comes from `[schedule].file`, or from `PUT /api/v1/schedules`, which
//! merges its rows into the schedule in force and writes the result to [`API_FILE`] in the data dir; that file then wins
//! over `[schedule].file` (as for the roster and the rules). In an update through the API, an empty `shift` takes the
//! override away (the group's plan applies again).
//!
//! An assignment to a shift makes the date a working day on that shift for that employee, holidays included (it was
//! asked for explicitly); `off` makes it a rest day (work on it is `rest_day_work`). An employee who belongs to no group
//! has no records, scheduled or not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::civil::Date;

use crate::config::source::Problem;
use crate::reconcile::roster::csv as rows;
use crate::reconcile::rules::{parse_date, Rules};

/// The schedule file `PUT /api/v1/schedules` writes, in the data dir.
pub const API_FILE: &str = "api-schedule.csv";
/// The most rows a schedule may have (a year of 2,700 employees).
pub const MAX_ROWS: usize = 1_000_000;
/// The header line of a schedule.
pub const HEADER: [&str; 3] = ["employee", "date", "shift"];

/// The schedule file in force: [`API_FILE`] in the data dir when the API wrote one, else `[schedule].file`, else none.
pub fn file_in_force(config: &crate::config::Config) -> Option<PathBuf> {
    let written = config.gateway.data_dir.join(API_FILE);
    if written.is_file() {
        return Some(written);
    }
    config.schedule.as_ref().map(|f| f.file.clone())
}

pub use crate::reconcile::rules::Assignment;

/// The schedule in force: employee → date → assignment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    days: BTreeMap<String, BTreeMap<Date, Assignment>>,
    rows: usize,
}

/// Rows of an update: an assignment, or `None` to take the override away.
pub type Update = Vec<(String, Date, Option<Assignment>)>;

fn problem(path: &Path, line: usize, key: &str, message: String) -> Problem {
    Problem { file: path.to_owned(), line, key: key.to_owned(), message }
}

/// Parses schedule CSV into rows; `clears` allows an empty shift (an update through the API). Shift ids are checked
/// against `rules` when given. Every problem is collected, each with its line.
pub fn parse_rows(path: &Path, text: &str, rules: Option<&Rules>, clears: bool) -> Result<Update, Vec<Problem>> {
    let records = rows::parse(text).map_err(|e| vec![problem(path, e.line, "", e.message)])?;
    let mut problems = Vec::new();
    let mut out = Vec::with_capacity(records.len());
    let mut seen: BTreeMap<(String, Date), usize> = BTreeMap::new();
    let mut records = records.into_iter().peekable();
    match records.peek() {
        Some(r) if r.fields.iter().map(|f| f.to_ascii_lowercase()).eq(HEADER.iter().map(|h| (*h).to_owned())) => {
            records.next();
        }
        Some(r) => {
            return Err(vec![problem(
                path,
                r.line,
                "header",
                format!("the first line must be the header `{}`", HEADER.join(",")),
            )])
        }
        None => return Ok(out),
    }
    for r in records {
        if out.len() >= MAX_ROWS {
            problems.push(problem(path, r.line, "", format!("more than {MAX_ROWS} rows")));
            break;
        }
        let [employee, date, shift] = r.fields.as_slice() else {
            problems.push(problem(
                path,
                r.line,
                "",
                format!("expected 3 fields (employee,date,shift), found {}", r.fields.len()),
            ));
            continue;
        };
        if employee.is_empty() || employee.len() > 64 || employee.chars().any(char::is_control) {
            problems.push(problem(
                path,
                r.line,
                "employee",
                "must be 1 to 64 characters without control characters".into(),
            ));
            continue;
        }
        let date = match parse_date(date) {
            Ok(d) => d,
            Err(e) => {
                problems.push(problem(path, r.line, "date", e));
                continue;
            }
        };
        let assignment = match shift.as_str() {
            "" if clears => None,
            "" => {
                problems.push(problem(path, r.line, "shift", "missing: give a shift id or `off`".into()));
                continue;
            }
            "off" => Some(Assignment::Off),
            id => {
                if let Some(rules) = rules {
                    if rules.shift_index(id).is_none() {
                        let known: Vec<&str> = rules.shifts.iter().map(|s| s.id.as_str()).collect();
                        problems.push(problem(
                            path,
                            r.line,
                            "shift",
                            format!("unknown shift `{id}` (defined: {}; or `off`)", known.join(", ")),
                        ));
                        continue;
                    }
                }
                Some(Assignment::Shift(id.to_owned()))
            }
        };
        if let Some(first) = seen.insert((employee.clone(), date), r.line) {
            problems.push(problem(
                path,
                r.line,
                "date",
                format!("{employee} on {date} is scheduled already on line {first}"),
            ));
            continue;
        }
        out.push((employee.clone(), date, assignment));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

impl Schedule {
    /// Reads and checks a schedule file (shift ids against `rules` when given).
    pub fn load(path: &Path, rules: Option<&Rules>) -> Result<Schedule, Vec<Problem>> {
        let bytes = std::fs::read(path).map_err(|e| vec![problem(path, 1, "", format!("cannot read: {e}"))])?;
        let text = String::from_utf8(bytes).map_err(|_| vec![problem(path, 1, "", "is not UTF-8 text".into())])?;
        Schedule::parse(path, &text, rules)
    }

    /// Parses and checks schedule text; `path` only names the file in problems.
    pub fn parse(path: &Path, text: &str, rules: Option<&Rules>) -> Result<Schedule, Vec<Problem>> {
        let mut s = Schedule::default();
        s.apply(parse_rows(path, text, rules, false)?);
        Ok(s)
    }

    /// Applies an update: assignments replace the ones of their (employee, date), `None` removes it.
    pub fn apply(&mut self, update: Update) {
        for (employee, date, assignment) in update {
            match assignment {
                Some(a) => {
                    if self.days.entry(employee).or_default().insert(date, a).is_none() {
                        self.rows += 1;
                    }
                }
                None => {
                    if let Some(days) = self.days.get_mut(&employee) {
                        if days.remove(&date).is_some() {
                            self.rows -= 1;
                        }
                        if days.is_empty() {
                            self.days.remove(&employee);
                        }
                    }
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The number of (employee, date) assignments.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// The assignment of `employee` on `date`, if scheduled.
    pub fn get(&self, employee: &str, date: Date) -> Option<&Assignment> {
        if self.rows == 0 {
            return None;
        }
        self.days.get(employee)?.get(&date)
    }

    /// Assignments from `from` to `to` (inclusive), of one employee or all, by employee then date.
    pub fn between(
        &self,
        employee: Option<&str>,
        from: Date,
        to: Date,
    ) -> impl Iterator<Item = (&str, Date, &Assignment)> + '_ {
        let employee = employee.map(str::to_owned);
        self.days
            .iter()
            .filter(move |(e, _)| employee.as_ref().is_none_or(|x| x == *e))
            .flat_map(move |(e, days)| days.range(from..=to).map(move |(d, a)| (e.as_str(), *d, a)))
    }

    /// The (employee, date) pairs whose assignment differs between `self` and `other`.
    pub fn differences(&self, other: &Schedule) -> Vec<(String, Date)> {
        let mut out = Vec::new();
        let employees: std::collections::BTreeSet<&String> = self.days.keys().chain(other.days.keys()).collect();
        let empty = BTreeMap::new();
        for e in employees {
            let (a, b) = (self.days.get(e).unwrap_or(&empty), other.days.get(e).unwrap_or(&empty));
            let dates: std::collections::BTreeSet<&Date> = a.keys().chain(b.keys()).collect();
            out.extend(dates.into_iter().filter(|d| a.get(d) != b.get(d)).map(|d| (e.clone(), *d)));
        }
        out
    }

    /// Shift ids the schedule names that `rules` do not define, with one (employee, date) naming each.
    pub fn unknown_shifts(&self, rules: &Rules) -> Vec<(String, String, Date)> {
        let mut out: BTreeMap<String, (String, Date)> = BTreeMap::new();
        for (e, days) in &self.days {
            for (d, a) in days {
                if let Assignment::Shift(id) = a {
                    if rules.shift_index(id).is_none() {
                        out.entry(id.clone()).or_insert_with(|| (e.clone(), *d));
                    }
                }
            }
        }
        out.into_iter().map(|(id, (e, d))| (id, e, d)).collect()
    }

    /// The schedule as CSV, header first, by employee then date (what [`Schedule::parse`] reads back).
    pub fn to_csv(&self) -> String {
        let mut w = ::csv::WriterBuilder::new().terminator(::csv::Terminator::Any(b'\n')).from_writer(Vec::new());
        let _ = w.write_record(HEADER);
        for (e, days) in &self.days {
            for (d, a) in days {
                let _ = w.write_record([e.as_str(), &d.to_string(), a.as_str()]);
            }
        }
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }
}

/// Checks `[schedule]`: the file exists and it, and the copy the API wrote, parse with shift ids the rules in force
/// define (called by the configuration loader).
pub fn check_config(config: &crate::config::Config, out: &mut crate::config::Problems<'_>) {
    let written = config.gateway.data_dir.join(API_FILE);
    let rules = crate::reconcile::rules::file_in_force(config).and_then(|f| Rules::load(&f).ok()).map(|(r, _)| r);
    crate::config::check_stage_file(out, "schedule", config.schedule.as_ref(), &written, |p| {
        Schedule::load(p, rules.as_ref())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::parse(
            Path::new("rules.toml"),
            "[[shift]]\nid = \"day\"\nstart = \"09:00\"\nend = \"18:00\"\n[[shift]]\nid = \"night\"\nstart = \"22:00\"\nend = \"06:00\"\n",
        )
        .unwrap()
    }

    fn d(s: &str) -> Date {
        s.parse().unwrap()
    }

    #[test]
    fn parses_checks_and_round_trips() {
        let text = "employee,date,shift\nE1,2026-12-07,night\nE1,2026-12-08,off\r\nE2,2026-12-07,day\n";
        let s = Schedule::parse(Path::new("s.csv"), text, Some(&rules())).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.get("E1", d("2026-12-07")), Some(&Assignment::Shift("night".into())));
        assert_eq!(s.get("E1", d("2026-12-08")), Some(&Assignment::Off));
        assert_eq!(s.get("E1", d("2026-12-09")), None);
        assert_eq!(s.get("E3", d("2026-12-07")), None);
        let again = Schedule::parse(Path::new("s.csv"), &s.to_csv(), Some(&rules())).unwrap();
        assert_eq!(again, s);
        let listed: Vec<_> = s.between(Some("E1"), d("2026-12-01"), d("2026-12-07")).collect();
        assert_eq!(listed, vec![("E1", d("2026-12-07"), &Assignment::Shift("night".into()))]);
    }

    #[test]
    fn malformed_rows_are_named_by_line() {
        let text = "employee,date,shift\nE1,2026-12-07,evening\nE1,12/07/2026,day\nE2,2026-12-07\nE3,2026-12-07,\n\
                    E4,2026-12-07,day\nE4,2026-12-07,off\n";
        let problems = Schedule::parse(Path::new("s.csv"), text, Some(&rules())).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.iter().map(|p| p.line).collect::<Vec<_>>(), vec![2, 3, 4, 5, 7], "{shown:?}");
        assert!(shown[0].contains("unknown shift `evening` (defined: day, night; or `off`)"), "{shown:?}");
        assert!(shown[1].contains("is not a date"), "{shown:?}");
        assert!(shown[2].contains("expected 3 fields"), "{shown:?}");
        assert!(shown[3].contains("missing"), "{shown:?}");
        assert!(shown[4].contains("scheduled already on line 6"), "{shown:?}");
        let no_header = Schedule::parse(Path::new("s.csv"), "E1,2026-12-07,day\n", None).unwrap_err();
        assert!(no_header[0].to_string().contains("header"), "{no_header:?}");
        assert!(Schedule::parse(Path::new("s.csv"), "employee,date,shift\n\"E1,2026", None).is_err());
        assert_eq!(Schedule::parse(Path::new("s.csv"), "", None).unwrap().len(), 0);
    }

    #[test]
    fn updates_merge_and_clear() {
        let mut s = Schedule::parse(Path::new("s.csv"), "employee,date,shift\nE1,2026-12-07,day\n", None).unwrap();
        let before = s.clone();
        let update =
            parse_rows(Path::new("body"), "employee,date,shift\nE1,2026-12-07,\nE2,2026-12-08,off\n", None, true)
                .unwrap();
        s.apply(update);
        assert_eq!(s.len(), 1);
        assert_eq!(s.get("E1", d("2026-12-07")), None);
        assert_eq!(s.get("E2", d("2026-12-08")), Some(&Assignment::Off));
        assert_eq!(
            before.differences(&s),
            vec![("E1".to_owned(), d("2026-12-07")), ("E2".to_owned(), d("2026-12-08"))]
        );
        assert_eq!(s.unknown_shifts(&rules()), vec![]);
        let odd = Schedule::parse(Path::new("s.csv"), "employee,date,shift\nE1,2026-12-07,late\n", None).unwrap();
        assert_eq!(odd.unknown_shifts(&rules()), vec![("late".to_owned(), "E1".to_owned(), d("2026-12-07"))]);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,300}") {
            let _ = Schedule::parse(Path::new("s.csv"), &format!("employee,date,shift\n{text}"), Some(&rules()));
        }
    }
}
