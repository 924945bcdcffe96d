//! Retention through the real daemon: delivered data past `retention_days` leaves every API read and every tree;
//! undelivered data stays, with the alarm that says so. Retention's clock is the file named by
//! `GATEWAYD_RETENTION_CLOCK_FILE`, which the test moves forward (the daemon's other clocks are not), and passes run every
//! few hundred milliseconds.

use std::time::Duration;

use crate::harness::{base_config, dev_certs_named, http, upload_attlog, wait_until, Gateway};
use crate::upstream::Sink;
use gatewayd::api::v1::MAX_LIST;

const SN: &str = "RETAIN0001";
const RULES: &str = r#"
reconcile_days = 1

[[shift]]
id = "day"
start = "09:00"
end = "18:00"
closes_after = "6h"

[[group]]
id = "all"
departments = ["D1"]
shift = "day"
workdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
"#;
/// 20 employees, E1 to E20, with terminal PINs 1001 to 1020.
fn roster() -> String {
    let mut csv = "employee,name,department,pin\n".to_owned();
    for n in 1..=20 {
        csv.push_str(&format!("E{n},Employee {n},D1,{}\n", 1000 + n));
    }
    csv
}

fn local_date(days_ago: i64) -> jiff::civil::Date {
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
    let today = jiff::Timestamp::now().to_zoned(tz).date();
    today.checked_sub(jiff::Span::new().days(days_ago)).unwrap()
}

/// 3,000 punches of two employees on a date ten days ago (09:00 on, one a second): enough for a partition's files to
/// outweigh an empty one's.
fn upload_old(gw: &Gateway, stamp: u32) {
    let old = local_date(10);
    let lines: String = (0..OLD)
        .map(|i| format!("{}\t{old} {:02}:{:02}:{:02}\t0\t15\n", 1001 + i % 2, 9 + i / 3600, (i / 60) % 60, i % 60))
        .collect();
    upload_attlog(gw, SN, stamp, lines);
}

const OLD: usize = 3000;

/// 10 punches from today (from midnight on, so no device clock is in the future).
fn upload_today(gw: &Gateway, stamp: u32) {
    let today = local_date(0);
    let lines: String = (0..10).map(|i| format!("{}\t{today} 00:00:{:02}\t0\t15\n", 1001 + i % 2, i)).collect();
    upload_attlog(gw, SN, stamp, lines);
}

/// Sets retention's clock `days` ahead of now.
fn set_clock(file: &std::path::Path, days: i64) {
    let ms = jiff::Timestamp::now().as_millisecond() + days * 86_400_000;
    std::fs::write(file, ms.to_string()).unwrap();
}

/// A gateway whose retention clock is the file `clock`, with passes every 300 ms.
fn start(dir: tempfile::TempDir, upstream: &str, clock: &std::path::Path) -> Gateway {
    std::fs::write(dir.path().join("rules.toml"), RULES).unwrap();
    std::fs::write(dir.path().join("roster.csv"), roster()).unwrap();
    let config = format!(
        "{}[[device]]\nid = \"zk\"\ndriver = \"adms\"\nserial_number = \"{SN}\"\n\n\
         [roster]\nfile = \"roster.csv\"\n\n[rules]\nfile = \"rules.toml\"\n\n{upstream}",
        base_config("gw-ret")
    );
    let clock = clock.to_str().unwrap();
    let env = [
        ("GATEWAYD_RETENTION_CLOCK_FILE", clock),
        ("GATEWAYD_RETENTION_EVERY_MS", "300"),
        ("GATEWAYD_ENGINE_TICK_MS", "200"),
    ];
    Gateway::start_in_env(dir, &config, &env)
}

