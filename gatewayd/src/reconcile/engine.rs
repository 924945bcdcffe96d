//! The attendance engine: a synchronous, I/O-free state machine. Stored punches, clock ticks, rules, roster and manager
//! decisions go in ([`Input`]); the changes to deliver come out ([`Change`]): each punch as it goes upstream, each new
//! record revision, and "this work date closed".
//!
//! # What it keeps
//! Every punch of the last `reconcile_days` (rules) by employee (or, while its credential is unknown, by credential), the
//! latest revision and a content digest of every record in that horizon, the dates whose windows are still open, and
//! the watermarks ([`Watermarks`]) the stage persists. Records themselves are not kept: they are recomputed from punches.
//! Besides the rules and the roster, three inputs shape records and are given whole when they change: the schedule
//! (per-employee day assignments that override the group's plan, [`super::schedule`]), the approved leave
//! ([`super::leave`]) and the offline claims waiting for a manager (their records show `pending_approval`). Each change
//! recomputes the records of the dates it touches.
//!
//! # Beyond the horizon
//! A punch whose work date is older than the horizon is forwarded but not kept; its date goes on the backfill set
//! ([`Watermarks::backfill`], persisted with the other watermarks), and so does any older date something else reaches (a
//! punch in the horizon that belongs to a night shift started before it). The stage reads such a date's stored records
//! and punches and hands them to [`Engine::reconcile_stored_day`], which revises the records like any late punch's and
//! keeps nothing of the date: memory stays that of the horizon, plus one date's punches while it is reconciled.
//!
//! # How a batch is applied
//! [`Engine::apply_batch`] takes any number of inputs, marks the (employee, work date) pairs they touch, then settles:
//! records whose window closed by `now` are marked too, and so is every employee scheduled (a working day, by the
//! roster and rules in force) on a shift whose window closed by `now` (so `absent`, `missing_in` and `missing_out` come
//! at the close of each shift's own window, also for employees who never punched); every marked record is
//! recomputed ([`super::day::evaluate`]) and compared with its last revision by digest, and only records whose content
//! changed get a new revision. The output order is: punch changes, record changes (by date, then employee), then
//! `DayClosed` dates in order.
//!
//! # Determinism
//! A record's content is a function of the punches assigned to it, the rules version in force for its date, the roster,
//! manager decisions and `now`. The order punches arrive in, how they are batched and how often they are re-sent change
//! nothing but how many intermediate revisions appear. A restart re-derives the same content from the stored punches,
//! so comparing with the stored revisions yields no change.
//!
//! # Rules versions per date
//! When a work date closes, the rules version in force is frozen for it; later punches for that date (a device that was
//! offline) are reconciled with the same rules, so a rules change never rewrites closed days. Open dates follow the
//! rules in force.
//!
//! # Work dates
//! A punch belongs to the record whose shift window contains it. Windows of consecutive dates can overlap (a night
//! shift's closing hours and the next morning's opening hours); then the punch goes to the shift whose scheduled span
//! [start, end] is nearest, the earlier date on a tie. DayClosed is announced for every date from the engine's first
//! day on as its last window closes, for earlier dates once they have punches and are closed, and again for any closed
//! date whose records changed later (a late punch), so the day digest can be sent again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use drivers::sink::{GeoPoint, Subject};
use drivers::Method;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use super::day::{evaluate, DayContext, DayPunch, Evaluation, Fence};
use super::leave::LeaveBook;
use super::punch_id::PunchId;
use super::punches::{mark_punch, Dict, Fact, Key, Map, Punches};
use super::schedule::Schedule;
use crate::proto::upstream;
use crate::punch::Punch;
use crate::reconcile::approvals::FenceRequest;
use crate::reconcile::changes::Change;
use crate::reconcile::roster::Roster;
use crate::reconcile::rules::{local_date, local_ms, normalize_bssid, DayPlan, Group, Rules, ShiftSpan};

/// Flags on punches as they go upstream.
pub mod flags {
    pub const UNKNOWN_CREDENTIAL: &str = "unknown_credential";
    pub const CLOCK_SKEW: &str = "clock_skew";
    pub const DUPLICATE_MERGED: &str = "duplicate_merged";
    pub const OUT_OF_FENCE: &str = "out_of_fence";
    pub const WEAK_LOCATION: &str = "weak_location";
}

/// One input to the engine.
#[derive(Clone, Debug)]
pub enum Input {
    /// A punch that became durable: reconciled, and forwarded as a punch change.
    Punch(Punch),
    /// A punch already forwarded before a restart: reconciled again, not forwarded again.
    Restore(Punch),
    /// The clock: windows and work dates that ended by this time (Unix ms) close. Time never goes back.
    Tick(i64),
    /// New rules in force with their version number.
    Rules { version: u32, rules: Arc<Rules> },
    /// A new roster in force.
    Roster(Arc<Roster>),
    /// A manager's decision on an out-of-fence punch.
    FenceDecision { punch_id: String, approved: bool },
    /// A new schedule in force (per-employee day assignments).
    Schedule(Arc<Schedule>),
    /// The approved leave, all of it, after a decision.
    Leaves(Arc<LeaveBook>),
    /// The offline claims waiting for a manager: (employee, claimed time). Their records show `pending_approval`.
    Claims(Arc<Vec<(String, i64)>>),
}

/// What the engine must remember across restarts besides punches and records (the stage persists it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermarks {
    /// The latest tick (Unix ms).
    pub now_ms: i64,
    /// The first work date the engine announces closings for (the local date of its first tick).
    pub epoch: Option<Date>,
    /// Every work date up to this one (from `epoch`) has been closed and announced.
    pub closed_through: Option<Date>,
    /// The rules version frozen for each work date: fixed when the first window of the date closes.
    pub day_versions: BTreeMap<Date, u32>,
    /// Work dates whose closing has been announced (`DayClosed`) at least once.
    #[serde(default)]
    pub announced: BTreeSet<Date>,
    /// Work dates older than the horizon that punches reached since: each is reconciled again from the store (the stage
    /// reads its punches and gives them to [`Engine::reconcile_stored_day`], which takes it off this set).
    #[serde(default)]
    pub backfill: BTreeSet<Date>,
}

/// A work date older than the engine's horizon, as the store has it: the input of [`Engine::reconcile_stored_day`].
#[derive(Clone, Debug)]
pub struct StoredDay {
    pub date: Date,
    /// The latest stored revision of every record of the date.
    pub records: Vec<upstream::AttendanceRecord>,
    /// The rules version to reconcile the date with ([`Engine::stored_day_version`]) ...
    pub version: u32,
    /// ... and its rules, when the engine does not hold that version (`None` with an unknown version: the rules in
    /// force, under their own version).
    pub rules: Option<Arc<Rules>>,
    /// Managers' decisions on out-of-fence punches: (punch id, approved).
    pub decisions: Vec<(String, bool)>,
}

/// Fixed settings of an engine.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Part of every record id.
    pub gateway_id: String,
    /// The site time zone: work dates and shift times are read in it.
    pub tz: TimeZone,
}

/// The interned copy of `s` in `strings` (added when missing).
fn intern_in(strings: &mut Set<Arc<str>>, s: &str) -> Arc<str> {
    if let Some(a) = strings.get(s) {
        return a.clone();
    }
    let a: Arc<str> = Arc::from(s);
    strings.insert(a.clone());
    a
}

/// Hash sets keyed by ids: foldhash, like [`Map`].
type Set<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

