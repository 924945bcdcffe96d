//! The `gatewayd` command: parse the command line, dispatch to the subcommand ([`gatewayd::cli`]), exit with its code.

use std::process::ExitCode;

use clap::Parser;
use gatewayd::cli::{self, CertsCommand, Cli, Command, EXIT_USAGE};

/// jemalloc instead of glibc's allocator: with 100 devices at 20,000 punches/s, ack p99 26 ms instead of 33 ms and peak
/// RSS 220 MB instead of 243 MB (docs/benchmarks.md). glibc spent a fifth of the daemon's CPU in malloc and free.
/// The `system-allocator` feature keeps glibc's, for heap profilers that hook malloc.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print on stdout and succeed; a usage error prints on stderr.
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Run(arg) => cli::run::execute(&arg.path()),
        Command::Validate(arg) => cli::validate::execute(&arg.path()),
        Command::Demo => cli::demo::execute(),
        Command::Certs(CertsCommand::Dev { out, client_name, days }) => cli::certs::execute(&out, &client_name, days),
        Command::UpstreamSink(args) => cli::upstream_sink::execute(args),
        Command::Loader(args) => cli::loader::execute(args),
        Command::Token(cmd) => cli::token::execute(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
