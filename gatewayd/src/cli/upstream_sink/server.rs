//! The server side: TLS connections, HTTP requests, and the ledger thread that applies batches one at a time to a
//! [`BatchStore`] (the JSON-lines [`Ledger`] of `upstream-sink`, or PostgreSQL for `gatewayd loader --https`).
//!
//! Identity: a batch is accepted only from the gateway it names. The client certificate's subject common name (verified
//! by rustls against `--ca`) must equal the batch's `gateway_id`; otherwise the answer is `403` with an `UploadAck`
//! saying which gateway the certificate names (an operator alarm on the sender's side).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::faults::{Fault, FaultPlan};
use super::ledger::{decode_batch, BatchSummary, Ledger, Summary};
use super::{LEDGER_QUEUE, MAX_BODY};
use crate::proto::upstream::{UploadAck, UploadBatch};

/// Where the ledger thread puts accepted batches. Called from one thread, one batch at a time, in arrival order.
pub trait BatchStore: Send + 'static {
    /// Applies one decoded batch (idempotently) and returns its acknowledgement; an error is answered 503 (the
    /// sender retries).
    fn apply(&mut self, batch: &UploadBatch) -> Result<(UploadAck, BatchSummary), String>;
    /// The running totals (the server adds refusals, faults and TLS refusals to them).
    fn summary_mut(&mut self) -> &mut Summary;
}

impl BatchStore for Ledger {
    fn apply(&mut self, batch: &UploadBatch) -> Result<(UploadAck, BatchSummary), String> {
        Ledger::apply(self, batch).map_err(|e| e.to_string())
    }

    fn summary_mut(&mut self) -> &mut Summary {
        &mut self.summary
    }
}

/// Something the sink wants its operator (or the demo) to see.
#[derive(Clone, Debug)]
pub enum SinkEvent {
    Batch(BatchSummary),
    Refused { peer: SocketAddr, status: u16, error: String },
    Fault { peer: SocketAddr, fault: Fault },
    TlsRefused { peer: SocketAddr, error: String },
}

/// An answer the ledger thread prepared for a connection.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    delay: Duration,
    /// Close the connection without answering.
    close: bool,
}

struct Job {
    body: Bytes,
    peer: SocketAddr,
    /// The client certificate's subject common name.
    identity: Option<Arc<str>>,
    reply: oneshot::Sender<Answer>,
}

fn ack_answer(status: StatusCode, batch_seq: u64, error: String) -> Answer {
    let ack = UploadAck { batch_seq, accepted: false, error, resend_dates: Vec::new() };
    Answer { status, body: ack.encode_to_vec(), delay: Duration::ZERO, close: false }
}

