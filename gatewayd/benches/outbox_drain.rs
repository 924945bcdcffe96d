//! Drain benchmark: a backlog of 1,000,000 items in the outbox (as after a long outage) delivered to the reference
//! receiver (`gatewayd upstream-sink`, a separate process) over mutual TLS on loopback.
//!
//! Two processes on the gateway side, like a gateway restarted after the outage: a child process builds the backlog
//! (change log -> feeder -> outbox) and exits; this process opens the database and drains it with the real sender.
//! Reports the drain rate (items/s) and the peak resident memory of the draining process.
//! Target (issue 6): at least 50,000 items/s and under 100 MB RSS.
//!
//! `cargo bench -p gatewayd --bench outbox_drain` (`OUTBOX_DRAIN_ITEMS=N` for another backlog size,
//! `OUTBOX_DRAIN_CACHE_MB=N` for another sled page cache size).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatewayd::config::Config;
use gatewayd::outbox::{feeder, Outbox};
use gatewayd::proto::upstream::Punch;
use gatewayd::reconcile::changes::{Change, ChangeLog};
use gatewayd::store::Store;

type Error = Box<dyn std::error::Error>;

const FILL_ENV: &str = "OUTBOX_DRAIN_FILL_DIR";

fn status_kb(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn items() -> u64 {
    std::env::var("OUTBOX_DRAIN_ITEMS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

fn load_config(dir: &Path) -> Result<Config, Error> {
    gatewayd::app::load::load(&dir.join("gatewayd.toml"))
        .map(|(c, _)| c)
        .map_err(|p| p.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ").into())
}

/// The child: punches as the engine hands them over, enqueued by the feeder.
fn fill(dir: &Path) -> Result<(), Error> {
    let config = load_config(dir)?;
    let items = items();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let store = Store::open(&dir.join("data").join("store"), config.store.cache_mb)?;
        let log = ChangeLog::open(store.db())?;
        let outbox = Outbox::open(store.db(), config.timezone())?;
        let metrics = gatewayd::app::metrics();
        let feeder = feeder::Feeder { outbox: outbox.clone(), changes: log.clone(), store: store.clone(), metrics };
        let started = Instant::now();
        let t0 = 1_795_305_600_000i64;
        let mut written = 0u64;
        while written < items {
            let n = (items - written).min(10_000);
            let chunk: Vec<Change> = (written..written + n)
                .map(|i| {
                    Change::Punch(Punch {
                        punch_id: format!("bench-gw:face-{}:{i}", i % 50),
                        device_id: format!("face-{}", i % 50),
                        employee_id: format!("E{:05}", i % 20_000),
                        method: "face".into(),
                        device_time_ms: t0 + i as i64 * 100,
                        received_time_ms: t0 + i as i64 * 100 + 40,
                        flags: Vec::new(),
                        lat: None,
                        lng: None,
                        score: Some(0.93),
                        credential: String::new(),
                    })
                })
                .collect();
            let last = log.append(&chunk)?;
            log.flush().await?;
            while outbox.cursor()? < last {
                feeder.pass(last).await?;
            }
            written += n;
        }
        let took = started.elapsed();
        println!(
            "backlog: {} items enqueued in {:.1} s ({:.0} items/s), database {:.0} MB on disk",
            outbox.stats()?.depth,
            took.as_secs_f64(),
            items as f64 / took.as_secs_f64(),
            store.size_on_disk() as f64 / 1e6
        );
        store.flush().await?;
        Ok::<(), Error>(())
    })
}

fn main() -> Result<(), Error> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo test --benches` lists benchmarks; this one only runs under `cargo bench`
    }
    if let Some(dir) = std::env::var_os(FILL_ENV) {
        return fill(Path::new(&dir));
    }
    let items = items();
    let dir = tempfile::tempdir()?;
    let certs = gatewayd::cli::certs::write_dev_set(&dir.path().join("certs"), "bench-gw", 10)?;

    // The receiver, in its own process.
    let mut sink = Command::new(env!("CARGO_BIN_EXE_gatewayd"))
        .args(["upstream-sink", "--quiet", "--listen", "127.0.0.1:0", "--ca"])
        .arg(&certs.ca)
        .arg("--cert")
        .arg(&certs.server_cert)
        .arg("--key")
        .arg(&certs.server_key)
        .arg("--out")
        .arg(dir.path().join("received.jsonl"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut lines = BufReader::new(sink.stdout.take().ok_or("no stdout")?).lines();
    let first = lines.next().ok_or("sink printed nothing")??;
    let addr = first.split("https://").nth(1).and_then(|r| r.split('/').next()).ok_or("no address")?.to_owned();
    let port = addr.rsplit(':').next().ok_or("no port")?.to_owned();
    // OUTBOX_DRAIN_CACHE_MB=N sets `[store] cache_mb` (sled's page cache) for both processes.
    let store =
        std::env::var("OUTBOX_DRAIN_CACHE_MB").map(|mb| format!("[store]\ncache_mb = {mb}\n\n")).unwrap_or_default();
    std::fs::write(
        dir.path().join("gatewayd.toml"),
        format!(
            "[gateway]\nid = \"bench-gw\"\ndata_dir = \"{}\"\ntimezone = \"Asia/Shanghai\"\n\n{store}[upstream]\n\
             url = \"https://localhost:{port}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.path().join("data").display(),
            certs.ca.display(),
            certs.client_cert.display(),
            certs.client_key.display()
        ),
    )?;

    // The backlog, built by a child process.
    let status = Command::new(std::env::current_exe()?).env(FILL_ENV, dir.path()).status()?;
    if !status.success() {
        return Err(format!("backlog child failed: {status}").into());
    }

    let config = load_config(dir.path())?;
    let up = config.upstream.clone().ok_or("no upstream")?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let opened = Instant::now();
        let store = Store::open(&dir.path().join("data").join("store"), config.store.cache_mb)?;
        let outbox = Outbox::open(store.db(), config.timezone())?;
        let depth = outbox.stats()?.depth;
        let rss_open = status_kb("VmRSS:");
        println!(
            "reopened: {depth} items waiting, database opened in {:.1} s, RSS {:.1} MB",
            opened.elapsed().as_secs_f64(),
            rss_open as f64 / 1024.0
        );
        let metrics = gatewayd::app::metrics();
        let (config_tx, _) = tokio::sync::watch::channel(Arc::new(config));
        let (resend_tx, _resend_rx) = tokio::sync::mpsc::channel(feeder::RESEND_QUEUE);
        let cancel = tokio_util::sync::CancellationToken::new();
        let sender = gatewayd::upstream::Sender {
            outbox: outbox.clone(),
            config: config_tx.subscribe(),
            metrics,
            resend: resend_tx,
        };
        let started = Instant::now();
        let task = tokio::spawn(gatewayd::upstream::run(sender, cancel.clone()));
        let mut peak = rss_open;
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            peak = peak.max(status_kb("VmRSS:"));
            if outbox.stats()?.depth == 0 && outbox.open_batch()?.is_none() {
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                return Err::<(), Error>("drain did not finish within 10 minutes".into());
            }
        }
        let drain = started.elapsed();
        cancel.cancel();
        let _ = task.await;
        println!(
            "drain: {depth} items in {:.2} s = {:.0} items/s (batches of up to {} items / {} bytes)",
            drain.as_secs_f64(),
            depth as f64 / drain.as_secs_f64(),
            up.batch_max_items,
            up.batch_max_bytes
        );
        println!(
            "gateway RSS during the drain: peak {:.1} MB (sampled every 20 ms), VmHWM {:.1} MB",
            peak as f64 / 1024.0,
            status_kb("VmHWM:") as f64 / 1024.0
        );
        drop(store);
        drop(dir);
        Ok(())
    })?;
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(sink.id() as i32), nix::sys::signal::Signal::SIGTERM);
    for line in lines.map_while(Result::ok) {
        if line.contains("summary") {
            println!("{line}");
        }
    }
    sink.wait()?;
    let _ = items;
    Ok(())
}