/// How many punches and records of `date` the API shows an admin.
fn api_counts(gw: &Gateway, token: &str, date: jiff::civil::Date) -> (usize, usize) {
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];
    let (status, punches) =
        http("GET", gw.addr("api"), &format!("/api/v1/punches?from={date}&to={date}"), &headers, None);
    assert_eq!(status, 200, "{punches}");
    let (status, records) =
        http("GET", gw.addr("api"), &format!("/api/v1/records?from={date}&to={date}"), &headers, None);
    assert_eq!(status, 200, "{records}");
    (punches.matches("\"punch_id\"").count(), records.matches("\"record_id\"").count())
}

#[test]
fn delivered_data_past_retention_leaves_every_read_and_tree_and_undelivered_data_stays() {
    let work = tempfile::tempdir().unwrap();
    let certs = dev_certs_named(work.path(), "gw-ret");
    let out = work.path().join("received.jsonl");
    let sink = Sink::start(&certs, &out, "127.0.0.1:0", "");
    let port = sink.addr.rsplit(':').next().unwrap().to_owned();
    let upstream = format!(
        "[upstream]\nurl = \"https://localhost:{port}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         retention_days = 20\nlinger = \"50ms\"\nmax_backoff = \"1s\"\n",
        ca = certs.join("ca.pem").display(),
        cert = certs.join("client.pem").display(),
        key = certs.join("client.key").display(),
    );
    let old = local_date(10);
    let today = local_date(0);

    // Delivered: the old date goes from the API and the trees, today stays (inside the engine's reconcile_days).
    let clock = work.path().join("clock");
    let mut gw = start(tempfile::tempdir().unwrap(), &upstream, &clock);
    let admin = gw.token(&["--role", "admin"]);
    upload_old(&gw, 1);
    let received = || std::fs::read_to_string(&out).unwrap_or_default();
    wait_until("the old punches and the old date's records at the receiver", Duration::from_secs(60), received, |t| {
        t.matches("\"kind\":\"punch\"").count() >= OLD && t.contains(&format!("\"work_date\":\"{old}\""))
    });
    assert_eq!(api_counts(&gw, &admin, old), (MAX_LIST.min(OLD), 2), "all there while retention's clock is today");
    let size_before = du(&gw.data_dir().join("store"));
    // Time passes: six days on, the partition holding the old punches is rotated away from (partitions cover a quarter
    // of retention_days, five days here); thirty days on, it is past retention and goes.
    set_clock(&clock, 6);
    gw.wait_metric_at_least("gatewayd_store_partitions", 2.0, Duration::from_secs(60));
    set_clock(&clock, 30);
    gw.wait_metric_at_least("gatewayd_retention_removed_total{data=\"partitions\"}", 1.0, Duration::from_secs(60));
    gw.wait_metric_at_least("gatewayd_retention_removed_total{data=\"punches\"}", OLD as f64, Duration::from_secs(60));
    gw.wait_metric_at_least("gatewayd_retention_removed_total{data=\"records\"}", 2.0, Duration::from_secs(60));
    assert_eq!(api_counts(&gw, &admin, old), (0, 0), "the old date is gone from the API");
    let size_after = du(&gw.data_dir().join("store"));
    assert!(size_after < size_before, "the store's files got smaller: {size_after} < {size_before}");
    assert_eq!(gw.metric("gatewayd_retention_held_back"), Some(0.0));
    upload_today(&gw, 2);
    wait_until("today's punches at the receiver", Duration::from_secs(60), received, |t| {
        t.matches("\"kind\":\"punch\"").count() >= OLD + 10
    });
    let passes = gw.metric("gatewayd_retention_passes_total").unwrap_or(0.0);
    gw.wait_metric_at_least("gatewayd_retention_passes_total", passes + 2.0, Duration::from_secs(60));
    assert_eq!(api_counts(&gw, &admin, today).0, 10, "today's punches stay");
    // A punch of the expired date sent again is stored and forwarded, and the date is not reconciled again.
    upload_attlog(&gw, SN, 3, format!("1001\t{old} 12:00:00\t0\t15\n"));
    wait_until("the late punch at the receiver", Duration::from_secs(60), received, |t| {
        t.matches("\"kind\":\"punch\"").count() > OLD + 10
    });
    gw.stop();
    let data = gw.data_dir();
    drop(gw);

    // Every tree, read directly: no punch, index entry, record or day index entry of the old date.
    let store = gatewayd::store::Store::open(&data.join("store"), 8).unwrap();
    let (from_ms, to_ms) = day_bounds(old);
    let left: Vec<_> = store.by_time(from_ms, to_ms).map(|p| p.unwrap().punch_id).collect();
    assert!(left.len() <= 1, "at most the late punch (its partition may be the newest): {left:?}");
    let records = store.db().open_tree("records").unwrap();
    assert_eq!(records.scan_prefix(old.to_string()).count(), 0);
    let by_employee = store.db().open_tree("records_by_employee").unwrap();
    assert!(by_employee.iter().keys().all(|k| !String::from_utf8_lossy(&k.unwrap()).contains(&old.to_string())));
    let outbox = store.db().open_tree("outbox").unwrap();
    let mut day = b"D".to_vec();
    day.extend_from_slice(old.to_string().as_bytes());
    assert_eq!(outbox.scan_prefix(&day).count(), 0);
    drop(store);
    sink.stop();

    // Undelivered (no upstream, so the default 30 days): everything stays, whatever its age, and the alarm says so.
    let clock = work.path().join("clock-undelivered");
    set_clock(&clock, 40);
    let mut gw = start(tempfile::tempdir().unwrap(), "", &clock);
    let admin = gw.token(&["--role", "admin"]);
    upload_old(&gw, 1);
    gw.wait_metric_at_least("gatewayd_outbox_depth", 50.0, Duration::from_secs(60));
    gw.wait_metric_at_least("gatewayd_retention_held_back", 1.0, Duration::from_secs(60));
    let passes = gw.metric("gatewayd_retention_passes_total").unwrap_or(0.0);
    gw.wait_metric_at_least("gatewayd_retention_passes_total", passes + 3.0, Duration::from_secs(60));
    assert_eq!(api_counts(&gw, &admin, old).0, MAX_LIST.min(OLD), "undelivered punches stay");
    assert_eq!(gw.metric("gatewayd_retention_removed_total{data=\"punches\"}").unwrap_or(0.0), 0.0);
    gw.stop();
}

