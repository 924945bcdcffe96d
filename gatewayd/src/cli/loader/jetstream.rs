//! The JetStream side of the loader: a durable pull consumer shared by every loader, one message (one `UploadBatch`)
//! at a time, applied in one PostgreSQL transaction and acknowledged only after it commits.
//!
//! - **Sharing**: every loader binds the same durable consumer (`--consumer`, default `loader`); the server hands each
//!   message to one of them. A loader that dies holding a message (SIGKILL, a lost connection) does not ack it; the
//!   server delivers it again after the consumer's ack wait, and applying it again changes nothing.
//! - **Identity**: the cluster lets a gateway publish only on `{subject_prefix}.{its id}` (docs/fleet.md), so the
//!   subject is the sender's identity: a batch whose `gateway_id` differs from its subject is terminated (never
//!   applied, never redelivered) with an ERROR, as is a message that is not an `UploadBatch`.
//! - **Failures**: a database error (a deadlock, a lost connection) naks the message for redelivery after
//!   [`NAK_DELAY`] and reconnects when the connection is gone; NATS failures are the client's to reconnect.
//! - **Digests**: a day whose digest does not match the database is asked for again with a `ResendRequest` on
//!   `{resend_prefix}.{gateway_id}` after the commit (docs/fleet.md "Resend requests").
//!
//! Cancel-safety: a message being applied is finished (committed and acknowledged, or left for redelivery) before the
//! loop looks at the cancellation token again.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::StreamExt;
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::{db, LoaderError, Totals};
use crate::cli::upstream_sink::{decode_batch, BatchSummary};
use crate::proto::upstream::{ResendReply, ResendRequest};

/// Redelivery delay of a message whose transaction failed.
pub const NAK_DELAY: Duration = Duration::from_secs(1);
/// How long a resend request waits for the gateway's answer.
pub const RESEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the loader waits between attempts to find the stream and bind the consumer.
pub const BIND_RETRY: Duration = Duration::from_secs(2);

/// Where and how to consume.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    pub servers: Vec<String>,
    pub stream: String,
    pub consumer: String,
    pub subject_prefix: String,
    pub resend_prefix: String,
    pub ack_wait: Duration,
    /// Mutual TLS: (ca, cert, key).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

async fn connect(opts: &NatsOptions) -> Result<async_nats::Client, LoaderError> {
    let addrs = opts
        .servers
        .iter()
        .map(|s| crate::upstream::nats::parse_server(s).map_err(LoaderError::Usage))
        .collect::<Result<Vec<_>, _>>()?;
    let mut options = async_nats::ConnectOptions::new().name("gatewayd loader").retry_on_initial_connect();
    if let Some(tls) = &opts.tls {
        options = options.require_tls(true).tls_client_config((**tls).clone());
    }
    options
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("loader: connected to the NATS cluster"),
                async_nats::Event::Disconnected => tracing::warn!("loader: disconnected from NATS; reconnecting"),
                other => tracing::debug!(event = %other, "loader: NATS event"),
            }
        })
        .connect(addrs)
        .await
        .map_err(|e| LoaderError::Nats(format!("{}: {e}", opts.servers.join(","))))
}

