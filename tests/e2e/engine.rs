//! The attendance engine through the real daemon: punches published by an MQTT device become records (read back from
//! the daemon's own store after it stopped); a restart and a kill -9 add no revisions; a roster learned on SIGHUP resolves
//! an earlier unknown card; a shift window that closes during the test makes its absences within seconds; a punch 40
//! days old reaches the upstream receiver as a record of its day.

use std::path::Path;
use std::time::Duration;

use gatewayd::proto::upstream::AttendanceRecord;
use gatewayd::reconcile::RecordStore;
use gatewayd::store::Store;
use nix::sys::signal::Signal;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::harness::{base_config, dev_certs_named, http, wait_until, Gateway};
use crate::upstream::Sink;

const LIMIT: Duration = Duration::from_secs(30);

const RULES: &str = r#"
dedupe_window = "5m"

[[shift]]
id = "day"
start = "09:00"
end = "18:00"
late_grace = "10m"
closes_after = "6h"
overtime_after = "30m"

[[group]]
id = "office"
departments = ["D-OFF"]
shift = "day"
workdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
"#;

const ROSTER: &str = "employee,name,department,card\nE1,Li Wei,D-OFF,0A0A0A01\n";

fn tz() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::get("Asia/Shanghai").unwrap()
}

/// The local date `days` ago in the site time zone.
fn day(days: i64) -> jiff::civil::Date {
    jiff::Timestamp::now().to_zoned(tz()).date().checked_sub(jiff::Span::new().days(days)).unwrap()
}

/// `HH:MM` on the date `days` ago, as the device sends it (RFC 3339 with the site offset).
fn time(days: i64, hh: i8, mm: i8) -> String {
    day(days).at(hh, mm, 0, 0).to_zoned(tz()).unwrap().strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// Publishes punches as device `face-1` and waits for every ack to say `stored`.
pub(crate) fn publish(gw: &Gateway, punches: &[String]) {
    let addr = gw.addr("mqtt");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut o = MqttOptions::new("face-1-client", addr.ip().to_string(), addr.port());
        o.set_credentials("face-1", "face-1-secret");
        o.set_keep_alive(Duration::from_secs(10));
        let (client, mut events) = AsyncClient::new(o, 64);
        events.network_options.set_connection_timeout(LIMIT.as_secs());
        client.subscribe("gw/v1/dev/face-1/ack", QoS::AtLeastOnce).await.unwrap();
        let mut subscribed = false;
        let mut acked = 0;
        let mut sent = false;
        while acked < punches.len() {
            let event = tokio::time::timeout(LIMIT, events.poll()).await.expect("mqtt timed out").expect("mqtt");
            match event {
                Event::Incoming(Packet::SubAck(_)) => subscribed = true,
                Event::Incoming(Packet::Publish(p)) if p.topic.ends_with("/ack") => {
                    let ack: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                    assert_eq!(ack["status"], "stored", "{ack}");
                    acked += 1;
                }
                _ => {}
            }
            if subscribed && !sent {
                for p in punches {
                    client
                        .publish("gw/v1/dev/face-1/punch", QoS::AtLeastOnce, false, p.clone().into_bytes())
                        .await
                        .unwrap();
                }
                sent = true;
            }
        }
        client.disconnect().await.ok();
    });
}

fn config() -> String {
    base_config("engine-gw")
        + "[[device]]\nid = \"face-1\"\ndriver = \"mqtt\"\nsecret = \"face-1-secret\"\n\n\
           [roster]\nfile = \"roster.csv\"\n\n[rules]\nfile = \"rules.toml\"\n"
}

/// Every stored record (the daemon must be stopped: one process per sled database).
fn records(data: &Path) -> Vec<AttendanceRecord> {
    let store = Store::open(&data.join("store"), 8).unwrap();
    let records = RecordStore::open(store.db()).unwrap();
    records.between(jiff::civil::Date::MIN, jiff::civil::Date::MAX).map(|r| r.unwrap()).collect()
}

