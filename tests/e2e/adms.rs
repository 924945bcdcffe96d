//! ZKTeco PUSH (ADMS / iclock) terminals against the real daemon, as raw HTTP/1.1 transcripts in the protocol's format:
//! handshake, ATTLOG uploads (malformed lines, GB2312, re-uploads), command poll, command results, ping, an unknown
//! serial number and an upload over the body limit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::harness::{base_config, Gateway};

const SN: &str = "CKJG201960012";

fn config() -> String {
    let mut c = base_config("gw-adms")
        .replace("[api]\nlisten = \"127.0.0.1:0\"\n", "[api]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 4096\n");
    c.push_str(&format!("[[device]]\nid = \"line2-zk\"\ndriver = \"adms\"\nserial_number = \"{SN}\"\n"));
    c
}

/// One raw exchange: sends `request` bytes, returns (status, headers lower-cased, body).
fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body)
}

fn get(addr: SocketAddr, target: &str) -> (u16, Vec<(String, String)>, String) {
    let req =
        format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: iClock Proxy/1.09\r\nConnection: close\r\n\r\n");
    let (status, headers, body) = exchange(addr, req.as_bytes());
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn post(addr: SocketAddr, target: &str, body: &[u8]) -> (u16, String) {
    let mut req = format!(
        "POST {target} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: iClock Proxy/1.09\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let (status, _, body) = exchange(addr, &req);
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn adms_handshake_answers_the_options_with_a_date() {
    let gw = Gateway::start(&config());
    let api = gw.addr("api");
    let (status, headers, body) = get(api, &format!("/iclock/cdata?SN={SN}&options=all&pushver=2.4.1&language=69"));
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with(&format!("GET OPTION FROM: {SN}\n")), "{body}");
    for line in ["ATTLOGStamp=None", "Delay=10", "TransFlag=TransData AttLog", "TimeZone=8", "Realtime=1"] {
        assert!(body.lines().any(|l| l == line), "{line} missing:\n{body}");
    }
    let date = headers.iter().find(|(k, _)| k == "date").map(|(_, v)| v.clone()).expect("Date header");
    assert!(date.ends_with(" GMT"), "{date}");
    // The first poll after the handshake gets the queued commands (INFO, the day's count checks), then `OK`.
    let (status, _, body) = get(api, &format!("/iclock/getrequest?SN={SN}&INFO=Ver%206.60,12,3,41,192.168.1.201"));
    assert_eq!(status, 200, "{body}");
    assert!(body.lines().all(|l| l.starts_with("C:")) && body.contains(":INFO\n"), "{body}");
    assert_eq!(get(api, &format!("/iclock/getrequest?SN={SN}")).2, "OK\n");
    let (status, _, body) = get(api, &format!("/iclock/ping?SN={SN}"));
    assert_eq!((status, body.as_str()), (200, "OK\n"));
    let (status, body) = post(api, &format!("/iclock/devicecmd?SN={SN}"), b"ID=1&Return=0&CMD=INFO");
    assert_eq!((status, body.as_str()), (200, "OK\n"));
}

#[test]
fn adms_unknown_serial_number_is_refused() {
    let gw = Gateway::start(&config());
    let api = gw.addr("api");
    assert_eq!(get(api, "/iclock/cdata?SN=NOTOURS0001&options=all").0, 403);
    assert_eq!(get(api, "/iclock/getrequest?SN=NOTOURS0001").0, 403);
    let (status, _) = post(api, "/iclock/cdata?SN=NOTOURS0001&table=ATTLOG&Stamp=1", b"1\t2026-11-22 08:59:30\t0\t1\n");
    assert_eq!(status, 403);
    assert_eq!(get(api, "/iclock/cdata?options=all").0, 400);
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(0.0));
}

#[test]
fn adms_attlog_upload_is_stored_once_even_when_re_uploaded() {
    let gw = Gateway::start(&config());
    let api = gw.addr("api");
    get(api, &format!("/iclock/cdata?SN={SN}&options=all"));
    let upload = "1001\t2026-11-22 08:59:30\t0\t15\t0\t0\t0\t0\t0\t0\n\
                  1002\t2026-11-22 09:00:01\t1\t1\r\n\
                  1003\t2026-11-22 09:00:02\t0\t4\t7\n\
                  broken line without tabs\n\
                  1004\tyesterday\t0\t1\n";
    let target = format!("/iclock/cdata?SN={SN}&table=ATTLOG&Stamp=9999");
    assert_eq!(post(api, &target, upload.as_bytes()), (200, "OK: 3\n".to_owned()));
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(3.0));
    // The device reset its stamp and sends everything again: no duplicates.
    assert_eq!(
        post(api, &format!("/iclock/cdata?SN={SN}&table=ATTLOG&Stamp=0"), upload.as_bytes()),
        (200, "OK: 3\n".to_owned())
    );
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(3.0));
    assert_eq!(gw.metric("gatewayd_punches_duplicate_total{driver=\"adms\",device=\"line2-zk\"}"), Some(3.0));
    assert_eq!(
        gw.metric("gatewayd_punches_rejected_total{driver=\"adms\",device=\"line2-zk\",reason=\"malformed_line\"}"),
        Some(4.0)
    );
    // The handshake now tells the device where it stands.
    let (_, _, body) = get(api, &format!("/iclock/cdata?SN={SN}&options=all"));
    assert!(body.lines().any(|l| l == "ATTLOGStamp=0"), "{body}");
    // Operation logs are acknowledged but are not punches.
    assert_eq!(
        post(
            api,
            &format!("/iclock/cdata?SN={SN}&table=OPERLOG&Stamp=1"),
            b"OPLOG 4\t0\t2026-11-22 09:00:00\t0\t0\t0\t0\n"
        )
        .0,
        200
    );
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(3.0));
}

