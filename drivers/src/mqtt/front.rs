//! The front: the listeners devices connect to. Each device connection is authenticated here and then spliced to the
//! embedded broker's internal listener, with every packet the device sends checked on the way.
//!
//! Per connection:
//! 1. read the CONNECT (within [`CONNECT_TIMEOUT`]); refuse MQTT 5 (`CONNACK 1`), a bad or missing password or an
//!    unknown device (`CONNACK 4`), a certificate/username mismatch or a last will outside the device's status topic
//!    (`CONNACK 5`);
//! 2. rewrite it: client id and username become the device id, the password becomes the per-process broker token;
//! 3. open a connection to the broker, forward the rewritten CONNECT and the broker's CONNACK;
//! 4. pump bytes both ways. Device to broker, each frame is parsed far enough to check it: a PUBLISH must go to
//!    `gw/v1/dev/{own id}/punch` or `/status`, a SUBSCRIBE may only name filters under `gw/v1/dev/{own id}/`. Anything
//!    else closes the connection (MQTT 3.1.1 §3.3.5 lets a server close instead of acknowledging an unauthorised
//!    PUBLISH) and is counted as `topic_not_allowed`.
//!
//! Subscriptions end at the front: SUBSCRIBE and UNSUBSCRIBE are answered here (SUBACK granting at most QoS 1,
//! UNSUBACK) and never reach the broker, and the gateway's acks come to the connection through [`AckRoutes`], written
//! to the device as QoS 0 PUBLISHes on `gw/v1/dev/{id}/ack` when one of its filters matches that topic. The only thing
//! a device can subscribe to is under its own prefix, and the gateway publishes nothing there but acks, so nothing is
//! lost by this; what is gained is memory: rumqttd keeps an in-memory commit log per subscription filter, preallocated
//! for 1,024 messages (about 240 KB) per segment and never shrunk, which made every device's ack subscription cost
//! about 1 MB. An ack the device misses (not subscribed, disconnected, or too slow to read a window of acks) is not
//! kept: the device re-sends the punch and is answered `stored` again (SPEC 3.1). Broker-to-device traffic (CONNACK,
//! PUBACK, PINGRESP) is forwarded frame by frame, so the front's own frames never split one.
//!
//! The connection also closes when the device is removed from the configuration or its secret changes (SIGHUP), and when
//! the gateway shuts down.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::Credentials;
use super::window::{Windows, WINDOW};
use super::wire::{self, ConnectReturnCode, Framing, PacketType, Subscribe, Unsubscribe};
use super::{DRIVER, TOPIC_PREFIX};
use crate::status::StatusBoard;
use crate::telemetry::DriverMetrics;

/// How long a new connection may take to send its CONNECT (and a TLS client its handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest CONNECT accepted.
const CONNECT_LIMIT: usize = 64 * 1024;

/// What every front connection shares.
pub(crate) struct Front {
    pub credentials: Credentials,
    pub broker: SocketAddr,
    pub token: String,
    pub status: StatusBoard,
    pub metrics: DriverMetrics,
    /// Largest frame passed to the broker; larger ones close the connection. Payloads between `max_payload_bytes` and
    /// this limit reach the gateway and are answered `rejected`.
    pub frame_limit: usize,
    /// Unanswered punches per device (backpressure from the store, see [`super::window`]).
    pub windows: Windows,
    /// The connections the gateway's acks go to.
    pub acks: Arc<AckRoutes>,
    presence: Mutex<HashMap<String, (usize, bool)>>,
}

/// Acks a connection may hold before it wrote them to the device: two windows' worth.
const ACKS_PER_CONNECTION: usize = 2 * WINDOW as usize;

/// One open connection's ack queue, with the connection's id.
type Route = (u64, mpsc::Sender<Vec<u8>>);

/// Where the gateway's acks go: every open connection of the device (usually one).
#[derive(Default)]
pub struct AckRoutes {
    routes: Mutex<HashMap<String, Vec<Route>>>,
    next_id: AtomicU64,
}

