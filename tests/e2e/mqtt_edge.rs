//! The MQTT broker edge under hostile clients, against the real daemon (front + embedded rumqttd) with raw TCP clients
//! that write MQTT 3.1.1 bytes by hand: malformed CONNECTs, remaining lengths that are too long or overlong, zero-length
//! topics and filters, and a publish flood from one client that never reads. Each bad connection is closed without a
//! panic, and a well-behaved device on another connection keeps getting its punches acknowledged throughout.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{base_config, wait_until, Gateway};

const LIMIT: Duration = Duration::from_secs(20);

fn config(gw: &str, ids: &[&str]) -> String {
    let mut c = base_config(gw);
    for id in ids {
        c.push_str(&format!("[[device]]\nid = \"{id}\"\ndriver = \"mqtt\"\nsecret = \"{id}-secret\"\n\n"));
    }
    c
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn put_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            return;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_len(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// The body of an MQTT 3.1.1 CONNECT with username and password (clean session, keep alive 30 s).
fn connect_body(id: &str, password: &str) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, b"MQTT");
    b.push(4);
    b.push(0x80 | 0x40 | 0x02);
    b.extend_from_slice(&30u16.to_be_bytes());
    put_str(&mut b, id.as_bytes());
    put_str(&mut b, id.as_bytes());
    put_str(&mut b, password.as_bytes());
    b
}

fn connect(id: &str) -> Vec<u8> {
    frame(0x10, &connect_body(id, &format!("{id}-secret")))
}

fn publish_qos1(topic: &[u8], packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, topic);
    b.extend_from_slice(&packet_id.to_be_bytes());
    b.extend_from_slice(payload);
    frame(0x32, &b)
}

fn subscribe(packet_id: u16, filter: &[u8]) -> Vec<u8> {
    let mut b = packet_id.to_be_bytes().to_vec();
    put_str(&mut b, filter);
    b.push(1);
    frame(0x82, &b)
}

