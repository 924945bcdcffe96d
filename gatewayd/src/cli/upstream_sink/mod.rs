//! `gatewayd upstream-sink`: the reference receiver of the upstream protocol (SPEC section 6,
//! `docs/upstream-protocol.md`). Cloud teams can read and run it as the executable specification of the receiving side.
//!
//! What it does, in the order a receiver must do it:
//! 1. **TLS**: requires a client certificate chaining to `--ca` (TLS 1.2/1.3); connections without one are refused in
//!    the handshake.
//! 2. **Request**: `POST /v1/batches` (any path prefix), `Content-Type: application/x-protobuf`, body `UploadBatch`
//!    (at most [`MAX_BODY`] bytes). Anything else is 404/405/415; a body that does not decode or lacks ids is 400 with an
//!    `UploadAck { accepted: false, error }` — a sender must treat 4xx as "an operator must look", not retry blindly.
//!    A batch whose `gateway_id` is not the client certificate's common name is 403: a gateway sends only its own.
//! 3. **Apply**, idempotently, per gateway: a punch is new unless its `punch_id` was seen; a record revision is new only
//!    if it is higher than the highest seen for its `record_id` (equal or lower: stale, ignored). New items are appended
//!    to `--out` as JSON lines and the file is synced to disk *before* the answer: an acknowledged batch is never lost.
//! 4. **Digests**: each `DayDigest` is checked against the punches received with `device_time_ms` in
//!    `[from_ms, to_ms)` (count and SHA-256 of the sorted ids, each followed by "\n"). On a mismatch the date is asked for
//!    again in `resend_dates` (at most [`MAX_RESEND_ASKS`] times per date, so a gap that cannot be filled does not loop).
//! 5. **Answer** `200` with `UploadAck { batch_seq, accepted: true, resend_dates }`.
//!
//! A restarted sink reads `--out` back, so re-sent batches stay idempotent across its restarts. Batches are applied one at
//! a time by one thread (the *ledger*), which owns the state and the file; connections only decode and wait for it.
//! `--fail PLAN` injects faults ([`faults`]) for testing senders.
//!
//! Files: `ledger.rs` the state, the output file and the checks; `server.rs` TLS, HTTP and the ledger thread (which
//! applies to any [`BatchStore`]: `gatewayd loader --https` reuses it with PostgreSQL); this file the command (options,
//! binding, printing) and the demo's receiver.

pub mod faults;
mod ledger;
mod server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use faults::FaultPlan;
pub use ledger::{decode_batch, restore_line, BatchSummary, DigestCheck, Ledger, Restored, Summary};
pub use server::{serve, BatchStore, SinkEvent};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 << 20;
/// How often one date is asked for again after a digest mismatch.
pub const MAX_RESEND_ASKS: u32 = 3;
/// Batches waiting for the ledger.
pub const LEDGER_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("upstream-sink: {0}")]
    Tls(#[from] crate::upstream::tls::TlsError),
    #[error("upstream-sink: cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream-sink: {path}: {source}")]
    Out {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Options of `gatewayd upstream-sink`.
#[derive(Clone, Debug)]
pub struct SinkOptions {
    pub listen: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub out: PathBuf,
    pub faults: FaultPlan,
    /// Print nothing per batch (only the address and the summary).
    pub quiet: bool,
}

/// Loads the TLS material, binds, and returns the listener and its configuration (so problems are reported before
/// anything is served).
pub async fn bind(opts: &SinkOptions) -> Result<(TcpListener, Arc<rustls::ServerConfig>, Ledger), SinkError> {
    let tls = crate::upstream::tls::server_config(&opts.ca, &opts.cert, &opts.key)?;
    let ledger = Ledger::open(&opts.out)?;
    let listener = TcpListener::bind(&opts.listen)
        .await
        .map_err(|source| SinkError::Bind { addr: opts.listen.clone(), source })?;
    Ok((listener, tls, ledger))
}

/// Prints events as lines on stdout.
pub fn print_event(e: &SinkEvent) {
    match e {
        SinkEvent::Batch(b) => println!("{b}"),
        SinkEvent::Refused { peer, status, error } => println!("refused a request from {peer}: HTTP {status}: {error}"),
        SinkEvent::Fault { peer, fault } => println!("injected fault for {peer}: {fault:?}"),
        SinkEvent::TlsRefused { peer, error } => println!("refused a TLS connection from {peer}: {error}"),
    }
}

/// `gatewayd upstream-sink`: serves until SIGINT/SIGTERM, printing one line per batch and a summary at the end.
pub async fn run(opts: SinkOptions) -> Result<Summary, SinkError> {
    let (listener, tls, ledger) = bind(&opts).await?;
    let addr = listener.local_addr().map_err(|source| SinkError::Bind { addr: opts.listen.clone(), source })?;
    if ledger.summary.restored > 0 {
        println!("restored {} items from {}", ledger.summary.restored, opts.out.display());
    }
    println!("upstream-sink listening on https://{addr}/v1/batches (client certificates from {})", opts.ca.display());
    let _ = std::io::stdout().flush();
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let quiet = opts.quiet;
    let printer = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            if !quiet || !matches!(e, SinkEvent::Batch(_)) {
                print_event(&e);
                let _ = std::io::stdout().flush();
            }
        }
    });
    let stop = cancel.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => tracing::warn!("upstream-sink: cannot install signal handlers"),
        }
        stop.cancel();
    });
    let summary = serve(listener, tls, ledger, opts.faults, Some(tx), cancel).await;
    let _ = printer.await;
    println!("{summary}");
    let _ = std::io::stdout().flush();
    Ok(summary)
}

