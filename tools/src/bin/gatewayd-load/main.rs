//! `gatewayd-load`: load for gatewayd from simulated MQTT devices.
//!
//! - `gatewayd-load [--mqtt ADDR] …` drives N devices against a running gateway and reports the punches per second
//!   acknowledged as durable (`gw/v1/dev/{id}/ack` with `stored`) and the ack latency p50/p99/p999.
//! - `gatewayd-load --print-config --devices N` prints the devices' `[[device]]` tables for the gateway's configuration
//!   (devices `{prefix}000`, `{prefix}001`, … with secrets `{id}-secret`).
//! - `gatewayd-load e2e …` is the end-to-end benchmark of `docs/benchmarks.md`: it starts the reference receiver and a
//!   gateway with its upstream pointed at it, runs the devices, and then the same workload against two bridged
//!   Mosquitto brokers ([`e2e`]).
//! - `gatewayd-load ageing …` runs simulated years of a site through the gateway and samples its disk every week
//!   ([`ageing`]).
//!
//! - `gatewayd-load fleet …` is the fleet benchmark: the same devices through NATS JetStream and `gatewayd loader`
//!   into PostgreSQL, against the HTTPS path, and the loaders on a backlog ([`fleet`]).
//!
//! ```text
//! gatewayd-load --print-config --devices 100 >> gatewayd.toml
//! gatewayd-load --mqtt 127.0.0.1:1883 --devices 100 --rate 20000 --seconds 10
//! gatewayd-load e2e --devices 100 --rate 20000 --seconds 10
//! ```

mod ageing;
mod devices;
mod e2e;
mod fleet;
mod procs;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use devices::{device_id, device_secret, latency_line, Answer, Fleet, Spec};

#[derive(Parser, Debug)]
#[command(
    about = "Drive simulated MQTT devices against gatewayd and measure durable acks",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The end-to-end benchmark: devices -> gatewayd -> upstream-sink over mTLS, then devices -> Mosquitto A -> TLS
    /// bridge -> Mosquitto B, in one run.
    E2e(e2e::E2eArgs),
    /// Years of a site through the real daemon: the disk over simulated time, with retention (docs/benchmarks.md).
    Ageing(ageing::AgeingArgs),
    /// The fleet benchmark: devices -> gatewayd -> NATS JetStream (3 nodes, R3) -> loaders -> PostgreSQL, against
    /// the HTTPS path to the file receiver, then the loaders on a backlog.
    Fleet(fleet::FleetArgs),
}

/// The workload shared by both modes.
#[derive(clap::Args, Debug, Clone)]
pub struct Workload {
    /// Number of devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Target punches per second over all devices (open loop); 0 = as fast as answers come, keeping `--window`
    /// punches unanswered per device.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Unanswered punches per device when `--rate 0`.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// How long to publish.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Device id prefix.
    #[arg(long, default_value = "load-")]
    prefix: String,
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// The gateway's MQTT listener.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    #[command(flatten)]
    workload: Workload,
    /// Print the `[[device]]` tables for the devices and exit.
    #[arg(long)]
    print_config: bool,
}

/// The `[[device]]` tables of the workload's devices.
pub fn device_tables(w: &Workload) -> String {
    (0..w.devices)
        .map(|i| {
            let id = device_id(&w.prefix, i);
            format!("[[device]]\nid = \"{id}\"\ndriver = \"mqtt\"\nsecret = \"{}\"\n\n", device_secret(&id))
        })
        .collect()
}

fn pacing(w: &Workload) -> String {
    if w.rate > 0 {
        format!("offered {}/s for {} s (open loop)", w.rate, w.seconds)
    } else {
        format!("as fast as answered, {} unanswered per device, for {} s (closed loop)", w.window, w.seconds)
    }
}

async fn run_load(args: LoadArgs) -> anyhow::Result<bool> {
    let w = &args.workload;
    let spec = Spec {
        broker: args.mqtt,
        devices: w.devices,
        rate: w.rate,
        window: w.window,
        seconds: w.seconds,
        prefix: w.prefix.clone(),
        answer: Answer::DurableAck,
        drain: Duration::from_secs(30),
    };
    let fleet = Fleet::connect(spec, Duration::from_secs(60)).await.map_err(anyhow::Error::msg)?;
    let r = fleet.run().await;
    for e in &r.errors {
        eprintln!("device failed: {e}");
    }
    let elapsed = r.last_answer.zip(r.started).map(|(l, s)| (l - s).as_secs_f64()).unwrap_or(0.0);
    println!(
        "devices={} {}: stored {} of {} published in {elapsed:.2}s = {:.0} durable acks/s, rejected {}, failed devices {}",
        w.devices,
        pacing(w),
        r.answered,
        r.published,
        r.answered_per_sec(),
        r.rejected,
        r.failed_devices
    );
    println!("durable ack latency: {}", latency_line(&r.ack_us));
    println!("PUBACK latency: {}", latency_line(&r.puback_us));
    Ok(r.failed_devices == 0 && r.answered + r.rejected == r.published)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.is_none() && cli.load.print_config {
        print!("{}", device_tables(&cli.load.workload));
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gatewayd-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let work = async {
            match cli.command {
                Some(Cmd::E2e(args)) => e2e::run(args).await,
                Some(Cmd::Ageing(args)) => ageing::run(args).await,
                Some(Cmd::Fleet(args)) => fleet::run(args).await,
                None => run_load(cli.load).await,
            }
        };
        // On SIGINT/SIGTERM the run is dropped: its processes are killed and its scratch directory removed.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("gatewayd-load: FAILED (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("gatewayd-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
