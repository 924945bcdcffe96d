//! `rules.toml` as written (serde structs that reject unknown keys) and its compilation into [`Rules`]: every value
//! checked, every problem collected with its key and line.

use drivers::Method;
use jiff::civil::{Date, Weekday};
use serde::Deserialize;

use super::{
    Flex, Geofence, Group, HashMap, Plan, Rules, Shift, Verification, MAX_WINDOW_EXTENSION_MS, RADIUS_RANGE_M,
};
use crate::config::source::Seg;
use crate::config::Problems;

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
    /// How reports count months.
    #[serde(default)]
    pub reports: ReportsFile,
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
    /// Flexible working time: on time when present through the core hours, `short_hours` below `hours` worked.
    pub flex: Option<FlexFile>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlexFile {
    /// `["HH:MM", "HH:MM"]`: the hours everyone must be present, within the shift's `start`..`end`.
    pub core: Vec<String>,
    /// The time to work in the day, e.g. `"8h"` (at most the shift's length).
    pub hours: String,
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
    /// The BSSIDs (access point MAC addresses, `aa:bb:cc:dd:ee:ff`) Wi-Fi punches must come from.
    pub wifi: Option<Vec<String>>,
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

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsFile {
    /// The day of the month on which an attendance cycle starts, 1 to 28. Default 1 (the natural month).
    pub cycle_start_day: Option<i64>,
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

/// Where an entry of an array of tables is: its path in the file and the name used in problem keys (`shift[night]`).
struct Entry {
    table: &'static str,
    index: usize,
    name: String,
}

impl Entry {
    fn new(table: &'static str, index: usize, id: &str) -> Entry {
        Entry { table, index, name: if id.is_empty() { index.to_string() } else { id.to_owned() } }
    }

    fn at(&self, k: &'static str) -> Vec<Seg<'static>> {
        vec![Seg::Key(self.table), Seg::Index(self.index), Seg::Key(k)]
    }

    /// `at(k)` followed by `more`.
    fn at_in(&self, k: &'static str, more: &[Seg<'static>]) -> Vec<Seg<'static>> {
        let mut path = self.at(k);
        path.extend_from_slice(more);
        path
    }

    fn key(&self, k: &str) -> String {
        format!("{}[{}].{k}", self.table, self.name)
    }
}

fn find_shift(file: &RulesFile, id: &str) -> Option<usize> {
    file.shifts.iter().position(|s| s.id == id)
}

fn known_shifts(file: &RulesFile) -> String {
    file.shifts.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", ")
}

/// The file as written into [`Rules`]; every problem goes to `out`.
pub(super) fn compile(file: &RulesFile, out: &mut Problems<'_>) -> Rules {
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
        rules.shifts.push(compile_shift(file, i, s, out));
    }
    let mut owners = Owners::default();
    for (i, g) in file.groups.iter().enumerate() {
        compile_group(file, i, g, &mut owners, &mut rules, out);
    }
    compile_calendar(&file.calendar, &mut rules, out);
    if let Some(day) = file.reports.cycle_start_day {
        match u8::try_from(day) {
            Ok(d) if (1..=28).contains(&d) => rules.cycle_start_day = d,
            _ => out.add(
                &[Seg::Key("reports"), Seg::Key("cycle_start_day")],
                "reports.cycle_start_day",
                format!("{day} is out of range: must be between 1 and 28 (every month has the day)"),
            ),
        }
    }
    rules
}

