//! The command channel of PUSH terminals against the real daemon, with the simulated terminal (`drivers::adms::sim`):
//! a terminal cut off for a while is asked for the records of its silence and delivers them once; a count mismatch on a
//! past day brings that day's records; the API queues a backfill and shows the queue; roster imports and removals
//! become users added to and deleted from the terminal.

use std::path::Path;
use std::time::Duration;

use drivers::adms::sim::AdmsSim;
use gatewayd::store::Store;
use jiff::civil::DateTime;

use crate::harness::{base_config, http, wait_until, Gateway};

const SN: &str = "CKJG201960077";
const LIMIT: Duration = Duration::from_secs(30);
const SILENCE_MS: u64 = 1500;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn start() -> Gateway {
    start_in(tempfile::tempdir().unwrap())
}

fn start_in(dir: tempfile::TempDir) -> Gateway {
    let config = format!(
        "{}[[device]]\nid = \"line2-zk\"\ndriver = \"adms\"\nserial_number = \"{SN}\"\n",
        base_config("gw-cmd")
    );
    Gateway::start_in_env(dir, &config, &[("GATEWAYD_ADMS_SILENCE_MS", &SILENCE_MS.to_string())])
}

/// Site-local (Asia/Shanghai) now, whole seconds.
fn local_now() -> DateTime {
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::get("Asia/Shanghai").unwrap()).datetime();
    now.with().subsec_nanosecond(0).build().unwrap()
}

fn minus(t: DateTime, secs: i64) -> DateTime {
    t.checked_sub(jiff::SignedDuration::from_secs(secs)).unwrap()
}

/// Every stored punch as (PIN, device time ms).
fn stored(data_dir: &Path) -> Vec<(String, i64)> {
    let store = Store::open(&data_dir.join("store"), 8).unwrap();
    store
        .after(0)
        .map(Result::unwrap)
        .map(|p| (p.employee().unwrap_or_default().to_owned(), p.device_time_ms))
        .collect()
}

fn expected(sim: &AdmsSim) -> Vec<(String, i64)> {
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
    let mut v: Vec<(String, i64)> = sim
        .log()
        .iter()
        .map(|r| (r.pin.clone(), r.time.to_zoned(tz.clone()).unwrap().timestamp().as_millisecond()))
        .collect();
    v.sort();
    v
}

fn call(gw: &Gateway, method: &str, path: &str, token: &str, body: Option<&str>) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    http(method, gw.addr("api"), path, &headers, body.map(|b| b.as_bytes().to_vec()))
}

/// Polls until a poll carried out a command starting with `prefix`; returns how many polls it took.
fn poll_until_executed(rt: &tokio::runtime::Runtime, sim: &AdmsSim, prefix: &str) {
    let before = sim.executed().iter().filter(|c| c.starts_with(prefix)).count();
    wait_until(
        &format!("the terminal to carry out {prefix}"),
        LIMIT,
        || {
            rt.block_on(sim.poll()).unwrap();
            sim.executed().iter().filter(|c| c.starts_with(prefix)).count()
        },
        |n| *n > before,
    );
}

#[test]
fn a_terminal_cut_off_is_backfilled_with_exactly_the_records_of_its_silence() {
    let rt = runtime();
    let mut gw = start();
    let sim = AdmsSim::new(gw.addr("api"), SN);
    let now = local_now();
    rt.block_on(sim.handshake()).unwrap();
    for i in 0..5 {
        sim.punch(&format!("90{i}"), minus(now, 7200 + i * 60), 15);
    }
    assert_eq!(rt.block_on(sim.upload()).unwrap(), 5);
    // The first poll of the day: INFO and the count checks, all in agreement.
    poll_until_executed(&rt, &sim, "VERIFY SUM ATTLOG");
    assert!(sim.executed().iter().any(|c| c == "INFO"));

    // Cut off: 500 punches in the last hour that the terminal never pushes by itself.
    for i in 0..500i64 {
        sim.punch_unpushed(&(1000 + i % 50).to_string(), minus(now, 3600 - i * 7), [1, 15, 4][i as usize % 3]);
    }
    // The silence must last longer than the gateway's threshold (GATEWAYD_ADMS_SILENCE_MS): a wait on the clock, not
    // a synchronisation.
    std::thread::sleep(Duration::from_millis(SILENCE_MS + 300));
    poll_until_executed(&rt, &sim, "DATA QUERY ATTLOG");
    wait_until("the gap stored", LIMIT, || gw.metric("gatewayd_store_punches").unwrap_or(0.0), |v| *v >= 505.0);
    // More polls change nothing: the query is done.
    for _ in 0..3 {
        rt.block_on(sim.poll()).unwrap();
    }
    assert_eq!(sim.executed().iter().filter(|c| c.starts_with("DATA QUERY ATTLOG")).count(), 1);
    let (status, _) = gw.stop();
    assert_eq!(status.code(), Some(0), "{}", gw.stderr);
    let mut got = stored(&gw.data_dir());
    got.sort();
    assert_eq!(got.len(), 505);
    assert_eq!(got, expected(&sim), "exactly the terminal's records, each once");
}

