//! `gatewayd loader`: moves upstream batches into PostgreSQL (SPEC 6.2, docs/fleet.md).
//!
//! - `--nats URL… --stream NAME`: consumes the JetStream stream the gateways publish to, with a durable pull consumer
//!   that several loaders share ([`jetstream`]).
//! - `--https ADDR --ca --cert --key`: the reference receiver of the HTTPS protocol, writing PostgreSQL instead of a file
//!   ([`https`]; the server is `upstream-sink`'s).
//!
//! Either way each batch is one transaction ([`db::apply`]): punches unique by id, records replaced only by a higher
//! revision, digests checked against what the database holds, the last batch per gateway and outbox. The schema
//! migrations are compiled in ([`db::MIGRATIONS`]) and applied at start.
//!
//! Files: `db.rs` the schema and the transaction, `jetstream.rs` the consumer, `https.rs` the HTTPS receiver's store,
//! this file the command.

pub mod db;
pub mod https;
pub mod jetstream;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli::upstream_sink::{self, faults::FaultPlan, BatchSummary};

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("gatewayd loader: {0}")]
    Usage(String),
    #[error("gatewayd loader: {0}")]
    Tls(#[from] crate::upstream::tls::TlsError),
    #[error("gatewayd loader: {0}")]
    Db(#[from] db::DbError),
    #[error("gatewayd loader: NATS {0}")]
    Nats(String),
    #[error("gatewayd loader: cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gatewayd loader: cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Options of `gatewayd loader`.
#[derive(clap::Args, Debug)]
pub struct LoaderArgs {
    /// NATS servers of the cluster (nats://HOST:PORT; repeat or separate with commas).
    #[arg(
        long,
        value_name = "URL",
        value_delimiter = ',',
        conflicts_with = "https",
        required_unless_present = "https"
    )]
    pub nats: Vec<String>,
    /// The JetStream stream the gateways publish to.
    #[arg(long, value_name = "NAME", default_value = "GATEWAYD")]
    pub stream: String,
    /// The durable consumer every loader shares.
    #[arg(long, value_name = "NAME", default_value = "loader")]
    pub consumer: String,
    /// Subjects of batches are `{subject-prefix}.{gateway id}`.
    #[arg(long, value_name = "PREFIX", default_value = "gatewayd.v1.batches")]
    pub subject_prefix: String,
    /// Resend requests go to `{resend-prefix}.{gateway id}`.
    #[arg(long, value_name = "PREFIX", default_value = "gatewayd.v1.resend")]
    pub resend_prefix: String,
    /// Seconds the cluster waits for an acknowledgement before it delivers a message to another loader (set when the
    /// consumer is created).
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ack_wait: u64,
    /// Serve the HTTPS upstream protocol on ADDR instead (needs --ca, --cert, --key).
    #[arg(long, value_name = "ADDR")]
    pub https: Option<String>,
    /// PostgreSQL connection URL, e.g. postgres://loader@db.example.com/attendance.
    #[arg(long, value_name = "URL")]
    pub postgres: String,
    /// CA the servers' (NATS) or the clients' (HTTPS) certificates chain to.
    #[arg(long, value_name = "FILE", requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
    /// This loader's certificate (PEM): its client certificate for NATS, its server certificate for HTTPS.
    #[arg(long, value_name = "FILE", requires_all = ["ca", "key"])]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["ca", "cert"])]
    pub key: Option<PathBuf>,
    /// Print only the start line and the final summary, not a line per batch.
    #[arg(long)]
    pub quiet: bool,
}

/// Totals since the loader started (NATS mode; the HTTPS mode prints the receiver's summary).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub batches: u64,
    pub punches: u64,
    pub punch_duplicates: u64,
    pub records: u64,
    pub records_stale: u64,
    pub digests_ok: u64,
    pub digests_incomplete: u64,
    pub refused: u64,
    pub failed: u64,
}

