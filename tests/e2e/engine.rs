//! The attendance engine through the real daemon: punches published by an MQTT device become records (read back from
//! the daemon's own store after it stopped); a restart and a kill -9 add no revisions; a roster learned on SIGHUP resolves
//! an earlier unknown card.

use std::path::Path;
use std::time::Duration;

use gatewayd::proto::upstream::AttendanceRecord;
use gatewayd::reconcile::RecordStore;
use gatewayd::store::Store;
use nix::sys::signal::Signal;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::harness::{base_config, Gateway};

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
fn publish(gw: &Gateway, punches: &[String]) {
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
