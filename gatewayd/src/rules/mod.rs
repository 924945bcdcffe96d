//! The attendance rules file, `rules.toml` (SPEC section 4): serde structs that reject unknown keys, then an explicit
//! validation that compiles them into [`Rules`], the form the engine uses.
//!
//! Every problem is reported as `FILE:LINE: key: problem` through [`crate::config::source`], with keys such as
//! `shift[night].end` or `group[assembly].rotation.pattern[2]`. Validation collects every problem instead of stopping at
//! the first, so one `gatewayd validate` run shows them all.
//!
//! Times of day are `HH:MM` or `HH:MM:SS` in the site time zone; a shift whose end is not after its start ends the next day
//! and belongs to its start date. Durations are written like `"10m"`, `"2h"`, `"1h 30m"`.
//!
//! # Which file is in force
//! `PUT /api/v1/rules` writes [`API_FILE`] in the data dir (the one place the hardened service may write); when that file
//! exists it is the rules in force, at start and on every SIGHUP, and `[rules].file` is not read. Deleting it (then
//! SIGHUP) puts `[rules].file` back in force. [`file_in_force`] is that rule; everything that reads rules asks it.
//!
//! Versions: the engine stage numbers every distinct rules text it puts in force (see [`crate::reconcile::stage`]); each
//! record carries the version that produced it. This module only parses and checks.

pub mod geo;

use std::collections::BTreeSet;
use std::path::Path;

use drivers::Method;
use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::config::source::{Problem, Seg, TomlSource};
use crate::config::Problems;
pub use geo::Geofence;

/// Looked up for every punch: foldhash instead of SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Smallest and largest geofence radius accepted, in metres.
pub const RADIUS_RANGE_M: (f64, f64) = (50.0, 5000.0);
/// Longest `opens_before` and `closes_after` (the engine looks at most one day around a punch's date).
pub const MAX_WINDOW_EXTENSION_MS: i64 = 24 * 3600 * 1000;
/// Default number of days back a late punch still re-reconciles its day.
pub const DEFAULT_RECONCILE_DAYS: u32 = 31;
/// The rules file `PUT /api/v1/rules` writes, in the data dir.
pub const API_FILE: &str = "api-rules.toml";

/// The rules file in force: [`API_FILE`] in the data dir when the API wrote one, else `[rules].file`, else none.
pub fn file_in_force(config: &crate::config::Config) -> Option<std::path::PathBuf> {
    let written = config.gateway.data_dir.join(API_FILE);
    if written.is_file() {
        return Some(written);
    }
    config.rules.as_ref().map(|f| f.file.clone())
}

const DAY_NAMES: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

