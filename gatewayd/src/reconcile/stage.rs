//! The engine stage: feeds the pure [`Engine`] from the durable punch store and writes what it decides.
//!
//! # Loop
//! - When the store reports more durable punches (`Running.durable`), the stage reads them in arrival order after its
//!   `applied_seq`, at most [`BATCH`] at a time, and applies them as one engine batch. Under load, batches of punches
//!   start at most every [`COALESCE`] unless a full batch is waiting: each batch is a sled transaction and a change-log
//!   flush, and at 20,000 punches/s batches of a few dozen punches took a core's worth of time between them.
//! - Every [`TICK`] it gives the engine the time, so windows and work dates close on time in the site time zone (shift
//!   times are converted with jiff, so DST gaps and folds are handled where the engine computes windows).
//! - On SIGHUP (a configuration update) it re-reads the rules and roster files; a file with problems is reported and
//!   the rules or roster in force stay.
//! - Commands from the API ([`EngineHandle`]): a roster imported through the API, a manager's out-of-fence decision.
//! - Work dates older than the engine's horizon that punches reached ([`Engine::backfill_next`]): once every durable
//!   punch is applied, one such date per batch is reconciled from the store ([`backfill_one`]): its stored records and
//!   its punches, read through the store's time index, are handed to the engine, which revises the records and keeps
//!   nothing of the date.
//!
//! Each engine batch is committed with [`RecordStore::commit`]: changes, record revisions, `applied_seq` and watermarks in
//! one sled transaction, then the change log is flushed (which wakes the outbox). The engine work and the sled writes
//! run on the blocking pool so the async runtime stays responsive.
//!
//! # Restart
//! The engine's memory is rebuilt from the store: the stored rules version and roster in force, the latest revision of
//! every record in the horizon, decided out-of-fence approvals, then every stored punch up to `applied_seq` replayed as
//! [`Input::Restore`] in ONE batch (streamed from the store, not collected first), with the persisted `now`. That
//! re-derives exactly the stored content, so only what a crash lost (a batch whose transaction did not commit) comes out
//! as changes. Then the clock, the files' rules and roster, and the punches after `applied_seq` are applied as usual. A
//! failed commit or a panic in the engine drops the in-memory engine and rebuilds it this way.
//!
//! # Shutdown
//! The stage runs in the delivery stage of the shutdown tree: it is cancelled after the ingest writer has flushed, and
//! applies every punch that became durable before it returns.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drivers::PunchSink;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::engine::{Engine, EngineSettings, Input, StoredDay};
use super::records::RecordStore;
use crate::config::reload::Updates;
use crate::config::Config;
use crate::reconcile::approvals::{ApprovalError, Approvals, Decided, DecisionListener};
use crate::reconcile::changes::{Change, ChangeLog};
use crate::reconcile::leave::LeaveBook;
use crate::reconcile::metrics::events;
use crate::reconcile::roster::{Roster, RosterError, RosterStore};
use crate::reconcile::rules::{local_date, local_ms, Rules};
use crate::reconcile::schedule::Schedule;
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;

/// Most punches applied in one engine batch (one sled transaction).
pub const BATCH: usize = 4096;
/// Least time between the starts of two engine batches of punches, unless [`BATCH`] punches are waiting. A punch
/// reaches the engine at most this much later; a lone punch after a quiet spell goes at once.
pub const COALESCE: Duration = Duration::from_millis(50);
/// How often the engine is given the time, unless `GATEWAYD_ENGINE_TICK_MS` says otherwise (see [`tick_interval`]).
pub const TICK: Duration = Duration::from_secs(10);
/// The environment variable that sets the tick interval in milliseconds (100 to 10,000), for tests that wait for a shift
/// window to close. Not a configuration key: a site has no reason to change it.
pub const TICK_ENV: &str = "GATEWAYD_ENGINE_TICK_MS";

