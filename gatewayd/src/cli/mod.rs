//! The `gatewayd` command line: the clap definitions, one module per subcommand, and the error every subcommand
//! returns, which `main` prints and turns into the exit code.
//!
//! | subcommand            | module            |
//! |-----------------------|-------------------|
//! | `run`                 | [`run`]           |
//! | `validate`            | [`validate`]      |
//! | `token …`             | [`token`]         |
//! | `certs dev`           | [`certs`]         |
//! | `demo`                | [`demo`]          |
//! | `upstream-sink`       | [`upstream_sink`] |
//! | `loader`              | [`loader`]        |
//!
//! Exit codes (sysexits): 0 clean stop, 64 usage, 78 configuration, 1 runtime failure.

pub mod certs;
pub mod demo;
pub mod loader;
pub mod run;
pub mod token;
pub mod upstream_sink;
pub mod validate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Problem};

/// Bad command-line usage.
pub const EXIT_USAGE: u8 = 64;
/// A configuration problem.
pub const EXIT_CONFIG: u8 = 78;
/// A failure at run time.
pub const EXIT_RUNTIME: u8 = 1;

#[derive(Parser, Debug)]
#[command(name = "gatewayd", version, about = "On-prem edge gateway for workforce attendance")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway daemon.
    Run(ConfigArg),
    /// Check the configuration and every file it references; print `ok` or one line per problem.
    Validate(ConfigArg),
    /// A self-contained tour: temporary data dir, simulated devices, printed punches. Stops on Ctrl-C.
    Demo,
    /// Certificates for trying mutual TLS.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// The reference receiver of the upstream protocol: verifies client certificates, decodes batches, is idempotent,
    /// appends what it accepted as JSON lines. Prints one line per batch and a summary on Ctrl-C/SIGTERM.
    UpstreamSink(SinkArgs),
    /// Loads upstream batches into PostgreSQL: from a NATS JetStream stream (a durable pull consumer several loaders
    /// share) or as the HTTPS receiver. Prints one line per batch and a summary on Ctrl-C/SIGTERM.
    Loader(loader::LoaderArgs),
    /// API tokens. Talks to the running daemon over its control socket, else opens the store directly.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print it once (only its hash is kept).
    Create {
        #[arg(long, value_enum)]
        role: crate::tokens::Role,
        /// A department a manager token sees and decides for (repeat for several).
        #[arg(long = "department", value_name = "ID")]
        departments: Vec<String>,
        /// The employee an employee token belongs to.
        #[arg(long, value_name = "ID")]
        employee: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List tokens (ids, roles, scopes; never the tokens themselves).
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke a token by id.
    Revoke {
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// A development CA, a server certificate (localhost, 127.0.0.1, ::1) and a client certificate.
    Dev {
        /// Directory to write ca.pem, ca.key, server.pem, server.key, client.pem, client.key into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Common name of the client certificate (e.g. the gateway id).
        #[arg(long, default_value = "gatewayd-dev-client")]
        client_name: String,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i32).range(1..=36500))]
        days: i32,
    },
}

#[derive(clap::Args, Debug)]
pub struct SinkArgs {
    /// Address to listen on, e.g. 127.0.0.1:8443 (port 0 picks a free port; the address is printed).
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// CA that client (gateway) certificates must chain to.
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// Server certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Server private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// JSON-lines file accepted items are appended to (read back at start, so re-sends stay idempotent).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Faults to inject for testing, e.g. "503*3,reset,slow=2000,422" (see the sink module documentation).
    #[arg(long, value_name = "PLAN", value_parser = upstream_sink::faults::FaultPlan::parse)]
    pub fail: Option<upstream_sink::faults::FaultPlan>,
    /// Print only the address and the final summary, not a line per batch.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct ConfigArg {
    /// Configuration file [default: $GATEWAYD_CONFIG, else /etc/gatewayd/gatewayd.toml]
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    /// `--config`, else `$GATEWAYD_CONFIG`, else the packaged path.
    pub fn path(&self) -> PathBuf {
        self.config
            .clone()
            .or_else(|| std::env::var_os("GATEWAYD_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
    }
}

/// Why a subcommand failed. `main` prints it on stderr as it displays and exits with [`CliError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Arguments clap accepted but the command refuses (`token create` with an invalid scope).
    #[error("gatewayd token create: {0}")]
    TokenUsage(#[source] crate::tokens::TokenError),
    /// The configuration file or a file it references: one `FILE:LINE: key: problem` line each.
    #[error("{}", lines(.0))]
    Config(Vec<Problem>),
    /// A token request that did not succeed: the control socket or the store failed, or the daemon refused it.
    #[error("gatewayd token: {0}")]
    Token(String),
    #[error("gatewayd certs dev: {0}")]
    Certs(#[from] certs::CertError),
    /// The reference receiver failed; its TLS material is configuration (exit 78), anything else a runtime failure.
    #[error("{0}")]
    Sink(#[from] upstream_sink::SinkError),
    #[error("gatewayd upstream-sink: cannot start the runtime: {0}")]
    SinkRuntime(#[source] std::io::Error),
    #[error("gatewayd: cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("gatewayd: {0}")]
    App(#[from] crate::app::AppError),
    #[error("gatewayd: {0}")]
    Demo(#[from] demo::DemoError),
    #[error("{0}")]
    Loader(#[from] loader::LoaderError),
}

fn lines(problems: &[Problem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

impl CliError {
    /// The sysexits code of this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::TokenUsage(_) | CliError::Loader(loader::LoaderError::Usage(_)) => EXIT_USAGE,
            CliError::Loader(loader::LoaderError::Tls(_)) => EXIT_CONFIG,
            CliError::Config(_) | CliError::Sink(upstream_sink::SinkError::Tls(_)) => EXIT_CONFIG,
            CliError::Token(_)
            | CliError::Certs(_)
            | CliError::Sink(_)
            | CliError::SinkRuntime(_)
            | CliError::Runtime(_)
            | CliError::App(_)
            | CliError::Demo(_)
            | CliError::Loader(_) => EXIT_RUNTIME,
        }
    }
}

/// Runs `fut` on the daemon's multi-threaded runtime and gives the runtime a second to stop its tasks afterwards.
/// A failure is logged as well as returned (the log may go to the journal, the returned error to the terminal).
pub fn block_on<E>(fut: impl std::future::Future<Output = Result<(), E>>) -> Result<(), CliError>
where
    E: std::fmt::Display,
    CliError: From<E>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gatewayd")
        .build()
        .map_err(CliError::Runtime)?;
    let result = runtime.block_on(fut);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result.map_err(|e| {
        tracing::error!(error = %e, "gatewayd stopped with an error");
        CliError::from(e)
    })
}