fn compile_shift(file: &RulesFile, i: usize, s: &ShiftFile, out: &mut Problems<'_>) -> Shift {
    let e = Entry::new("shift", i, &s.id);
    if let Err(problem) = valid_id(&s.id) {
        out.add(&e.at("id"), &e.key("id"), problem);
    } else if s.id == "off" {
        out.add(&e.at("id"), &e.key("id"), "`off` is reserved for days off in rotations".into());
    } else if file.shifts[..i].iter().any(|o| o.id == s.id) {
        out.add(&e.at("id"), &e.key("id"), format!("`{}` is used by another shift", s.id));
    }
    let start_s = parse_time_of_day(&s.start).unwrap_or_else(|problem| {
        out.add(&e.at("start"), &e.key("start"), problem);
        0
    });
    let end_s = parse_time_of_day(&s.end).unwrap_or_else(|problem| {
        out.add(&e.at("end"), &e.key("end"), problem);
        0
    });
    if start_s == end_s && parse_time_of_day(&s.start).is_ok() && parse_time_of_day(&s.end).is_ok() {
        out.add(&e.at("end"), &e.key("end"), "must differ from start".into());
    }
    let length_ms = i64::from(if end_s > start_s { end_s - start_s } else { end_s + 86_400 - start_s }) * 1000;
    let ext = (0, MAX_WINDOW_EXTENSION_MS);
    let mut duration = |k: &'static str, value: Option<&String>, default_ms: i64| {
        duration_ms(out, &e.at(k), &e.key(k), value, default_ms, ext)
    };
    let mut shift = Shift {
        id: s.id.clone(),
        start_s,
        end_s,
        late_grace_ms: duration("late_grace", s.late_grace.as_ref(), 0),
        early_grace_ms: duration("early_grace", s.early_grace.as_ref(), 0),
        opens_before_ms: duration("opens_before", s.opens_before.as_ref(), 2 * HOUR),
        closes_after_ms: duration("closes_after", s.closes_after.as_ref(), 6 * HOUR),
        overtime_after_ms: 0,
        flex: None,
    };
    shift.overtime_after_ms =
        duration("overtime_after", s.overtime_after.as_ref(), (30 * 60_000).min(shift.closes_after_ms));
    if s.overtime_after.is_some() && shift.overtime_after_ms > shift.closes_after_ms {
        out.add(
            &e.at("overtime_after"),
            &e.key("overtime_after"),
            format!("must not exceed closes_after ({}): the window closes first", show_ms(shift.closes_after_ms)),
        );
    }
    if length_ms > 0 && shift.late_grace_ms >= length_ms {
        out.add(&e.at("late_grace"), &e.key("late_grace"), "must be shorter than the shift".into());
    }
    if length_ms > 0 && shift.early_grace_ms >= length_ms {
        out.add(&e.at("early_grace"), &e.key("early_grace"), "must be shorter than the shift".into());
    }
    if let Some(f) = &s.flex {
        shift.flex = compile_flex(&e, f, start_s, length_ms, out);
    }
    shift
}

/// A shift's `flex` table: the core hours must lie within the shift (`start`..`end`, read across midnight for a night
/// shift) and `hours` must fit in it.
fn compile_flex(e: &Entry, f: &FlexFile, start_s: u32, length_ms: i64, out: &mut Problems<'_>) -> Option<Flex> {
    let core_at = e.at_in("flex", &[Seg::Key("core")]);
    let mut ok = true;
    let mut times = Vec::with_capacity(2);
    if f.core.len() != 2 {
        out.add(
            &core_at,
            &e.key("flex.core"),
            "must be [\"HH:MM\", \"HH:MM\"]: the start and end of the core hours".into(),
        );
        ok = false;
    }
    for (j, t) in f.core.iter().enumerate().take(2) {
        match parse_time_of_day(t) {
            Ok(secs) => times.push(secs),
            Err(problem) => {
                out.add(&e.at_in("flex", &[Seg::Key("core"), Seg::Index(j)]), &e.key("flex.core"), problem);
                ok = false;
            }
        }
    }
    let hours_at = e.at_in("flex", &[Seg::Key("hours")]);
    let hours_ms = duration_ms(out, &hours_at, &e.key("flex.hours"), Some(&f.hours), 0, (60_000, 24 * HOUR));
    if hours_ms == 0 {
        ok = false;
    } else if length_ms > 0 && hours_ms > length_ms {
        out.add(
            &hours_at,
            &e.key("flex.hours"),
            format!("{} does not fit in the shift ({} from start to end)", show_ms(hours_ms), show_ms(length_ms)),
        );
        ok = false;
    }
    if !ok || times.len() != 2 {
        return None;
    }
    // Offsets from the shift's start, in seconds, read forward across midnight.
    let offset = |t: u32| if t >= start_s { t - start_s } else { t + 86_400 - start_s };
    let (from, to) = (offset(times[0]), offset(times[1]));
    let length_s = u32::try_from(length_ms / 1000).unwrap_or(u32::MAX);
    if from >= to || to > length_s {
        out.add(
            &core_at,
            &e.key("flex.core"),
            format!(
                "{}..{} is not within the shift ({} long from its start): the core hours must start after the shift \
                 starts and end before it ends",
                f.core[0],
                f.core[1],
                show_ms(length_ms)
            ),
        );
        return None;
    }
    Some(Flex { core_from_s: from, core_to_s: to, hours_ms })
}

/// Which group each department and employee was given to so far (each may be in one group only).
#[derive(Default)]
struct Owners<'f> {
    departments: HashMap<&'f str, &'f str>,
    employees: HashMap<&'f str, &'f str>,
}

