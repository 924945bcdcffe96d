//! `gatewayd-crash`: runs the real daemon under load from simulated MQTT devices, kills it with SIGKILL at random
//! points (optionally cutting the power of its store), restarts it, and at the end checks what the upstream receiver
//! got against what the devices saw acknowledged.
//!
//! ```text
//! gatewayd-crash --cycles 200                       # long kill mode
//! gatewayd-crash --cycles 50 --power-cut            # store on powerfs: unsynced writes lost at every kill
//! gatewayd-crash --cycles 3 --devices 4             # what the e2e suite runs
//! gatewayd-crash --cycles 50 --retention            # retention deleting delivered partitions during the cycles
//! ```
//!
//! With `--retention` the devices date their punches 40 days back, `retention_days` is 1 and retention's clock starts
//! 30 days ahead and runs two days a second, with a pass every 300 ms: the daemon rotates punch partitions and deletes delivered ones all the time, so
//! kills and power cuts land in the middle of rotations and deletions. The checks are the same: what was delivered may
//! go, what was acknowledged and not delivered must not.
//!
//! Each cycle: start `gatewayd run` (wait for `READY=1` on a notify socket the tool owns), let the devices publish QoS 1
//! punches on `gw/v1/dev/{id}/punch` for a random time, SIGKILL the daemon, and in `--power-cut` mode unmount the store's
//! filesystem, drop every write that was not fsynced ([`powerfs`]) and mount it again. Devices re-send what was not
//! acknowledged, with the same sequence number, as real terminals do; each keeps its own log
//! (`<work>/devices/<id>.log`) of the punches it saw acknowledged `stored`.
//!
//! At the end the daemon is started once more, the devices finish their re-sends, the outbox drains into the reference
//! receiver (`gatewayd upstream-sink`, mutual TLS), and the tool checks:
//! 1. every punch a device saw acknowledged reached the receiver;
//! 2. no punch twice in effect: the receiver's file holds each punch_id once (re-sends are absorbed by punch_id), and each
//!    delivered punch carries exactly what its device sent for that sequence number (no id reused for other content);
//! 3. nothing was delivered that no device sent;
//! 4. the store opened on every restart: each start reached `READY=1`, no store was quarantined, no panic was logged.
//!
//! Exit status 0 when every check holds, 1 otherwise (the report says which failed), 2 when the run itself failed.

mod check;
mod powerfs;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;

use check::{Delivered, Sent};

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Kill gatewayd under load (optionally cutting its power) and check that no acknowledged punch is lost"
)]
struct Args {
    /// Kill/restart cycles.
    #[arg(long, default_value_t = 200)]
    cycles: u32,
    /// Simulated MQTT devices.
    #[arg(long, default_value_t = 8)]
    devices: usize,
    /// Punches per second over all devices (each device also keeps at most --window unacknowledged).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Unacknowledged punches a device keeps in flight.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Shortest time the daemon runs before the kill, in milliseconds after READY.
    #[arg(long, default_value_t = 100)]
    min_run_ms: u64,
    /// Longest time the daemon runs before the kill.
    #[arg(long, default_value_t = 1500)]
    max_run_ms: u64,
    /// Cut the power of the store at every kill: the store runs on powerfs (FUSE, needs root and /dev/fuse) and every
    /// write that was not fsynced is lost.
    #[arg(long)]
    power_cut: bool,
    /// How directory entries become durable on powerfs: `journal` (ext4-like) or `strict` (POSIX: fsync of the dir).
    #[arg(long, value_enum, default_value_t = powerfs::Namespace::Journal)]
    namespace: powerfs::Namespace,
    /// Random seed (the run is printed with its seed; the same seed gives the same kill schedule).
    #[arg(long)]
    seed: Option<u64>,
    /// Work directory (default: a new temporary directory, removed after a passing run).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Keep the work directory even when the run passes.
    #[arg(long)]
    keep: bool,
    /// The gatewayd binary (default: `gatewayd` beside this tool).
    #[arg(long)]
    gatewayd: Option<PathBuf>,
    /// Run retention during the cycles (see the module docs).
    #[arg(long)]
    retention: bool,
    /// How long the final drain into the receiver may take, in seconds.
    #[arg(long, default_value_t = 180)]
    drain_secs: u64,
}