#[derive(Clone, Debug)]
struct RecState {
    shift: Arc<str>,
    revision: u32,
    digest: u64,
    closed: bool,
    cleared: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Notes {
    merged: bool,
    outside: bool,
    weak: bool,
    skew: bool,
}

/// Who a kept punch belongs to: an employee, or `None` while its credential is unknown.
type Owner = Option<Arc<str>>;

/// The engine. See the module documentation.
pub struct Engine {
    settings: EngineSettings,
    rules: BTreeMap<u32, Arc<Rules>>,
    current: u32,
    roster: Arc<Roster>,
    schedule: Arc<Schedule>,
    leaves: Arc<LeaveBook>,
    claims: Arc<Vec<(String, i64)>>,
    marks: Watermarks,
    strings: Set<Arc<str>>,
    /// Devices, subjects and id heads of kept punches, by number.
    dict: Dict,
    by_employee: Map<Arc<str>, Punches>,
    unresolved: BTreeMap<Key, Fact>,
    geo: Map<PunchId, (GeoPoint, i64)>,
    /// The access point of every kept Wi-Fi punch, with the punch's time.
    wifi: Map<PunchId, (Arc<str>, i64)>,
    decisions: Map<PunchId, bool>,
    records: Map<(Arc<str>, Date), Vec<RecState>>,
    closing: BTreeMap<(i64, Date), Set<Arc<str>>>,
    /// Shift windows (work date, rules version, shift index) of dates not yet closed whose close has been handled: their
    /// scheduled employees were marked. Cleared when the roster changes, so that employees who changed groups are looked
    /// at again; a rules change gives open dates a new version, so their windows are handled again under it.
    windows_done: BTreeSet<(Date, u32, usize)>,
    pending_days: BTreeSet<Date>,
    spans: Map<(u32, usize, Date), (DayPlan, ShiftSpan)>,
    evicted_before: Option<Date>,
    /// The first work date in the horizon (`reconcile_days` before the date of `now`), when the engine has a time.
    horizon: Option<Date>,
    /// Applying [`Input::Restore`]: dates older than the horizon that restored punches reach are not reconciled again
    /// (they were when the punches first came).
    replaying: bool,
    // Per batch.
    dirty: BTreeMap<Date, Set<Arc<str>>>,
    fresh: Vec<(Owner, Key)>,
    fresh_set: Set<PunchId>,
    fresh_unkept: Vec<upstream::Punch>,
    notes: Map<PunchId, Notes>,
    touched_closed: BTreeSet<Date>,
    requests: Vec<FenceRequest>,
    requested: Set<PunchId>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("rules_version", &self.current)
            .field("employees", &self.by_employee.len())
            .field("records", &self.records.len())
            .field("marks", &self.marks)
            .finish()
    }
}

/// A 64-bit digest of a record's content (revision and rules version excluded), to tell whether a recomputed record
/// changed. Digests are only compared within one process (a restart digests the stored revisions again,
/// [`Engine::restore_record`]), so the hash need not be stable across builds: foldhash with a fixed seed, which reads
/// 8 to 16 bytes at a step (with FNV-1a, a byte at a step, the month benchmark took about 3% longer).
pub fn content_digest(r: &upstream::AttendanceRecord) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(DIGEST_SEED).build_hasher();
    (&r.record_id, &r.employee_id, &r.work_date, &r.shift_id, r.clock_in_ms, r.clock_out_ms).hash(&mut h);
    (&r.statuses, &r.punch_ids).hash(&mut h);
    (r.late_minutes, r.early_leave_minutes, r.worked_minutes, r.overtime_minutes, r.closed).hash(&mut h);
    h.finish()
}

/// The seed of [`content_digest`] (any fixed value).
const DIGEST_SEED: u64 = 0x243f_6a88_85a3_08d3;

/// The record id of (employee, work date, shift), stable across revisions.
pub fn record_id(gateway_id: &str, employee: &str, date: Date, shift: &str) -> String {
    format!("{gateway_id}:{employee}:{date}:{shift}")
}

/// Most dates whose windows are looked at together (a record's date and two days each side).
const MAX_WINDOWS: usize = 5;

/// Shift windows of consecutive dates, without allocating.
#[derive(Clone, Copy)]
struct Windows {
    items: [(Date, ShiftSpan); MAX_WINDOWS],
    len: usize,
    tried: usize,
}

impl Default for Windows {
    fn default() -> Self {
        let none = ShiftSpan { start_ms: 0, end_ms: 0, open_ms: 0, close_ms: -1, core: None };
        Windows { items: [(Date::constant(2000, 1, 1), none); MAX_WINDOWS], len: 0, tried: 0 }
    }
}

impl Windows {
    fn as_slice(&self) -> &[(Date, ShiftSpan)] {
        &self.items[..self.len]
    }
}

/// The roster department of an employee ("" when not in the roster).
fn department_of<'r>(roster: &'r Roster, employee: &str) -> &'r str {
    roster.get(employee).map_or("", |e| e.department.as_str())
}

/// The window (of those given, in date order) a punch at `t` belongs to: the one containing it whose scheduled span is
/// nearest, the earlier date on a tie.
fn pick(windows: &[(Date, ShiftSpan)], t: i64) -> Option<Date> {
    let mut best: Option<(i64, Date)> = None;
    for (d, span) in windows {
        if span.open_ms <= t && t <= span.close_ms {
            let distance = if t < span.start_ms {
                span.start_ms - t
            } else if t > span.end_ms {
                t - span.end_ms
            } else {
                0
            };
            if best.is_none_or(|(bd, _)| distance < bd) {
                best = Some((distance, *d));
            }
        }
    }
    best.map(|(_, d)| d)
}

fn next_day(d: Date) -> Date {
    d.tomorrow().unwrap_or(d)
}

fn prev_day(d: Date) -> Date {
    d.yesterday().unwrap_or(d)
}

fn days_before(d: Date, n: u32) -> Date {
    d.checked_sub(jiff::Span::new().days(i64::from(n))).unwrap_or(d)
}

/// Where a punch stands with its group's geofence; `decision` is asked only for a punch outside it.
/// Where a punch stands with its group's fence, and whether a doubt is only the fix's accuracy (`weak_location`):
/// - a Wi-Fi punch, when the group lists access points: inside when its BSSID is listed, else outside;
/// - a punch with a GPS point, when the group has a geofence: outside when the point is; inside, but in doubt
///   (`weak`), when the fix's accuracy is worse than the fence's radius;
/// - anything else (make-up punches, no fence): not applicable.
///
/// A punch outside or in doubt counts as its manager decides (`decision`), provisionally until then.
fn fence_status(
    geo: Option<GeoPoint>,
    bssid: Option<&str>,
    group: &Group,
    method: Method,
    decision: impl FnOnce() -> Option<bool>,
) -> (Fence, bool) {
    let decided = |d: Option<bool>| match d {
        Some(true) => Fence::Approved,
        Some(false) => Fence::Rejected,
        None => Fence::Pending,
    };
    if method == Method::Makeup {
        return (Fence::NotApplicable, false);
    }
    if let (Method::Wifi, Some(list)) = (method, &group.wifi) {
        let listed = bssid.is_some_and(|b| list.iter().any(|x| x == b));
        return if listed { (Fence::Inside, false) } else { (decided(decision()), false) };
    }
    match (geo, &group.geofence) {
        (Some(pt), Some(fence)) => {
            if !fence.contains(pt.lat, pt.lng) {
                (decided(decision()), false)
            } else if pt.accuracy_m.is_some_and(|a| a > fence.radius_m()) {
                (decided(decision()), true)
            } else {
                (Fence::Inside, false)
            }
        }
        _ => (Fence::NotApplicable, false),
    }
}