impl AckRoutes {
    /// A new connection of `device`: its id and the receiving end of its acks.
    fn register(&self, device: &str) -> (u64, mpsc::Receiver<Vec<u8>>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(ACKS_PER_CONNECTION);
        if let Ok(mut routes) = self.routes.lock() {
            routes.entry(device.to_owned()).or_default().push((id, tx));
        }
        (id, rx)
    }

    fn unregister(&self, device: &str, id: u64) {
        if let Ok(mut routes) = self.routes.lock() {
            if let Some(list) = routes.get_mut(device) {
                list.retain(|(i, _)| *i != id);
                if list.is_empty() {
                    routes.remove(device);
                }
            }
        }
    }

    /// Hands an ack payload to the device's connections. False when none took it (the device is not connected, or
    /// has not read two windows of acks): the device re-sends and is answered again.
    pub fn deliver(&self, device: &str, payload: Vec<u8>) -> bool {
        let Ok(routes) = self.routes.lock() else { return false };
        let Some(list) = routes.get(device) else { return false };
        let mut delivered = false;
        for (_, tx) in list {
            delivered |= tx.try_send(payload.clone()).is_ok();
        }
        delivered
    }
}

impl Front {
    pub fn new(
        credentials: Credentials,
        broker: SocketAddr,
        token: String,
        status: StatusBoard,
        metrics: DriverMetrics,
        frame_limit: usize,
        windows: Windows,
    ) -> Front {
        Front {
            credentials,
            broker,
            token,
            status,
            metrics,
            frame_limit,
            windows,
            acks: Arc::default(),
            presence: Mutex::default(),
        }
    }

    /// One more open connection of `device`: online; a reconnect if it had connected before.
    fn connected(&self, device: &str, peer: SocketAddr) {
        let again = match self.presence.lock() {
            Ok(mut p) => {
                let entry = p.entry(device.to_owned()).or_insert((0, false));
                entry.0 += 1;
                std::mem::replace(&mut entry.1, true)
            }
            Err(_) => false,
        };
        if again {
            self.status.reconnected(device, DRIVER);
        }
        self.status.set_online(device, DRIVER, true);
        self.status.detail(device, DRIVER, format!("connected from {peer}"));
        tracing::info!(device, %peer, "mqtt device connected");
    }

    /// One connection of `device` fewer: offline when it was the last.
    fn disconnected(&self, device: &str, why: &str) {
        let last = match self.presence.lock() {
            Ok(mut p) => match p.get_mut(device) {
                Some(entry) => {
                    entry.0 = entry.0.saturating_sub(1);
                    entry.0 == 0
                }
                None => true,
            },
            Err(_) => true,
        };
        if last {
            self.status.set_online(device, DRIVER, false);
        }
        tracing::info!(device, reason = why, "mqtt device disconnected");
    }

    fn refused(&self, device: &str, peer: SocketAddr, why: &str) {
        tracing::warn!(device, %peer, reason = why, "mqtt connection refused");
        if self.credentials.knows(device) {
            self.status.error(device, DRIVER, format!("connection from {peer} refused: {why}"));
        }
    }
}

/// Accepts connections on `listener` until cancelled and hands each to `serve`. `what` names the listener in logs.
async fn accept_loop(
    listener: TcpListener,
    cancel: &CancellationToken,
    what: &'static str,
    mut serve: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = cancel.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                serve(stream, peer);
            }
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "mqtt accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts plain TCP device connections until cancelled.
pub(crate) async fn serve_plain(
    listener: TcpListener,
    front: Arc<Front>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    accept_loop(listener, &cancel, "plain", |stream, peer| {
        let front = front.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move { handle(stream, None, peer, front, cancel).await });
    })
    .await
}

/// Accepts TLS device connections until cancelled. With a client CA, the certificate's common name is the device id.
pub(crate) async fn serve_tls(
    listener: TcpListener,
    config: super::tls::SharedServerConfig,
    front: Arc<Front>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    accept_loop(listener, &cancel, "tls", |stream, peer| {
        let front = front.clone();
        let cancel = cancel.clone();
        // The certificate in force now (a SIGHUP may have replaced it since the last connection).
        let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
        tasks.spawn(async move {
            let tls = match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "mqtt tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "mqtt tls handshake timed out");
                    return;
                }
            };
            let identity = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => match super::tls::device_id_of(cert.as_ref()) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "mqtt client certificate names no device");
                        return;
                    }
                },
                None => None,
            };
            handle(tls, identity, peer, front, cancel).await
        });
    })
    .await
}

