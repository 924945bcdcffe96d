//! One HTTPS connection to the receiver: rustls (mutual TLS) under hyper's HTTP/1.1 client, kept open between batches.
//!
//! [`Client::post`] sends one `UploadBatch` and classifies what happened as a [`SendError`], so the sender can tell a
//! retry (network, TLS, timeouts, 5xx) from an operator alarm (4xx, `accepted = false`). Any failure drops the
//! connection; the next batch opens a new one (with whatever TLS configuration is current).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use prost::Message;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::proto::upstream::UploadAck;

/// Largest acknowledgement body read (an `UploadAck` is tiny; anything bigger is not one).
pub const MAX_ACK_BYTES: usize = 1 << 20;
/// The path under the configured URL where batches go.
pub const BATCHES_PATH: &str = "/v1/batches";
/// The media type of bodies both ways.
pub const PROTOBUF: &str = "application/x-protobuf";

/// Where batches go, parsed from `upstream.url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// `host[:port]` for the Host header.
    pub authority: String,
    /// `{base path}/v1/batches`.
    pub path: String,
}

impl Endpoint {
    /// Parses `https://host[:port][/base]`.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("`{url}` must start with https://"));
        }
        let authority = uri.authority().ok_or_else(|| format!("`{url}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "`{url}`: credentials in the URL are not supported (the gateway uses its certificate)"
            ));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        if uri.query().is_some() {
            return Err(format!("`{url}`: a query string is not supported"));
        }
        let base = uri.path().trim_end_matches('/');
        Ok(Endpoint {
            port: authority.port_u16().unwrap_or(443),
            authority: authority.as_str().to_owned(),
            path: format!("{base}{BATCHES_PATH}"),
            host,
        })
    }

    fn server_name(&self) -> Result<ServerName<'static>, SendError> {
        ServerName::try_from(self.host.clone())
            .map_err(|e| SendError::Tls(format!("`{}` is not a valid server name: {e}", self.host)))
    }
}

/// What went wrong with one batch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect to {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection lost before the answer: {0}")]
    Reset(String),
    #[error("receiver error: HTTP {status}")]
    Server { status: u16 },
    #[error("receiver refused the batch: HTTP {status}: {error}")]
    Refused { status: u16, error: String },
    #[error("receiver did not accept the batch: {error}")]
    Rejected { error: String },
    #[error("answer is not an UploadAck for this batch: {0}")]
    BadAck(String),
    /// JetStream: no stream holds the subject (the stream is missing or does not capture it).
    #[error("JetStream: {0}")]
    NoStream(String),
    /// JetStream: the cluster refuses this gateway's publish (permissions).
    #[error("the NATS cluster refuses the publish: {0}")]
    Denied(String),
}

impl SendError {
    /// The `result` label of `gatewayd_upstream_batches_total`.
    pub fn label(&self) -> &'static str {
        match self {
            SendError::Connect(_) => "connect_error",
            SendError::Tls(_) => "tls_error",
            SendError::Timeout(_) => "timeout",
            SendError::Reset(_) => "reset",
            SendError::Server { .. } => "server_error",
            SendError::Refused { .. } => "refused",
            SendError::Rejected { .. } => "rejected",
            SendError::BadAck(_) => "bad_ack",
            SendError::NoStream(_) => "no_stream",
            SendError::Denied(_) => "denied",
        }
    }

    /// True for failures an operator must look at (the batch is held, not retried quickly).
    pub fn is_alarm(&self) -> bool {
        matches!(
            self,
            SendError::Refused { .. } | SendError::Rejected { .. } | SendError::NoStream(_) | SendError::Denied(_)
        )
    }
}

/// Finds a rustls error anywhere in an error's source chain.
fn tls_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(t) = inner.downcast_ref::<rustls::Error>() {
                    return Some(t.to_string());
                }
            }
        }
        cur = err.source();
    }
    None
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

/// A client for one receiver with one TLS configuration.
pub struct Client {
    endpoint: Endpoint,
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("endpoint", &self.endpoint).field("connected", &self.conn.is_some()).finish()
    }
}