/// `rules.toml` as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// Same employee and same method within this of a kept punch: merged into it, kept as evidence. Default `"5m"`.
    pub dedupe_window: Option<String>,
    /// A real-time device whose time is this far from the arrival time flags the punch `clock_skew`. Default `"5m"`.
    pub max_clock_skew: Option<String>,
    /// How many days back a late punch still re-reconciles its work date; older punches are forwarded but change no
    /// record. Default 31, at most 366.
    pub reconcile_days: Option<u32>,
    /// The shifts, one `[[shift]]` table each.
    #[serde(default, rename = "shift")]
    pub shifts: Vec<ShiftFile>,
    /// Who works which shift on which days, one `[[group]]` table each.
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupFile>,
    /// Holidays and make-up working days of the site.
    #[serde(default)]
    pub calendar: CalendarFile,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShiftFile {
    /// Unique shift id, referenced by groups and rotations (letters, digits, '-', '_', '.'; not `off`).
    pub id: String,
    /// Start time of day, `HH:MM`.
    pub start: String,
    /// End time of day, `HH:MM`; not after `start` means the next day.
    pub end: String,
    /// A clock-in up to this after `start` is on time. Default `"0m"`.
    pub late_grace: Option<String>,
    /// A clock-out up to this before `end` is not an early leave. Default `"0m"`.
    pub early_grace: Option<String>,
    /// Punches from this before `start` can be the clock-in. Default `"2h"`, at most 24h.
    pub opens_before: Option<String>,
    /// Punches until this after `end` can be the clock-out; then the window closes. Default `"6h"`, at most 24h.
    pub closes_after: Option<String>,
    /// Overtime counts once the clock-out is at least this after `end`. Default `"30m"`, at most `closes_after`.
    pub overtime_after: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    /// Unique group id.
    pub id: String,
    /// Roster departments whose employees belong to this group. A department belongs to at most one group.
    #[serde(default)]
    pub departments: Vec<String>,
    /// Employee ids that belong to this group whatever their department (they take precedence over departments).
    #[serde(default)]
    pub employees: Vec<String>,
    /// The shift worked every working day. Exactly one of `shift` and `rotation`.
    pub shift: Option<String>,
    /// A repeating pattern of shift ids and `off`, counted in days from `starts`.
    pub rotation: Option<RotationFile>,
    /// The shift whose window applies to work on rest days and holidays. Default: `shift`, or the first shift of the
    /// rotation pattern.
    pub rest_day_shift: Option<String>,
    /// Weekdays that are working days (`mon` … `sun`). Default Monday to Friday.
    pub workdays: Option<Vec<String>>,
    /// Dual verification: a clock event counts only when both methods are punched within `window` of each other.
    pub verification: Option<VerificationFile>,
    /// Where GPS punches must be: `center` + `radius_m` (50..5000 m), or `polygon`.
    pub geofence: Option<GeofenceFile>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationFile {
    /// Shift ids or `off`, one per day.
    pub pattern: Vec<String>,
    /// The date (`YYYY-MM-DD`) on which the pattern's first entry applies.
    pub starts: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationFile {
    /// Exactly two different methods, e.g. `["fingerprint", "card"]`.
    pub require: Vec<String>,
    /// The longest time between the two punches of one clock event, e.g. `"15m"` (1s to 2h).
    pub window: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeofenceFile {
    /// `[lat, lng]` of a circular fence.
    pub center: Option<Vec<f64>>,
    /// Radius of the circular fence in metres, 50 to 5000.
    pub radius_m: Option<f64>,
    /// Vertices `[[lat, lng], …]` of a polygon fence (3 to 1000).
    pub polygon: Option<Vec<Vec<f64>>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarFile {
    /// Rest days even if the group's workdays say otherwise (`YYYY-MM-DD`).
    #[serde(default)]
    pub holidays: Vec<String>,
    /// Make-up working days even on weekends (`YYYY-MM-DD`).
    #[serde(default)]
    pub workdays: Vec<String>,
}

/// A shift, compiled. Times are seconds after local midnight; durations milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Shift {
    pub id: String,
    pub start_s: u32,
    pub end_s: u32,
    pub late_grace_ms: i64,
    pub early_grace_ms: i64,
    pub opens_before_ms: i64,
    pub closes_after_ms: i64,
    pub overtime_after_ms: i64,
}

/// The absolute times of one shift on one work date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShiftSpan {
    /// Scheduled start and end (Unix ms).
    pub start_ms: i64,
    pub end_ms: i64,
    /// The window: punches in `[open_ms, close_ms]` belong to this shift.
    pub open_ms: i64,
    pub close_ms: i64,
}

impl Shift {
    /// Whether the shift ends on the day after its start.
    pub fn crosses_midnight(&self) -> bool {
        self.end_s <= self.start_s
    }

    /// The shift on `date` in `tz`. Local times that do not exist (a DST gap) move forward; repeated ones (a fold) take
    /// the earlier instant.
    pub fn span(&self, date: Date, tz: &TimeZone) -> ShiftSpan {
        let start_ms = local_ms(date, self.start_s, tz);
        let end_date = if self.crosses_midnight() { date.tomorrow().unwrap_or(date) } else { date };
        let end_ms = local_ms(end_date, self.end_s, tz).max(start_ms);
        ShiftSpan {
            start_ms,
            end_ms,
            open_ms: start_ms - self.opens_before_ms,
            close_ms: end_ms + self.closes_after_ms,
        }
    }
}

/// Unix ms of `secs` after the start of `date` as read on a wall clock in `tz`.
pub fn local_ms(date: Date, secs: u32, tz: &TimeZone) -> i64 {
    let (h, m, s) = ((secs / 3600) as i8, ((secs / 60) % 60) as i8, (secs % 60) as i8);
    let dt = date.at(h, m, s, 0);
    match tz.to_timestamp(dt) {
        Ok(ts) => ts.as_millisecond(),
        // Only reachable at the far ends of the supported range; fall back to UTC reading.
        Err(_) => TimeZone::UTC.to_timestamp(dt).map(|t| t.as_millisecond()).unwrap_or(0),
    }
}

/// The local calendar date of a Unix ms time.
pub fn local_date(ms: i64, tz: &TimeZone) -> Date {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => tz.to_datetime(ts).date(),
        Err(_) => Date::constant(2000, 1, 1),
    }
}

/// Which shifts a group works.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// The same shift every working day (index into [`Rules::shifts`]).
    Fixed(usize),
    /// `pattern[days since starts mod len]`; `None` is a day off.
    Rotation { pattern: Vec<Option<usize>>, starts: Date },
}

