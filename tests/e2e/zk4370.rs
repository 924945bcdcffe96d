//! ZKTeco terminals over the 4370 binary protocol against the real daemon: a simulated terminal on TCP (40-byte
//! records, a comm key, its own time zone) and one on UDP (16-byte records). Real-time punches are acknowledged once
//! durable; the gateway is SIGKILLed, the terminals record punches meanwhile, and after the restart the log read on
//! reconnect fetches exactly those, once.

use std::path::Path;
use std::time::Duration;

use drivers::zk4370::records::{AttRecord, Layout};
use drivers::zk4370::sim::Zk4370Sim;
use gatewayd::store::Store;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::harness::{base_config, wait_until, Gateway};

const LIMIT: Duration = Duration::from_secs(30);

fn tz(name: &str) -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::get(name).unwrap()
}

fn stored_total(gw: &Gateway, device: &str) -> f64 {
    gw.metric(&format!("gatewayd_punches_stored_total{{driver=\"zk4370\",device=\"{device}\"}}")).unwrap_or(0.0)
}

fn online(gw: &Gateway, device: &str) -> f64 {
    gw.metric(&format!("gatewayd_device_online{{driver=\"zk4370\",device=\"{device}\"}}")).unwrap_or(0.0)
}

/// Every stored punch of `device`: (user, device time ms, realtime).
fn stored(data_dir: &Path, device: &str) -> Vec<(String, i64, bool)> {
    let store = Store::open(&data_dir.join("store"), 8).unwrap();
    store
        .after(0)
        .map(Result::unwrap)
        .filter(|p| p.device_id == device)
        .map(|p| (p.employee().unwrap_or_default().to_owned(), p.device_time_ms, p.realtime))
        .collect()
}

/// What the store must hold for the terminal's records: (user, device time ms) in `zone`.
fn expected(records: &[AttRecord], zone: &str) -> Vec<(String, i64)> {
    records
        .iter()
        .map(|r| (r.user_id.clone(), r.time.to_zoned(tz(zone)).unwrap().timestamp().as_millisecond()))
        .collect()
}

fn punch(sim: &Zk4370Sim, user: &str) {
    sim.punch(user, 15);
}