const GATEWAY_ID: &str = "gw-crash";
/// With `--retention`: how far back punches are dated, and how far ahead retention's clock runs.
const RETENTION_BACKDATE_MS: i64 = 40 * 86_400_000;
const RETENTION_AHEAD_MS: i64 = 30 * 86_400_000;
/// With `--retention`: retention's clock runs this many milliseconds per real millisecond (two days a second).
const RETENTION_DAYS_PER_SECOND: i64 = 2 * 86_400;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("gatewayd-crash: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// What the devices share with the orchestrator.
struct Shared {
    /// The daemon's MQTT address while it runs (`None` between a kill and the next READY).
    addr: watch::Sender<Option<SocketAddr>>,
    /// Set for the final phase: devices stop making new punches and only finish their re-sends.
    finishing: watch::Sender<bool>,
    devices: Mutex<Vec<DeviceState>>,
    /// How far back devices date their punches (milliseconds).
    backdate_ms: i64,
}

#[derive(Default)]
struct DeviceState {
    /// Every punch made, by sequence number (what a re-send repeats).
    sent: BTreeMap<u64, Sent>,
    /// Sequence numbers acknowledged `stored`.
    acked: std::collections::BTreeSet<u64>,
    /// Acknowledged with another status (a definite answer: not re-sent, not expected upstream).
    rejected: std::collections::BTreeSet<u64>,
    /// Acks for a punch already acknowledged (should stay 0: only unacknowledged punches are re-sent).
    re_acked: u64,
    /// Punches re-published after a reconnect because the kill came before their ack.
    resent: u64,
}

fn device_id(i: usize) -> String {
    format!("crash-{i:03}")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn run(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // A work directory of our own is removed after a passing run (unless --keep); a given one is always kept.
    let (work, remove_after) = match &args.work {
        Some(w) => (w.clone(), false),
        None => (std::env::temp_dir().join(format!("gatewayd-crash-{}-{seed}", std::process::id())), !args.keep),
    };
    anyhow::ensure!(!work.join("data").exists(), "{} already holds a run; give an empty directory", work.display());
    let gatewayd = match &args.gatewayd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("gatewayd"),
    };
    anyhow::ensure!(gatewayd.exists(), "{} not found (build it, or pass --gatewayd)", gatewayd.display());
    println!(
        "gatewayd-crash: seed {seed}, {} cycles, {} devices, {} punches/s, {} mode, work dir {}",
        args.cycles,
        args.devices,
        args.rate,
        if args.power_cut { "power-cut" } else { "kill" },
        work.display()
    );
    for d in ["devices", "logs", "data/store"] {
        std::fs::create_dir_all(work.join(d))?;
    }

    // Certificates and the reference receiver.
    let certs = work.join("certs");
    let out =
        Command::new(&gatewayd).args(["certs", "dev", "--client-name", GATEWAY_ID, "--out"]).arg(&certs).output()?;
    anyhow::ensure!(out.status.success(), "gatewayd certs dev: {}", String::from_utf8_lossy(&out.stderr));
    let received = work.join("received.jsonl");
    let mut sink = Receiver::start(&gatewayd, &certs, &received, &work.join("logs/upstream-sink.log"))?;

    // Retention's clock, ahead of the system clock and running two days a second (the daemon reads it from this file
    // on every pass): partitions are rotated and deleted all through the run.
    let clock = args.retention.then(|| work.join("retention-clock"));
    let clock_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clock_thread = match &clock {
        Some(clock) => {
            let (clock, stop) = (clock.clone(), clock_stop.clone());
            let write = move |start: Instant, base: i64| {
                let now = base + RETENTION_AHEAD_MS + start.elapsed().as_millis() as i64 * RETENTION_DAYS_PER_SECOND;
                std::fs::write(&clock, now.to_string())
            };
            let (start, base) = (Instant::now(), jiff::Timestamp::now().as_millisecond());
            write(start, base)?;
            Some(std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if let Err(e) = write(start, base) {
                        eprintln!("gatewayd-crash: cannot move retention's clock: {e}");
                    }
                }
            }))
        }
        None => None,
    };
    let config_path = work.join("gatewayd.toml");
    std::fs::write(&config_path, config(&args, &work, &certs, sink.port))?;

    // The store's filesystem in power-cut mode.
    let store_dir = work.join("data/store");
    let disk = powerfs::Disk::new(args.namespace);
    let mut mounted = if args.power_cut {
        Some(
            powerfs::mount(disk.clone(), &store_dir)
                .context("mount powerfs on the store (needs root and /dev/fuse)")?,
        )
    } else {
        None
    };

    // Devices.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let shared = Arc::new(Shared {
        addr: watch::channel(None).0,
        finishing: watch::channel(false).0,
        devices: Mutex::new((0..args.devices).map(|_| DeviceState::default()).collect()),
        backdate_ms: if args.retention { RETENTION_BACKDATE_MS } else { 0 },
    });
    let per_device_interval = Duration::from_secs_f64(args.devices as f64 / args.rate.max(1) as f64);
    let mut device_tasks = Vec::new();
    for i in 0..args.devices {
        let log = std::fs::File::create(work.join("devices").join(format!("{}.log", device_id(i))))?;
        device_tasks.push(rt.spawn(device(i, shared.clone(), per_device_interval, args.window, log)));
    }

    let notify_path = work.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut problems: Vec<String> = Vec::new();
    let mut restarts = 0u32;
    let mut cut_reports = Vec::new();
    let started = Instant::now();

    for cycle in 1..=args.cycles {
        let mut daemon = Daemon::start(&gatewayd, &config_path, &notify, &notify_path, &work, cycle, clock.as_deref())?;
        restarts += 1;
        check_start(&daemon, &work, cycle, &mut problems);
        shared.addr.send_replace(Some(daemon.mqtt));
        let run_for = Duration::from_millis(rng.random_range(args.min_run_ms..=args.max_run_ms.max(args.min_run_ms)));
        std::thread::sleep(run_for);
        shared.addr.send_replace(None);
        daemon.kill9()?;
        if let Some(session) = mounted.take() {
            session.umount_and_join().context("unmount powerfs")?;
            let report = lock(&disk).power_cut();
            cut_reports.push(report);
            mounted = Some(powerfs::mount(disk.clone(), &store_dir).context("mount powerfs again")?);
        }
        if cycle % 10 == 0 || cycle == args.cycles {
            let acked: usize = lock(&shared.devices).iter().map(|d| d.acked.len()).sum();
            println!("cycle {cycle}/{}: {acked} punches acknowledged so far", args.cycles);
        }
    }

    // Final run: no kill; devices finish their re-sends, the outbox drains.
    let mut daemon =
        Daemon::start(&gatewayd, &config_path, &notify, &notify_path, &work, args.cycles + 1, clock.as_deref())?;
    restarts += 1;
    check_start(&daemon, &work, args.cycles + 1, &mut problems);
    shared.finishing.send_replace(true);
    shared.addr.send_replace(Some(daemon.mqtt));
    for task in device_tasks {
        match rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), task).await }) {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => problems.push(format!("device failed: {e}")),
            Ok(Err(e)) => problems.push(format!("device task failed: {e}")),
            Err(_) => problems.push("a device did not get all its punches acknowledged within 120 s".into()),
        }
    }
    let (sent, acked, rejected, re_acked, resent) = {
        let devices = lock(&shared.devices);
        let mut sent: HashMap<String, Sent> = HashMap::new();
        let mut acked = Vec::new();
        let (mut rejected, mut re_acked, mut resent) = (0, 0, 0);
        for (i, d) in devices.iter().enumerate() {
            let id = device_id(i);
            for (seq, s) in &d.sent {
                sent.insert(format!("{GATEWAY_ID}:{id}:{seq}"), s.clone());
            }
            acked.extend(d.acked.iter().map(|seq| format!("{GATEWAY_ID}:{id}:{seq}")));
            rejected += d.rejected.len();
            re_acked += d.re_acked;
            resent += d.resent;
        }
        (sent, acked, rejected, re_acked, resent)
    };
    let drained = wait_for_delivery(&received, &acked, &daemon, Duration::from_secs(args.drain_secs));
    if let Err(e) = &drained {
        problems.push(e.clone());
    }
    let (status, _) = daemon.stop()?;
    if !status.success() {
        problems.push(format!("the final daemon exited with {status} on SIGTERM"));
    }
    let summary = sink.stop()?;
    if let Some(session) = mounted.take() {
        session.umount_and_join().context("unmount powerfs")?;
    }

    let delivered = Delivered::read(&received)?;
    let report = check::check(&sent, &acked, &delivered);
    problems.extend(report.problems.iter().cloned());
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "restarts {restarts} (each reached READY with the store open), elapsed {elapsed:.0} s\n\
         punches made {}, acknowledged stored {}, rejected {rejected}, re-sent after a kill {resent}, \
         acknowledged twice {re_acked}\n\
         receiver: {} punch lines, {} distinct punch_ids; {}",
        sent.len(),
        acked.len(),
        delivered.lines,
        delivered.by_id.len(),
        summary.trim()
    );
    clock_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = clock_thread {
        let _ = t.join();
    }
    if args.retention {
        let (created, deleted) = partitions_in_logs(&work.join("logs"));
        println!("retention: {created} punch partitions started and {deleted} deleted across the cycles");
        if deleted == 0 {
            problems.push("--retention: no partition was deleted during the run".into());
        }
    }
    if args.power_cut {
        let files: usize = cut_reports.iter().map(|r| r.files_reverted).sum();
        let dirs: usize = cut_reports.iter().map(|r| r.dirs_reverted).sum();
        let d = lock(&disk);
        println!(
            "power cuts {}: {files} file contents and {dirs} directories rolled back to their last fsync; \
             fsyncs seen {} (files) {} (directories); namespace model {:?}",
            cut_reports.len(),
            d.fsyncs,
            d.dir_fsyncs,
            args.namespace
        );
    }
    if problems.is_empty() {
        println!(
            "PASS: every acknowledged punch delivered ({} of {}), none twice in effect, store opened on all {restarts} starts",
            report.acked_delivered,
            acked.len()
        );
        if remove_after {
            std::fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
        } else {
            println!("work dir kept: {}", work.display());
        }
        Ok(true)
    } else {
        println!("FAIL ({} problems, seed {seed}):", problems.len());
        for p in problems.iter().take(50) {
            println!("  {p}");
        }
        println!("work dir kept for inspection: {}", work.display());
        Ok(false)
    }
}

