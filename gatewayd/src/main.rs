//! The `gatewayd` command: parse the command line, set up logging, load the configuration, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatewayd::{app, config, demo, telemetry};

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