/// The `bssid` attribute of a Wi-Fi punch, as [`normalize_bssid`] writes it.
fn bssid_of(p: &Punch) -> Option<String> {
    if p.method != Method::Wifi {
        return None;
    }
    p.attributes.iter().find(|(k, _)| k == "bssid").and_then(|(_, v)| normalize_bssid(v))
}

/// What names a record besides its evaluation.
struct RecordParts<'a> {
    employee: &'a str,
    date: Date,
    shift: &'a str,
    closed: bool,
    version: u32,
}

impl RecordParts<'_> {
    /// The record (revision 0: the caller numbers it).
    fn build(&self, gateway_id: &str, ev: &Evaluation, punch_ids: Vec<String>) -> upstream::AttendanceRecord {
        upstream::AttendanceRecord {
            record_id: record_id(gateway_id, self.employee, self.date, self.shift),
            revision: 0,
            employee_id: self.employee.to_owned(),
            work_date: self.date.to_string(),
            shift_id: self.shift.to_owned(),
            clock_in_ms: ev.clock_in_ms,
            clock_out_ms: ev.clock_out_ms,
            statuses: ev.statuses.iter().map(|s| s.as_str().to_owned()).collect(),
            late_minutes: ev.late_minutes,
            early_leave_minutes: ev.early_leave_minutes,
            worked_minutes: ev.worked_minutes,
            overtime_minutes: ev.overtime_minutes,
            punch_ids,
            closed: self.closed,
            rules_version: self.version,
        }
    }

    /// The revision that clears a record that no longer exists (its shift changed, or it has no punch any more).
    fn cleared(&self, gateway_id: &str, revision: u32) -> upstream::AttendanceRecord {
        upstream::AttendanceRecord {
            record_id: record_id(gateway_id, self.employee, self.date, self.shift),
            revision,
            employee_id: self.employee.to_owned(),
            work_date: self.date.to_string(),
            shift_id: self.shift.to_owned(),
            closed: self.closed,
            rules_version: self.version,
            ..Default::default()
        }
    }
}

impl Engine {
    /// An engine with the given rules versions (`current` must be among them), roster and watermarks.
    pub fn new(
        settings: EngineSettings,
        marks: Watermarks,
        mut rules: BTreeMap<u32, Arc<Rules>>,
        current: u32,
        roster: Arc<Roster>,
    ) -> Engine {
        rules.entry(current).or_insert_with(|| Arc::new(Rules::none()));
        let mut engine = Engine {
            settings,
            rules,
            current,
            roster,
            schedule: Arc::default(),
            leaves: Arc::default(),
            claims: Arc::default(),
            marks,
            strings: Set::default(),
            dict: Dict::default(),
            by_employee: Map::default(),
            unresolved: BTreeMap::new(),
            geo: Map::default(),
            wifi: Map::default(),
            decisions: Map::default(),
            records: Map::default(),
            closing: BTreeMap::new(),
            windows_done: BTreeSet::new(),
            pending_days: BTreeSet::new(),
            spans: Map::default(),
            evicted_before: None,
            horizon: None,
            replaying: false,
            dirty: BTreeMap::new(),
            fresh: Vec::new(),
            fresh_set: Set::default(),
            fresh_unkept: Vec::new(),
            notes: Map::default(),
            touched_closed: BTreeSet::new(),
            requests: Vec::new(),
            requested: Set::default(),
        };
        engine.refresh_horizon();
        engine
    }

    pub fn watermarks(&self) -> &Watermarks {
        &self.marks
    }

    pub fn rules_version(&self) -> u32 {
        self.current
    }

    pub fn rules(&self) -> &Arc<Rules> {
        &self.rules[&self.current]
    }

    pub fn roster(&self) -> &Arc<Roster> {
        &self.roster
    }

    /// Rules versions the engine still needs (the current one and those frozen for dates in the horizon).
    pub fn versions_in_use(&self) -> BTreeSet<u32> {
        let mut out: BTreeSet<u32> = self.marks.day_versions.values().copied().collect();
        out.insert(self.current);
        out
    }

    /// Punches kept (for metrics).
    pub fn punches_kept(&self) -> usize {
        self.by_employee.values().map(Punches::len).sum::<usize>() + self.unresolved.len()
    }

    /// Records tracked (for metrics).
    pub fn records_tracked(&self) -> usize {
        self.records.values().map(Vec::len).sum()
    }

    /// Out-of-fence punches found since the last call that have no request yet.
    pub fn take_fence_requests(&mut self) -> Vec<FenceRequest> {
        std::mem::take(&mut self.requests)
    }

    /// The first work date waiting to be reconciled from the store (see [`Watermarks::backfill`]).
    pub fn backfill_next(&self) -> Option<Date> {
        self.marks.backfill.first().copied()
    }

    /// Takes `date` off the backfill set without reconciling it (retention removed its data).
    pub fn forget_backfill(&mut self, date: Date) {
        self.marks.backfill.remove(&date);
    }

    /// Whether the engine holds the rules of `version`.
    pub fn has_rules(&self, version: u32) -> bool {
        self.rules.contains_key(&version)
    }

    /// The rules version to reconcile a date older than the horizon with: the one frozen for it when the engine still
    /// knows it, else the newest one its stored records were made with, else the one in force.
    pub fn stored_day_version(&self, date: Date, records: &[upstream::AttendanceRecord]) -> u32 {
        match self.marks.day_versions.get(&date) {
            Some(v) => *v,
            None => records.iter().map(|r| r.rules_version).max().unwrap_or(self.current),
        }
    }

    /// The device times `[from, to)` whose punches can belong to `date`: from the earliest opening to the latest close of
    /// any shift window on that date (by `rules`, else the rules of `version`, else the rules in force).
    pub fn stored_day_range(&self, date: Date, version: u32, rules: Option<&Rules>) -> (i64, i64) {
        let rules = rules.or_else(|| self.rules.get(&version).map(|r| &**r)).unwrap_or_else(|| &**self.rules());
        let tz = &self.settings.tz;
        let midnight = local_ms(date, 0, tz);
        let spans = rules.shifts.iter().map(|s| s.span(date, tz));
        let from = spans.clone().map(|s| s.open_ms).fold(midnight, i64::min);
        let to = spans.map(|s| s.close_ms).fold(local_ms(next_day(date), 0, tz), i64::max);
        (from, to.saturating_add(1))
    }