/// The daemon's configuration: the devices, the upstream receiver over mTLS, quick delivery.
fn config(args: &Args, work: &Path, certs: &Path, sink_port: u16) -> String {
    let mut text = format!(
        "[gateway]\nid = \"{GATEWAY_ID}\"\ndata_dir = \"{data}\"\ntimezone = \"Asia/Shanghai\"\nallow_root = true\n\n\
         [api]\nlisten = \"127.0.0.1:0\"\n\n[mqtt]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"https://localhost:{sink_port}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         batch_max_items = 500\nlinger = \"50ms\"\nmax_backoff = \"1s\"\n{retention}\n",
        retention = if args.retention { "retention_days = 1\n" } else { "" },
        data = work.join("data").display(),
        ca = certs.join("ca.pem").display(),
        cert = certs.join("client.pem").display(),
        key = certs.join("client.key").display(),
    );
    for i in 0..args.devices {
        let id = device_id(i);
        text.push_str(&format!("[[device]]\nid = \"{id}\"\ndriver = \"mqtt\"\nsecret = \"{id}-secret\"\n\n"));
    }
    text
}

/// Flags what a start must not show: a quarantined store, a panic.
fn check_start(daemon: &Daemon, work: &Path, cycle: u32, problems: &mut Vec<String>) {
    let quarantined = std::fs::read_dir(work.join("data").join(gatewayd::app::quarantine::QUARANTINE_DIR))
        .map(|d| d.count())
        .unwrap_or(0);
    if quarantined > 0 {
        problems.push(format!("start {cycle}: the store was quarantined (did not open); see {}", daemon.log.display()));
    }
    let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    if log.contains("panicked") {
        problems.push(format!("start {cycle}: a panic was logged; see {}", daemon.log.display()));
    }
}

