//! The local API's role matrix against the real daemon: tokens made with `gatewayd token create` through the control
//! socket while the daemon runs, every endpoint called as admin, manager of department A, manager of B, employee of A
//! and employee of B, with in-scope and out-of-scope data. Checks status codes and that no out-of-scope id appears in
//! any answer.

use std::time::Duration;

use crate::harness::{base_config, dev_certs, http, run_cli, wait_until, Gateway};

const ROSTER: &str = "employee,name,department,card,fingerprint,face,pin,manages\n\
                      INA1,Ann A,DEPTA,04AA0001,,,,\n\
                      INA2,Amy A,DEPTA,04AA0002,,,,\n\
                      MGRA,Max A,DEPTA,04AA0003,,,,DEPTA\n\
                      OUTB1,Bob B,DEPTB,04BB0001,,,,\n\
                      MGRB,Meg B,DEPTB,04BB0002,,,,DEPTB\n";

const RULES: &str = "dedupe_window = \"5m\"\n\n\
                     [[shift]]\nid = \"day\"\nstart = \"00:00\"\nend = \"23:59\"\nlate_grace = \"10m\"\n\
                     opens_before = \"0s\"\ncloses_after = \"1m\"\novertime_after = \"1m\"\n\n\
                     [[group]]\nid = \"all\"\ndepartments = [\"DEPTA\", \"DEPTB\"]\nshift = \"day\"\n\
                     workdays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n\
                     geofence = { center = [31.2304, 121.4737], radius_m = 200 }\n";

struct Api {
    addr: std::net::SocketAddr,
}

impl Api {
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        http(method, self.addr, path, &headers, body.map(|b| b.as_bytes().to_vec()))
    }

    fn get(&self, path: &str, token: &str) -> (u16, String) {
        self.call("GET", path, Some(token), None)
    }

    fn post(&self, path: &str, token: &str, body: &str) -> (u16, String) {
        self.call("POST", path, Some(token), Some(body))
    }

    fn put(&self, path: &str, token: &str, body: &str) -> (u16, String) {
        self.call("PUT", path, Some(token), Some(body))
    }
}

/// Asserts the status and that none of `hidden` appears in the body; returns the body.
#[track_caller]
fn expect(got: (u16, String), status: u16, hidden: &[&str]) -> String {
    assert_eq!(got.0, status, "body: {}", got.1);
    for h in hidden {
        assert!(!got.1.contains(h), "`{h}` leaked in {}", got.1);
    }
    got.1
}

fn yesterday() -> jiff::civil::Date {
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
    jiff::Timestamp::now().to_zoned(tz).date().yesterday().unwrap()
}

fn today() -> jiff::civil::Date {
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
    jiff::Timestamp::now().to_zoned(tz).date()
}

fn yesterday_at(hm: &str) -> String {
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
    let t: jiff::civil::Time = hm.parse().unwrap();
    yesterday().to_datetime(t).to_zoned(tz).unwrap().timestamp().to_string()
}