/// Dual verification in force for a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verification {
    pub methods: [Method; 2],
    pub window_ms: i64,
}

/// A group, compiled.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub id: String,
    pub plan: Plan,
    pub rest_day_shift: usize,
    /// Indexed by `Weekday::to_monday_zero_offset`.
    pub workdays: [bool; 7],
    pub verification: Option<Verification>,
    pub geofence: Option<Geofence>,
}

/// What a group works on one date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DayPlan {
    /// Index into [`Rules::shifts`]; on rest days the shift whose window applies to rest-day work.
    pub shift: usize,
    /// A working day: missing punches raise `missing_in` / `missing_out` / `absent`.
    pub workday: bool,
}

/// The rules in force, compiled and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub dedupe_window_ms: i64,
    pub max_clock_skew_ms: i64,
    pub reconcile_days: u32,
    pub shifts: Vec<Shift>,
    pub groups: Vec<Group>,
    pub holidays: BTreeSet<Date>,
    pub makeup_workdays: BTreeSet<Date>,
    by_department: HashMap<String, usize>,
    by_employee: HashMap<String, usize>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules::none()
    }
}

impl Rules {
    /// No rules file: no shifts and no groups, so no records; punches are still checked for clock skew and forwarded.
    pub fn none() -> Rules {
        Rules {
            dedupe_window_ms: 5 * 60_000,
            max_clock_skew_ms: 5 * 60_000,
            reconcile_days: DEFAULT_RECONCILE_DAYS,
            shifts: Vec::new(),
            groups: Vec::new(),
            holidays: BTreeSet::new(),
            makeup_workdays: BTreeSet::new(),
            by_department: HashMap::default(),
            by_employee: HashMap::default(),
        }
    }

    /// Reads and checks a rules file.
    pub fn load(path: &Path) -> Result<(Rules, String), Vec<Problem>> {
        let source = TomlSource::read(path).map_err(|p| vec![p])?;
        let rules = Rules::from_source(&source)?;
        Ok((rules, source.text().to_owned()))
    }

    /// Parses and checks rules text; `path` only names the file in problems. This is the entry point for fuzzing.
    pub fn parse(path: &Path, text: &str) -> Result<Rules, Vec<Problem>> {
        Rules::from_source(&TomlSource::new(path, text.to_owned()))
    }

    fn from_source(source: &TomlSource) -> Result<Rules, Vec<Problem>> {
        let file: RulesFile = source.deserialize().map_err(|p| vec![p])?;
        let mut out = Problems::new(source);
        let rules = compile(&file, &mut out);
        if out.list.is_empty() {
            Ok(rules)
        } else {
            Err(out.list)
        }
    }

    /// The group of an employee: named in a group's `employees`, else by department.
    pub fn group_of(&self, employee: &str, department: &str) -> Option<usize> {
        self.by_employee.get(employee).or_else(|| self.by_department.get(department)).copied()
    }

    pub fn shift_index(&self, id: &str) -> Option<usize> {
        self.shifts.iter().position(|s| s.id == id)
    }

    /// What `group` works on `date`.
    pub fn plan(&self, group: usize, date: Date) -> Option<DayPlan> {
        let g = self.groups.get(group)?;
        let weekday = date.weekday().to_monday_zero_offset() as usize;
        let scheduled = match &g.plan {
            Plan::Fixed(s) => Some(*s),
            Plan::Rotation { pattern, starts } => {
                let days = i64::from(date.to_jiff_days()) - i64::from(starts.to_jiff_days());
                let len = pattern.len().max(1) as i64;
                pattern.get(days.rem_euclid(len) as usize).copied().flatten()
            }
        };
        let workday = if self.makeup_workdays.contains(&date) {
            true
        } else if self.holidays.contains(&date) {
            false
        } else {
            scheduled.is_some() && g.workdays[weekday]
        };
        let shift = match scheduled {
            Some(s) if workday => s,
            _ => g.rest_day_shift,
        };
        Some(DayPlan { shift, workday })
    }

