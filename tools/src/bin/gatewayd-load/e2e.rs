//! `gatewayd-load e2e`: the end-to-end benchmark (issue 8), in one run on one machine.
//!
//! **gatewayd**: `gatewayd upstream-sink` (the reference receiver, mutual TLS, every batch `fdatasync`ed before its
//! answer) and `gatewayd run` with its `[upstream]` pointed at it (development certificates from
//! [`gatewayd::cli::certs`]); N devices publish to the gateway's MQTT listener and wait for the durable `stored` acks;
//! the punches go through the store, the engine and the outbox to the receiver, whose per-batch lines are counted.
//!
//! **bridge**: what a user would assemble instead — Mosquitto A (persistence on, device passwords and per-device ACL)
//! bridged with QoS 1 over TLS with a client certificate to Mosquitto B (persistence on, client certificate required);
//! the same devices publish QoS 1 to A and count PUBACKs; a subscriber on B counts what arrives.
//!
//! Readiness: both brokers and the gateway report `READY=1` on `NOTIFY_SOCKET`; the receiver prints its address; the
//! bridge is up when B publishes the bridge's `$SYS/broker/connection/…/state` = `1`. Nothing waits on a timer.
//!
//! Every process is stopped (SIGTERM; SIGKILL on drop) and the scratch directory removed, also on failure or Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;
use tokio::sync::watch;

use crate::devices::{device_id, device_secret, latency_line, Answer, Fleet, Report, Spec};
use crate::procs::{disk_usage, free_port, Proc, ProcSample, Scratch};
use crate::{device_tables, pacing, Workload};

#[derive(clap::Args, Debug)]
pub struct E2eArgs {
    #[command(flatten)]
    workload: Workload,
    /// The `gatewayd` binary (default: next to this one).
    #[arg(long)]
    gatewayd: Option<PathBuf>,
    /// Only the gatewayd side (no Mosquitto comparison).
    #[arg(long)]
    no_bridge: bool,
    /// Only the Mosquitto side.
    #[arg(long, conflicts_with = "no_bridge")]
    only_bridge: bool,
    /// Keep the scratch directory (configs, logs, data) for inspection.
    #[arg(long)]
    keep: bool,
    /// Most seconds to wait, after publishing stopped, for the last answers and deliveries.
    #[arg(long, default_value_t = 60)]
    drain: u64,
}

/// Deliveries counted at a receiver, and when the last one arrived.
#[derive(Clone, Copy, Debug, Default)]
struct Delivered {
    count: u64,
    last: Option<Instant>,
}