#[test]
fn role_matrix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("roster.csv"), ROSTER).unwrap();
    std::fs::write(dir.path().join("rules.toml"), RULES).unwrap();
    let config = base_config("gw-api").replace("[api]\n", "[api]\nmax_body_bytes = 65536\n")
        + "[roster]\nfile = \"roster.csv\"\n\n[rules]\nfile = \"rules.toml\"\n";
    let mut gw = Gateway::start_in(dir, &config);
    let api = Api { addr: gw.addr("api") };

    // Tokens, created while the daemon holds the store: through the control socket.
    let admin = gw.token(&["--role", "admin"]);
    let mgr_a = gw.token(&["--role", "manager", "--department", "DEPTA", "--employee", "MGRA"]);
    let mgr_b = gw.token(&["--role", "manager", "--employee", "MGRB"]); // its scope: what MGRB manages
    let emp_a = gw.token(&["--role", "employee", "--employee", "INA1"]);
    let emp_b = gw.token(&["--role", "employee", "--employee", "OUTB1"]);
    let (code, _, err) =
        run_cli(&["token", "create", "--role", "manager", "--config", gw.config_path.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "a manager naming neither employee nor departments is a usage error: {err}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(gw.data_dir().join("control.sock")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o660);

    // Authentication.
    for path in ["/api/v1/records", "/api/v1/audit", "/api/v1/devices"] {
        expect(api.call("GET", path, None, None), 401, &[]);
        expect(api.call("GET", path, Some("gw_0000000000000000_00"), None), 401, &[]);
        let mut wrong = admin.clone();
        wrong.pop();
        wrong.push(if admin.ends_with('0') { '1' } else { '0' });
        expect(api.call("GET", path, Some(&wrong), None), 401, &[]);
    }

    // Punches: employees post their own GPS punches; nobody else may.
    let gps = |t: &str| format!(r#"{{"time":"{t}","method":"gps","lat":31.2304,"lng":121.4737,"accuracy_m":10}}"#);
    for tok in [&admin, &mgr_a, &mgr_b] {
        expect(api.post("/api/v1/punches", tok, &gps(&yesterday_at("09:05"))), 403, &[]);
    }
    let body = expect(api.post("/api/v1/punches", &emp_a, &gps(&yesterday_at("09:05"))), 201, &[]);
    assert!(body.contains("gw-api:api:"), "{body}");
    // Timed by the gateway: a re-send is another punch (merged by the dedupe window), the claimed time is evidence.
    expect(api.post("/api/v1/punches", &emp_a, &gps(&yesterday_at("09:05"))), 201, &[]);
    expect(api.post("/api/v1/punches", &emp_a, &gps(&yesterday_at("18:10"))), 201, &[]);
    expect(api.post("/api/v1/punches", &emp_b, &gps(&yesterday_at("09:30"))), 201, &[]);
    // Bad input: 400 with a message.
    for bad in [
        "{not json",
        r#"{"time":"2026-01-01T00:00:00Z","method":"gps","lat":"north","lng":1}"#,
        r#"{"time":"2026-01-01T00:00:00Z","method":"gps","lat":1,"lng":1,"employee":"OUTB1"}"#,
        r#"{"time":"yesterday","method":"gps","lat":1,"lng":1}"#,
        r#"{"time":"2026-01-01T00:00:00Z","method":"card","lat":1,"lng":1}"#,
    ] {
        let body = expect(api.post("/api/v1/punches", &emp_a, bad), 400, &[]);
        assert!(body.contains("\"error\""), "{body}");
    }
    let big = format!(r#"{{"time":"{}","method":"qr","code":"{}"}}"#, yesterday_at("09:00"), "x".repeat(70_000));
    expect(api.post("/api/v1/punches", &emp_a, &big), 413, &[]);

    // Wait for the engine to make both records.
    let records = || api.get("/api/v1/records", &admin).1;
    wait_until("the records of INA1 and OUTB1", Duration::from_secs(30), records, |body| {
        body.contains("INA1") && body.contains("OUTB1")
    });

    // Records and punches.
    let both = expect(api.get("/api/v1/records", &admin), 200, &[]);
    assert!(both.contains("INA1") && both.contains("OUTB1"));
    let a = expect(api.get("/api/v1/records", &mgr_a), 200, &["OUTB1", "DEPTB"]);
    assert!(a.contains("INA1"));
    let b = expect(api.get("/api/v1/records", &mgr_b), 200, &["INA1", "DEPTA"]);
    assert!(b.contains("OUTB1"));
    expect(api.get("/api/v1/records?department=DEPTB", &mgr_a), 403, &["OUTB1"]);
    expect(api.get("/api/v1/records?employee=OUTB1", &mgr_a), 403, &["DEPTB"]);
    expect(api.get("/api/v1/records?employee=INA1", &mgr_b), 403, &["DEPTA"]);
    let own = expect(api.get("/api/v1/records", &emp_a), 200, &["OUTB1", "INA2", "DEPTB"]);
    assert!(own.contains("INA1"));
    expect(api.get("/api/v1/records?employee=OUTB1", &emp_a), 403, &["DEPTB"]);
    expect(api.get("/api/v1/records?bogus=1", &admin), 400, &[]);
    expect(api.get("/api/v1/records?from=yesterday", &admin), 400, &[]);

    let p = expect(api.get("/api/v1/punches", &admin), 200, &[]);
    assert!(p.contains("INA1") && p.contains("OUTB1"));
    let p = expect(api.get("/api/v1/punches", &mgr_a), 200, &["OUTB1"]);
    assert!(p.contains("INA1"));
    expect(api.get("/api/v1/punches", &emp_b), 200, &["INA1"]);
    expect(api.get("/api/v1/punches?employee=INA1", &emp_b), 403, &["DEPTA"]);
    expect(api.get("/api/v1/punches?department=DEPTA", &mgr_b), 403, &["INA1"]);

    // Rules: admin only.
    let rules = expect(api.get("/api/v1/rules", &admin), 200, &[]);
    assert!(rules.contains("DEPTA"), "{rules}");
    for tok in [&mgr_a, &emp_a] {
        expect(api.get("/api/v1/rules", tok), 403, &["DEPTB"]);
        expect(api.put("/api/v1/rules", tok, RULES), 403, &[]);
    }
    let body = expect(api.put("/api/v1/rules", &admin, "dedupe_window = \"soon\"\n"), 400, &[]);
    assert!(body.contains("dedupe_window"), "{body}");
    expect(api.put("/api/v1/rules", &admin, &RULES.replace("late_grace = \"10m\"", "late_grace = \"15m\"")), 200, &[]);
    gw.wait_for("READY=1", Duration::from_secs(30)); // the reload it asked for is done

    // Employees.
    let all = expect(api.get("/api/v1/employees", &admin), 200, &[]);
    assert!(all.contains("OUTB1") && all.contains("04BB0001"), "admins see credentials: {all}");
    let a = expect(api.get("/api/v1/employees", &mgr_a), 200, &["OUTB1", "04AA0001"]);
    assert!(a.contains("INA2"));
    let own = expect(api.get("/api/v1/employees", &emp_a), 200, &["OUTB1", "INA2", "MGRA"]);
    assert!(own.contains("INA1"));
    for tok in [&mgr_a, &emp_a] {
        expect(api.put("/api/v1/employees", tok, "[]"), 403, &[]);
        expect(api.post("/api/v1/employees/import", tok, ROSTER), 403, &[]);
    }
    expect(api.put("/api/v1/employees", &admin, r#"[{"id":"X","department":"D","salary":1}]"#), 400, &[]);
    expect(api.put("/api/v1/employees", &admin, r#"{"id":"X"}"#), 400, &[]);
    let body = expect(api.post("/api/v1/employees/import", &admin, "employee,name\nA,x\nA,y\n"), 400, &[]);
    assert!(body.contains("twice"), "{body}");
    expect(api.post("/api/v1/employees/import", &admin, ROSTER), 200, &[]);

    // Devices: admin only.
    expect(api.get("/api/v1/devices", &admin), 200, &[]);
    for tok in [&mgr_a, &emp_a] {
        expect(api.get("/api/v1/devices", tok), 403, &[]);
    }

    // Approvals: employees ask, managers of the department decide, admins never.
    let t = yesterday_at("18:00");
    let req = |reason: &str| format!(r#"{{"time":"{t}","reason":"{reason}"}}"#);
    for tok in [&admin, &mgr_a] {
        expect(api.post("/api/v1/approvals", tok, &req("x")), 403, &[]);
    }
    let a1: serde_json::Value =
        serde_json::from_str(&expect(api.post("/api/v1/approvals", &emp_a, &req("forgot")), 201, &[])).unwrap();
    let b1: serde_json::Value =
        serde_json::from_str(&expect(api.post("/api/v1/approvals", &emp_b, &req("forgot")), 201, &[])).unwrap();
    let (a1, b1) = (a1["id"].as_u64().unwrap(), b1["id"].as_u64().unwrap());
    expect(api.post("/api/v1/approvals", &emp_a, r#"{"time":"2026-01-01T00:00:00Z"}"#), 400, &[]);
    expect(api.get("/api/v1/approvals", &mgr_a), 200, &["OUTB1"]);
    expect(api.get("/api/v1/approvals", &emp_b), 200, &["INA1"]);
    for tok in [&admin, &emp_a, &emp_b] {
        expect(api.post(&format!("/api/v1/approvals/{a1}/approve"), tok, ""), 403, &[]);
    }
    expect(api.post(&format!("/api/v1/approvals/{a1}/approve"), &mgr_b, ""), 403, &["INA1", "DEPTA"]);
    expect(api.post(&format!("/api/v1/approvals/{b1}/reject"), &mgr_a, ""), 403, &["OUTB1", "DEPTB"]);
    expect(api.post("/api/v1/approvals/999999/approve", &mgr_a, ""), 403, &[]);
    expect(api.post("/api/v1/approvals/abc/approve", &mgr_a, ""), 400, &[]);
    expect(api.post(&format!("/api/v1/approvals/{a1}/approve"), &mgr_a, r#"{"nope":1}"#), 400, &[]);
    let done = expect(api.post(&format!("/api/v1/approvals/{a1}/approve"), &mgr_a, r#"{"note":"ok"}"#), 200, &[]);
    assert!(done.contains("approved") && done.contains(":approvals:"), "{done}");
    expect(api.post(&format!("/api/v1/approvals/{a1}/reject"), &mgr_a, ""), 409, &[]);
    expect(api.post(&format!("/api/v1/approvals/{b1}/reject"), &mgr_b, ""), 200, &[]);

    // Leave: employees ask (for a day ten days ahead, which no record of this test touches), managers of the
    // department decide, reads are scoped.
    let later = today().checked_add(jiff::Span::new().days(10)).unwrap().to_string();
    let leave = format!(r#"{{"type":"annual","from":"{later}","to":"{later}","reason":"trip"}}"#);
    for tok in [&admin, &mgr_a] {
        expect(api.post("/api/v1/leave", tok, &leave), 403, &[]);
    }
    let l1: serde_json::Value =
        serde_json::from_str(&expect(api.post("/api/v1/leave", &emp_a, &leave), 201, &[])).unwrap();
    expect(api.post("/api/v1/leave", &emp_b, &leave), 201, &[]);
    expect(api.post("/api/v1/leave", &emp_a, &leave), 409, &[]);
    expect(api.post("/api/v1/leave", &emp_a, r#"{"type":"annual","from":"x","to":"y"}"#), 400, &[]);
    let l1 = l1["id"].as_u64().unwrap();
    let a = expect(api.get("/api/v1/leave", &mgr_a), 200, &["OUTB1"]);
    assert!(a.contains("INA1"), "{a}");
    expect(api.get("/api/v1/leave", &emp_a), 200, &["OUTB1"]);
    expect(api.get("/api/v1/leave?employee=OUTB1", &mgr_a), 403, &[]);
    expect(api.get("/api/v1/leave?employee=OUTB1", &emp_a), 403, &[]);
    expect(api.post(&format!("/api/v1/approvals/{l1}/approve"), &mgr_b, ""), 403, &["INA1"]);
    expect(api.post(&format!("/api/v1/approvals/{l1}/approve"), &emp_a, ""), 403, &[]);
    expect(api.post(&format!("/api/v1/approvals/{l1}/approve"), &mgr_a, ""), 200, &[]);

    // Schedules: admins write them; reads are scoped.
    let rows = format!("employee,date,shift\nINA1,{later},off\nOUTB1,{later},day\n");
    for tok in [&mgr_a, &emp_a] {
        expect(api.put("/api/v1/schedules", tok, &rows), 403, &[]);
    }
    expect(api.put("/api/v1/schedules", &admin, "employee,date,shift\nINA1,2026-02-30,day\n"), 400, &[]);
    expect(api.put("/api/v1/schedules", &admin, &rows), 200, &[]);
    let q = format!("/api/v1/schedules?from={later}&to={later}");
    let all = expect(api.get(&q, &admin), 200, &[]);
    assert!(all.contains("INA1") && all.contains("OUTB1"), "{all}");
    expect(api.get(&q, &mgr_a), 200, &["OUTB1"]);
    expect(api.get(&q, &emp_a), 200, &["OUTB1"]);
    expect(api.get(&format!("{q}&employee=OUTB1"), &emp_a), 403, &[]);
    expect(api.get(&format!("{q}&employee=OUTB1"), &mgr_a), 403, &[]);
    expect(api.get("/api/v1/schedules?from=x&to=y", &admin), 400, &[]);

    // Reports.
    let date = &today().to_string(); // self-punches count when they arrive
    let q = format!("from={date}&to={date}&format=csv");
    let csv = expect(api.get(&format!("/api/v1/reports/export?{q}"), &admin), 200, &[]);
    assert!(csv.starts_with('\u{feff}'), "UTF-8 BOM");
    assert!(csv.contains("INA1") && csv.contains("OUTB1"));
    assert_eq!(csv.lines().count(), 3, "header + one row per record: {csv}");
    expect(api.get(&format!("/api/v1/reports/export?{q}"), &mgr_a), 200, &["OUTB1", "DEPTB"]);
    expect(api.get(&format!("/api/v1/reports/export?{q}"), &emp_b), 200, &["INA1", "DEPTA"]);
    expect(api.get(&format!("/api/v1/reports/export?{q}&department=DEPTB"), &mgr_a), 403, &["OUTB1"]);
    expect(api.get(&format!("/api/v1/reports/export?from={date}&to={date}&format=xlsx"), &admin), 400, &[]);
    let month = &date[..7];
    let s = expect(api.get(&format!("/api/v1/reports/summary?month={month}"), &admin), 200, &[]);
    assert!(s.contains("attendance_rate") && s.contains("DEPTB"), "{s}");
    expect(api.get(&format!("/api/v1/reports/summary?month={month}"), &mgr_a), 200, &["OUTB1", "DEPTB"]);
    expect(api.get(&format!("/api/v1/reports/summary?month={month}"), &emp_a), 200, &["OUTB1", "DEPTB", "INA2"]);
    expect(api.get(&format!("/api/v1/reports/summary?month={month}&department=DEPTA"), &mgr_b), 403, &["INA1"]);
    expect(api.get("/api/v1/reports/summary?month=2026-13", &admin), 400, &[]);

    // Audit: admins read it; every write is in it, refused ones included.
    for tok in [&mgr_a, &emp_a] {
        expect(api.get("/api/v1/audit", tok), 403, &[]);
    }
    let log = expect(api.get("/api/v1/audit", &admin), 200, &[]);
    for needle in [
        "token create",
        "PUT /api/v1/rules",
        "POST /api/v1/employees/import",
        &format!("POST /api/v1/approvals/{a1}/approve"),
        "POST /api/v1/punches",
        "POST /api/v1/leave",
        "PUT /api/v1/schedules",
        "127.0.0.1:",
        "\"outcome\":\"403\"",
    ] {
        assert!(log.contains(needle), "audit lacks {needle}: {log}");
    }

    // Unknown endpoints are JSON 404 behind auth.
    expect(api.get("/api/v1/nope", &admin), 404, &[]);

    // Rate limit: one token's burst runs out; another token is unaffected.
    let limited = (0..100).map(|_| api.get("/api/v1/approvals", &emp_b).0).filter(|s| *s == 429).count();
    assert!(limited > 0, "no 429 within 100 quick requests");
    expect(api.get("/api/v1/approvals", &emp_a), 200, &[]);

    // Revocation through the control socket takes effect at once.
    let (code, list, _) = run_cli(&["token", "list", "--config", gw.config_path.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    assert!(!list.contains(&emp_a[20..]), "list never shows secrets");
    let id = &emp_a[3..19];
    let (code, _, err) = run_cli(&["token", "revoke", id, "--config", gw.config_path.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    expect(api.get("/api/v1/records", &emp_a), 401, &[]);

    // With the daemon stopped, the CLI opens the store itself; the token works once the daemon is back.
    gw.stop();
    assert!(!gw.data_dir().join("control.sock").exists(), "the socket is removed on stop");
    let offline = gw.token(&["--role", "admin"]);
    gw.spawn();
    let api = Api { addr: gw.addr("api") };
    let log = expect(api.get("/api/v1/audit", &offline), 200, &[]);
    assert_eq!(log.matches("token create").count(), 6, "{log}");
}

/// One request over TLS: `Err` when the connection or the handshake fails.
fn https_get(
    addr: std::net::SocketAddr,
    tls: std::sync::Arc<rustls::ClientConfig>,
    path: &str,
    token: &str,
) -> Result<(u16, String), String> {
    use http_body_util::{BodyExt, Empty};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", "localhost")
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
            .await
            .map_err(|_| "timeout".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}

#[test]
fn api_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_certs(dir.path());
    let config = base_config("gw-api-tls")
        + "[api.tls]\ncert = \"certs/server.pem\"\nkey = \"certs/server.key\"\nclient_ca = \"certs/ca.pem\"\n";
    let gw = Gateway::start_in(dir, &config);
    let admin = gw.token(&["--role", "admin"]);
    let addr = gw.addr("api");
    let with_cert = gatewayd::upstream::tls::client_config(
        &certs.join("ca.pem"),
        &certs.join("client.pem"),
        &certs.join("client.key"),
    )
    .unwrap();
    let (status, body) = https_get(addr, with_cert.clone(), "/api/v1/audit", &admin).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("token create"), "{body}");
    assert_eq!(https_get(addr, with_cert, "/api/v1/audit", "gw_bad").unwrap().0, 401, "a certificate is no token");

    // No client certificate: no HTTP at all.
    let mut roots = rustls::RootCertStore::empty();
    for c in gatewayd::upstream::tls::load_certs(&certs.join("ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    let provider = gatewayd::upstream::tls::provider();
    let without = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let refused = https_get(addr, std::sync::Arc::new(without), "/api/v1/audit", &admin);
    assert!(refused.is_err(), "served without a client certificate: {refused:?}");
    // Plain HTTP on the TLS port gets no answer either.
    let plain = std::panic::catch_unwind(|| http("GET", addr, "/healthz", &[], None));
    assert!(plain.map(|(s, _)| s != 200).unwrap_or(true));
}

const DECIDING_ROSTER: &str = "employee,name,department,card,fingerprint,face,pin,manages\n\
                               INA1,Ann A,DEPTA,,,,,\n\
                               MGRA,Max A,DEPTA,,,,,DEPTA\n\
                               BOSS,Bea S,DEPTA,,,,,DEPTA|DEPTB\n\
                               OUTB1,Bob B,DEPTB,,,,,\n";

/// Who may decide: a manager token naming its employee, within what that employee manages in the roster in force
/// (narrowed by the token's departments), never for its own request, whatever the token; admins and employees never.
#[test]
fn deciding_is_scoped_by_the_roster_and_never_ones_own() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("roster.csv"), DECIDING_ROSTER).unwrap();
    std::fs::write(dir.path().join("rules.toml"), RULES).unwrap();
    let config = base_config("gw-decide") + "[roster]\nfile = \"roster.csv\"\n\n[rules]\nfile = \"rules.toml\"\n";
    let gw = Gateway::start_in(dir, &config);
    let api = Api { addr: gw.addr("api") };

    let admin = gw.token(&["--role", "admin"]);
    // Every shape of token MGRA may hold.
    let mgra = gw.token(&["--role", "manager", "--employee", "MGRA"]);
    let mgra_narrowed = gw.token(&["--role", "manager", "--employee", "MGRA", "--department", "DEPTA"]);
    let mgra_unnamed = gw.token(&["--role", "manager", "--department", "DEPTA"]);
    let mgra_as_employee = gw.token(&["--role", "employee", "--employee", "MGRA"]);
    // BOSS manages both departments; a token narrowed to DEPTB; a manager token for someone who manages nothing.
    let boss = gw.token(&["--role", "manager", "--employee", "BOSS"]);
    let boss_b = gw.token(&["--role", "manager", "--employee", "BOSS", "--department", "DEPTB"]);
    let ina1_mgr = gw.token(&["--role", "manager", "--employee", "INA1", "--department", "DEPTA"]);
    let ina1 = gw.token(&["--role", "employee", "--employee", "INA1"]);
    let outb1 = gw.token(&["--role", "employee", "--employee", "OUTB1"]);

    let t = yesterday_at("18:00");
    let ask = |tok: &str| -> u64 {
        let body =
            expect(api.post("/api/v1/approvals", tok, &format!(r#"{{"time":"{t}","reason":"forgot"}}"#)), 201, &[]);
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_u64().unwrap()
    };
    let (own, a1, a2, b1) = (ask(&mgra_as_employee), ask(&ina1), ask(&ina1), ask(&outb1));
    let decide = |id: u64, tok: &str| api.post(&format!("/api/v1/approvals/{id}/approve"), tok, "").0;

    // Nobody decides their own request, whatever token they hold; admins and employees decide nothing.
    for tok in [&mgra, &mgra_narrowed, &mgra_unnamed, &mgra_as_employee, &admin, &ina1, &outb1] {
        assert_eq!(decide(own, tok), 403, "MGRA's own request");
    }
    let body = expect(api.post(&format!("/api/v1/approvals/{own}/approve"), &mgra, ""), 403, &[]);
    assert!(body.contains("own request"), "{body}");
    // A manager token naming no employee reads its departments and decides nothing.
    let list = expect(api.get("/api/v1/approvals", &mgra_unnamed), 200, &["OUTB1"]);
    assert!(list.contains("INA1"), "{list}");
    let body = expect(api.post(&format!("/api/v1/approvals/{a1}/approve"), &mgra_unnamed, ""), 403, &[]);
    assert!(body.contains("--employee"), "{body}");
    // Out of scope: a department the roster does not give, or one the token narrows away; a manager managing nothing.
    assert_eq!(decide(b1, &mgra), 403);
    assert_eq!(decide(a1, &boss_b), 403);
    assert_eq!(decide(a1, &ina1_mgr), 403, "INA1 manages nothing (and a1 is its own)");
    expect(api.get("/api/v1/approvals", &ina1_mgr), 200, &["OUTB1", "MGRA"]);
    expect(api.get("/api/v1/records?department=DEPTA", &boss_b), 403, &[]);
    // In scope.
    assert_eq!(decide(own, &boss), 200, "another manager decides MGRA's request");
    assert_eq!(decide(b1, &boss_b), 200);
    assert_eq!(decide(a1, &mgra_narrowed), 200);

    // A roster import that takes DEPTA from MGRA's `manages` takes the right away at once.
    let without = DECIDING_ROSTER.replace("MGRA,Max A,DEPTA,,,,,DEPTA", "MGRA,Max A,DEPTA,,,,,");
    expect(api.post("/api/v1/employees/import", &admin, &without), 200, &[]);
    assert_eq!(decide(a2, &mgra), 403);
    assert_eq!(decide(a2, &mgra_narrowed), 403);
    expect(api.get("/api/v1/records?department=DEPTA", &mgra), 403, &[]);
    expect(api.get("/api/v1/approvals", &mgra), 200, &["INA1"]);
    assert_eq!(decide(a2, &boss), 200);

    // The audit log names who decided and on which scope, refusals included.
    let log = expect(api.get("/api/v1/audit", &admin), 200, &[]);
    for needle in [
        format!("approval {own} approve by employee BOSS"),
        "on scope [DEPTA, DEPTB]".to_owned(),
        format!("approval {b1} approve by employee BOSS"),
        "on scope [DEPTB]".to_owned(),
        format!("approval {a2} approve by employee MGRA"),
        "(names no employee)".to_owned(),
        "on scope []".to_owned(),
    ] {
        assert!(log.contains(&needle), "audit lacks {needle}: {log}");
    }
}

fn local(t: jiff::Timestamp) -> String {
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
    t.to_zoned(tz).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// Self-punches are timed by the gateway, the client's time kept as evidence; an offline claim waits for a manager and
/// revises the record when approved; one past `offline_claim_limit` is refused.
#[test]
fn self_punches_are_timed_by_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("roster.csv"), DECIDING_ROSTER).unwrap();
    std::fs::write(dir.path().join("rules.toml"), RULES).unwrap();
    let config = base_config("gw-self").replace("[api]\n", "[api]\noffline_claim_limit = \"1h\"\n")
        + "[roster]\nfile = \"roster.csv\"\n\n[rules]\nfile = \"rules.toml\"\n";
    let gw = Gateway::start_in(dir, &config);
    let api = Api { addr: gw.addr("api") };
    let ina1 = gw.token(&["--role", "employee", "--employee", "INA1"]);
    let mgra = gw.token(&["--role", "manager", "--employee", "MGRA"]);
    let at = |t: jiff::Timestamp, offline: bool| {
        format!(r#"{{"time":"{t}","method":"gps","lat":31.2304,"lng":121.4737,"accuracy_m":10,"offline":{offline}}}"#)
    };
    let now = jiff::Timestamp::now();
    let secs = |s: i64| jiff::SignedDuration::from_secs(s);

    // Backdated three days: lands at the gateway's time, the claim visible in the punch's read view.
    let three_days_ago = (now - secs(3 * 86_400)).round(jiff::Unit::Second).unwrap();
    let posted = jiff::Timestamp::now();
    expect(api.post("/api/v1/punches", &ina1, &at(three_days_ago, false)), 201, &[]);
    let list = expect(api.get("/api/v1/punches", &ina1), 200, &[]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let p = &v["punches"][0];
    assert_eq!(p["claimed_time"], local(three_days_ago), "{list}");
    let time: jiff::Timestamp = p["time"].as_str().unwrap().parse().unwrap();
    assert!(time.duration_since(posted).abs() < secs(60), "timed on arrival: {list}");

    // An offline claim two minutes ago: held for a manager, then it is the clock-in.
    let claimed = (jiff::Timestamp::now() - secs(120)).round(jiff::Unit::Second).unwrap();
    let body = expect(api.post("/api/v1/punches", &ina1, &at(claimed, true)), 202, &[]);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["pending_approval"]["kind"], "offline_claim", "{body}");
    let id = v["pending_approval"]["id"].as_u64().unwrap();
    let records = || api.get("/api/v1/records?employee=INA1", &ina1).1;
    let first = wait_until("INA1's record pending the claim", Duration::from_secs(30), records, |b| {
        b.contains("pending_approval")
    });
    assert!(!first.contains(&local(claimed)), "a pending claim does not count: {first}");
    expect(api.post(&format!("/api/v1/approvals/{id}/approve"), &ina1, ""), 403, &[]);
    expect(api.post(&format!("/api/v1/approvals/{id}/approve"), &mgra, ""), 200, &[]);
    // The claim's punch and the end of its pending state reach the engine separately: wait for both.
    let revised = wait_until("the record revised by the approved claim", Duration::from_secs(30), records, |b| {
        b.contains(&format!("\"clock_in\":\"{}\"", local(claimed))) && !b.contains("pending_approval")
    });
    assert!(revised.contains("INA1"), "{revised}");
    let list = expect(api.get("/api/v1/punches", &ina1), 200, &[]);
    assert!(list.contains("offline_claim_received"), "{list}");

    // Past the limit, in the future, or without a time: refused with a reason.
    let old = now - secs(2 * 3600);
    let body = expect(api.post("/api/v1/punches", &ina1, &at(old, true)), 422, &[]);
    assert!(body.contains("offline_claim_limit"), "{body}");
    expect(api.post("/api/v1/punches", &ina1, &at(now + secs(3600), true)), 400, &[]);
    expect(api.post("/api/v1/punches", &ina1, r#"{"method":"qr","code":"x","offline":true}"#), 400, &[]);
    expect(api.post("/api/v1/punches", &ina1, r#"{"method":"qr","code":"x","offline":"yes"}"#), 400, &[]);
}

/// Rotating QR codes: a kiosk token reads the current code and nothing else; a QR punch with the current code counts,
/// one with a code two steps old, a forged one or none is refused with a reason and counted.
#[test]
fn qr_punches_need_the_current_code() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("roster.csv"), DECIDING_ROSTER).unwrap();
    std::fs::write(dir.path().join("rules.toml"), RULES).unwrap();
    let config = base_config("gw-qr") + "[roster]\nfile = \"roster.csv\"\n\n[rules]\nfile = \"rules.toml\"\n";
    let gw = Gateway::start_in(dir, &config);
    let api = Api { addr: gw.addr("api") };
    let kiosk = gw.token(&["--role", "kiosk"]);
    let admin = gw.token(&["--role", "admin"]);
    let ina1 = gw.token(&["--role", "employee", "--employee", "INA1"]);
    let mgra = gw.token(&["--role", "manager", "--employee", "MGRA"]);
    let (code, _, err) = run_cli(
        &["token", "create", "--role", "kiosk", "--employee", "INA1", "--config", gw.config_path.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 64, "a kiosk names nobody: {err}");

    // The kiosk reads the code and nothing else; admins read it too; nobody else does.
    let current = |tok: &str| -> serde_json::Value {
        serde_json::from_str(&expect(api.get("/api/v1/qr/current?site=gate-1", tok), 200, &[])).unwrap()
    };
    let shown = current(&kiosk);
    assert_eq!(shown["site"], "gate-1");
    current(&admin);
    for tok in [&ina1, &mgra] {
        expect(api.get("/api/v1/qr/current", tok), 403, &[]);
    }
    for path in ["/api/v1/records", "/api/v1/punches", "/api/v1/approvals", "/api/v1/audit", "/api/v1/employees"] {
        expect(api.get(path, &kiosk), 403, &["INA1"]);
    }
    expect(api.post("/api/v1/punches", &kiosk, r#"{"method":"qr","code":"1"}"#), 403, &[]);
    expect(api.get("/api/v1/qr/current?bogus=1", &kiosk), 400, &[]);

    // The current code counts.
    let qr = |code: &str| format!(r#"{{"method":"qr","code":"{code}"}}"#);
    let code = current(&kiosk)["code"].as_str().unwrap().to_owned();
    expect(api.post("/api/v1/punches", &ina1, &qr(&code)), 201, &[]);

    // No code, a forged code: refused with the reason and counted.
    let body = expect(api.post("/api/v1/punches", &ina1, r#"{"method":"qr"}"#), 422, &[]);
    assert!(body.contains("no code"), "{body}");
    let body = expect(api.post("/api/v1/punches", &ina1, &qr("abcdef")), 422, &[]);
    assert!(body.contains("not issued by this gateway"), "{body}");
    assert_eq!(gw.metric("gatewayd_api_qr_refused_total{reason=\"forged\"}"), Some(1.0));
    assert_eq!(gw.metric("gatewayd_api_qr_refused_total{reason=\"missing\"}"), Some(1.0));

    // Two steps later the code is refused.
    let until: jiff::Timestamp = current(&kiosk)["valid_until"].as_str().unwrap().parse().unwrap();
    let code = current(&kiosk)["code"].as_str().unwrap().to_owned();
    let later = until + jiff::SignedDuration::from_secs(30);
    wait_until(
        "two QR steps later",
        Duration::from_secs(90),
        || api.get("/api/v1/qr/current", &kiosk),
        |(s, b)| {
            *s == 200
                && serde_json::from_str::<serde_json::Value>(b)
                    .ok()
                    .and_then(|v| v["valid_until"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()))
                    > Some(later)
        },
    );
    let body = expect(api.post("/api/v1/punches", &ina1, &qr(&code)), 422, &[]);
    assert!(body.contains("expired"), "{body}");
    assert_eq!(gw.metric("gatewayd_api_qr_refused_total{reason=\"expired\"}"), Some(1.0));
}

/// Failed token attempts are limited per source address: once the burst is spent, 429 with `Retry-After`, even for a
/// good token from that address (a guess cannot be told from a hit), while the limit lasts.
#[test]
fn failed_token_attempts_are_rate_limited() {
    let gw = Gateway::start(&base_config("gw-guess"));
    let api = Api { addr: gw.addr("api") };
    let admin = gw.token(&["--role", "admin"]);
    let guess = "gw_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000";
    let statuses: Vec<u16> = (0..12).map(|_| api.get("/api/v1/audit", guess).0).collect();
    assert_eq!(&statuses[..10], &[401; 10], "{statuses:?}");
    assert_eq!(&statuses[10..], &[429; 2], "{statuses:?}");
    let head = raw_get_head(api.addr, "/api/v1/audit", &admin);
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    let retry: u64 = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=6).contains(&retry), "Retry-After: {head}");
    // Requests without a token are not guesses; the health endpoints are not behind tokens at all.
    expect(api.call("GET", "/api/v1/audit", None, None), 401, &[]);
    assert_eq!(gw.get("/healthz").0, 200);
    // Once the address has earned another attempt, the good token works.
    wait_until(
        "the address earns another attempt",
        Duration::from_secs(10),
        || api.get("/api/v1/audit", &admin).0,
        |s| *s == 200,
    );
}

/// The status line and headers of a plain HTTP/1.1 GET with a bearer token.
fn raw_get_head(addr: std::net::SocketAddr, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}