#[test]
fn adms_gb2312_body_is_decoded() {
    let gw = Gateway::start(&config());
    let api = gw.addr("api");
    // PIN "张三" in GB2312.
    let mut body = vec![0xd5, 0xc5, 0xc8, 0xfd];
    body.extend_from_slice(b"\t2026-11-22 08:59:30\t0\t1\n");
    assert_eq!(post(api, &format!("/iclock/cdata?SN={SN}&table=ATTLOG&Stamp=1"), &body), (200, "OK: 1\n".to_owned()));
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(1.0));
}

#[test]
fn adms_upload_over_the_body_limit_is_a_clear_error() {
    let gw = Gateway::start(&config());
    let api = gw.addr("api");
    let line = "1001\t2026-11-22 08:59:30\t0\t1\n";
    let huge = line.repeat(4096 / line.len() + 10);
    let (status, body) = post(api, &format!("/iclock/cdata?SN={SN}&table=ATTLOG&Stamp=1"), huge.as_bytes());
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("larger than 4096 bytes"), "{body}");
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(0.0));
    // The daemon keeps serving.
    assert_eq!(post(api, &format!("/iclock/cdata?SN={SN}&table=ATTLOG&Stamp=1"), line.as_bytes()).0, 200);
}

#[test]
fn adms_stamp_survives_a_restart() {
    let mut gw = Gateway::start(&config());
    let api = gw.addr("api");
    let (_, _, body) = get(api, &format!("/iclock/cdata?SN={SN}&options=all"));
    assert!(body.lines().any(|l| l == "ATTLOGStamp=None"), "{body}");
    let target = format!("/iclock/cdata?SN={SN}&table=ATTLOG&Stamp=601234567");
    assert_eq!(post(api, &target, b"1001\t2026-11-22 08:59:30\t0\t15\n"), (200, "OK: 1\n".to_owned()));
    // A stamp that could inject handshake options is not taken.
    let evil = format!("/iclock/cdata?SN={SN}&table=ATTLOG&Stamp=1%0ADelay%3D0");
    assert_eq!(post(api, &evil, b"1001\t2026-11-22 08:59:30\t0\t15\n").0, 200);

    // A graceful stop, then SIGKILL: the stamp is on disk either way.
    gw.stop();
    gw.spawn();
    let api = gw.addr("api");
    let (_, _, body) = get(api, &format!("/iclock/cdata?SN={SN}&options=all"));
    assert!(body.lines().any(|l| l == "ATTLOGStamp=601234567"), "{body}");
    assert!(!body.lines().any(|l| l == "Delay=0"), "{body}");
    let target = format!("/iclock/cdata?SN={SN}&table=ATTLOG&Stamp=601234999");
    assert_eq!(post(api, &target, b"1002\t2026-11-22 09:01:30\t0\t15\n"), (200, "OK: 1\n".to_owned()));
    gw.kill9();
    gw.spawn();
    let api = gw.addr("api");
    let (_, _, body) = get(api, &format!("/iclock/cdata?SN={SN}&options=all"));
    assert!(body.lines().any(|l| l == "ATTLOGStamp=601234999"), "{body}");
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(2.0));

    // An unreadable stamp file is logged and ignored: the terminal re-sends, nothing is duplicated.
    gw.stop();
    std::fs::write(gw.data_dir().join("adms-stamps.json"), b"{garbage").unwrap();
    gw.spawn();
    let api = gw.addr("api");
    let (_, _, body) = get(api, &format!("/iclock/cdata?SN={SN}&options=all"));
    assert!(body.lines().any(|l| l == "ATTLOGStamp=None"), "{body}");
    let resend = "1001\t2026-11-22 08:59:30\t0\t15\n1002\t2026-11-22 09:01:30\t0\t15\n";
    let target = format!("/iclock/cdata?SN={SN}&table=ATTLOG&Stamp=601234999");
    assert_eq!(post(api, &target, resend.as_bytes()), (200, "OK: 2\n".to_owned()));
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(2.0));
}

