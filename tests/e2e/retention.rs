//! Retention through the real daemon: delivered data past `retention_days` leaves every API read and every tree;
//! undelivered data stays, with the alarm that says so. Retention's clock is the file named by
//! `GATEWAYD_RETENTION_CLOCK_FILE`, which the test moves forward (the daemon's other clocks are not), and passes run every
//! few hundred milliseconds.

use std::time::Duration;

use crate::harness::{base_config, dev_certs, http, upload_attlog, wait_until, Gateway};
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
const ROSTER: &str = "employee,name,department,pin\nE1,Li Wei,D1,1001\nE2,Wang Fang,D1,1002\n";

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
    std::fs::write(dir.path().join("roster.csv"), ROSTER).unwrap();
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
    let certs = dev_certs(work.path());
    let out = work.path().join("received.jsonl");
    let sink = Sink::start(&certs, &out, "127.0.0.1:0", "");
    let port = sink.addr.rsplit(':').next().unwrap().to_owned();
    let upstream = format!(
        "[upstream]\nurl = \"https://localhost:{port}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         retention_days = 1\nlinger = \"50ms\"\nmax_backoff = \"1s\"\n",
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
    set_clock(&clock, 3);
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
