//! The upstream sender: delivers the outbox to the cloud receiver over mutual TLS (SPEC section 6,
//! `docs/upstream-protocol.md`).
//!
//! One task, one batch in flight, which keeps batches in order. While a batch is in flight the next one is read from
//! disk and its body assembled (it is assigned only together with the acknowledgement). Each round:
//! 1. **Link**: a [`client::Client`] built from `[upstream]` (URL, pinned CA, gateway certificate and key). It is rebuilt
//!    when the configuration is reloaded (SIGHUP) or when the certificate, key or CA file changes on disk (checked
//!    every [`CERT_CHECK_EVERY`]), between batches, so no in-flight data is lost: the batch that was open is simply sent
//!    again over the new link. A file that does not load keeps the previous link in place (ERROR log).
//! 2. **Batch**: the open batch if there is one (a previous attempt, or from before a restart), else a new one assigned
//!    from the front of the queue once `batch_max_items` are ready or the oldest ready item waited `linger`. The open
//!    batch is flushed to disk before it is sent.
//! 3. **Send** `POST {url}/v1/batches` (or, with a `nats://` URL, publish to the JetStream stream: [`nats`]) and
//!    classify the answer:
//!    - `accepted = true`: the items leave the queue ([`Outbox::ack`]); `resend_dates` go to the feeder.
//!    - 4xx, `accepted = false`, a missing stream or a refused publish: an operator alarm (`gatewayd_upstream_alarm` = 1, ERROR log). The batch is held and
//!      tried again every `max_backoff` or at once after SIGHUP, never dropped.
//!    - 5xx, timeouts, resets, connection and TLS failures: retried with capped, jittered exponential backoff.
//!
//! Each batch carries the outbox's random `outbox_id` (field 6, appended to the body the outbox assembled: protobuf
//! merges a field that comes last), so a reinstalled gateway whose `batch_seq` starts at 1 again is never a replay.
//!
//! All waiting uses the monotonic clock, so wall-clock jumps do not stall or hurry retries. The certificate's days
//! left (`gatewayd_upstream_cert_days_left`) are computed from the wall clock each time they are reported (at every
//! link build and hourly), with a WARN from [`EXPIRY_WARN_DAYS`] days ahead.

pub mod client;
pub mod metrics;
pub mod nats;
pub mod tls;
pub mod transport;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{check_file, Config, Problems, Seg, UpstreamSection};
use crate::daemon::Backoff;
use crate::outbox::{OpenBatch, Outbox, OutboxError};
use crate::telemetry::Metrics;
use client::{Client, Endpoint};
use transport::Transport;

/// How often the certificate files are checked for changes.
pub const CERT_CHECK_EVERY: Duration = Duration::from_secs(5);
/// How often the certificate's days left are reported.
pub const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(3600);
/// Warn this many days before the gateway certificate expires.
pub const EXPIRY_WARN_DAYS: i64 = 30;
/// First retry delay after a transient failure.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream: {0}")]
    Url(String),
    #[error("upstream: {0}")]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// What identifies the certificate files' contents: (path, modified time, length, inode) of each.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp(Vec<(PathBuf, Option<std::time::SystemTime>, u64, u64)>);

impl FileStamp {
    fn of(up: &UpstreamSection) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp(
            [&up.ca, &up.cert, &up.key]
                .into_iter()
                .map(|p| match std::fs::metadata(p) {
                    Ok(m) => (p.clone(), m.modified().ok(), m.len(), m.ino()),
                    Err(_) => (p.clone(), None, 0, 0),
                })
                .collect(),
        )
    }
}

/// The current connection setup and what it was built from.
struct Link {
    client: Transport,
    section: String,
    stamp: FileStamp,
}

fn section_key(up: &UpstreamSection) -> String {
    format!("{up:?}")
}