    /// When every shift window of `date` has closed (and, with no shifts, the end of the local day).
    pub fn day_close_ms(&self, date: Date, tz: &TimeZone) -> i64 {
        let midnight = local_ms(date.tomorrow().unwrap_or(date), 0, tz);
        self.shifts.iter().map(|s| s.span(date, tz).close_ms).fold(midnight, i64::max)
    }
}

/// Day numbers for arithmetic on dates (days since 1970-01-01).
trait JiffDays {
    fn to_jiff_days(self) -> i32;
}

impl JiffDays for Date {
    fn to_jiff_days(self) -> i32 {
        let epoch = Date::constant(1970, 1, 1);
        epoch.until(self).map(|s| s.get_days()).unwrap_or(0)
    }
}

/// Parses `HH:MM` or `HH:MM:SS` into seconds after midnight.
pub fn parse_time_of_day(text: &str) -> Result<u32, String> {
    let bad = || format!("`{text}` is not a time of day (write e.g. \"09:00\" or \"22:30\")");
    let parts: Vec<&str> = text.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(bad());
    }
    let num = |i: usize| parts.get(i).and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
    let (h, m, s) = (num(0), num(1), num(2));
    if h > 23 || m > 59 || s > 59 {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60 + s)
}

/// Parses a calendar date `YYYY-MM-DD`.
pub fn parse_date(text: &str) -> Result<Date, String> {
    let b = text.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape {
        return Err(format!("`{text}` is not a date like 2026-10-01"));
    }
    text.parse::<Date>().map_err(|_| format!("`{text}` is not a valid calendar date"))
}

fn valid_id(id: &str) -> Result<(), String> {
    drivers::config::valid_device_id(id)
}

