//! The ingest writer: the one task that writes punches into the store, with group commit.
//!
//! Drivers send [`IngestRequest`]s on a bounded channel (see [`drivers::sink`]). The writer takes every request waiting
//! (up to `max_batch` punches), checks each punch, writes them all in one atomic batch, flushes once, and only then
//! answers every caller. Many punches share one `flush`, which is what makes durable writes fast.
//!
//! After each flush the writer publishes the highest durable sequence number on a watch channel; the engine and the outbox
//! follow it, so they never see a punch that could still be lost.
//!
//! Shutdown: when the cancellation token fires the writer stops taking requests, answers what is already queued (it is
//! written and flushed like any other batch), and returns. Requests sent after that get [`Rejection::ShuttingDown`].

use std::time::Instant;

use drivers::sink::{IngestRequest, Outcome, Rejection};
use drivers::DevicePunch;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::punch;
use crate::store::Store;
use crate::telemetry::{self, Metrics};

/// Settings of the ingest writer.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    pub gateway_id: String,
    pub max_batch: usize,
}

/// Runs the writer until cancelled (and the queue drained) or until every sender is gone.
pub async fn run_writer(
    store: Store,
    settings: IngestSettings,
    mut rx: mpsc::Receiver<IngestRequest>,
    durable: watch::Sender<u64>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut next_seq = match store.last_seq() {
        Ok(last) => last.unwrap_or(0) + 1,
        Err(e) => {
            tracing::error!(error = %e, "ingest: cannot read the last sequence number; refusing punches");
            rx.close();
            while let Some(req) = rx.recv().await {
                let n = req.punches.len();
                let _ = req.reply.send(vec![Outcome::Rejected(Rejection::StoreFailed(e.to_string())); n]);
            }
            return;
        }
    };
    let mut requests: Vec<IngestRequest> = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            req = rx.recv() => req,
            _ = cancel.cancelled() => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { break };
        let mut punches = first.punches.len();
        requests.push(first);
        while punches < settings.max_batch {
            match rx.try_recv() {
                Ok(req) => {
                    punches += req.punches.len();
                    requests.push(req);
                }
                Err(_) => break,
            }
        }
        commit(&store, &settings, &mut requests, &mut next_seq, &durable, &metrics).await;
    }
    tracing::debug!("ingest writer stopped");
}

/// Writes and flushes one group of requests, then answers them all.
async fn commit(
    store: &Store,
    settings: &IngestSettings,
    requests: &mut Vec<IngestRequest>,
    next_seq: &mut u64,
    durable: &watch::Sender<u64>,
    metrics: &Metrics,
) {
    let started = Instant::now();
    // Per request, per punch: either a check failure, or an index into `accepted`.
    let mut slots: Vec<Vec<Result<usize, String>>> = Vec::with_capacity(requests.len());
    let mut accepted: Vec<(&str, &DevicePunch)> = Vec::new();
    for req in requests.iter() {
        let mut row = Vec::with_capacity(req.punches.len());
        for p in &req.punches {
            match punch::check(p) {
                Ok(()) => {
                    row.push(Ok(accepted.len()));
                    accepted.push((req.driver, p));
                }
                Err(reason) => row.push(Err(reason)),
            }
        }
        slots.push(row);
    }
    let seq_before = *next_seq;
    let written = match store.insert_batch(&settings.gateway_id, &accepted, next_seq) {
        Ok(inserted) => match store.flush().await {
            Ok(()) => Ok(inserted),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let n_accepted = accepted.len();
    drop(accepted);
    match &written {
        Ok(_) => {
            let last = next_seq.saturating_sub(1);
            if *next_seq > seq_before {
                durable.send_replace(last);
            }
            telemetry::events::group_committed(metrics, n_accepted, started.elapsed());
        }
        Err(e) => {
            // Nothing from this batch may be reported durable; sequence numbers are reused by the next batch only if the
            // batch did not reach sled, which `last_seq` tells us.
            *next_seq = store.last_seq().ok().flatten().map_or(seq_before, |s| (s + 1).max(seq_before));
            telemetry::events::store_write_failed(metrics, e);
        }
    }
    for (req, row) in requests.drain(..).zip(slots) {
        let outcomes = row
            .into_iter()
            .map(|slot| match (slot, &written) {
                (Err(reason), _) => Outcome::Rejected(Rejection::Invalid(reason)),
                (Ok(i), Ok(inserted)) => match inserted.get(i) {
                    Some(ins) => Outcome::Stored { punch_id: ins.punch_id.clone(), duplicate: ins.duplicate },
                    None => Outcome::Rejected(Rejection::StoreFailed("internal: missing result".into())),
                },
                (Ok(_), Err(e)) => Outcome::Rejected(Rejection::StoreFailed(e.to_string())),
            })
            .collect();
        // A caller that went away (device disconnected) will re-send; the punch is stored either way.
        let _ = req.reply.send(outcomes);
    }
}
