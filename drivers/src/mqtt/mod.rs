//! MQTT face terminals (SPEC 3.1) through the embedded rumqttd broker.
//!
//! ```text
//! device ──TCP/TLS──> front (auth, topic rules) ──loopback──> rumqttd (own thread) ──local link──> ingest ──> PunchSink
//!    ^                  |                                                                 |
//!    └── gw/v1/dev/{id}/ack (QoS 0) <── front connection <── AckRoutes <──── outcome ─────┘
//! ```
//!
//! - [`front`]: the listeners on `[mqtt].listen` (and `tls_listen`). It authenticates every CONNECT against the
//!   configured devices, rewrites it with the per-process broker token, and checks every PUBLISH/SUBSCRIBE topic against
//!   the authenticated device id before the bytes reach the broker. rumqttd 0.20 offers no hook that ties a publish to
//!   its publisher (its auth handler sees only the CONNECT, and a local link's `Forward` does not say who published), so
//!   this is where "a device must not report punches as another device" is enforced.
//! - rumqttd listens only on a loopback port chosen at start and accepts only CONNECTs carrying the token, so a local
//!   process cannot bypass the front. It runs on its own OS thread: rumqttd has no shutdown path (see
//!   `docs/architecture.md`).
//! - The ingest task reads device publishes from a local link (`Broker::link`), parses them ([`payload`]), submits them
//!   to the [`PunchSink`] in batches and answers each on `gw/v1/dev/{id}/ack` only after the sink says the punch is
//!   durable. The broker's PUBACK means only "reached the broker". Acks do not go through the broker: the front
//!   answers subscriptions itself and writes each ack straight to the device's connection ([`front::AckRoutes`]),
//!   which keeps rumqttd's per-filter commit logs (about 1 MB per subscribed device) out of the gateway.
//! - Presence: the front marks a device online when the broker accepted its CONNECT and offline when its last connection
//!   ends; messages on `gw/v1/dev/{id}/status` (including the last will) are recorded as the device's status detail.

pub mod auth;
pub mod front;
pub mod payload;
pub mod tls;
pub mod window;
pub mod wire;

use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::Notification;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::DeviceConfig;
use crate::sink::{DevicePunch, Outcome, PunchSink, Rejection};
use crate::status::StatusBoard;
use crate::telemetry::DriverMetrics;
pub use auth::Credentials;
use payload::Ack;

/// The driver label of MQTT devices.
pub const DRIVER: &str = "mqtt";
/// Every device topic starts with this, then the device id.
pub const TOPIC_PREFIX: &str = "gw/v1/dev/";
/// Largest MQTT frame the front passes on (bounds memory per connection). Payloads up to this size but above
/// `max_payload_bytes` are answered `rejected`; larger frames close the connection.
pub const FRAME_LIMIT: usize = (1 << 20) + 1024;
/// Punches read from the broker but not yet submitted, before the link stops reading (backpressure into the broker).
const JOB_QUEUE: usize = 8192;
/// Most punches submitted in one `submit_many`.
const SUBMIT_BATCH: usize = 1024;
/// Most `submit_many` calls waiting for the store at once.
const SUBMITS_IN_FLIGHT: usize = 64;
/// The local link's client id: contains `:`, which device ids cannot, so no device can take over the session.
const LINK_CLIENT_ID: &str = "gatewayd:ingest";

/// Why the MQTT service could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("cannot listen on {addr} (mqtt{what}): {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mqtt tls: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("embedded mqtt broker: {0}")]
    Broker(String),
}