fn build_link(
    up: &UpstreamSection,
    gateway_id: &str,
    resend: &mpsc::Sender<Vec<String>>,
) -> Result<Link, UpstreamError> {
    let stamp = FileStamp::of(up);
    let config = tls::client_config(&up.ca, &up.cert, &up.key)?;
    let client = if nats::is_nats_url(&up.url) {
        let endpoint = nats::NatsEndpoint::parse(up, gateway_id).map_err(UpstreamError::Url)?;
        Transport::Nats(Box::new(nats::NatsClient::new(endpoint, config, up.timeout(), gateway_id, resend.clone())))
    } else {
        let endpoint = Endpoint::parse(&up.url).map_err(UpstreamError::Url)?;
        Transport::Https(Client::new(endpoint, config, up.timeout()))
    };
    Ok(Link { client, section: section_key(up), stamp })
}

/// Appends `outbox_id` (field 6) to a batch body the outbox assembled.
fn with_outbox_id(mut body: Vec<u8>, outbox_id: &str) -> Bytes {
    prost::encoding::string::encode(6, &outbox_id.to_owned(), &mut body);
    Bytes::from(body)
}

fn report_expiry(metrics: &Metrics, up: &UpstreamSection) {
    match tls::cert_days_left(&up.cert, jiff::Timestamp::now()) {
        Ok(days) => metrics::events::upstream_cert_days_left(metrics, &up.cert, days, EXPIRY_WARN_DAYS),
        Err(e) => tracing::warn!(error = %e, "upstream: cannot read the gateway certificate's expiry"),
    }
}

/// Why a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    Timer,
    Config,
    Queue,
    Cancel,
}

async fn changed_or_never<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn wait(
    until: Instant,
    config: &mut watch::Receiver<Arc<Config>>,
    queue: Option<&mut watch::Receiver<u64>>,
    cancel: &CancellationToken,
) -> Wake {
    let queue_changed = async {
        match queue {
            Some(q) => changed_or_never(q).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep_until(until) => Wake::Timer,
        _ = changed_or_never(config) => Wake::Config,
        _ = queue_changed => Wake::Queue,
        _ = cancel.cancelled() => Wake::Cancel,
    }
}

/// The sender's moving parts.
pub struct Sender {
    pub outbox: Outbox,
    pub config: watch::Receiver<Arc<Config>>,
    pub metrics: Metrics,
    /// `resend_dates` from acknowledgements go to the outbox feeder here.
    pub resend: mpsc::Sender<Vec<String>>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("outbox", &self.outbox).finish()
    }
}

