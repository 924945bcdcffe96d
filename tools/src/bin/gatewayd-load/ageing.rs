//! `gatewayd-load ageing`: years of a site through the real daemon, to show that the disk reaches a plateau.
//!
//! A gateway with ZKTeco PUSH terminals, a roster of `--employees` people, day-shift rules, and its upstream pointed at
//! the reference receiver (whose output file is emptied after every weekly sample: years of it would fill the disk). Simulated days start `--days` before today;
//! for each workday every employee punches 4 times (uploaded as the terminals' ATTLOG, each upload answered only once
//! durable). Retention's clock (`GATEWAYD_RETENTION_CLOCK_FILE`) follows the simulated days, so `retention_days`
//! counts simulated time; the daemon's own clock is the real one (the dates are behind its horizon, reconciled from the
//! store like a terminal's backlog). Every simulated week, once the outbox has delivered what it holds, the data
//! directory is measured. At the end the daemon is restarted: the time to `READY=1` and the memory after it are the
//! cost of a restart after years. The samples go to a CSV file and an SVG chart (plotters).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use jiff::civil::{Date, Weekday};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::e2e::start_receiver;
use crate::procs::{disk_usage, Proc, Scratch};

#[derive(clap::Args, Debug)]
pub struct AgeingArgs {
    /// Employees on the roster (each punches 4 times a workday).
    #[arg(long, default_value_t = 10_000)]
    employees: u32,
    /// Simulated days, ending today.
    #[arg(long, default_value_t = 730)]
    days: u32,
    /// The gateway's `retention_days`.
    #[arg(long, default_value_t = 90)]
    retention_days: u32,
    /// ZKTeco terminals the employees are spread over.
    #[arg(long, default_value_t = 20)]
    terminals: u32,
    /// Where the weekly samples go (CSV).
    #[arg(long, default_value = "ageing.csv")]
    csv: PathBuf,
    /// Where the chart goes (SVG).
    #[arg(long, default_value = "ageing.svg")]
    svg: PathBuf,
    /// The `gatewayd` binary (default: next to this one).
    #[arg(long)]
    gatewayd: Option<PathBuf>,
    /// Keep the scratch directory.
    #[arg(long)]
    keep: bool,
}

const SITE_TZ: &str = "Asia/Shanghai";
const RULES: &str = r#"
[[shift]]
id = "day"
start = "09:00"
end = "18:00"
late_grace = "5m"
closes_after = "6h"

[[group]]
id = "site"
departments = ["PLANT"]
shift = "day"
workdays = ["mon", "tue", "wed", "thu", "fri"]
"#;

/// One weekly sample.
#[derive(Clone, Debug)]
struct Sample {
    day: u32,
    date: Date,
    punches: u64,
    data_bytes: u64,
    parts_bytes: u64,
    parts: usize,
    rss: u64,
}

fn serial(t: u32) -> String {
    format!("AGE{t:05}")
}

fn pin(e: u32) -> u32 {
    100_000 + e
}

