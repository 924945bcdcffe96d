//! What the local API writes, against the real daemon: rules and roster written through the API land in the data dir
//! (the one place the hardened unit may write), win over the configured files, and survive SIGHUP and restarts; the
//! configured files are never touched. Client certificates mapped to roles on the mutual TLS listener, and the API
//! certificate rotated by SIGHUP.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::harness::{base_config, http, run_cli, wait_until, Gateway};

const LIMIT: Duration = Duration::from_secs(30);

const RULES: &str = "dedupe_window = \"5m\"\n\n\
                     [[shift]]\nid = \"day\"\nstart = \"09:00\"\nend = \"18:00\"\nlate_grace = \"10m\"\n\n\
                     [[group]]\nid = \"all\"\ndepartments = [\"DEPTA\"]\nshift = \"day\"\n\
                     workdays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\n";

const FILE_ROSTER: &str = "employee,name,department,card,fingerprint,face,pin,manages\n\
                           FILE1,From File,DEPTA,04FF0001,,,,\n";

const API_ROSTER: &str = "employee,name,department,card,fingerprint,face,pin,manages\n\
                          API1,From Api,DEPTA,04AA0001,,,,\n\
                          API2,Also Api,DEPTB,04AA0002,,,,\n";

fn call(gw: &Gateway, method: &str, path: &str, token: &str, body: Option<&str>) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    http(method, gw.addr("api"), path, &headers, body.map(|b| b.as_bytes().to_vec()))
}

/// Waits until the rules in force are `text`: after a start the engine stage puts the files in force after READY=1 (a
/// reload is in force by its READY=1).
fn wait_rules_in_force(gw: &Gateway, admin: &str, what: &str, text: &str) {
    wait_until(what, LIMIT, || rules_view(gw, admin)["text"].clone(), |t| *t == text);
}

fn start_with_files() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("roster.csv"), FILE_ROSTER).unwrap();
    std::fs::write(dir.path().join("rules.toml"), RULES).unwrap();
    let config = base_config("gw-api-files") + "[roster]\nfile = \"roster.csv\"\n\n[rules]\nfile = \"rules.toml\"\n";
    Gateway::start_in(dir, &config)
}

fn rules_view(gw: &Gateway, admin: &str) -> serde_json::Value {
    let (status, body) = call(gw, "GET", "/api/v1/rules", admin, None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn api_rules_put_lands_in_the_data_dir_and_survives_sighup_and_restart() {
    let mut gw = start_with_files();
    let admin = gw.token(&["--role", "admin"]);
    let before = rules_view(&gw, &admin);
    assert_eq!(before["source"], "config", "{before}");
    assert!(before["text"].as_str().unwrap().contains("late_grace = \"10m\""));

    let new_rules = RULES.replace("late_grace = \"10m\"", "late_grace = \"15m\"");
    let (status, body) = call(&gw, "PUT", "/api/v1/rules", &admin, Some(&new_rules));
    assert_eq!(status, 200, "{body}");
    gw.wait_for("READY=1", LIMIT); // the reload the PUT asked for is done
    let written = gw.data_dir().join("api-rules.toml");
    assert!(body.contains("api-rules.toml"), "{body}");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), new_rules);
    // The configured file (under /etc/gatewayd in the package, read-only for the service) is not written.
    assert_eq!(std::fs::read_to_string(gw.dir.path().join("rules.toml")).unwrap(), RULES);
    wait_rules_in_force(&gw, &admin, "the new rules in force", &new_rules);
    let after = rules_view(&gw, &admin);
    assert_eq!(after["source"], "api", "{after}");
    assert_eq!(after["text"], new_rules.as_str(), "{after}");
    let version = after["version"].as_u64().unwrap();
    assert!(version > before["version"].as_u64().unwrap(), "{after}");

    // A SIGHUP re-reads the rules in force: still the API's.
    gw.signal(Signal::SIGHUP);
    gw.wait_for("READY=1", LIMIT);
    assert_eq!(rules_view(&gw, &admin)["text"], new_rules.as_str());

    // A restart: still the API's, same version.
    gw.stop();
    let (code, out, err) = run_cli(&["validate", "--config", gw.config_path.to_str().unwrap()], &[]);
    assert_eq!((code, out.trim()), (0, "ok"), "{err}");
    gw.spawn();
    let view = rules_view(&gw, &admin);
    assert_eq!((view["text"].as_str(), view["version"].as_u64()), (Some(new_rules.as_str()), Some(version)));

    // A hand-broken copy in the data dir is reported by `validate` with its own file and line.
    gw.stop();
    std::fs::write(&written, "dedupe_window = \"soon\"\n").unwrap();
    let (code, _, err) = run_cli(&["validate", "--config", gw.config_path.to_str().unwrap()], &[]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("api-rules.toml:1: dedupe_window"), "{err}");

    // Deleting the copy puts the configured file back in force.
    std::fs::remove_file(&written).unwrap();
    gw.spawn();
    wait_rules_in_force(&gw, &admin, "the configured rules in force", RULES);
    assert_eq!(rules_view(&gw, &admin)["source"], "config");
}

