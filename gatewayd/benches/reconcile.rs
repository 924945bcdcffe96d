//! Reconciling one month of punches for 10,000 employees, 4 punches a day (SPEC section 4; target: under 10 s on the
//! 2-core reference machine).
//!
//! The engine gets the month the way the stage gives it: day by day, in batches of [`BATCH`] punches as they come out
//! of the store, with a clock tick after each day so windows close and absent/missing statuses are decided. The punches
//! are a realistic mix: morning clock-in with jitter (some late), a lunch out/in pair, an evening clock-out (some early,
//! some overtime), re-sent duplicates within the dedupe window, card punches resolved through the roster, a night-shift
//! group across midnight, a dual-verification group, and a few absences.
//!
//! `cargo bench -p gatewayd --bench reconcile` prints a one-shot run first (records/s and the peak memory of the
//! process while the engine runs, from `VmHWM` after resetting it), then criterion's timing of the whole month.

// Benchmark set-up from constants: a failure is a bug in the benchmark, so `expect` is the right tool here.
#![allow(clippy::expect_used)]

mod site;

/// The daemon's allocator (see `src/main.rs`), so the figures are the daemon's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use drivers::sink::Subject;
use drivers::Method;
use gatewayd::punch::Punch;
use gatewayd::reconcile::changes::Change;
use gatewayd::reconcile::roster::Roster;
use gatewayd::reconcile::rules::Rules;
use gatewayd::reconcile::{Engine, EngineSettings, Input, Watermarks};
use jiff::civil::Date;
use jiff::tz::TimeZone;

const EMPLOYEES: usize = 10_000;
const DAYS: i64 = 30;
const BATCH: usize = 4096;

/// One punch before it is turned into a stored punch: compact, so the month's input does not dominate memory.
#[derive(Clone, Copy)]
struct Raw {
    employee: u32,
    method: Method,
    card: bool,
    time_ms: i64,
    seq: u64,
}

struct Month {
    tz: TimeZone,
    roster: Arc<Roster>,
    rules: Arc<Rules>,
    start: Date,
    /// Per day: punches in arrival order.
    days: Vec<Vec<Raw>>,
}

fn month() -> Month {
    let tz = TimeZone::get("Asia/Shanghai").expect("tz");
    let roster = Arc::new(site::roster(EMPLOYEES));
    let rules = Arc::new(Rules::parse(Path::new("bench-rules.toml"), site::RULES).expect("rules"));
    let start = Date::constant(2026, 11, 1);
    let mut rng = site::Rng(0x9E37_79B9_7F4A_7C15);
    let mut seq = 0u64;
    let mut days = Vec::new();
    for d in 0..DAYS {
        let date = start.checked_add(jiff::Span::new().days(d)).expect("date");
        let mut day = Vec::with_capacity(EMPLOYEES * 4);
        site::day(&tz, date, EMPLOYEES, &mut rng, |e, method, card, time_ms| {
            seq += 1;
            day.push(Raw { employee: e as u32, method, card, time_ms, seq });
        });
        // Devices deliver in time order, roughly.
        day.sort_by_key(|r| r.time_ms);
        days.push(day);
    }
    Month { tz, roster, rules, start, days }
}

fn to_punch(r: &Raw) -> Punch {
    let subject = if r.card {
        Subject::Credential(site::card(r.employee as usize))
    } else {
        Subject::Employee(format!("E{:05}", r.employee))
    };
    Punch {
        seq: r.seq,
        punch_id: format!("bench-gw:dev-{}:{}", r.employee % 64, r.seq),
        device_id: format!("dev-{}", r.employee % 64),
        driver: "bench".into(),
        device_seq: Some(r.seq),
        method: r.method,
        subject,
        device_time_ms: r.time_ms,
        received_time_ms: r.time_ms + 800,
        realtime: true,
        geo: None,
        score: None,
        attributes: Vec::new(),
    }
}

/// Reconciles the month; returns (record revisions, distinct records, work dates closed).
fn reconcile(m: &Month) -> (usize, usize, usize) {
    let settings = EngineSettings { gateway_id: "bench-gw".into(), tz: m.tz.clone() };
    let mut versions = BTreeMap::new();
    versions.insert(1, m.rules.clone());
    let mut engine = Engine::new(settings, Watermarks::default(), versions, 1, m.roster.clone());
    let first = m.tz.to_timestamp(m.start.at(0, 0, 0, 0)).expect("start").as_millisecond();
    engine.apply(Input::Tick(first));
    let (mut revisions, mut records, mut closed) = (0usize, 0usize, 0usize);
    let mut count = |changes: Vec<Change>| {
        for c in changes {
            match c {
                Change::Record(r) => {
                    revisions += 1;
                    if r.revision == 1 {
                        records += 1;
                    }
                }
                Change::DayClosed(_) => closed += 1,
                Change::Punch(_) => {}
            }
        }
    };
    for (d, day) in m.days.iter().enumerate() {
        for chunk in day.chunks(BATCH) {
            count(engine.apply_batch(chunk.iter().map(|r| Input::Punch(to_punch(r)))));
        }
        // The next day at noon: every window of this date has closed.
        let date = m.start.checked_add(jiff::Span::new().days(d as i64 + 1)).expect("date");
        count(engine.apply(Input::Tick(m.tz.to_timestamp(date.at(12, 0, 0, 0)).expect("tick").as_millisecond())));
    }
    (revisions, records, closed)
}

fn one_shot(m: &Month) {
    let punches: usize = m.days.iter().map(Vec::len).sum();
    let before = site::rss_kib("VmRSS:");
    // Reset the peak resident set size so VmHWM measures this run only (Linux: clear_refs 5).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let started = Instant::now();
    let (revisions, records, closed) = reconcile(m);
    let elapsed = started.elapsed();
    let peak = site::rss_kib("VmHWM:");
    println!("reconcile: {EMPLOYEES} employees, {DAYS} days, {punches} punches");
    println!(
        "reconcile: {records} records ({revisions} revisions, {closed} work dates closed) in {:.2} s = {:.0} records/s, {:.0} punches/s",
        elapsed.as_secs_f64(),
        records as f64 / elapsed.as_secs_f64(),
        punches as f64 / elapsed.as_secs_f64(),
    );
    println!(
        "reconcile: resident memory before {} MiB, peak during the run {} MiB{}",
        before / 1024,
        peak / 1024,
        if reset { "" } else { " (peak could not be reset: includes set-up)" }
    );
}

fn main() {
    let m = month();
    one_shot(&m);
    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(60))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    let records = (EMPLOYEES as u64) * (DAYS as u64);
    let mut group = c.benchmark_group("reconcile");
    group.throughput(Throughput::Elements(records));
    group.bench_function("month_10k_employees_4_punches_a_day", |b| b.iter(|| reconcile(&m)));
    group.finish();
    c.final_summary();
}