pub async fn run(args: AgeingArgs) -> anyhow::Result<bool> {
    let gatewayd = match &args.gatewayd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("gatewayd"),
    };
    anyhow::ensure!(gatewayd.is_file(), "{} not found (build it, or pass --gatewayd)", gatewayd.display());
    let scratch = Scratch::new(args.keep)?;
    let dir = scratch.path.clone();
    let certs = gatewayd::cli::certs::write_dev_set(&dir.join("certs"), "ageing-gw", 3650)?;
    let received = dir.join("received.jsonl");
    let (mut sink, addr, mut sink_lines) = start_receiver(&gatewayd, &dir, &certs, &received).await?;
    // Drain the receiver's output (one line per batch) so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = sink_lines.next_line().await {} });
    let port = addr.rsplit(':').next().unwrap_or_default().to_owned();

    let mut roster = String::from("employee,name,department,pin\n");
    for e in 0..args.employees {
        roster.push_str(&format!("E{e:05},Employee {e},PLANT,{}\n", pin(e)));
    }
    std::fs::write(dir.join("roster.csv"), roster)?;
    std::fs::write(dir.join("rules.toml"), RULES)?;
    let mut config = format!(
        "[gateway]\nid = \"ageing-gw\"\ndata_dir = \"{data}\"\ntimezone = \"{SITE_TZ}\"\nallow_root = true\n\n\
         [api]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 4194304\n\n[mqtt]\nlisten = \"127.0.0.1:0\"\n\n\
         [store]\ndisk_budget_mb = 0\n\n[roster]\nfile = \"roster.csv\"\n\n[rules]\nfile = \"rules.toml\"\n\n\
         [upstream]\nurl = \"https://localhost:{port}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         retention_days = {retention}\n\n",
        data = dir.join("data").display(),
        ca = certs.ca.display(),
        cert = certs.client_cert.display(),
        key = certs.client_key.display(),
        retention = args.retention_days,
    );
    for t in 0..args.terminals {
        config.push_str(&format!(
            "[[device]]\nid = \"zk-{t:03}\"\ndriver = \"adms\"\nserial_number = \"{}\"\n\n",
            serial(t)
        ));
    }
    let config_path = dir.join("gatewayd.toml");
    std::fs::write(&config_path, config)?;
    let clock = dir.join("retention-clock");

    let tz = jiff::tz::TimeZone::get(SITE_TZ)?;
    let today = jiff::Timestamp::now().to_zoned(tz.clone()).date();
    let first = today.checked_sub(jiff::Span::new().days(i64::from(args.days)))?;
    set_clock(&clock, first, &tz)?;
    let start = |dir: PathBuf, config: PathBuf, clock: PathBuf, gatewayd: PathBuf| async move {
        let mut cmd = Command::new(&gatewayd);
        cmd.args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .env(gatewayd::app::retention::CLOCK_ENV, &clock)
            .env(gatewayd::app::retention::EVERY_ENV, "1000");
        Proc::start_notify("gatewayd", cmd, &dir, Duration::from_secs(600)).await
    };
    let mut gw = start(dir.clone(), config_path.clone(), clock.clone(), gatewayd.clone()).await?;
    let api = listener(&dir, "api")?;

    println!(
        "ageing: {} employees, {} terminals, {} simulated days from {first}, retention_days {}",
        args.employees, args.terminals, args.days, args.retention_days
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut punches = 0u64;
    let mut stamp = 1u32;
    for day in 0..args.days {
        let date = first.checked_add(jiff::Span::new().days(i64::from(day)))?;
        if !matches!(date.weekday(), Weekday::Saturday | Weekday::Sunday) {
            for t in 0..args.terminals {
                let body = attlog(date, t, args.terminals, args.employees);
                let n = body.lines().count();
                if n == 0 {
                    continue;
                }
                let answer = post(api, &format!("/iclock/cdata?SN={}&table=ATTLOG&Stamp={stamp}", serial(t)), body)
                    .await
                    .with_context(|| format!("uploading {date} from terminal {t}"))?;
                stamp += 1;
                anyhow::ensure!(answer == format!("OK: {n}"), "terminal {t} on {date}: answered {answer:?}");
                punches += n as u64;
            }
        }
        // The simulated day is over: retention's clock moves to the next midnight.
        set_clock(&clock, date.checked_add(jiff::Span::new().days(1))?, &tz)?;
        if day % 7 == 6 || day + 1 == args.days {
            wait_delivered(api, Duration::from_secs(600)).await?;
            // The receiver appends; emptying its file keeps the disk for the gateway (it reads the file only at start).
            std::fs::OpenOptions::new().write(true).open(&received)?.set_len(0)?;
            let s = Sample {
                day: day + 1,
                date,
                punches,
                data_bytes: disk_usage(&dir.join("data")),
                parts_bytes: disk_usage(&dir.join("data").join("store").join("parts")),
                parts: std::fs::read_dir(dir.join("data").join("store").join("parts")).map(|d| d.count()).unwrap_or(0),
                rss: gw.sample()?.rss,
            };
            println!(
                "day {:>4} ({}): {:>10} punches sent, data dir {:>8.1} MB (punch partitions {:>8.1} MB in {} parts), RSS {:.0} MB, {:.0} s",
                s.day,
                s.date,
                s.punches,
                mb(s.data_bytes),
                mb(s.parts_bytes),
                s.parts,
                mb(s.rss),
                started.elapsed().as_secs_f64()
            );
            samples.push(s);
        }
    }
    gw.stop(Duration::from_secs(30)).await?;

    // A restart after years: how long the store takes to open, and the memory once ready.
    let t = Instant::now();
    let mut gw = start(dir.clone(), config_path, clock, gatewayd).await?;
    let open = t.elapsed();
    let ready = gw.sample()?;
    gw.stop(Duration::from_secs(30)).await?;
    sink.stop(Duration::from_secs(30)).await?;
    println!("restart at the end: READY after {:.2} s, RSS {:.1} MB once ready", open.as_secs_f64(), mb(ready.rss));

    write_csv(&args.csv, &samples)?;
    plot(&args.svg, &samples, args.retention_days)?;
    println!("samples: {}; chart: {}", args.csv.display(), args.svg.display());
    Ok(true)
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

/// The ATTLOG of terminal `t` for `date`: its share of the employees, 4 punches each around a day shift.
fn attlog(date: Date, t: u32, terminals: u32, employees: u32) -> String {
    let mut out = String::new();
    for e in (t..employees).step_by(terminals as usize) {
        let m = e % 10;
        for (h, min) in [(8, 50 + m), (12, m), (13, m), (18, 5 + m)] {
            out.push_str(&format!("{}\t{date} {h:02}:{min:02}:{:02}\t0\t1\n", pin(e), e % 60));
        }
    }
    out
}

fn set_clock(clock: &Path, date: Date, tz: &jiff::tz::TimeZone) -> anyhow::Result<()> {
    let ms = date.to_zoned(tz.clone())?.timestamp().as_millisecond();
    std::fs::write(clock, ms.to_string()).with_context(|| format!("writing {}", clock.display()))
}

fn listener(dir: &Path, name: &str) -> anyhow::Result<std::net::SocketAddr> {
    let text = std::fs::read(dir.join("data").join(gatewayd::app::LISTENERS_FILE))?;
    let v: serde_json::Value = serde_json::from_slice(&text)?;
    v[name].as_str().ok_or_else(|| anyhow!("listeners.json names no {name}"))?.parse().context("listener address")
}

/// One HTTP/1.1 request (`Connection: close`); returns the body, trimmed. A non-200 answer is an error.
async fn request(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(300), s.read_to_string(&mut answer)).await??;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no HTTP answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{method} {path}: {head}");
    }
    Ok(body.trim().to_owned())
}

