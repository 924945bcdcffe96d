//! Reconciling 60 days older than the engine's horizon from the store, for 10,000 employees (SPEC section 4: punches
//! older than `reconcile_days` are reconciled again from the store; memory must stay bounded).
//!
//! The set-up writes 60 days of punches (10,000 employees, 4 a day, the month benchmark's mix of day, night and
//! dual-verification groups and card credentials) into a real punch store, as a terminal's backlog would be stored.
//! Then the measured part does what the engine stage does with it:
//! 1. the punches are read back in arrival order in batches of 4,096 and applied to an engine whose clock is 35 days
//!    after the last of them (so every one is older than the 31-day horizon): each is forwarded, and its work date goes
//!    on the backfill set; each batch's changes are committed to the record store and change log as the stage does;
//! 2. every date on the backfill set is reconciled from the store ([`gatewayd::reconcile::stage::backfill_one`]: its
//!    stored records, its punches through the store's time index, into the engine) and committed as the stage does
//!    ([`gatewayd::reconcile::stage::commit_backfill`]: slices of 1,024 changes), one date at a time.
//!
//! No record of those dates is stored yet (a terminal's history loaded into a gateway installed after it), so every
//! employee with punches on a date gets a new record: 588,000 records (2% of the days are absences, which a backfill
//! does not make). It prints the time of each phase and the peak resident memory of the process during each (from
//! `VmHWM` after resetting it), with the resident memory before.
//!
//! `cargo bench -p gatewayd --bench backfill` (`BACKFILL_DAYS` and `BACKFILL_EMPLOYEES` change the size, to show that
//! the memory does not grow with the number of days; `BACKFILL_COMMIT=0` leaves out the record store's writes in the
//! second phase, to tell the engine's and the store reads' memory from sled's).

// Benchmark set-up from constants: a failure is a bug in the benchmark, so `expect` is the right tool here.
#![allow(clippy::expect_used)]

mod site;

/// The daemon's allocator (see `src/main.rs`), so the figures are the daemon's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use drivers::sink::Subject;
use drivers::DevicePunch;
use gatewayd::reconcile::changes::{Change, ChangeLog};
use gatewayd::reconcile::rules::Rules;
use gatewayd::reconcile::stage::{backfill_one, commit_backfill};
use gatewayd::reconcile::{Engine, EngineSettings, Input, RecordStore, Watermarks};
use gatewayd::store::Store;
use jiff::civil::Date;
use jiff::tz::TimeZone;

const BATCH: usize = 4096;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Writes `days` days of punches of `employees` employees from `start` into the store (durable and indexed); returns
/// how many.
fn fill(store: &Store, tz: &TimeZone, start: Date, days: i64, employees: usize) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut rng = site::Rng(0x9E37_79B9_7F4A_7C15);
    let mut next_seq = store.last_seq().expect("last seq").unwrap_or(0) + 1;
    let mut device_seq = vec![0u64; 64];
    let mut total = 0u64;
    for d in 0..days {
        let date = start.checked_add(jiff::Span::new().days(d)).expect("date");
        let mut day: Vec<DevicePunch> = Vec::with_capacity(employees * 4);
        site::day(tz, date, employees, &mut rng, |e, method, card, time_ms| {
            let device = e % 64;
            device_seq[device] += 1;
            day.push(DevicePunch {
                device_id: format!("dev-{device}"),
                device_seq: Some(device_seq[device]),
                method,
                subject: if card { Subject::Credential(site::card(e)) } else { Subject::Employee(format!("E{e:05}")) },
                device_time_ms: time_ms,
                // Delivered weeks late from a terminal's backlog.
                received_time_ms: time_ms + 40 * 86_400_000,
                realtime: false,
                geo: None,
                score: None,
                attributes: Vec::new(),
            });
        });
        day.sort_by_key(|p| p.device_time_ms);
        for chunk in day.chunks(BATCH) {
            let refs: Vec<(&str, &DevicePunch)> = chunk.iter().map(|p| ("bench", p)).collect();
            store.insert_batch("bench-gw", &refs, &mut next_seq).expect("insert");
            rt.block_on(store.flush()).expect("flush");
            while store.index_pending(1 << 16).expect("index") > 0 {}
            total += chunk.len() as u64;
        }
    }
    total
}

