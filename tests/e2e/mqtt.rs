//! MQTT devices against the real daemon with a real MQTT client (rumqttc): CONNECT accepted and refused, punch → durable
//! ack, re-send stored once, garbage answered `rejected` on a connection that stays up, another device's topic refused,
//! 100 devices at once, a device added by SIGHUP, presence, and a client certificate on the TLS listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::Value;

use crate::harness::{base_config, wait_until, Gateway};

const LIMIT: Duration = Duration::from_secs(20);

fn device(id: &str) -> String {
    format!("[[device]]\nid = \"{id}\"\ndriver = \"mqtt\"\nsecret = \"{id}-secret\"\n\n")
}

fn config(gw: &str, ids: &[&str]) -> String {
    let mut c = base_config(gw);
    for id in ids {
        c.push_str(&device(id));
    }
    c
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn options(addr: SocketAddr, id: &str, password: &str) -> MqttOptions {
    let mut o = MqttOptions::new(format!("{id}-client"), addr.ip().to_string(), addr.port());
    o.set_credentials(id, password);
    o.set_keep_alive(Duration::from_secs(10));
    o.set_max_packet_size(2 << 20, 2 << 20);
    o
}

/// Connects and waits for the CONNACK: Ok with the client and its event loop, or the connection error.
async fn connect_with(o: MqttOptions) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let (client, mut events) = AsyncClient::new(o, 64);
    // The machine running the tests may be busy: allow more than rumqttc's default 5 s for TCP + CONNACK.
    events.network_options.set_connection_timeout(LIMIT.as_secs());
    loop {
        match tokio::time::timeout(LIMIT, events.poll()).await.expect("connect timed out")? {
            Event::Incoming(Packet::ConnAck(_)) => return Ok((client, events)),
            _ => continue,
        }
    }
}

async fn connect(addr: SocketAddr, id: &str) -> (AsyncClient, EventLoop) {
    let (client, mut events) = connect_with(options(addr, id, &format!("{id}-secret"))).await.expect("connect");
    client.subscribe(format!("gw/v1/dev/{id}/ack"), QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.unwrap() {
            return (client, events);
        }
    }
}

fn punch(seq: u64, employee: &str) -> String {
    format!(
        r#"{{"seq": {seq}, "time": "2026-11-22T08:59:30+08:00", "method": "face", "employee": "{employee}", "score": 0.93}}"#
    )
}

/// Publishes `payload` on the device's punch topic and waits for the next ack.
async fn publish_and_ack(client: &AsyncClient, events: &mut EventLoop, id: &str, payload: Vec<u8>) -> Value {
    client.publish(format!("gw/v1/dev/{id}/punch"), QoS::AtLeastOnce, false, payload).await.unwrap();
    next_ack(events).await
}

async fn next_ack(events: &mut EventLoop) -> Value {
    loop {
        match tokio::time::timeout(LIMIT, events.poll()).await.expect("no ack in time").expect("connection lost") {
            Event::Incoming(Packet::Publish(p)) if p.topic.ends_with("/ack") => {
                return serde_json::from_slice(&p.payload).expect("ack is JSON");
            }
            _ => continue,
        }
    }
}

fn series(name: &str, device: &str) -> String {
    format!("gatewayd_{name}{{driver=\"mqtt\",device=\"{device}\"}}")
}

#[test]
fn mqtt_connect_is_accepted_or_refused() {
    let gw = Gateway::start(&config("gw-mq1", &["face-1"]));
    let addr = gw.addr("mqtt");
    runtime().block_on(async {
        let wrong = connect_with(options(addr, "face-1", "not-the-secret")).await;
        assert!(
            matches!(wrong, Err(ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword))),
            "{:?}",
            wrong.err()
        );
        let unknown = connect_with(options(addr, "face-9", "face-9-secret")).await;
        assert!(matches!(unknown, Err(ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword))));
        let mut anonymous = MqttOptions::new("anon", addr.ip().to_string(), addr.port());
        anonymous.set_keep_alive(Duration::from_secs(10));
        assert!(matches!(connect_with(anonymous).await, Err(ConnectionError::ConnectionRefused(_))));
        let (_client, _events) = connect_with(options(addr, "face-1", "face-1-secret")).await.expect("right secret");
    });
}