/// A backlog (the upload right after a handshake) is not real-time: yesterday's records are not flagged `clock_skew`,
/// unlike the same punches from a real-time MQTT device (tests/e2e/engine.rs).
#[test]
fn adms_backlog_after_a_handshake_is_not_flagged_clock_skew() {
    use gatewayd::reconcile::RecordStore;
    use gatewayd::store::Store;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[shift]]\nid = \"day\"\nstart = \"09:00\"\nend = \"18:00\"\ncloses_after = \"6h\"\n\n\
         [[group]]\nid = \"all\"\ndepartments = [\"D1\"]\nshift = \"day\"\n\
         workdays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("roster.csv"), "employee,name,department\n1001,Zhang San,D1\n").unwrap();
    let text = config() + "[roster]\nfile = \"roster.csv\"\n\n[rules]\nfile = \"rules.toml\"\n";
    let mut gw = Gateway::start_in(dir, &text);
    let api = gw.addr("api");
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
    let yesterday = jiff::Timestamp::now().to_zoned(tz).date().yesterday().unwrap();
    assert_eq!(get(api, &format!("/iclock/cdata?SN={SN}&options=all")).0, 200);
    let upload = format!("1001\t{yesterday} 08:55:00\t0\t15\n1001\t{yesterday} 18:10:00\t1\t15\n");
    let target = format!("/iclock/cdata?SN={SN}&table=ATTLOG&Stamp=100");
    assert_eq!(post(api, &target, upload.as_bytes()), (200, "OK: 2\n".to_owned()));
    gw.wait_metric_at_least("gatewayd_engine_punches_total", 2.0, Duration::from_secs(30));
    gw.stop();
    let store = Store::open(&gw.data_dir().join("store"), 8).unwrap();
    let records = RecordStore::open(store.db()).unwrap();
    let all: Vec<_> = records.between(jiff::civil::Date::MIN, jiff::civil::Date::MAX).map(|r| r.unwrap()).collect();
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!((all[0].clock_in_ms.is_some(), all[0].clock_out_ms.is_some()), (true, true), "{all:#?}");
    assert!(all[0].statuses.is_empty(), "a backlog is not real-time: {:?}", all[0].statuses);
}

/// `allow_from`: a terminal may push only from its networks; elsewhere it gets 403 and the refusal is counted. The
/// same routes are served over HTTPS when the API listener has TLS (terminals that speak HTTPS), with the same check.
#[test]
fn adms_allow_from_refuses_other_addresses_over_http_and_https() {
    let devices = "[[device]]\nid = \"zk-far\"\ndriver = \"adms\"\nserial_number = \"FAR0001\"\n\
                   allow_from = [\"10.0.0.0/8\", \"fd00::/8\"]\n\n\
                   [[device]]\nid = \"zk-near\"\ndriver = \"adms\"\nserial_number = \"NEAR0001\"\n\
                   allow_from = [\"127.0.0.1\", \"::1\"]\n";
    let gw = Gateway::start(&(base_config("gw-adms-allow") + devices));
    let api = gw.addr("api");
    let (status, _, body) = get(api, "/iclock/cdata?SN=FAR0001&options=all");
    assert_eq!((status, body.as_str()), (403, "ERROR: this device may not push from this address\n"));
    let (status, body) = post(api, "/iclock/cdata?SN=FAR0001&table=ATTLOG&Stamp=1", b"1\t2026-11-22 08:59:30\t0\t1\n");
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = get(api, "/iclock/cdata?SN=NEAR0001&options=all");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        gw.metric(r#"gatewayd_device_requests_refused_total{driver="adms",device="zk-far",reason="source_address"}"#),
        Some(2.0)
    );
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(0.0));
    drop(gw);

    // Over TLS.
    use gatewayd::cli::certs::{DevPki, Validity};
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new("site api ca").unwrap();
    std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
    let server = pki.server(&["localhost", "127.0.0.1"], Validity::days(30)).unwrap();
    std::fs::write(dir.path().join("server.pem"), &server.cert_pem).unwrap();
    std::fs::write(dir.path().join("server.key"), &server.key_pem).unwrap();
    let config = base_config("gw-adms-tls") + "[api.tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n\n" + devices;
    let gw = Gateway::start_in(dir, &config);
    let tls = crate::api_files::client_tls(&gw.dir.path().join("ca.pem"), None);
    let https = |path: &str| crate::api_files::https(gw.addr("api"), tls.clone(), "GET", path, None).unwrap();
    let (status, body, _) = https("/iclock/cdata?SN=NEAR0001&options=all&pushver=2.4.1");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("GET OPTION FROM: NEAR0001\n"), "{body}");
    let (status, body, _) = https("/iclock/cdata?SN=FAR0001&options=all");
    assert_eq!((status, body.as_str()), (403, "ERROR: this device may not push from this address\n"));
}