async fn post(addr: std::net::SocketAddr, path: &str, body: String) -> anyhow::Result<String> {
    request(addr, "POST", path, &body).await
}

async fn metric(addr: std::net::SocketAddr, series: &str) -> anyhow::Result<Option<f64>> {
    let body = request(addr, "GET", "/metrics", "").await?;
    Ok(body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())))
}

/// Waits until the outbox is empty (everything so far delivered), polling its depth.
async fn wait_delivered(api: std::net::SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let depth = metric(api, "gatewayd_outbox_depth").await?;
        if depth == Some(0.0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the outbox still holds {depth:?} items after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn write_csv(path: &Path, samples: &[Sample]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_path(path).with_context(|| format!("writing {}", path.display()))?;
    w.write_record(["day", "date", "punches_sent", "data_dir_bytes", "partition_bytes", "partitions", "rss_bytes"])?;
    for s in samples {
        w.write_record([
            s.day.to_string(),
            s.date.to_string(),
            s.punches.to_string(),
            s.data_bytes.to_string(),
            s.parts_bytes.to_string(),
            s.parts.to_string(),
            s.rss.to_string(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

fn plot(path: &Path, samples: &[Sample], retention_days: u32) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let max_day = samples.last().map_or(1, |s| s.day).max(1);
    let max_mb = samples.iter().map(|s| mb(s.data_bytes)).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Data directory over simulated days (retention_days = {retention_days})"), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0u32..max_day, 0f64..max_mb)
        .map_err(|e| anyhow!("{e}"))?;
    chart.configure_mesh().x_desc("simulated day").y_desc("MB on disk").draw().map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(samples.iter().map(|s| (s.day, mb(s.data_bytes))), &BLUE))
        .map_err(|e| anyhow!("{e}"))?
        .label("data directory")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(samples.iter().map(|s| (s.day, mb(s.parts_bytes))), &RED))
        .map_err(|e| anyhow!("{e}"))?
        .label("punch partitions")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