    /// Reconciles a work date older than the horizon from its stored punches (every punch the store has in
    /// [`Engine::stored_day_range`], in any order) and its stored records, and takes it off the backfill set. The records
    /// of the employees with punches on the date are recomputed, as a late punch recomputes its record (the others'
    /// stored records, absences among them, stay as they are: no absence is made for a date after the fact); those whose
    /// content changed get the next revision, and `DayClosed` follows when any changed, so the day's digest is sent
    /// again. Nothing of the date is kept afterwards. A date in the horizon (it moved back
    /// meanwhile) is left to the engine's memory and gives nothing.
    pub fn reconcile_stored_day(&mut self, day: StoredDay, punches: impl IntoIterator<Item = Punch>) -> Vec<Change> {
        let date = day.date;
        self.marks.backfill.remove(&date);
        if self.horizon.is_none_or(|h| date >= h) {
            return Vec::new();
        }
        let (version, rules) = match (day.rules, self.rules.get(&day.version)) {
            (Some(r), _) => (day.version, r),
            (None, Some(r)) => (day.version, r.clone()),
            (None, None) => (self.current, self.rules().clone()),
        };
        let tz = self.settings.tz.clone();
        let roster = self.roster.clone();
        let now = self.marks.now_ms;
        let decisions: Map<String, bool> = day.decisions.into_iter().collect();
        let mut spans: Map<(usize, Date), Option<(DayPlan, ShiftSpan)>> = Map::default();
        let schedule = self.schedule.clone();
        let leaves = self.leaves.clone();
        let mut span_of = |g: usize, employee: &str, d: Date| -> Option<(DayPlan, ShiftSpan)> {
            match schedule.get(employee, d) {
                Some(assigned) => rules.plan_span(g, d, Some(assigned), &tz),
                None => *spans.entry((g, d)).or_insert_with(|| rules.plan_span(g, d, None, &tz)),
            }
        };
        let around = [prev_day(prev_day(date)), prev_day(date), date, next_day(date), next_day(next_day(date))];

        // The punches that belong to the date, by employee.
        struct Entry {
            time_ms: i64,
            id: String,
            method: Method,
            skew: bool,
            geo: Option<GeoPoint>,
            bssid: Option<String>,
        }
        let mut mine: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for p in punches {
            let employee = match &p.subject {
                Subject::Employee(e) => roster.resolve_employee(e).map(|x| x.id.clone()).unwrap_or_else(|| e.clone()),
                Subject::Credential(c) => match roster.resolve(c, &p.device_id, p.method) {
                    Some(x) => x.id.clone(),
                    None => continue,
                },
            };
            let Some(g) = rules.group_of(&employee, department_of(&roster, &employee)) else { continue };
            let mut windows = Windows::default();
            for d in around {
                if let Some((_, span)) = span_of(g, &employee, d) {
                    windows.items[windows.len] = (d, span);
                    windows.len += 1;
                }
            }
            if pick(windows.as_slice(), p.device_time_ms) != Some(date) {
                continue;
            }
            let skew = p.realtime && (p.device_time_ms - p.received_time_ms).abs() > rules.max_clock_skew_ms;
            let bssid = bssid_of(&p);
            mine.entry(employee).or_default().push(Entry {
                bssid,
                time_ms: p.device_time_ms,
                id: p.punch_id,
                method: p.method,
                skew,
                geo: p.geo,
            });
        }

        // The records of the employees with punches on the date are recomputed, as a late punch recomputes its own;
        // the others' stored records (absences among them) stay as they are.
        let mut stored: BTreeMap<String, Vec<upstream::AttendanceRecord>> = BTreeMap::new();
        for r in day.records {
            if mine.contains_key(&r.employee_id) {
                stored.entry(r.employee_id.clone()).or_default().push(r);
            }
        }

        let gateway = self.settings.gateway_id.clone();
        let mut out = Vec::new();
        for (employee, mut entries) in mine {
            let department = department_of(&roster, &employee);
            let computed = rules.group_of(&employee, department).and_then(|g| {
                let (plan, span) = span_of(g, &employee, date)?;
                let closed = now > span.close_ms;
                let group = &rules.groups[g];
                entries.sort_by(|a, b| (a.time_ms, &a.id).cmp(&(b.time_ms, &b.id)));
                let day_punches: Vec<DayPunch> = entries
                    .iter()
                    .map(|p| {
                        let (fence, weak) =
                            fence_status(p.geo, p.bssid.as_deref(), group, p.method, || decisions.get(&p.id).copied());
                        DayPunch { time_ms: p.time_ms, method: p.method, clock_skew: p.skew, fence, weak }
                    })
                    .collect();
                let mut ctx = DayContext::new(&rules, group, plan, span, closed);
                ctx.leave = leaves.cover(&employee, date, &span, ctx.shift);
                let shift = ctx.shift;
                let ev = evaluate(&ctx, &day_punches);
                for (p, e) in day_punches.iter().zip(&entries) {
                    if p.fence == Fence::Pending {
                        self.requests.push(FenceRequest {
                            punch_id: e.id.clone(),
                            employee: employee.clone(),
                            department: department.to_owned(),
                            time_ms: p.time_ms,
                            weak_location: p.weak,
                        });
                    }
                }
                let parts = RecordParts { employee: &employee, date, shift: &shift.id, closed, version };
                Some(parts.build(&gateway, &ev, entries.into_iter().map(|e| e.id).collect()))
            });
            let before = stored.remove(&employee).unwrap_or_default();
            for old in &before {
                let replaced = computed.as_ref().is_none_or(|r| r.shift_id != old.shift_id);
                let cleared = old.statuses.is_empty() && old.punch_ids.is_empty();
                if replaced && !cleared {
                    let parts =
                        RecordParts { employee: &employee, date, shift: &old.shift_id, closed: old.closed, version };
                    out.push(parts.cleared(&gateway, old.revision + 1));
                }
            }
            if let Some(mut record) = computed {
                match before.iter().find(|old| old.shift_id == record.shift_id) {
                    Some(old) if content_digest(old) == content_digest(&record) => {}
                    Some(old) => {
                        record.revision = old.revision + 1;
                        out.push(record);
                    }
                    None => {
                        record.revision = 1;
                        out.push(record);
                    }
                }
            }
        }
        let mut changes: Vec<Change> = out.into_iter().map(Change::Record).collect();
        if !changes.is_empty() {
            changes.push(Change::DayClosed(date.to_string()));
        }
        changes
    }

    /// Tells the engine a request already exists for this punch (after a restart).
    pub fn mark_requested(&mut self, punch_id: &str) {
        let id = self.punch_id(punch_id);
        self.requested.insert(id);
    }

    /// Loads the latest stored revision of a record (after a restart), so that re-derived content is compared with it.
    pub fn restore_record(&mut self, r: &upstream::AttendanceRecord) {
        let Ok(date) = r.work_date.parse::<Date>() else { return };
        let emp = self.intern(&r.employee_id);
        let shift = self.intern(&r.shift_id);
        let state = RecState {
            shift: shift.clone(),
            revision: r.revision,
            digest: content_digest(r),
            closed: r.closed,
            cleared: r.statuses.is_empty() && r.punch_ids.is_empty(),
        };
        let states = self.records.entry((emp, date)).or_default();
        match states.iter_mut().find(|s| s.shift == shift) {
            Some(s) if s.revision >= r.revision => {}
            Some(s) => *s = state,
            None => states.push(state),
        }
    }

    /// Applies one input and settles.
    pub fn apply(&mut self, input: Input) -> Vec<Change> {
        self.apply_batch([input])
    }

    /// Applies inputs in order, then settles once (see the module documentation).
    pub fn apply_batch(&mut self, inputs: impl IntoIterator<Item = Input>) -> Vec<Change> {
        for input in inputs {
            match input {
                Input::Punch(p) => self.ingest(p, true),
                Input::Restore(p) => self.ingest(p, false),
                Input::Tick(now) => self.tick(now),
                Input::Rules { version, rules } => self.set_rules(version, rules),
                Input::Roster(roster) => self.set_roster(roster),
                Input::FenceDecision { punch_id, approved } => self.decide(&punch_id, approved),
                Input::Schedule(schedule) => self.set_schedule(schedule),
                Input::Leaves(leaves) => self.set_leaves(leaves),
                Input::Claims(claims) => self.set_claims(claims),
            }
        }
        self.settle()
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        intern_in(&mut self.strings, s)
    }