fn employee_ids(gw: &Gateway, admin: &str) -> Vec<String> {
    let (status, body) = call(gw, "GET", "/api/v1/employees", admin, None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["employees"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn api_roster_import_is_the_roster_after_sighup_and_restart() {
    let mut gw = start_with_files();
    let admin = gw.token(&["--role", "admin"]);
    assert_eq!(employee_ids(&gw, &admin), ["FILE1"]);

    let (status, body) = call(&gw, "POST", "/api/v1/employees/import", &admin, Some(API_ROSTER));
    assert_eq!(status, 200, "{body}");
    assert_eq!(employee_ids(&gw, &admin), ["API1", "API2"]);
    let written = gw.data_dir().join("api-roster.csv");
    assert!(written.is_file());
    assert_eq!(std::fs::read_to_string(gw.dir.path().join("roster.csv")).unwrap(), FILE_ROSTER, "file untouched");

    // SIGHUP re-reads the roster in force, which is the API's: the import stays. The reload reports READY=1 once the
    // engine has applied it, so what the API shows next is what the reload put in force.
    gw.signal(Signal::SIGHUP);
    gw.wait_for("READY=1", LIMIT);
    assert_eq!(employee_ids(&gw, &admin), ["API1", "API2"]);
    // Even when the configured file changes meanwhile.
    std::fs::write(gw.dir.path().join("roster.csv"), FILE_ROSTER.replace("FILE1", "FILE2")).unwrap();
    gw.signal(Signal::SIGHUP);
    gw.wait_for("READY=1", LIMIT);
    assert_eq!(employee_ids(&gw, &admin), ["API1", "API2"]);

    // PUT /employees replaces it the same way; a restart keeps it.
    let (status, body) = call(
        &gw,
        "PUT",
        "/api/v1/employees",
        &admin,
        Some(r#"[{"id": "API3", "name": "Put", "department": "DEPTA", "cards": ["04aa0003"]}]"#),
    );
    assert_eq!(status, 200, "{body}");
    gw.kill9();
    // Both reloads put the API's roster (2 employees) in force again, not the file's (1 employee).
    let rosters: Vec<&str> = gw.stderr.lines().filter(|l| l.contains("roster in force")).collect();
    assert!(rosters.len() >= 3, "{}", gw.stderr);
    assert!(rosters[0].contains("employees=1"), "{rosters:?}");
    assert!(rosters[rosters.len() - 2..].iter().all(|l| l.contains("employees=2")), "{rosters:?}");
    gw.spawn();
    assert_eq!(employee_ids(&gw, &admin), ["API3"]);
    let (_, body) = call(&gw, "GET", "/api/v1/employees", &admin, None);
    assert!(body.contains("04AA0003"), "{body}");

    // Removing the API's copy and reloading goes back to the configured file.
    std::fs::remove_file(&written).unwrap();
    gw.signal(Signal::SIGHUP);
    gw.wait_for("READY=1", LIMIT);
    assert_eq!(employee_ids(&gw, &admin), ["FILE2"], "the configured roster in force once the reload is done");
}

/// One request over TLS with an optional bearer token: `Err` when the connection or the handshake fails. Also returns
/// the DER of the server certificate.
pub(crate) fn https(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String, Vec<u8>), String> {
    use http_body_util::{BodyExt, Full};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (method, path, token) = (method.to_owned(), path.to_owned(), token.map(str::to_owned));
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| e.to_string())?;
        let server = stream.get_ref().1.peer_certificates().map(|c| c[0].as_ref().to_vec()).unwrap_or_default();
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder().method(method.as_str()).uri(path).header("host", "localhost");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = if method == "POST" { r#"{"time": "2026-11-22T09:00:00+08:00", "reason": "forgot"}"# } else { "" };
        let req = req.header("content-type", "application/json").body(Full::new(bytes::Bytes::from(body))).unwrap();
        let resp = tokio::time::timeout(LIMIT, send.send_request(req))
            .await
            .map_err(|_| "timeout".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned(), server))
    })
}

pub(crate) fn client_tls(ca: &Path, cert_key: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    match cert_key {
        Some((cert, key)) => gatewayd::upstream::tls::client_config(ca, cert, key).unwrap(),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for c in gatewayd::upstream::tls::load_certs(ca).unwrap() {
                roots.add(c).unwrap();
            }
            Arc::new(
                rustls::ClientConfig::builder_with_provider(gatewayd::upstream::tls::provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        }
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref().to_vec()
}

#[test]
fn api_client_certificates_map_to_roles_and_the_certificate_rotates_on_sighup() {
    use gatewayd::cli::certs::{DevPki, Validity};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = DevPki::new("site api ca").unwrap();
    std::fs::write(d.join("ca.pem"), pki.ca_pem()).unwrap();
    let server = pki.server(&["localhost", "127.0.0.1"], Validity::days(30)).unwrap();
    std::fs::write(d.join("server.pem"), &server.cert_pem).unwrap();
    std::fs::write(d.join("server.key"), &server.key_pem).unwrap();
    for name in ["hr-office-pc", "line-lead", "kiosk-ina1", "stranger"] {
        let c = pki.client(name, Validity::days(30)).unwrap();
        std::fs::write(d.join(format!("{name}.pem")), c.cert_pem).unwrap();
        std::fs::write(d.join(format!("{name}.key")), c.key_pem).unwrap();
    }
    std::fs::write(d.join("roster.csv"), API_ROSTER.replace("API1", "INA1").replace("API2", "OUTB1")).unwrap();
    let config = base_config("gw-api-certs")
        + "[api.tls]\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\n\n\
           [[api.client_cert]]\ncommon_name = \"hr-office-pc\"\nrole = \"admin\"\n\n\
           [[api.client_cert]]\ncommon_name = \"line-lead\"\nrole = \"manager\"\ndepartments = [\"DEPTA\"]\n\n\
           [[api.client_cert]]\ncommon_name = \"kiosk-ina1\"\nrole = \"employee\"\nemployee = \"INA1\"\n\n\
           [roster]\nfile = \"roster.csv\"\n";
    let mut gw = Gateway::start_in(dir, &config);
    let d = gw.dir.path().to_owned();
    let addr = gw.addr("api");
    let ca = d.join("ca.pem");
    let as_client = |name: &str| {
        let (cert, key) = (d.join(format!("{name}.pem")), d.join(format!("{name}.key")));
        client_tls(&ca, Some((&cert, &key)))
    };

    // The admin certificate reads everything, with no token.
    let (status, body, served) = https(addr, as_client("hr-office-pc"), "GET", "/api/v1/employees", None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("OUTB1") && body.contains("04AA0002"), "admins see all and credentials: {body}");
    assert_eq!(served, pem_der(&server.cert_pem));
    // The manager certificate sees its department only.
    let (status, body, _) = https(addr, as_client("line-lead"), "GET", "/api/v1/employees", None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("INA1") && !body.contains("OUTB1"), "{body}");
    let (status, _, _) = https(addr, as_client("line-lead"), "GET", "/api/v1/rules", None).unwrap();
    assert_eq!(status, 403);
    // The employee certificate: itself only, and its writes are audited under the certificate's name.
    let (status, body, _) = https(addr, as_client("kiosk-ina1"), "GET", "/api/v1/employees", None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("INA1") && !body.contains("OUTB1"), "{body}");
    let (status, body, _) = https(addr, as_client("kiosk-ina1"), "POST", "/api/v1/approvals", None).unwrap();
    assert_eq!(status, 201, "{body}");
    // An unmapped certificate gets through TLS but has no role without a token.
    let (status, body, _) = https(addr, as_client("stranger"), "GET", "/api/v1/employees", None).unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not mapped"), "{body}");
    // A bearer token decides when sent, whatever the certificate.
    let manager_b = gw.token(&["--role", "manager", "--department", "DEPTB"]);
    let (status, body, _) =
        https(addr, as_client("hr-office-pc"), "GET", "/api/v1/employees", Some(&manager_b)).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("OUTB1") && !body.contains("INA1"), "{body}");
    let (status, _, _) = https(addr, as_client("hr-office-pc"), "GET", "/api/v1/rules", Some("gw_bad")).unwrap();
    assert_eq!(status, 401, "a bad token is not overridden by the certificate");
    let (status, body, _) = https(addr, as_client("hr-office-pc"), "GET", "/api/v1/audit", None).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("cert:kiosk-ina1") && body.contains("POST /api/v1/approvals"), "{body}");

    // Rotate the server certificate and drop the manager mapping: SIGHUP applies both to new connections.
    let rotated = pki.server(&["localhost"], Validity::days(60)).unwrap();
    std::fs::write(d.join("server.pem"), &rotated.cert_pem).unwrap();
    std::fs::write(d.join("server.key"), &rotated.key_pem).unwrap();
    let without_lead = config.replace(
        "[[api.client_cert]]\ncommon_name = \"line-lead\"\nrole = \"manager\"\ndepartments = [\"DEPTA\"]\n\n",
        "",
    );
    std::fs::write(&gw.config_path, &without_lead).unwrap();
    gw.signal(Signal::SIGHUP);
    gw.wait_for("READY=1", LIMIT);
    let (status, _, served) = https(addr, as_client("hr-office-pc"), "GET", "/api/v1/rules", None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(served, pem_der(&rotated.cert_pem), "new connections get the rotated certificate");
    assert_eq!(https(addr, as_client("line-lead"), "GET", "/api/v1/employees", None).unwrap().0, 401);

    // A broken certificate file: the reload keeps the certificate in force.
    std::fs::write(d.join("server.pem"), "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    gw.signal(Signal::SIGHUP);
    gw.wait_for("READY=1", LIMIT);
    let (status, _, served) = https(addr, as_client("hr-office-pc"), "GET", "/api/v1/rules", None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(served, pem_der(&rotated.cert_pem));
    // Without a client certificate: no HTTP at all.
    assert!(https(addr, client_tls(&ca, None), "GET", "/healthz", None).is_err());
    gw.stop();
    assert!(gw.stderr.contains("api tls files not reloaded"), "{}", gw.stderr);
}

#[test]
fn api_client_cert_mapping_needs_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatewayd.toml");
    let text = base_config("gw-api-map") + "[[api.client_cert]]\ncommon_name = \"hr-office-pc\"\nrole = \"manager\"\n";
    std::fs::write(&path, text).unwrap();
    let (code, _, err) = run_cli(&["validate", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("gatewayd.toml:13: api.client_cert: needs mutual TLS"), "{err}");
    assert!(err.contains("gatewayd.toml:13: api.client_cert: a manager needs employee"), "{err}");
}