#[test]
fn mqtt_punch_is_acked_after_it_is_stored_and_a_resend_is_stored_once() {
    let gw = Gateway::start(&config("gw-mq2", &["face-1"]));
    let addr = gw.addr("mqtt");
    let rt = runtime();
    let (client, mut events) = rt.block_on(async {
        let (client, mut events) = connect(addr, "face-1").await;
        let ack = publish_and_ack(&client, &mut events, "face-1", punch(42, "E1001").into_bytes()).await;
        assert_eq!(ack, serde_json::json!({"seq": 42, "status": "stored"}));
        let again = publish_and_ack(&client, &mut events, "face-1", punch(42, "E1001").into_bytes()).await;
        assert_eq!(again, serde_json::json!({"seq": 42, "status": "stored"}));
        (client, events)
    });
    // Presence while connected.
    assert_eq!(gw.metric(&series("device_online", "face-1")), Some(1.0));
    rt.block_on(async {
        client.disconnect().await.unwrap();
        while events.poll().await.is_ok() {}
    });
    assert_eq!(gw.metric(&series("punches_stored_total", "face-1")), Some(2.0));
    assert_eq!(gw.metric(&series("punches_duplicate_total", "face-1")), Some(1.0));
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(1.0));
    let online = || gw.metric(&series("device_online", "face-1"));
    wait_until("face-1 offline", LIMIT, online, |v| *v == Some(0.0));
}

