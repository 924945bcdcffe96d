//! A simulated 4370 terminal for tests and `gatewayd demo`, written from the protocol description in the parent module
//! and [`super::records`]: it keeps an attendance log, users, a clock and an optional communication key, and serves
//! any number of clients over TCP ([`Zk4370Sim::serve_tcp`]) and UDP ([`Zk4370Sim::serve_udp`]) at once.
//!
//! Behaviour, as the gateway relies on it:
//! - `CMD_CONNECT` assigns a session id; with a comm key the answer is `CMD_ACK_UNAUTH` until `CMD_AUTH` carries the
//!   key's hash, and every other command of an unauthorised session is answered `CMD_ACK_UNAUTH`;
//! - `CMD_SET_TIME` sets the clock, which then runs on ([`Zk4370Sim::clock`]);
//! - a client registered for `EF_ATTLOG` gets each new record as an event (32 bytes, reply number 0), one at a time:
//!   the next is sent when the client acknowledges the last with `CMD_ACK_OK` ([`Zk4370Sim::acked`] lists those), or
//!   with the next record after [`ACK_WAIT`] without an acknowledgement;
//! - the log is read with the buffered read: the whole table in one `CMD_DATA` when small, else prepared and read in
//!   chunks, each answered as one `CMD_DATA`, or over TCP (for chunks over 8 KiB) as `CMD_PREPARE_DATA`, `CMD_DATA`
//!   pieces of 4 KiB and `CMD_ACK_OK`;
//! - `CMD_USER_WRQ` adds or replaces a user, `CMD_DELETE_USER` removes one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use jiff::civil::DateTime;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::codec::{cmd, comm_key_hash, event, Packet, TcpCodec, MAX_PACKET};
use super::records::{self, AttRecord, FreeSizes, Layout, User};
pub use crate::sim::Fault;

/// Tables up to this size are answered in one `CMD_DATA` to `CMD_PREPARE_BUFFER`.
const INLINE_TABLE: usize = 1024;
/// Chunks larger than this are sent over TCP as `CMD_PREPARE_DATA` and pieces.
const PIECED_CHUNK: usize = 8 * 1024;
const PIECE: usize = 4 * 1024;
/// How long an event waits for its acknowledgement before the next one may go out.
pub const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What the simulator has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub connects: u64,
    pub auth_failures: u64,
    pub clock_sets: u64,
    pub log_reads: u64,
    pub events_sent: u64,
    pub events_acked: u64,
    /// Events sent and never acknowledged (the next event went out after [`ACK_WAIT`]).
    pub events_abandoned: u64,
    pub commands: u64,
}

#[derive(Debug)]
struct State {
    comm_key: Option<u32>,
    layout: Layout,
    tz: jiff::tz::TimeZone,
    /// The clock as last set, and when.
    clock: Option<(DateTime, std::time::Instant)>,
    log: Vec<AttRecord>,
    users: BTreeMap<u16, User>,
    next_session: u16,
    next_conn: u64,
    /// Connections registered for events: connection id → where its events go.
    subscribers: Vec<(u64, mpsc::UnboundedSender<(u64, AttRecord)>)>,
    acked: Vec<AttRecord>,
    faults: VecDeque<Fault>,
    stats: SimStats,
}

/// A simulated terminal. Cheap to clone; clones share the terminal.
#[derive(Clone, Debug)]
pub struct Zk4370Sim {
    state: Arc<Mutex<State>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The TCP frame of `p` with `fault` applied; `None` for silence.
fn faulty(fault: Option<Fault>, p: &Packet) -> Option<Vec<u8>> {
    let mut frame = p.to_tcp_frame();
    match fault {
        None => {}
        Some(Fault::Garbage(mut noise)) => {
            noise.extend_from_slice(&frame);
            frame = noise;
        }
        // The checksum is bytes 2 and 3 of the packet, after the 8 bytes of the frame header.
        Some(Fault::CorruptChecksum) => frame[10] ^= 0x5A,
        Some(Fault::Truncate) => frame.truncate(frame.len() / 2),
        Some(Fault::WrongReply) => {
            let wrong = Packet { reply: p.reply.wrapping_add(7), ..p.clone() };
            frame = wrong.to_tcp_frame();
        }
        Some(Fault::Silence) => return None,
    }
    Some(frame)
}

/// One client connection's protocol state.
#[derive(Debug, Default)]
struct Conn {
    id: u64,
    session: u16,
    authorised: bool,
    prepared: Option<Vec<u8>>,
    /// The event sent and not yet acknowledged, and when it was sent.
    in_flight: Option<(AttRecord, std::time::Instant)>,
    queue: VecDeque<AttRecord>,
    closed: bool,
}

impl Zk4370Sim {
    /// A terminal whose log uses `layout`, with `comm_key` (if any), its clock in `tz`.
    pub fn new(layout: Layout, comm_key: Option<u32>, tz: jiff::tz::TimeZone) -> Zk4370Sim {
        Zk4370Sim {
            state: Arc::new(Mutex::new(State {
                comm_key: comm_key.filter(|k| *k != 0),
                layout,
                tz,
                clock: None,
                log: Vec::new(),
                users: BTreeMap::new(),
                next_session: 0x5A00,
                next_conn: 1,
                subscribers: Vec::new(),
                acked: Vec::new(),
                faults: VecDeque::new(),
                stats: SimStats::default(),
            })),
        }
    }