fn compile_group<'f>(
    file: &'f RulesFile,
    i: usize,
    g: &'f GroupFile,
    owners: &mut Owners<'f>,
    rules: &mut Rules,
    out: &mut Problems<'_>,
) {
    let e = Entry::new("group", i, &g.id);
    if let Err(problem) = valid_id(&g.id) {
        out.add(&e.at("id"), &e.key("id"), problem);
    } else if file.groups[..i].iter().any(|o| o.id == g.id) {
        out.add(&e.at("id"), &e.key("id"), format!("`{}` is used by another group", g.id));
    }
    if g.departments.is_empty() && g.employees.is_empty() {
        out.add(&e.at("departments"), &e.key("departments"), "missing: a group needs departments or employees".into());
    }
    for (j, d) in g.departments.iter().enumerate() {
        let path = e.at_in("departments", &[Seg::Index(j)]);
        if d.trim().is_empty() {
            out.add(&path, &e.key("departments"), "a department id is empty".into());
        } else if let Some(other) = owners.departments.insert(d.as_str(), g.id.as_str()) {
            out.add(&path, &e.key("departments"), format!("department `{d}` is already in group `{other}`"));
        }
    }
    for (j, emp) in g.employees.iter().enumerate() {
        let path = e.at_in("employees", &[Seg::Index(j)]);
        if emp.trim().is_empty() {
            out.add(&path, &e.key("employees"), "an employee id is empty".into());
        } else if let Some(other) = owners.employees.insert(emp.as_str(), g.id.as_str()) {
            out.add(&path, &e.key("employees"), format!("employee `{emp}` is already in group `{other}`"));
        }
    }
    let plan = compile_plan(file, &e, g, out);
    let rest_day_shift = match &g.rest_day_shift {
        Some(s) => find_shift(file, s).unwrap_or_else(|| {
            out.add(
                &e.at("rest_day_shift"),
                &e.key("rest_day_shift"),
                format!("unknown shift `{s}` (defined: {})", known_shifts(file)),
            );
            0
        }),
        None => match &plan {
            Some(Plan::Fixed(idx)) => *idx,
            Some(Plan::Rotation { pattern, .. }) => pattern.iter().flatten().next().copied().unwrap_or(0),
            None => 0,
        },
    };
    let workdays = compile_workdays(&e, g.workdays.as_deref(), out);
    let verification = g.verification.as_ref().and_then(|v| compile_verification(&e, v, out));
    let geofence = g.geofence.as_ref().and_then(|f| compile_geofence(f, &e.at("geofence"), &e.key("geofence"), out));
    let wifi = g.wifi.as_ref().map(|list| compile_wifi(&e, list, out));
    if let Some(plan) = plan {
        rules.groups.push(Group { id: g.id.clone(), plan, rest_day_shift, workdays, verification, geofence, wifi });
        let idx = rules.groups.len() - 1;
        for d in &g.departments {
            rules.by_department.entry(d.clone()).or_insert(idx);
        }
        for emp in &g.employees {
            rules.by_employee.entry(emp.clone()).or_insert(idx);
        }
    }
}

/// A group's fixed shift or rotation.
fn compile_plan(file: &RulesFile, e: &Entry, g: &GroupFile, out: &mut Problems<'_>) -> Option<Plan> {
    match (&g.shift, &g.rotation) {
        (Some(_), Some(_)) => {
            out.add(&e.at("rotation"), &e.key("rotation"), "give either shift or rotation, not both".into());
            None
        }
        (None, None) => {
            out.add(&e.at("id"), &e.key("shift"), "missing: give shift or rotation".into());
            None
        }
        (Some(s), None) => match find_shift(file, s) {
            Some(idx) => Some(Plan::Fixed(idx)),
            None => {
                out.add(
                    &e.at("shift"),
                    &e.key("shift"),
                    format!("unknown shift `{s}` (defined: {})", known_shifts(file)),
                );
                None
            }
        },
        (None, Some(r)) => {
            let starts = parse_date(&r.starts).unwrap_or_else(|problem| {
                out.add(&e.at_in("rotation", &[Seg::Key("starts")]), &e.key("rotation.starts"), problem);
                Date::constant(2000, 1, 3)
            });
            let pattern_at = e.at_in("rotation", &[Seg::Key("pattern")]);
            if r.pattern.is_empty() || r.pattern.len() > 366 {
                out.add(&pattern_at, &e.key("rotation.pattern"), "must list 1 to 366 days".into());
            }
            let mut pattern = Vec::with_capacity(r.pattern.len());
            for (j, entry) in r.pattern.iter().enumerate() {
                if entry == "off" {
                    pattern.push(None);
                    continue;
                }
                let idx = find_shift(file, entry);
                if idx.is_none() {
                    out.add(
                        &e.at_in("rotation", &[Seg::Key("pattern"), Seg::Index(j)]),
                        &e.key(&format!("rotation.pattern[{j}]")),
                        format!("unknown shift `{entry}` (defined: {}; or `off`)", known_shifts(file)),
                    );
                }
                pattern.push(idx);
            }
            if !r.pattern.is_empty() && pattern.iter().all(Option::is_none) && g.rest_day_shift.is_none() {
                out.add(&pattern_at, &e.key("rotation.pattern"), "has no working day".into());
            }
            Some(Plan::Rotation { pattern, starts })
        }
    }
}