#[test]
fn mqtt_garbage_is_rejected_with_a_reason_and_the_connection_stays_up() {
    let gw = Gateway::start(&config("gw-mq3", &["face-1"]));
    let addr = gw.addr("mqtt");
    runtime().block_on(async {
        let (client, mut events) = connect(addr, "face-1").await;
        let cases: Vec<(Vec<u8>, Value, &str)> = vec![
            (b"not json".to_vec(), Value::Null, "not valid JSON"),
            (br#"{"seq": 5, "time": "2026-11-22T08:59:30Z"}"#.to_vec(), 5.into(), "missing field `method`"),
            (
                br#"{"seq": 6, "time": "2026-11-22T08:59:30Z", "method": "smell", "employee": "E1"}"#.to_vec(),
                6.into(),
                "unknown method",
            ),
            (
                br#"{"seq": 7, "time": "1970-01-01T00:00:00Z", "method": "face", "employee": "E1"}"#.to_vec(),
                7.into(),
                "before 2000",
            ),
            (
                br#"{"seq": 8, "time": "2999-01-01T00:00:00Z", "method": "face", "employee": "E1"}"#.to_vec(),
                8.into(),
                "future",
            ),
            (
                format!(r#"{{"seq": 9, "pad": "{}"}}"#, "x".repeat(10_000)).into_bytes(),
                9.into(),
                "more than the 4096 allowed",
            ),
        ];
        for (payload, seq, reason) in cases {
            let ack = publish_and_ack(&client, &mut events, "face-1", payload).await;
            assert_eq!(ack["status"], "rejected", "{ack}");
            assert_eq!(ack["seq"], seq, "{ack}");
            assert!(ack["error"].as_str().unwrap_or_default().contains(reason), "{ack} lacks {reason}");
        }
        // Same connection, still serving.
        let ack = publish_and_ack(&client, &mut events, "face-1", punch(10, "E1002").into_bytes()).await;
        assert_eq!(ack["status"], "stored");
    });
    let rejected = |reason: &str| {
        gw.metric(&format!("gatewayd_punches_rejected_total{{driver=\"mqtt\",device=\"face-1\",reason=\"{reason}\"}}"))
    };
    assert_eq!(rejected("malformed"), Some(1.0));
    assert_eq!(rejected("unknown_method"), Some(1.0));
    assert_eq!(rejected("oversized"), Some(1.0));
    assert_eq!(rejected("invalid"), Some(2.0));
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(1.0));
}

#[test]
fn mqtt_a_device_cannot_publish_or_subscribe_as_another() {
    let gw = Gateway::start(&config("gw-mq4", &["face-1", "face-2"]));
    let addr = gw.addr("mqtt");
    runtime().block_on(async {
        // Publishing a punch on face-2's topic with face-1's credentials: the connection is closed, nothing stored.
        let (client, mut events) = connect(addr, "face-1").await;
        client.publish("gw/v1/dev/face-2/punch", QoS::AtLeastOnce, false, punch(1, "E1")).await.unwrap();
        let outcome = loop {
            match tokio::time::timeout(LIMIT, events.poll()).await.expect("no reaction in time") {
                Ok(Event::Incoming(Packet::Publish(p))) => panic!("unexpected publish on {}", p.topic),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(!matches!(outcome, ConnectionError::ConnectionRefused(_)), "{outcome:?}");
        // Reading another device's acks is refused the same way.
        let (client, mut events) = connect(addr, "face-1").await;
        client.subscribe("gw/v1/dev/face-2/ack", QoS::AtLeastOnce).await.unwrap();
        loop {
            match tokio::time::timeout(LIMIT, events.poll()).await.expect("no reaction in time") {
                Ok(Event::Incoming(Packet::SubAck(_))) => panic!("subscription to another device's acks was granted"),
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        // A last will on another device's status topic is refused at CONNECT.
        let mut o = options(addr, "face-1", "face-1-secret");
        o.set_last_will(rumqttc::LastWill::new("gw/v1/dev/face-2/status", "offline", QoS::AtLeastOnce, false));
        assert!(matches!(
            connect_with(o).await,
            Err(ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized))
        ));
    });
    assert_eq!(gw.metric(&series("punches_stored_total", "face-2")), Some(0.0));
    assert_eq!(
        gw.metric("gatewayd_punches_rejected_total{driver=\"mqtt\",device=\"face-1\",reason=\"topic_not_allowed\"}"),
        Some(2.0)
    );
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(0.0));
}

#[test]
fn mqtt_hundred_devices_publishing_at_once_are_all_acked() {
    let ids: Vec<String> = (0..100).map(|i| format!("face-{i:03}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let gw = Gateway::start(&config("gw-mq5", &refs));
    let addr = gw.addr("mqtt");
    let per_device = 5u64;
    runtime().block_on(async {
        let mut tasks = Vec::new();
        for id in ids.clone() {
            tasks.push(tokio::spawn(async move {
                let (client, mut events) = connect(addr, &id).await;
                for seq in 1..=per_device {
                    client
                        .publish(format!("gw/v1/dev/{id}/punch"), QoS::AtLeastOnce, false, punch(seq, "E1"))
                        .await
                        .unwrap();
                }
                let mut acked = std::collections::BTreeSet::new();
                while acked.len() < per_device as usize {
                    let ack = next_ack(&mut events).await;
                    assert_eq!(ack["status"], "stored", "{id}: {ack}");
                    acked.insert(ack["seq"].as_u64().unwrap());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_eq!(gw.metric("gatewayd_store_punches"), Some((100 * per_device) as f64));
}

#[test]
fn mqtt_device_added_by_sighup_can_connect_and_removed_one_is_dropped() {
    let mut gw = Gateway::start(&config("gw-mq6", &["face-1"]));
    let addr = gw.addr("mqtt");
    let rt = runtime();
    rt.block_on(async {
        assert!(connect_with(options(addr, "face-2", "face-2-secret")).await.is_err());
    });
    let (_keep, mut old_events) = rt.block_on(connect(addr, "face-1"));
    std::fs::write(&gw.config_path, config("gw-mq6", &["face-2"])).unwrap();
    gw.signal(Signal::SIGHUP);
    gw.wait_for("READY=1", LIMIT);
    rt.block_on(async {
        // READY=1 comes once the reload is in the broker's credentials: face-2 connects at the first try.
        let (client, mut events) =
            connect_with(options(addr, "face-2", "face-2-secret")).await.expect("face-2 refused after the reload");
        client.subscribe("gw/v1/dev/face-2/ack", QoS::AtLeastOnce).await.unwrap();
        let ack = publish_and_ack(&client, &mut events, "face-2", punch(1, "E1").into_bytes()).await;
        assert_eq!(ack["status"], "stored");
        // face-1 was removed: its open connection is closed.
        while tokio::time::timeout(LIMIT, old_events.poll()).await.expect("removed device still connected").is_ok() {}
    });
}

fn tls_config(dir: &std::path::Path) -> (rcgen::Certificate, rcgen::KeyPair, Arc<rustls::ClientConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "device ca");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, KeyPair::from_pem(&ca_key.serialize_pem()).unwrap());
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client.distinguished_name.push(DnType::CommonName, "face-1");
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(client_key.serialize_der()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![client_cert.der().clone()], key)
        .unwrap();
    (ca_cert, ca_key, Arc::new(cfg))
}

#[test]
fn mqtt_tls_client_certificate_is_enough() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, _key, client_tls) = tls_config(dir.path());
    let text = config("gw-mq7", &["face-1"]).replace(
        "[mqtt]\nlisten = \"127.0.0.1:0\"\n",
        "[mqtt]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n\
         tls = { cert = \"server.pem\", key = \"server.key\", client_ca = \"ca.pem\" }\n",
    );
    let gw = Gateway::start_in(dir, &text);
    let addr = gw.addr("mqtt_tls");
    runtime().block_on(async {
        let mut o = MqttOptions::new("any-client-id", "localhost", addr.port());
        o.set_keep_alive(Duration::from_secs(10));
        o.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(client_tls)));
        let (client, mut events) = connect_with(o).await.expect("certificate login");
        client.subscribe("gw/v1/dev/face-1/ack", QoS::AtLeastOnce).await.unwrap();
        let ack = publish_and_ack(&client, &mut events, "face-1", punch(3, "E1").into_bytes()).await;
        assert_eq!(ack, serde_json::json!({"seq": 3, "status": "stored"}));
        // The certificate binds the connection to face-1 as firmly as a password.
        client.publish("gw/v1/dev/face-2/punch", QoS::AtLeastOnce, false, punch(4, "E1")).await.unwrap();
        loop {
            match tokio::time::timeout(LIMIT, events.poll()).await.expect("no reaction in time") {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.contains("face-2") => {
                    panic!("spoofed publish routed")
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    });
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(1.0));
}

/// A TLS client that trusts `ca` only and presents no certificate.
fn trusting(ca: &rcgen::Certificate) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The DER of the certificate the TLS listener at `addr` presents now (a real TLS handshake trusting `ca`).
async fn served_certificate(addr: SocketAddr, ca: &rcgen::Certificate) -> Vec<u8> {
    let cfg = trusting(ca);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(LIMIT, tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("server certificate")[0].as_ref().to_vec()
}

#[test]
fn mqtt_tls_certificate_is_reloaded_on_sighup_and_a_bad_file_keeps_the_old_one() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "site ca");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let server = |cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        (p.signed_by(&key, &issuer).unwrap(), key)
    };
    let install = |dir: &std::path::Path, (cert, key): &(rcgen::Certificate, KeyPair)| {
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    };
    let first = server("mqtt one");
    install(dir.path(), &first);
    // Password login over TLS (no client_ca), so a plain rumqttc client can stay connected across the reloads.
    let text = config("gw-mq8", &["face-1"]).replace(
        "[mqtt]\nlisten = \"127.0.0.1:0\"\n",
        "[mqtt]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n\
         tls = { cert = \"server.pem\", key = \"server.key\" }\n",
    );
    let mut gw = Gateway::start_in(dir, &text);
    let addr = gw.addr("mqtt_tls");
    let rt = runtime();
    let client_tls = trusting(&ca_cert);
    let (client, mut events) = rt.block_on(async {
        assert_eq!(served_certificate(addr, &ca_cert).await, first.0.der().as_ref());
        let mut o = MqttOptions::new("face-1-client", "localhost", addr.port());
        o.set_credentials("face-1", "face-1-secret");
        o.set_keep_alive(Duration::from_secs(10));
        o.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(client_tls))));
        let (client, mut events) = connect_with(o).await.expect("password login over TLS");
        client.subscribe("gw/v1/dev/face-1/ack", QoS::AtLeastOnce).await.unwrap();
        let ack = publish_and_ack(&client, &mut events, "face-1", punch(1, "E1").into_bytes()).await;
        assert_eq!(ack["status"], "stored");
        (client, events)
    });

    // Rotate: new certificate and key in place, SIGHUP. New handshakes get the new certificate.
    let second = server("mqtt two");
    install(gw.dir.path(), &second);
    gw.signal(Signal::SIGHUP);
    gw.wait_for("READY=1", LIMIT);
    let served = || match rt.block_on(served_certificate(addr, &ca_cert)) {
        der if der == first.0.der().as_ref() => "the first certificate",
        der if der == second.0.der().as_ref() => "the second certificate",
        _ => "another certificate",
    };
    wait_until("the rotated certificate served", LIMIT, served, |which| *which == "the second certificate");
    // A bad certificate file: the reload is refused, the certificate in force stays.
    std::fs::write(gw.dir.path().join("server.pem"), "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    gw.signal(Signal::SIGHUP);
    gw.wait_for("READY=1", LIMIT);
    rt.block_on(async {
        // The connection made before both reloads is still up and acked.
        let ack = publish_and_ack(&client, &mut events, "face-1", punch(2, "E1").into_bytes()).await;
        assert_eq!(ack["status"], "stored");
        assert_eq!(served_certificate(addr, &ca_cert).await, second.0.der().as_ref());
    });
    gw.stop();
    assert!(gw.stderr.contains("mqtt tls files not reloaded"), "{}", gw.stderr);
    assert!(gw.stderr.contains("server.pem"), "the error names the file: {}", gw.stderr);
}
