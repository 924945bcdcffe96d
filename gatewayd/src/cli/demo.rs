//! `gatewayd demo`: a self-contained tour on a fresh machine, no root, no hardware.
//!
//! It writes a configuration into a temporary directory (loopback listeners on free ports), starts the real gateway
//! from it, runs simulated devices against it, and prints every punch as it becomes durable. Ctrl-C stops it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo: {0}")]
    Setup(String),
    #[error(transparent)]
    App(#[from] AppError),
}

/// The demo's configuration file text for a data dir.
pub fn demo_config(data_dir: &Path) -> String {
    format!(
        r#"[gateway]
id = "demo-gw"
data_dir = "{data}"
timezone = "Asia/Shanghai"
allow_root = true

[api]
listen = "127.0.0.1:0"

[mqtt]
listen = "127.0.0.1:0"

[[device]]
id = "hall-face-1"
driver = "mqtt"
secret = "demo-secret-1"

[[device]]
id = "line2-zk"
driver = "adms"
serial_number = "DEMO0000ZK01"
"#,
        data = data_dir.join("data").display()
    )
}

/// `gatewayd demo`: logs on stderr, the tour on stdout, until Ctrl-C.
pub fn execute() -> Result<(), super::CliError> {
    crate::telemetry::init_logging();
    super::block_on(run())
}

pub async fn run() -> Result<(), DemoError> {
    let dir = std::env::temp_dir().join(format!("gatewayd-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| DemoError::Setup(format!("{}: {e}", dir.display())))?;
    // The cloud side: the reference receiver behind mutual TLS with throwaway certificates.
    let receiver_stop = CancellationToken::new();
    let (upstream, receiver) =
        super::upstream_sink::demo_receiver(&dir.join("upstream"), "demo-gw", receiver_stop.clone())
            .await
            .map_err(|e| DemoError::Setup(e.to_string()))?;
    let config_path = dir.join("gatewayd.toml");
    // A simulated NFC reader and fingerprint module on pseudo-terminals, driven by the real pn532 and r30x drivers.
    let serial =
        drivers::demo::SerialBench::open().map_err(|e| DemoError::Setup(format!("virtual serial ports: {e}")))?;
    // A ZKTeco terminal without PUSH on a loopback port, driven by the real zk4370 driver.
    let zk4370 =
        drivers::demo::ZkBench::open().await.map_err(|e| DemoError::Setup(format!("simulated 4370 terminal: {e}")))?;
    let config_text = demo_config(&dir)
        + &serial.config("gate-nfc-1", "door-fp-1")
        + &zk4370.config("store-zk")
        + &attendance_files(&dir)?;
    let config_text = config_text + &upstream;
    std::fs::write(&config_path, config_text)
        .map_err(|e| DemoError::Setup(format!("{}: {e}", config_path.display())))?;
    let config = crate::app::load::load(&config_path).map(|(c, _)| c).map_err(|problems| {
        DemoError::Setup(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    })?;

    println!("gatewayd demo: data in {}", dir.display());
    let running = app::start(config, config_path).await?;
    println!("  api      http://{}/metrics", running.listeners.api);
    println!("  Ctrl-C to stop\n");

    let stop = running.shutdown_token();
    let printer = tokio::spawn(print_punches(running.store.clone(), running.durable.clone(), stop.clone()));
    println!("  mqtt     {} (hall-face-1 publishes here)", running.listeners.mqtt);
    println!("  adms     http://{}/iclock/cdata (line2-zk, SN {DEMO_SN})", running.listeners.api);
    let device = tokio::spawn(simulated_face_terminal(running.listeners.mqtt, stop.clone()));
    let zk = tokio::spawn(simulated_zk_terminal(running.listeners.api, stop.clone()));
    let records = tokio::spawn(print_records(running.changes.clone(), stop.clone()));
    println!("  serial   gate-nfc-1 (PN532) on {}", serial.nfc_port.path().display());
    println!("  serial   door-fp-1 (R503) on {}", serial.fingerprint_port.path().display());
    let bench = tokio::spawn(serial.run(stop.clone()));
    println!("  zk4370   store-zk on {}", zk4370.port());
    let zk4370 = tokio::spawn(zk4370.run(stop.clone()));
    let result = running.run_until_signalled().await;
    receiver_stop.cancel();
    let _ = receiver.await;
    bench.abort();
    zk4370.abort();
    device.abort();
    zk.abort();
    records.abort();
    printer.abort();
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(DemoError::from)
}

/// The demo ZKTeco terminal's serial number.
const DEMO_SN: &str = "DEMO0000ZK01";

/// A face terminal speaking MQTT to the embedded broker exactly as a real one would: it logs in with its secret,
/// publishes numbered punches on `gw/v1/dev/hall-face-1/punch`, keeps each one until its ack arrives on
/// `gw/v1/dev/hall-face-1/ack` (re-sending after 5 s), and prints the acks.
async fn simulated_face_terminal(addr: SocketAddr, stop: CancellationToken) {
    const ID: &str = "hall-face-1";
    let employees = ["E1001", "E1002", "E1003", "E2001"];
    let mut options = MqttOptions::new(ID, addr.ip().to_string(), addr.port());
    options.set_credentials(ID, "demo-secret-1");
    options.set_keep_alive(Duration::from_secs(10));
    options.set_last_will(LastWill::new(format!("gw/v1/dev/{ID}/status"), "offline", QoS::AtLeastOnce, false));
    let (client, mut events) = AsyncClient::new(options, 64);
    // The event loop runs in a task of its own: polling it inside the `select!` below would drop a connection attempt
    // in progress every time the tick fires first (which it does at once), and the terminal would connect twice.
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(64);
    let _event_loop = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            let event = events.poll().await;
            let failed = event.is_err();
            if events_tx.send(event).await.is_err() {
                return;
            }
            if failed {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }));
    let mut pending: BTreeMap<u64, (Instant, String)> = BTreeMap::new();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                seq += 1;
                let now = jiff::Zoned::now().with_time_zone(demo_tz());
                let payload = format!(
                    r#"{{"seq": {seq}, "time": "{}", "method": "face", "employee": "{}", "score": 0.93}}"#,
                    now.strftime("%Y-%m-%dT%H:%M:%S%:z"),
                    employees[(seq as usize) % employees.len()]
                );
                pending.insert(seq, (Instant::now(), payload));
                for (s, (sent, payload)) in pending.iter_mut() {
                    if *s == seq || sent.elapsed() > Duration::from_secs(5) {
                        *sent = Instant::now();
                        let _ = client.try_publish(format!("gw/v1/dev/{ID}/punch"), QoS::AtLeastOnce, false, payload.clone());
                    }
                }
            }
            Some(event) = events_rx.recv() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(format!("gw/v1/dev/{ID}/ack"), QoS::AtLeastOnce);
                    let _ = client.try_publish(format!("gw/v1/dev/{ID}/status"), QoS::AtLeastOnce, false, "online");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let ack: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                    if let Some(s) = ack["seq"].as_u64() {
                        pending.remove(&s);
                    }
                    println!("  ack    {ID:<12} mqtt  {}", String::from_utf8_lossy(&p.payload));
                }
                Ok(_) => {}
                Err(e) => println!("  device {ID}: {e}; reconnecting"),
            }
        }
    }
}

