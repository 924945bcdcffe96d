//! The disk budget: how much disk the gateway's database may use (the main database and every punch partition).
//!
//! Undelivered data is never dropped to make room. Instead, a monitor measures the database on disk once a second and
//! publishes a [`BudgetState`] through a shared [`DiskBudget`] handle (an atomic, no lock):
//! - `Ok` below `disk_alarm_percent` of `disk_budget_mb`;
//! - `Near` from there: an alarm (metric `gatewayd_disk_budget_state` = 1 and a WARN log) so an operator can act;
//! - `Full` at the budget: the ingest writer refuses NEW punches with `store_full` (devices keep them and retry; a
//!   re-sent punch that is already stored is still answered `stored`), an ERROR log says so. Delivery goes on, and
//!   delivered data past `retention_days` is removed, and the punch partitions it empties are deleted with their
//!   files (crate::app::retention), so the state returns to `Ok` once there is room again, without a restart.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::metrics::StoreMetrics;
use crate::telemetry::{gauge_value, Metrics};

/// How often the monitor measures the database.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BudgetState {
    Ok = 0,
    Near = 1,
    Full = 2,
}

impl BudgetState {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetState::Ok => "ok",
            BudgetState::Near => "near",
            BudgetState::Full => "full",
        }
    }
}

/// The shared budget state. Cheap to clone; starts `Ok` (unlimited until a monitor says otherwise).
#[derive(Clone, Debug, Default)]
pub struct DiskBudget(Arc<AtomicU8>);

impl DiskBudget {
    pub fn new() -> DiskBudget {
        DiskBudget::default()
    }

    pub fn state(&self) -> BudgetState {
        match self.0.load(Ordering::Relaxed) {
            2 => BudgetState::Full,
            1 => BudgetState::Near,
            _ => BudgetState::Ok,
        }
    }

    /// True when new punches must be refused.
    pub fn is_full(&self) -> bool {
        self.state() == BudgetState::Full
    }

    /// Sets the state (the monitor does this; tests may too).
    pub fn set(&self, state: BudgetState) {
        self.0.store(state as u8, Ordering::Relaxed);
    }
}

/// The state for `used` bytes against a budget of `limit` bytes with the alarm at `alarm_percent`.
pub fn evaluate(used: u64, limit: u64, alarm_percent: u8) -> BudgetState {
    if limit == 0 {
        return BudgetState::Ok;
    }
    if used >= limit {
        BudgetState::Full
    } else if u128::from(used) * 100 >= u128::from(limit) * u128::from(alarm_percent) {
        BudgetState::Near
    } else {
        BudgetState::Ok
    }
}

/// Measures the database every [`CHECK_EVERY`] against the current configuration's budget until cancelled.
pub async fn monitor(
    store: crate::store::Store,
    mut config: watch::Receiver<Arc<Config>>,
    budget: DiskBudget,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let (limit, alarm) = {
            let c = config.borrow_and_update();
            (c.store.disk_budget_mb.saturating_mul(1024 * 1024), c.store.disk_alarm_percent)
        };
        let s = store.clone();
        let Ok(used) = tokio::task::spawn_blocking(move || s.size_on_disk()).await else { continue };
        let state = evaluate(used, limit, alarm);
        let before = budget.state();
        budget.set(state);
        disk_budget_event(&metrics, before, state, used, limit);
    }
}

/// The budget was measured (an internal event: it sets the gauges, and logs when the state changed).
fn disk_budget_event(m: &Metrics, before: BudgetState, now: BudgetState, used: u64, limit: u64) {
    if let Some(s) = m.get::<StoreMetrics>() {
        s.disk_budget_state.set(now as i64);
        s.disk_budget_bytes.set(gauge_value(limit));
        s.disk_used_bytes.set(gauge_value(used));
    }
    if before == now {
        return;
    }
    match now {
        BudgetState::Full => tracing::error!(used, limit,
            "disk budget reached: new punches are refused (devices keep them); deliver the backlog or raise store.disk_budget_mb"),
        BudgetState::Near => tracing::warn!(used, limit, "disk usage is near the budget"),
        BudgetState::Ok => tracing::info!(used, limit, "disk usage is below the budget alarm again"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drivers::sink::{Outcome, Rejection, Subject};
    use drivers::{DevicePunch, Method, PunchSink};

    fn punch(seq: u64) -> DevicePunch {
        DevicePunch {
            device_id: "face-1".into(),
            device_seq: Some(seq),
            method: Method::Face,
            subject: Subject::Employee("E1".into()),
            device_time_ms: 1_795_276_800_000,
            received_time_ms: 1_795_276_800_000,
            realtime: true,
            geo: None,
            score: None,
            attributes: vec![],
        }
    }

    #[tokio::test]
    async fn a_full_budget_refuses_new_punches_but_still_confirms_stored_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), 8).unwrap();
        let (sink, rx) = PunchSink::channel(8, drivers::telemetry::DriverMetrics::default());
        let sink = sink.for_driver("mqtt");
        let budget = DiskBudget::new();
        let settings = crate::ingest::IngestSettings { gateway_id: "gw".into(), max_batch: 16 };
        let cancel = CancellationToken::new();
        let writer = tokio::spawn(crate::ingest::run_writer_with_budget(
            store.clone(),
            settings,
            rx,
            watch::channel(0).0,
            crate::app::metrics(),
            cancel.clone(),
            budget.clone(),
        ));
        assert!(matches!(sink.submit(punch(1)).await, Outcome::Stored { duplicate: false, .. }));
        budget.set(BudgetState::Full);
        assert_eq!(sink.submit(punch(2)).await, Outcome::Rejected(Rejection::StoreFull));
        assert!(matches!(sink.submit(punch(1)).await, Outcome::Stored { duplicate: true, .. }));
        budget.set(BudgetState::Near);
        assert!(matches!(sink.submit(punch(2)).await, Outcome::Stored { duplicate: false, .. }));
        assert_eq!(store.count().unwrap(), 2);
        cancel.cancel();
        writer.await.unwrap();
    }

    #[test]
    fn states_by_usage() {
        assert_eq!(evaluate(10, 0, 90), BudgetState::Ok);
        assert_eq!(evaluate(89, 100, 90), BudgetState::Ok);
        assert_eq!(evaluate(90, 100, 90), BudgetState::Near);
        assert_eq!(evaluate(100, 100, 90), BudgetState::Full);
        assert_eq!(evaluate(u64::MAX, u64::MAX - 1, 90), BudgetState::Full);
        let b = DiskBudget::new();
        assert!(!b.is_full());
        b.set(BudgetState::Full);
        assert!(b.clone().is_full());
    }
}
