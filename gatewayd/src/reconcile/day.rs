//! Evaluation of one attendance record: the punches of one (employee, work date, shift) in, the record's facts out.
//!
//! This is SPEC section 4 in one pure function, [`evaluate`]. The engine ([`super::engine`]) decides which punches belong
//! to which record; here they are merged, paired, and turned into clock-in, clock-out, minutes and statuses.
//!
//! Rounding (SPEC section 4): late minutes are the whole minutes from the shift's start, rounded down (09:10:01 with a 10
//! minute grace is late by 10 minutes); early-leave minutes are the minutes to the shift's end, rounded up (out at
//! 17:59:59 is one minute early); worked and overtime minutes round down (only completed minutes count).
//!
//! Dual verification: a clock event is a verified pair, two punches of the two required methods within the window of
//! each other. The clock-in is the EARLIER punch of the first pair (the first factor proves presence, the second only
//! confirms it); the clock-out is the LATER punch of the last pair whose punches both follow the clock-in pair.
//!
//! Flexible shifts (`flex`): late and early leave are measured against the core hours, `short_hours` when the time
//! worked is below `hours` (less leave), overtime is the time worked beyond `hours`. Approved leave ([`LeaveCover`])
//! turns a whole shift into `on_leave`, or moves what is expected of a partly covered one.

use drivers::Method;

use crate::reconcile::rules::{DayPlan, Group, Rules, Shift, ShiftSpan, Verification};

/// Where a punch stands with the geofence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// No GPS point, or no fence in force for the employee's group.
    NotApplicable,
    Inside,
    /// Outside the fence (or a fix too wide to tell, see [`DayPunch::weak`]) and no manager decided yet: counts
    /// provisionally, the record is `pending_approval`.
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
    /// The punch needs a decision because its GPS fix is less accurate than the fence is wide (`weak_location`),
    /// not because it is outside.
    pub weak: bool,
}

/// A record status (SPEC section 4), in the order statuses are listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Late,
    EarlyLeave,
    ShortHours,
    Overtime,
    MissingIn,
    MissingOut,
    Absent,
    OnLeave,
    SingleFactor,
    DualTimeout,
    OutOfFence,
    WeakLocation,
    PendingApproval,
    RestDayWork,
    ClockSkew,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Late => "late",
            Status::EarlyLeave => "early_leave",
            Status::ShortHours => "short_hours",
            Status::Overtime => "overtime",
            Status::MissingIn => "missing_in",
            Status::MissingOut => "missing_out",
            Status::Absent => "absent",
            Status::OnLeave => "on_leave",
            Status::SingleFactor => "single_factor",
            Status::DualTimeout => "dual_timeout",
            Status::OutOfFence => "out_of_fence",
            Status::WeakLocation => "weak_location",
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
    /// Approved leave on the shift, if any ([`LeaveCover::of`]).
    pub leave: Option<LeaveCover>,
    /// An offline claim for this record waits for a manager: the record is `pending_approval`.
    pub claim_pending: bool,
}

/// Approved leave that overlaps a record's shift, as the evaluation uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaveCover {
    /// Nothing is expected of the employee on this shift.
    pub full: bool,
    /// When the employee is expected in: the shift's start (a flexible shift's core start), or the end of the leave
    /// that covers it.
    pub in_ms: i64,
    /// When the employee may leave: the shift's end (a flexible shift's core end), or the start of the leave that
    /// covers it.
    pub out_ms: i64,
    /// How much of the scheduled span [start, end] the leave covers: a flexible shift's `hours` shrink by it.
    pub covered_ms: i64,
}