    /// The terminal's clock now: as set by a client and run on since, else the real time in its zone.
    pub fn clock(&self) -> DateTime {
        let s = lock(&self.state);
        match s.clock {
            Some((set, at)) => {
                set.checked_add(jiff::SignedDuration::try_from(at.elapsed()).unwrap_or_default()).unwrap_or(set)
            }
            None => jiff::Timestamp::now().to_zoned(s.tz.clone()).datetime(),
        }
    }

    /// Whether a client has set the clock.
    pub fn clock_was_set(&self) -> bool {
        lock(&self.state).clock.is_some()
    }

    /// Someone punches at `time` (terminal-local): the record goes to the log and, as an event, to registered clients.
    pub fn punch_at(&self, user_id: &str, verify: u8, state: u8, time: DateTime) {
        let r = AttRecord { user_id: user_id.to_owned(), verify, state, time, workcode: None };
        let mut s = lock(&self.state);
        s.log.push(r.clone());
        s.subscribers.retain(|(id, tx)| tx.send((*id, r.clone())).is_ok());
    }

    /// Someone punches now, by the terminal's clock.
    pub fn punch(&self, user_id: &str, verify: u8) {
        let now = self.clock();
        // The log keeps whole seconds.
        let now = now.with().subsec_nanosecond(0).build().unwrap_or(now);
        self.punch_at(user_id, verify, 0, now);
    }

    /// The attendance log.
    pub fn log(&self) -> Vec<AttRecord> {
        lock(&self.state).log.clone()
    }

    /// The events clients acknowledged, in order.
    pub fn acked(&self) -> Vec<AttRecord> {
        lock(&self.state).acked.clone()
    }

    pub fn users(&self) -> Vec<User> {
        lock(&self.state).users.values().cloned().collect()
    }

    pub fn add_user(&self, user: User) {
        lock(&self.state).users.insert(user.uid, user);
    }

    pub fn stats(&self) -> SimStats {
        lock(&self.state).stats.clone()
    }

    /// Queues a fault for the next TCP packet the terminal sends.
    pub fn inject(&self, fault: Fault) {
        lock(&self.state).faults.push_back(fault);
    }

    fn new_conn(&self) -> Conn {
        let mut s = lock(&self.state);
        let id = s.next_conn;
        s.next_conn += 1;
        Conn { id, ..Conn::default() }
    }

    fn unsubscribe(&self, conn: u64) {
        lock(&self.state).subscribers.retain(|(id, _)| *id != conn);
    }