/// The weekdays a group works (default Monday to Friday), indexed from Monday.
fn compile_workdays(e: &Entry, days: Option<&[String]>, out: &mut Problems<'_>) -> [bool; 7] {
    let mut workdays = [false; 7];
    let Some(days) = days else {
        workdays[..5].iter_mut().for_each(|w| *w = true);
        return workdays;
    };
    for (j, d) in days.iter().enumerate() {
        let path = e.at_in("workdays", &[Seg::Index(j)]);
        match DAY_NAMES.iter().find(|(n, _)| n == &d.to_ascii_lowercase()) {
            Some((_, wd)) => {
                let idx = wd.to_monday_zero_offset() as usize;
                if workdays[idx] {
                    out.add(&path, &e.key("workdays"), format!("`{d}` is listed twice"));
                }
                workdays[idx] = true;
            }
            None => out.add(
                &path,
                &e.key("workdays"),
                format!("`{d}` is not a weekday (mon, tue, wed, thu, fri, sat, sun)"),
            ),
        }
    }
    workdays
}

fn compile_verification(e: &Entry, v: &VerificationFile, out: &mut Problems<'_>) -> Option<Verification> {
    let vpath = e.at_in("verification", &[Seg::Key("require")]);
    let mut methods = Vec::new();
    for m in &v.require {
        match Method::parse(m) {
            Some(Method::Makeup | Method::Other) | None => out.add(
                &vpath,
                &e.key("verification.require"),
                format!("`{m}` is not a method a person can punch with (face, fingerprint, card, pin, password, palm, gps, qr, wifi)"),
            ),
            Some(method) => methods.push(method),
        }
    }
    if v.require.len() != 2 {
        out.add(&vpath, &e.key("verification.require"), "must name exactly two methods".into());
    } else if methods.len() == 2 && methods[0] == methods[1] {
        out.add(&vpath, &e.key("verification.require"), "the two methods must differ".into());
    }
    let wpath = e.at_in("verification", &[Seg::Key("window")]);
    let window_ms = duration_ms(out, &wpath, &e.key("verification.window"), Some(&v.window), 0, (1000, 2 * HOUR));
    match methods[..] {
        [a, b] if a != b => Some(Verification { methods: [a, b], window_ms }),
        _ => None,
    }
}

/// A group's `wifi` list: BSSIDs, read case-insensitively (`-` separators accepted), kept as `aa:bb:cc:dd:ee:ff`.
fn compile_wifi(e: &Entry, list: &[String], out: &mut Problems<'_>) -> Vec<String> {
    let mut bssids = Vec::with_capacity(list.len());
    if list.is_empty() || list.len() > 1000 {
        out.add(&e.at("wifi"), &e.key("wifi"), "must list 1 to 1000 BSSIDs".into());
    }
    for (j, text) in list.iter().enumerate() {
        match super::normalize_bssid(text) {
            Some(b) if bssids.contains(&b) => {
                out.add(&e.at_in("wifi", &[Seg::Index(j)]), &e.key("wifi"), format!("`{text}` is listed twice"));
            }
            Some(b) => bssids.push(b),
            None => out.add(
                &e.at_in("wifi", &[Seg::Index(j)]),
                &e.key("wifi"),
                format!("`{text}` is not a BSSID (six hex pairs like \"aa:bb:cc:dd:ee:ff\")"),
            ),
        }
    }
    bssids
}

fn compile_calendar(calendar: &CalendarFile, rules: &mut Rules, out: &mut Problems<'_>) {
    for (list, name, set) in [
        (&calendar.holidays, "holidays", &mut rules.holidays),
        (&calendar.workdays, "workdays", &mut rules.makeup_workdays),
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
    for (j, text) in calendar.workdays.iter().enumerate() {
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
