//! The NATS JetStream transport (SPEC 6.1, `docs/fleet.md`): the same `UploadBatch` bytes, published to a stream.
//!
//! - **Subject** `{subject_prefix}.{gateway_id}`, header `Nats-Msg-Id: {gateway_id}:{outbox_id}:{batch_seq}`: a batch sent
//!   again (after a timeout, a leader change, a crash of the gateway) carries the same id, and the stream's duplicate
//!   window stores it once.
//! - **Delivered only on the publish ack** (the stream stored it, replicated as the stream is configured). The ack is
//!   turned into an `UploadAck { accepted: true }` so the sender loop treats both transports alike; one batch is in
//!   flight at a time, so batches stay in order.
//! - **Failures**: a timeout, a lost connection, a cluster without a leader for the stream (the ack does not come) and
//!   a node loss are transport errors, retried with the sender's backoff; the client reconnects to another server of
//!   `url`/`servers` (and those the cluster announces) by itself. Alarms (held, retried every `max_backoff`, like an HTTP
//!   4xx): the stream does not exist or does not capture the subject ([`SendError::NoStream`]), and the server refuses
//!   the publish for lack of permission ([`SendError::Denied`]; the server says so with an `-ERR` while the ack never
//!   comes, so a timeout right after such an error is reported as the refusal it is).
//! - **TLS**: the gateway's `ca`/`cert`/`key` (rustls, ring), TLS required: the cluster identifies the gateway by its
//!   certificate (`verify_and_map`) and allows it to publish on its own subject only.
//! - **Resend requests**: the gateway subscribes to `{resend_prefix}.{gateway_id}`; a receiver (the loader) sends a
//!   `ResendRequest` with work dates after a digest mismatch, the gateway queues those dates again (the outbox feeder,
//!   as for HTTPS `resend_dates`) and answers `ResendReply`.
//!
//! One connection per link; it is dropped (and the responder with it) when the link is rebuilt (SIGHUP, new
//! certificates). Cancel-safe: dropping a post future leaves the connection in place; the batch stays open in the
//! outbox and is published again with the same id.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::ServerAddr;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use tokio::sync::{mpsc, watch};

use crate::config::UpstreamSection;
use crate::proto::upstream::{ResendReply, ResendRequest, UploadAck};
use crate::upstream::client::SendError;

/// Most dates one resend request may name.
pub const MAX_RESEND_DATES: usize = 366;

/// Where batches go, from `[upstream]` and the gateway id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsEndpoint {
    /// `url` then `servers`, as configured.
    pub servers: Vec<String>,
    /// `{subject_prefix}.{gateway_id}`.
    pub subject: String,
    /// `{resend_prefix}.{gateway_id}`.
    pub resend_subject: String,
    pub stream: String,
}

/// True for `nats://` and `tls://` URLs (the JetStream transport).
pub fn is_nats_url(url: &str) -> bool {
    url.starts_with("nats://") || url.starts_with("tls://")
}

/// Checks one server URL: `nats://HOST[:PORT]` or `tls://HOST[:PORT]`, no credentials, no path.
pub fn parse_server(url: &str) -> Result<ServerAddr, String> {
    if !is_nats_url(url) {
        return Err(format!("`{url}` must start with nats:// or tls://"));
    }
    let addr = ServerAddr::from_str(url).map_err(|e| format!("`{url}` is not a NATS server URL: {e}"))?;
    if addr.has_user_pass() {
        return Err(format!("`{url}`: credentials in the URL are not supported (the gateway uses its certificate)"));
    }
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    if rest.is_empty() || rest.starts_with(':') || rest.trim_end_matches('/').contains('/') {
        return Err(format!("`{url}` must be nats://HOST[:PORT] with no path"));
    }
    Ok(addr)
}

/// Checks a subject prefix: dot-separated tokens of printable characters, no wildcards.
pub fn check_subject_prefix(prefix: &str) -> Result<(), String> {
    let ok = !prefix.is_empty()
        && prefix.split('.').all(|t| {
            !t.is_empty() && t != "*" && t != ">" && t.chars().all(|c| c.is_ascii_graphic() && c != '*' && c != '>')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("`{prefix}` must be dot-separated tokens (letters, digits, '-', '_'), with no wildcards"))
    }
}

/// Checks a stream name as JetStream accepts it.
pub fn check_stream(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '.' | '*' | '>' | '/' | '\\'));
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a stream name (printable, no '.', '*', '>', '/' or '\\')"))
    }
}

impl NatsEndpoint {
    /// Parses `[upstream]` for the JetStream transport.
    pub fn parse(up: &UpstreamSection, gateway_id: &str) -> Result<NatsEndpoint, String> {
        let servers: Vec<String> = std::iter::once(&up.url).chain(&up.servers).cloned().collect();
        for s in &servers {
            parse_server(s)?;
        }
        check_subject_prefix(&up.subject_prefix)?;
        check_subject_prefix(&up.resend_prefix)?;
        check_stream(&up.stream)?;
        Ok(NatsEndpoint {
            subject: format!("{}.{gateway_id}", up.subject_prefix),
            resend_subject: format!("{}.{gateway_id}", up.resend_prefix),
            stream: up.stream.clone(),
            servers,
        })
    }