fn punch(seq: u64) -> Vec<u8> {
    format!(r#"{{"seq": {seq}, "time": "2026-11-22T08:59:30+08:00", "method": "face", "employee": "E1"}}"#).into_bytes()
}

/// Reads one whole frame: (first byte, body). `None` when the server closed the connection (EOF or reset).
async fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let first = s.read_u8().await.ok()?;
    let mut len = 0usize;
    for shift in (0..28).step_by(7) {
        let b = s.read_u8().await.ok()?;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.ok()?;
    Some((first, body))
}

/// Waits until the server closes `s`; returns every byte it sent first. Fails the test if it stays open.
async fn closed(mut s: TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(LIMIT, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: the connection stayed open"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A well-behaved device on a raw connection: connected, subscribed to its acks.
struct Device {
    id: String,
    stream: TcpStream,
    next_id: u16,
}

impl Device {
    async fn connect(addr: SocketAddr, id: &str) -> Device {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&connect(id)).await.unwrap();
        let connack = tokio::time::timeout(LIMIT, read_frame(&mut stream)).await.expect("CONNACK in time");
        assert_eq!(connack, Some((0x20, vec![0, 0])), "{id}: CONNACK accepted");
        stream.write_all(&subscribe(1, format!("gw/v1/dev/{id}/ack").as_bytes())).await.unwrap();
        loop {
            match tokio::time::timeout(LIMIT, read_frame(&mut stream)).await.expect("SUBACK in time") {
                Some((0x90, body)) => {
                    assert_eq!(body, [0, 1, 1], "{id}: subscription granted at QoS 1");
                    break;
                }
                Some(_) => continue,
                None => panic!("{id}: closed before SUBACK"),
            }
        }
        Device { id: id.to_owned(), stream, next_id: 2 }
    }

    /// Publishes a punch and waits for its PUBACK and the gateway's ack: the ack's JSON.
    async fn punch(&mut self, seq: u64) -> Value {
        let packet_id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(2);
        let topic = format!("gw/v1/dev/{}/punch", self.id);
        self.stream.write_all(&publish_qos1(topic.as_bytes(), packet_id, &punch(seq))).await.unwrap();
        let mut puback = false;
        let mut ack = None;
        while !(puback && ack.is_some()) {
            let got = tokio::time::timeout(LIMIT, read_frame(&mut self.stream)).await;
            let (first, body) = got
                .unwrap_or_else(|_| panic!("{}: no ack for seq {seq} in time", self.id))
                .unwrap_or_else(|| panic!("{}: connection closed while waiting for the ack of seq {seq}", self.id));
            match first >> 4 {
                4 if body == packet_id.to_be_bytes() => puback = true,
                3 => {
                    let qos = (first >> 1) & 3;
                    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    let mut at = 2 + topic_len;
                    if qos > 0 {
                        let id = [body[at], body[at + 1]];
                        at += 2;
                        self.stream.write_all(&frame(0x40, &id)).await.unwrap();
                    }
                    let v: Value = serde_json::from_slice(&body[at..]).expect("ack is JSON");
                    if v["seq"] == seq {
                        ack = Some(v);
                    }
                }
                _ => {}
            }
        }
        ack.unwrap_or_default()
    }
}

fn rejected_topic(gw: &Gateway, device: &str) -> f64 {
    gw.metric(&format!(
        "gatewayd_punches_rejected_total{{driver=\"mqtt\",device=\"{device}\",reason=\"topic_not_allowed\"}}"
    ))
    .unwrap_or(0.0)
}

#[test]
fn mqtt_edge_malformed_connects_and_huge_lengths_are_closed_and_others_keep_working() {
    let gw = Gateway::start(&config("gw-edge1", &["face-1", "face-2"]));
    let addr = gw.addr("mqtt");
    runtime().block_on(async {
        let mut bystander = Device::connect(addr, "face-2").await;
        assert_eq!(bystander.punch(1).await["status"], "stored");

        let good = connect_body("face-1", "face-1-secret");
        let mut bad_protocol = good.clone();
        bad_protocol[2..6].copy_from_slice(b"MQTX");
        let mut reserved_flag = good.clone();
        reserved_flag[7] |= 0x01;
        let mut bad_level = good.clone();
        bad_level[6] = 9;
        let mut truncated_id = good.clone();
        truncated_id.truncate(14);
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"extra");
        let mut not_utf8_user = connect_body("face-1", "face-1-secret");
        not_utf8_user[20] = 0xff;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("bytes that are not MQTT", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            ("a PUBLISH before any CONNECT", publish_qos1(b"gw/v1/dev/face-1/punch", 1, &punch(1))),
            ("an empty CONNECT", vec![0x10, 0x00]),
            ("a CONNECT of another protocol", frame(0x10, &bad_protocol)),
            ("a CONNECT of protocol level 9", frame(0x10, &bad_level)),
            ("a CONNECT with the reserved flag", frame(0x10, &reserved_flag)),
            ("a CONNECT that ends inside the client id", frame(0x10, &truncated_id)),
            ("a CONNECT with bytes after its payload", frame(0x10, &trailing)),
            ("a CONNECT with a username that is not UTF-8", frame(0x10, &not_utf8_user)),
            // Remaining length 0xFFFFFFFF-style: a fifth length byte, which MQTT does not allow.
            ("a remaining length of five bytes", vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            // The largest length MQTT can express (256 MiB), announced and never sent.
            ("a CONNECT announcing 256 MiB", vec![0x10, 0xff, 0xff, 0xff, 0x7f]),
            ("a CONNECT of 100 KiB", frame(0x10, &vec![0u8; 100 * 1024])),
        ];
        for (what, bytes) in cases {
            let mut s = TcpStream::connect(addr).await.unwrap();
            // The server may close before it read everything (a reset); that is a close too.
            let _ = s.write_all(&bytes).await;
            let answer = closed(s, what).await;
            assert!(answer.is_empty(), "{what}: answered {answer:?} instead of closing");
            // The device next door is not affected.
            assert_eq!(bystander.punch(2).await["status"], "stored", "after {what}");
        }

        // MQTT 5 is refused with a CONNACK (return code 1), then closed.
        let mut v5 = good.clone();
        v5[6] = 5;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&frame(0x10, &v5)).await.unwrap();
        assert_eq!(closed(s, "an MQTT 5 CONNECT").await, [0x20, 2, 0, 1]);

        // The same bytes, well-formed, are accepted: the cases above failed for what was wrong in them.
        let mut ok = Device::connect(addr, "face-1").await;
        assert_eq!(ok.punch(3).await["status"], "stored");
        assert_eq!(bystander.punch(4).await["status"], "stored");
    });
    assert_eq!(gw.get("/healthz").0, 200);
    // face-2: seq 1, 2 (re-sent after every case, stored once) and 4; face-1: seq 3.
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(4.0));
}