/// Reads until one whole frame is in `buf`; returns its length.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Option<usize>, String> {
    loop {
        match wire::frame(buf, limit).map_err(|e| e.to_string())? {
            Framing::Whole(len) => return Ok(Some(len)),
            Framing::Partial(more) => buf.reserve(more),
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// What a device may publish to: its punch and status topics.
pub fn publish_allowed(device: &str, topic: &str) -> bool {
    topic
        .strip_prefix(TOPIC_PREFIX)
        .and_then(|rest| rest.strip_prefix(device))
        .is_some_and(|leaf| leaf == "/punch" || leaf == "/status")
}

/// What a device may subscribe to: filters under its own `gw/v1/dev/{id}/`.
pub fn subscribe_allowed(device: &str, filter: &str) -> bool {
    filter
        .strip_prefix(TOPIC_PREFIX)
        .and_then(|rest| rest.strip_prefix(device))
        .is_some_and(|leaf| leaf.starts_with('/') && leaf.len() > 1)
}

async fn handle<S>(
    mut device: S,
    cert_id: Option<String>,
    peer: SocketAddr,
    front: Arc<Front>,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut buf = BytesMut::with_capacity(1024);
    let first = tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut device, &mut buf, CONNECT_LIMIT)).await;
    let len = match first {
        Ok(Ok(Some(len))) => len,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "mqtt connection closed before CONNECT");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return;
        }
    };
    if wire::packet_type(buf[0]).ok() != Some(PacketType::Connect) {
        tracing::debug!(%peer, "first packet is not CONNECT");
        return;
    }
    let connect = match wire::parse_connect(&buf[..len]) {
        Ok(wire::Connect::V4(c)) => c,
        Ok(wire::Connect::Mqtt5) => {
            let _ = device.write_all(&wire::connack(ConnectReturnCode::RefusedProtocolVersion)).await;
            front.refused("?", peer, "MQTT 5 is not supported; use 3.1.1");
            return;
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "malformed CONNECT");
            return;
        }
    };
    buf.advance(len);

    let refuse = wire::connack;
    let device_id = match (&cert_id, connect.username()) {
        (Some(id), user) => {
            if user.is_some_and(|u| u != id) {
                let _ = device.write_all(&refuse(ConnectReturnCode::NotAuthorized)).await;
                front.refused(id, peer, "username differs from the device in the client certificate");
                return;
            }
            if !front.credentials.knows(id) {
                let _ = device.write_all(&refuse(ConnectReturnCode::NotAuthorized)).await;
                front.refused(id, peer, "client certificate names no configured mqtt device");
                return;
            }
            id.clone()
        }
        (None, Some(user)) => {
            let password = connect.password().unwrap_or_default();
            if !front.credentials.check(user, password) {
                let _ = device.write_all(&refuse(ConnectReturnCode::BadUserNamePassword)).await;
                front.refused(user, peer, "unknown device or wrong password");
                front.metrics.rejected(DRIVER, if front.credentials.knows(user) { user } else { "unknown" }, "auth");
                return;
            }
            user.to_owned()
        }
        (None, None) => {
            let _ = device.write_all(&refuse(ConnectReturnCode::BadUserNamePassword)).await;
            front.refused("?", peer, "no username (the username is the device id)");
            return;
        }
    };
    if let Some(will) = connect.will() {
        if will.topic != format!("{TOPIC_PREFIX}{device_id}/status") {
            let _ = device.write_all(&refuse(ConnectReturnCode::NotAuthorized)).await;
            front.refused(&device_id, peer, "the last will must go to the device's own status topic");
            return;
        }
    }
    let secret = front.credentials.secret_of(&device_id);
    // Client id and username become the device id, the password the broker token.
    let Ok(rewritten) = connect.rewritten(&device_id, &front.token) else {
        let _ = device.write_all(&refuse(ConnectReturnCode::ServiceUnavailable)).await;
        return;
    };

    let mut broker = match TcpStream::connect(front.broker).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(device = %device_id, error = %e, "cannot reach the embedded broker");
            let _ = device.write_all(&refuse(ConnectReturnCode::ServiceUnavailable)).await;
            return;
        }
    };
    let _ = broker.set_nodelay(true);
    if broker.write_all(&rewritten).await.is_err() {
        let _ = device.write_all(&refuse(ConnectReturnCode::ServiceUnavailable)).await;
        return;
    }
    let mut from_broker = BytesMut::with_capacity(1024);
    let connack = tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut broker, &mut from_broker, front.frame_limit));
    let code = match connack.await {
        Ok(Ok(Some(len))) => wire::connack_code(&from_broker[..len]),
        _ => None,
    };
    if code != Some(0) {
        tracing::error!(device = %device_id, ?code, "embedded broker refused a connection the front accepted");
        let _ = device.write_all(&refuse(ConnectReturnCode::ServiceUnavailable)).await;
        return;
    }
    if device.write_all(&from_broker).await.is_err() {
        return;
    }
    from_broker.clear();

    front.connected(&device_id, peer);
    let (route, acks) = front.acks.register(&device_id);
    let why = pump(device, broker, buf, acks, &device_id, secret, &front, &cancel).await;
    front.acks.unregister(&device_id, route);
    front.disconnected(&device_id, &why);
}