fn demo_tz() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::get("Asia/Shanghai").unwrap_or(jiff::tz::TimeZone::UTC)
}

/// One HTTP/1.1 exchange as a ZKTeco terminal makes it: returns the status line and the body.
async fn iclock(api: SocketAddr, method: &str, target: &str, body: &[u8]) -> std::io::Result<(String, String)> {
    let mut stream = tokio::net::TcpStream::connect(api).await?;
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {api}\r\nUser-Agent: iClock Proxy/1.09\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    stream.write_all(&req).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((head.lines().next().unwrap_or_default().to_owned(), body.to_owned()))
}

/// A ZKTeco PUSH terminal: handshake, then an ATTLOG upload every few seconds and a command poll in between, printing
/// the gateway's answers (`OK: n` arrives only once the records are durable).
async fn simulated_zk_terminal(api: SocketAddr, stop: CancellationToken) {
    let pins = ["1001", "1002", "2001"];
    match iclock(api, "GET", &format!("/iclock/cdata?SN={DEMO_SN}&options=all&pushver=2.4.1"), b"").await {
        Ok((_, body)) => {
            let options: Vec<&str> =
                body.lines().filter(|l| l.starts_with("GET OPTION") || l.starts_with("TimeZone")).collect();
            println!("  adms   line2-zk     handshake: {}", options.join(", "));
        }
        Err(e) => println!("  adms   line2-zk     handshake failed: {e}"),
    }
    let mut tick = tokio::time::interval(Duration::from_secs(4));
    let mut n = 0usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let now = jiff::Zoned::now().with_time_zone(demo_tz());
        let line = format!(
            "{}\t{}\t{}\t{}\t0\t0\t0\t0\t0\t0\n",
            pins[n % pins.len()],
            now.strftime("%Y-%m-%d %H:%M:%S"),
            n % 2,
            [1, 15, 4][n % 3]
        );
        let target = format!("/iclock/cdata?SN={DEMO_SN}&table=ATTLOG&Stamp={n}");
        match iclock(api, "POST", &target, line.as_bytes()).await {
            Ok((status, body)) => println!("  ack    line2-zk     adms  {} {}", status.trim(), body.trim()),
            Err(e) => println!("  adms   line2-zk     upload failed: {e}"),
        }
        let _ = iclock(api, "GET", &format!("/iclock/getrequest?SN={DEMO_SN}"), b"").await;
    }
}

