//! The simulated devices: N real MQTT clients (rumqttc, QoS 1) publishing SPEC 3.1 punch payloads.
//!
//! A [`Fleet`] connects every device first (CONNECT, and the SUBSCRIBE to its ack topic when acks are awaited), so
//! connection set-up is outside the measurement; [`Fleet::run`] then starts them all at the same instant.
//!
//! Two pacing modes:
//! - **rate** (`rate > 0`, open loop): the devices publish on a fixed schedule that adds up to `rate` punches/s, whether
//!   or not the earlier ones were answered (a shift change does not wait for the gateway);
//! - **saturate** (`rate = 0`, closed loop): every device keeps `window` punches unanswered at all times, so the figure
//!   is the most the system under test sustains.
//!
//! Two meanings of "answered": the gateway's durable ack (`gw/v1/dev/{id}/ack` with `stored`, published after the store
//! flushed the punch), or the broker's PUBACK (for a plain broker, which has no other answer). Both latencies are
//! measured from the moment a punch is handed to the client (`try_publish`), so client queueing is included alike.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};

/// What answers a punch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The gateway's `stored` ack on `gw/v1/dev/{id}/ack` (after the store flushed it).
    DurableAck,
    /// The broker's PUBACK.
    PubAck,
}

/// The workload.
#[derive(Clone, Debug)]
pub struct Spec {
    pub broker: SocketAddr,
    pub devices: usize,
    /// Punches per second over all devices; 0 = saturate with `window` unanswered punches per device.
    pub rate: u64,
    pub window: usize,
    pub seconds: u64,
    pub prefix: String,
    pub answer: Answer,
    /// How long to wait for the last answers after publishing stopped.
    pub drain: Duration,
}

pub fn device_id(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:03}")
}

pub fn device_secret(id: &str) -> String {
    format!("{id}-secret")
}

/// What one device saw.
#[derive(Default)]
struct Tally {
    published: u64,
    stored: u64,
    rejected: u64,
    /// publish -> durable ack, microseconds.
    ack_us: Vec<u32>,
    /// publish -> PUBACK, microseconds.
    puback_us: Vec<u32>,
    last_answer: Option<Instant>,
}

/// What the fleet saw.
#[derive(Debug, Default)]
pub struct Report {
    pub published: u64,
    /// Punches answered (durable `stored` acks, or PUBACKs for [`Answer::PubAck`]).
    pub answered: u64,
    pub rejected: u64,
    pub failed_devices: usize,
    pub errors: Vec<String>,
    /// Sorted, microseconds.
    pub ack_us: Vec<u32>,
    /// Sorted, microseconds.
    pub puback_us: Vec<u32>,
    /// When publishing started.
    pub started: Option<Instant>,
    /// When the last answer arrived.
    pub last_answer: Option<Instant>,
}

impl Report {
    /// Answered punches per second from the start to the last answer.
    pub fn answered_per_sec(&self) -> f64 {
        match (self.started, self.last_answer) {
            (Some(s), Some(l)) if l > s => self.answered as f64 / (l - s).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// The `p` quantile (0..=1) of sorted microsecond samples, in milliseconds.
pub fn quantile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

/// "p50 1.23 ms, p99 4.56 ms, p999 7.89 ms, max 9.99 ms"
pub fn latency_line(sorted: &[u32]) -> String {
    if sorted.is_empty() {
        return "no samples".to_owned();
    }
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
        quantile_ms(sorted, 0.50),
        quantile_ms(sorted, 0.99),
        quantile_ms(sorted, 0.999),
        quantile_ms(sorted, 1.0)
    )
}

/// Connected devices waiting for the start signal.
pub struct Fleet {
    spec: Arc<Spec>,
    start: watch::Sender<Option<Instant>>,
    tasks: Vec<tokio::task::JoinHandle<Result<Tally, String>>>,
}

impl Fleet {
    /// Connects every device (and subscribes to its ack topic when durable acks are awaited). Fails with the first
    /// device that cannot connect within `limit`.
    pub async fn connect(spec: Spec, limit: Duration) -> Result<Fleet, String> {
        if spec.devices == 0 || spec.seconds == 0 || (spec.rate == 0 && spec.window == 0) {
            return Err("devices, seconds and rate (or window) must be > 0".into());
        }
        let spec = Arc::new(spec);
        let (start, start_rx) = watch::channel(None);
        let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(spec.devices);
        let tasks: Vec<_> = (0..spec.devices)
            .map(|i| tokio::spawn(run_device(spec.clone(), i, ready_tx.clone(), start_rx.clone())))
            .collect();
        drop(ready_tx);
        let deadline = tokio::time::Instant::now() + limit;
        for n in 0..spec.devices {
            match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) => return Err("a device task ended before connecting".into()),
                Err(_) => return Err(format!("only {n} of {} devices connected within {limit:?}", spec.devices)),
            }
        }
        Ok(Fleet { spec, start, tasks })
    }