#[test]
fn a_count_mismatch_backfills_the_day_and_the_api_shows_and_queues_commands() {
    let rt = runtime();
    let gw = start();
    let admin = gw.token(&["--role", "admin"]);
    let sim = AdmsSim::new(gw.addr("api"), SN);
    let day = minus(local_now(), 3 * 86_400).date().at(8, 0, 0, 0);
    for i in 0..15 {
        sim.punch(&format!("10{i:02}"), day.checked_add(jiff::SignedDuration::from_secs(i * 60)).unwrap(), 1);
    }
    for i in 15..20 {
        sim.punch_unpushed(&format!("10{i:02}"), day.checked_add(jiff::SignedDuration::from_secs(i * 60)).unwrap(), 1);
    }
    rt.block_on(sim.handshake()).unwrap();
    assert_eq!(rt.block_on(sim.upload()).unwrap(), 15);
    poll_until_executed(&rt, &sim, "DATA QUERY ATTLOG");
    wait_until("the day backfilled", LIMIT, || gw.metric("gatewayd_store_punches").unwrap_or(0.0), |v| *v >= 20.0);
    let query = sim.executed().into_iter().find(|c| c.starts_with("DATA QUERY ATTLOG")).unwrap();
    let date = day.date().to_string();
    assert_eq!(query, format!("DATA QUERY ATTLOG StartTime={date} 00:00:00\tEndTime={date} 23:59:59"));

    // The queue through the API: the count checks, the mismatch and its backfill, INFO.
    let (status, body) = call(&gw, "GET", "/api/v1/devices/line2-zk/commands", &admin, None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let commands = v["commands"].as_array().unwrap();
    let reasons: Vec<&str> = commands.iter().map(|c| c["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.iter().filter(|r| **r == "count_check").count(), 7, "{reasons:?}");
    let mismatch = commands.iter().find(|c| c["reason"] == "count_mismatch").unwrap();
    assert_eq!((mismatch["state"].as_str(), mismatch["result"].as_i64()), (Some("done"), Some(20)));
    let (_, devices) = call(&gw, "GET", "/api/v1/devices", &admin, None);
    assert!(devices.contains("count check") && devices.contains("SimZK"), "{devices}");

    // A backfill asked through the API.
    let body = format!(r#"{{"from": "{date}", "to": "{date}"}}"#);
    let (status, answer) = call(&gw, "POST", "/api/v1/devices/line2-zk/backfill", &admin, Some(&body));
    assert_eq!(status, 202, "{answer}");
    poll_until_executed(&rt, &sim, "DATA QUERY ATTLOG");
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(20.0), "nothing stored twice");
    assert_eq!(call(&gw, "POST", "/api/v1/devices/nope/backfill", &admin, Some(&body)).0, 404);
    let reversed = r#"{"from": "2026-11-22", "to": "2026-11-01"}"#;
    assert_eq!(call(&gw, "POST", "/api/v1/devices/line2-zk/backfill", &admin, Some(reversed)).0, 400);
}

#[test]
fn roster_imports_create_users_on_the_terminal_and_removals_delete_them() {
    let rt = runtime();
    let gw = start();
    let admin = gw.token(&["--role", "admin"]);
    let sim = AdmsSim::new(gw.addr("api"), SN);
    rt.block_on(sim.handshake()).unwrap();
    let roster = "employee,name,department,card,fingerprint,face,pin,manages\n\
                  E1001,Zhang San,D1,04A1B2C3,,,1001,\nE1002,Li Si,D1,,,,1002,\nE1003,Wang Wu,D2,,,,,\n";
    let (status, body) = call(&gw, "POST", "/api/v1/employees/import", &admin, Some(roster));
    assert_eq!(status, 200, "{body}");
    wait_until(
        "the roster on the terminal",
        LIMIT,
        || {
            rt.block_on(sim.poll()).unwrap();
            sim.users()
        },
        |u| u.len() == 3,
    );
    let users = sim.users();
    assert_eq!(users["1001"], ("Zhang San".to_owned(), Some(u32::from_str_radix("04A1B2C3", 16).unwrap().to_string())));
    assert_eq!(users["E1003"].0, "Wang Wu", "no PIN: the employee id");

    let smaller = "employee,name,department,card,fingerprint,face,pin,manages\nE1001,Zhang San,D1,04A1B2C3,,,1001,\n";
    let (status, body) = call(&gw, "POST", "/api/v1/employees/import", &admin, Some(smaller));
    assert_eq!(status, 200, "{body}");
    wait_until(
        "the removals on the terminal",
        LIMIT,
        || {
            rt.block_on(sim.poll()).unwrap();
            sim.users().keys().cloned().collect::<Vec<_>>()
        },
        |u| u == &["1001".to_owned()],
    );
    let updates = sim.executed().iter().filter(|c| c.starts_with("DATA UPDATE USERINFO")).count();
    assert_eq!(updates, 3, "an unchanged person is not sent again");
}

#[test]
fn after_a_store_quarantine_the_terminals_are_asked_for_their_last_month() {
    let rt = runtime();
    // A damaged store: the daemon moves it aside and starts on a fresh one.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data").join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("conf"), b"\x00\xffnot a sled config at all\n").unwrap();
    std::fs::write(store.join("db"), [0xA5u8; 64 * 1024]).unwrap();
    let gw = start_in(dir);
    assert_eq!(gw.metric("gatewayd_store_quarantines"), Some(1.0));
    let sim = AdmsSim::new(gw.addr("api"), SN);
    let now = local_now();
    for i in 0..30 {
        // Already pushed before the damage: the terminal will not push them again by itself.
        sim.punch_unpushed(&format!("30{i:02}"), minus(now, i * 86_400 / 2 + 60), 15);
    }
    rt.block_on(sim.handshake()).unwrap();
    poll_until_executed(&rt, &sim, "DATA QUERY ATTLOG");
    wait_until("the last month back", LIMIT, || gw.metric("gatewayd_store_punches").unwrap_or(0.0), |v| *v >= 30.0);
}
