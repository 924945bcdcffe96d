//! `gatewayd-load fleet`: the fleet benchmark (issue 22, docs/benchmarks.md), in one run on one machine.
//!
//! 1. **JetStream → PostgreSQL**: a three-node `nats-server` cluster on loopback (the configuration of
//!    `docs/fleet/nats-server.conf`, mutual TLS), the stream created with three replicas as docs/fleet.md says,
//!    PostgreSQL in a scratch directory (as `nobody` when run as root), `--loaders` `gatewayd loader` processes and
//!    `gatewayd run` with `[upstream] url = "nats://…"`. The devices publish; *delivered* is the punches counted in
//!    PostgreSQL, polled every [`POLL`], from the start of publishing to the last increase.
//! 2. **HTTPS → file**: the same workload through `gatewayd run` to `gatewayd upstream-sink` (the `e2e` benchmark's
//!    gatewayd side).
//! 3. **Loader backlog**: the loaders are stopped, `--backlog` punches are published to the stream as batches of
//!    5,000 (what a gateway sends after an outage), the loaders are started again and the rows they insert per second
//!    are measured until PostgreSQL holds them all.
//!
//! Readiness is never a sleep: nats-server writes its ports file, PostgreSQL answers a query, the gateway sends
//! `READY=1`, the loaders print their start line. Every process is stopped and the scratch directory removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use prost::Message;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

use crate::devices::{latency_line, Answer, Fleet};
use crate::e2e::{gateway_side, load_average, spec};
use crate::procs::{free_port, Proc, Scratch};
use crate::{device_tables, pacing, Workload};
use gatewayd::cli::certs::{write_file, DevPki, Validity};
use gatewayd::proto::upstream::{Punch, UploadBatch};

/// How often PostgreSQL is counted.
const POLL: Duration = Duration::from_millis(100);
/// Punches per batch of the backlog (the gateway's default `batch_max_items`).
const BACKLOG_BATCH: u64 = 5000;
const GATEWAY: &str = "bench-gw";
const TEMPLATE: &str = include_str!("../../../../docs/fleet/nats-server.conf");

#[derive(clap::Args, Debug)]
pub struct FleetArgs {
    #[command(flatten)]
    workload: Workload,
    /// The `gatewayd` binary (default: next to this one).
    #[arg(long)]
    gatewayd: Option<PathBuf>,
    /// Loaders sharing the consumer.
    #[arg(long, default_value_t = 2)]
    loaders: usize,
    /// Punches in the loader backlog (0: skip).
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Skip the HTTPS comparison.
    #[arg(long)]
    no_https: bool,
    /// Keep the scratch directory.
    #[arg(long)]
    keep: bool,
    /// Most seconds to wait, after publishing stopped, for the last deliveries (and for the backlog to load).
    #[arg(long, default_value_t = 300)]
    drain: u64,
}

fn program(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .or_else(|| {
            let mut v: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .flatten()
                .map(|e| e.path().join("bin").join(name))
                .filter(|p| p.is_file())
                .collect();
            v.sort();
            v.pop()
        })
        .ok_or_else(|| anyhow!("{name} not found (apt-get install nats-server postgresql)"))
}