#[test]
fn mqtt_edge_zero_length_topics_and_oversized_frames_close_the_connection() {
    let gw = Gateway::start(&config("gw-edge2", &["face-1", "face-2"]));
    let addr = gw.addr("mqtt");
    let expected_rejections = runtime().block_on(async {
        let mut bystander = Device::connect(addr, "face-2").await;
        // (what, bytes, counted as a broken topic rule): length errors are protocol errors, not rule breaks.
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("a QoS 1 PUBLISH to a zero-length topic", publish_qos1(b"", 7, &punch(1)), true),
            ("a QoS 0 PUBLISH to a zero-length topic", frame(0x30, &[0, 0, b'{', b'}']), true),
            ("a PUBLISH whose topic length runs past the frame", frame(0x30, &[0xff, 0xff, b'g', b'w']), true),
            ("a SUBSCRIBE to a zero-length filter", subscribe(3, b""), true),
            ("a SUBSCRIBE without a filter", frame(0x82, &[0, 3]), true),
            ("a second CONNECT", connect("face-1"), true),
            ("a frame announcing 256 MiB", vec![0x32, 0xff, 0xff, 0xff, 0x7f], false),
            ("a remaining length of five bytes", vec![0x32, 0xff, 0xff, 0xff, 0xff, 0x0f], false),
        ];
        let mut expected_rejections = 0.0;
        for (seq, (what, bytes, counted)) in (1..).zip(cases) {
            let mut device = Device::connect(addr, "face-1").await;
            let _ = device.stream.write_all(&bytes).await;
            let answer = closed(device.stream, what).await;
            assert!(answer.is_empty(), "{what}: answered {answer:?} instead of closing");
            if counted {
                expected_rejections += 1.0;
            }
            assert_eq!(bystander.punch(seq).await["status"], "stored", "after {what}");
        }
        expected_rejections
    });
    // Every rule-breaking frame was counted against the device that sent it.
    assert_eq!(rejected_topic(&gw, "face-1"), expected_rejections);
    assert_eq!(rejected_topic(&gw, "face-2"), 0.0);
    assert_eq!(gw.get("/healthz").0, 200);
    // Nothing face-1 sent was stored.
    assert_eq!(gw.metric("gatewayd_punches_stored_total{driver=\"mqtt\",device=\"face-1\"}"), Some(0.0));
}

#[test]
fn mqtt_edge_publish_flood_from_one_client_does_not_starve_other_devices() {
    let gw = Gateway::start(&config("gw-edge3", &["flood-1", "face-2"]));
    let addr = gw.addr("mqtt");
    let flood: u64 = 50_000;
    runtime().block_on(async {
        let mut bystander = Device::connect(addr, "face-2").await;
        let flooder = Device::connect(addr, "flood-1").await;
        // The flooder writes QoS 1 punches as fast as the socket takes them and never reads its PUBACKs or acks.
        let (mut rd, mut wr) = flooder.stream.into_split();
        let writer = tokio::spawn(async move {
            let mut sent = 0u64;
            let mut batch = Vec::with_capacity(64 * 1024);
            for seq in 1..=flood {
                batch.extend_from_slice(&publish_qos1(
                    b"gw/v1/dev/flood-1/punch",
                    (seq % 60_000 + 1) as u16,
                    &punch(seq),
                ));
                if batch.len() >= 60 * 1024 || seq == flood {
                    if wr.write_all(&batch).await.is_err() {
                        break;
                    }
                    sent = seq;
                    batch.clear();
                }
            }
            (sent, wr)
        });
        // While it floods, the other device's punches are acknowledged.
        for seq in 1..=20 {
            assert_eq!(bystander.punch(seq).await["status"], "stored", "bystander punch {seq} during the flood");
        }
        // Let the flooder read again; whatever it got, the gateway is still serving.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0usize;
            while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), rd.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        });
        let (sent, _wr) = tokio::time::timeout(Duration::from_secs(120), writer).await.expect("flood ended").unwrap();
        let read = reader.await.unwrap();
        assert!(sent > 0 && read > 0, "flood sent {sent} punches, read back {read} bytes");
        eprintln!("flood: {sent} publishes written, {read} bytes read back afterwards");
        for seq in 21..=25 {
            assert_eq!(bystander.punch(seq).await["status"], "stored", "bystander punch {seq} after the flood");
        }
    });
    assert_eq!(gw.get("/healthz").0, 200);
    assert_eq!(gw.metric("gatewayd_punches_stored_total{driver=\"mqtt\",device=\"face-2\"}"), Some(25.0));
    let flooded = gw.metric("gatewayd_punches_stored_total{driver=\"mqtt\",device=\"flood-1\"}").unwrap_or(0.0);
    assert!(flooded > 0.0, "none of the flood was stored");
    eprintln!("flood: {flooded} punches of flood-1 stored");
}