/// Finds the stream and binds (or creates) the durable consumer, retrying until it works or `cancel` fires.
async fn bind(
    js: &jetstream::Context,
    opts: &NatsOptions,
    cancel: &CancellationToken,
) -> Option<jetstream::consumer::PullConsumer> {
    let mut said = false;
    loop {
        let attempt = async {
            let stream = js.get_stream(&opts.stream).await.map_err(|e| format!("stream `{}`: {e}", opts.stream))?;
            let config = pull::Config {
                durable_name: Some(opts.consumer.clone()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: opts.ack_wait,
                max_deliver: -1,
                ..Default::default()
            };
            stream
                .get_or_create_consumer(&opts.consumer, config)
                .await
                .map_err(|e| format!("consumer `{}`: {e}", opts.consumer))
        };
        match attempt.await {
            Ok(c) => return Some(c),
            Err(e) => {
                if !said {
                    tracing::error!(error = %e, "loader: cannot bind the consumer (operators create the stream: \
                        docs/fleet.md); retrying");
                    said = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(BIND_RETRY) => {}
            _ = cancel.cancelled() => return None,
        }
    }
}

/// Consumes until `cancel` fires. Prints one line per batch unless `quiet`.
pub async fn run(
    opts: NatsOptions,
    postgres: &str,
    quiet: bool,
    cancel: CancellationToken,
) -> Result<Totals, LoaderError> {
    let mut pg = db::connect(postgres).await?;
    let ran = db::migrate(&mut pg).await?;
    if ran > 0 {
        tracing::info!(migrations = ran, "loader: database schema migrated");
    }
    let client = connect(&opts).await?;
    let js = jetstream::new(client.clone());
    let mut totals = Totals::default();
    let Some(consumer) = bind(&js, &opts, &cancel).await else { return Ok(totals) };
    println!("loader consuming stream {} as durable consumer `{}`", opts.stream, opts.consumer);
    let prefix = format!("{}.", opts.subject_prefix);
    'outer: loop {
        let mut messages = tokio::select! {
            m = consumer.stream().max_messages_per_batch(1).heartbeat(Duration::from_secs(5)).messages() => match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "loader: cannot pull; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(BIND_RETRY) => continue,
                        _ = cancel.cancelled() => break,
                    }
                }
            },
            _ = cancel.cancelled() => break,
        };
        loop {
            let next = tokio::select! {
                n = messages.next() => n,
                _ = cancel.cancelled() => break 'outer,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "loader: pull interrupted");
                    continue;
                }
                None => break,
            };
            let from = msg.subject.strip_prefix(prefix.as_str()).unwrap_or("").to_owned();
            let batch = match decode_batch(&msg.payload) {
                Ok(b) if b.gateway_id == from => b,
                Ok(b) => {
                    totals.refused += 1;
                    tracing::error!(subject = %msg.subject, gateway_id = %b.gateway_id,
                        "loader: a batch names another gateway than its subject; terminated, not applied");
                    let _ = msg.ack_with(AckKind::Term).await;
                    continue;
                }
                Err(e) => {
                    totals.refused += 1;
                    tracing::error!(subject = %msg.subject, error = %e, "loader: not a batch; terminated");
                    let _ = msg.ack_with(AckKind::Term).await;
                    continue;
                }
            };
            if pg.is_closed() {
                match db::connect(postgres).await {
                    Ok(c) => pg = c,
                    Err(e) => {
                        tracing::error!(error = %e, "loader: PostgreSQL is unreachable; the batch waits");
                        let _ = msg.ack_with(AckKind::Nak(Some(NAK_DELAY))).await;
                        tokio::select! {
                            _ = tokio::time::sleep(NAK_DELAY) => continue,
                            _ = cancel.cancelled() => break 'outer,
                        }
                    }
                }
            }
            match db::apply(&mut pg, &batch).await {
                Ok(summary) => {
                    if let Err(e) = msg.double_ack().await {
                        // Committed but not acknowledged: the batch comes again and changes nothing.
                        tracing::warn!(error = %e, batch_seq = batch.batch_seq, gateway_id = %batch.gateway_id,
                            "loader: acknowledgement failed after the commit");
                    }
                    totals.add(&summary);
                    if !quiet {
                        println!("{summary}");
                    }
                    if !summary.resend_dates.is_empty() {
                        ask_again(&client, &opts.resend_prefix, &summary).await;
                    }
                }
                Err(e) => {
                    totals.failed += 1;
                    tracing::warn!(error = %e, batch_seq = batch.batch_seq, gateway_id = %batch.gateway_id,
                        "loader: the batch was not applied; it will be delivered again");
                    let _ = msg.ack_with(AckKind::Nak(Some(NAK_DELAY))).await;
                }
            }
        }
    }
    Ok(totals)
}

/// Asks a gateway for days again; logs the outcome (a gateway that does not answer is asked again at its next digest
/// of the day).
async fn ask_again(client: &async_nats::Client, resend_prefix: &str, s: &BatchSummary) {
    let subject = format!("{resend_prefix}.{}", s.gateway_id);
    let req = ResendRequest { gateway_id: s.gateway_id.clone(), dates: s.resend_dates.clone() };
    let answer =
        tokio::time::timeout(RESEND_TIMEOUT, client.request(subject.clone(), req.encode_to_vec().into())).await;
    match answer {
        Ok(Ok(m)) => match ResendReply::decode(m.payload.as_ref()) {
            Ok(r) if r.accepted => {
                tracing::info!(gateway_id = %s.gateway_id, dates = ?s.resend_dates, "loader: asked the gateway for days again")
            }
            Ok(r) => {
                tracing::warn!(gateway_id = %s.gateway_id, error = %r.error, "loader: the gateway refused a resend request")
            }
            Err(e) => {
                tracing::warn!(gateway_id = %s.gateway_id, error = %e, "loader: unreadable answer to a resend request")
            }
        },
        Ok(Err(e)) => tracing::warn!(%subject, error = %e, "loader: resend request failed (is the gateway connected?)"),
        Err(_) => tracing::warn!(%subject, "loader: no answer to a resend request"),
    }
}
