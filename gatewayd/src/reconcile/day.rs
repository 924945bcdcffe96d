//! Evaluation of one attendance record: the punches of one (employee, work date, shift) in, the record's facts out.
//!
//! This is SPEC section 4 in one pure function, [`evaluate`]. The engine ([`super::engine`]) decides which punches belong
//! to which record; here they are merged, paired, and turned into clock-in, clock-out, minutes and statuses.
//!
//! Rounding: late and early-leave minutes round up (09:10:01 with a 10 minute grace is late by 11 minutes: one second late
//! is never "late by 0 minutes"); worked and overtime minutes round down (only completed minutes count).

use drivers::Method;

use crate::reconcile::rules::{Shift, ShiftSpan, Verification};

/// Where a punch stands with the geofence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// No GPS point, or no fence in force for the employee's group.
    NotApplicable,
    Inside,
    /// Outside the fence and no manager decided yet: counts provisionally, the record is `pending_approval`.
    Pending,
    /// Outside, approved by a manager: counts.
    Approved,
    /// Outside, rejected by a manager: kept as evidence, does not count.
    Rejected,
}

impl Fence {
    pub fn outside(self) -> bool {
        matches!(self, Fence::Pending | Fence::Approved | Fence::Rejected)
    }
}

/// One punch as the evaluation sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct DayPunch {
    pub time_ms: i64,
    pub method: Method,
    pub clock_skew: bool,
    pub fence: Fence,
}

/// A record status (SPEC section 4), in the order statuses are listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Late,
    EarlyLeave,
    Overtime,
    MissingIn,
    MissingOut,
    Absent,
    SingleFactor,
    DualTimeout,
    OutOfFence,
    PendingApproval,
    RestDayWork,
    ClockSkew,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Late => "late",
            Status::EarlyLeave => "early_leave",
            Status::Overtime => "overtime",
            Status::MissingIn => "missing_in",
            Status::MissingOut => "missing_out",
            Status::Absent => "absent",
            Status::SingleFactor => "single_factor",
            Status::DualTimeout => "dual_timeout",
            Status::OutOfFence => "out_of_fence",
            Status::PendingApproval => "pending_approval",
            Status::RestDayWork => "rest_day_work",
            Status::ClockSkew => "clock_skew",
        }
    }
}

/// Everything [`evaluate`] needs besides the punches.
#[derive(Clone, Copy, Debug)]
pub struct DayContext<'a> {
    pub shift: &'a Shift,
    pub span: ShiftSpan,
    pub workday: bool,
    pub verification: Option<Verification>,
    pub dedupe_window_ms: i64,
    /// The window has closed: missing punches now raise statuses.
    pub closed: bool,
}

/// The facts of one record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evaluation {
    pub clock_in_ms: Option<i64>,
    pub clock_out_ms: Option<i64>,
    pub statuses: Vec<Status>,
    pub late_minutes: i32,
    pub early_leave_minutes: i32,
    pub worked_minutes: i32,
    pub overtime_minutes: i32,
    /// Per input punch: merged into an earlier kept punch of the same method (`duplicate_merged`).
    pub merged: Vec<bool>,
}

const MINUTE_MS: i64 = 60_000;

fn minutes_up(ms: i64) -> i32 {
    i32::try_from((ms + MINUTE_MS - 1).div_euclid(MINUTE_MS)).unwrap_or(i32::MAX)
}

fn minutes_down(ms: i64) -> i32 {
    i32::try_from(ms.div_euclid(MINUTE_MS)).unwrap_or(i32::MAX)
}

/// Marks punches merged into an earlier kept punch of the same method: in time order, a punch within `window` of the
/// last kept punch of its method is merged, otherwise kept. Punches must be sorted by time.
pub fn merge_duplicates(punches: &[DayPunch], window_ms: i64) -> Vec<bool> {
    let mut last_kept: Vec<(Method, i64)> = Vec::new();
    punches
        .iter()
        .map(|p| match last_kept.iter_mut().find(|(m, _)| *m == p.method) {
            Some((_, t)) if p.time_ms - *t <= window_ms => true,
            Some((_, t)) => {
                *t = p.time_ms;
                false
            }
            None => {
                last_kept.push((p.method, p.time_ms));
                false
            }
        })
        .collect()
}

/// One clock event: when it completed and when its first punch was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Event {
    at: i64,
    first: i64,
}