/// `cmd` as `nobody` when we are root (PostgreSQL refuses root).
fn unprivileged(program: &Path) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// PostgreSQL in `dir`; returns the process and its URL once it answers.
async fn postgres(dir: &Path) -> anyhow::Result<(Proc, String)> {
    let data = dir.join("pgdata");
    std::fs::create_dir_all(&data)?;
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        let nobody = nix::unistd::User::from_name("nobody")?.ok_or_else(|| anyhow!("no user nobody"))?;
        for d in [dir, data.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
            nix::unistd::chown(d, Some(nobody.uid), Some(nobody.gid))?;
        }
    }
    let out = unprivileged(&program("initdb")?)
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8"])
        .current_dir(dir)
        .output()
        .await?;
    if !out.status.success() {
        bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
    }
    let port = free_port()?;
    let mut cmd = unprivileged(&program("postgres")?);
    cmd.arg("-D").arg(&data).arg("-p").arg(port.to_string()).arg("-k").arg(dir);
    cmd.args(["-c", "listen_addresses=127.0.0.1", "-c", "shared_buffers=256MB"]).current_dir(dir);
    let proc = Proc::spawn("postgres", cmd, dir, false)?;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((c, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            if c.simple_query("SELECT 1").await.is_ok() {
                return Ok((proc, url));
            }
        }
        if Instant::now() > deadline {
            bail!("PostgreSQL did not answer within 60 s; log:\n{}", proc.log_tail());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Three nats-server nodes with the documented configuration; returns them and their client URLs.
async fn nats_cluster(dir: &Path, pki: &Path) -> anyhow::Result<(Vec<Proc>, Vec<String>)> {
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    let user = |cn: &str| format!("CN={cn},O=gatewayd development");
    let gw_user = format!(
        "      {{ user: \"{}\", permissions: {{ publish: {{ allow: [\"gatewayd.v1.batches.{GATEWAY}\", \
         \"$JS.API.STREAM.INFO.GATEWAYD\"] }}, subscribe: {{ allow: [\"gatewayd.v1.resend.{GATEWAY}\", \"_INBOX.>\"] }}, \
         allow_responses: true }} }}\n",
        user(GATEWAY)
    );
    let mut procs = Vec::new();
    let mut urls = Vec::new();
    for i in 0..3 {
        let node = dir.join(format!("n{}", i + 1));
        std::fs::create_dir_all(&node)?;
        let others: Vec<String> =
            (0..3).filter(|j| *j != i).map(|j| format!("\"nats-route://127.0.0.1:{}\"", routes[j])).collect();
        let conf = TEMPLATE
            .replace("@NAME@", &format!("n{}", i + 1))
            .replace("@LISTEN@", "127.0.0.1:-1")
            .replace("@STORE@", &node.join("js").display().to_string())
            .replace("@CERT@", &pki.join("server.pem").display().to_string())
            .replace("@KEY@", &pki.join("server.key").display().to_string())
            .replace("@CA@", &pki.join("ca.pem").display().to_string())
            .replace("@GATEWAY_USERS@\n", &gw_user)
            .replace("@LOADER@", &user("loader"))
            .replace("@OPERATOR@", &user("operator"))
            .replace(
                "@CLUSTER@\n",
                &format!(
                    "cluster {{\n  name: \"bench\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                    routes[i],
                    others.join(", ")
                ),
            )
            + &format!("ports_file_dir: \"{}\"\n", node.display());
        let path = node.join("nats-server.conf");
        std::fs::write(&path, conf)?;
        let mut cmd = Command::new(program("nats-server")?);
        cmd.arg("-c").arg(&path);
        let name: &'static str = ["nats-1", "nats-2", "nats-3"][i];
        let proc = Proc::spawn(name, cmd, &node, false)?;
        let ports = node.join(format!("nats-server_{}.ports", proc.pid));
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&ports) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    if let Some(u) = v["nats"][0].as_str() {
                        break u.to_owned();
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("{name} wrote no ports file within 30 s; log:\n{}", proc.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        procs.push(proc);
        urls.push(url);
    }
    Ok((procs, urls))
}

async fn nats_client(urls: &[String], pki: &Path, cn: &str) -> anyhow::Result<async_nats::Client> {
    let tls = gatewayd::upstream::tls::client_config(
        &pki.join("ca.pem"),
        &pki.join(format!("{cn}.pem")),
        &pki.join(format!("{cn}.key")),
    )?;
    let addrs: Vec<async_nats::ServerAddr> = urls.iter().map(|u| u.parse()).collect::<Result<_, _>>()?;
    Ok(async_nats::ConnectOptions::new().require_tls(true).tls_client_config((*tls).clone()).connect(addrs).await?)
}

async fn pg_count(url: &str) -> anyhow::Result<i64> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    // Before the first loader migrated, there is no table yet: zero.
    Ok(c.query_one("SELECT count(*) FROM punches", &[]).await.map(|r| r.get(0)).unwrap_or(0))
}

/// Waits until PostgreSQL holds at least `n` punches or `limit` passes; returns (count, when it last grew).
async fn wait_rows(url: &str, n: i64, limit: Duration) -> anyhow::Result<(i64, Instant)> {
    let deadline = Instant::now() + limit;
    let (mut last, mut grew) = (pg_count(url).await?, Instant::now());
    while last < n && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        let now = pg_count(url).await?;
        if now > last {
            grew = Instant::now();
            last = now;
        }
    }
    Ok((last, grew))
}

async fn start_loaders(
    gatewayd: &Path,
    dir: &Path,
    n: usize,
    urls: &[String],
    pki: &Path,
    pg: &str,
) -> anyhow::Result<Vec<Proc>> {
    let names: [&'static str; 4] = ["loader-1", "loader-2", "loader-3", "loader-4"];
    let mut out = Vec::new();
    for name in names.iter().take(n.min(names.len())) {
        let mut cmd = Command::new(gatewayd);
        cmd.arg("loader").arg("--quiet");
        for u in urls {
            cmd.arg("--nats").arg(u);
        }
        cmd.args(["--stream", "GATEWAYD", "--postgres", pg, "--ca"])
            .arg(pki.join("ca.pem"))
            .arg("--cert")
            .arg(pki.join("loader.pem"))
            .arg("--key")
            .arg(pki.join("loader.key"))
            .env("RUST_LOG", "warn");
        let mut proc = Proc::spawn(name, cmd, dir, true)?;
        let stdout = proc.child.stdout.take().ok_or_else(|| anyhow!("{name}: no stdout"))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .map_err(|_| anyhow!("{name} did not start within 60 s; log:\n{}", proc.log_tail()))??
                .ok_or_else(|| anyhow!("{name} exited; log:\n{}", proc.log_tail()))?;
            if line.contains("loader consuming") {
                break;
            }
        }
        // Drain the rest of its stdout (the summary at the end).
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        out.push(proc);
    }
    Ok(out)
}

pub async fn run(args: FleetArgs) -> anyhow::Result<bool> {
    let w = args.workload.clone();
    anyhow::ensure!(w.devices > 0 && w.seconds > 0 && (w.rate > 0 || w.window > 0), "nothing to do");
    let gatewayd = match &args.gatewayd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("gatewayd"),
    };
    anyhow::ensure!(gatewayd.is_file(), "{} not found (cargo build --release -p gatewayd)", gatewayd.display());
    let scratch = Scratch::new(args.keep)?;
    let dir = scratch.path.join("fleet");
    std::fs::create_dir_all(&dir)?;
    println!("fleet benchmark: {} MQTT devices, {}; load average {}", w.devices, pacing(&w), load_average());

    // Certificates: servers, the gateway, the loaders, the operator.
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki)?;
    let ca = DevPki::new("bench fleet CA")?;
    write_file(&pki.join("ca.pem"), ca.ca_pem(), false)?;
    let server = ca.server(&["localhost", "127.0.0.1"], Validity::days(10))?;
    write_file(&pki.join("server.pem"), &server.cert_pem, false)?;
    write_file(&pki.join("server.key"), &server.key_pem, true)?;
    for cn in [GATEWAY, "loader", "operator"] {
        let c = ca.client(cn, Validity::days(10))?;
        write_file(&pki.join(format!("{cn}.pem")), &c.cert_pem, false)?;
        write_file(&pki.join(format!("{cn}.key")), &c.key_pem, true)?;
    }

    let (mut pg_proc, pg) = postgres(&dir.join("pg")).await?;
    let (mut nats, urls) = nats_cluster(&dir.join("nats"), &pki).await?;
    let operator = nats_client(&urls, &pki, "operator").await?;
    let js = async_nats::jetstream::new(operator);
    let stream = async_nats::jetstream::stream::Config {
        name: "GATEWAYD".into(),
        subjects: vec!["gatewayd.v1.batches.>".into()],
        num_replicas: 3,
        duplicate_window: Duration::from_secs(7 * 24 * 3600),
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match js.get_or_create_stream(stream.clone()).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => bail!("cannot create the stream: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let mut loaders = start_loaders(&gatewayd, &dir, args.loaders, &urls, &pki, &pg).await?;

    // 1. Devices -> gatewayd -> JetStream (R3) -> loaders -> PostgreSQL.
    let gw_dir = dir.join("gateway");
    std::fs::create_dir_all(&gw_dir)?;
    let servers: Vec<String> = urls[1..].iter().map(|u| format!("\"{u}\"")).collect();
    let config = format!(
        "[gateway]\nid = \"{GATEWAY}\"\ndata_dir = \"{data}\"\ntimezone = \"Asia/Shanghai\"\nallow_root = true\n\n\
         [api]\nlisten = \"127.0.0.1:0\"\n\n[mqtt]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"{url}\"\nservers = [{servers}]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         batch_max_bytes = 4000000\n\n{devices}",
        data = gw_dir.join("data").display(),
        url = urls[0],
        servers = servers.join(", "),
        ca = pki.join("ca.pem").display(),
        cert = pki.join(format!("{GATEWAY}.pem")).display(),
        key = pki.join(format!("{GATEWAY}.key")).display(),
        devices = device_tables(&w),
    );
    std::fs::write(gw_dir.join("gatewayd.toml"), config)?;
    let mut cmd = Command::new(&gatewayd);
    cmd.args(["run", "--config"]).arg(gw_dir.join("gatewayd.toml")).env("RUST_LOG", "warn");
    let mut gw = Proc::start_notify("gatewayd", cmd, &gw_dir, Duration::from_secs(60)).await?;
    let listeners: serde_json::Value = serde_json::from_slice(&std::fs::read(gw_dir.join("data/listeners.json"))?)?;
    let mqtt = listeners["mqtt"].as_str().and_then(|a| a.parse().ok()).ok_or_else(|| anyhow!("no mqtt listener"))?;
    let fleet = Fleet::connect(spec(&w, mqtt, Answer::DurableAck, args.drain), Duration::from_secs(60))
        .await
        .map_err(|e| anyhow!("devices cannot connect to the gateway: {e}"))?;
    let report = fleet.run().await;
    let started = report.started.unwrap_or_else(Instant::now);
    let (rows, last) = wait_rows(&pg, report.answered as i64, Duration::from_secs(args.drain)).await?;
    let span = (last - started).as_secs_f64();
    let nats_rate = if span > 0.0 { rows as f64 / span } else { 0.0 };
    println!("\n== gatewayd -> NATS JetStream (3 nodes, R3) -> {} loaders -> PostgreSQL ==", loaders.len());
    println!(
        "devices {}, {}: published {}, durable acks {} (rejected {}, failed devices {})",
        w.devices,
        pacing(&w),
        report.published,
        report.answered,
        report.rejected,
        report.failed_devices
    );
    println!("device durable-ack latency (publish -> stored ack): {}", latency_line(&report.ack_us));
    println!("rows in PostgreSQL: {rows} in {span:.2} s = {nats_rate:.0} punches/s end to end");
    let mut ok = rows >= report.answered as i64 && report.failed_devices == 0;
    if !ok {
        eprintln!("only {rows} of {} acknowledged punches reached PostgreSQL within {} s", report.answered, args.drain);
    }
    gw.stop(Duration::from_secs(30)).await?;

    // 2. The same workload to the HTTPS file receiver.
    if !args.no_https {
        let side = gateway_side(args.drain, &w, &scratch.path.join("https"), &gatewayd).await?;
        side.print(&w);
        println!(
            "\nratio JetStream+PostgreSQL / HTTPS+file, punches/s delivered: {nats_rate:.0} / {:.0} = {:.2}",
            side.delivered_per_sec(),
            nats_rate / side.delivered_per_sec().max(1.0)
        );
    }

    // 3. The loader on a backlog.
    if args.backlog > 0 {
        for l in &mut loaders {
            l.stop(Duration::from_secs(30)).await?;
        }
        let before = pg_count(&pg).await?;
        let gw_client = nats_client(&urls, &pki, GATEWAY).await?;
        let gw_js = async_nats::jetstream::new(gw_client);
        let t0 = Instant::now();
        let batches = args.backlog.div_ceil(BACKLOG_BATCH);
        for b in 0..batches {
            let n = BACKLOG_BATCH.min(args.backlog - b * BACKLOG_BATCH);
            let punches = (0..n)
                .map(|i| {
                    let k = b * BACKLOG_BATCH + i;
                    Punch {
                        punch_id: format!("{GATEWAY}:backlog:{k}"),
                        device_id: "backlog".into(),
                        employee_id: format!("E{}", k % 10_000),
                        method: "face".into(),
                        device_time_ms: 1_795_305_600_000 + (k as i64) * 10,
                        received_time_ms: 1_795_305_600_000 + (k as i64) * 10,
                        ..Default::default()
                    }
                })
                .collect();
            let batch = UploadBatch {
                gateway_id: GATEWAY.into(),
                batch_seq: b + 1,
                outbox_id: "backlog".into(),
                punches,
                ..Default::default()
            };
            let ack = gw_js
                .send_publish(
                    format!("gatewayd.v1.batches.{GATEWAY}"),
                    async_nats::jetstream::message::PublishMessage::build()
                        .payload(batch.encode_to_vec().into())
                        .message_id(format!("{GATEWAY}:backlog:{}", b + 1)),
                )
                .await
                .context("publishing the backlog")?;
            ack.await.context("publishing the backlog")?;
        }
        println!(
            "\n== loader on a backlog ==\npublished {} punches in {batches} batches to the stream in {:.1} s",
            args.backlog,
            t0.elapsed().as_secs_f64()
        );
        let n = args.loaders.max(1);
        let t1 = Instant::now();
        let mut running = start_loaders(&gatewayd, &dir, n, &urls, &pki, &pg).await?;
        let target = before + args.backlog as i64;
        let (rows, last) = wait_rows(&pg, target, Duration::from_secs(args.drain)).await?;
        let secs = (last - t1).as_secs_f64();
        println!(
            "{n} loader(s) from start to the last row: {} rows in {secs:.1} s = {:.0} rows/s",
            rows - before,
            (rows - before) as f64 / secs.max(0.001)
        );
        if rows < target {
            eprintln!("the backlog did not load within {} s", args.drain);
            ok = false;
        }
        for l in &mut running {
            l.stop(Duration::from_secs(30)).await?;
        }
    } else {
        for l in &mut loaders {
            l.stop(Duration::from_secs(30)).await?;
        }
    }
    for n in &mut nats {
        let _ = n.stop(Duration::from_secs(30)).await;
    }
    let _ = pg_proc.stop(Duration::from_secs(30)).await;
    println!("load average at the end: {}", load_average());
    Ok(ok)
}