/// The TLS listener settings (`[mqtt].tls_listen` and `[mqtt].tls`).
#[derive(Clone, Debug)]
pub struct MqttTls {
    pub listen: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// What the MQTT service needs from the configuration.
#[derive(Clone, Debug)]
pub struct MqttSettings {
    pub listen: String,
    pub tls: Option<MqttTls>,
    /// Largest punch payload accepted (`[mqtt].max_payload_bytes`).
    pub max_payload_bytes: usize,
}

/// Where punches go, where status and metrics are reported, when to stop.
#[derive(Clone, Debug)]
pub struct MqttContext {
    /// The sink (labelled for [`DRIVER`] by `start`).
    pub sink: PunchSink,
    pub status: StatusBoard,
    pub metrics: DriverMetrics,
    /// The site time zone: punch times without an offset are read in it.
    pub timezone: jiff::tz::TimeZone,
    /// Stops the front (listeners and device connections) and the ingest task.
    pub cancel: CancellationToken,
    /// Tracks every task `start` spawns, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

/// The running MQTT service.
#[derive(Clone, Debug)]
pub struct MqttService {
    /// The bound plain listener.
    pub addr: SocketAddr,
    /// The bound TLS listener, when configured.
    pub tls_addr: Option<SocketAddr>,
    credentials: Credentials,
    /// The TLS listener's certificate, key and client CA in force (replaced by [`MqttService::reload_tls`]).
    tls: Option<tls::SharedServerConfig>,
}

impl MqttService {
    /// Applies a reloaded device list: new devices may connect at once, removed ones (or changed secrets) are
    /// disconnected.
    pub fn update_devices(&self, devices: &[DeviceConfig]) {
        let (added, removed) = self.credentials.update(devices);
        if !added.is_empty() || !removed.is_empty() {
            tracing::info!(?added, ?removed, "mqtt devices reloaded");
        }
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Reads the TLS listener's certificate, key and client CA again (SIGHUP): new connections use them, connections
    /// already up keep theirs. A file that does not load leaves the ones in force and is returned as the error. `None`
    /// when no TLS listener runs (adding or moving the TLS listener needs a restart).
    pub fn reload_tls(&self, cert: &Path, key: &Path, client_ca: Option<&Path>) -> Option<Result<(), tls::TlsError>> {
        let shared = self.tls.as_ref()?;
        Some(tls::server_config(cert, key, client_ca).map(|config| shared.replace(config)))
    }
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, MqttError> {
    TcpListener::bind(addr).await.map_err(|source| MqttError::Bind { what, addr: addr.to_owned(), source })
}

fn local_addr(what: &'static str, l: &TcpListener, addr: &str) -> Result<SocketAddr, MqttError> {
    l.local_addr().map_err(|source| MqttError::Bind { what, addr: addr.to_owned(), source })
}

/// Binds the listeners, starts the broker thread and the ingest task. Returns once devices can connect.
pub async fn start(
    settings: MqttSettings,
    devices: &[DeviceConfig],
    ctx: MqttContext,
) -> Result<MqttService, MqttError> {
    let credentials = Credentials::new(devices);
    for d in devices.iter().filter(|d| d.driver == crate::config::DriverKind::Mqtt) {
        ctx.status.register(&d.id, DRIVER);
    }
    let plain = bind("", &settings.listen).await?;
    let addr = local_addr("", &plain, &settings.listen)?;
    let tls = match &settings.tls {
        Some(t) => {
            let acceptor = tls::SharedServerConfig::new(tls::server_config(&t.cert, &t.key, t.client_ca.as_deref())?);
            let l = bind(" tls", &t.listen).await?;
            let a = local_addr(" tls", &l, &t.listen)?;
            Some((l, a, acceptor))
        }
        None => None,
    };

    let token = random_token();
    let device_count = devices.iter().filter(|d| d.driver == crate::config::DriverKind::Mqtt).count();
    let creds_for_broker = credentials.clone();
    let token_for_broker = token.clone();
    let (broker_addr, link_tx, link_rx) =
        tokio::task::spawn_blocking(move || start_broker(token_for_broker, creds_for_broker, device_count))
            .await
            .map_err(|e| MqttError::Broker(e.to_string()))??;

    let windows = window::Windows::default();
    let front = Arc::new(front::Front::new(
        credentials.clone(),
        broker_addr,
        token,
        ctx.status.clone(),
        ctx.metrics.clone(),
        FRAME_LIMIT,
        windows.clone(),
    ));
    let sink = ctx.sink.for_driver(DRIVER);
    spawn_ingest(link_tx, link_rx, sink, &ctx, settings.max_payload_bytes, windows, front.acks.clone());
    ctx.tasks.spawn(front::serve_plain(plain, front.clone(), ctx.cancel.clone(), ctx.tasks.clone()));
    let (tls_addr, tls) = match tls {
        Some((l, a, acceptor)) => {
            ctx.tasks.spawn(front::serve_tls(l, acceptor.clone(), front, ctx.cancel.clone(), ctx.tasks.clone()));
            (Some(a), Some(acceptor))
        }
        None => (None, None),
    };
    tracing::info!(%addr, ?tls_addr, broker = %broker_addr, "mqtt listening");
    Ok(MqttService { addr, tls_addr, credentials, tls })
}

/// 32 random bytes in hex: the password only the front knows for the broker's internal listener.
fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The most connections the embedded broker takes: one per connected device (the front's), and the gateway's link.
const MAX_CONNECTIONS: usize = 10_000;
/// The segment size of the broker's commit logs.
const PUNCH_LOG_SEGMENT: usize = 256 * 1024;

/// How many segments the commit log of `gw/v1/dev/+/punch` keeps. rumqttd keeps a filter's publishes in memory and frees
/// a segment only when the log is full (the oldest is dropped, read or not), so the log grows to its full size and
/// stays there: this is most of the broker's memory. It must cover how far the ingest link can fall behind, which the
/// front's windows bound to [`window::WINDOW`] punches per device: sized for the MQTT devices configured at start (at
/// least 128) at 384 bytes per punch message, about twice the usual. Should it still overflow (far more devices added
/// by reload, very large payloads), the punches dropped were never acknowledged as durable, and their devices re-send
/// them.
fn punch_log_segments(devices: usize) -> usize {
    let bytes = devices.max(128) * window::WINDOW as usize * 384;
    bytes.div_ceil(PUNCH_LOG_SEGMENT).max(2)
}

/// How many loopback ports [`start_broker`] tries before it gives up.
const BROKER_ATTEMPTS: u32 = 5;
/// The identity of the start-up probe on the internal listener (not a device id: device ids cannot contain ':').
const PROBE_ID: &str = "gatewayd:probe";

/// Starts rumqttd on its own thread with one internal loopback listener, and opens the ingest link.
///
/// rumqttd binds its listener itself and cannot report the address, so a free loopback port is picked first (bind to
/// port 0 and release). Another program can take the port in between (the kernel also hands such ports out for
/// outgoing connections). So the broker counts as started only when its listener accepts an MQTT CONNECT carrying the
/// internal token, which no other program knows; otherwise the attempt is abandoned and another port is tried, up to
/// [`BROKER_ATTEMPTS`] times. An abandoned attempt leaves rumqttd's router thread behind (rumqttd has no shutdown).
fn start_broker(
    token: String,
    credentials: Credentials,
    devices: usize,
) -> Result<(SocketAddr, LinkTx, LinkRx), MqttError> {
    let mut attempt = 1;
    loop {
        match start_broker_once(token.clone(), credentials.clone(), devices) {
            Ok(started) => return Ok(started),
            Err((internal, reason)) if attempt < BROKER_ATTEMPTS => {
                tracing::warn!(%internal, reason, attempt, "embedded mqtt broker did not start; trying another port");
            }
            Err((internal, reason)) => {
                return Err(MqttError::Broker(format!("failed to start on {internal}: {reason}")));
            }
        }
        attempt += 1;
    }
}

/// One attempt of [`start_broker`]: the error names the address tried and why it failed.
fn start_broker_once(
    token: String,
    credentials: Credentials,
    devices: usize,
) -> Result<(SocketAddr, LinkTx, LinkRx), (String, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| ("127.0.0.1:0".to_owned(), format!("cannot pick a loopback port: {e}")))?
        .port();
    let internal = SocketAddr::from(([127, 0, 0, 1], port));
    let failed = |reason: String| (internal.to_string(), reason);
    let probe_token = token.clone();
    let mut connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: FRAME_LIMIT,
        max_inflight_count: 256,
        auth: None,
        external_auth: None,
        dynamic_filters: false,
    };
    connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
        let ok = client_id == user
            && bool::from(pass.as_bytes().ct_eq(token.as_bytes()))
            && (credentials.knows(&user) || user == PROBE_ID);
        async move { ok }
    });
    let server = rumqttd::ServerSettings {
        name: "gatewayd-internal".into(),
        listen: internal,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let punch_log = punch_log_segments(devices);
    let router = rumqttd::RouterConfig {
        // rumqttd reserves its connection tables for this many connections up front.
        max_connections: MAX_CONNECTIONS,
        max_outgoing_packet_count: 1024,
        // The commit logs of the two filters the ingest link reads (see `punch_log_segments`); the status log uses
        // the same sizes but fills only as fast as devices report status.
        max_segment_size: PUNCH_LOG_SEGMENT,
        max_segment_count: punch_log,
        custom_segment: None,
        // Filters exist from the start, so the link reads every device's punches and status.
        initialized_filters: Some(vec![format!("{TOPIC_PREFIX}+/punch"), format!("{TOPIC_PREFIX}+/status")]),
        shared_subscriptions_strategy: Default::default(),
    };
    let config = rumqttd::Config {
        id: 0,
        router,
        v4: Some([("internal".to_owned(), server)].into_iter().collect()),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    let (mut link_tx, link_rx) = broker.link(LINK_CLIENT_ID).map_err(|e| failed(e.to_string()))?;
    for leaf in ["punch", "status"] {
        link_tx.subscribe(format!("{TOPIC_PREFIX}+/{leaf}")).map_err(|e| failed(format!("subscribe: {e}")))?;
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel::<String>();
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            // Returns only when every rumqttd server thread has ended (for example, its bind failed).
            let outcome = match broker.start() {
                Ok(()) => "its listener stopped".to_owned(),
                Err(e) => e.to_string(),
            };
            tracing::error!(reason = %outcome, "embedded mqtt broker stopped: mqtt devices cannot connect");
            let _ = done_tx.send(outcome);
        })
        .map_err(|e| failed(format!("cannot start the broker thread: {e}")))?;

    // Wait (bounded) until the internal listener answers as this broker.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(reason) = done_rx.try_recv() {
            return Err(failed(reason));
        }
        match probe(internal, &probe_token) {
            Probe::Ours => break,
            Probe::NotListening => {}
            Probe::Stranger(what) => return Err(failed(format!("another program listens there ({what})"))),
        }
        if Instant::now() > deadline {
            return Err(failed("the internal listener did not come up".to_owned()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((internal, link_tx, link_rx))
}

/// What answers on the internal listener's address.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// The broker, accepting the internal token.
    Ours,
    /// Nothing yet (connection refused).
    NotListening,
    /// Something that does not accept the token, or does not speak MQTT.
    Stranger(String),
}

/// Connects to `addr`, sends an MQTT CONNECT as [`PROBE_ID`] with `token`, and reads the answer; a clean DISCONNECT
/// follows an accepted one.
fn probe(addr: SocketAddr, token: &str) -> Probe {
    use std::io::{Read, Write};
    let Ok(mut stream) = StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return Probe::NotListening;
    };
    let mut answer = [0u8; 4];
    let exchanged = wire::login(PROBE_ID, token, 10).map_err(std::io::Error::other).and_then(|connect| {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(&connect)?;
        stream.read_exact(&mut answer)
    });
    match exchanged.map(|()| wire::connack_code(&answer)) {
        Ok(Some(0)) => {
            let _ = stream.write_all(&wire::disconnect());
            Probe::Ours
        }
        Ok(Some(code)) => Probe::Stranger(format!("CONNACK {code}")),
        Ok(None) => Probe::Stranger(format!("answered {answer:02x?}")),
        Err(e) => Probe::Stranger(e.to_string()),
    }
}

/// One parsed punch waiting for the store.
struct Job {
    device: String,
    seq: u64,
    punch: DevicePunch,
}

fn spawn_ingest(
    link_tx: LinkTx,
    link_rx: LinkRx,
    sink: PunchSink,
    ctx: &MqttContext,
    max_payload: usize,
    windows: window::Windows,
    acks: Arc<front::AckRoutes>,
) {
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(JOB_QUEUE);
    ctx.tasks.spawn(read_link(
        link_tx,
        link_rx,
        jobs_tx,
        acks.clone(),
        sink.clone(),
        ctx.clone(),
        max_payload,
        windows.clone(),
    ));
    ctx.tasks.spawn(submit_jobs(jobs_rx, acks, sink, ctx.tasks.clone(), windows));
}

/// Reads device publishes from the broker and turns them into jobs (or rejection acks). Holds the link's sending half
/// (its subscriptions live as long as it does).
#[allow(clippy::too_many_arguments)]
async fn read_link(
    _link_tx: LinkTx,
    mut link_rx: LinkRx,
    jobs: mpsc::Sender<Job>,
    acks: Arc<front::AckRoutes>,
    sink: PunchSink,
    ctx: MqttContext,
    max_payload: usize,
    windows: window::Windows,
) {
    loop {
        let next = tokio::select! {
            n = link_rx.next() => n,
            _ = ctx.cancel.cancelled() => return,
        };
        let forward = match next {
            Ok(Some(Notification::Forward(f))) => f,
            // The router paused this link because its buffer filled up; it resumes once told the link is ready.
            Ok(Some(Notification::Unschedule)) => {
                if let Err(e) = link_rx.wake().await {
                    tracing::error!(error = %e, "mqtt broker link lost: mqtt punches cannot be received until restart");
                    return;
                }
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::error!(error = %e, "mqtt broker link lost: mqtt punches cannot be received until restart");
                return;
            }
        };
        let Ok(topic) = std::str::from_utf8(&forward.publish.topic) else { continue };
        let Some((device, leaf)) = payload::split_topic(topic) else { continue };
        ctx.status.seen(device, DRIVER);
        match leaf {
            "punch" => {
                let now = jiff::Timestamp::now().as_millisecond();
                match payload::parse_punch(device, &forward.publish.payload, &ctx.timezone, now, max_payload) {
                    Ok(punch) => {
                        let seq = punch.device_seq.unwrap_or_default();
                        let job = Job { device: device.to_owned(), seq, punch };
                        if jobs.send(job).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        windows.answered(device, 1);
                        sink.count_unparsed(device, e.label);
                        tracing::debug!(device, reason = %e.reason, "mqtt punch rejected");
                        acks.deliver(device, Ack::rejected(e.seq, e.reason).to_json());
                    }
                }
            }
            "status" => {
                let text: String = String::from_utf8_lossy(&forward.publish.payload).chars().take(64).collect();
                ctx.status.detail(device, DRIVER, format!("status: {text}"));
            }
            _ => {}
        }
    }
}

/// Submits queued punches in batches and answers each once the store decided.
///
/// Transient failures (store full, store failed, shutting down) get no ack: the device re-sends until it sees one
/// (SPEC 3.1), whereas a `rejected` ack could make it discard a punch the gateway would store a minute later.
async fn submit_jobs(
    mut jobs: mpsc::Receiver<Job>,
    acks: Arc<front::AckRoutes>,
    sink: PunchSink,
    tasks: TaskTracker,
    windows: window::Windows,
) {
    let in_flight = Arc::new(Semaphore::new(SUBMITS_IN_FLIGHT));
    let mut batch = Vec::with_capacity(SUBMIT_BATCH);
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        if jobs.recv_many(&mut batch, SUBMIT_BATCH).await == 0 {
            return;
        }
        let taken: Vec<Job> = std::mem::take(&mut batch);
        let sink = sink.clone();
        let acks = acks.clone();
        let windows = windows.clone();
        tasks.spawn(async move {
            let (meta, punches): (Vec<(String, u64)>, Vec<DevicePunch>) =
                taken.into_iter().map(|j| ((j.device, j.seq), j.punch)).unzip();
            let outcomes = sink.submit_many(punches).await;
            drop(permit);
            answer_windows(&windows, &meta);
            for ((device, seq), outcome) in meta.into_iter().zip(outcomes) {
                let ack = match outcome {
                    Outcome::Stored { .. } => Ack::stored(seq),
                    Outcome::Rejected(r @ Rejection::Invalid(_)) => Ack::rejected(Some(seq), r.to_string()),
                    Outcome::Rejected(r) => {
                        tracing::warn!(device = %device, seq, reason = %r, "mqtt punch not stored; the device will re-send");
                        continue;
                    }
                };
                acks.deliver(&device, ack.to_json());
            }
        });
    }
}

/// Tells the front's windows how many punches of each device were answered (consecutive punches of one device counted
/// together).
fn answer_windows(windows: &window::Windows, meta: &[(String, u64)]) {
    let mut run: Option<(&str, u64)> = None;
    for (device, _) in meta {
        match &mut run {
            Some((d, n)) if *d == device.as_str() => *n += 1,
            _ => {
                if let Some((d, n)) = run {
                    windows.answered(d, n);
                }
                run = Some((device.as_str(), 1));
            }
        }
    }
    if let Some((d, n)) = run {
        windows.answered(d, n);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// A listener on a free loopback port that answers every connection with `reply` after reading a little.
    fn answering(reply: &'static [u8]) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                let mut buf = [0u8; 16];
                let _ = s.read(&mut buf);
                let _ = s.write_all(reply);
            }
        });
        addr
    }

    #[test]
    fn the_probe_tells_the_broker_from_strangers() {
        // Nothing listening.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert_eq!(probe(free, "t"), Probe::NotListening);
        // An MQTT broker that does not know the token, a program that is not MQTT, one that closes at once.
        assert_eq!(probe(answering(&[0x20, 2, 0, 5]), "t"), Probe::Stranger("CONNACK 5".into()));
        assert!(
            matches!(probe(answering(b"HTTP/1.1 400 Bad Request\r\n"), "t"), Probe::Stranger(w) if w.starts_with("answered"))
        );
        assert!(matches!(probe(answering(b""), "t"), Probe::Stranger(_)));

        // The broker itself accepts the token, and the probe is not a device: a device connection with the token still
        // needs a configured device id.
        let token = random_token();
        let credentials = Credentials::default();
        let (addr, _tx, _rx) = start_broker(token.clone(), credentials, 0).unwrap();
        assert_eq!(probe(addr, &token), Probe::Ours);
        // rumqttd closes a connection it refuses without a CONNACK.
        assert!(matches!(probe(addr, "wrong"), Probe::Stranger(_)));
    }
}