    /// The server list as the client takes it.
    fn addrs(&self) -> Result<Vec<ServerAddr>, SendError> {
        self.servers.iter().map(|s| parse_server(s).map_err(SendError::Connect)).collect()
    }
}

/// The `Nats-Msg-Id` of a batch.
pub fn msg_id(gateway_id: &str, outbox_id: &str, batch_seq: u64) -> String {
    format!("{gateway_id}:{outbox_id}:{batch_seq}")
}

/// An open connection and what hangs on it.
struct Connection {
    js: jetstream::Context,
    /// The last permission error the server sent (set by the event callback, cleared before each publish).
    denied: Arc<watch::Sender<Option<String>>>,
    responder: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.responder.abort();
    }
}

/// A JetStream publisher for one gateway with one TLS configuration.
pub struct NatsClient {
    endpoint: NatsEndpoint,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    gateway_id: String,
    resend: mpsc::Sender<Vec<String>>,
    conn: Option<Connection>,
}

impl std::fmt::Debug for NatsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsClient").field("endpoint", &self.endpoint).field("connected", &self.conn.is_some()).finish()
    }
}

impl NatsClient {
    pub fn new(
        endpoint: NatsEndpoint,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
        gateway_id: &str,
        resend: mpsc::Sender<Vec<String>>,
    ) -> NatsClient {
        NatsClient { endpoint, tls, timeout, gateway_id: gateway_id.to_owned(), resend, conn: None }
    }

    pub fn endpoint(&self) -> &NatsEndpoint {
        &self.endpoint
    }

    /// Publishes one batch and waits for the stream's acknowledgement, within the link timeout.
    pub async fn post(&mut self, batch_seq: u64, outbox_id: &str, body: Bytes) -> Result<UploadAck, SendError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.post_inner(batch_seq, outbox_id, body)).await {
            Ok(r) => r,
            Err(_) => Err(self.timed_out()),
        }
    }

    /// A timeout, or the permission refusal that caused it.
    fn timed_out(&self) -> SendError {
        match self.conn.as_ref().and_then(|c| c.denied.borrow().clone()) {
            Some(error) => SendError::Denied(error),
            None => SendError::Timeout(self.timeout),
        }
    }

    async fn connect(&self) -> Result<Connection, SendError> {
        let denied = Arc::new(watch::Sender::new(None));
        let denied_tx = denied.clone();
        let subject = self.endpoint.subject.clone();
        let resend_subject = self.endpoint.resend_subject.clone();
        let client = async_nats::ConnectOptions::new()
            .require_tls(true)
            .tls_client_config((*self.tls).clone())
            .connection_timeout(self.timeout)
            .name(format!("gatewayd {}", self.gateway_id))
            .event_callback(move |event| {
                let (subject, resend_subject) = (subject.clone(), resend_subject.clone());
                let seen = match &event {
                    async_nats::Event::ServerError(async_nats::ServerError::Other(e))
                        if e.to_ascii_lowercase().contains("permissions violation") =>
                    {
                        Some(e.clone())
                    }
                    _ => None,
                };
                if let Some(error) = &seen {
                    if error.contains(&subject) {
                        denied_tx.send_replace(Some(error.clone()));
                    } else if error.contains(&resend_subject) {
                        tracing::error!(%error, subject = %resend_subject,
                            "upstream: the NATS cluster does not let this gateway receive resend requests");
                    }
                }
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!("upstream: connected to the NATS cluster"),
                        async_nats::Event::Disconnected => {
                            tracing::warn!("upstream: disconnected from the NATS cluster; reconnecting")
                        }
                        other => tracing::debug!(event = %other, "upstream: NATS event"),
                    }
                }
            })
            .connect(self.endpoint.addrs()?)
            .await
            .map_err(|e| match e.kind() {
                async_nats::ConnectErrorKind::Tls => {
                    SendError::Tls(format!("{}: {e}", self.endpoint.servers.join(",")))
                }
                _ => SendError::Connect(format!("{}: {e}", self.endpoint.servers.join(","))),
            })?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(self.timeout);
        let responder = match client.subscribe(self.endpoint.resend_subject.clone()).await {
            Ok(sub) => tokio::spawn(answer_resends(sub, client, self.gateway_id.clone(), self.resend.clone())),
            Err(e) => {
                tracing::error!(error = %e, subject = %self.endpoint.resend_subject,
                    "upstream: cannot subscribe to resend requests");
                tokio::spawn(async {})
            }
        };
        Ok(Connection { js, denied, responder })
    }

    async fn post_inner(&mut self, batch_seq: u64, outbox_id: &str, body: Bytes) -> Result<UploadAck, SendError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let Some(conn) = self.conn.as_ref() else { return Err(SendError::Connect("not connected".into())) };
        conn.denied.send_replace(None);
        let publish = PublishMessage::build().payload(body).message_id(msg_id(&self.gateway_id, outbox_id, batch_seq));
        let classify = |e: jetstream::context::PublishError| (e.kind(), e.to_string());
        let result = match conn.js.send_publish(self.endpoint.subject.clone(), publish).await {
            Ok(ack) => ack.await.map_err(classify),
            Err(e) => Err(classify(e)),
        };
        match result {
            Ok(ack) => {
                if ack.stream != self.endpoint.stream {
                    tracing::warn!(stream = %ack.stream, expected = %self.endpoint.stream,
                        "upstream: the batch was stored by another stream than `upstream.stream`");
                }
                Ok(UploadAck { batch_seq, accepted: true, error: String::new(), resend_dates: Vec::new() })
            }
            Err((PublishErrorKind::StreamNotFound, _)) => Err(self.no_stream().await),
            Err((PublishErrorKind::TimedOut, _)) => Err(self.timed_out()),
            Err((PublishErrorKind::MaxPayloadExceeded, e)) => {
                Err(SendError::Rejected { error: format!("{e}: lower upstream.batch_max_bytes") })
            }
            Err((_, e)) => Err(SendError::Reset(e)),
        }
    }

    /// Nobody answered the publish: tells a missing stream (an alarm) from a transient state.
    async fn no_stream(&self) -> SendError {
        let Some(conn) = self.conn.as_ref() else { return SendError::Reset("not connected".into()) };
        let stream = &self.endpoint.stream;
        match conn.js.get_stream(stream).await {
            Ok(_) => SendError::NoStream(format!(
                "stream `{stream}` exists but does not capture subject `{}`: check its subjects (docs/fleet.md)",
                self.endpoint.subject
            )),
            Err(e) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    SendError::NoStream(format!(
                        "stream `{stream}` does not exist: operators create it (docs/fleet.md); the gateway does not"
                    ))
                }
                _ => SendError::Reset(format!(
                    "no stream answered on `{}` and stream `{stream}`: {e}",
                    self.endpoint.subject
                )),
            },
        }
    }
}