/// Moves bytes both ways until either side closes, a rule is broken, the device is deconfigured or the gateway stops.
/// Returns why it ended.
#[allow(clippy::too_many_arguments)]
async fn pump<S>(
    device: S,
    broker: TcpStream,
    mut buf: BytesMut,
    mut acks: mpsc::Receiver<Vec<u8>>,
    device_id: &str,
    secret: Option<crate::config::Secret>,
    front: &Front,
    cancel: &CancellationToken,
) -> String
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut dev_rd, mut dev_wr) = tokio::io::split(device);
    let (mut br_rd, mut br_wr) = broker.into_split();
    let mut revisions = front.credentials.revisions();
    revisions.mark_unchanged();
    let window = front.windows.of(device_id);
    let ack_topic = format!("{TOPIC_PREFIX}{device_id}/ack");
    // Whether one of the device's filters matches its ack topic (written by the upstream half, read downstream).
    let wants_acks = std::sync::atomic::AtomicBool::new(false);
    // The front's own answers to the device (SUBACK, UNSUBACK), written between broker frames.
    let (replies_tx, mut replies) = mpsc::channel::<Vec<u8>>(4);

    let why = {
        let upstream = async {
            let mut filters: HashSet<String> = HashSet::new();
            loop {
                // Check and forward every whole frame in the buffer, then read more. A punch publish beyond the
                // device's window stops the scan until the store answered earlier ones; a (un)subscription stops
                // it so that the front answers it itself.
                let mut ready = 0;
                let mut punches = 0;
                let mut blocked = false;
                let mut subscription = None;
                loop {
                    let rest = &buf[ready..];
                    let len = match wire::frame(rest, front.frame_limit) {
                        Ok(Framing::Whole(len)) => len,
                        Ok(Framing::Partial(_)) => break,
                        Err(e) => return format!("protocol error: {e}"),
                    };
                    let checked = match check_frame(device_id, &rest[..len]) {
                        Ok(checked) => checked,
                        Err(why) => {
                            front.metrics.rejected(DRIVER, device_id, "topic_not_allowed");
                            front.status.error(device_id, DRIVER, why.clone());
                            tracing::warn!(device = device_id, reason = %why, "mqtt device broke the topic rules; closing");
                            return why;
                        }
                    };
                    match checked {
                        Checked::Forward => {}
                        Checked::Punch => {
                            if window.unanswered() + punches >= WINDOW {
                                blocked = true;
                                break;
                            }
                            punches += 1;
                        }
                        Checked::Subscribe(_) | Checked::Unsubscribe(_) => {
                            subscription = Some((len, checked));
                            break;
                        }
                    }
                    ready += len;
                }
                if ready > 0 {
                    // Counted before the broker has them, so an answer can never precede its count.
                    window.forwarded(punches);
                    if let Err(e) = br_wr.write_all(&buf[..ready]).await {
                        return format!("broker write: {e}");
                    }
                    buf.advance(ready);
                }
                if let Some((len, checked)) = subscription {
                    let reply = subscribe_locally(&mut filters, checked);
                    wants_acks.store(filters.iter().any(|f| wire::filter_matches(f, &ack_topic)), Ordering::Release);
                    buf.advance(len);
                    if replies_tx.send(reply).await.is_err() {
                        return "device write ended".to_owned();
                    }
                    continue;
                }
                if blocked {
                    if !window.wait_for_room().await {
                        tracing::debug!(device = device_id, "mqtt window stalled: unanswered punches forgotten");
                    }
                    continue;
                }
                match dev_rd.read_buf(&mut buf).await {
                    Ok(0) => return "device closed the connection".to_owned(),
                    Ok(_) => {}
                    Err(e) => return format!("device read: {e}"),
                }
            }
        };
        let downstream = async {
            let mut from_broker = BytesMut::with_capacity(1024);
            let mut out = BytesMut::with_capacity(1024);
            loop {
                tokio::select! {
                    biased;
                    Some(reply) = replies.recv() => out.extend_from_slice(&reply),
                    Some(ack) = acks.recv() => {
                        let wanted = wants_acks.load(Ordering::Acquire);
                        let mut next = Some(ack);
                        // Everything already waiting goes out in one write.
                        while let Some(ack) = next {
                            if wanted {
                                if let Err(e) = wire::put_publish_qos0(&mut out, &ack_topic, ack) {
                                    tracing::warn!(device = device_id, error = %e, "mqtt ack not sent");
                                }
                            }
                            next = acks.try_recv().ok();
                        }
                    }
                    read = br_rd.read_buf(&mut from_broker) => match read {
                        Ok(0) => return "broker closed the connection".to_owned(),
                        Ok(_) => loop {
                            // Whole frames only, so the front's own frames never land inside one.
                            match wire::frame(&from_broker, front.frame_limit) {
                                Ok(Framing::Whole(len)) => out.extend_from_slice(&from_broker.split_to(len)),
                                Ok(Framing::Partial(_)) => break,
                                Err(e) => return format!("broker protocol error: {e}"),
                            }
                        },
                        Err(e) => return format!("broker read: {e}"),
                    },
                }
                if !out.is_empty() {
                    if let Err(e) = dev_wr.write_all(&out).await {
                        return format!("device write: {e}");
                    }
                    out.clear();
                }
            }
        };
        let deconfigured = async {
            loop {
                if revisions.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                let now = front.credentials.secret_of(device_id);
                if now.is_none() || now != secret {
                    return "device removed from the configuration or its secret changed".to_owned();
                }
            }
        };
        tokio::select! {
            why = upstream => why,
            why = downstream => why,
            why = deconfigured => why,
            _ = cancel.cancelled() => "gateway shutting down".to_owned(),
        }
    };
    let _ = br_wr.shutdown().await;
    why
}

