//! Fleets (SPEC 6.1, docs/fleet.md): real gateways publishing to a real NATS JetStream server with mutual TLS and the
//! documented per-gateway permissions.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

use crate::harness::nats::Cluster;
use crate::harness::{base_config, wait_until, Gateway};
use gatewayd::proto::upstream::{ResendReply, ResendRequest, UploadBatch};

const LIMIT: Duration = Duration::from_secs(60);

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A gateway configuration with MQTT devices `devices` and the upstream on the cluster, as gateway `id` with the
/// certificate named `cert_cn`.
pub fn gateway_config(id: &str, cert_cn: &str, devices: &[&str], cluster: &Cluster) -> String {
    let mut c = base_config(id);
    for d in devices {
        c.push_str(&format!("[[device]]\nid = \"{d}\"\ndriver = \"mqtt\"\nsecret = \"{d}-secret\"\n\n"));
    }
    let me = cluster.pki.client(cert_cn);
    let urls = cluster.urls();
    let servers: Vec<String> = urls[1..].iter().map(|u| format!("\"{u}\"")).collect();
    c.push_str(&format!(
        "[upstream]\nurl = \"{url}\"\nservers = [{servers}]\nstream = \"GATEWAYD\"\nca = \"{ca}\"\ncert = \"{cert}\"\n\
         key = \"{key}\"\nbatch_max_items = 50\nlinger = \"20ms\"\nmax_backoff = \"1s\"\ntimeout = \"3s\"\n",
        url = urls[0],
        servers = servers.join(", "),
        ca = cluster.pki.ca().display(),
        cert = me.cert.display(),
        key = me.key.display(),
    ));
    c
}

/// An MQTT device session on a gateway.
pub struct Device {
    pub id: String,
    client: AsyncClient,
    events: EventLoop,
}

impl Device {
    pub async fn connect(addr: SocketAddr, id: &str) -> Device {
        let mut o = MqttOptions::new(format!("{id}-client"), addr.ip().to_string(), addr.port());
        o.set_credentials(id, format!("{id}-secret"));
        o.set_keep_alive(Duration::from_secs(10));
        let (client, mut events) = AsyncClient::new(o, 64);
        events.network_options.set_connection_timeout(LIMIT.as_secs());
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) =
                tokio::time::timeout(LIMIT, events.poll()).await.expect("connect timed out").expect("connect")
            {
                break;
            }
        }
        client.subscribe(format!("gw/v1/dev/{id}/ack"), QoS::AtLeastOnce).await.unwrap();
        loop {
            if let Event::Incoming(Packet::SubAck(_)) =
                tokio::time::timeout(LIMIT, events.poll()).await.expect("suback timed out").expect("suback")
            {
                break;
            }
        }
        Device { id: id.to_owned(), client, events }
    }

    /// Sends punch `seq` (employee `E{seq % 20}`, on 2026-11-22 site time) and waits until the gateway says it is
    /// stored. Returns false when the connection fails first (the gateway died).
    pub async fn punch(&mut self, seq: u64) -> bool {
        let time = format!("2026-11-22T{:02}:{:02}:{:02}+08:00", 7 + (seq / 3600) % 12, (seq / 60) % 60, seq % 60);
        self.punch_at(seq, &time, &format!("E{}", seq % 20)).await
    }

    /// Sends punch `seq` at `time` (RFC 3339) for `employee` and waits for its ack; false when the connection fails.
    pub async fn punch_at(&mut self, seq: u64, time: &str, employee: &str) -> bool {
        let payload = format!(r#"{{"seq": {seq}, "time": "{time}", "method": "face", "employee": "{employee}"}}"#);
        if self.client.publish(format!("gw/v1/dev/{}/punch", self.id), QoS::AtLeastOnce, false, payload).await.is_err()
        {
            return false;
        }
        loop {
            match tokio::time::timeout(LIMIT, self.events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic.ends_with("/ack") => {
                    let ack: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                    if ack["seq"] == seq {
                        assert_eq!(ack["status"], "stored", "{ack}");
                        return true;
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return false,
                Err(_) => panic!("no ack for punch {seq} within {LIMIT:?}"),
            }
        }
    }
}

/// The batches in the stream, read by the operator: (subject, Nats-Msg-Id, batch).
pub async fn stream_batches(cluster: &Cluster) -> Vec<(String, String, UploadBatch)> {
    let js = async_nats::jetstream::new(cluster.connect("operator").await);
    let stream = js.get_stream("GATEWAYD").await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else { continue };
        let id = m.headers.get("Nats-Msg-Id").map(|v| v.to_string()).unwrap_or_default();
        out.push((m.subject.to_string(), id, UploadBatch::decode(m.payload.as_ref()).unwrap()));
    }
    out
}

/// Punch ids in the stream (with repetitions) per gateway.
pub fn punch_ids(batches: &[(String, String, UploadBatch)]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, _, b) in batches {
        out.entry(b.gateway_id.clone()).or_default().extend(b.punches.iter().map(|p| p.punch_id.clone()));
    }
    out
}