/// Reads frames until one of type `kind` (the high nibble) arrives; returns its first byte and body.
async fn read_until(s: &mut TcpStream, kind: u8, what: &str) -> (u8, Vec<u8>) {
    loop {
        match tokio::time::timeout(LIMIT, read_frame(s)).await.unwrap_or_else(|_| panic!("{what}: nothing in time")) {
            Some((first, body)) if first >> 4 == kind => return (first, body),
            Some(_) => continue,
            None => panic!("{what}: connection closed"),
        }
    }
}

/// The JSON of an ack PUBLISH (QoS 0: topic, then payload).
fn ack_json(first: u8, body: &[u8]) -> (String, Value) {
    assert_eq!(first, 0x30, "acks are QoS 0 PUBLISHes");
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = String::from_utf8(body[2..2 + topic_len].to_vec()).unwrap();
    (topic, serde_json::from_slice(&body[2 + topic_len..]).expect("ack is JSON"))
}

#[test]
fn mqtt_edge_subscriptions_are_answered_by_the_front_and_acks_follow_them() {
    let gw = Gateway::start(&config("gw-edge4", &["face-1"]));
    let addr = gw.addr("mqtt");
    let stored = |n: f64| {
        let series = "gatewayd_punches_stored_total{driver=\"mqtt\",device=\"face-1\"}";
        wait_until(&format!("{n} punches stored"), LIMIT, || gw.metric(series), |v| *v == Some(n));
    };
    let rt = runtime();
    let mut s = rt.block_on(async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&connect("face-1")).await.unwrap();
        assert_eq!(read_frame(&mut s).await, Some((0x20, vec![0, 0])));
        // Two filters in one SUBSCRIBE, QoS 2 and 0 requested: granted at most QoS 1, in order.
        let mut body = 7u16.to_be_bytes().to_vec();
        put_str(&mut body, b"gw/v1/dev/face-1/#");
        body.push(2);
        put_str(&mut body, b"gw/v1/dev/face-1/cmd");
        body.push(0);
        s.write_all(&frame(0x82, &body)).await.unwrap();
        assert_eq!(read_until(&mut s, 9, "SUBACK").await, (0x90, vec![0, 7, 1, 0]));
        // The wildcard filter matches the ack topic: the punch is answered there.
        s.write_all(&publish_qos1(b"gw/v1/dev/face-1/punch", 1, &punch(1))).await.unwrap();
        let (first, body) = read_until(&mut s, 3, "ack of seq 1").await;
        let (topic, ack) = ack_json(first, &body);
        assert_eq!(
            (topic.as_str(), ack["seq"].as_u64(), ack["status"].as_str()),
            ("gw/v1/dev/face-1/ack", Some(1), Some("stored"))
        );
        // Unsubscribed, the device gets no acks (the punch is still stored).
        let mut body = 8u16.to_be_bytes().to_vec();
        put_str(&mut body, b"gw/v1/dev/face-1/#");
        s.write_all(&frame(0xa2, &body)).await.unwrap();
        assert_eq!(read_until(&mut s, 11, "UNSUBACK").await, (0xb0, vec![0, 8]));
        s.write_all(&publish_qos1(b"gw/v1/dev/face-1/punch", 2, &punch(2))).await.unwrap();
        assert_eq!(read_until(&mut s, 4, "PUBACK of seq 2").await, (0x40, vec![0, 2]));
        s
    });
    // The ack of seq 2 is handed to the connection right after the store counted the punch, long before the
    // subscription below: had it been written, it would arrive before the ack of seq 3.
    stored(2.0);
    rt.block_on(async {
        s.write_all(&subscribe(9, b"gw/v1/dev/face-1/ack")).await.unwrap();
        assert_eq!(read_until(&mut s, 9, "SUBACK").await, (0x90, vec![0, 9, 1]));
        s.write_all(&publish_qos1(b"gw/v1/dev/face-1/punch", 3, &punch(3))).await.unwrap();
        let (first, body) = read_until(&mut s, 3, "ack of seq 3").await;
        assert_eq!(ack_json(first, &body).1["seq"], 3, "the first ack after resubscribing is seq 3's");
        // The re-sent punch is answered again, and stored once.
        s.write_all(&publish_qos1(b"gw/v1/dev/face-1/punch", 4, &punch(2))).await.unwrap();
        let (first, body) = read_until(&mut s, 3, "ack of the re-sent seq 2").await;
        let ack = ack_json(first, &body).1;
        assert_eq!((ack["seq"].as_u64(), ack["status"].as_str()), (Some(2), Some("stored")));
    });
    // Four answers `stored`, one of them for the re-sent punch: three punches in the store.
    assert_eq!(gw.metric("gatewayd_punches_stored_total{driver=\"mqtt\",device=\"face-1\"}"), Some(4.0));
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(3.0));
}
