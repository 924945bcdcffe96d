//! Where self-punches come from, through the real daemon: a Wi-Fi punch from a listed access point counts, one from
//! another access point waits for the employee's manager and counts once approved; a GPS fix wider than the fence
//! waits too (`weak_location`).

use std::time::Duration;

use crate::engine::{api_records, daytime_zone, statuses_of};
use crate::harness::{base_config, wait_until, Gateway};
use crate::plans::call;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn wifi_and_weak_gps_punches_wait_for_the_manager_when_in_doubt() {
    let zone = daytime_zone();
    let tz = jiff::tz::TimeZone::get(zone).unwrap();
    let now = jiff::Timestamp::now().to_zoned(tz.clone());
    let hm =
        |minutes: i64| now.checked_add(jiff::SignedDuration::from_mins(minutes)).unwrap().strftime("%H:%M").to_string();
    let date = now.date().to_string();
    // A shift starting in 30 minutes, so that punches now are early clock-ins (it is between 08:00 and 16:00 local).
    let rules = format!(
        "max_clock_skew = \"24h\"\ndedupe_window = \"0m\"\n\n\
         [[shift]]\nid = \"now\"\nstart = \"{}\"\nend = \"{}\"\n\n\
         [[group]]\nid = \"hall\"\ndepartments = [\"D-HALL\"]\nshift = \"now\"\n\
         workdays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n\
         wifi = [\"aa:bb:cc:00:00:01\"]\ngeofence = {{ center = [31.2304, 121.4737], radius_m = 200 }}\n",
        hm(30),
        hm(120),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
    std::fs::write(
        dir.path().join("roster.csv"),
        "employee,name,department,manages\nE1,Li Wei,D-HALL,\nE2,Zhao Lei,D-HALL,\nM1,Chen Jie,D-MGMT,D-HALL\n",
    )
    .unwrap();
    let config = (base_config("fences-gw") + "[roster]\nfile = \"roster.csv\"\n\n[rules]\nfile = \"rules.toml\"\n")
        .replace("Asia/Shanghai", zone)
        .replace("[api]\n", "[api]\nrate_per_sec = 1000\nrate_burst = 1000\n");
    let gw = Gateway::start_in_env(dir, &config, &[("GATEWAYD_ENGINE_TICK_MS", "200")]);
    let admin = gw.token(&["--role", "admin"]);
    let e1 = gw.token(&["--role", "employee", "--employee", "E1"]);
    let e2 = gw.token(&["--role", "employee", "--employee", "E2"]);
    let m1 = gw.token(&["--role", "manager", "--employee", "M1"]);

    // E1 on the listed access point: counts, nothing to decide.
    let (status, body) = call(
        &gw,
        "POST",
        "/api/v1/punches",
        &e1,
        crate::plans::json(serde_json::json!({"method": "wifi", "bssid": "AA:BB:CC:00:00:01", "ssid": "plant"})),
    );
    assert_eq!(status, 201, "{body}");
    let records =
        wait_until("E1's record", LIMIT, || api_records(&gw, &admin, &date), |r| statuses_of(r, "E1").is_some());
    assert_eq!(statuses_of(&records, "E1"), Some(vec![]), "{records:?}");
    // A malformed BSSID is refused.
    let (status, body) = call(
        &gw,
        "POST",
        "/api/v1/punches",
        &e1,
        crate::plans::json(serde_json::json!({"method": "wifi", "bssid": "aa:bb"})),
    );
    assert_eq!(status, 400, "{body}");

    // E2 on another access point, then a GPS fix 2 km wide inside the fence: both wait for M1.
    let (status, body) = call(
        &gw,
        "POST",
        "/api/v1/punches",
        &e2,
        crate::plans::json(serde_json::json!({"method": "wifi", "bssid": "de:ad:be:ef:00:01"})),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        &gw,
        "POST",
        "/api/v1/punches",
        &e2,
        crate::plans::json(serde_json::json!({"method": "gps", "lat": 31.2310, "lng": 121.4737, "accuracy_m": 2000})),
    );
    assert_eq!(status, 201, "{body}");
    let records = wait_until(
        "E2 pending",
        LIMIT,
        || api_records(&gw, &admin, &date),
        |r| statuses_of(r, "E2").is_some_and(|s| s.contains(&"weak_location".to_owned())),
    );
    // (The second punch is a clock-out before the end: `early_leave` too.)
    let has = |records: &[serde_json::Value], s: &str| statuses_of(records, "E2").unwrap().contains(&s.to_owned());
    assert!(["out_of_fence", "weak_location", "pending_approval"].iter().all(|s| has(&records, s)), "{records:?}");
    let pending = wait_until(
        "two approvals for M1",
        LIMIT,
        || call(&gw, "GET", "/api/v1/approvals", &m1, None).1,
        |v| v["approvals"].as_array().is_some_and(|a| a.len() == 2),
    );
    let list = pending["approvals"].as_array().unwrap();
    assert!(list.iter().all(|a| a["kind"] == "out_of_fence" && a["state"] == "pending" && a["employee"] == "E2"));
    assert_eq!(list.iter().filter(|a| a["weak_location"] == true).count(), 1, "{pending}");
    // E2 cannot decide its own; M1 approves both.
    for a in list {
        let id = a["id"].as_u64().unwrap();
        let (status, _) = call(&gw, "POST", &format!("/api/v1/approvals/{id}/approve"), &e2, None);
        assert_eq!(status, 403);
        let (status, body) = call(&gw, "POST", &format!("/api/v1/approvals/{id}/approve"), &m1, None);
        assert_eq!(status, 200, "{body}");
    }
    let records = wait_until(
        "E2 approved",
        LIMIT,
        || api_records(&gw, &admin, &date),
        |r| statuses_of(r, "E2").is_some_and(|s| !s.contains(&"pending_approval".to_owned())),
    );
    assert!(has(&records, "out_of_fence") && has(&records, "weak_location"), "{records:?}");
    let e2 = records.iter().find(|r| r["employee_id"] == "E2").unwrap();
    assert_eq!(e2["punch_ids"].as_array().unwrap().len(), 2, "both count: {e2}");
    assert!(e2["clock_out"].is_string(), "{e2}");
}