    /// Serves TCP clients on `listener` until `stop` fires.
    pub async fn serve_tcp(&self, listener: TcpListener, stop: CancellationToken) {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                _ = stop.cancelled() => return,
            };
            let sim = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut framed = Framed::new(stream, TcpCodec);
                let mut conn = sim.new_conn();
                let (tx, mut rx) = mpsc::unbounded_channel();
                loop {
                    let out = tokio::select! {
                        item = framed.next() => match item {
                            Some(Ok(Ok(p))) => sim.handle(&mut conn, p, true, &tx),
                            Some(Ok(Err(_))) => Vec::new(),
                            Some(Err(_)) | None => break,
                        },
                        Some((_, r)) = rx.recv() => sim.queue_event(&mut conn, r),
                        _ = stop.cancelled() => break,
                    };
                    let mut failed = false;
                    for p in out {
                        let fault = lock(&sim.state).faults.pop_front();
                        let Some(bytes) = faulty(fault, &p) else { continue };
                        use tokio::io::AsyncWriteExt;
                        failed |= framed.get_mut().write_all(&bytes).await.is_err();
                    }
                    if failed || conn.closed {
                        break;
                    }
                }
                sim.unsubscribe(conn.id);
            });
        }
    }

    /// Serves UDP clients on `socket` until `stop` fires: one connection per client address.
    pub async fn serve_udp(&self, socket: UdpSocket, stop: CancellationToken) {
        let mut conns: HashMap<SocketAddr, Conn> = HashMap::new();
        let mut peers: HashMap<u64, SocketAddr> = HashMap::new();
        let (tx, mut rx) = mpsc::unbounded_channel::<(u64, AttRecord)>();
        let mut buf = vec![0u8; MAX_PACKET + 1];
        loop {
            let (peer, out) = tokio::select! {
                got = socket.recv_from(&mut buf) => match got {
                    Ok((n, peer)) => {
                        let Ok(p) = Packet::parse(&buf[..n]) else { continue };
                        if p.command == cmd::CONNECT {
                            // A new connection from this address replaces the old one.
                            if let Some(old) = conns.remove(&peer) {
                                self.unsubscribe(old.id);
                                peers.remove(&old.id);
                            }
                        }
                        let sim = self.clone();
                        let conn = conns.entry(peer).or_insert_with(|| sim.new_conn());
                        peers.insert(conn.id, peer);
                        let out = self.handle(conn, p, false, &tx);
                        if conn.closed {
                            self.unsubscribe(conn.id);
                            peers.remove(&conn.id);
                            conns.remove(&peer);
                        }
                        (peer, out)
                    }
                    // An ICMP error from a client that went away: nothing to do.
                    Err(_) => continue,
                },
                Some((id, r)) = rx.recv() => {
                    let Some(peer) = peers.get(&id).copied() else { continue };
                    let Some(conn) = conns.get_mut(&peer) else { continue };
                    (peer, self.queue_event(conn, r))
                }
                _ = stop.cancelled() => return,
            };
            for p in out {
                let _ = socket.send_to(&p.to_bytes(), peer).await;
            }
        }
    }

    /// A new record for a registered connection: sent now, or after the one in flight is acknowledged.
    fn queue_event(&self, conn: &mut Conn, r: AttRecord) -> Vec<Packet> {
        conn.queue.push_back(r);
        self.next_event(conn)
    }

    fn next_event(&self, conn: &mut Conn) -> Vec<Packet> {
        match &conn.in_flight {
            Some((_, sent)) if sent.elapsed() < ACK_WAIT => return Vec::new(),
            // Never acknowledged: given up (the client reads it from the log).
            Some(_) => lock(&self.state).stats.events_abandoned += 1,
            None => {}
        }
        let Some(r) = conn.queue.pop_front() else { return Vec::new() };
        let Ok(data) = records::encode_event(&r) else { return Vec::new() };
        conn.in_flight = Some((r, std::time::Instant::now()));
        lock(&self.state).stats.events_sent += 1;
        vec![Packet::new(cmd::REG_EVENT, event::ATTLOG, 0, data)]
    }

    /// Answers one packet of a client.
    fn handle(
        &self,
        conn: &mut Conn,
        p: Packet,
        tcp: bool,
        events: &mpsc::UnboundedSender<(u64, AttRecord)>,
    ) -> Vec<Packet> {
        let ok = |data: Vec<u8>| Packet::new(cmd::ACK_OK, conn.session, p.reply, data);
        let mut s = lock(&self.state);
        s.stats.commands += 1;
        match p.command {
            cmd::CONNECT => {
                s.stats.connects += 1;
                conn.session = s.next_session;
                s.next_session = s.next_session.wrapping_add(1).max(1);
                conn.authorised = s.comm_key.is_none();
                let code = if conn.authorised { cmd::ACK_OK } else { cmd::ACK_UNAUTH };
                return vec![Packet::new(code, conn.session, p.reply, Vec::new())];
            }
            cmd::AUTH => {
                let right = s.comm_key.map(|k| comm_key_hash(k, conn.session).to_vec());
                conn.authorised = right.is_none_or(|r| r == p.data);
                if !conn.authorised {
                    s.stats.auth_failures += 1;
                }
                let code = if conn.authorised { cmd::ACK_OK } else { cmd::ACK_UNAUTH };
                return vec![Packet::new(code, conn.session, p.reply, Vec::new())];
            }
            cmd::ACK_OK => {
                // A client's acknowledgement of the event in flight.
                if let Some((r, _)) = conn.in_flight.take() {
                    s.stats.events_acked += 1;
                    s.acked.push(r);
                }
                drop(s);
                return self.next_event(conn);
            }
            _ => {}
        }
        if !conn.authorised {
            return vec![Packet::new(cmd::ACK_UNAUTH, conn.session, p.reply, Vec::new())];
        }
        let error = Packet::new(cmd::ACK_ERROR, conn.session, p.reply, Vec::new());
        match p.command {
            cmd::EXIT => {
                conn.closed = true;
                vec![ok(Vec::new())]
            }
            cmd::ENABLE_DEVICE | cmd::DISABLE_DEVICE | cmd::REFRESH_DATA => vec![ok(Vec::new())],
            cmd::SET_TIME => {
                match p.data.get(..4).map(|b| records::unpack_time(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))) {
                    Some(Ok(t)) => {
                        s.clock = Some((t, std::time::Instant::now()));
                        s.stats.clock_sets += 1;
                        vec![ok(Vec::new())]
                    }
                    _ => vec![error],
                }
            }
            cmd::GET_TIME => {
                drop(s);
                let now = self.clock();
                match records::pack_time(now) {
                    Ok(t) => vec![ok(t.to_le_bytes().to_vec())],
                    Err(_) => vec![error],
                }
            }
            cmd::REG_EVENT => {
                let flags = p.data.get(..4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                s.subscribers.retain(|(id, _)| *id != conn.id);
                if flags & u32::from(event::ATTLOG) != 0 {
                    s.subscribers.push((conn.id, events.clone()));
                }
                vec![ok(Vec::new())]
            }
            cmd::GET_FREE_SIZES => {
                let sizes =
                    FreeSizes { users: s.users.len() as u32, fingers: 0, records: s.log.len() as u32, faces: 0 };
                vec![ok(sizes.encode())]
            }
            cmd::PREPARE_BUFFER => {
                let table = match records::parse_prepare_buffer(&p.data) {
                    Ok((cmd::ATTLOG_RRQ, _, _)) => {
                        s.stats.log_reads += 1;
                        records::encode_log(s.layout, &s.log).ok()
                    }
                    Ok((cmd::USERTEMP_RRQ, records::FCT_USER, _)) => {
                        let body: Vec<u8> = s.users.values().flat_map(User::encode).collect();
                        let mut t = (body.len() as u32).to_le_bytes().to_vec();
                        t.extend(body);
                        Some(t)
                    }
                    _ => None,
                };
                match table {
                    None => vec![error],
                    Some(t) if t.len() <= INLINE_TABLE => {
                        vec![Packet::new(cmd::DATA, conn.session, p.reply, t)]
                    }
                    Some(t) => {
                        let mut answer = vec![0u8];
                        answer.extend_from_slice(&(t.len() as u32).to_le_bytes());
                        answer.extend_from_slice(&[0; 4]);
                        conn.prepared = Some(t);
                        vec![ok(answer)]
                    }
                }
            }
            cmd::READ_BUFFER => {
                let (Ok((start, size)), Some(table)) = (records::parse_read_buffer(&p.data), conn.prepared.as_ref())
                else {
                    return vec![error];
                };
                let start = (start as usize).min(table.len());
                let end = start.saturating_add(size as usize).min(table.len());
                let chunk = &table[start..end];
                if tcp && chunk.len() > PIECED_CHUNK {
                    let mut out = vec![Packet::new(
                        cmd::PREPARE_DATA,
                        conn.session,
                        p.reply,
                        (chunk.len() as u32).to_le_bytes().to_vec(),
                    )];
                    out.extend(chunk.chunks(PIECE).map(|c| Packet::new(cmd::DATA, conn.session, p.reply, c.to_vec())));
                    out.push(ok(Vec::new()));
                    out
                } else {
                    vec![Packet::new(cmd::DATA, conn.session, p.reply, chunk.to_vec())]
                }
            }
            cmd::FREE_DATA => {
                conn.prepared = None;
                vec![ok(Vec::new())]
            }
            cmd::USER_WRQ => match User::parse(&p.data) {
                Ok(user) => {
                    // A user id is one user: an existing entry under another uid is replaced.
                    s.users.retain(|_, u| u.user_id != user.user_id);
                    s.users.insert(user.uid, user);
                    vec![ok(Vec::new())]
                }
                Err(_) => vec![error],
            },
            cmd::DELETE_USER => {
                let uid = p.data.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]]));
                match uid.and_then(|uid| s.users.remove(&uid)) {
                    Some(_) => vec![ok(Vec::new())],
                    None => vec![error],
                }
            }
            _ => vec![Packet::new(cmd::ACK_UNKNOWN, conn.session, p.reply, Vec::new())],
        }
    }
}