/// Applies a SUBSCRIBE or UNSUBSCRIBE (already checked by [`check_frame`]) to the connection's `filters` and returns the
/// SUBACK or UNSUBACK. Each filter is granted the QoS requested, at most 1; acks are sent at QoS 0, which the grant
/// allows.
fn subscribe_locally(filters: &mut HashSet<String>, checked: Checked) -> Vec<u8> {
    match checked {
        Checked::Subscribe(sub) => {
            filters.extend(sub.filters.iter().map(|f| f.path.clone()));
            wire::suback(&sub)
        }
        Checked::Unsubscribe(unsub) => {
            for f in &unsub.topics {
                filters.remove(f);
            }
            wire::unsuback(unsub.pkid)
        }
        Checked::Forward | Checked::Punch => Vec::new(),
    }
}

/// What a device frame is, once checked against the topic rules.
#[derive(Debug)]
pub enum Checked {
    /// Goes to the broker as it is.
    Forward,
    /// A PUBLISH to the device's punch topic: goes to the broker, within the device's window.
    Punch,
    /// Answered by the front.
    Subscribe(Subscribe),
    /// Answered by the front.
    Unsubscribe(Unsubscribe),
}

/// Checks one device frame (fixed header included) against the topic rules. `Err` says what was wrong.
pub fn check_frame(device_id: &str, frame: &[u8]) -> Result<Checked, String> {
    let first = frame.first().copied().unwrap_or_default();
    match wire::packet_type(first) {
        Ok(PacketType::Publish) => {
            let topic = wire::publish_topic(frame).map_err(|e| format!("malformed PUBLISH: {e}"))?;
            if !publish_allowed(device_id, &topic) {
                return Err(format!(
                    "published to `{}`: device {device_id} may publish only to {TOPIC_PREFIX}{device_id}/punch and \
                     /status",
                    topic.chars().take(128).collect::<String>()
                ));
            }
            Ok(if topic.ends_with("/punch") { Checked::Punch } else { Checked::Forward })
        }
        Ok(PacketType::Subscribe) => {
            let sub = wire::subscribe(frame).map_err(|e| format!("malformed SUBSCRIBE: {e}"))?;
            match sub.filters.iter().find(|f| !subscribe_allowed(device_id, &f.path)) {
                None => Ok(Checked::Subscribe(sub)),
                Some(f) => Err(format!(
                    "subscribed to `{}`: device {device_id} may subscribe only under {TOPIC_PREFIX}{device_id}/",
                    f.path.chars().take(128).collect::<String>()
                )),
            }
        }
        Ok(PacketType::Unsubscribe) => {
            let unsub = wire::unsubscribe(frame).map_err(|e| format!("malformed UNSUBSCRIBE: {e}"))?;
            Ok(Checked::Unsubscribe(unsub))
        }
        Ok(
            PacketType::PubAck
            | PacketType::PubRec
            | PacketType::PubRel
            | PacketType::PubComp
            | PacketType::PingReq
            | PacketType::Disconnect,
        ) => Ok(Checked::Forward),
        _ => Err(format!("packet type {} is not allowed from a client here", first >> 4)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_rules() {
        assert!(publish_allowed("a", "gw/v1/dev/a/punch"));
        assert!(publish_allowed("a", "gw/v1/dev/a/status"));
        assert!(!publish_allowed("a", "gw/v1/dev/b/punch"));
        assert!(!publish_allowed("a", "gw/v1/dev/ab/punch"));
        assert!(!publish_allowed("a", "gw/v1/dev/a/ack"));
        assert!(!publish_allowed("a", "gw/v1/dev/a/punch/x"));
        assert!(subscribe_allowed("a", "gw/v1/dev/a/ack"));
        assert!(subscribe_allowed("a", "gw/v1/dev/a/#"));
        assert!(!subscribe_allowed("a", "gw/v1/dev/+/ack"));
        assert!(!subscribe_allowed("a", "gw/v1/dev/ab/ack"));
        assert!(!subscribe_allowed("a", "#"));
        assert!(!subscribe_allowed("a", "gw/v1/dev/a/"));
    }

    #[test]
    fn frames_are_checked() {
        let mut publish = vec![0x32, 21];
        publish.extend_from_slice(&(17u16).to_be_bytes());
        publish.extend_from_slice(b"gw/v1/dev/b/punch");
        publish.extend_from_slice(&[0, 1]);
        assert!(check_frame("a", &publish).is_err());
        assert!(matches!(check_frame("b", &publish), Ok(Checked::Punch)));
        assert!(check_frame("b", &[0x20, 0]).is_err(), "a CONNACK from a client");
        assert!(check_frame("b", &[0x00, 0]).is_err(), "reserved packet type 0");
        assert!(matches!(check_frame("b", &[0xc0, 0]), Ok(Checked::Forward)));
        let mut status = vec![0x30, 20];
        status.extend_from_slice(&(18u16).to_be_bytes());
        status.extend_from_slice(b"gw/v1/dev/b/status");
        assert!(matches!(check_frame("b", &status), Ok(Checked::Forward)));
        let mut sub = vec![0x82, 20, 0, 1];
        sub.extend_from_slice(&(15u16).to_be_bytes());
        sub.extend_from_slice(b"gw/v1/dev/b/ack");
        sub.push(1);
        assert!(matches!(check_frame("b", &sub), Ok(Checked::Subscribe(_))));
        assert!(check_frame("a", &sub).is_err());
    }
}