    /// A punch id as the engine keeps it: a numbered id shares its interned head.
    fn punch_id(&mut self, text: &str) -> PunchId {
        let dict = &mut self.dict;
        PunchId::new(text, |head| dict.intern(head).1)
    }

    fn version_for(&self, date: Date) -> u32 {
        match self.marks.day_versions.get(&date) {
            Some(v) if self.rules.contains_key(v) => *v,
            _ => self.current,
        }
    }

    fn rules_for(&self, date: Date) -> Arc<Rules> {
        let v = self.version_for(date);
        self.rules.get(&v).cloned().unwrap_or_else(|| Arc::new(Rules::none()))
    }

    fn today(&self) -> Option<Date> {
        (self.marks.now_ms > 0).then(|| local_date(self.marks.now_ms, &self.settings.tz))
    }

    fn horizon_start(&self) -> Option<Date> {
        self.horizon
    }

    /// Recomputes [`Engine::horizon`] after the time or the rules changed. It never moves back: when `reconcile_days`
    /// grows, the dates it adds have no punches in memory, so they stay with the store until the horizon reaches them (a
    /// restart loads them).
    fn refresh_horizon(&mut self) {
        let days = self.rules().reconcile_days;
        let start = self.today().map(|d| days_before(d, days));
        self.horizon = self.horizon.max(start);
    }

    fn resolve(&mut self, fact: &Fact) -> Option<Arc<str>> {
        let subject = self.dict.get(fact.subject);
        let found = if fact.credential {
            self.roster.resolve(subject, self.dict.get(fact.device), fact.method).map(|e| e.id.clone())
        } else {
            Some(self.roster.resolve_employee(subject).map(|e| e.id.clone()).unwrap_or_else(|| subject.to_owned()))
        };
        found.map(|id| self.intern(&id))
    }

    /// The plan and shift span of `employee` (of `group`) on `date` under rules `version`: the group's, cached, unless
    /// the schedule assigns the employee something else that day.
    fn span_for(&mut self, version: u32, group: usize, employee: &str, date: Date) -> Option<(DayPlan, ShiftSpan)> {
        let rules = self.rules.get(&version)?;
        if let Some(assigned) = self.schedule.get(employee, date) {
            return rules.plan_span(group, date, Some(assigned), &self.settings.tz);
        }
        if let Some(hit) = self.spans.get(&(version, group, date)) {
            return Some(*hit);
        }
        let found = rules.plan_span(group, date, None, &self.settings.tz)?;
        self.spans.insert((version, group, date), found);
        Some(found)
    }

    /// The shift windows of `employee` on the dates `from..=to` (at most [`MAX_WINDOWS`] dates; dates without a group
    /// are left out), in date order.
    fn windows(&mut self, employee: &str, department: &str, from: Date, to: Date) -> Windows {
        let mut out = Windows::default();
        let mut d = from;
        while out.tried < MAX_WINDOWS {
            out.tried += 1;
            let version = self.version_for(d);
            let group = self.rules.get(&version).and_then(|r| r.group_of(employee, department));
            if let Some((_, span)) = group.and_then(|g| self.span_for(version, g, employee, d)) {
                out.items[out.len] = (d, span);
                out.len += 1;
            }
            if d >= to || next_day(d) == d {
                break;
            }
            d = next_day(d);
        }
        out
    }

    /// The work date of the record a punch at `t` of `employee` belongs to. Windows reach at most one day before and
    /// two days after their date (`opens_before` and `closes_after` are at most 24 h).
    fn assign(&mut self, employee: &str, department: &str, t: i64) -> Option<Date> {
        let d0 = local_date(t, &self.settings.tz);
        let windows = self.windows(employee, department, prev_day(prev_day(d0)), next_day(d0));
        pick(windows.as_slice(), t)
    }

    /// Keeps a punch with its owner's punches (an employee's are created with the employee's roster department);
    /// returns the old facts if it was kept already.
    fn keep(&mut self, owner: &Owner, key: Key, fact: Fact) -> Option<Fact> {
        let Some(employee) = owner else { return self.unresolved.insert(key, fact) };
        let roster = &self.roster;
        self.by_employee
            .entry(employee.clone())
            .or_insert_with(|| Punches::new(Arc::from(department_of(roster, employee))))
            .insert(key, fact, &mut self.dict)
    }

    /// The facts of a kept punch.
    fn fact(&self, owner: &Owner, key: &Key) -> Option<Fact> {
        match owner {
            Some(e) => self.by_employee.get(e)?.get(key, &self.dict),
            None => self.unresolved.get(key).copied(),
        }
    }

    /// The roster department of an employee, from the engine's copy when it has punches of them.
    fn department(&self, employee: &str) -> Arc<str> {
        match self.by_employee.get(employee) {
            Some(p) => p.department.clone(),
            None => Arc::from(department_of(&self.roster, employee)),
        }
    }

    /// Marks a record for recomputation in this batch. A date older than the horizon is not in memory: it is put on
    /// the backfill set instead, to be reconciled from the store.
    fn touch(&mut self, date: Date, employee: Arc<str>) {
        if self.horizon.is_some_and(|h| date < h) {
            if !self.replaying {
                self.marks.backfill.insert(date);
            }
            return;
        }
        self.dirty.entry(date).or_default().insert(employee);
    }

    /// Marks the record a punch belongs to (and notes dates for closing announcements).
    fn mark(&mut self, employee: &Arc<str>, t: i64) {
        let department = self.department(employee);
        let date = match self.assign(employee, &department, t) {
            Some(date) => {
                self.touch(date, employee.clone());
                date
            }
            None => local_date(t, &self.settings.tz),
        };
        self.note_day(date);
    }

    fn note_day(&mut self, date: Date) {
        if self.marks.announced.contains(&date) {
            return;
        }
        let before_epoch = match self.marks.epoch {
            Some(epoch) => date < epoch,
            None => true,
        };
        if before_epoch {
            self.pending_days.insert(date);
        }
    }

    /// The local date of `t` is older than the horizon.
    fn too_old(&self, t: i64) -> bool {
        match self.horizon_start() {
            Some(start) => local_date(t, &self.settings.tz) < start,
            None => false,
        }
    }

    /// A punch older than the horizon: forwarded (when fresh) but not kept; the work date it belongs to (by the rules in
    /// force) goes on the backfill set, to be reconciled from the store. Returns false when it belongs to a date in the
    /// horizon after all (a window that opens the day before), so that it is kept like any other.
    fn ingest_old(&mut self, p: &Punch, id: PunchId, fresh: bool) -> bool {
        let employee = match &p.subject {
            Subject::Employee(e) => {
                Some(self.roster.resolve_employee(e).map(|x| x.id.clone()).unwrap_or_else(|| e.clone()))
            }
            Subject::Credential(c) => self.roster.resolve(c, &p.device_id, p.method).map(|x| x.id.clone()),
        };
        let department = employee.as_deref().map(|e| department_of(&self.roster, e).to_owned()).unwrap_or_default();
        let date = employee.as_deref().and_then(|e| self.assign(e, &department, p.device_time_ms));
        if date.is_some_and(|d| self.horizon.is_none_or(|h| d >= h)) {
            return false;
        }
        if !fresh {
            return true;
        }
        if let Some(d) = date {
            self.marks.backfill.insert(d);
        }
        if !self.fresh_set.insert(id) {
            return true;
        }
        let rules = self.rules().clone();
        let mut flags = Vec::new();
        if employee.is_none() {
            flags.push(flags::UNKNOWN_CREDENTIAL.to_owned());
        }
        if p.realtime && (p.device_time_ms - p.received_time_ms).abs() > rules.max_clock_skew_ms {
            flags.push(flags::CLOCK_SKEW.to_owned());
        }
        let fence = employee
            .as_deref()
            .and_then(|e| rules.group_of(e, &department))
            .and_then(|g| rules.groups[g].geofence.as_ref());
        if let (Some(fence), Some(g), false) = (fence, p.geo, p.method == Method::Makeup) {
            if !fence.contains(g.lat, g.lng) {
                flags.push(flags::OUT_OF_FENCE.to_owned());
            }
        }
        self.fresh_unkept.push(upstream::Punch {
            punch_id: p.punch_id.clone(),
            device_id: p.device_id.clone(),
            employee_id: employee.unwrap_or_default(),
            method: p.method.as_str().to_owned(),
            device_time_ms: p.device_time_ms,
            received_time_ms: p.received_time_ms,
            flags,
            lat: p.geo.map(|g| g.lat),
            lng: p.geo.map(|g| g.lng),
            score: p.score,
            credential: p.credential().unwrap_or_default().to_owned(),
        });
        true
    }