/// For `gatewayd demo`: throwaway certificates in `dir`, a receiver behind mTLS on a free loopback port that prints
/// each accepted batch, and the `[upstream]` configuration section that points a gateway at it (client certificate
/// included). The receiver stops when `cancel` fires.
pub async fn demo_receiver(
    dir: &Path,
    gateway_id: &str,
    cancel: CancellationToken,
) -> Result<(String, tokio::task::JoinHandle<Summary>), SinkError> {
    let certs = crate::cli::certs::write_dev_set(dir, gateway_id, 365)
        .map_err(|e| SinkError::Out { path: dir.to_owned(), source: std::io::Error::other(e) })?;
    let opts = SinkOptions {
        listen: "127.0.0.1:0".into(),
        ca: certs.ca.clone(),
        cert: certs.server_cert,
        key: certs.server_key,
        out: dir.join("received.jsonl"),
        faults: FaultPlan::default(),
        quiet: false,
    };
    let (listener, tls, ledger) = bind(&opts).await?;
    let addr = listener.local_addr().map_err(|source| SinkError::Bind { addr: opts.listen.clone(), source })?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            match e {
                SinkEvent::Batch(b) => println!("  cloud  {b}"),
                other => {
                    print!("  cloud  ");
                    print_event(&other);
                }
            }
        }
    });
    println!(
        "  cloud    https://{addr}/v1/batches (reference receiver, mTLS; accepted items in {})",
        opts.out.display()
    );
    let task = tokio::spawn(serve(listener, tls, ledger, opts.faults, Some(tx), cancel));
    let section = format!(
        "\n[upstream]\nurl = \"https://localhost:{port}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nlinger = \"500ms\"\n",
        port = addr.port(),
        ca = certs.ca.display(),
        cert = certs.client_cert.display(),
        key = certs.client_key.display()
    );
    Ok((section, task))
}

/// `gatewayd upstream-sink`: its own runtime, logs on stderr, one line per batch on stdout.
pub fn execute(args: super::SinkArgs) -> Result<(), super::CliError> {
    crate::telemetry::init_logging();
    let opts = SinkOptions {
        listen: args.listen,
        ca: args.ca,
        cert: args.cert,
        key: args.key,
        out: args.out,
        faults: args.fail.unwrap_or_default(),
        quiet: args.quiet,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("upstream-sink")
        .build()
        .map_err(super::CliError::SinkRuntime)?;
    runtime.block_on(run(opts))?;
    Ok(())
}

#[cfg(test)]
mod tests;