/// Runs the sender until cancelled. An in-flight request is abandoned on cancel; its batch stays open in the outbox
/// and is sent again after the restart.
pub async fn run(mut s: Sender, cancel: CancellationToken) {
    let mut queue = s.outbox.subscribe();
    let outbox_id = loop {
        match s.outbox.outbox_id() {
            Ok(id) => break id,
            Err(e) => {
                tracing::error!(error = %e, "upstream: cannot read the outbox id; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(CERT_CHECK_EVERY) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    };
    let mut link: Option<Link> = None;
    let mut failed_stamp: Option<FileStamp> = None;
    let mut retry_at: Option<Instant> = None;
    let mut attempt = 0u32;
    let mut alarm = false;
    let mut linger_since: Option<Instant> = None;
    let mut expiry_checked: Option<Instant> = None;
    // The next batch, already assigned together with the previous acknowledgement (pipelining, see `prepare_during`).
    let mut assigned: Option<(OpenBatch, Bytes)> = None;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let config = s.config.borrow_and_update().clone();
        let Some(up) = config.upstream.clone() else {
            if link.take().is_some() {
                tracing::info!("upstream: no [upstream] section any more; items wait in the outbox");
            }
            if wait(Instant::now() + Duration::from_secs(3600), &mut s.config, None, &cancel).await == Wake::Cancel {
                break;
            }
            continue;
        };

        // 1. The link: (re)build on configuration or file changes.
        let stamp = FileStamp::of(&up);
        let stale = link.as_ref().is_none_or(|l| l.section != section_key(&up) || l.stamp != stamp);
        if stale && failed_stamp.as_ref() != Some(&stamp) {
            let first = link.is_none();
            match build_link(&up, &config.gateway.id, &s.resend) {
                Ok(new) => {
                    metrics::events::upstream_link_built(&new.client.receiver(), first);
                    link = Some(new);
                    failed_stamp = None;
                    report_expiry(&s.metrics, &up);
                    expiry_checked = Some(Instant::now());
                    // New credentials or a new receiver: try at once.
                    retry_at = None;
                }
                Err(e) => {
                    metrics::events::upstream_link_failed(&s.metrics, &e, link.is_some());
                    failed_stamp = Some(stamp);
                }
            }
        }
        if expiry_checked.is_none_or(|t| t.elapsed() >= EXPIRY_CHECK_EVERY) {
            report_expiry(&s.metrics, &up);
            expiry_checked = Some(Instant::now());
        }
        let Some(current) = link.as_mut() else {
            if wait(Instant::now() + CERT_CHECK_EVERY, &mut s.config, None, &cancel).await == Wake::Cancel {
                break;
            }
            continue;
        };

        // Backoff after a failure (a rebuilt link or SIGHUP ends it early).
        if let Some(at) = retry_at {
            if Instant::now() < at {
                let until = at.min(Instant::now() + CERT_CHECK_EVERY);
                match wait(until, &mut s.config, None, &cancel).await {
                    Wake::Cancel => break,
                    Wake::Config => retry_at = None,
                    _ => {}
                }
                continue;
            }
            retry_at = None;
        }

        // 2. The batch.
        let next = match assigned.take() {
            Some(batch) => Ok(Some(batch)),
            None => next_batch(&s.outbox, &up, &mut queue, &mut linger_since, &config.gateway.id, &outbox_id).await,
        };
        let (open, body) = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                let until = linger_since.map_or(Instant::now() + CERT_CHECK_EVERY, |t| {
                    (t + up.linger()).min(Instant::now() + CERT_CHECK_EVERY)
                });
                if wait(until, &mut s.config, Some(&mut queue), &cancel).await == Wake::Cancel {
                    break;
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "upstream: cannot read the outbox; retrying");
                retry_at = Some(Instant::now() + up.max_backoff());
                continue;
            }
        };
        if let Err(e) = s.outbox.flush().await {
            tracing::error!(error = %e, batch_seq = open.batch_seq, "upstream: cannot make the batch durable; retrying");
            retry_at = Some(Instant::now() + up.max_backoff());
            continue;
        }

        // 3. Send; while the batch is in flight, read the next one from disk.
        let started = Instant::now();
        let prepare = prepare_during(&s.outbox, &up, &open, *queue.borrow());
        let result = tokio::select! {
            r = current.client.post(open.batch_seq, &outbox_id, body) => r,
            _ = cancel.cancelled() => break,
        };
        metrics::events::upstream_sent(&s.metrics, &open, &result, started.elapsed(), attempt);
        let prepared = match prepare {
            Some(task) => task.await.ok().and_then(|r| r.ok()).flatten(),
            None => None,
        };
        match result {
            Ok(ack) => {
                let outbox = s.outbox.clone();
                let gateway_id = config.gateway.id.clone();
                let acked = tokio::task::spawn_blocking(move || match prepared {
                    Some(next) => outbox.ack_and_assign(&open, next, &gateway_id),
                    None => outbox.ack(&open).map(|()| None),
                })
                .await;
                match acked {
                    Ok(Ok(next)) => assigned = next.map(|(open, body)| (open, with_outbox_id(body, &outbox_id))),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "upstream: cannot remove acknowledged items; they will be sent again")
                    }
                    Err(e) => tracing::error!(error = %e, "upstream: ack task failed"),
                }
                if alarm {
                    alarm = false;
                    metrics::events::upstream_alarm_cleared(&s.metrics, open.batch_seq);
                }
                attempt = 0;
                if let Ok(stats) = s.outbox.stats() {
                    crate::outbox::metrics::events::outbox_stats(
                        &s.metrics,
                        &stats,
                        jiff::Timestamp::now().as_millisecond(),
                    );
                }
                if !ack.resend_dates.is_empty() {
                    tokio::select! {
                        _ = s.resend.send(ack.resend_dates) => {}
                        _ = cancel.cancelled() => break,
                    }
                }
            }
            Err(e) if e.is_alarm() => {
                if !alarm {
                    alarm = true;
                }
                metrics::events::upstream_alarm(&s.metrics, open.batch_seq, &e, up.max_backoff());
                retry_at = Some(Instant::now() + up.max_backoff());
            }
            Err(e) => {
                let backoff = Backoff { initial: FIRST_RETRY, max: up.max_backoff(), stable_after: Duration::MAX };
                let delay = backoff.delay(attempt);
                attempt = attempt.saturating_add(1);
                metrics::events::upstream_retry(open.batch_seq, &e, delay, attempt);
                retry_at = Some(Instant::now() + delay);
            }
        }
    }
    tracing::debug!("upstream sender stopped");
}