    fn ingest(&mut self, p: Punch, fresh: bool) {
        let id = self.punch_id(&p.punch_id);
        if self.too_old(p.device_time_ms) && self.ingest_old(&p, id.clone(), fresh) {
            return;
        }
        let (subject, credential) = match &p.subject {
            Subject::Employee(e) => (self.dict.number(e), false),
            Subject::Credential(c) => (self.dict.number(c), true),
        };
        let fact = Fact {
            subject,
            device: self.dict.number(&p.device_id),
            received_ms: p.received_time_ms,
            score: p.score.unwrap_or(f32::NAN),
            method: p.method,
            credential,
            realtime: p.realtime,
        };
        let key: Key = (p.device_time_ms, id.clone());
        let employee = self.resolve(&fact);
        if self.keep(&employee, key.clone(), fact).is_some() {
            return;
        }
        if let Some(g) = p.geo {
            self.geo.insert(id.clone(), (g, p.device_time_ms));
        }
        if let Some(b) = bssid_of(&p) {
            let b = self.intern(&b);
            self.wifi.insert(id.clone(), (b, p.device_time_ms));
        }
        self.replaying = !fresh;
        match &employee {
            Some(e) => self.mark(&e.clone(), p.device_time_ms),
            None => self.note_day(local_date(p.device_time_ms, &self.settings.tz)),
        }
        self.replaying = false;
        if fresh && self.fresh_set.insert(id) {
            self.fresh.push((employee, key));
        }
    }

    fn tick(&mut self, now: i64) {
        if now <= self.marks.now_ms {
            return;
        }
        self.marks.now_ms = now;
        self.refresh_horizon();
        if self.marks.epoch.is_none() {
            let today = local_date(now, &self.settings.tz);
            self.marks.epoch = Some(today);
            self.marks.closed_through = Some(prev_day(today));
            self.pending_days.retain(|d| *d < today);
        }
    }

    /// Every kept punch, for re-marking after rules or roster changes.
    fn all_keys(&self) -> Vec<(Owner, Key)> {
        let mut out: Vec<(Owner, Key)> = Vec::with_capacity(self.punches_kept());
        for (e, punches) in &self.by_employee {
            out.extend(punches.iter(&self.dict).map(|(k, _)| (Some(e.clone()), k)));
        }
        out.extend(self.unresolved.keys().map(|k| (None, k.clone())));
        out
    }

    /// After rules or roster changes: every open record and every punch on an open date is reconsidered.
    fn remark_open(&mut self) {
        let open: Vec<(Date, Arc<str>)> = self
            .records
            .keys()
            .filter(|(_, d)| !self.marks.day_versions.contains_key(d))
            .map(|(e, d)| (*d, e.clone()))
            .collect();
        for (d, e) in open {
            self.touch(d, e);
        }
        for (employee, (t, _)) in self.all_keys() {
            if let Some(e) = employee {
                let date = local_date(t, &self.settings.tz);
                let frozen =
                    [prev_day(date), date, next_day(date)].iter().all(|d| self.marks.day_versions.contains_key(d));
                if !frozen {
                    self.mark(&e, t);
                }
            }
        }
    }

    fn set_rules(&mut self, version: u32, rules: Arc<Rules>) {
        if version == self.current && self.rules.get(&version) == Some(&rules) {
            return;
        }
        self.rules.insert(version, rules);
        self.current = version;
        self.refresh_horizon();
        self.spans.retain(|(v, _, _), _| *v != version);
        self.remark_open();
    }

    /// A new schedule: the records of every (employee, date) whose assignment changed are recomputed, and those of the
    /// dates around it (a punch near a window's edge may change dates with the shift). Closed dates too: a schedule is a fact
    /// about who was to work, and correcting it corrects the record.
    fn set_schedule(&mut self, schedule: Arc<Schedule>) {
        if *schedule == *self.schedule {
            return;
        }
        let changed = self.schedule.differences(&schedule);
        self.schedule = schedule;
        for (employee, date) in changed {
            let e = self.intern(&employee);
            // A night shift's window reaches into the second day after its date (`closes_after` up to 24 h).
            for d in [prev_day(date), date, next_day(date), next_day(next_day(date))] {
                self.touch(d, e.clone());
            }
        }
    }

    /// New approved leave: the records of the dates every changed leave covers are recomputed.
    fn set_leaves(&mut self, leaves: Arc<LeaveBook>) {
        if *leaves == *self.leaves {
            return;
        }
        let changed = self.leaves.differences(&leaves, &self.settings.tz);
        self.leaves = leaves;
        for (employee, from, to) in changed {
            let e = self.intern(&employee);
            let mut d = from;
            for _ in 0..=crate::reconcile::leave::MAX_DAYS {
                self.touch(d, e.clone());
                if d >= to || next_day(d) == d {
                    break;
                }
                d = next_day(d);
            }
        }
    }

    /// New pending offline claims: the records the old and new claims fall on are recomputed.
    fn set_claims(&mut self, mut claims: Arc<Vec<(String, i64)>>) {
        Arc::make_mut(&mut claims).sort_unstable();
        if claims == self.claims {
            return;
        }
        let old = std::mem::replace(&mut self.claims, claims.clone());
        let changed: BTreeSet<&(String, i64)> =
            old.iter().filter(|c| !claims.contains(c)).chain(claims.iter().filter(|c| !old.contains(c))).collect();
        for (employee, t) in changed {
            let e = self.intern(employee);
            self.mark(&e, *t);
        }
    }