#[test]
fn punches_become_records_and_restarts_add_no_revisions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), RULES).unwrap();
    std::fs::write(dir.path().join("roster.csv"), ROSTER).unwrap();
    let mut gw = Gateway::start_in(dir, &config());

    // Yesterday: E1 in by face at 09:05, out by card at 18:10; an unknown card at 09:00.
    publish(
        &gw,
        &[
            format!(r#"{{"seq": 1, "time": "{}", "method": "face", "employee": "E1"}}"#, time(1, 9, 5)),
            format!(r#"{{"seq": 2, "time": "{}", "method": "card", "credential": "0a0a0a01"}}"#, time(1, 18, 10)),
            format!(r#"{{"seq": 3, "time": "{}", "method": "card", "credential": "DEADBEEF"}}"#, time(1, 9, 0)),
        ],
    );
    gw.wait_metric_at_least("gatewayd_engine_punches_total", 3.0, LIMIT);
    let (status, _) = gw.stop();
    assert!(status.success(), "{}", gw.stderr);
    let all = records(&gw.data_dir());
    assert_eq!(all.len(), 1, "{all:#?}");
    let r = &all[0];
    assert_eq!(r.record_id, format!("engine-gw:E1:{}:day", day(1)));
    assert_eq!((r.clock_in_ms.is_some(), r.clock_out_ms.is_some(), r.closed), (true, true, true));
    // MQTT devices report in real time, so a punch from yesterday arriving now is flagged (SPEC: max_clock_skew).
    assert_eq!(r.statuses, vec!["clock_skew"], "{r:?}");
    assert_eq!((r.worked_minutes, r.rules_version, r.punch_ids.len()), (545, 1, 2));
    let revision = r.revision;

    // A restart re-derives the same records: no revision.
    gw.spawn();
    gw.wait_metric_at_least("gatewayd_engine_recoveries_total", 1.0, LIMIT);
    gw.wait_metric_at_least("gatewayd_engine_batches_total", 1.0, LIMIT);
    assert_eq!(gw.metric("gatewayd_engine_record_revisions_total"), Some(0.0));

    // The roster learns the unknown card on SIGHUP: a record for E2 appears.
    std::fs::write(gw.dir.path().join("roster.csv"), format!("{ROSTER}E2,Wang Fang,D-OFF,DEADBEEF\n")).unwrap();
    gw.signal(Signal::SIGHUP);
    // The daemon answers a reload with READY=1 (systemd's reload protocol); take it so the next start waits for its own.
    gw.wait_for("READY=1", LIMIT);
    gw.wait_metric_at_least("gatewayd_engine_record_revisions_total", 1.0, LIMIT);

    // kill -9, then a restart: nothing is lost, nothing is repeated.
    gw.kill9();
    gw.spawn();
    gw.wait_metric_at_least("gatewayd_engine_recoveries_total", 1.0, LIMIT);
    gw.wait_metric_at_least("gatewayd_engine_batches_total", 1.0, LIMIT);
    assert_eq!(gw.metric("gatewayd_engine_record_revisions_total"), Some(0.0));
    let (status, _) = gw.stop();
    assert!(status.success(), "{}", gw.stderr);
    let all = records(&gw.data_dir());
    let e1 = all.iter().find(|r| r.employee_id == "E1").unwrap();
    assert_eq!(e1.revision, revision);
    let e2 = all.iter().find(|r| r.employee_id == "E2").expect("E2 resolved after SIGHUP");
    assert_eq!(e2.punch_ids, vec!["engine-gw:face-1:3"]);
    assert_eq!(e2.statuses, vec!["missing_out", "clock_skew"]);
}

/// A site time zone in which it is now between 03:00 and 21:00, so that a shift a few minutes around now does not
/// cross midnight (the three zones are 8 and 16 hours apart).
pub(crate) fn daytime_zone() -> &'static str {
    let now = jiff::Timestamp::now();
    ["Asia/Shanghai", "UTC", "America/Los_Angeles"]
        .into_iter()
        .max_by_key(|z| {
            let t = now.to_zoned(jiff::tz::TimeZone::get(z).unwrap()).time();
            let minutes = i32::from(t.hour()) * 60 + i32::from(t.minute());
            minutes.min(24 * 60 - minutes)
        })
        .unwrap()
}

/// The records of `date` through the API, as JSON.
pub(crate) fn api_records(gw: &Gateway, token: &str, date: &str) -> Vec<serde_json::Value> {
    let auth = format!("Bearer {token}");
    let (status, body) = http(
        "GET",
        gw.addr("api"),
        &format!("/api/v1/records?from={date}&to={date}"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["records"].as_array().unwrap().clone()
}

pub(crate) fn statuses_of(records: &[serde_json::Value], employee: &str) -> Option<Vec<String>> {
    records
        .iter()
        .find(|r| r["employee_id"] == employee)
        .map(|r| r["statuses"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect())
}

/// SPEC 4: missing punches and absence are raised at the close of each shift's own window. The rules have a short
/// shift whose window closes a few seconds after the daemon starts, and a night shift whose window closes tomorrow:
/// E1 (no punch) is absent and E2 (a clock-in only) is missing_out within seconds of the short window's close, while
/// E3 on the night shift has nothing. The engine is given the time every 200 ms (`GATEWAYD_ENGINE_TICK_MS`) instead of
/// every 10 s.
#[test]
fn a_shift_window_closing_during_the_test_raises_absent_within_seconds() {
    let zone = daytime_zone();
    let tz = jiff::tz::TimeZone::get(zone).unwrap();
    // The short shift: 3 minutes to 1 minute before the close, which comes 15 s from now (whole seconds).
    let close = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 15).unwrap();
    let local = |t: jiff::Timestamp| t.to_zoned(tz.clone());
    let hms = |t: jiff::Timestamp| local(t).strftime("%H:%M:%S").to_string();
    let start = close - jiff::SignedDuration::from_mins(3);
    let end = close - jiff::SignedDuration::from_mins(1);
    let date = local(start).date().to_string();
    let rules = format!(
        "[[shift]]\nid = \"short\"\nstart = \"{}\"\nend = \"{}\"\nopens_before = \"1h\"\ncloses_after = \"1m\"\n\n\
         [[shift]]\nid = \"night\"\nstart = \"22:00\"\nend = \"06:00\"\ncloses_after = \"4h\"\n\n\
         [[group]]\nid = \"office\"\ndepartments = [\"D-OFF\"]\nshift = \"short\"\n\
         workdays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n\n\
         [[group]]\nid = \"nights\"\ndepartments = [\"D-NIGHT\"]\nshift = \"night\"\n\
         workdays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n",
        hms(start),
        hms(end)
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
    std::fs::write(
        dir.path().join("roster.csv"),
        "employee,name,department\nE1,Li Wei,D-OFF\nE2,Wang Fang,D-OFF\nE3,Zhang Min,D-NIGHT\n",
    )
    .unwrap();
    // The test polls the API every 20 ms: more than a token's default rate.
    let config =
        config().replace("Asia/Shanghai", zone).replace("[api]\n", "[api]\nrate_per_sec = 1000\nrate_burst = 1000\n");
    assert!(config.contains("rate_per_sec"), "{config}");
    let gw = Gateway::start_in_env(dir, &config, &[("GATEWAYD_ENGINE_TICK_MS", "200")]);
    let token = gw.token(&["--role", "admin"]);
    // E2 clocks in one minute before the start (the device reports in real time: within max_clock_skew of now).
    let clock_in = local(start - jiff::SignedDuration::from_mins(1)).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string();
    publish(&gw, &[format!(r#"{{"seq": 1, "time": "{clock_in}", "method": "face", "employee": "E2"}}"#)]);
    // E2's record appears, and nothing is missing while the window is open.
    let before =
        wait_until("E2's record", LIMIT, || api_records(&gw, &token, &date), |r| statuses_of(r, "E2").is_some());
    assert!(jiff::Timestamp::now() < close, "the daemon took too long to start for this test");
    assert_eq!(statuses_of(&before, "E1"), None, "{before:?}");
    assert_eq!(statuses_of(&before, "E2"), Some(vec![]), "{before:?}");

    let absent = Some(vec!["absent".to_owned()]);
    let records = wait_until(
        "E1 absent after the short shift's window closed",
        LIMIT,
        || api_records(&gw, &token, &date),
        |r| statuses_of(r, "E1") == absent,
    );
    let seen = jiff::Timestamp::now();
    let after_close = seen.duration_since(close);
    assert!(after_close >= jiff::SignedDuration::ZERO, "absent before the window closed ({after_close:?})");
    assert!(after_close < jiff::SignedDuration::from_secs(5), "absent {after_close:?} after the close");
    assert_eq!(statuses_of(&records, "E2"), Some(vec!["missing_out".to_owned()]), "{records:?}");
    assert_eq!(statuses_of(&records, "E3"), None, "the night window is still open: {records:?}");
    let e1 = records.iter().find(|r| r["employee_id"] == "E1").unwrap();
    assert_eq!((e1["shift_id"].as_str(), e1["closed"].as_bool()), (Some("short"), Some(true)));
}

/// SPEC 4: a punch older than the horizon (`reconcile_days`, 31 by default) is reconciled from the store, and its
/// record reaches the upstream receiver (`gatewayd upstream-sink`), followed by the digest of its day.
#[test]
fn a_punch_40_days_old_reaches_the_receiver_as_a_record_of_its_day() {
    let work = tempfile::tempdir().unwrap();
    let certs = dev_certs_named(work.path(), "engine-gw");
    let out = work.path().join("received.jsonl");
    let sink = Sink::start(&certs, &out, "127.0.0.1:0", "");
    let port = sink.addr.rsplit(':').next().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), RULES).unwrap();
    std::fs::write(dir.path().join("roster.csv"), ROSTER).unwrap();
    let config = format!(
        "{}[upstream]\nurl = \"https://localhost:{port}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         batch_max_items = 20\nlinger = \"50ms\"\nmax_backoff = \"1s\"\n",
        config(),
        ca = certs.join("ca.pem").display(),
        cert = certs.join("client.pem").display(),
        key = certs.join("client.key").display(),
    );
    let mut gw = Gateway::start_in(dir, &config);
    publish(
        &gw,
        &[
            format!(r#"{{"seq": 1, "time": "{}", "method": "face", "employee": "E1"}}"#, time(40, 9, 5)),
            format!(r#"{{"seq": 2, "time": "{}", "method": "card", "credential": "0A0A0A01"}}"#, time(40, 18, 10)),
        ],
    );
    let record_id = format!("engine-gw:E1:{}:day", day(40));
    let work_date = day(40).to_string();
    let lines = || -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        text.split_inclusive('\n').filter(|l| l.ends_with('\n')).map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let received = wait_until(
        "the 40-day-old day's record with both punches, and its digest, at the receiver",
        Duration::from_secs(60),
        lines,
        |ls| {
            let complete = ls.iter().any(|l| {
                l["kind"] == "record"
                    && l["record_id"] == record_id.as_str()
                    && l["punch_ids"].as_array().map(Vec::len) == Some(2)
            });
            let digest = ls.iter().any(|l| l["kind"] == "digest" && l["work_date"] == work_date.as_str());
            complete && digest
        },
    );
    let newest = received
        .iter()
        .filter(|l| l["kind"] == "record" && l["record_id"] == record_id.as_str())
        .max_by_key(|l| l["revision"].as_u64())
        .unwrap();
    // The device reports in real time, so punches 40 days old are clock_skew (SPEC: max_clock_skew).
    assert_eq!(newest["statuses"], serde_json::json!(["clock_skew"]), "{newest}");
    assert_eq!((newest["worked_minutes"].as_i64(), newest["closed"].as_bool()), (Some(545), Some(true)), "{newest}");
    let punches: Vec<&serde_json::Value> = received.iter().filter(|l| l["kind"] == "punch").collect();
    assert_eq!(punches.len(), 2);
    assert!(
        punches.iter().all(|p| p["employee_id"] == "E1" && p["flags"] == serde_json::json!(["clock_skew"])),
        "{punches:?}"
    );
    gw.stop();
    sink.stop();
}