/// How long an empty outbox may sit with acknowledged punches still missing at the receiver before the drain is
/// declared over (nothing is left to send them).
const SETTLED: Duration = Duration::from_secs(10);

/// Waits until every acknowledged punch is in the receiver's file and the outbox is empty, or until the outbox has been
/// empty with nothing new arriving for [`SETTLED`], or `limit`.
fn wait_for_delivery(received: &Path, acked: &[String], daemon: &Daemon, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut last = (usize::MAX, Instant::now());
    loop {
        let delivered = Delivered::read(received).map_err(|e| e.to_string())?;
        let missing = acked.iter().filter(|id| !delivered.by_id.contains_key(*id)).count();
        let depth = daemon.metric("gatewayd_outbox_depth");
        if missing == 0 && depth == Some(0.0) {
            return Ok(());
        }
        if missing != last.0 || depth != Some(0.0) {
            last = (missing, Instant::now());
        }
        if last.1.elapsed() > SETTLED || Instant::now() > deadline {
            return Err(format!(
                "drain ended (outbox depth {depth:?}) with {missing} acknowledged punches not at the receiver"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One simulated terminal: publishes punches QoS 1, waits for `stored` acks, re-sends what was not acknowledged after
/// every reconnect, and logs each acknowledged punch.
async fn device(
    i: usize,
    shared: Arc<Shared>,
    interval: Duration,
    window: usize,
    mut log: std::fs::File,
) -> Result<(), String> {
    let id = device_id(i);
    let topic = format!("gw/v1/dev/{id}/punch");
    let mut addr_rx = shared.addr.subscribe();
    let finishing = shared.finishing.subscribe();
    let mut next_seq = 1u64;
    let mut session = 0u32;
    loop {
        // Wait for a running daemon.
        let addr = loop {
            if let Some(a) = *addr_rx.borrow_and_update() {
                break a;
            }
            if addr_rx.changed().await.is_err() {
                return Err(format!("{id}: orchestrator gone"));
            }
        };
        session += 1;
        let mut o = MqttOptions::new(format!("{id}-{session}"), addr.ip().to_string(), addr.port());
        o.set_credentials(&id, format!("{id}-secret"));
        o.set_keep_alive(Duration::from_secs(30));
        o.set_inflight(u16::try_from(window.max(1)).unwrap_or(u16::MAX));
        o.set_clean_session(true);
        let (client, mut events) = AsyncClient::new(o, window * 2 + 16);
        // Connect and subscribe to the acks; a failure means the daemon died meanwhile: wait for the next one.
        let connected = async {
            loop {
                if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await.map_err(|e| e.to_string())? {
                    break;
                }
            }
            client.subscribe(format!("gw/v1/dev/{id}/ack"), QoS::AtLeastOnce).await.map_err(|e| e.to_string())?;
            loop {
                if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.map_err(|e| e.to_string())? {
                    break;
                }
            }
            Ok::<(), String>(())
        };
        let ok = tokio::select! {
            r = connected => r.is_ok(),
            _ = addr_rx.changed() => false,
        };
        if !ok {
            continue;
        }
        // Re-send everything not yet acknowledged, same sequence numbers and content.
        let unacked: Vec<(u64, Sent)> = {
            let devices = lock(&shared.devices);
            let d = &devices[i];
            d.sent
                .iter()
                .filter(|(seq, _)| !d.acked.contains(seq) && !d.rejected.contains(seq))
                .map(|(s, p)| (*s, p.clone()))
                .collect()
        };
        let mut in_flight: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
        for (seq, p) in &unacked {
            if client.try_publish(&topic, QoS::AtLeastOnce, false, p.payload(*seq)).is_ok() {
                in_flight.insert(*seq);
            }
        }
        lock(&shared.devices)[i].resent += unacked.len() as u64;
        let mut tick = tokio::time::interval(interval.max(Duration::from_micros(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let done = *finishing.borrow();
            if done && in_flight.is_empty() {
                let all_acked = {
                    let devices = lock(&shared.devices);
                    let d = &devices[i];
                    d.sent.keys().all(|s| d.acked.contains(s) || d.rejected.contains(s))
                };
                if all_acked {
                    let _ = client.disconnect().await;
                    return Ok(());
                }
                break; // something was not acknowledged in this session: reconnect and re-send
            }
            tokio::select! {
                _ = tick.tick(), if !done && in_flight.len() < window => {
                    let seq = next_seq;
                    next_seq += 1;
                    let p = Sent::new(seq, shared.backdate_ms);
                    let payload = p.payload(seq);
                    lock(&shared.devices)[i].sent.insert(seq, p);
                    if client.try_publish(&topic, QoS::AtLeastOnce, false, payload).is_ok() {
                        in_flight.insert(seq);
                    }
                }
                event = events.poll() => match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let ack: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                        let Some(seq) = ack["seq"].as_u64() else { continue };
                        in_flight.remove(&seq);
                        let mut devices = lock(&shared.devices);
                        let d = &mut devices[i];
                        if ack["status"] == "stored" {
                            if d.acked.insert(seq) {
                                let _ = writeln!(log, "{seq}");
                            } else {
                                d.re_acked += 1;
                            }
                        } else {
                            d.rejected.insert(seq);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break, // the daemon is gone: wait for the next one
                },
                _ = addr_rx.changed() => break,
            }
        }
    }
}

/// A running `gatewayd run`.
struct Daemon {
    child: Child,
    mqtt: SocketAddr,
    api: SocketAddr,
    log: PathBuf,
}

impl Daemon {
    fn start(
        gatewayd: &Path,
        config: &Path,
        notify: &UnixDatagram,
        notify_path: &Path,
        work: &Path,
        cycle: u32,
        retention_clock: Option<&Path>,
    ) -> anyhow::Result<Daemon> {
        let listeners = work.join("data").join(gatewayd::app::LISTENERS_FILE);
        let _ = std::fs::remove_file(&listeners);
        let log = work.join("logs").join(format!("daemon-{cycle:04}.log"));
        let stderr = std::fs::File::create(&log)?;
        let mut cmd = Command::new(gatewayd);
        cmd.args(["run", "--config"]).arg(config).env("NOTIFY_SOCKET", notify_path).env("RUST_LOG", "info");
        if let Some(clock) = retention_clock {
            cmd.env(gatewayd::app::retention::CLOCK_ENV, clock).env(gatewayd::app::retention::EVERY_ENV, "300");
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(stderr).spawn().context("start gatewayd")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
                    break;
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "start {cycle}: gatewayd exited with {status} before READY=1 (the store did not open?): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("start {cycle}: no READY=1 within 60 s; see {}", log.display());
            }
        }
        let text = std::fs::read(&listeners).with_context(|| format!("read {}", listeners.display()))?;
        let v: serde_json::Value = serde_json::from_slice(&text)?;
        let addr = |name: &str| -> anyhow::Result<SocketAddr> {
            v[name].as_str().with_context(|| format!("no {name} in listeners.json"))?.parse().context("address")
        };
        Ok(Daemon { mqtt: addr("mqtt")?, api: addr("api")?, child, log })
    }

    fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.kill()?; // SIGKILL
        self.child.wait()?;
        Ok(())
    }

    fn stop(&mut self) -> anyhow::Result<(std::process::ExitStatus, Duration)> {
        let t = Instant::now();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        Ok((self.child.wait()?, t.elapsed()))
    }

    /// One metric value from `/metrics` (plain HTTP/1.0 over a TCP stream: the tool needs nothing more).
    fn metric(&self, series: &str) -> Option<f64> {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect_timeout(&self.api, Duration::from_secs(5)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reference receiver, `gatewayd upstream-sink`, as a child process.
struct Receiver {
    child: Child,
    port: u16,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Receiver {
    fn start(gatewayd: &Path, certs: &Path, out: &Path, log: &Path) -> anyhow::Result<Receiver> {
        let mut child = Command::new(gatewayd)
            .args(["upstream-sink", "--quiet", "--listen", "127.0.0.1:0", "--ca"])
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("server.pem"))
            .arg("--key")
            .arg(certs.join("server.key"))
            .arg("--out")
            .arg(out)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("start gatewayd upstream-sink")?;
        let stdout = child.stdout.take().context("upstream-sink stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(30)).context("upstream-sink did not start")?;
        let port = first
            .split("https://")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("upstream-sink printed {first:?}"))?;
        Ok(Receiver { child, port, lines })
    }

    /// SIGTERM; returns its summary line.
    fn stop(&mut self) -> anyhow::Result<String> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let mut summary = String::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(30)) {
            if line.contains("upstream-sink summary") {
                summary = line;
                break;
            }
        }
        self.child.wait()?;
        Ok(summary)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Punch partitions started and deleted, counted from the daemons' logs.
fn partitions_in_logs(logs: &Path) -> (usize, usize) {
    let mut created = 0;
    let mut deleted = 0;
    for entry in std::fs::read_dir(logs).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        created += text.matches("store: new punch partition").count();
        deleted += text.matches("store: punch partition past retention deleted").count();
    }
    (created, deleted)
}