    fn set_roster(&mut self, roster: Arc<Roster>) {
        if *roster == *self.roster {
            return;
        }
        self.roster = roster;
        // Re-resolve every punch: credentials learned since resolve earlier unknown punches.
        let mut moved: Vec<(Owner, Owner, Key)> = Vec::new();
        for (old, key) in self.all_keys() {
            let Some(fact) = self.fact(&old, &key) else { continue };
            let new = self.resolve(&fact);
            if new != old {
                match &old {
                    Some(e) => {
                        if let Some(m) = self.by_employee.get_mut(e) {
                            m.remove(&key, &mut self.dict);
                        }
                    }
                    None => {
                        self.unresolved.remove(&key);
                    }
                }
                self.keep(&new, key.clone(), fact);
                moved.push((old, new, key));
            }
        }
        // Departments may have changed.
        let roster = self.roster.clone();
        for (e, punches) in self.by_employee.iter_mut() {
            let department = department_of(&roster, e);
            if &*punches.department != department {
                punches.department = Arc::from(department);
            }
        }
        // Dates of moved punches are reconsidered even when closed: the punch was never counted there (or is gone).
        for (old, new, (t, id)) in moved {
            if let Some(o) = &old {
                let department = self.department(o);
                if let Some(date) = self.assign(o, &department, t) {
                    self.touch(date, o.clone());
                }
            }
            if let Some(n) = &new {
                self.mark(n, t);
                if old.is_none() && !self.fresh_set.contains(&id) {
                    // Forward the punch again, now with its employee.
                    self.fresh_set.insert(id.clone());
                    self.fresh.push((new.clone(), (t, id)));
                }
            }
        }
        // Departments and group membership may have changed: open records, and the closed windows of open dates (an
        // employee moved into a group whose window has closed is absent now, not never).
        self.windows_done.clear();
        self.remark_open();
    }

    fn decide(&mut self, punch_id: &str, approved: bool) {
        let id = self.punch_id(punch_id);
        if self.decisions.insert(id.clone(), approved) == Some(approved) {
            return;
        }
        let Some(t) = self.geo.get(&id).map(|(_, t)| *t).or_else(|| self.wifi.get(&id).map(|(_, t)| *t)) else {
            return;
        };
        let key: Key = (t, id);
        let owner = self.by_employee.iter().find(|(_, m)| m.contains_key(&key, &self.dict)).map(|(e, _)| e.clone());
        if let Some(e) = owner {
            self.mark(&e, t);
        }
    }

    fn evict(&mut self) {
        let Some(start) = self.horizon_start() else { return };
        if self.evicted_before == Some(start) {
            return;
        }
        self.evicted_before = Some(start);
        let keep_from = days_before(start, 3);
        let cut = local_ms(keep_from, 0, &self.settings.tz);
        let empty = PunchId::empty();
        for punches in self.by_employee.values_mut() {
            for ((_, id), _) in punches.drain_before(cut, &mut self.dict) {
                self.geo.remove(&id);
                self.wifi.remove(&id);
                self.decisions.remove(&id);
            }
        }
        self.by_employee.retain(|_, m| !m.is_empty());
        let kept = self.unresolved.split_off(&(cut, empty));
        self.unresolved = kept;
        // Free the numbers of devices, subjects and heads no kept punch refers to any more.
        let mut used = self.dict.unused_marks();
        for punches in self.by_employee.values() {
            punches.mark_used(&mut used);
        }
        for (key, fact) in &self.unresolved {
            mark_punch(key, fact, &self.dict, &mut used);
        }
        self.dict.sweep(&used);
        // Records before the horizon are reconciled from the store (with their stored revisions) when punches reach them.
        self.records.retain(|(_, d), _| *d >= start);
        self.spans.retain(|(_, _, d), _| *d >= keep_from);
        self.pending_days.retain(|d| *d >= keep_from);
        let versions_needed: BTreeSet<u32> = self.marks.day_versions.range(keep_from..).map(|(_, v)| *v).collect();
        self.marks.day_versions = self.marks.day_versions.split_off(&keep_from);
        self.marks.announced = self.marks.announced.split_off(&keep_from);
        let current = self.current;
        self.rules.retain(|v, _| *v == current || versions_needed.contains(v));
        let (geo, wifi) = (&self.geo, &self.wifi);
        self.requested.retain(|id| geo.contains_key(id) || wifi.contains_key(id));
        // A string only the interner still holds is no longer used.
        self.strings.retain(|s| Arc::strong_count(s) > 1);
    }

    /// Employees whose plan on `date` (rules `version`) is a working day on shift `shift`: when that shift's window
    /// closes they have a record, absent or not.
    fn scheduled_on(&mut self, date: Date, version: u32, shift: usize) -> Vec<Arc<str>> {
        let Some(rules) = self.rules.get(&version).cloned() else { return Vec::new() };
        if rules.groups.is_empty() {
            return Vec::new();
        }
        let roster = self.roster.clone();
        let mut out = Vec::new();
        for e in roster.employees() {
            let Some(g) = rules.group_of(&e.id, &e.department) else { continue };
            if let Some((plan, _)) = self.span_for(version, g, &e.id, date) {
                if plan.workday && plan.shift == shift {
                    out.push(self.intern(&e.id));
                }
            }
        }
        out
    }

    /// Marks the scheduled employees of every shift window that has closed by now on a date not yet closed (SPEC: missing
    /// punches and absence are raised at the close of each shift's window, not when the whole date closes).
    fn close_windows(&mut self, now: i64) {
        let Some(through) = self.marks.closed_through else { return };
        let today = local_date(now, &self.settings.tz);
        let mut d = next_day(through);
        while d <= today {
            let version = self.version_for(d);
            let rules = self.rules_for(d);
            for (s, shift) in rules.shifts.iter().enumerate() {
                if self.windows_done.contains(&(d, version, s)) || shift.span(d, &self.settings.tz).close_ms >= now {
                    continue;
                }
                self.windows_done.insert((d, version, s));
                for e in self.scheduled_on(d, version, s) {
                    self.touch(d, e);
                }
            }
            if next_day(d) == d {
                break;
            }
            d = next_day(d);
        }
    }

    fn settle(&mut self) -> Vec<Change> {
        let now = self.marks.now_ms;
        let tz = self.settings.tz.clone();
        // Records whose window has closed.
        while let Some((&(close_ms, _), _)) = self.closing.first_key_value() {
            if close_ms >= now {
                break;
            }
            if let Some(((_, d), employees)) = self.closing.pop_first() {
                for e in employees {
                    self.touch(d, e);
                }
            }
        }
        // Dates older than the horizon are not closed one by one.
        if let (Some(through), Some(start)) = (self.marks.closed_through, self.horizon_start()) {
            if through < prev_day(start) {
                self.marks.closed_through = Some(prev_day(start));
            }
        }
        // Shift windows that have closed: everyone scheduled gets their record.
        self.close_windows(now);
        // Work dates whose last window has closed, in order.
        let mut announce: Vec<Date> = Vec::new();
        if let Some(mut through) = self.marks.closed_through {
            loop {
                let d = next_day(through);
                if d == through || self.rules_for(d).day_close_ms(d, &tz) >= now {
                    break;
                }
                announce.push(d);
                through = d;
                self.marks.closed_through = Some(d);
            }
            self.windows_done = self.windows_done.split_off(&(next_day(through), 0, 0));
        }
        let due: Vec<Date> =
            self.pending_days.iter().copied().filter(|d| self.rules_for(*d).day_close_ms(*d, &tz) < now).collect();
        for d in due {
            self.pending_days.remove(&d);
            announce.push(d);
        }

        let mut dirty: Vec<(Date, Arc<str>)> = std::mem::take(&mut self.dirty)
            .into_iter()
            .flat_map(|(d, employees)| employees.into_iter().map(move |e| (d, e)))
            .collect();
        dirty.sort_unstable();
        let mut record_changes = Vec::with_capacity(dirty.len());
        for (date, employee) in dirty {
            self.recompute(&employee, date, &mut record_changes);
        }
        for d in &announce {
            let v = self.version_for(*d);
            self.marks.day_versions.entry(*d).or_insert(v);
            self.marks.announced.insert(*d);
        }

        let mut out = Vec::with_capacity(self.fresh.len() + self.fresh_unkept.len() + record_changes.len());
        for (employee, key) in std::mem::take(&mut self.fresh) {
            if let Some(p) = self.punch_change(employee, &key) {
                out.push(Change::Punch(p));
            }
        }
        out.extend(std::mem::take(&mut self.fresh_unkept).into_iter().map(Change::Punch));
        self.fresh_set.clear();
        self.notes.clear();
        out.extend(record_changes.into_iter().map(Change::Record));
        let mut days: BTreeSet<Date> = announce.into_iter().collect();
        days.extend(std::mem::take(&mut self.touched_closed));
        out.extend(days.into_iter().map(|d| Change::DayClosed(d.to_string())));
        self.evict();
        out
    }