/// Pipelining: while batch `open` is in flight, reads the batch after it (a blocking task), when a full one is already
/// durable behind it. Only reading happens here; the batch is assigned (`O`, `batch_seq`) in the same atomic write as
/// the acknowledgement of `open` ([`Outbox::ack_and_assign`]) and flushed before it is sent, so there is still exactly
/// one batch in flight and a crash re-sends the same batch with the same items. A short tail is left to the linger
/// logic of [`next_batch`].
fn prepare_during(
    outbox: &Outbox,
    up: &UpstreamSection,
    open: &OpenBatch,
    through: u64,
) -> Option<tokio::task::JoinHandle<Result<Option<crate::outbox::Prepared>, OutboxError>>> {
    if through.saturating_sub(open.last) < up.batch_max_items as u64 {
        return None;
    }
    let (outbox, after) = (outbox.clone(), open.last);
    let (max_items, max_bytes) = (up.batch_max_items, up.batch_max_bytes);
    Some(tokio::task::spawn_blocking(move || outbox.prepare(after, max_items, max_bytes, through)))
}

/// The open batch, or a new one when enough is ready (or the oldest ready item lingered long enough), with its body.
/// The caller flushes before sending.
async fn next_batch(
    outbox: &Outbox,
    up: &UpstreamSection,
    queue: &mut watch::Receiver<u64>,
    linger_since: &mut Option<Instant>,
    gateway_id: &str,
    outbox_id: &str,
) -> Result<Option<(OpenBatch, Bytes)>, OutboxError> {
    let through = *queue.borrow_and_update();
    if outbox.open_batch()?.is_none() {
        let ready = outbox.ready(through)?;
        if ready == 0 {
            *linger_since = None;
            return Ok(None);
        }
        let since = *linger_since.get_or_insert_with(Instant::now);
        if (ready as usize) < up.batch_max_items && since.elapsed() < up.linger() {
            return Ok(None);
        }
        *linger_since = None;
    }
    let (outbox, gateway_id) = (outbox.clone(), gateway_id.to_owned());
    let (max_items, max_bytes) = (up.batch_max_items, up.batch_max_bytes);
    let assigned =
        tokio::task::spawn_blocking(move || outbox.assign_with_body(max_items, max_bytes, through, &gateway_id))
            .await
            .map_err(|e| OutboxError::Date(format!("batch task: {e}")))??;
    Ok(assigned.map(|(open, body)| (open, with_outbox_id(body, outbox_id))))
}