/// A gateway delivers its punches to the stream over mutual TLS: the documented subject and message id, batches in
/// order, and each batch stored once although the gateway is SIGKILLed and sends its open batch again.
#[test]
fn a_gateway_publishes_its_batches_to_jetstream() {
    let work = tempfile::tempdir().unwrap();
    let rt = runtime();
    let cluster = Cluster::start(work.path(), 1, &["gw-a"]);
    rt.block_on(cluster.create_stream(1));
    let mut gw = Gateway::start(&gateway_config("gw-a", "gw-a", &["dev-a"], &cluster));
    let addr = gw.addr("mqtt");
    rt.block_on(async {
        let mut dev = Device::connect(addr, "dev-a").await;
        for seq in 1..=60 {
            assert!(dev.punch(seq).await);
        }
    });
    let count = || rt.block_on(async { punch_ids(&stream_batches(&cluster).await).get("gw-a").map_or(0, Vec::len) });
    wait_until("60 punches in the stream", LIMIT, count, |n| *n >= 60);
    gw.kill9();
    gw.spawn();
    let addr = gw.addr("mqtt");
    rt.block_on(async {
        let mut dev = Device::connect(addr, "dev-a").await;
        for seq in 61..=100 {
            assert!(dev.punch(seq).await);
        }
    });
    let unique = || {
        rt.block_on(async {
            let ids = punch_ids(&stream_batches(&cluster).await);
            ids.get("gw-a").map_or(0, |v| v.iter().collect::<HashSet<_>>().len())
        })
    };
    wait_until("100 distinct punches in the stream", LIMIT, unique, |n| *n >= 100);
    let batches = rt.block_on(stream_batches(&cluster));
    let outbox_id = batches[0].2.outbox_id.clone();
    assert_eq!(outbox_id.len(), 16, "{outbox_id:?}");
    let mut last_seq = 0;
    for (subject, id, b) in &batches {
        assert_eq!(subject, "gatewayd.v1.batches.gw-a");
        assert_eq!(b.outbox_id, outbox_id, "one outbox across the restart");
        assert_eq!(id, &format!("gw-a:{outbox_id}:{}", b.batch_seq));
        assert!(b.batch_seq > last_seq, "batches in order, each once: {} after {last_seq}", b.batch_seq);
        last_seq = b.batch_seq;
    }
    let ids = punch_ids(&batches);
    let ids = &ids["gw-a"];
    assert_eq!(ids.len(), ids.iter().collect::<HashSet<_>>().len(), "no punch twice in the stream");
    assert_eq!(gw.metric("gatewayd_upstream_alarm"), Some(0.0));
    gw.stop();
}

/// Without the stream the gateway raises the alarm and says what is missing; once an operator creates the stream the
/// held batch goes out and the alarm clears.
#[test]
fn a_missing_stream_is_an_alarm_until_an_operator_creates_it() {
    let work = tempfile::tempdir().unwrap();
    let rt = runtime();
    let cluster = Cluster::start(work.path(), 1, &["gw-m"]);
    let mut gw = Gateway::start(&gateway_config("gw-m", "gw-m", &["dev-m"], &cluster));
    let addr = gw.addr("mqtt");
    rt.block_on(async {
        let mut dev = Device::connect(addr, "dev-m").await;
        assert!(dev.punch(1).await);
    });
    gw.wait_metric_at_least("gatewayd_upstream_alarm", 1.0, LIMIT);
    assert!(gw.metric("gatewayd_upstream_batches_total{result=\"no_stream\"}").unwrap_or(0.0) >= 1.0);
    rt.block_on(cluster.create_stream(1));
    let count = || rt.block_on(async { punch_ids(&stream_batches(&cluster).await).get("gw-m").map_or(0, Vec::len) });
    wait_until("the held punch in the stream", LIMIT, count, |n| *n >= 1);
    wait_until("the alarm cleared", LIMIT, || gw.metric("gatewayd_upstream_alarm"), |v| *v == Some(0.0));
    gw.stop();
    assert!(gw.stderr.contains("stream `GATEWAYD` does not exist"), "{}", gw.stderr);
}