    fn punch_change(&self, employee: Owner, key: &Key) -> Option<upstream::Punch> {
        let fact = self.fact(&employee, key)?;
        let (t, id) = key;
        let notes = self.notes.get(id).copied().unwrap_or_default();
        let mut flags = Vec::new();
        if employee.is_none() {
            flags.push(flags::UNKNOWN_CREDENTIAL.to_owned());
        }
        let skew_ms = self.rules().max_clock_skew_ms;
        if notes.skew || (fact.realtime && (t - fact.received_ms).abs() > skew_ms) {
            flags.push(flags::CLOCK_SKEW.to_owned());
        }
        if notes.merged {
            flags.push(flags::DUPLICATE_MERGED.to_owned());
        }
        if notes.outside {
            flags.push(flags::OUT_OF_FENCE.to_owned());
        }
        if notes.weak {
            flags.push(flags::WEAK_LOCATION.to_owned());
        }
        let geo = self.geo.get(id).map(|(g, _)| *g);
        Some(upstream::Punch {
            punch_id: id.text(),
            device_id: self.dict.get(fact.device).to_owned(),
            employee_id: employee.map(|e| e.to_string()).unwrap_or_default(),
            method: fact.method.as_str().to_owned(),
            device_time_ms: *t,
            received_time_ms: fact.received_ms,
            flags,
            lat: geo.map(|g| g.lat),
            lng: geo.map(|g| g.lng),
            score: fact.score(),
            credential: if fact.credential { self.dict.get(fact.subject).to_owned() } else { String::new() },
        })
    }

    /// Recomputes the record(s) of (employee, date) and appends a revision for every one whose content changed.
    fn recompute(&mut self, employee: &Arc<str>, date: Date, out: &mut Vec<upstream::AttendanceRecord>) {
        let version = self.version_for(date);
        let rules = self.rules_for(date);
        let department = self.department(employee);
        let department = &*department;
        let group = rules.group_of(employee, department);
        let now = self.marks.now_ms;
        let mut computed: Option<(Arc<str>, upstream::AttendanceRecord, i64)> = None;
        if let Some((g, (plan, span))) = group.and_then(|g| self.span_for(version, g, employee, date).map(|s| (g, s))) {
            let closed = now > span.close_ms;
            // The punches in the window that belong to this date (not to an overlapping window of a nearby date).
            let windows = self.windows(employee, department, prev_day(prev_day(date)), next_day(next_day(date)));
            let mine: Vec<(Key, Method, bool)> = self
                .by_employee
                .get(employee)
                .map(|m| {
                    m.between(span.open_ms, span.close_ms, &self.dict)
                        .filter(|(k, _)| pick(windows.as_slice(), k.0) == Some(date))
                        .map(|(k, f)| {
                            let skew = f.realtime && (k.0 - f.received_ms).abs() > rules.max_clock_skew_ms;
                            (k, f.method, skew)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let claim_pending =
                self.claims.iter().any(|(e, t)| **e == **employee && pick(windows.as_slice(), *t) == Some(date));
            if !mine.is_empty() || (plan.workday && closed) || claim_pending {
                let group = &rules.groups[g];
                let day_punches: Vec<DayPunch> = mine
                    .iter()
                    .map(|((t, id), method, skew)| {
                        let geo = self.geo.get(id).map(|(g, _)| *g);
                        let bssid = self.wifi.get(id).map(|(b, _)| &**b);
                        let (fence, weak) =
                            fence_status(geo, bssid, group, *method, || self.decisions.get(id).copied());
                        DayPunch { time_ms: *t, method: *method, clock_skew: *skew, fence, weak }
                    })
                    .collect();
                let mut ctx = DayContext::new(&rules, group, plan, span, closed);
                ctx.claim_pending = claim_pending;
                ctx.leave = self.leaves.cover(employee, date, &span, ctx.shift);
                let shift = ctx.shift;
                let ev = evaluate(&ctx, &day_punches);
                let mut requests = Vec::new();
                for ((p, merged), ((_, id), _, _)) in day_punches.iter().zip(&ev.merged).zip(&mine) {
                    if self.fresh_set.contains(id) {
                        self.notes.insert(
                            id.clone(),
                            Notes {
                                merged: *merged,
                                outside: p.fence.outside() && !p.weak,
                                weak: p.fence.outside() && p.weak,
                                skew: p.clock_skew,
                            },
                        );
                    }
                    if p.fence == Fence::Pending && !self.requested.contains(id) {
                        requests.push((
                            id.clone(),
                            FenceRequest {
                                punch_id: id.text(),
                                employee: employee.to_string(),
                                department: department.to_owned(),
                                time_ms: p.time_ms,
                                weak_location: p.weak,
                            },
                        ));
                    }
                }
                let punch_ids = mine.iter().map(|((_, id), _, _)| id.text()).collect();
                let record = RecordParts { employee, date, shift: &shift.id, closed, version }.build(
                    &self.settings.gateway_id,
                    &ev,
                    punch_ids,
                );
                for (id, r) in requests {
                    self.requested.insert(id);
                    self.requests.push(r);
                }
                let shift_id = self.intern(&shift.id);
                if closed {
                    // The date's rules are fixed once one of its windows has closed.
                    self.marks.day_versions.entry(date).or_insert(version);
                } else {
                    self.closing.entry((span.close_ms, date)).or_default().insert(employee.clone());
                }
                computed = Some((shift_id, record, span.close_ms));
            }
        }

        let announced = self.marks.announced.contains(&date);
        let gateway = self.settings.gateway_id.clone();
        let states = self.records.entry((employee.clone(), date)).or_default();
        let mut changed = false;
        for st in states.iter_mut() {
            let replaced = computed.as_ref().is_none_or(|(s, _, _)| *s != st.shift);
            if replaced && !st.cleared {
                let parts = RecordParts { employee, date, shift: &st.shift, closed: st.closed, version };
                let cleared = parts.cleared(&gateway, st.revision + 1);
                st.revision += 1;
                st.digest = content_digest(&cleared);
                st.cleared = true;
                out.push(cleared);
                changed = true;
            }
        }
        if let Some((shift, mut record, _)) = computed {
            let digest = content_digest(&record);
            match states.iter_mut().find(|s| s.shift == shift) {
                Some(st) => {
                    if st.digest != digest {
                        st.revision += 1;
                        st.digest = digest;
                        st.closed = record.closed;
                        st.cleared = false;
                        record.revision = st.revision;
                        out.push(record);
                        changed = true;
                    }
                }
                None => {
                    record.revision = 1;
                    states.push(RecState { shift, revision: 1, digest, closed: record.closed, cleared: false });
                    out.push(record);
                    changed = true;
                }
            }
        }
        if states.is_empty() {
            self.records.remove(&(employee.clone(), date));
        }
        if changed && announced {
            self.touched_closed.insert(date);
        }
    }
}
