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

pub mod calendar_merge;
mod file;
pub mod geo;
pub mod ics;

use std::collections::BTreeSet;
use std::path::Path;

use drivers::Method;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::config::source::{Problem, TomlSource};
use crate::config::Problems;
pub use file::{
    parse_date, parse_time_of_day, CalendarFile, FlexFile, GeofenceFile, GroupFile, ReportsFile, RotationFile,
    RulesFile, ShiftFile, VerificationFile,
};
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
    /// Flexible working time, when the shift has it.
    pub flex: Option<Flex>,
}

/// A flexible shift's terms: core hours as seconds after the shift's start, and the time to work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flex {
    pub core_from_s: u32,
    pub core_to_s: u32,
    pub hours_ms: i64,
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
    /// A flexible shift's core hours (Unix ms).
    pub core: Option<(i64, i64)>,
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
        let core = self.flex.map(|f| {
            let at = |offset: u32| {
                let secs = self.start_s + offset;
                let day = if secs >= 86_400 { date.tomorrow().unwrap_or(date) } else { date };
                local_ms(day, secs % 86_400, tz).clamp(start_ms, end_ms)
            };
            (at(f.core_from_s), at(f.core_to_s))
        });
        ShiftSpan {
            start_ms,
            end_ms,
            open_ms: start_ms - self.opens_before_ms,
            close_ms: end_ms + self.closes_after_ms,
            core,
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

/// What an employee works on a date their schedule names ([`crate::reconcile::schedule`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Assignment {
    /// A working day on this shift (a shift id of the rules).
    Shift(String),
    /// A rest day.
    Off,
}

impl Assignment {
    pub fn as_str(&self) -> &str {
        match self {
            Assignment::Shift(s) => s,
            Assignment::Off => "off",
        }
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
    /// The BSSIDs Wi-Fi punches must come from ([`normalize_bssid`] form); `None`: Wi-Fi punches are not checked.
    pub wifi: Option<Vec<String>>,
}

/// A BSSID as `aa:bb:cc:dd:ee:ff` (lower case), from six hex pairs separated by `:` or `-`; `None` when it is not one.
pub fn normalize_bssid(text: &str) -> Option<String> {
    let parts: Vec<&str> = text.trim().split([':', '-']).collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| parts.join(":").to_ascii_lowercase())
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
    /// `[reports] cycle_start_day`: the day of the month on which an attendance cycle starts (1 to 28).
    pub cycle_start_day: u8,
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
            cycle_start_day: 1,
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
        let rules = file::compile(&file, &mut out);
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

    /// What `group` works on `date` for an employee whose schedule assigns `assigned` that day
    /// ([`crate::reconcile::schedule`]): an assigned shift is a working day on it (holidays included), `off` a rest
    /// day; an unassigned date, or a shift these rules do not define, follows the group.
    pub fn plan_for(&self, group: usize, date: Date, assigned: Option<&Assignment>) -> Option<DayPlan> {
        match assigned {
            Some(Assignment::Shift(id)) => match self.shift_index(id) {
                Some(shift) if group < self.groups.len() => Some(DayPlan { shift, workday: true }),
                _ => self.plan(group, date),
            },
            Some(Assignment::Off) => {
                self.groups.get(group).map(|g| DayPlan { shift: g.rest_day_shift, workday: false })
            }
            None => self.plan(group, date),
        }
    }

    /// [`Rules::plan_for`] with the span of the shift it names on `date` in `tz`.
    pub fn plan_span(
        &self,
        group: usize,
        date: Date,
        assigned: Option<&Assignment>,
        tz: &TimeZone,
    ) -> Option<(DayPlan, ShiftSpan)> {
        let plan = self.plan_for(group, date, assigned)?;
        Some((plan, self.shifts.get(plan.shift)?.span(date, tz)))
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

/// Checks `[rules]`: the file exists, and it and the copy the API wrote to the data dir parse (called by the
/// configuration loader, [`crate::app::load_config`]).
pub fn check_config(config: &crate::config::Config, out: &mut crate::config::Problems<'_>) {
    let written = config.gateway.data_dir.join(API_FILE);
    crate::config::check_stage_file(out, "rules", config.rules.as_ref(), &written, Rules::load);
}

#[cfg(test)]
mod tests;