/// The figures of one side.
pub struct Side {
    name: &'static str,
    report: Report,
    delivered: Delivered,
    /// Delivered within the publishing window.
    delivered_in_window: u64,
    processes: Vec<(&'static str, ProcStats)>,
    disk_bytes: u64,
    ok: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct ProcStats {
    idle_rss: u64,
    connected_rss: u64,
    cpu_secs: f64,
    hwm: u64,
}

impl Side {
    pub fn delivered_per_sec(&self) -> f64 {
        match (self.report.started, self.delivered.last) {
            (Some(s), Some(l)) if l > s => self.delivered.count as f64 / (l - s).as_secs_f64(),
            _ => 0.0,
        }
    }

    pub fn print(&self, w: &Workload) {
        let r = &self.report;
        let span = self.report.started.zip(self.delivered.last).map(|(s, l)| (l - s).as_secs_f64()).unwrap_or(0.0);
        let what = match self.name {
            "gatewayd" => "durable acks",
            _ => "PUBACKs",
        };
        println!("\n== {} ==", self.name);
        println!(
            "devices {}, {}: published {}, {what} {} (rejected {}, failed devices {})",
            w.devices,
            pacing(w),
            r.published,
            r.answered,
            r.rejected,
            r.failed_devices
        );
        for e in r.errors.iter().take(5) {
            println!("  device error: {e}");
        }
        println!(
            "delivered at the receiver: {} in {span:.2} s = {:.0} punches/s (within the {} s publishing window: {} = {:.0}/s)",
            self.delivered.count,
            self.delivered_per_sec(),
            w.seconds,
            self.delivered_in_window,
            self.delivered_in_window as f64 / w.seconds as f64
        );
        if self.name == "gatewayd" {
            println!("device durable-ack latency (publish -> stored ack): {}", latency_line(&r.ack_us));
        }
        println!("device PUBACK latency (publish -> PUBACK): {}", latency_line(&r.puback_us));
        let mb = |b: u64| b as f64 / 1e6;
        for (name, p) in &self.processes {
            println!(
                "{name}: CPU {:.2} s = {:.0}% of one core over the run, {:.1} µs per punch; RSS idle {:.1} MB, with \
                 devices connected {:.1} MB, peak (VmHWM) {:.1} MB",
                p.cpu_secs,
                if span > 0.0 { p.cpu_secs / span * 100.0 } else { 0.0 },
                if self.delivered.count > 0 { p.cpu_secs * 1e6 / self.delivered.count as f64 } else { 0.0 },
                mb(p.idle_rss),
                mb(p.connected_rss),
                mb(p.hwm)
            );
        }
        println!(
            "disk after a clean stop: {:.1} MB = {:.0} bytes per punch",
            mb(self.disk_bytes),
            if self.delivered.count > 0 { self.disk_bytes as f64 / self.delivered.count as f64 } else { 0.0 }
        );
    }
}

pub async fn run(args: E2eArgs) -> anyhow::Result<bool> {
    let w = args.workload.clone();
    anyhow::ensure!(w.devices > 0 && w.seconds > 0 && (w.rate > 0 || w.window > 0), "nothing to do");
    let scratch = Scratch::new(args.keep)?;
    println!("end-to-end benchmark: {} MQTT devices, {}; load average {}", w.devices, pacing(&w), load_average());
    let mut sides = Vec::new();
    if !args.only_bridge {
        let gatewayd = match &args.gatewayd {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("gatewayd"),
        };
        anyhow::ensure!(
            gatewayd.is_file(),
            "{} not found (build it: cargo build --release -p gatewayd --bins, or pass --gatewayd)",
            gatewayd.display()
        );
        let side = gateway_side(args.drain, &w, &scratch.path.join("gatewayd"), &gatewayd).await?;
        side.print(&w);
        sides.push(side);
    }
    if !args.no_bridge {
        let side = bridge_side(&args, &w, &scratch.path.join("bridge")).await?;
        side.print(&w);
        sides.push(side);
    }
    if let [gw, bridge] = &sides[..] {
        println!(
            "\nratio gatewayd / bridge, punches/s delivered at the receiver: {:.0} / {:.0} = {:.2}",
            gw.delivered_per_sec(),
            bridge.delivered_per_sec(),
            gw.delivered_per_sec() / bridge.delivered_per_sec()
        );
    }
    println!("load average at the end: {}", load_average());
    Ok(sides.iter().all(|s| s.ok))
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Waits until `rx` counts at least `n` deliveries, or `limit` passes; returns what it counted.
async fn wait_delivered(rx: &mut watch::Receiver<Delivered>, n: u64, limit: Duration) -> Delivered {
    let _ = tokio::time::timeout(limit, rx.wait_for(|d| d.count >= n)).await;
    *rx.borrow()
}

fn in_window(marks: &std::sync::Mutex<Vec<(Instant, u64)>>, until: Instant) -> u64 {
    marks.lock().map(|m| m.iter().filter(|(t, _)| *t <= until).map(|(_, n)| n).sum()).unwrap_or(0)
}

pub fn spec(w: &Workload, broker: std::net::SocketAddr, answer: Answer, drain: u64) -> Spec {
    Spec {
        broker,
        devices: w.devices,
        rate: w.rate,
        window: w.window,
        seconds: w.seconds,
        prefix: w.prefix.clone(),
        answer,
        drain: Duration::from_secs(drain),
    }
}

/// The gatewayd side: devices -> gatewayd -> `upstream-sink` over mTLS; `drain` seconds at most for the last deliveries.
pub async fn gateway_side(drain: u64, w: &Workload, dir: &Path, gatewayd: &Path) -> anyhow::Result<Side> {
    std::fs::create_dir_all(dir)?;
    let certs = gatewayd::cli::certs::write_dev_set(&dir.join("certs"), "bench-gw", 365)?;

    // The receiver; its stdout says where it listens, then one line per batch.
    let (mut sink, addr, mut lines) = start_receiver(gatewayd, dir, &certs, &dir.join("received.jsonl")).await?;
    let port = addr.rsplit(':').next().unwrap_or_default().to_owned();
    let (delivered_tx, mut delivered) = watch::channel(Delivered::default());
    let marks = Arc::new(std::sync::Mutex::new(Vec::<(Instant, u64)>::new()));
    let summary = Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let marks = marks.clone();
        let summary = summary.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                // "batch 7 from bench-gw: 5000 punches (0 duplicate), 0 records (0 stale)…"
                if let Some(n) = line
                    .strip_prefix("batch ")
                    .and_then(|l| l.split(": ").nth(1))
                    .and_then(|l| l.split(' ').next())
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    let now = Instant::now();
                    if let Ok(mut m) = marks.lock() {
                        m.push((now, n));
                    }
                    delivered_tx.send_modify(|d| {
                        d.count += n;
                        d.last = Some(now);
                    });
                } else if line.starts_with("upstream-sink summary") {
                    if let Ok(mut s) = summary.lock() {
                        *s = line;
                    }
                }
            }
        })
    };

    let config = format!(
        "[gateway]\nid = \"bench-gw\"\ndata_dir = \"{data}\"\ntimezone = \"Asia/Shanghai\"\nallow_root = true\n\n\
         [api]\nlisten = \"127.0.0.1:0\"\n\n[mqtt]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"https://localhost:{port}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\n{devices}",
        data = dir.join("data").display(),
        ca = certs.ca.display(),
        cert = certs.client_cert.display(),
        key = certs.client_key.display(),
        devices = device_tables(w),
    );
    let config_path = dir.join("gatewayd.toml");
    write(&config_path, &config)?;
    let mut cmd = Command::new(gatewayd);
    cmd.args(["run", "--config"]).arg(&config_path).env("RUST_LOG", "warn");
    let mut gw = Proc::start_notify("gatewayd", cmd, dir, Duration::from_secs(60)).await?;
    let idle = gw.sample()?;
    let listeners: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("data").join("listeners.json")).context("reading the gateway's listeners.json")?,
    )
    .context("listeners.json")?;
    let mqtt = listeners["mqtt"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("listeners.json names no mqtt listener: {listeners}"))?;

    let fleet = Fleet::connect(spec(w, mqtt, Answer::DurableAck, drain), Duration::from_secs(60))
        .await
        .map_err(|e| anyhow!("devices cannot connect to the gateway: {e}"))?;
    let connected = gw.sample()?;
    let report = fleet.run().await;
    let started = report.started.unwrap_or_else(Instant::now);
    let got = wait_delivered(&mut delivered, report.answered, Duration::from_secs(drain)).await;
    let end = gw.sample()?;
    gw.stop(Duration::from_secs(30)).await?;
    let disk_bytes = disk_usage(&dir.join("data"));
    print_footprint(&dir.join("data").join("store"), report.answered);
    sink.stop(Duration::from_secs(30)).await?;
    let _ = reader.await;
    let summary = summary.lock().map(|s| s.clone()).unwrap_or_default();

    let mut ok = true;
    if report.failed_devices > 0 {
        eprintln!("gatewayd side: {} devices failed", report.failed_devices);
        ok = false;
    }
    if report.answered + report.rejected < report.published {
        eprintln!(
            "gatewayd side: {} of {} punches got no ack within {} s after publishing stopped",
            report.published - report.answered - report.rejected,
            report.published,
            drain
        );
        ok = false;
    }
    if got.count < report.answered {
        eprintln!(
            "gatewayd side: only {} of the {} durably acknowledged punches reached the receiver within {} s",
            got.count, report.answered, drain
        );
        ok = false;
    }
    println!("\n{summary}");
    Ok(Side {
        name: "gatewayd",
        delivered_in_window: in_window(&marks, started + Duration::from_secs(w.seconds)),
        report,
        delivered: got,
        processes: vec![(
            "gatewayd",
            ProcStats {
                idle_rss: idle.rss,
                connected_rss: connected.rss,
                cpu_secs: end.cpu_secs - connected.cpu_secs,
                hwm: end.hwm,
            },
        )],
        disk_bytes,
        ok,
    })
}