/// Evaluates a record. `punches` must be sorted by (time, id) and are all the punches assigned to this record.
pub fn evaluate(ctx: &DayContext<'_>, punches: &[DayPunch]) -> Evaluation {
    let merged = merge_duplicates(punches, ctx.dedupe_window_ms);
    let counting: Vec<&DayPunch> =
        punches.iter().zip(&merged).filter(|(p, m)| !**m && p.fence != Fence::Rejected).map(|(p, _)| p).collect();
    let mut statuses = Vec::new();

    let (clock_in, clock_out) = match ctx.verification {
        None => {
            let cin = counting.first().map(|p| p.time_ms);
            let cout = cin.and_then(|t| counting.iter().rev().map(|p| p.time_ms).find(|&u| u > t));
            (cin.map(|t| Event { at: t, first: t }), cout.map(|t| Event { at: t, first: t }))
        }
        Some(v) => dual_events(&counting, v, &mut statuses),
    };

    let mut e = Evaluation { merged, ..Default::default() };
    e.clock_in_ms = clock_in.map(|c| c.at);
    e.clock_out_ms = clock_out.map(|c| c.at);
    if let (Some(i), Some(o)) = (clock_in, clock_out) {
        e.worked_minutes = minutes_down(o.at - i.at);
    }
    let span = ctx.span;
    if ctx.workday {
        if let Some(i) = clock_in {
            if i.at > span.start_ms + ctx.shift.late_grace_ms {
                statuses.push(Status::Late);
                e.late_minutes = minutes_up(i.at - span.start_ms);
            }
        }
        if let Some(o) = clock_out {
            if o.at < span.end_ms - ctx.shift.early_grace_ms {
                statuses.push(Status::EarlyLeave);
                e.early_leave_minutes = minutes_up(span.end_ms - o.at);
            }
            if o.at >= span.end_ms + ctx.shift.overtime_after_ms && o.at - span.end_ms >= MINUTE_MS {
                statuses.push(Status::Overtime);
                e.overtime_minutes = minutes_down(o.at - span.end_ms);
            }
        }
        if ctx.closed {
            if punches.is_empty() {
                statuses.push(Status::Absent);
            } else {
                if clock_in.is_none() {
                    statuses.push(Status::MissingIn);
                }
                if clock_out.is_none() {
                    statuses.push(Status::MissingOut);
                }
            }
        }
    } else if !counting.is_empty() {
        statuses.push(Status::RestDayWork);
        e.overtime_minutes = e.worked_minutes;
        if e.overtime_minutes > 0 {
            statuses.push(Status::Overtime);
        }
    }
    if punches.iter().any(|p| p.fence.outside()) {
        statuses.push(Status::OutOfFence);
    }
    if punches.iter().any(|p| p.fence == Fence::Pending) {
        statuses.push(Status::PendingApproval);
    }
    if punches.iter().any(|p| p.clock_skew) {
        statuses.push(Status::ClockSkew);
    }
    statuses.sort();
    statuses.dedup();
    e.statuses = statuses;
    e
}

/// Clock events under dual verification. A clock event is a `makeup` punch, or a punch of one required method with a
/// punch of the other within the window before it (the event completes at the later punch). Clock-in is the earliest
/// completed event; clock-out the latest event whose punches are all after the clock-in. Attempts that fail raise
/// `single_factor` (one method only) or `dual_timeout` (both methods, too far apart).
fn dual_events(counting: &[&DayPunch], v: Verification, statuses: &mut Vec<Status>) -> (Option<Event>, Option<Event>) {
    let [a, b] = v.methods;
    let times = |m: Method| -> Vec<i64> { counting.iter().filter(|p| p.method == m).map(|p| p.time_ms).collect() };
    let (ta, tb) = (times(a), times(b));
    let makeups = times(Method::Makeup);
    // The latest punch of `other` in [t - window, t] that is also after `after`.
    let partner = |other: &[i64], t: i64, after: Option<i64>| -> Option<i64> {
        let lo = (t - v.window_ms).max(after.map_or(i64::MIN, |x| x + 1));
        let idx = other.partition_point(|&x| x <= t);
        other[..idx].last().copied().filter(|&x| x >= lo)
    };
    // Candidate events in time order of completion.
    let mut events: Vec<Event> = Vec::new();
    for &t in &ta {
        if let Some(p) = partner(&tb, t, None) {
            events.push(Event { at: t, first: p });
        }
    }
    for &t in &tb {
        if let Some(p) = partner(&ta, t, None) {
            events.push(Event { at: t, first: p });
        }
    }
    events.extend(makeups.iter().map(|&t| Event { at: t, first: t }));
    events.sort_by_key(|e| (e.at, e.first));
    let clock_in = events.first().copied();

    let clock_out = clock_in.and_then(|cin| {
        let mut best: Option<Event> = None;
        let mut consider = |e: Event| {
            if e.first > cin.at && e.at > cin.at && best.is_none_or(|b| e.at > b.at) {
                best = Some(e);
            }
        };
        for &t in &ta {
            if let Some(p) = partner(&tb, t, Some(cin.at)) {
                consider(Event { at: t, first: p });
            }
        }
        for &t in &tb {
            if let Some(p) = partner(&ta, t, Some(cin.at)) {
                consider(Event { at: t, first: p });
            }
        }
        for &t in &makeups {
            consider(Event { at: t, first: t });
        }
        best
    });

    let attempt = |from: Option<i64>, to: Option<i64>| {
        let in_range = |t: &i64| from.is_none_or(|f| *t > f) && to.is_none_or(|u| *t < u);
        (ta.iter().any(in_range), tb.iter().any(in_range))
    };
    let failed = match (clock_in, clock_out) {
        (None, _) => Some(attempt(None, None)),
        (Some(cin), None) => Some(attempt(Some(cin.at), None)),
        (Some(_), Some(_)) => None,
    };
    match failed {
        Some((true, true)) => statuses.push(Status::DualTimeout),
        Some((true, false) | (false, true)) => statuses.push(Status::SingleFactor),
        _ => {}
    }
    // Both methods tried before the clock-in and never paired: a timed-out first attempt.
    if let Some(cin) = clock_in {
        if attempt(None, Some(cin.first)) == (true, true) {
            statuses.push(Status::DualTimeout);
        }
    }
    (clock_in, clock_out)
}
