//! `gatewayd-load`: drives N simulated MQTT devices against a running gateway at a target rate and reports how many
//! punches per second were acknowledged as durable (`gw/v1/dev/{id}/ack` with `stored`) and the ack latency p50/p99
//! (from publish to ack).
//!
//! The devices are `{prefix}000`, `{prefix}001`, … with secrets `{id}-secret`; `--print-config` prints their
//! `[[device]]` tables to append to the gateway's configuration.
//!
//! ```text
//! gatewayd-load --print-config --devices 100 >> gatewayd.toml
//! gatewayd-load --mqtt 127.0.0.1:1883 --devices 100 --rate 20000 --seconds 10
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
#[command(about = "Drive simulated MQTT devices against gatewayd and measure durable acks")]
struct Args {
    /// The gateway's MQTT listener.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    /// Number of devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Target punches per second, over all devices.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// How long to publish.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Device id prefix.
    #[arg(long, default_value = "load-")]
    prefix: String,
    /// Print the `[[device]]` tables for the devices and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Default)]
struct Tally {
    stored: u64,
    rejected: u64,
    latencies_us: Vec<u64>,
}

fn device_id(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:03}")
}

async fn run_device(args: Arc<Args>, i: usize, tally: Arc<Mutex<Tally>>, start_at: Instant) -> Result<(), String> {
    let id = device_id(&args.prefix, i);
    let mut o = MqttOptions::new(&id, args.mqtt.ip().to_string(), args.mqtt.port());
    o.set_credentials(&id, format!("{id}-secret"));
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(1000);
    let (client, mut events) = AsyncClient::new(o, 4096);
    events.network_options.set_connection_timeout(30);
    // Connect and subscribe before the clock starts.
    loop {
        match events.poll().await.map_err(|e| format!("{id}: {e}"))? {
            Event::Incoming(Packet::ConnAck(_)) => break,
            _ => continue,
        }
    }
    client.subscribe(format!("gw/v1/dev/{id}/ack"), QoS::AtLeastOnce).await.map_err(|e| e.to_string())?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.map_err(|e| format!("{id}: {e}"))? {
            break;
        }
    }
    tokio::time::sleep_until(start_at.into()).await;

    let per_device = (args.rate * args.seconds) / args.devices as u64;
    let interval = Duration::from_secs_f64(args.seconds as f64 / per_device.max(1) as f64);
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut next_seq = 1u64;
    let mut acked = 0u64;
    let topic = format!("gw/v1/dev/{id}/punch");
    let deadline = start_at + Duration::from_secs(args.seconds) + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut local = Tally::default();
    while acked < per_device && Instant::now() < deadline {
        tokio::select! {
            _ = tick.tick() => {
                // Publish everything the schedule says is due by now.
                let due = ((start_at.elapsed().as_secs_f64() / interval.as_secs_f64()) as u64 + 1).min(per_device);
                while next_seq <= due {
                    let payload = format!(
                        r#"{{"seq":{next_seq},"time":"{}","method":"face","employee":"E{}"}}"#,
                        jiff::Timestamp::now(),
                        next_seq % 500
                    );
                    sent.insert(next_seq, Instant::now());
                    if client.try_publish(&topic, QoS::AtLeastOnce, false, payload).is_err() {
                        sent.remove(&next_seq);
                        break;
                    }
                    next_seq += 1;
                }
            }
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let ack: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                    let Some(seq) = ack["seq"].as_u64() else { continue };
                    if let Some(t) = sent.remove(&seq) {
                        acked += 1;
                        if ack["status"] == "stored" {
                            local.stored += 1;
                            local.latencies_us.push(t.elapsed().as_micros() as u64);
                        } else {
                            local.rejected += 1;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(format!("{id}: {e}")),
            }
        }
    }
    let mut t = tally.lock().await;
    t.stored += local.stored;
    t.rejected += local.rejected;
    t.latencies_us.extend(local.latencies_us);
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    if args.print_config {
        for i in 0..args.devices {
            let id = device_id(&args.prefix, i);
            println!("[[device]]\nid = \"{id}\"\ndriver = \"mqtt\"\nsecret = \"{id}-secret\"\n");
        }
        return Ok(());
    }
    anyhow::ensure!(args.devices > 0 && args.rate > 0 && args.seconds > 0, "devices, rate and seconds must be > 0");
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start_at = Instant::now() + Duration::from_secs(2) + Duration::from_millis(20 * args.devices as u64);
    let tasks: Vec<_> =
        (0..args.devices).map(|i| tokio::spawn(run_device(args.clone(), i, tally.clone(), start_at))).collect();
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                errors += 1;
                eprintln!("device failed: {e}");
            }
            Err(e) => {
                errors += 1;
                eprintln!("device task failed: {e}");
            }
        }
    }
    let elapsed = start_at.elapsed().as_secs_f64();
    let mut t = tally.lock().await;
    t.latencies_us.sort_unstable();
    let target = (args.rate * args.seconds) / args.devices as u64 * args.devices as u64;
    println!(
        "devices={} target={}/s for {}s: stored {} of {} in {:.2}s = {:.0} durable acks/s, rejected {}, failed devices {}",
        args.devices,
        args.rate,
        args.seconds,
        t.stored,
        target,
        elapsed,
        t.stored as f64 / elapsed,
        t.rejected,
        errors
    );
    println!(
        "ack latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&t.latencies_us, 0.50),
        percentile(&t.latencies_us, 0.99),
        percentile(&t.latencies_us, 1.0)
    );
    Ok(())
}