    /// Starts every device now and waits until each has its answers (or gave up after the drain time).
    pub async fn run(self) -> Report {
        let started = Instant::now();
        let _ = self.start.send(Some(started));
        let mut report = Report { started: Some(started), ..Report::default() };
        for t in self.tasks {
            let tally = match t.await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    report.failed_devices += 1;
                    report.errors.push(e);
                    continue;
                }
                Err(e) => {
                    report.failed_devices += 1;
                    report.errors.push(format!("device task: {e}"));
                    continue;
                }
            };
            report.published += tally.published;
            report.answered += match self.spec.answer {
                Answer::DurableAck => tally.stored,
                Answer::PubAck => tally.puback_us.len() as u64,
            };
            report.rejected += tally.rejected;
            report.ack_us.extend(tally.ack_us);
            report.puback_us.extend(tally.puback_us);
            report.last_answer = report.last_answer.max(tally.last_answer);
        }
        report.ack_us.sort_unstable();
        report.puback_us.sort_unstable();
        report
    }
}

#[derive(serde::Deserialize)]
struct AckJson<'a> {
    seq: Option<u64>,
    #[serde(borrow)]
    status: &'a str,
}

fn micros(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX)
}

async fn run_device(
    spec: Arc<Spec>,
    i: usize,
    ready: mpsc::Sender<Result<(), String>>,
    mut start: watch::Receiver<Option<Instant>>,
) -> Result<Tally, String> {
    let id = device_id(&spec.prefix, i);
    let connected = connect_device(&spec, &id).await;
    let (client, mut events) = match connected {
        Ok(c) => {
            let _ = ready.send(Ok(())).await;
            c
        }
        Err(e) => {
            let _ = ready.send(Err(e.clone())).await;
            return Err(e);
        }
    };
    drop(ready);
    // Keep the connection serviced (pings) while the other devices connect.
    let started = loop {
        if let Some(t) = *start.borrow_and_update() {
            break t;
        }
        tokio::select! {
            changed = start.changed() => if changed.is_err() { return Err(format!("{id}: the fleet was dropped")) },
            event = events.poll() => { event.map_err(|e| format!("{id}: {e}"))?; }
        }
    };

    let topic = format!("gw/v1/dev/{id}/punch");
    let window = Duration::from_secs(spec.seconds);
    let publish_until = started + window;
    let deadline = publish_until + spec.drain;
    // Open loop: this device's share of the schedule.
    let per_device = (spec.rate * spec.seconds) / spec.devices as u64;
    let interval = if per_device > 0 { window.as_secs_f64() / per_device as f64 } else { f64::INFINITY };
    let awaits_acks = spec.answer == Answer::DurableAck;

    let mut tally = Tally::default();
    // seq -> when published, until its durable ack.
    let mut unacked: HashMap<u64, Instant> = HashMap::new();
    // Publishes handed to the client but not yet given a packet id, in order; then packet id -> when published.
    let mut unnumbered: VecDeque<Instant> = VecDeque::new();
    let mut by_pkid: HashMap<u16, Instant> = HashMap::new();
    let mut next_seq = 1u64;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let now = Instant::now();
        let answered = if awaits_acks { tally.stored + tally.rejected } else { tally.puback_us.len() as u64 };
        // Open loop: until the schedule is done (late only when the client cannot keep up); closed loop: until the
        // window ends.
        let publishing = if spec.rate > 0 { next_seq <= per_device } else { now < publish_until };
        if !publishing && answered >= tally.published {
            break;
        }
        if now >= deadline {
            break;
        }
        // Publish what is due.
        if publishing {
            let due = if spec.rate > 0 {
                (((now - started).as_secs_f64() / interval) as u64 + 1).min(per_device)
            } else {
                answered + spec.window as u64
            };
            while next_seq <= due {
                let payload = format!(
                    r#"{{"seq":{next_seq},"time":"{}","method":"face","employee":"E{}"}}"#,
                    jiff::Timestamp::now(),
                    (next_seq + i as u64 * 7) % 500
                );
                // Open loop: latency counts from when the punch was due, so a client held back by the system under
                // test does not hide the wait (no coordinated omission).
                let at = if spec.rate > 0 {
                    started + Duration::from_secs_f64((next_seq - 1) as f64 * interval)
                } else {
                    Instant::now()
                };
                if client.try_publish(&topic, QoS::AtLeastOnce, false, payload).is_err() {
                    break; // the client's request queue is full: try again on the next tick
                }
                if awaits_acks {
                    unacked.insert(next_seq, at);
                }
                unnumbered.push_back(at);
                tally.published += 1;
                next_seq += 1;
            }
        }
        tokio::select! {
            _ = tick.tick() => {}
            event = events.poll() => match event.map_err(|e| format!("{id}: {e}"))? {
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    if let Some(at) = unnumbered.pop_front() {
                        by_pkid.insert(pkid, at);
                    }
                }
                Event::Incoming(Packet::PubAck(p)) => {
                    if let Some(at) = by_pkid.remove(&p.pkid) {
                        tally.puback_us.push(micros(at));
                        if !awaits_acks {
                            tally.last_answer = Some(Instant::now());
                        }
                    }
                }
                Event::Incoming(Packet::Publish(p)) if awaits_acks => {
                    let Ok(ack) = serde_json::from_slice::<AckJson<'_>>(&p.payload) else { continue };
                    let Some(at) = ack.seq.and_then(|s| unacked.remove(&s)) else { continue };
                    if ack.status == "stored" {
                        tally.stored += 1;
                        tally.ack_us.push(micros(at));
                        tally.last_answer = Some(Instant::now());
                    } else {
                        tally.rejected += 1;
                    }
                }
                _ => {}
            }
        }
    }
    let _ = client.try_disconnect();
    Ok(tally)
}

async fn connect_device(spec: &Spec, id: &str) -> Result<(AsyncClient, rumqttc::EventLoop), String> {
    let mut o = MqttOptions::new(id, spec.broker.ip().to_string(), spec.broker.port());
    o.set_credentials(id, device_secret(id));
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(u16::try_from(spec.window.clamp(100, 1000)).unwrap_or(1000));
    let (client, mut events) = AsyncClient::new(o, 4096);
    events.network_options.set_connection_timeout(30);
    loop {
        match events.poll().await.map_err(|e| format!("{id}: {e}"))? {
            Event::Incoming(Packet::ConnAck(_)) => break,
            _ => continue,
        }
    }
    if spec.answer == Answer::DurableAck {
        client
            .subscribe(format!("gw/v1/dev/{id}/ack"), QoS::AtLeastOnce)
            .await
            .map_err(|e| format!("{id}: subscribe: {e}"))?;
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.map_err(|e| format!("{id}: {e}"))? {
                break;
            }
        }
    }
    Ok((client, events))
}