fn day_bounds(date: jiff::civil::Date) -> (i64, i64) {
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
    let start = date.to_zoned(tz.clone()).unwrap().timestamp().as_millisecond();
    let end = date.tomorrow().unwrap().to_zoned(tz).unwrap().timestamp().as_millisecond();
    (start, end)
}

/// Bytes the files under `dir` take (as `du` counts them).
fn du(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { du(&entry.path()) } else { meta.blocks() * 512 };
    }
    total
}

/// The disk budget's promise end to end: at the budget, with undelivered data, new punches are refused (the terminal
/// keeps them) and the alarm is up; once delivery resumes and retention deletes the delivered partitions, the state
/// returns to ok and punches are accepted again, without a restart.
#[test]
fn a_full_budget_recovers_without_a_restart_once_delivery_resumes() {
    use nix::sys::signal::Signal;
    const MIB: f64 = 1024.0 * 1024.0;
    let work = tempfile::tempdir().unwrap();
    let certs = dev_certs_named(work.path(), "gw-ret");
    let clock = work.path().join("clock");
    // Retention's clock 40 days ahead: past the default 30 days, so everything delivered can go.
    set_clock(&clock, 40);
    let mut gw = start(tempfile::tempdir().unwrap(), "", &clock);
    // 24,000 punches of 20 employees over ten dates 5 to 14 days ago, in eight uploads: megabytes of punch partitions.
    for stamp in 0..8u32 {
        let lines: String = (0..3000u32)
            .map(|i| {
                let n = stamp * 3000 + i;
                let (pin, date, second) = (1001 + n % 20, local_date(5 + i64::from((n / 20) % 10)), n / 200);
                format!("{pin}\t{date} 06:{:02}:{:02}\t0\t15\n", second / 60, second % 60)
            })
            .collect();
        upload_attlog(&gw, SN, 10 + stamp, lines);
    }
    // Everything through the engine into the outbox (undelivered: no upstream yet), then a budget just below what the
    // store uses: full.
    gw.wait_metric_at_least("gatewayd_outbox_depth", 24_000.0, Duration::from_secs(120));
    gw.wait_metric_at_least("gatewayd_retention_held_back", 1.0, Duration::from_secs(60));
    let used = gw.wait_metric_at_least("gatewayd_disk_used_bytes", 4.0 * MIB, Duration::from_secs(30));
    // Below it by a tenth: the main database's own size moves a little as sled cleans up.
    let budget_mb = (used * 0.9 / MIB).floor() as u64;
    let base = std::fs::read_to_string(&gw.config_path).unwrap();
    // The alarm band narrowed to 1%: the main database (outbox, records) keeps the space it used while delivering,
    // and this test is about the full state, not the alarm.
    let with_budget = format!("{base}\n[store]\ndisk_budget_mb = {budget_mb}\ndisk_alarm_percent = 99\n");
    std::fs::write(&gw.config_path, &with_budget).unwrap();
    gw.signal(Signal::SIGHUP);
    gw.wait_metric_at_least("gatewayd_disk_budget_state", 2.0, Duration::from_secs(30));
    let late = |stamp: u32| {
        http(
            "POST",
            gw.addr("api"),
            &format!("/iclock/cdata?SN={SN}&table=ATTLOG&Stamp={stamp}"),
            &[],
            Some(format!("1001\t{} 08:00:0{}\t0\t15\n", local_date(0), stamp % 10).into_bytes()),
        )
    };
    let refused = late(100);
    assert_ne!(refused, (200, "OK: 1\n".to_owned()), "a new punch is refused at the budget");

    // Delivery resumes: the receiver comes up and the configuration names it.
    let out = work.path().join("received.jsonl");
    let sink = Sink::start(&certs, &out, "127.0.0.1:0", "");
    let port = sink.addr.rsplit(':').next().unwrap().to_owned();
    let upstream = format!(
        "{with_budget}\n[upstream]\nurl = \"https://localhost:{port}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         linger = \"50ms\"\nmax_backoff = \"1s\"\n",
        ca = certs.join("ca.pem").display(),
        cert = certs.join("client.pem").display(),
        key = certs.join("client.key").display(),
    );
    std::fs::write(&gw.config_path, upstream).unwrap();
    gw.signal(Signal::SIGHUP);
    // Time passes: the partitions holding the punches are rotated away from, then are past retention (30 days).
    set_clock(&clock, 80);
    let passes = gw.metric("gatewayd_retention_passes_total").unwrap_or(0.0);
    gw.wait_metric_at_least("gatewayd_retention_passes_total", passes + 2.0, Duration::from_secs(60));
    set_clock(&clock, 120);
    gw.wait_metric_at_least("gatewayd_retention_removed_total{data=\"partitions\"}", 1.0, Duration::from_secs(120));
    let state = wait_until(
        "the budget back to ok",
        Duration::from_secs(60),
        || gw.metric("gatewayd_disk_budget_state"),
        |s| *s == Some(0.0),
    );
    assert_eq!(state, Some(0.0));
    wait_until(
        "no undelivered data held back",
        Duration::from_secs(60),
        || gw.metric("gatewayd_retention_held_back"),
        |h| *h == Some(0.0),
    );
    let accepted = wait_until("a new punch accepted", Duration::from_secs(30), || late(101), |r| r.0 == 200);
    assert_eq!(accepted, (200, "OK: 1\n".to_owned()));
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(text.matches("\"kind\":\"punch\"").count() >= 24_000, "everything was delivered before it went");
    gw.stop();
    sink.stop();
}
