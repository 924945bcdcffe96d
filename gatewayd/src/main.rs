//! The `gatewayd` command: parse the command line, set up logging, load the configuration, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatewayd::{app, config, demo, telemetry};

/// jemalloc instead of glibc's allocator: with 100 devices at 20,000 punches/s, ack p99 26 ms instead of 33 ms and peak
/// RSS 220 MB instead of 243 MB (docs/benchmarks.md). glibc spent a fifth of the daemon's CPU in malloc and free.
/// The `system-allocator` feature keeps glibc's, for heap profilers that hook malloc.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit codes (sysexits): 0 clean stop, 64 usage, 78 configuration, 1 runtime failure.
const EXIT_USAGE: u8 = 64;
const EXIT_CONFIG: u8 = 78;
const EXIT_RUNTIME: u8 = 1;

#[derive(Parser, Debug)]
#[command(name = "gatewayd", version, about = "On-prem edge gateway for workforce attendance")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    /// API tokens. Talks to the running daemon over its control socket, else opens the store directly.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token and print it once (only its hash is kept).
    Create {
        #[arg(long, value_enum)]
        role: gatewayd::tokens::Role,
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
enum CertsCommand {
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
struct SinkArgs {
    /// Address to listen on, e.g. 127.0.0.1:8443 (port 0 picks a free port; the address is printed).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// CA that client (gateway) certificates must chain to.
    #[arg(long, value_name = "FILE")]
    ca: PathBuf,
    /// Server certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    cert: PathBuf,
    /// Server private key (PEM).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// JSON-lines file accepted items are appended to (read back at start, so re-sends stay idempotent).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Faults to inject for testing, e.g. "503*3,reset,slow=2000,422" (see the sink module documentation).
    #[arg(long, value_name = "PLAN", value_parser = parse_fault_plan)]
    fail: Option<gatewayd::sink::faults::FaultPlan>,
    /// Print only the address and the final summary, not a line per batch.
    #[arg(long)]
    quiet: bool,
}

fn parse_fault_plan(text: &str) -> Result<gatewayd::sink::faults::FaultPlan, String> {
    gatewayd::sink::faults::FaultPlan::parse(text)
}

#[derive(clap::Args, Debug)]
struct ConfigArg {
    /// Configuration file [default: $GATEWAYD_CONFIG, else /etc/gatewayd/gatewayd.toml]
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> PathBuf {
        self.config
            .clone()
            .or_else(|| std::env::var_os("GATEWAYD_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Validate(arg) => validate(&arg.path()),
        Command::Run(arg) => run(&arg.path()),
        Command::Demo => {
            telemetry::init_logging();
            block_on(demo::run())
        }
        Command::Certs(CertsCommand::Dev { out, client_name, days }) => certs_dev(&out, &client_name, days),
        Command::UpstreamSink(args) => upstream_sink(args),
        Command::Token(cmd) => token(cmd),
    }
}

fn token(cmd: TokenCommand) -> ExitCode {
    use gatewayd::app::control::Request;
    let (config_arg, req) = match cmd {
        TokenCommand::Create { role, departments, employee, config } => {
            let new = gatewayd::tokens::NewToken { role, departments, employee };
            if let Err(e) = new.validate() {
                eprintln!("gatewayd token create: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
            let gatewayd::tokens::NewToken { role, departments, employee } = new;
            (config, Request::TokenCreate { role, departments, employee })
        }
        TokenCommand::List { config } => (config, Request::TokenList),
        TokenCommand::Revoke { id, config } => (config, Request::TokenRevoke { id }),
    };
    let config = match app::load_config(&config_arg.path()) {
        Ok(c) => c,
        Err(problems) => {
            print_problems(&problems);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let resp = match gatewayd::app::control::run_cli(&config.gateway.data_dir, config.store.cache_mb, req.clone()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gatewayd token: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let result = match (resp.ok, resp.result) {
        (true, Some(r)) => r,
        (_, _) => {
            eprintln!("gatewayd token: {}", resp.error.unwrap_or_else(|| "no answer".into()));
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match req {
        Request::TokenCreate { .. } => {
            println!("{}", result["token"].as_str().unwrap_or_default());
            eprintln!("token id {} created; the token is shown only this once", result["record"]["id"]);
        }
        Request::TokenList => {
            for t in result.as_array().into_iter().flatten() {
                let revoked = if t["revoked_ms"].is_null() { "" } else { " revoked" };
                println!(
                    "{} {} departments={} employee={}{revoked}",
                    t["id"], t["role"], t["departments"], t["employee"]
                );
            }
        }
        Request::TokenRevoke { id } => println!("token {id} revoked"),
    }
    ExitCode::SUCCESS
}

fn certs_dev(out: &std::path::Path, client_name: &str, days: i32) -> ExitCode {
    match gatewayd::certs::write_dev_set(out, client_name, days) {
        Ok(set) => {
            println!("wrote a development CA and certificates (valid {days} days) to {}:", out.display());
            for (what, path) in [
                ("CA certificate (trust anchor)", &set.ca),
                ("CA key (keep private)", &set.ca_key),
                ("server certificate (localhost, 127.0.0.1, ::1)", &set.server_cert),
                ("server key", &set.server_key),
                (&format!("client certificate (CN={client_name})"), &set.client_cert),
                ("client key", &set.client_key),
            ] {
                println!("  {:<48} {}", what, path.display());
            }
            println!("\ntry it:\n  gatewayd upstream-sink --listen 127.0.0.1:8443 --ca {ca} --cert {sc} --key {sk} --out received.jsonl",
                ca = set.ca.display(), sc = set.server_cert.display(), sk = set.server_key.display());
            println!("and in gatewayd.toml:\n  [upstream]\n  url = \"https://localhost:8443\"\n  ca = \"{ca}\"\n  cert = \"{cc}\"\n  key = \"{ck}\"",
                ca = set.ca.display(), cc = set.client_cert.display(), ck = set.client_key.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatewayd certs dev: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn upstream_sink(args: SinkArgs) -> ExitCode {
    telemetry::init_logging();
    let opts = gatewayd::sink::SinkOptions {
        listen: args.listen,
        ca: args.ca,
        cert: args.cert,
        key: args.key,
        out: args.out,
        faults: args.fail.unwrap_or_default(),
        quiet: args.quiet,
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("upstream-sink")
        .build()
        .map_err(|e| e.to_string())
        .map(|rt| rt.block_on(gatewayd::sink::run(opts)));
    match result {
        Ok(Ok(_)) => ExitCode::SUCCESS,
        Ok(Err(e @ gatewayd::sink::SinkError::Tls(_))) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Ok(Err(e)) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_RUNTIME)
        }
        Err(e) => {
            eprintln!("gatewayd upstream-sink: cannot start the runtime: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn print_problems(problems: &[config::Problem]) {
    for p in problems {
        eprintln!("{p}");
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    match app::load_config(path) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            print_problems(&problems);
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match app::load_config(path) {
        Ok(c) => c,
        Err(problems) => {
            print_problems(&problems);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init_logging();
    let path = path.to_owned();
    block_on(async move {
        let running = app::start(config, path).await?;
        running.run_until_signalled().await
    })
}

fn block_on<E: std::fmt::Display>(fut: impl std::future::Future<Output = Result<(), E>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("gatewayd").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gatewayd: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let result = runtime.block_on(fut);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gatewayd stopped with an error");
            eprintln!("gatewayd: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