/// Checks an upstream section's files and URL without starting anything (for `validate`): each problem as (key, text).
pub fn check_section(up: &UpstreamSection) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if nats::is_nats_url(&up.url) {
        for (key, value) in std::iter::once(("url", &up.url)).chain(up.servers.iter().map(|s| ("servers", s))) {
            if let Err(e) = nats::parse_server(value) {
                out.push((key, e));
            }
        }
        if let Err(e) = nats::check_subject_prefix(&up.subject_prefix) {
            out.push(("subject_prefix", e));
        }
        if let Err(e) = nats::check_subject_prefix(&up.resend_prefix) {
            out.push(("resend_prefix", e));
        }
        if let Err(e) = nats::check_stream(&up.stream) {
            out.push(("stream", e));
        }
    } else if let Err(e) = Endpoint::parse(&up.url) {
        out.push(("url", e));
    }
    for (key, path) in [("ca", &up.ca), ("cert", &up.cert)] {
        if path.exists() {
            if let Err(e) = tls::load_certs(path) {
                out.push((key, e.to_string()));
            }
        }
    }
    if up.key.exists() && up.cert.exists() && up.ca.exists() && out.is_empty() {
        if let Err(e) = tls::client_config(&up.ca, &up.cert, &up.key) {
            out.push(("key", e.to_string()));
        }
    }
    out
}

/// Checks `[upstream]`: values, files, and that the files load as TLS material (called by the configuration loader,
/// [`crate::app::load_config`]).
pub fn check_config(config: &Config, out: &mut Problems<'_>) {
    if let Some(up) = &config.upstream {
        let at = |k: &'static str| vec![Seg::Key("upstream"), Seg::Key(k)];
        let before = out.list.len();
        let nats = nats::is_nats_url(&up.url);
        match up.url.strip_prefix("https://") {
            Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {}
            _ if nats => {}
            _ => out.add(
                &at("url"),
                "upstream.url",
                format!("`{}` must be an https:// URL with a host, or nats://HOST:PORT", up.url),
            ),
        }
        if !nats {
            let defaults = crate::config::UpstreamSection::nats_defaults();
            for (key, set) in [
                ("servers", !up.servers.is_empty()),
                ("subject_prefix", up.subject_prefix != defaults.0),
                ("stream", up.stream != defaults.1),
                ("resend_prefix", up.resend_prefix != defaults.2),
            ] {
                if set {
                    out.add(&at(key), &format!("upstream.{key}"), "applies only to a nats:// url".into());
                }
            }
        }
        check_file(out, &at("ca"), "upstream.ca", &up.ca);
        check_file(out, &at("cert"), "upstream.cert", &up.cert);
        check_file(out, &at("key"), "upstream.key", &up.key);
        if up.timeout() < Duration::from_secs(1) || up.timeout() > Duration::from_secs(600) {
            out.add(&at("timeout"), "upstream.timeout", "must be between 1s and 10m".into());
        }
        if up.batch_max_items == 0 || up.batch_max_items > 100_000 {
            out.add(&at("batch_max_items"), "upstream.batch_max_items", "must be between 1 and 100000".into());
        }
        if up.batch_max_bytes < 4096 || up.batch_max_bytes > 64 << 20 {
            out.add(&at("batch_max_bytes"), "upstream.batch_max_bytes", "must be between 4096 and 67108864".into());
        }
        if up.linger() > Duration::from_secs(10) {
            out.add(&at("linger"), "upstream.linger", "must be at most 10s".into());
        }
        if up.max_backoff() < Duration::from_secs(1) || up.max_backoff() > Duration::from_secs(3600) {
            out.add(&at("max_backoff"), "upstream.max_backoff", "must be between 1s and 1h".into());
        }
        if up.retention_days == 0 || up.retention_days > 3650 {
            out.add(&at("retention_days"), "upstream.retention_days", "must be between 1 and 3650".into());
        }
        if out.list.len() == before {
            // The files exist and the values are in range: check that they load as TLS material.
            for (key, problem) in check_section(up) {
                out.add(&at(key), &format!("upstream.{key}"), problem);
            }
        }
    }
}

#[cfg(test)]
mod tests;