/// The ledger thread: decodes, injects faults, applies, answers. Returns the totals when every sender is gone.
fn ledger_thread<S: BatchStore>(
    mut ledger: S,
    mut plan: FaultPlan,
    mut jobs: mpsc::Receiver<Job>,
    events: Option<mpsc::UnboundedSender<SinkEvent>>,
    tls_refused: Arc<std::sync::atomic::AtomicU64>,
) -> Summary {
    let emit = |e: SinkEvent| {
        if let Some(tx) = &events {
            let _ = tx.send(e);
        }
    };
    while let Some(job) = jobs.blocking_recv() {
        let batch = match decode_batch(&job.body) {
            Ok(b) => b,
            Err(error) => {
                ledger.summary_mut().refused += 1;
                emit(SinkEvent::Refused { peer: job.peer, status: 400, error: error.clone() });
                let _ = job.reply.send(ack_answer(StatusCode::BAD_REQUEST, 0, error));
                continue;
            }
        };
        if job.identity.as_deref() != Some(batch.gateway_id.as_str()) {
            let error = match &job.identity {
                Some(cn) => format!(
                    "the client certificate names gateway `{cn}`; this batch is from `{}`: refused",
                    batch.gateway_id
                ),
                None => "the client certificate has no usable common name: refused".into(),
            };
            ledger.summary_mut().refused += 1;
            emit(SinkEvent::Refused { peer: job.peer, status: 403, error: error.clone() });
            let _ = job.reply.send(ack_answer(StatusCode::FORBIDDEN, batch.batch_seq, error));
            continue;
        }
        let fault = plan.next_fault();
        if fault != Fault::Ok {
            ledger.summary_mut().faults_injected += 1;
            emit(SinkEvent::Fault { peer: job.peer, fault });
        }
        let answer = match fault {
            Fault::Status(code) => {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                ack_answer(status, batch.batch_seq, format!("injected fault: HTTP {code}"))
            }
            Fault::Reject => ack_answer(StatusCode::OK, batch.batch_seq, "injected fault: not accepted".into()),
            Fault::Drop => Answer { status: StatusCode::OK, body: Vec::new(), delay: Duration::ZERO, close: true },
            Fault::Ok | Fault::Slow(_) | Fault::Reset => match ledger.apply(&batch) {
                Ok((ack, summary)) => {
                    emit(SinkEvent::Batch(summary));
                    let delay = if let Fault::Slow(d) = fault { d } else { Duration::ZERO };
                    Answer { status: StatusCode::OK, body: ack.encode_to_vec(), delay, close: fault == Fault::Reset }
                }
                Err(e) => {
                    tracing::error!(error = %e, "upstream-sink: cannot store the batch");
                    ack_answer(StatusCode::SERVICE_UNAVAILABLE, batch.batch_seq, e)
                }
            },
        };
        let _ = job.reply.send(answer);
    }
    let mut summary = ledger.summary_mut().clone();
    summary.tls_refused = tls_refused.load(std::sync::atomic::Ordering::Relaxed);
    summary
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    r
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    identity: Option<Arc<str>>,
    jobs: mpsc::Sender<Job>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    if !req.uri().path().ends_with("/v1/batches") {
        return Ok(plain(StatusCode::NOT_FOUND, "not found: batches go to POST .../v1/batches\n"));
    }
    if req.method() != hyper::Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"));
    }
    let content_type = req.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with(crate::upstream::client::PROTOBUF) {
        return Ok(plain(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/x-protobuf\n"));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(plain(StatusCode::PAYLOAD_TOO_LARGE, &format!("body: {e}\n"))),
    };
    let (reply, answer) = oneshot::channel();
    if jobs.send(Job { body, peer, identity, reply }).await.is_err() {
        return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"));
    }
    let Ok(answer) = answer.await else { return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")) };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    if answer.close {
        // An error from the service makes hyper close the connection without writing a response.
        return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected fault: connection reset"));
    }
    let mut r = Response::new(Full::new(Bytes::from(answer.body)));
    *r.status_mut() = answer.status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(crate::upstream::client::PROTOBUF),
    );
    Ok(r)
}

/// Serves until `cancel` fires, then returns the totals. Each connection runs in its own task; batches are applied
/// in the order they reach the ledger.
pub async fn serve<S: BatchStore>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut ledger: S,
    plan: FaultPlan,
    events: Option<mpsc::UnboundedSender<SinkEvent>>,
    cancel: CancellationToken,
) -> Summary {
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(LEDGER_QUEUE);
    let tls_refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = tls_refused.clone();
    let ev = events.clone();
    let ledger_summary = ledger.summary_mut().clone();
    let thread = std::thread::Builder::new()
        .name("sink-ledger".into())
        .spawn(move || ledger_thread(ledger, plan, jobs_rx, ev, counter));
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "upstream-sink: cannot start the ledger thread");
            return ledger_summary;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "upstream-sink: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let acceptor = acceptor.clone();
        let jobs = jobs_tx.clone();
        let events = events.clone();
        let refused = tls_refused.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(tx) = &events {
                        let _ = tx.send(SinkEvent::TlsRefused { peer, error: e.to_string() });
                    }
                    return;
                }
                Err(_) => return,
            };
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|c| drivers::tls::subject_common_name(c).ok())
                .filter(|cn| !cn.is_empty() && !cn.chars().any(char::is_control))
                .map(Arc::<str>::from);
            let service = hyper::service::service_fn(move |req| handle(req, peer, identity.clone(), jobs.clone()));
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, error = %e, "upstream-sink: connection ended") },
                _ = cancel.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
    drop(jobs_tx);
    match tokio::task::spawn_blocking(move || thread.join()).await {
        Ok(Ok(summary)) => summary,
        _ => ledger_summary,
    }
}