fn main() {
    let days = env_or("BACKFILL_DAYS", 60) as i64;
    let employees = env_or("BACKFILL_EMPLOYEES", 10_000);
    let tz = TimeZone::get("Asia/Shanghai").expect("tz");
    let start = Date::constant(2026, 9, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    // The daemon's default sled cache ([store] cache_mb = 16).
    let store = Store::open(dir.path(), 16).expect("store");
    let log = ChangeLog::open(store.db()).expect("change log");
    let records = RecordStore::open(store.db()).expect("records");
    let started = Instant::now();
    let punches = fill(&store, &tz, start, days, employees);
    println!(
        "backfill: stored {punches} punches ({days} days, {employees} employees) in {:.1} s, {} MB on disk",
        started.elapsed().as_secs_f64(),
        store.size_on_disk() / 1_000_000
    );

    let roster = Arc::new(site::roster(employees));
    let rules = Arc::new(Rules::parse(Path::new("bench-rules.toml"), site::RULES).expect("rules"));
    // The engine's clock is 35 days after the last of those days (its first day, today): every stored punch is older
    // than the horizon, and nothing of the horizon is in memory.
    let now_date = start.checked_add(jiff::Span::new().days(days + 35)).expect("now");
    let now = tz.to_timestamp(now_date.at(12, 0, 0, 0)).expect("now").as_millisecond();
    let marks = Watermarks {
        now_ms: now,
        epoch: Some(now_date),
        closed_through: now_date.yesterday().ok(),
        ..Watermarks::default()
    };
    let settings = EngineSettings { gateway_id: "bench-gw".into(), tz: tz.clone() };
    let mut versions = BTreeMap::new();
    versions.insert(1, rules);
    let mut engine = Engine::new(settings, marks, versions, 1, roster);
    records.register_rules(site::RULES).expect("rules version");

    let commit_dates = env_or("BACKFILL_COMMIT", 1) != 0;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let before = site::rss_kib("VmRSS:");
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    // 1. The punches in arrival order, as the stage reads them after its applied sequence number.
    let started = Instant::now();
    let mut applied = 0u64;
    let mut forwarded = 0usize;
    loop {
        let batch: Vec<_> = store.after(applied).take(BATCH).map(|p| p.expect("read")).collect();
        let Some(last) = batch.last().map(|p| p.seq) else { break };
        let changes = engine.apply_batch(batch.into_iter().map(Input::Punch));
        forwarded += changes.iter().filter(|c| matches!(c, Change::Punch(_))).count();
        records.commit(&log, &changes, last, engine.watermarks()).expect("commit");
        rt.block_on(log.flush()).expect("flush");
        applied = last;
    }
    let feed = started.elapsed();
    let waiting = engine.watermarks().backfill.len();
    let peak_feed = site::rss_kib("VmHWM:");
    let before_dates = site::rss_kib("VmRSS:");
    std::fs::write("/proc/self/clear_refs", "5").ok();
    // 2. Every date on the backfill set, from the store, one per commit.
    let started = Instant::now();
    let (mut dates, mut revisions) = (0usize, 0usize);
    while let Some((date, changes)) =
        backfill_one(&mut engine, &store, &records, Vec::new(), applied).expect("backfill")
    {
        dates += 1;
        revisions += changes.iter().filter(|c| matches!(c, Change::Record(_))).count();
        if commit_dates {
            commit_backfill(&records, &log, &changes, date, applied, engine.watermarks()).expect("commit");
            rt.block_on(log.flush()).expect("flush");
        }
    }
    let backfill = started.elapsed();
    let peak = site::rss_kib("VmHWM:");
    println!(
        "backfill: {forwarded} punches applied and forwarded in {:.1} s ({waiting} dates waiting), peak RSS {} MiB",
        feed.as_secs_f64(),
        peak_feed / 1024
    );
    println!(
        "backfill: {dates} dates reconciled from the store in {:.1} s ({:.2} s a date), {revisions} record revisions, \
         {} records stored{}, resident memory before {} MiB, peak {} MiB",
        backfill.as_secs_f64(),
        backfill.as_secs_f64() / dates.max(1) as f64,
        records.len(),
        if commit_dates { "" } else { " (BACKFILL_COMMIT=0: not written)" },
        before_dates / 1024,
        peak / 1024,
    );
    println!(
        "backfill: resident memory before both phases {} MiB{}; the engine keeps {} punches and {} records afterwards",
        before / 1024,
        if reset { "" } else { " (peaks could not be reset: they include set-up)" },
        engine.punches_kept(),
        engine.records_tracked()
    );
}
