//! Leave, flexible shifts and schedules through the real daemon and its API: an approved leave turns an absence into
//! `on_leave` (a new revision), a flexible-shift employee present through the core hours but short of the hours gets
//! `short_hours`, and a schedule entered through the API takes an absence away. All are in the CSV export.

use std::time::Duration;

use crate::engine::{api_records, daytime_zone, statuses_of};
use crate::harness::{base_config, http, wait_until, Gateway};

const LIMIT: Duration = Duration::from_secs(30);

pub(crate) fn call(
    gw: &Gateway,
    method: &str,
    path: &str,
    token: &str,
    body: Option<(&str, String)>,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some((kind, _)) = &body {
        headers.push(("content-type", kind));
    }
    let (status, text) = http(method, gw.addr("api"), path, &headers, body.map(|(_, b)| b.into_bytes()));
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, value)
}

pub(crate) fn json(v: serde_json::Value) -> Option<(&'static str, String)> {
    Some(("application/json", v.to_string()))
}

fn record<'a>(records: &'a [serde_json::Value], employee: &str) -> &'a serde_json::Value {
    records.iter().find(|r| r["employee_id"] == employee).unwrap_or_else(|| panic!("no record of {employee}"))
}

#[test]
fn leave_flex_and_schedules_through_the_api() {
    let zone = daytime_zone();
    let tz = jiff::tz::TimeZone::get(zone).unwrap();
    let now = jiff::Timestamp::now().to_zoned(tz.clone());
    let at = |minutes_ago: i64| now.checked_sub(jiff::SignedDuration::from_mins(minutes_ago)).unwrap();
    let hm = |minutes_ago: i64| at(minutes_ago).strftime("%H:%M").to_string();
    let date = now.date().to_string();
    // Both shifts closed before the daemon starts (it is between 08:00 and 16:00 local, so they are on today's date).
    // "short" ran 3 to 2 hours ago; "flexi" 6 to 1 hours ago, with a 2-hour core and 4 hours to work.
    let rules = format!(
        "max_clock_skew = \"24h\"\n\n\
         [[shift]]\nid = \"short\"\nstart = \"{}\"\nend = \"{}\"\nopens_before = \"30m\"\ncloses_after = \"1m\"\n\n\
         [[shift]]\nid = \"flexi\"\nstart = \"{}\"\nend = \"{}\"\nopens_before = \"30m\"\ncloses_after = \"1m\"\n\
         flex = {{ core = [\"{}\", \"{}\"], hours = \"4h\" }}\n\n\
         [[group]]\nid = \"office\"\ndepartments = [\"D-OFF\"]\nshift = \"short\"\n\
         workdays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n\n\
         [[group]]\nid = \"flex\"\ndepartments = [\"D-FLEX\"]\nshift = \"flexi\"\n\
         workdays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n",
        hm(180),
        hm(120),
        hm(360),
        hm(60),
        hm(300),
        hm(180),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
    std::fs::write(
        dir.path().join("roster.csv"),
        "employee,name,department,card,fingerprint,face,pin,manages\n\
         E1,Li Wei,D-OFF,,,,,\nE3,Zhao Lei,D-OFF,,,,,\nF1,Wang Fang,D-FLEX,,,,,\nM1,Chen Jie,D-MGMT,,,,,D-OFF|D-FLEX\n",
    )
    .unwrap();
    let config = base_config("plans-gw")
        + "[[device]]\nid = \"face-1\"\ndriver = \"mqtt\"\nsecret = \"face-1-secret\"\n\n\
           [roster]\nfile = \"roster.csv\"\n\n[rules]\nfile = \"rules.toml\"\n";
    let config =
        config.replace("Asia/Shanghai", zone).replace("[api]\n", "[api]\nrate_per_sec = 1000\nrate_burst = 1000\n");
    assert!(config.contains("rate_per_sec"), "{config}");
    let gw = Gateway::start_in_env(dir, &config, &[("GATEWAYD_ENGINE_TICK_MS", "200")]);
    let admin = gw.token(&["--role", "admin"]);
    let e1 = gw.token(&["--role", "employee", "--employee", "E1"]);
    let m1 = gw.token(&["--role", "manager", "--employee", "M1"]);

    // F1 (flexible shift) punched 5 h 10 min and 2 h 50 min ago: present through the core, 2 h 20 min of 4 h.
    let stamp = |minutes_ago: i64| at(minutes_ago).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string();
    crate::engine::publish(
        &gw,
        &[
            format!(r#"{{"seq": 1, "time": "{}", "method": "face", "employee": "F1"}}"#, stamp(310)),
            format!(r#"{{"seq": 2, "time": "{}", "method": "face", "employee": "F1"}}"#, stamp(170)),
        ],
    );
    let records = wait_until(
        "E1 and E3 absent, F1 short of hours",
        LIMIT,
        || api_records(&gw, &admin, &date),
        |r| {
            statuses_of(r, "E1") == Some(vec!["absent".into()])
                && statuses_of(r, "E3") == Some(vec!["absent".into()])
                && statuses_of(r, "F1").is_some_and(|s| s.contains(&"short_hours".to_owned()))
        },
    );
    assert_eq!(statuses_of(&records, "F1"), Some(vec!["short_hours".to_owned()]), "{records:?}");
    assert_eq!(record(&records, "F1")["worked_minutes"], 140);
    let absent_revision = record(&records, "E1")["revision"].as_u64().unwrap();

    // E1 asks for sick leave for today; an overlapping second request is refused; M1 approves.
    let (status, asked) = call(
        &gw,
        "POST",
        "/api/v1/leave",
        &e1,
        json(serde_json::json!({"type": "sick", "from": date, "to": date, "reason": "fever"})),
    );
    assert_eq!(status, 201, "{asked}");
    assert_eq!((asked["state"].as_str(), asked["unit"].as_str()), (Some("pending"), Some("days")), "{asked}");
    let (status, again) = call(
        &gw,
        "POST",
        "/api/v1/leave",
        &e1,
        json(serde_json::json!({"type": "personal", "from": format!("{date}T08:00"), "to": format!("{date}T09:00")})),
    );
    assert_eq!(status, 409, "{again}");
    let (status, bad) =
        call(&gw, "POST", "/api/v1/leave", &e1, json(serde_json::json!({"type": "holiday", "from": date, "to": date})));
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("annual, sick, personal, other"), "{bad}");
    let (status, refused) =
        call(&gw, "POST", "/api/v1/leave", &admin, json(serde_json::json!({"type": "sick", "from": date, "to": date})));
    assert_eq!(status, 403, "{refused}");
    let id = asked["id"].as_u64().unwrap();
    let (status, own) = call(&gw, "POST", &format!("/api/v1/approvals/{id}/approve"), &e1, None);
    assert_eq!(status, 403, "{own}");
    let (status, approved) = call(&gw, "POST", &format!("/api/v1/approvals/{id}/approve"), &m1, None);
    assert_eq!(status, 200, "{approved}");
    let records = wait_until(
        "E1 on leave",
        LIMIT,
        || api_records(&gw, &admin, &date),
        |r| statuses_of(r, "E1") == Some(vec!["on_leave".into()]),
    );
    assert!(record(&records, "E1")["revision"].as_u64().unwrap() > absent_revision, "{records:?}");
    let (status, listed) = call(&gw, "GET", "/api/v1/leave", &e1, None);
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["leave"][0]["state"], "approved", "{listed}");
    assert_eq!(listed["leave"][0]["type"], "sick", "{listed}");

    // HR schedules E3 off today through the API: the absence goes. A shift the rules do not have is refused.
    let (status, bad) = call(
        &gw,
        "PUT",
        "/api/v1/schedules",
        &admin,
        Some(("text/csv", format!("employee,date,shift\nE3,{date},evening\n"))),
    );
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("unknown shift `evening`"), "{bad}");
    let (status, put) = call(
        &gw,
        "PUT",
        "/api/v1/schedules",
        &admin,
        Some(("text/csv", format!("employee,date,shift\nE3,{date},off\n"))),
    );
    assert_eq!(status, 200, "{put}");
    assert_eq!((put["rows"].as_u64(), put["changed"].as_u64()), (Some(1), Some(1)), "{put}");
    wait_until(
        "E3's absence taken away",
        LIMIT,
        || api_records(&gw, &admin, &date),
        |r| statuses_of(r, "E3").is_none_or(|s| s.is_empty()),
    );
    let (status, listed) = call(&gw, "GET", &format!("/api/v1/schedules?from={date}&to={date}"), &m1, None);
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["schedule"], serde_json::json!([{"employee": "E3", "date": date, "shift": "off"}]));

    // The export has them.
    let auth = format!("Bearer {admin}");
    let (status, csv) = http(
        "GET",
        gw.addr("api"),
        &format!("/api/v1/reports/export?from={date}&to={date}&format=csv"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(status, 200, "{csv}");
    let line = |who: &str| {
        csv.lines().find(|l| l.contains(&format!(",{who},"))).unwrap_or_else(|| panic!("{who}: {csv}")).to_owned()
    };
    assert!(line("E1").contains("on_leave"), "{csv}");
    assert!(line("F1").contains("short_hours"), "{csv}");
}