/// Prints each punch once it is durable.
async fn print_punches(store: Store, mut durable: tokio::sync::watch::Receiver<u64>, stop: CancellationToken) {
    let mut printed = *durable.borrow();
    loop {
        tokio::select! {
            changed = durable.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
        for punch in store.after(printed).take(1000) {
            match punch {
                Ok(p) => {
                    printed = p.seq;
                    let who = p.employee().or(p.credential()).unwrap_or("?");
                    let at =
                        jiff::Timestamp::from_millisecond(p.device_time_ms).map(|t| t.to_string()).unwrap_or_default();
                    println!(
                        "  punch  {:<28} {:<12} {:<11} {who:<10} {at}",
                        p.punch_id,
                        p.device_id,
                        p.method.as_str()
                    );
                }
                Err(e) => {
                    println!("  store error: {e}");
                    return;
                }
            }
        }
    }
}

/// Writes a roster and rules for the demo into `dir` (a shift that is running now, so records appear at once) and
/// returns the configuration sections that reference them.
fn attendance_files(dir: &Path) -> Result<String, DemoError> {
    let roster = "employee,name,department,card,fingerprint,face,pin,manages\n\
                  E1001,Li Wei,D-OFF,04A1B2C3,7,face-1001,1001,\n\
                  E1002,Wang Fang,D-OFF,045E219A,,face-1002,1002,\n\
                  E1003,Zhang Min,D-ASM,04A1B2C6,door-fp-1:12,face-1003,1003,\n\
                  E2001,Chen Jie,D-ASM,,,face-2001,2001,D-ASM|D-OFF\n";
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap_or(jiff::tz::TimeZone::UTC);
    let now = jiff::Timestamp::now().to_zoned(tz);
    let at = |minutes: i64| {
        let t = now.checked_add(jiff::Span::new().minutes(minutes)).unwrap_or_else(|_| now.clone());
        format!("{:02}:{:02}", t.hour(), t.minute())
    };
    let rules = format!(
        "# A shift that started 30 minutes ago, so the demo shows late clock-ins and changing clock-outs.\n\
         dedupe_window = \"2s\"\n\n[[shift]]\nid = \"demo\"\nstart = \"{start}\"\nend = \"{end}\"\nlate_grace = \"10m\"\n\
         opens_before = \"2h\"\ncloses_after = \"2h\"\novertime_after = \"30m\"\n\n\
         [[group]]\nid = \"everyone\"\ndepartments = [\"D-OFF\", \"D-ASM\"]\nshift = \"demo\"\n\
         workdays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n",
        start = at(-30),
        end = at(8 * 60),
    );
    for (name, text) in [("roster.csv", roster.to_owned()), ("rules.toml", rules)] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| DemoError::Setup(format!("{}: {e}", path.display())))?;
    }
    Ok("\n[roster]\nfile = \"roster.csv\"\n\n[rules]\nfile = \"rules.toml\"\n".into())
}

/// Prints each record revision and each closed work date as the engine decides them.
async fn print_records(changes: crate::reconcile::changes::ChangeLog, stop: CancellationToken) {
    use crate::reconcile::changes::Change;
    let mut durable = changes.subscribe();
    let mut printed = *durable.borrow();
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap_or(jiff::tz::TimeZone::UTC);
    let clock = |ms: Option<i64>| match ms.and_then(|m| jiff::Timestamp::from_millisecond(m).ok()) {
        Some(t) => t.to_zoned(tz.clone()).strftime("%H:%M:%S").to_string(),
        None => "--:--:--".into(),
    };
    loop {
        tokio::select! {
            changed = durable.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
        let last = *durable.borrow();
        for entry in changes.after(printed).take_while(|e| e.as_ref().map_or(true, |(seq, _)| *seq <= last)) {
            match entry {
                Ok((seq, change)) => {
                    printed = seq;
                    match change {
                        Change::Record(r) => println!(
                            "  record {:<6} {} {:<5} rev {:<3} in {} out {} worked {:>4}m [{}]",
                            r.employee_id,
                            r.work_date,
                            r.shift_id,
                            r.revision,
                            clock(r.clock_in_ms),
                            clock(r.clock_out_ms),
                            r.worked_minutes,
                            r.statuses.join(", ")
                        ),
                        Change::DayClosed(day) => println!("  closed {day}"),
                        Change::Punch(p) if !p.flags.is_empty() => {
                            println!("  flag   {:<28} {}", p.punch_id, p.flags.join(", "))
                        }
                        Change::Punch(_) => {}
                    }
                }
                Err(e) => {
                    println!("  change log error: {e}");
                    return;
                }
            }
        }
    }
}