/// The tick interval: [`TICK`], or [`TICK_ENV`] when it is set to a number of milliseconds from 100 to 10,000.
pub fn tick_interval() -> Duration {
    std::env::var(TICK_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| (100..=10_000).contains(ms))
        .map_or(TICK, Duration::from_millis)
}
/// Commands waiting for the stage.
pub const COMMAND_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("engine: {0}")]
    Store(#[from] StoreError),
    #[error("engine: {0}")]
    Roster(#[from] RosterError),
    #[error("engine: {0}")]
    Approvals(#[from] ApprovalError),
    #[error("engine: the engine task failed: {0}")]
    Task(String),
}

/// A request to the engine stage.
#[derive(Debug)]
enum Command {
    Roster(Arc<Roster>),
    Fence {
        punch_id: String,
        approved: bool,
    },
    Schedule(Arc<Schedule>),
    /// The approved leave changed: read it again from the approvals.
    Leaves,
    /// The pending offline claims changed: read them again from the approvals.
    Claims,
}

/// How other parts of the daemon talk to the engine stage. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
}

impl EngineHandle {
    fn channel() -> (EngineHandle, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        (EngineHandle { tx }, rx)
    }

    /// A handle whose stage is not running (for tests of other parts): commands are dropped.
    pub fn detached() -> EngineHandle {
        EngineHandle::channel().0
    }

    /// The roster in sled was replaced (an API import): reconcile with it.
    pub async fn roster_replaced(&self, roster: Arc<Roster>) {
        let _ = self.tx.send(Command::Roster(roster)).await;
    }

    /// A manager decided (the decision is already durable in the approvals tree).
    pub async fn decided(&self, decision: Decided) {
        let command = match decision {
            Decided::Fence { punch_id, approved } => Command::Fence { punch_id, approved },
            Decided::Leave => Command::Leaves,
            Decided::Claims => Command::Claims,
        };
        let _ = self.tx.send(command).await;
    }

    /// A new schedule is in force (written by the API): reconcile with it.
    pub async fn schedule_replaced(&self, schedule: Arc<Schedule>) {
        let _ = self.tx.send(Command::Schedule(schedule)).await;
    }
}

/// What the rest of the daemon (the API) uses of attendance: the engine handle, records, roster and approvals.
#[derive(Clone, Debug)]
pub struct Attendance {
    pub engine: EngineHandle,
    pub records: RecordStore,
    pub roster: RosterStore,
    pub approvals: Approvals,
    /// Held while a schedule update is merged and written, so two updates cannot lose each other's rows.
    pub schedule_writes: Arc<tokio::sync::Mutex<()>>,
}

/// The stage, ready to run.
pub struct Stage {
    settings: EngineSettings,
    store: Store,
    log: ChangeLog,
    records: RecordStore,
    roster_store: RosterStore,
    approvals: Approvals,
    durable: watch::Receiver<u64>,
    config: Updates,
    commands: mpsc::Receiver<Command>,
    metrics: Metrics,
    applied: u64,
}

/// Opens the engine's trees and returns the handles and the stage to spawn.
pub fn open(
    config: &Config,
    store: &Store,
    log: &ChangeLog,
    sink: &PunchSink,
    metrics: &Metrics,
    durable: watch::Receiver<u64>,
    config_updates: Updates,
) -> Result<(Attendance, Stage), StageError> {
    let db = store.db();
    let records = RecordStore::open(db)?;
    let roster_store = RosterStore::open(db)?;
    let (engine, commands) = EngineHandle::channel();
    let listener: DecisionListener = {
        let engine = engine.clone();
        Arc::new(move |decision| {
            let engine = engine.clone();
            Box::pin(async move { engine.decided(decision).await })
        })
    };
    let approvals = Approvals::open(db, &config.gateway.id, sink.clone(), listener)?;
    let attendance = Attendance {
        engine,
        records: records.clone(),
        roster: roster_store.clone(),
        approvals: approvals.clone(),
        schedule_writes: Arc::default(),
    };
    let stage = Stage {
        settings: EngineSettings { gateway_id: config.gateway.id.clone(), tz: config.timezone() },
        store: store.clone(),
        log: log.clone(),
        records,
        roster_store,
        approvals,
        durable,
        config: config_updates,
        commands,
        metrics: metrics.clone(),
        applied: 0,
    };
    Ok((attendance, stage))
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The rules text in force for a configuration ("" when there is no rules file), or the problems. The file is the one
/// [`crate::reconcile::rules::file_in_force`] names (what the API wrote wins over `[rules].file`).
fn read_rules(config: &Config) -> Result<(Rules, String), Vec<String>> {
    match crate::reconcile::rules::file_in_force(config) {
        None => Ok((Rules::none(), String::new())),
        Some(f) => Rules::load(&f).map_err(|ps| ps.iter().map(ToString::to_string).collect()),
    }
}

/// The schedule in force for a configuration (empty when there is no schedule file), or the problems. Shift ids are
/// checked against the rules file in force when it reads.
fn read_schedule(config: &Config, rules: Option<&Rules>) -> Result<Schedule, Vec<String>> {
    let Some(f) = crate::reconcile::schedule::file_in_force(config) else { return Ok(Schedule::default()) };
    Schedule::load(&f, rules).map_err(|ps| ps.iter().map(ToString::to_string).collect())
}

/// The rules in force, as the engine stored them (for stages that must respect its horizon, such as retention).
pub fn stored_rules(records: &RecordStore) -> Result<Rules, StoreError> {
    let version = records.current_rules()?;
    Ok(records.rules_versions()?.get(&version).map_or_else(Rules::none, |text| compile(version, text)))
}

fn compile(version: u32, text: &str) -> Rules {
    if text.is_empty() {
        return Rules::none();
    }
    match Rules::parse(&PathBuf::from(format!("rules version {version}")), text) {
        Ok(r) => r,
        Err(problems) => {
            // It was valid when it was put in force; a newer build may be stricter.
            for p in &problems {
                tracing::error!(version, problem = %p, "stored rules no longer validate; using no rules for them");
            }
            Rules::none()
        }
    }
}

/// What one engine batch did: its changes, the last punch applied, how many punches, and the date beyond the horizon it
/// reconciled from the store with the number of its record revisions.
type Stepped = (Vec<Change>, u64, usize, Option<(Date, usize)>);

impl Stage {
    /// Runs until cancelled. Errors are logged and the engine is rebuilt from the store after a pause.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut engine: Option<Engine> = None;
        let mut tick = tokio::time::interval(tick_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        let mut last_punches: Option<tokio::time::Instant> = None;
        loop {
            if engine.is_none() {
                match self.recover().await {
                    Ok(e) => {
                        failures = 0;
                        engine = Some(e);
                    }
                    Err(e) => {
                        failures += 1;
                        events::engine_failed(&self.metrics, &e);
                        let pause = Duration::from_secs(u64::from(failures.min(6)) * 5);
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => continue,
                            _ = cancel.cancelled() => return,
                        }
                    }
                }
            }
            // Apply every durable punch first, in batches at most every COALESCE unless a full batch is waiting.
            let waiting = self.durable.borrow().saturating_sub(self.applied);
            if waiting > 0 {
                let next = last_punches.map(|t| t + COALESCE);
                if let Some(at) = next.filter(|at| waiting < BATCH as u64 && *at > tokio::time::Instant::now()) {
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                last_punches = Some(tokio::time::Instant::now());
                engine = self.step(engine.take(), Vec::new(), true).await;
                continue;
            }
            // Then the dates older than the horizon that punches reached, one per batch.
            if engine.as_ref().is_some_and(|e| e.backfill_next().is_some()) {
                if cancel.is_cancelled() {
                    break;
                }
                engine = self.step(engine.take(), Vec::new(), false).await;
                continue;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                changed = self.durable.changed() => {
                    if changed.is_err() {
                        // The ingest writer is gone: nothing more will become durable.
                        cancel.cancelled().await;
                        break;
                    }
                }
                Some(cmd) = self.commands.recv() => {
                    let input = match cmd {
                        Command::Roster(r) => Some(Input::Roster(r)),
                        Command::Fence { punch_id, approved } => Some(Input::FenceDecision { punch_id, approved }),
                        Command::Schedule(s) => Some(Input::Schedule(s)),
                        Command::Leaves => match self.approvals.leaves() {
                            Ok(leaves) => Some(Input::Leaves(Arc::new(LeaveBook::new(leaves)))),
                            Err(e) => {
                                events::engine_failed(&self.metrics, &StageError::Approvals(e));
                                None
                            }
                        },
                        Command::Claims => match self.approvals.pending_claims() {
                            Ok(claims) => Some(Input::Claims(Arc::new(claims))),
                            Err(e) => {
                                events::engine_failed(&self.metrics, &StageError::Approvals(e));
                                None
                            }
                        },
                    };
                    if let Some(input) = input {
                        engine = self.step(engine.take(), vec![input], false).await;
                    }
                }
                changed = self.config.changed() => {
                    if changed.is_ok() {
                        let config = self.config.latest();
                        let inputs = self.reload(&config, engine.as_ref());
                        if !inputs.is_empty() {
                            engine = self.step(engine.take(), inputs, false).await;
                        }
                        // The roster and rules files are read and stored: a failed step rebuilds from the store.
                        self.config.applied(&config);
                    }
                }
                _ = tick.tick() => {
                    engine = self.step(engine.take(), vec![Input::Tick(now_ms())], false).await;
                }
            }
        }
        // Stopping: the ingest writer has flushed; apply what it made durable.
        while engine.is_some() && self.applied < *self.durable.borrow() {
            engine = self.step(engine.take(), Vec::new(), true).await;
        }
        tracing::debug!("engine stage stopped");
    }

    /// Rules and roster from the files in force for `config`, as inputs for the engine (only what changed).
    fn reload(&self, config: &Config, engine: Option<&Engine>) -> Vec<Input> {
        let mut inputs = Vec::new();
        // The rules file as read now: the schedule's shift ids are checked against it too.
        let file_rules = match read_rules(config) {
            Ok((rules, text)) => {
                let rules = Arc::new(rules);
                match self.records.register_rules(&text) {
                    Ok((version, _)) => {
                        if engine.is_none_or(|e| e.rules_version() != version) {
                            events::rules_in_force(&self.metrics, version);
                            inputs.push(Input::Rules { version, rules: rules.clone() });
                        }
                    }
                    Err(e) => events::engine_failed(&self.metrics, &StageError::Store(e)),
                }
                Some(rules)
            }
            Err(problems) => {
                events::rules_rejected(&problems);
                None
            }
        };
        if let Some(f) = crate::reconcile::roster::file_in_force(config) {
            match Roster::load(&f) {
                Ok(roster) => match self.roster_store.replace(&roster) {
                    Ok(_) => {
                        events::roster_in_force(roster.len());
                        inputs.push(Input::Roster(Arc::new(roster)));
                    }
                    Err(e) => events::engine_failed(&self.metrics, &StageError::Roster(e)),
                },
                Err(problems) => events::roster_rejected(&problems.iter().map(ToString::to_string).collect::<Vec<_>>()),
            }
        }
        match read_schedule(config, file_rules.as_deref()) {
            Ok(schedule) => inputs.push(Input::Schedule(Arc::new(schedule))),
            Err(problems) => events::schedule_rejected(&problems),
        }
        inputs
    }

    /// Rebuilds the engine from the store (see the module documentation).
    async fn recover(&mut self) -> Result<Engine, StageError> {
        let started = std::time::Instant::now();
        let config = self.config.current();
        // Make-up punches approved but not stored (a crash in between) are submitted again.
        let resubmitted = self.approvals.resubmit_approved(&self.store).await?;
        if resubmitted > 0 {
            tracing::info!(count = resubmitted, "make-up punches submitted again after a restart");
        }
        let store = self.store.clone();
        let records = self.records.clone();
        let roster_store = self.roster_store.clone();
        let approvals = self.approvals.clone();
        let settings = self.settings.clone();
        let log = self.log.clone();
        let job = move || -> Result<(Engine, u64, Vec<Change>, usize), StageError> {
            // The rules versions and roster that were in force.
            let texts = records.rules_versions()?;
            let mut current = records.current_rules()?;
            if current == 0 || !texts.contains_key(&current) {
                let text = match read_rules(&config) {
                    Ok((_, text)) => text,
                    Err(_) => String::new(),
                };
                current = records.register_rules(&text)?.0;
            }
            let texts = records.rules_versions()?;
            let marks = records.watermarks()?;
            let mut versions = BTreeMap::new();
            for v in marks.day_versions.values().copied().chain([current]) {
                if let Some(text) = texts.get(&v) {
                    versions.entry(v).or_insert_with(|| Arc::new(compile(v, text)));
                }
            }
            let mut roster = roster_store.load()?;
            if roster.is_empty() {
                // First start: import the roster file before anything is reconciled.
                if let Some(f) = crate::reconcile::roster::file_in_force(&config) {
                    if let Ok(r) = Roster::load(&f) {
                        roster_store.replace(&r)?;
                        roster = r;
                    }
                }
            }
            let horizon_days = versions.get(&current).map(|r| r.reconcile_days).unwrap_or(31);
            let mut engine = Engine::new(settings.clone(), marks.clone(), versions, current, Arc::new(roster));
            let applied = records.applied_seq()?;
            // The horizon the engine keeps, with margin for windows that reach into the previous days.
            let from_date = if marks.now_ms > 0 {
                let today = local_date(marks.now_ms, &settings.tz);
                today.checked_sub(jiff::Span::new().days(i64::from(horizon_days) + 4)).unwrap_or(today)
            } else {
                jiff::civil::Date::MIN
            };
            for r in records.between(from_date, jiff::civil::Date::MAX) {
                engine.restore_record(&r?);
            }
            for id in approvals.fence_punches()? {
                engine.mark_requested(&id);
            }
            let mut inputs: Vec<Input> = approvals
                .fence_decisions()?
                .into_iter()
                .map(|(punch_id, approved)| Input::FenceDecision { punch_id, approved })
                .collect();
            inputs.push(Input::Leaves(Arc::new(LeaveBook::new(approvals.leaves()?))));
            inputs.push(Input::Claims(Arc::new(approvals.pending_claims()?)));
            // The schedule in force now stands for the one the stored records were made with (a schedule changed while
            // the daemon was stopped revises them, as a change while it runs does).
            let file_rules = read_rules(&config).ok().map(|(r, _)| r);
            if let Ok(schedule) = read_schedule(&config, file_rules.as_ref()) {
                inputs.push(Input::Schedule(Arc::new(schedule)));
            }
            let from_ms = local_ms(from_date, 0, &settings.tz);
            let mut replayed = 0usize;
            let mut failed: Option<StoreError> = None;
            // Streamed from the store into the one batch: a month of a large site is hundreds of thousands of punches,
            // and holding them all as inputs first made a restart's memory peak several times the running daemon's.
            let restores = store
                .by_time(from_ms, i64::MAX)
                .map_while(|p| p.map_err(|e| failed = Some(e)).ok())
                .filter(|p| p.seq <= applied)
                .inspect(|_| replayed += 1)
                .map(Input::Restore);
            let changes = engine.apply_batch(inputs.into_iter().chain(restores));
            if let Some(e) = failed {
                // The engine restored only part of the store: it is dropped, and the next attempt starts over.
                return Err(e.into());
            }
            if !changes.is_empty() {
                records.commit(&log, &changes, applied, engine.watermarks())?;
            }
            Ok((engine, applied, changes, replayed))
        };
        let (engine, applied, changes, replayed) =
            tokio::task::spawn_blocking(job).await.map_err(|e| StageError::Task(e.to_string()))??;
        self.applied = applied;
        if !changes.is_empty() {
            self.log.flush().await?;
        }
        let revisions = changes.iter().filter(|c| matches!(c, Change::Record(_))).count();
        events::engine_recovered(&self.metrics, replayed, revisions, started.elapsed());
        // Then the present: the clock, the files' rules and roster.
        let config = self.config.latest();
        let mut inputs = vec![Input::Tick(now_ms())];
        inputs.extend(self.reload(&config, Some(&engine)));
        let engine = self.step(Some(engine), inputs, false).await;
        let engine =
            engine.ok_or_else(|| StageError::Task("the first engine batch after the restart failed".into()))?;
        self.config.applied(&config);
        Ok(engine)
    }

    /// One engine batch: `inputs`, plus the next durable punches when `punches` is set. Returns the engine, or `None`
    /// when the batch failed (it is then rebuilt from the store).
    async fn step(&mut self, engine: Option<Engine>, inputs: Vec<Input>, punches: bool) -> Option<Engine> {
        let mut engine = engine?;
        let started = std::time::Instant::now();
        let store = self.store.clone();
        let records = self.records.clone();
        let log = self.log.clone();
        let applied = self.applied;
        let durable = *self.durable.borrow();
        let approvals = self.approvals.clone();
        let job = move || {
            let result = (|| -> Result<Stepped, StageError> {
                let mut inputs = inputs;
                let mut last = applied;
                let mut n = 0;
                if punches {
                    for p in store.after(applied).take(BATCH) {
                        let p = p?;
                        if p.seq > durable {
                            break;
                        }
                        last = p.seq;
                        n += 1;
                        inputs.push(Input::Punch(p));
                    }
                    if n == 0 {
                        // Nothing stored between what was applied and what is durable.
                        last = durable.max(applied);
                    }
                }
                let mut changes = engine.apply_batch(inputs);
                // Caught up with the store: one date beyond the horizon.
                let mut backfilled = None;
                if last >= durable && engine.backfill_next().is_some() {
                    let decisions = approvals.fence_decisions()?;
                    if let Some((date, more)) = backfill_one(&mut engine, &store, &records, decisions, last)? {
                        backfilled = Some((date, more.iter().filter(|c| matches!(c, Change::Record(_))).count()));
                        changes.extend(more);
                        commit_backfill(&records, &log, &changes, date, last, engine.watermarks())?;
                    }
                }
                if backfilled.is_none() && (!changes.is_empty() || last != applied) {
                    records.commit(&log, &changes, last, engine.watermarks())?;
                }
                Ok((changes, last, n, backfilled))
            })();
            (engine, result)
        };
        let (engine, result) = match tokio::task::spawn_blocking(job).await {
            Ok(done) => done,
            Err(e) => {
                events::engine_failed(&self.metrics, &StageError::Task(e.to_string()));
                return None;
            }
        };
        match result {
            Ok((changes, last, n, backfilled)) => {
                self.applied = last;
                if let Some((date, revisions)) = backfilled {
                    events::day_backfilled(&self.metrics, date, revisions, &engine);
                }
                if !changes.is_empty() {
                    if let Err(e) = self.log.flush().await {
                        events::engine_failed(&self.metrics, &StageError::Store(e));
                        return None;
                    }
                }
                let mut engine = engine;
                let now = now_ms();
                for req in engine.take_fence_requests() {
                    if let Err(e) = self.approvals.ensure_fence(&req, now) {
                        events::engine_failed(&self.metrics, &StageError::Approvals(e));
                    }
                }
                events::engine_batch(
                    &self.metrics,
                    n,
                    &changes,
                    &engine,
                    durable.saturating_sub(last),
                    started.elapsed(),
                );
                Some(engine)
            }
            Err(e) => {
                events::engine_failed(&self.metrics, &e);
                None
            }
        }
    }
}

/// Reconciles the first date of the engine's backfill set from the store: the date's stored records and the punches in
/// its windows ([`Engine::stored_day_range`], through the store's time index, only those the engine has applied:
/// sequence numbers up to `applied`) are handed to [`Engine::reconcile_stored_day`]. The punches are streamed from the
/// store into the engine, so memory holds one date's punches at most (as the engine's compact per-date list). `decisions`
/// are the managers' out-of-fence decisions. Returns the date and its changes, or `None` when no date waits.
pub fn backfill_one(
    engine: &mut Engine,
    store: &Store,
    records: &RecordStore,
    decisions: Vec<(String, bool)>,
    applied: u64,
) -> Result<Option<(Date, Vec<Change>)>, StageError> {
    let Some(date) = engine.backfill_next() else { return Ok(None) };
    // Retention removed the date's records and punches: a late punch is forwarded, the date is not reconciled again.
    if records.expired_before()?.is_some_and(|before| date < before) {
        engine.forget_backfill(date);
        return Ok(Some((date, Vec::new())));
    }
    let stored = records.between(date, date).collect::<Result<Vec<_>, _>>()?;
    let version = engine.stored_day_version(date, &stored);
    let rules = if engine.has_rules(version) {
        None
    } else {
        records.rules_versions()?.get(&version).map(|text| Arc::new(compile(version, text)))
    };
    let (from_ms, to_ms) = engine.stored_day_range(date, version, rules.as_deref());
    let mut failed: Option<StoreError> = None;
    let punches =
        store.by_time(from_ms, to_ms).map_while(|p| p.map_err(|e| failed = Some(e)).ok()).filter(|p| p.seq <= applied);
    let day = StoredDay { date, records: stored, version, rules, decisions };
    let changes = engine.reconcile_stored_day(day, punches);
    if let Some(e) = failed {
        // The date was reconciled from part of its punches: the engine is dropped and rebuilt from the store, where
        // the date is still waiting.
        return Err(e.into());
    }
    Ok(Some((date, changes)))
}

/// Most changes written in one sled transaction when a date reconciled from the store is committed: a whole date of a
/// 10,000-employee site in one transaction took about 100 MiB more memory than slices of this size (docs/benchmarks.md,
/// the backfill benchmark).
pub const BACKFILL_SLICE: usize = 1024;

/// Commits `changes` (a batch's own changes, then those of `date`, reconciled from the store) in transactions of at most
/// [`BACKFILL_SLICE`] changes. The last transaction carries `marks` (the date off the backfill
/// set) and at least two changes when there are two; the ones before it keep the date on the set, so after a crash
/// between them the date is reconciled again: the records already written compare equal, and the rest (with at least
/// one record, and the `DayClosed` that follows the date's records) come out.
pub fn commit_backfill(
    records: &RecordStore,
    log: &ChangeLog,
    changes: &[Change],
    date: Date,
    applied: u64,
    marks: &super::Watermarks,
) -> Result<(), StageError> {
    let mut waiting = marks.clone();
    waiting.backfill.insert(date);
    // The last slice is the largest; the others, from the start, are full.
    let last_start = changes.len().saturating_sub(BACKFILL_SLICE.max(2));
    let (head, tail) = changes.split_at(last_start);
    for part in head.chunks(BACKFILL_SLICE) {
        records.commit(log, part, applied, &waiting)?;
    }
    records.commit(log, tail, applied, marks)?;
    Ok(())
}

/// The site time zone of a configuration (for callers that build an engine directly, such as the benchmark).
pub fn settings_for(config: &Config) -> EngineSettings {
    EngineSettings { gateway_id: config.gateway.id.clone(), tz: config.timezone() }
}

/// Builds settings for a time zone name (UTC if unknown).
pub fn settings(gateway_id: &str, tz: &str) -> EngineSettings {
    EngineSettings { gateway_id: gateway_id.to_owned(), tz: TimeZone::get(tz).unwrap_or(TimeZone::UTC) }
}

#[cfg(test)]
mod tests;