impl LeaveCover {
    /// The cover of `leave` (intervals `[from, to)` in Unix ms, any order, may overlap) on a shift scheduled as `span`;
    /// `None` when no leave overlaps its scheduled span. `hours_ms` is a flexible shift's time to work.
    pub fn of(leave: &[(i64, i64)], span: &ShiftSpan, hours_ms: Option<i64>) -> Option<LeaveCover> {
        let mut parts: Vec<(i64, i64)> =
            leave.iter().map(|&(a, b)| (a.max(span.start_ms), b.min(span.end_ms))).filter(|(a, b)| a < b).collect();
        if parts.is_empty() {
            return None;
        }
        parts.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(parts.len());
        for (a, b) in parts {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let covered_ms: i64 = merged.iter().map(|(a, b)| b - a).sum();
        let (mut in_ms, mut out_ms) = span.core.unwrap_or((span.start_ms, span.end_ms));
        // An instant is covered when a leave interval contains it ([from, to), and a leave ending at the shift's end
        // covers the end).
        let covering = |t: i64| merged.iter().find(|(a, b)| *a <= t && (t < *b || *b == span.end_ms)).copied();
        if let Some((_, to)) = covering(in_ms) {
            in_ms = to;
        }
        if let Some((from, _)) = covering(out_ms) {
            out_ms = from;
        }
        let whole = covered_ms >= span.end_ms - span.start_ms;
        let full = match hours_ms {
            Some(h) => whole || (in_ms >= out_ms && covered_ms >= h),
            None => whole || in_ms >= out_ms,
        };
        Some(LeaveCover { full, in_ms, out_ms, covered_ms })
    }
}

impl<'a> DayContext<'a> {
    /// The context of a record of `group` on a date the rules plan as `plan`, whose window is `span`.
    pub fn new(rules: &'a Rules, group: &Group, plan: DayPlan, span: ShiftSpan, closed: bool) -> DayContext<'a> {
        DayContext {
            shift: &rules.shifts[plan.shift],
            span,
            workday: plan.workday,
            verification: group.verification,
            dedupe_window_ms: rules.dedupe_window_ms,
            closed,
            leave: None,
            claim_pending: false,
        }
    }
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

/// One clock event: the time it counts at (the earlier punch of a clock-in pair, the later punch of a clock-out pair),
/// and its first and last punch (the same for a single punch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Event {
    at: i64,
    first: i64,
    last: i64,
}

impl Event {
    fn single(t: i64) -> Event {
        Event { at: t, first: t, last: t }
    }
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
            (cin.map(Event::single), cout.map(Event::single))
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
    let flex = ctx.shift.flex;
    let full_leave = ctx.leave.is_some_and(|l| l.full);
    if ctx.workday && !full_leave {
        // Late and early are measured against the shift (a flexible shift's core hours), moved by leave that covers
        // its start or end.
        let (in_ms, out_ms) = match ctx.leave {
            Some(l) => (l.in_ms, l.out_ms),
            None => span.core.unwrap_or((span.start_ms, span.end_ms)),
        };
        if let Some(i) = clock_in {
            if i.at > in_ms + ctx.shift.late_grace_ms {
                statuses.push(Status::Late);
                e.late_minutes = minutes_down(i.at - in_ms);
            }
        }
        if let Some(o) = clock_out {
            if o.at < out_ms - ctx.shift.early_grace_ms {
                statuses.push(Status::EarlyLeave);
                e.early_leave_minutes = minutes_up(out_ms - o.at);
            }
        }
        match (flex, clock_in, clock_out) {
            // A flexible shift: the hours worked against the hours to work (less leave); overtime is the time worked
            // beyond them once it reaches `overtime_after`.
            (Some(f), Some(i), Some(o)) => {
                let worked = o.at - i.at;
                let expected = (f.hours_ms - ctx.leave.map_or(0, |l| l.covered_ms)).max(0);
                if worked < expected {
                    statuses.push(Status::ShortHours);
                }
                let extra = worked - f.hours_ms;
                if extra >= ctx.shift.overtime_after_ms && extra >= MINUTE_MS {
                    statuses.push(Status::Overtime);
                    e.overtime_minutes = minutes_down(extra);
                }
            }
            (None, _, Some(o))
                if o.at >= span.end_ms + ctx.shift.overtime_after_ms && o.at - span.end_ms >= MINUTE_MS =>
            {
                statuses.push(Status::Overtime);
                e.overtime_minutes = minutes_down(o.at - span.end_ms);
            }
            _ => {}
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
    } else if !ctx.workday && !counting.is_empty() {
        statuses.push(Status::RestDayWork);
        e.overtime_minutes = e.worked_minutes;
        if e.overtime_minutes > 0 {
            statuses.push(Status::Overtime);
        }
    }
    if ctx.workday && ctx.leave.is_some() {
        statuses.push(Status::OnLeave);
    }
    if punches.iter().any(|p| p.fence.outside() && !p.weak) {
        statuses.push(Status::OutOfFence);
    }
    if punches.iter().any(|p| p.fence.outside() && p.weak) {
        statuses.push(Status::WeakLocation);
    }
    if ctx.claim_pending || punches.iter().any(|p| p.fence == Fence::Pending) {
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

/// Clock events under dual verification. A verified pair is a punch of each required method, at most the window apart
/// (inclusive); a `makeup` punch is a clock event on its own. The clock-in is the earliest punch of any verified pair (that
/// pair's earlier punch; its partner is the earliest punch of the other method that confirms it); the clock-out is the
/// latest punch of a verified pair whose two punches both follow the clock-in pair (that pair's later punch). Attempts
/// that fail raise `single_factor` (one method only) or `dual_timeout` (both methods, too far apart).
fn dual_events(counting: &[&DayPunch], v: Verification, statuses: &mut Vec<Status>) -> (Option<Event>, Option<Event>) {
    let [a, b] = v.methods;
    let times = |m: Method| -> Vec<i64> { counting.iter().filter(|p| p.method == m).map(|p| p.time_ms).collect() };
    let (ta, tb) = (times(a), times(b));
    let makeups = times(Method::Makeup);
    // The earliest punch of `other` (sorted) in [lo, hi].
    let first_in = |other: &[i64], lo: i64, hi: i64| -> Option<i64> {
        other.get(other.partition_point(|&x| x < lo)).copied().filter(|&x| x <= hi)
    };
    // The latest punch of `other` (sorted) in [lo, hi].
    let last_in = |other: &[i64], lo: i64, hi: i64| -> Option<i64> {
        other[..other.partition_point(|&x| x <= hi)].last().copied().filter(|&x| x >= lo)
    };

    // Clock-in: the earliest punch with a partner of the other method within the window. No punch before it is
    // verified, so its partner is at or after it: the earliest such partner.
    let verified_from = |mine: &[i64], other: &[i64]| -> Option<Event> {
        mine.iter().find_map(|&t| {
            first_in(other, t - v.window_ms, t + v.window_ms).map(|p| Event { at: t, first: t, last: t.max(p) })
        })
    };
    let earliest = |x: Option<Event>, y: Option<Event>| match (x, y) {
        (Some(x), Some(y)) => Some(if (y.at, y.last) < (x.at, x.last) { y } else { x }),
        (x, y) => x.or(y),
    };
    let paired_in = earliest(verified_from(&ta, &tb), verified_from(&tb, &ta));
    let clock_in = earliest(paired_in, makeups.first().copied().map(Event::single));

    // Clock-out: the latest punch, after the clock-in pair, with a partner of the other method within the window
    // before it and also after the clock-in pair (a partner after it would itself be a later candidate).
    let clock_out = clock_in.and_then(|cin| {
        let after = cin.last + 1;
        let latest_from = |mine: &[i64], other: &[i64]| -> Option<Event> {
            mine.iter().rev().take_while(|&&t| t >= after).find_map(|&t| {
                last_in(other, (t - v.window_ms).max(after), t).map(|p| Event { at: t, first: p, last: t })
            })
        };
        let candidates = [
            latest_from(&ta, &tb),
            latest_from(&tb, &ta),
            makeups.last().copied().filter(|&t| t >= after).map(Event::single),
        ];
        candidates.into_iter().flatten().max_by_key(|e| (e.at, std::cmp::Reverse(e.first)))
    });

    let attempt = |from: Option<i64>, to: Option<i64>| {
        let in_range = |t: &i64| from.is_none_or(|f| *t > f) && to.is_none_or(|u| *t < u);
        (ta.iter().any(in_range), tb.iter().any(in_range))
    };
    let failed = match (clock_in, clock_out) {
        (None, _) => Some(attempt(None, None)),
        (Some(cin), None) => Some(attempt(Some(cin.last), None)),
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