impl Client {
    pub fn new(endpoint: Endpoint, tls: std::sync::Arc<rustls::ClientConfig>, timeout: Duration) -> Client {
        Client { endpoint, tls: tokio_rustls::TlsConnector::from(tls), timeout, conn: None }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Closes the connection (the next post opens a new one).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Posts one batch and returns the receiver's acknowledgement of it. Any error drops the connection.
    /// Cancel-safe: dropping the future drops the connection; the batch stays open in the outbox and is sent again.
    pub async fn post(&mut self, batch_seq: u64, body: Bytes) -> Result<UploadAck, SendError> {
        let result = match tokio::time::timeout(self.timeout, self.post_inner(body)).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Timeout(self.timeout)),
        };
        let result = result.and_then(|ack| {
            if ack.batch_seq != batch_seq {
                return Err(SendError::BadAck(format!("acknowledges batch {} instead of {batch_seq}", ack.batch_seq)));
            }
            if !ack.accepted {
                return Err(SendError::Rejected {
                    error: if ack.error.is_empty() { "(no reason given)".into() } else { ack.error.clone() },
                });
            }
            Ok(ack)
        });
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SendError> {
        let ep = &self.endpoint;
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| SendError::Connect(format!("{}:{}: {e}", ep.host, ep.port)))?;
        let _ = tcp.set_nodelay(true);
        let tls = self.tls.connect(ep.server_name()?, tcp).await.map_err(|e| match tls_cause(&e) {
            Some(t) => SendError::Tls(format!("{}: {t}", ep.authority)),
            None => SendError::Tls(format!("{}: handshake failed: {e}", ep.authority)),
        })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| SendError::Connect(format!("{}: HTTP handshake: {e}", ep.authority)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection closed");
            }
        });
        Ok(sender)
    }

    async fn post_inner(&mut self, body: Bytes) -> Result<UploadAck, SendError> {
        let reuse = self.conn.as_ref().is_some_and(|c| !c.is_closed());
        let mut sender = match (reuse, self.conn.take()) {
            (true, Some(c)) => c,
            _ => self.connect().await?,
        };
        let request = hyper::Request::post(self.endpoint.path.as_str())
            .header(hyper::header::HOST, self.endpoint.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, PROTOBUF)
            .header(hyper::header::ACCEPT, PROTOBUF)
            .body(Full::new(body))
            .map_err(|e| SendError::BadAck(format!("cannot build the request: {e}")))?;
        let classify = |e: hyper::Error| match tls_cause(&e) {
            Some(t) => SendError::Tls(t),
            None => SendError::Reset(chain(&e)),
        };
        sender.ready().await.map_err(classify)?;
        let response = sender.send_request(request).await.map_err(classify)?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ACK_BYTES)
            .collect()
            .await
            .map_err(|e| SendError::Reset(format!("reading the answer: {e}")))?
            .to_bytes();
        if status.is_server_error() {
            return Err(SendError::Server { status: status.as_u16() });
        }
        if !status.is_success() {
            let error = match UploadAck::decode(bytes.as_ref()) {
                Ok(ack) if !ack.error.is_empty() => ack.error,
                _ => String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            };
            return Err(SendError::Refused { status: status.as_u16(), error });
        }
        let ack = UploadAck::decode(bytes.as_ref()).map_err(|e| SendError::BadAck(format!("HTTP {status}: {e}")))?;
        self.conn = Some(sender);
        Ok(ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("https://hr.example.com/gatewayd").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("hr.example.com", 443, "/gatewayd/v1/batches"));
        let e = Endpoint::parse("https://127.0.0.1:8443/").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("127.0.0.1", 8443, "/v1/batches"));
        assert_eq!(e.authority, "127.0.0.1:8443");
        let e = Endpoint::parse("https://[::1]:9000").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 9000));
        for bad in ["http://x", "https://", "x", "https://u:p@host/", "https://h/?a=b", ""] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