#[test]
fn tcp_and_udp_terminals_punch_durably_and_the_log_read_after_a_kill_fetches_the_gap_once() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stop = CancellationToken::new();
    let tcp_sim = Zk4370Sim::new(Layout::Long40, Some(424_242), tz("Asia/Kolkata"));
    let udp_sim = Zk4370Sim::new(Layout::Mid16, None, tz("Asia/Shanghai"));
    let (tcp_addr, udp_addr) = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addrs = (listener.local_addr().unwrap(), socket.local_addr().unwrap());
        let (t, u) = (tcp_sim.clone(), udp_sim.clone());
        let (s1, s2) = (stop.clone(), stop.clone());
        tokio::spawn(async move { t.serve_tcp(listener, s1).await });
        tokio::spawn(async move { u.serve_udp(socket, s2).await });
        addrs
    });
    // Records from before the gateway knew the terminal: the first read takes them all.
    tcp_sim.punch_at("EMP-1", 1, 0, "2026-11-20T09:00:00".parse().unwrap());
    let config = format!(
        "{}[[device]]\nid = \"zk-tcp\"\ndriver = \"zk4370\"\nport = \"tcp://{tcp_addr}\"\ncomm_key = 424242\n\
         timezone = \"Asia/Kolkata\"\npoll_interval = \"300ms\"\nresponse_timeout = \"2s\"\n\n\
         [[device]]\nid = \"zk-udp\"\ndriver = \"zk4370\"\nport = \"udp://{udp_addr}\"\npoll_interval = \"300ms\"\n\
         response_timeout = \"2s\"\n",
        base_config("gw-zk4370")
    );
    let mut gw = Gateway::start(&config);
    for device in ["zk-tcp", "zk-udp"] {
        wait_until(&format!("{device} online"), LIMIT, || online(&gw, device), |v| *v == 1.0);
    }
    wait_until("the old record read", LIMIT, || stored_total(&gw, "zk-tcp"), |v| *v == 1.0);
    assert!(tcp_sim.clock_was_set() && udp_sim.clock_was_set());

    // Real-time punches: stored, and acknowledged to the terminal.
    for i in 1..=3 {
        punch(&tcp_sim, &format!("10{i}"));
        punch(&udp_sim, &format!("20{i}"));
    }
    wait_until("tcp live punches acknowledged", LIMIT, || tcp_sim.acked().len(), |n| *n == 3);
    wait_until("udp live punches acknowledged", LIMIT, || udp_sim.acked().len(), |n| *n == 3);
    assert_eq!(stored_total(&gw, "zk-tcp"), 4.0);
    assert_eq!(stored_total(&gw, "zk-udp"), 3.0);

    // The gateway dies; the terminals keep recording.
    gw.kill9();
    for i in 4..=8 {
        punch(&tcp_sim, &format!("10{i}"));
        punch(&udp_sim, &format!("20{i}"));
    }
    gw.spawn();
    let total = |gw: &Gateway| gw.metric("gatewayd_store_punches").unwrap_or(0.0);
    wait_until("the gap read from both logs", LIMIT, || total(&gw), |v| *v >= 17.0);
    // A live punch after the restart is acknowledged too.
    punch(&tcp_sim, "109");
    punch(&udp_sim, "209");
    wait_until("tcp punch after restart acknowledged", LIMIT, || tcp_sim.acked().len(), |n| *n == 4);
    wait_until("udp punch after restart acknowledged", LIMIT, || udp_sim.acked().len(), |n| *n == 4);
    let (status, _) = gw.stop();
    assert_eq!(status.code(), Some(0), "{}", gw.stderr);
    stop.cancel();

    for (device, sim, zone) in [("zk-tcp", &tcp_sim, "Asia/Kolkata"), ("zk-udp", &udp_sim, "Asia/Shanghai")] {
        let got = stored(&gw.data_dir(), device);
        let mut keys: Vec<(String, i64)> = got.iter().map(|(u, t, _)| (u.clone(), *t)).collect();
        keys.sort();
        let mut want = expected(&sim.log(), zone);
        want.sort();
        assert_eq!(keys, want, "{device}: every record of the terminal's log, each once");
        // The punches made while the gateway was down came from the log read, not as events.
        for (user, _, realtime) in &got {
            let offline = ["4", "5", "6", "7", "8"].iter().any(|n| user.ends_with(n) && user.len() == 3);
            if offline {
                assert!(!realtime, "{device}: {user} was read from the log");
            }
        }
    }
    assert!(!gw.stderr.contains("panicked"), "{}", gw.stderr);
}

#[test]
fn roster_imports_become_users_on_a_4370_terminal_and_removals_delete_them() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stop = CancellationToken::new();
    let sim = Zk4370Sim::new(Layout::Long40, None, tz("Asia/Shanghai"));
    let addr = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (s, st) = (sim.clone(), stop.clone());
        tokio::spawn(async move { s.serve_tcp(listener, st).await });
        addr
    });
    let config = format!(
        "{}[[device]]\nid = \"zk-tcp\"\ndriver = \"zk4370\"\nport = \"tcp://{addr}\"\npoll_interval = \"300ms\"\n",
        base_config("gw-zk-roster")
    );
    let gw = Gateway::start(&config);
    let admin = gw.token(&["--role", "admin"]);
    let import = |csv: &str| {
        let auth = format!("Bearer {admin}");
        let headers = [("authorization", auth.as_str())];
        let (status, body) =
            crate::harness::http("POST", gw.addr("api"), "/api/v1/employees/import", &headers, Some(csv.into()));
        assert_eq!(status, 200, "{body}");
    };
    let users = || -> Vec<(String, String)> { sim.users().into_iter().map(|u| (u.user_id, u.name)).collect() };
    import(
        "employee,name,department,card,fingerprint,face,pin,manages\n\
         E1001,Zhang San,D1,04A1B2C3,,,1001,\nE1002,Li Si,D1,,,,1002,\n",
    );
    wait_until("the roster on the terminal", LIMIT, users, |u| u.len() == 2);
    assert_eq!(users(), [("1001".to_owned(), "Zhang San".to_owned()), ("1002".to_owned(), "Li Si".to_owned())]);
    import("employee,name,department,card,fingerprint,face,pin,manages\nE1002,Li Si,D1,,,,1002,\n");
    wait_until("the removal on the terminal", LIMIT, users, |u| u.len() == 1);
    assert_eq!(users()[0].0, "1002");
    stop.cancel();
}