impl Totals {
    fn add(&mut self, s: &BatchSummary) {
        self.batches += 1;
        self.punches += s.punches;
        self.punch_duplicates += s.punch_duplicates;
        self.records += s.records;
        self.records_stale += s.records_stale;
        self.digests_ok += s.digests.iter().filter(|d| d.ok).count() as u64;
        self.digests_incomplete += s.digests.iter().filter(|d| !d.ok).count() as u64;
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loader summary: {} batches; {} punches ({} duplicates ignored); {} record revisions ({} stale ignored); \
             digests {} complete, {} incomplete; {} messages refused; {} transactions failed and redelivered",
            self.batches,
            self.punches,
            self.punch_duplicates,
            self.records,
            self.records_stale,
            self.digests_ok,
            self.digests_incomplete,
            self.refused,
            self.failed
        )
    }
}

/// Cancels `cancel` on SIGTERM or SIGINT.
fn stop_on_signals(cancel: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => tracing::warn!("loader: cannot install signal handlers"),
        }
        cancel.cancel();
    });
}

async fn run(args: LoaderArgs) -> Result<(), LoaderError> {
    let cancel = CancellationToken::new();
    stop_on_signals(cancel.clone());
    if let Some(addr) = &args.https {
        let (Some(ca), Some(cert), Some(key)) = (&args.ca, &args.cert, &args.key) else {
            return Err(LoaderError::Usage("--https needs --ca, --cert and --key".into()));
        };
        let tls = crate::upstream::tls::server_config(ca, cert, key)?;
        let mut pg = db::connect(&args.postgres).await?;
        db::migrate(&mut pg).await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| LoaderError::Bind { addr: addr.clone(), source })?;
        let local = listener.local_addr().map_err(|source| LoaderError::Bind { addr: addr.clone(), source })?;
        let store = https::PgStore::new(pg, &args.postgres, tokio::runtime::Handle::current());
        println!("loader listening on https://{local}/v1/batches (client certificates from {})", ca.display());
        let _ = std::io::stdout().flush();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let quiet = args.quiet;
        let printer = tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if !quiet || !matches!(e, upstream_sink::SinkEvent::Batch(_)) {
                    upstream_sink::print_event(&e);
                    let _ = std::io::stdout().flush();
                }
            }
        });
        let summary = upstream_sink::serve(listener, tls, store, FaultPlan::default(), Some(tx), cancel).await;
        let _ = printer.await;
        println!("{}", summary.to_string().replacen("upstream-sink summary", "loader summary", 1));
        let _ = std::io::stdout().flush();
        return Ok(());
    }
    let tls = match (&args.ca, &args.cert, &args.key) {
        (Some(ca), Some(cert), Some(key)) => Some(crate::upstream::tls::client_config(ca, cert, key)?),
        _ => None,
    };
    let opts = jetstream::NatsOptions {
        servers: args.nats.clone(),
        stream: args.stream.clone(),
        consumer: args.consumer.clone(),
        subject_prefix: args.subject_prefix.clone(),
        resend_prefix: args.resend_prefix.clone(),
        ack_wait: Duration::from_secs(args.ack_wait),
        tls,
    };
    let totals = jetstream::run(opts, &args.postgres, args.quiet, cancel).await?;
    println!("{totals}");
    let _ = std::io::stdout().flush();
    Ok(())
}

/// `gatewayd loader`: its own runtime, logs on stderr, lines on stdout.
pub fn execute(args: LoaderArgs) -> Result<(), super::CliError> {
    crate::telemetry::init_logging();
    for s in &args.nats {
        crate::upstream::nats::parse_server(s).map_err(|e| LoaderError::Usage(format!("--nats {e}")))?;
    }
    crate::upstream::nats::check_stream(&args.stream).map_err(|e| LoaderError::Usage(format!("--stream {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("loader")
        .build()
        .map_err(LoaderError::Runtime)?;
    let result = runtime.block_on(run(args));
    runtime.shutdown_timeout(Duration::from_secs(1));
    result.map_err(super::CliError::from)
}