fn duration_ms(
    out: &mut Problems<'_>,
    at: &[Seg<'_>],
    key: &str,
    value: Option<&String>,
    default_ms: i64,
    range: (i64, i64),
) -> i64 {
    let Some(text) = value else { return default_ms };
    match drivers::config::parse_duration(text) {
        Ok(d) => {
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            if ms < range.0 || ms > range.1 {
                out.add(at, key, format!("must be between {} and {}", show_ms(range.0), show_ms(range.1)));
                default_ms
            } else {
                ms
            }
        }
        Err(e) => {
            out.add(at, key, e);
            default_ms
        }
    }
}

fn show_ms(ms: i64) -> String {
    match ms {
        0 => "0s".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

const HOUR: i64 = 3_600_000;

fn compile(file: &RulesFile, out: &mut Problems<'_>) -> Rules {
    let mut rules = Rules::none();
    rules.dedupe_window_ms = duration_ms(
        out,
        &[Seg::Key("dedupe_window")],
        "dedupe_window",
        file.dedupe_window.as_ref(),
        5 * 60_000,
        (0, HOUR),
    );
    rules.max_clock_skew_ms = duration_ms(
        out,
        &[Seg::Key("max_clock_skew")],
        "max_clock_skew",
        file.max_clock_skew.as_ref(),
        5 * 60_000,
        (1000, 24 * HOUR),
    );
    if let Some(days) = file.reconcile_days {
        if !(1..=366).contains(&days) {
            out.add(&[Seg::Key("reconcile_days")], "reconcile_days", "must be between 1 and 366".into());
        } else {
            rules.reconcile_days = days;
        }
    }

    for (i, s) in file.shifts.iter().enumerate() {
        let name = if s.id.is_empty() { i.to_string() } else { s.id.clone() };
        let at = |k: &'static str| [Seg::Key("shift"), Seg::Index(i), Seg::Key(k)];
        let key = |k: &str| format!("shift[{name}].{k}");
        if let Err(e) = valid_id(&s.id) {
            out.add(&at("id"), &key("id"), e);
        } else if s.id == "off" {
            out.add(&at("id"), &key("id"), "`off` is reserved for days off in rotations".into());
        } else if file.shifts[..i].iter().any(|o| o.id == s.id) {
            out.add(&at("id"), &key("id"), format!("`{}` is used by another shift", s.id));
        }
        let start_s = parse_time_of_day(&s.start).unwrap_or_else(|e| {
            out.add(&at("start"), &key("start"), e);
            0
        });
        let end_s = parse_time_of_day(&s.end).unwrap_or_else(|e| {
            out.add(&at("end"), &key("end"), e);
            0
        });
        if start_s == end_s && parse_time_of_day(&s.start).is_ok() && parse_time_of_day(&s.end).is_ok() {
            out.add(&at("end"), &key("end"), "must differ from start".into());
        }
        let length_ms = i64::from(if end_s > start_s { end_s - start_s } else { end_s + 86_400 - start_s }) * 1000;
        let ext = (0, MAX_WINDOW_EXTENSION_MS);
        let mut shift = Shift {
            id: s.id.clone(),
            start_s,
            end_s,
            late_grace_ms: duration_ms(out, &at("late_grace"), &key("late_grace"), s.late_grace.as_ref(), 0, ext),
            early_grace_ms: duration_ms(out, &at("early_grace"), &key("early_grace"), s.early_grace.as_ref(), 0, ext),
            opens_before_ms: duration_ms(
                out,
                &at("opens_before"),
                &key("opens_before"),
                s.opens_before.as_ref(),
                2 * HOUR,
                ext,
            ),
            closes_after_ms: duration_ms(
                out,
                &at("closes_after"),
                &key("closes_after"),
                s.closes_after.as_ref(),
                6 * HOUR,
                ext,
            ),
            overtime_after_ms: 0,
        };
        shift.overtime_after_ms = duration_ms(
            out,
            &at("overtime_after"),
            &key("overtime_after"),
            s.overtime_after.as_ref(),
            (30 * 60_000).min(shift.closes_after_ms),
            ext,
        );
        if s.overtime_after.is_some() && shift.overtime_after_ms > shift.closes_after_ms {
            out.add(
                &at("overtime_after"),
                &key("overtime_after"),
                format!("must not exceed closes_after ({}): the window closes first", show_ms(shift.closes_after_ms)),
            );
        }
        if length_ms > 0 && shift.late_grace_ms >= length_ms {
            out.add(&at("late_grace"), &key("late_grace"), "must be shorter than the shift".into());
        }
        if length_ms > 0 && shift.early_grace_ms >= length_ms {
            out.add(&at("early_grace"), &key("early_grace"), "must be shorter than the shift".into());
        }
        rules.shifts.push(shift);
    }

    let shift_ids: Vec<&str> = file.shifts.iter().map(|s| s.id.as_str()).collect();
    let known = || shift_ids.join(", ");
    let find_shift = |id: &str| file.shifts.iter().position(|s| s.id == id);

    let mut department_owner: HashMap<&str, &str> = HashMap::default();
    let mut employee_owner: HashMap<&str, &str> = HashMap::default();
    for (i, g) in file.groups.iter().enumerate() {
        let name = if g.id.is_empty() { i.to_string() } else { g.id.clone() };
        let at = |k: &'static str| vec![Seg::Key("group"), Seg::Index(i), Seg::Key(k)];
        let key = |k: &str| format!("group[{name}].{k}");
        if let Err(e) = valid_id(&g.id) {
            out.add(&at("id"), &key("id"), e);
        } else if file.groups[..i].iter().any(|o| o.id == g.id) {
            out.add(&at("id"), &key("id"), format!("`{}` is used by another group", g.id));
        }
        if g.departments.is_empty() && g.employees.is_empty() {
            out.add(&at("departments"), &key("departments"), "missing: a group needs departments or employees".into());
        }
        for (j, d) in g.departments.iter().enumerate() {
            let mut path = at("departments");
            path.push(Seg::Index(j));
            if d.trim().is_empty() {
                out.add(&path, &key("departments"), "a department id is empty".into());
            } else if let Some(other) = department_owner.insert(d.as_str(), g.id.as_str()) {
                out.add(&path, &key("departments"), format!("department `{d}` is already in group `{other}`"));
            }
        }
        for (j, e) in g.employees.iter().enumerate() {
            let mut path = at("employees");
            path.push(Seg::Index(j));
            if e.trim().is_empty() {
                out.add(&path, &key("employees"), "an employee id is empty".into());
            } else if let Some(other) = employee_owner.insert(e.as_str(), g.id.as_str()) {
                out.add(&path, &key("employees"), format!("employee `{e}` is already in group `{other}`"));
            }
        }

        let plan = match (&g.shift, &g.rotation) {
            (Some(_), Some(_)) => {
                out.add(&at("rotation"), &key("rotation"), "give either shift or rotation, not both".into());
                None
            }
            (None, None) => {
                out.add(&at("id"), &key("shift"), "missing: give shift or rotation".into());
                None
            }
            (Some(s), None) => match find_shift(s) {
                Some(idx) => Some(Plan::Fixed(idx)),
                None => {
                    out.add(&at("shift"), &key("shift"), format!("unknown shift `{s}` (defined: {})", known()));
                    None
                }
            },
            (None, Some(r)) => {
                let mut path = at("rotation");
                path.push(Seg::Key("starts"));
                let starts = parse_date(&r.starts).unwrap_or_else(|e| {
                    out.add(&path, &key("rotation.starts"), e);
                    Date::constant(2000, 1, 3)
                });
                if r.pattern.is_empty() || r.pattern.len() > 366 {
                    let mut path = at("rotation");
                    path.push(Seg::Key("pattern"));
                    out.add(&path, &key("rotation.pattern"), "must list 1 to 366 days".into());
                }
                let mut pattern = Vec::with_capacity(r.pattern.len());
                for (j, entry) in r.pattern.iter().enumerate() {
                    if entry == "off" {
                        pattern.push(None);
                        continue;
                    }
                    match find_shift(entry) {
                        Some(idx) => pattern.push(Some(idx)),
                        None => {
                            let mut path = at("rotation");
                            path.extend([Seg::Key("pattern"), Seg::Index(j)]);
                            out.add(
                                &path,
                                &key(&format!("rotation.pattern[{j}]")),
                                format!("unknown shift `{entry}` (defined: {}; or `off`)", known()),
                            );
                            pattern.push(None);
                        }
                    }
                }
                if !r.pattern.is_empty() && pattern.iter().all(Option::is_none) && g.rest_day_shift.is_none() {
                    let mut path = at("rotation");
                    path.push(Seg::Key("pattern"));
                    out.add(&path, &key("rotation.pattern"), "has no working day".into());
                }
                Some(Plan::Rotation { pattern, starts })
            }
        };
        let rest_day_shift = match &g.rest_day_shift {
            Some(s) => find_shift(s).unwrap_or_else(|| {
                out.add(
                    &at("rest_day_shift"),
                    &key("rest_day_shift"),
                    format!("unknown shift `{s}` (defined: {})", known()),
                );
                0
            }),
            None => match &plan {
                Some(Plan::Fixed(idx)) => *idx,
                Some(Plan::Rotation { pattern, .. }) => pattern.iter().flatten().next().copied().unwrap_or(0),
                None => 0,
            },
        };

        let mut workdays = [false; 7];
        match &g.workdays {
            None => workdays[..5].iter_mut().for_each(|w| *w = true),
            Some(days) => {
                for (j, d) in days.iter().enumerate() {
                    let mut path = at("workdays");
                    path.push(Seg::Index(j));
                    match DAY_NAMES.iter().find(|(n, _)| n == &d.to_ascii_lowercase()) {
                        Some((_, wd)) => {
                            let idx = wd.to_monday_zero_offset() as usize;
                            if workdays[idx] {
                                out.add(&path, &key("workdays"), format!("`{d}` is listed twice"));
                            }
                            workdays[idx] = true;
                        }
                        None => out.add(
                            &path,
                            &key("workdays"),
                            format!("`{d}` is not a weekday (mon, tue, wed, thu, fri, sat, sun)"),
                        ),
                    }
                }
            }
        }

        let verification = g.verification.as_ref().and_then(|v| {
            let mut vpath = at("verification");
            vpath.push(Seg::Key("require"));
            let mut methods = Vec::new();
            for m in &v.require {
                match Method::parse(m) {
                    Some(Method::Makeup | Method::Other) | None => out.add(
                        &vpath,
                        &key("verification.require"),
                        format!("`{m}` is not a method a person can punch with (face, fingerprint, card, pin, password, palm, gps, qr)"),
                    ),
                    Some(method) => methods.push(method),
                }
            }
            if v.require.len() != 2 {
                out.add(&vpath, &key("verification.require"), "must name exactly two methods".into());
            } else if methods.len() == 2 && methods[0] == methods[1] {
                out.add(&vpath, &key("verification.require"), "the two methods must differ".into());
            }
            let mut wpath = at("verification");
            wpath.push(Seg::Key("window"));
            let window_ms = duration_ms(out, &wpath, &key("verification.window"), Some(&v.window), 0, (1000, 2 * HOUR));
            match methods[..] {
                [a, b] if a != b => Some(Verification { methods: [a, b], window_ms }),
                _ => None,
            }
        });

        let geofence = g.geofence.as_ref().and_then(|f| compile_geofence(f, &at("geofence"), &key("geofence"), out));

        if let Some(plan) = plan {
            rules.groups.push(Group { id: g.id.clone(), plan, rest_day_shift, workdays, verification, geofence });
            let idx = rules.groups.len() - 1;
            for d in &g.departments {
                rules.by_department.entry(d.clone()).or_insert(idx);
            }
            for e in &g.employees {
                rules.by_employee.entry(e.clone()).or_insert(idx);
            }
        }
    }

    for (list, name, set) in [
        (&file.calendar.holidays, "holidays", &mut rules.holidays),
        (&file.calendar.workdays, "workdays", &mut rules.makeup_workdays),
    ] {
        for (j, text) in list.iter().enumerate() {
            let path = [Seg::Key("calendar"), Seg::Key(name), Seg::Index(j)];
            match parse_date(text) {
                Ok(d) => {
                    set.insert(d);
                }
                Err(e) => out.add(&path, &format!("calendar.{name}"), e),
            }
        }
    }
    for (j, text) in file.calendar.workdays.iter().enumerate() {
        if let Ok(d) = parse_date(text) {
            if rules.holidays.contains(&d) {
                out.add(
                    &[Seg::Key("calendar"), Seg::Key("workdays"), Seg::Index(j)],
                    "calendar.workdays",
                    format!("{d} is also a holiday"),
                );
            }
        }
    }
    rules
}

fn compile_geofence(f: &GeofenceFile, at: &[Seg<'_>], key: &str, out: &mut Problems<'_>) -> Option<Geofence> {
    let sub = |k: &'static str| {
        let mut p = at.to_vec();
        p.push(Seg::Key(k));
        p
    };
    let point_ok = |p: &[f64]| {
        p.len() == 2
            && p[0].is_finite()
            && p[1].is_finite()
            && (-90.0..=90.0).contains(&p[0])
            && (-180.0..=180.0).contains(&p[1])
    };
    match (&f.center, f.radius_m, &f.polygon) {
        (Some(center), radius, None) => {
            let mut ok = true;
            if !point_ok(center) {
                out.add(
                    &sub("center"),
                    &format!("{key}.center"),
                    "must be [lat, lng] with lat -90..90 and lng -180..180".into(),
                );
                ok = false;
            }
            let radius = match radius {
                Some(r) if r.is_finite() && r >= RADIUS_RANGE_M.0 && r <= RADIUS_RANGE_M.1 => r,
                Some(r) => {
                    out.add(
                        &sub("radius_m"),
                        &format!("{key}.radius_m"),
                        format!("{r} is out of range: must be between 50 and 5000 metres"),
                    );
                    ok = false;
                    0.0
                }
                None => {
                    out.add(at, &format!("{key}.radius_m"), "missing: a circular fence needs radius_m".into());
                    ok = false;
                    0.0
                }
            };
            ok.then(|| Geofence::Circle { lat: center[0], lng: center[1], radius_m: radius })
        }
        (None, None, Some(polygon)) => {
            if polygon.len() < 3 || polygon.len() > 1000 {
                out.add(&sub("polygon"), &format!("{key}.polygon"), "must have 3 to 1000 vertices".into());
                return None;
            }
            let mut ring = Vec::with_capacity(polygon.len());
            for (j, p) in polygon.iter().enumerate() {
                if point_ok(p) {
                    ring.push((p[0], p[1]));
                } else {
                    let mut path = sub("polygon");
                    path.push(Seg::Index(j));
                    out.add(
                        &path,
                        &format!("{key}.polygon[{j}]"),
                        "must be [lat, lng] with lat -90..90 and lng -180..180".into(),
                    );
                }
            }
            (ring.len() == polygon.len()).then_some(Geofence::Polygon(ring))
        }
        (None, Some(_), Some(_)) | (Some(_), _, Some(_)) => {
            out.add(
                &sub("polygon"),
                &format!("{key}.polygon"),
                "give either center + radius_m or polygon, not both".into(),
            );
            None
        }
        (None, Some(_), None) => {
            out.add(&sub("radius_m"), &format!("{key}.center"), "missing: radius_m needs center = [lat, lng]".into());
            None
        }
        (None, None, None) => {
            out.add(at, key, "missing: give center + radius_m or polygon".into());
            None
        }
    }
}

#[cfg(test)]
mod tests;