/// Answers resend requests on the gateway's resend subject until the subscription ends.
async fn answer_resends(
    mut sub: async_nats::Subscriber,
    client: async_nats::Client,
    gateway_id: String,
    resend: mpsc::Sender<Vec<String>>,
) {
    while let Some(msg) = sub.next().await {
        let reply = match ResendRequest::decode(msg.payload.as_ref()) {
            Err(e) => ResendReply { accepted: false, error: format!("not a ResendRequest: {e}") },
            Ok(req) if req.gateway_id != gateway_id => ResendReply {
                accepted: false,
                error: format!("this is gateway `{gateway_id}`, not `{}`", req.gateway_id),
            },
            Ok(req) if req.dates.is_empty() || req.dates.len() > MAX_RESEND_DATES => ResendReply {
                accepted: false,
                error: format!("a request names 1 to {MAX_RESEND_DATES} dates, not {}", req.dates.len()),
            },
            Ok(req) => match req.dates.iter().find(|d| !crate::outbox::valid_date(d)) {
                Some(bad) => ResendReply { accepted: false, error: format!("`{bad}` is not a YYYY-MM-DD date") },
                None => {
                    tracing::info!(dates = ?req.dates, "upstream: the receiver asked for work dates again");
                    match resend.send(req.dates).await {
                        Ok(()) => ResendReply { accepted: true, error: String::new() },
                        Err(_) => ResendReply { accepted: false, error: "the gateway is stopping".into() },
                    }
                }
            },
        };
        if let Some(to) = msg.reply {
            if let Err(e) = client.publish(to, reply.encode_to_vec().into()).await {
                tracing::warn!(error = %e, "upstream: cannot answer a resend request");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_and_names() {
        for good in ["nats://127.0.0.1:4222", "tls://nats.example.com", "nats://[::1]:4222"] {
            assert!(parse_server(good).is_ok(), "{good}");
        }
        for bad in ["https://x", "nats://", "nats://u:p@host:4222", "nats://host:4222/path", "x", ""] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
        assert!(check_subject_prefix("gatewayd.v1.batches").is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a"] {
            assert!(check_subject_prefix(bad).is_err(), "{bad}");
        }
        assert!(check_stream("GATEWAYD").is_ok());
        for bad in ["", "A.B", "A*", "A B", "a/b"] {
            assert!(check_stream(bad).is_err(), "{bad}");
        }
        assert_eq!(msg_id("gw1", "00ff", 7), "gw1:00ff:7");
    }
}
