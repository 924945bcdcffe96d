//! The feeder: the one task that writes the outbox queue. It follows the change log, serves `resend_dates` requests from
//! the sender. Retention (crate::app::retention) compacts the day index of delivered dates past `retention_days`.
//!
//! Each pass runs in a blocking thread (sled I/O, digest scans), is followed by a flush, and only then is the change log
//! trimmed and the sender woken. On shutdown the feeder finishes the pass it is in, flushes, and returns.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{trim_point, Outbox, OutboxError, FILL_CHUNK};

use crate::daemon::Backoff;
use crate::reconcile::changes::ChangeLog;
use crate::store::Store;
use crate::telemetry::Metrics;

/// Requests to enqueue work dates again (from `UploadAck.resend_dates`); bounded.
pub const RESEND_QUEUE: usize = 64;

/// Everything the feeder works with.
#[derive(Clone, Debug)]
pub struct Feeder {
    pub outbox: Outbox,
    pub changes: ChangeLog,
    pub store: Store,
    pub metrics: Metrics,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Feeder {
    /// One pass over the durable change log: fill, flush, trim. Returns the number of changes consumed.
    pub async fn pass(&self, through: u64) -> Result<usize, OutboxError> {
        let me = self.clone();
        let filled =
            tokio::task::spawn_blocking(move || me.outbox.fill(&me.changes, &me.store, through, FILL_CHUNK, now_ms()))
                .await
                .map_err(|e| OutboxError::Date(format!("fill task: {e}")))??;
        if filled.changes == 0 && filled.digests == 0 {
            return Ok(0);
        }
        self.outbox.flush().await?;
        let changes = self.changes.clone();
        let trimmed = tokio::task::spawn_blocking(move || {
            let last = changes.last_seq()?;
            changes.remove_through(trim_point(filled.cursor, last))
        })
        .await
        .map_err(|e| OutboxError::Date(format!("trim task: {e}")))?;
        if let Err(e) = trimmed {
            // Harmless: the entries are consumed (the cursor says so); the next pass trims them.
            tracing::warn!(error = %e, "outbox: cannot trim the change log");
        }
        crate::outbox::metrics::events::outbox_filled(&self.metrics, &filled);
        self.update_stats();
        Ok(filled.changes)
    }

    /// Enqueues the given dates again (unknown or malformed dates are logged and skipped).
    pub async fn resend(&self, dates: Vec<String>) -> Result<usize, OutboxError> {
        let me = self.clone();
        let n = tokio::task::spawn_blocking(move || {
            let mut total = 0;
            for date in &dates {
                match me.outbox.resend_date(date, &me.store, now_ms()) {
                    Ok(n) => {
                        crate::outbox::metrics::events::resend_date(&me.metrics, date, n);
                        total += n;
                    }
                    Err(OutboxError::Date(e)) => {
                        tracing::warn!(date, error = %e, "receiver asked to resend a bad date")
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(total)
        })
        .await
        .map_err(|e| OutboxError::Date(format!("resend task: {e}")))??;
        self.outbox.flush().await?;
        self.update_stats();
        Ok(n)
    }

    /// Publishes queue depth and the age of the oldest undelivered item.
    pub fn update_stats(&self) {
        match self.outbox.stats() {
            Ok(stats) => crate::outbox::metrics::events::outbox_stats(&self.metrics, &stats, now_ms()),
            Err(e) => tracing::warn!(error = %e, "outbox: cannot read queue statistics"),
        }
    }
}

/// Runs the feeder until cancelled.
pub async fn run(feeder: Feeder, mut resend: mpsc::Receiver<Vec<String>>, cancel: CancellationToken) {
    let mut durable = feeder.changes.subscribe();
    let backoff = Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(60), ..Backoff::default() };
    let mut failures = 0u32;
    let mut stats_tick = tokio::time::interval(Duration::from_secs(5));
    feeder.update_stats();
    loop {
        let through = *durable.borrow_and_update();
        let behind = match feeder.outbox.cursor() {
            Ok(cursor) => through > cursor,
            Err(_) => true,
        };
        if behind {
            match feeder.pass(through).await {
                Ok(_) => failures = 0,
                Err(e) => {
                    let delay = backoff.delay(failures);
                    failures = failures.saturating_add(1);
                    crate::outbox::metrics::events::outbox_failed(&e, delay);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => break,
                    }
                }
            }
            if cancel.is_cancelled() {
                break;
            }
            continue;
        }
        tokio::select! {
            changed = durable.changed() => if changed.is_err() { break },
            dates = resend.recv() => match dates {
                Some(dates) => if let Err(e) = feeder.resend(dates).await {
                    crate::outbox::metrics::events::outbox_failed(&e, Duration::ZERO);
                },
                None => break,
            },
            _ = stats_tick.tick() => feeder.update_stats(),
            _ = cancel.cancelled() => break,
        }
    }
    if let Err(e) = feeder.outbox.flush().await {
        tracing::error!(error = %e, "outbox: final flush failed");
    }
    tracing::debug!("outbox feeder stopped");
}