/// The cluster refuses a gateway publishing on another gateway's subject (its certificate names another gateway than
/// its configuration): nothing lands in the stream and the gateway raises the alarm; a direct publish by one
/// gateway's identity on another's subject gets no acknowledgement either.
#[test]
fn a_gateway_cannot_publish_on_another_gateways_subject() {
    let work = tempfile::tempdir().unwrap();
    let rt = runtime();
    let cluster = Cluster::start(work.path(), 1, &["gw-1", "gw-2"]);
    rt.block_on(cluster.create_stream(1));
    // gw-2's configuration with gw-1's certificate: it publishes on gatewayd.v1.batches.gw-2 as gw-1.
    let mut gw = Gateway::start(&gateway_config("gw-2", "gw-1", &["dev-x"], &cluster));
    let addr = gw.addr("mqtt");
    rt.block_on(async {
        let mut dev = Device::connect(addr, "dev-x").await;
        assert!(dev.punch(1).await);
    });
    gw.wait_metric_at_least("gatewayd_upstream_alarm", 1.0, LIMIT);
    assert!(gw.metric("gatewayd_upstream_batches_total{result=\"denied\"}").unwrap_or(0.0) >= 1.0);
    rt.block_on(async {
        let js = async_nats::jetstream::new(cluster.connect("gw-1").await);
        let mut js = js;
        js.set_timeout(Duration::from_secs(2));
        let r = match js.publish("gatewayd.v1.batches.gw-2", "forged".into()).await {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(r.is_err(), "a publish on another gateway's subject must not be acknowledged");
        let own = js.publish("gatewayd.v1.batches.gw-1", UploadBatch::default().encode_to_vec().into()).await;
        own.unwrap().await.expect("its own subject is allowed");
    });
    let batches = rt.block_on(stream_batches(&cluster));
    assert!(batches.iter().all(|(s, _, _)| s == "gatewayd.v1.batches.gw-1"), "only gw-1's own subject got in");
    gw.stop();
    assert!(gw.stderr.contains("refuses the publish"), "{}", gw.stderr);
}

/// A receiver asks a gateway for a day again over NATS (`gatewayd.v1.resend.{gateway}`): the gateway answers and
/// publishes that day's punches again.
#[test]
fn a_gateway_answers_resend_requests_over_nats() {
    let work = tempfile::tempdir().unwrap();
    let rt = runtime();
    let cluster = Cluster::start(work.path(), 1, &["gw-r"]);
    rt.block_on(cluster.create_stream(1));
    let mut gw = Gateway::start(&gateway_config("gw-r", "gw-r", &["dev-r"], &cluster));
    let addr = gw.addr("mqtt");
    rt.block_on(async {
        let mut dev = Device::connect(addr, "dev-r").await;
        for seq in 1..=5 {
            assert!(dev.punch(seq).await);
        }
    });
    let count = || rt.block_on(async { punch_ids(&stream_batches(&cluster).await).get("gw-r").map_or(0, Vec::len) });
    wait_until("5 punches in the stream", LIMIT, count, |n| *n >= 5);
    let reply = rt.block_on(async {
        let loader = cluster.connect("loader").await;
        let req = ResendRequest { gateway_id: "gw-r".into(), dates: vec!["2026-11-22".into()] };
        let bad = ResendRequest { gateway_id: "gw-other".into(), dates: vec!["2026-11-22".into()] };
        let answer = loader.request("gatewayd.v1.resend.gw-r", bad.encode_to_vec().into());
        let answer = tokio::time::timeout(LIMIT, answer).await.unwrap().unwrap();
        let refused = ResendReply::decode(answer.payload.as_ref()).unwrap();
        assert!(!refused.accepted && refused.error.contains("gw-other"), "{refused:?}");
        let answer = loader.request("gatewayd.v1.resend.gw-r", req.encode_to_vec().into());
        ResendReply::decode(tokio::time::timeout(LIMIT, answer).await.unwrap().unwrap().payload.as_ref()).unwrap()
    });
    assert!(reply.accepted, "{reply:?}");
    wait_until("the day's 5 punches sent again", LIMIT, count, |n| *n >= 10);
    gw.stop();
}