/// Finds `name` on PATH or in the sbin directories.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The mosquitto binaries, installed with apt-get when missing.
fn mosquitto() -> anyhow::Result<(PathBuf, PathBuf)> {
    let found = || find_program("mosquitto").zip(find_program("mosquitto_passwd"));
    if let Some(found) = found() {
        return Ok(found);
    }
    println!("mosquitto is not installed: apt-get install -y mosquitto");
    let root = nix::unistd::geteuid().is_root();
    let mut cmd = if root { std::process::Command::new("apt-get") } else { std::process::Command::new("sudo") };
    if !root {
        cmd.args(["-n", "apt-get"]);
    }
    let status = cmd
        .args(["install", "-y", "--no-install-recommends", "mosquitto"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install mosquitto failed ({status}); install it, or run with --no-bridge");
    }
    found().ok_or_else(|| anyhow!("mosquitto is still not found after apt-get install"))
}

/// A subscriber on B: counts punches, and says when the bridge from A is connected.
async fn count_on_b(
    port: u16,
    delivered: watch::Sender<Delivered>,
    bridge_up: watch::Sender<bool>,
    marks: Arc<std::sync::Mutex<Vec<(Instant, u64)>>>,
) -> anyhow::Result<()> {
    let mut o = MqttOptions::new("bench-counter", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(o, 64);
    client.subscribe("gw/v1/dev/+/punch", QoS::AtLeastOnce).await?;
    client.subscribe("$SYS/broker/connection/+/state", QoS::AtMostOnce).await?;
    // Batch the count updates so the watch is not the bottleneck of the count.
    let mut pending = 0u64;
    loop {
        let event = match tokio::time::timeout(Duration::from_millis(5), events.poll()).await {
            Ok(e) => Some(e.context("subscriber on mosquitto B")?),
            Err(_) => None,
        };
        if let Some(Event::Incoming(Packet::Publish(p))) = &event {
            if p.topic.starts_with("$SYS/") {
                bridge_up.send_replace(&p.payload[..] == b"1");
            } else {
                pending += 1;
            }
        }
        if pending > 0 && (event.is_none() || pending >= 256) {
            let now = Instant::now();
            if let Ok(mut m) = marks.lock() {
                m.push((now, pending));
            }
            delivered.send_modify(|d| {
                d.count += pending;
                d.last = Some(now);
            });
            pending = 0;
        }
    }
}

async fn bridge_side(args: &E2eArgs, w: &Workload, dir: &Path) -> anyhow::Result<Side> {
    let (mosquitto, mosquitto_passwd) = mosquitto()?;
    let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
    for d in [&a_dir, &b_dir, &a_dir.join("persist"), &b_dir.join("persist")] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // Certificates: B's server certificate, A's bridge client certificate, one CA.
    let pki = gatewayd::cli::certs::DevPki::new("bench CA")?;
    let server = pki.server(&["localhost", "127.0.0.1"], gatewayd::cli::certs::Validity::days(365))?;
    let client = pki.client("bridge-a", gatewayd::cli::certs::Validity::days(365))?;
    let ca = dir.join("ca.pem");
    gatewayd::cli::certs::write_file(&ca, pki.ca_pem(), false)?;
    gatewayd::cli::certs::write_file(&b_dir.join("server.pem"), &server.cert_pem, false)?;
    gatewayd::cli::certs::write_file(&b_dir.join("server.key"), &server.key_pem, true)?;
    gatewayd::cli::certs::write_file(&a_dir.join("bridge.pem"), &client.cert_pem, false)?;
    gatewayd::cli::certs::write_file(&a_dir.join("bridge.key"), &client.key_pem, true)?;
    // Device passwords (hashed by mosquitto_passwd -U) and a per-device ACL on A.
    let passwd = a_dir.join("passwd");
    let plain: String = (0..w.devices)
        .map(|i| {
            let id = device_id(&w.prefix, i);
            format!("{id}:{}\n", device_secret(&id))
        })
        .collect();
    write(&passwd, &plain)?;
    let status = std::process::Command::new(&mosquitto_passwd).arg("-U").arg(&passwd).status()?;
    anyhow::ensure!(status.success(), "mosquitto_passwd -U failed ({status})");
    write(
        &a_dir.join("acl"),
        "pattern write gw/v1/dev/%u/punch\npattern write gw/v1/dev/%u/status\npattern read gw/v1/dev/%u/ack\n",
    )?;
    // Run as the current user (when root, mosquitto would otherwise switch to the `mosquitto` user, which cannot read
    // the scratch directory).
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .ok_or_else(|| anyhow!("cannot name the current user"))?;
    let (a_port, b_tls, b_plain) = (free_port()?, free_port()?, free_port()?);
    let common = format!(
        "user {user}\nper_listener_settings false\npersistence true\nautosave_interval 1800\n\
         max_queued_messages 0\nmax_inflight_messages 20\nset_tcp_nodelay true\nlog_dest stderr\n\
         log_type error\nlog_type warning\nconnection_messages false\n"
    );
    let b_conf = format!(
        "{common}persistence_location {persist}/\nallow_anonymous true\n\
         # the bridge from A: TLS, client certificate required\n\
         listener {b_tls} 127.0.0.1\ncafile {ca}\ncertfile {dir}/server.pem\nkeyfile {dir}/server.key\n\
         require_certificate true\nuse_identity_as_username true\n\
         # the counting subscriber (loopback)\n\
         listener {b_plain} 127.0.0.1\n",
        persist = b_dir.join("persist").display(),
        ca = ca.display(),
        dir = b_dir.display(),
    );
    let a_conf = format!(
        "{common}persistence_location {persist}/\nallow_anonymous false\npassword_file {dir}/passwd\n\
         acl_file {dir}/acl\nlistener {a_port} 127.0.0.1\n\n\
         connection bridge-to-b\naddress 127.0.0.1:{b_tls}\nremote_clientid bridge-a\ncleansession false\n\
         bridge_protocol_version mqttv311\ntopic gw/v1/dev/+/punch out 1\n\
         bridge_cafile {ca}\nbridge_certfile {dir}/bridge.pem\nbridge_keyfile {dir}/bridge.key\n",
        persist = a_dir.join("persist").display(),
        dir = a_dir.display(),
        ca = ca.display(),
    );
    write(&b_dir.join("mosquitto.conf"), &b_conf)?;
    write(&a_dir.join("mosquitto.conf"), &a_conf)?;

    let mut cmd = Command::new(&mosquitto);
    cmd.arg("-c").arg(b_dir.join("mosquitto.conf"));
    let mut b = Proc::start_notify("mosquitto-b", cmd, &b_dir, Duration::from_secs(30)).await?;
    let (delivered_tx, mut delivered) = watch::channel(Delivered::default());
    let (bridge_tx, mut bridge_up) = watch::channel(false);
    let marks = Arc::new(std::sync::Mutex::new(Vec::<(Instant, u64)>::new()));
    let counter = tokio::spawn(count_on_b(b_plain, delivered_tx, bridge_tx, marks.clone()));
    let b_idle = b.sample()?;

    let mut cmd = Command::new(&mosquitto);
    cmd.arg("-c").arg(a_dir.join("mosquitto.conf"));
    let mut a = Proc::start_notify("mosquitto-a", cmd, &a_dir, Duration::from_secs(30)).await?;
    let a_idle = a.sample()?;
    let up = tokio::time::timeout(Duration::from_secs(30), bridge_up.wait_for(|up| *up)).await;
    if !matches!(up, Ok(Ok(_))) {
        counter.abort();
        bail!(
            "the bridge from mosquitto A to B did not connect within 30 s; A's log:\n{}\nB's log:\n{}",
            a.log_tail(),
            b.log_tail()
        );
    }

    let fleet = Fleet::connect(
        spec(w, format!("127.0.0.1:{a_port}").parse()?, Answer::PubAck, args.drain),
        Duration::from_secs(60),
    )
    .await
    .map_err(|e| anyhow!("devices cannot connect to mosquitto A: {e}"))?;
    let (a_conn, b_conn) = (a.sample()?, b.sample()?);
    let report = fleet.run().await;
    let started = report.started.unwrap_or_else(Instant::now);
    let got = wait_delivered(&mut delivered, report.answered, Duration::from_secs(args.drain)).await;
    let (a_end, b_end) = (a.sample()?, b.sample()?);
    counter.abort();
    a.stop(Duration::from_secs(30)).await?;
    b.stop(Duration::from_secs(30)).await?;
    let disk_bytes = disk_usage(&a_dir.join("persist")) + disk_usage(&b_dir.join("persist"));

    let mut ok = true;
    if report.failed_devices > 0 {
        eprintln!("bridge side: {} devices failed", report.failed_devices);
        ok = false;
    }
    if got.count < report.answered {
        println!(
            "bridge side: LOST {} of the {} punches mosquitto A acknowledged (not at B within {} s)",
            report.answered - got.count,
            report.answered,
            args.drain
        );
    }
    let stats = |idle: ProcSample, conn: ProcSample, end: ProcSample| ProcStats {
        idle_rss: idle.rss,
        connected_rss: conn.rss,
        cpu_secs: end.cpu_secs - conn.cpu_secs,
        hwm: end.hwm,
    };
    Ok(Side {
        name: "bridge (mosquitto A -> TLS bridge -> mosquitto B)",
        delivered_in_window: in_window(&marks, started + Duration::from_secs(w.seconds)),
        report,
        delivered: got,
        processes: vec![("mosquitto A", stats(a_idle, a_conn, a_end)), ("mosquitto B", stats(b_idle, b_conn, b_end))],
        disk_bytes,
        ok,
    })
}

/// Prints what each sled tree of the stopped gateway's store holds (the main database and every punch partition
/// together), per durably acknowledged punch: where the bytes on disk go.
fn print_footprint(store: &Path, punches: u64) {
    let mut dbs = vec![store.to_owned()];
    if let Ok(parts) = std::fs::read_dir(store.join(gatewayd::store::parts::PARTS_DIR)) {
        dbs.extend(parts.flatten().map(|e| e.path()));
    }
    let mut trees: std::collections::BTreeMap<String, (u64, u64)> = std::collections::BTreeMap::new();
    let mut files = 0u64;
    for path in &dbs {
        let db = match sled::Config::new().path(path).open() {
            Ok(db) => db,
            Err(e) => return eprintln!("cannot open {} to measure its trees: {e}", path.display()),
        };
        match gatewayd::store::footprint::Footprint::of(&db) {
            Ok(f) => {
                for t in f.trees {
                    let e = trees.entry(t.name).or_default();
                    e.0 += t.keys;
                    e.1 += t.key_bytes + t.value_bytes;
                }
            }
            Err(e) => return eprintln!("cannot read the trees of {}: {e}", path.display()),
        }
        files += db.size_on_disk().unwrap_or(0);
    }
    let per = |bytes: u64| if punches > 0 { bytes as f64 / punches as f64 } else { 0.0 };
    println!(
        "store trees after a clean stop, {} databases (keys and values, bytes per acknowledged punch):",
        dbs.len()
    );
    let mut rows: Vec<_> = trees.into_iter().filter(|(_, (keys, _))| *keys > 0).collect();
    rows.sort_by_key(|(_, (_, bytes))| std::cmp::Reverse(*bytes));
    let total: u64 = rows.iter().map(|(_, (_, b))| b).sum();
    for (name, (keys, bytes)) in rows {
        println!("  {name:<22} {keys:>10} keys {:>8.1} B/punch", per(bytes));
    }
    println!("  all trees: {:.1} B/punch; sled's files: {:.1} B/punch", per(total), per(files));
}

/// The reference receiver's output, line by line.
pub type ReceiverLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// Starts the reference receiver (`gatewayd upstream-sink`) in `dir` with the development certificates `certs`,
/// writing what it accepts to `out`; returns it, the address it listens on and the rest of its output (one line per
/// batch, then its summary).
pub async fn start_receiver(
    gatewayd: &Path,
    dir: &Path,
    certs: &gatewayd::cli::certs::DevSet,
    out: &Path,
) -> anyhow::Result<(Proc, String, ReceiverLines)> {
    let mut cmd = Command::new(gatewayd);
    cmd.args(["upstream-sink", "--listen", "127.0.0.1:0", "--ca"])
        .arg(&certs.ca)
        .arg("--cert")
        .arg(&certs.server_cert)
        .arg("--key")
        .arg(&certs.server_key)
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "warn");
    let mut sink = Proc::spawn("upstream-sink", cmd, dir, true)?;
    let stdout = sink.child.stdout.take().ok_or_else(|| anyhow!("upstream-sink: no stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| anyhow!("upstream-sink did not start listening within 30 s; log:\n{}", sink.log_tail()))?
            .context("reading upstream-sink's output")?
            .ok_or_else(|| anyhow!("upstream-sink exited before listening; log:\n{}", sink.log_tail()))?;
        if let Some(rest) = line.split("listening on https://").nth(1) {
            break rest.split('/').next().unwrap_or_default().to_owned();
        }
    };
    Ok((sink, addr, lines))
}
