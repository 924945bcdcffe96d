//! ZKTeco terminals without PUSH, over their binary "4370" protocol on TCP or UDP (SPEC 6.4): `driver = "zk4370"`.
//!
//! The gateway is the client; the terminal listens on port 4370. One session per open link:
//! 1. `CMD_CONNECT`; the terminal assigns a session id. A terminal with a communication key answers `CMD_ACK_UNAUTH`,
//!    and the gateway authenticates with `CMD_AUTH` and the key's hash ([`codec::comm_key_hash`]).
//! 2. `CMD_SET_TIME` (then `CMD_REFRESHDATA`): the terminal's clock is set from the gateway's, in the device's time
//!    zone (its `timezone`, else the site's).
//! 3. `CMD_REG_EVENT` for `EF_ATTLOG`: from now on the terminal sends each attendance record as it happens. Events that
//!    arrive while a command waits for its answer are kept and handled after it.
//! 4. The attendance log read: `CMD_GET_FREE_SIZES` (the record count, which gives the record size: 8, 16 or 40 bytes,
//!    see [`records`]), then the buffered read `CMD_PREPARE_BUFFER` (1503) of `CMD_ATTLOG_RRQ`, `CMD_READ_BUFFER` (1504)
//!    in chunks (64 KiB on TCP, 16 KiB on UDP, where one answer is one datagram; a chunk may come as one `CMD_DATA` or
//!    as `CMD_PREPARE_DATA`, several `CMD_DATA` and `CMD_ACK_OK`), then `CMD_FREE_DATA`. Records from the latest
//!    stored device time of this device (minus [`LOG_OVERLAP`]) on are submitted, in batches; everything, if the store
//!    holds nothing of the device yet. Events registered before the read mean nothing falls between the two.
//! 5. The roster's people are made users of the terminal (when the daemon gives the driver a [`PeopleFeed`]): the user
//!    table is read (`CMD_USERTEMP_RRQ` through the buffer, 72-byte records), people missing or different are written
//!    (`CMD_USER_WRQ`, a new one under the next free internal number), users the gateway once put there and the roster
//!    no longer has are deleted (`CMD_DELETE_USER`), then `CMD_REFRESHDATA`. Again whenever the roster changes. Users
//!    enrolled on the terminal by hand are left alone.
//! 6. Then the gateway waits for events, and every `poll_interval` (default [`POLL`]) asks for the record count: it
//!    checks the link, and a count other than the records read plus the events received since (an event lost on UDP,
//!    corrupted or malformed) makes the gateway read the log again and submit the records after those of its last
//!    read (the log only grows at its end; a count below that means it was cleared, and the read takes it whole).
//!
//! # Durability and duplicates
//! A real-time event is answered `CMD_ACK_OK` only after the sink reports its punch durable; a punch the store cannot
//! take now (full, failing, shutting down) is not acknowledged and ends the session, and the log read of the next one
//! fetches it. Records carry no sequence number, so the punch id is the content hash (device, method, user, time): an
//! event and the same record read later from the log, or read twice, are one punch. A malformed event or record is
//! counted and skipped (re-sending it would not make it valid); the event is acknowledged so the terminal moves on.
//!
//! # Reconnects
//! A link that cannot be opened, a command without an answer within `response_timeout` (default 5 s), a closed TCP
//! connection or a refused command end the session; the link is reopened with [`Backoff::link`], and the device
//! reported offline meanwhile (with the error on its status). A wrong comm key is such an error too: the status says so.
//!
//! Cancel-safety: the driver stops at any await; a half-sent packet is dropped with the connection, and an event whose
//! punch reached the sink but was not acknowledged is read again from the log next time (and recognised).

pub mod codec;
pub mod records;
pub mod sim;
pub mod wire;

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use self::codec::{cmd, event, Packet};
use self::records::{AttRecord, FreeSizes, RecordError};
pub use self::wire::Endpoint;
use self::wire::{Received, Wire};
use crate::backoff::{Backoff, Retries};
use crate::config::{CommKey, HumanDuration};
use crate::context::{DriverContext, DriverError};
use crate::framing::FrameFault;
use crate::people::PeopleFeed;
use crate::sink::{DevicePunch, Outcome, Rejection, Subject};

/// The driver label.
pub const DRIVER: &str = "zk4370";
/// How long a command waits for its answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the gateway checks the link and the terminal's record count, by default.
pub const POLL: Duration = Duration::from_secs(20);
/// The log read starts this long before the latest stored punch of the device (punches that were late to the store).
pub const LOG_OVERLAP: Duration = Duration::from_secs(600);
/// Records submitted to the store together during a log read.
pub const BATCH: usize = 256;
/// The largest table the gateway reads (about 1.6 million 40-byte records).
pub const MAX_TABLE: u32 = 64 << 20;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    #[error("connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the terminal closed the connection")]
    Closed,
    #[error("read from the terminal: {0}")]
    Read(#[source] std::io::Error),
    #[error("write to the terminal: {0}")]
    Write(#[source] std::io::Error),
    #[error("no answer to {command} within {timeout:?}")]
    NoAnswer { command: &'static str, timeout: Duration },
    #[error("{0}")]
    Refused(String),
    #[error("{what}: {source}")]
    Data {
        what: &'static str,
        #[source]
        source: RecordError,
    },
    #[error("punches not stored, the terminal keeps them: {0}")]
    Store(String),
    #[error("users not kept in step: {0}")]
    Users(String),
}

/// Runs the driver for one terminal until cancelled.
pub async fn run(ctx: DriverContext) -> Result<(), DriverError> {
    let endpoint = ctx
        .device
        .port
        .as_deref()
        .ok_or_else(|| "no `port` configured".to_owned())
        .and_then(Endpoint::parse)
        .map_err(|message| DriverError::Device { device: ctx.device.id.clone(), message })?;
    let timeout = ctx.device.response_timeout.map_or(DEFAULT_TIMEOUT, |HumanDuration(d)| d);
    let (device, status) = (ctx.device.id.clone(), ctx.status.clone());
    let mut retries = Retries::new(Backoff::link());
    let mut ever_connected = false;
    let mut last_logged: Option<String> = None;
    loop {
        let opened = tokio::select! {
            r = Wire::open(&endpoint, timeout.max(Duration::from_secs(3))) => r,
            _ = ctx.cancel.cancelled() => return Ok(()),
        };
        let error = match opened {
            Err(source) => ZkError::Connect { endpoint: endpoint.to_string(), source },
            Ok(wire) => {
                if ever_connected {
                    status.reconnected(&device, DRIVER);
                }
                ever_connected = true;
                let started = Instant::now();
                let mut session = Session::new(&ctx, &endpoint, wire, timeout);
                let ended = tokio::select! {
                    e = session.run() => e,
                    _ = ctx.cancel.cancelled() => return Ok(()),
                };
                status.set_online(&device, DRIVER, false);
                if retries.ran_for(started.elapsed()) {
                    last_logged = None;
                }
                ended
            }
        };
        let text = error.to_string();
        status.error(&device, DRIVER, text.clone());
        if last_logged.as_deref() != Some(text.as_str()) {
            tracing::warn!(device = %device, driver = DRIVER, error = %text, "terminal link down; retrying with backoff");
            last_logged = Some(text);
        }
        let delay = retries.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = ctx.cancel.cancelled() => return Ok(()),
        }
    }
}

/// Turns a record into a punch of `device_id`, its time read in `tz`.
pub fn to_punch(
    device_id: &str,
    r: &AttRecord,
    tz: &jiff::tz::TimeZone,
    received_ms: i64,
    realtime: bool,
) -> DevicePunch {
    // A time in a DST gap is moved forward, as the terminal's clock was; a time out of jiff's range reads as 0, which
    // the store refuses (before 2000).
    let device_time_ms = r.time.to_zoned(tz.clone()).map_or(0, |z| z.timestamp().as_millisecond());
    let mut attributes = vec![("status".to_owned(), r.state.to_string()), ("verify".to_owned(), r.verify.to_string())];
    if let Some(w) = r.workcode {
        attributes.push(("workcode".to_owned(), w.to_string()));
    }
    DevicePunch {
        device_id: device_id.to_owned(),
        device_seq: None,
        method: crate::adms::attlog::verify_method(u32::from(r.verify)),
        subject: Subject::Employee(r.user_id.clone()),
        device_time_ms,
        received_time_ms: received_ms,
        realtime,
        geo: None,
        score: None,
        attributes,
    }
}

/// Resolves when the roster changes (`true`) or will not change any more (`false`); never without a feed.
async fn roster_changed(feed: &mut PeopleFeed) -> bool {
    match feed.people.as_mut() {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// One open link to a terminal.
struct Session<'a> {
    ctx: &'a DriverContext,
    endpoint: &'a Endpoint,
    wire: Wire,
    timeout: Duration,
    tz: jiff::tz::TimeZone,
    session: u16,
    reply: u16,
    /// Events that arrived while a command waited for its answer.
    events: VecDeque<Packet>,
    /// The record count at the last log read (`None` before the session's first).
    read_upto: Option<u32>,
    /// The records the gateway has of the log: `read_upto` plus the records of the events since.
    seen: u32,
}

fn command_name(command: u16) -> &'static str {
    match command {
        cmd::CONNECT => "CMD_CONNECT",
        cmd::AUTH => "CMD_AUTH",
        cmd::SET_TIME => "CMD_SET_TIME",
        cmd::GET_TIME => "CMD_GET_TIME",
        cmd::REFRESH_DATA => "CMD_REFRESHDATA",
        cmd::REG_EVENT => "CMD_REG_EVENT",
        cmd::GET_FREE_SIZES => "CMD_GET_FREE_SIZES",
        cmd::PREPARE_BUFFER => "CMD_PREPARE_BUFFER",
        cmd::READ_BUFFER => "CMD_READ_BUFFER",
        cmd::FREE_DATA => "CMD_FREE_DATA",
        cmd::USER_WRQ => "CMD_USER_WRQ",
        cmd::DELETE_USER => "CMD_DELETE_USER",
        _ => "a command",
    }
}

fn data_error(what: &'static str) -> impl FnOnce(RecordError) -> ZkError {
    move |source| ZkError::Data { what, source }
}

impl<'a> Session<'a> {
    fn new(ctx: &'a DriverContext, endpoint: &'a Endpoint, wire: Wire, timeout: Duration) -> Session<'a> {
        Session {
            ctx,
            endpoint,
            wire,
            timeout,
            tz: ctx.device.device_timezone(&ctx.timezone),
            session: 0,
            reply: 0,
            events: VecDeque::new(),
            read_upto: None,
            seen: 0,
        }
    }

    fn device(&self) -> &str {
        &self.ctx.device.id
    }

    async fn run(&mut self) -> ZkError {
        match self.serve().await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn serve(&mut self) -> Result<std::convert::Infallible, ZkError> {
        self.connect().await?;
        self.set_clock().await?;
        self.command_ok(cmd::REG_EVENT, u32::from(event::ATTLOG).to_le_bytes().to_vec()).await?;
        self.ctx.status.set_online(self.device(), DRIVER, true);
        self.read_log().await?;
        let mut feed = self.ctx.people.clone();
        if feed.people.is_some() {
            self.sync_users(&mut feed).await?;
        }
        let poll = self.ctx.device.poll_interval.map_or(POLL, |HumanDuration(d)| d);
        let mut tick = tokio::time::interval_at(Instant::now() + poll, poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while let Some(p) = self.events.pop_front() {
                self.on_event(p).await?;
            }
            tokio::select! {
                received = self.wire.recv() => {
                    if let Some(p) = self.usable(received)? {
                        if p.command == cmd::REG_EVENT {
                            self.on_event(p).await?;
                        } else {
                            // A late answer to a command that timed out.
                            self.ctx.sink.count_unparsed(self.device(), "unexpected_reply");
                        }
                    }
                }
                _ = tick.tick() => {
                    let count = self.record_count().await?;
                    if self.read_upto.is_none() || count != self.seen {
                        self.read_log().await?;
                    }
                }
                changed = roster_changed(&mut feed) => {
                    if changed {
                        self.sync_users(&mut feed).await?;
                    } else {
                        // The daemon is stopping: no more roster changes.
                        feed.people = None;
                    }
                }
            }
        }
    }

    /// A received item as a packet: `None` for one that did not decode (counted).
    fn usable(&self, received: std::io::Result<Option<Received>>) -> Result<Option<Packet>, ZkError> {
        match received {
            Err(e) => Err(ZkError::Read(e)),
            Ok(None) => Err(ZkError::Closed),
            Ok(Some(Err(bad))) => {
                self.ctx.sink.count_unparsed(self.device(), bad.label());
                Ok(None)
            }
            Ok(Some(Ok(p))) => Ok(Some(p)),
        }
    }

    async fn send(&mut self, packet: Packet) -> Result<(), ZkError> {
        self.wire.send(packet).await.map_err(ZkError::Write)
    }

    /// Sends `command` with the next reply number and returns the terminal's answer (any reply code).
    async fn command(&mut self, command: u16, data: Vec<u8>) -> Result<Packet, ZkError> {
        let reply = self.reply;
        self.reply = self.reply.wrapping_add(1);
        self.send(Packet::new(command, self.session, reply, data)).await?;
        self.answer(command_name(command), Some(reply)).await
    }

    /// The next packet that is not an event (kept for later) and, with `reply`, carries that reply number.
    async fn answer(&mut self, name: &'static str, reply: Option<u16>) -> Result<Packet, ZkError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let received = tokio::time::timeout_at(deadline, self.wire.recv())
                .await
                .map_err(|_| ZkError::NoAnswer { command: name, timeout: self.timeout })?;
            let Some(p) = self.usable(received)? else { continue };
            if p.command == cmd::REG_EVENT {
                self.events.push_back(p);
            } else if reply.is_some_and(|r| r != p.reply) {
                self.ctx.sink.count_unparsed(self.device(), "wrong_reply");
            } else {
                return Ok(p);
            }
        }
    }

    /// [`Session::command`], which must be accepted (`CMD_ACK_OK`, or data).
    async fn command_ok(&mut self, command: u16, data: Vec<u8>) -> Result<Packet, ZkError> {
        let p = self.command(command, data).await?;
        match p.command {
            cmd::ACK_OK | cmd::ACK_DATA | cmd::DATA => Ok(p),
            cmd::ACK_UNAUTH => {
                Err(ZkError::Refused(format!("{}: the terminal says not authorised", command_name(command))))
            }
            other => Err(ZkError::Refused(format!("{} refused with reply code {other}", command_name(command)))),
        }
    }

    async fn connect(&mut self) -> Result<(), ZkError> {
        let p = self.command(cmd::CONNECT, Vec::new()).await?;
        self.session = p.session;
        match p.command {
            cmd::ACK_OK => Ok(()),
            cmd::ACK_UNAUTH => {
                let Some(CommKey(key)) = self.ctx.device.comm_key else {
                    return Err(ZkError::Refused(
                        "the terminal has a communication key: set comm_key for this device".into(),
                    ));
                };
                let auth = self.command(cmd::AUTH, codec::comm_key_hash(key, self.session).to_vec()).await?;
                if auth.command == cmd::ACK_OK {
                    Ok(())
                } else {
                    Err(ZkError::Refused("the terminal refused the comm_key: check the device's Comm Key".into()))
                }
            }
            other => Err(ZkError::Refused(format!("CMD_CONNECT refused with reply code {other}"))),
        }
    }

    async fn set_clock(&mut self) -> Result<(), ZkError> {
        let now = jiff::Timestamp::now().to_zoned(self.tz.clone()).datetime();
        let packed = records::pack_time(now).map_err(data_error("the gateway's clock"))?;
        self.command_ok(cmd::SET_TIME, packed.to_le_bytes().to_vec()).await?;
        self.command_ok(cmd::REFRESH_DATA, Vec::new()).await?;
        Ok(())
    }

    /// Reads the table of `command` through the terminal's buffer.
    async fn read_table(&mut self, command: u16, fct: i32) -> Result<Vec<u8>, ZkError> {
        let p = self.command(cmd::PREPARE_BUFFER, records::prepare_buffer(command, fct, 0)).await?;
        match p.command {
            cmd::DATA => return Ok(p.data),
            cmd::ACK_OK => {}
            other => return Err(ZkError::Refused(format!("CMD_PREPARE_BUFFER refused with reply code {other}"))),
        }
        let size = records::prepared_size(&p.data).map_err(data_error("CMD_PREPARE_BUFFER answer"))?;
        if size > MAX_TABLE {
            return Err(ZkError::Refused(format!(
                "the terminal offers a table of {size} bytes, more than {MAX_TABLE}"
            )));
        }
        let mut buffer = Vec::with_capacity(size as usize);
        while (buffer.len() as u32) < size {
            let start = buffer.len() as u32;
            let n = wire::max_chunk(self.endpoint).min(size - start);
            let chunk = self.read_chunk(start, n).await?;
            if chunk.is_empty() {
                return Err(ZkError::Refused(format!("CMD_READ_BUFFER at {start} returned nothing")));
            }
            buffer.extend_from_slice(&chunk[..chunk.len().min((size - start) as usize)]);
        }
        self.command_ok(cmd::FREE_DATA, Vec::new()).await?;
        Ok(buffer)
    }

    async fn read_chunk(&mut self, start: u32, n: u32) -> Result<Vec<u8>, ZkError> {
        let p = self.command(cmd::READ_BUFFER, records::read_buffer(start, n)).await?;
        match p.command {
            cmd::DATA => Ok(p.data),
            cmd::PREPARE_DATA => {
                let want = records::prepared_size(&[&[0u8][..], &p.data].concat())
                    .map_err(data_error("CMD_PREPARE_DATA"))?
                    .min(n) as usize;
                let mut chunk = Vec::with_capacity(want);
                while chunk.len() < want {
                    let part = self.answer("CMD_DATA", None).await?;
                    if part.command != cmd::DATA {
                        return Err(ZkError::Refused(format!("expected CMD_DATA, got reply code {}", part.command)));
                    }
                    chunk.extend_from_slice(&part.data);
                }
                let end = self.answer("CMD_ACK_OK after the data", None).await?;
                if end.command != cmd::ACK_OK {
                    return Err(ZkError::Refused(format!("expected CMD_ACK_OK, got reply code {}", end.command)));
                }
                Ok(chunk)
            }
            other => Err(ZkError::Refused(format!("CMD_READ_BUFFER refused with reply code {other}"))),
        }
    }

    /// The number of records in the terminal's log (and its users, for the status).
    async fn record_count(&mut self) -> Result<u32, ZkError> {
        let sizes = self.command_ok(cmd::GET_FREE_SIZES, Vec::new()).await?;
        let sizes = FreeSizes::parse(&sizes.data).map_err(data_error("CMD_GET_FREE_SIZES answer"))?;
        self.ctx.status.detail(
            self.device(),
            DRIVER,
            format!("{}, {} users, {} records", self.endpoint, sizes.users, sizes.records),
        );
        Ok(sizes.records)
    }

    /// Reads the attendance log and stores what the gateway may not have: on the session's first read, the records
    /// from the latest stored punch of the device on (minus [`LOG_OVERLAP`]); on a later one, the records after those
    /// it has (unless the log shrank: then as on a first read).
    async fn read_log(&mut self) -> Result<(), ZkError> {
        let mut attempt = 0;
        let (layout, parsed, count) = loop {
            let count = self.record_count().await?;
            if count == 0 {
                (self.read_upto, self.seen) = (Some(0), 0);
                return Ok(());
            }
            let buffer = self.read_table(cmd::ATTLOG_RRQ, 0).await?;
            match records::parse_log(&buffer, count) {
                Ok((layout, parsed)) => break (layout, parsed, count),
                // A record made between the count and the read changes the size: read again, once.
                Err(e) if attempt == 0 => {
                    tracing::debug!(device = %self.device(), error = %e, "attendance log changed during the read");
                    attempt += 1;
                }
                Err(e) => {
                    tracing::error!(device = %self.device(), error = %e, "attendance log unreadable; only real-time punches are received");
                    self.ctx.status.error(self.device(), DRIVER, format!("attendance log unreadable: {e}"));
                    (self.read_upto, self.seen) = (Some(count), count);
                    return Ok(());
                }
            }
        };
        let skip = match self.read_upto {
            Some(upto) if upto <= count => upto as usize,
            _ => 0,
        };
        let from = if skip == 0 {
            let latest = self.ctx.history.latest_device_time(self.device()).await.map_err(ZkError::Store)?;
            latest.map(|t| t.saturating_sub(LOG_OVERLAP.as_millis() as i64))
        } else {
            None
        };
        let now = jiff::Timestamp::now().as_millisecond();
        let mut punches = Vec::new();
        for r in parsed.into_iter().skip(skip) {
            match r {
                Ok(r) => {
                    let p = to_punch(self.device(), &r, &self.tz, now, false);
                    if from.is_none_or(|from| p.device_time_ms >= from) {
                        punches.push(p);
                    }
                }
                Err(e) => {
                    tracing::debug!(device = %self.device(), error = %e, "attendance record skipped");
                    self.ctx.sink.count_unparsed(self.device(), "malformed_record");
                }
            }
        }
        let (submitted, mut new) = (punches.len(), 0usize);
        while !punches.is_empty() {
            let rest = punches.split_off(punches.len().min(BATCH));
            let batch = std::mem::replace(&mut punches, rest);
            // Events that arrive meanwhile wait in `events`; they are handled after the read.
            new += self.store(batch).await?;
        }
        (self.read_upto, self.seen) = (Some(count), count);
        tracing::info!(device = %self.device(), ?layout, records = count, submitted, new, "attendance log read");
        Ok(())
    }

    /// Brings the terminal's users to the roster's people (see the module docs, step 5).
    async fn sync_users(&mut self, feed: &mut PeopleFeed) -> Result<(), ZkError> {
        let (Some(people), Some(ledger)) = (feed.people.as_mut(), feed.ledger.clone()) else { return Ok(()) };
        let people = people.borrow_and_update().clone();
        let device = self.device().to_owned();
        let put = ledger.users(&device).map_err(|e| ZkError::Users(e.to_string()))?;
        let table = self.read_table(cmd::USERTEMP_RRQ, records::FCT_USER).await?;
        let users: Vec<records::User> = match records::parse_users(&table) {
            Ok(users) => users.into_iter().filter_map(Result::ok).collect(),
            Err(e) => {
                // Another user format (older firmware): report it, keep the session for punches.
                tracing::error!(device = %device, error = %e, "terminal user table unreadable; roster not pushed");
                self.ctx.status.error(&device, DRIVER, format!("user table unreadable, roster not pushed: {e}"));
                return Ok(());
            }
        };
        let mut next_uid = users.iter().map(|u| u.uid).max().unwrap_or(0);
        let mut changes = 0usize;
        for (pin, person) in people.iter() {
            let card = person.card.as_deref().and_then(|c| c.parse::<u32>().ok()).unwrap_or(0);
            let name = records::terminal_text(&person.name);
            let existing = users.iter().find(|u| u.user_id == records::terminal_text(pin));
            if existing.is_some_and(|u| u.name == name.trim() && u.card == card) {
                if !put.contains_key(pin) {
                    ledger.set_user(&device, pin, Some(person)).map_err(|e| ZkError::Users(e.to_string()))?;
                }
                continue;
            }
            let uid = match existing {
                Some(u) => u.uid,
                None => {
                    next_uid = next_uid
                        .checked_add(1)
                        .filter(|u| *u < u16::MAX)
                        .ok_or_else(|| ZkError::Users("the terminal has no free user number left".into()))?;
                    next_uid
                }
            };
            let privilege = existing.map_or(0, |u| u.privilege);
            let user = records::User { uid, user_id: pin.clone(), name: name.to_owned(), card, privilege };
            self.command_ok(cmd::USER_WRQ, user.encode()).await?;
            ledger.set_user(&device, pin, Some(person)).map_err(|e| ZkError::Users(e.to_string()))?;
            changes += 1;
        }
        for pin in put.keys().filter(|pin| !people.contains_key(*pin)) {
            if let Some(u) = users.iter().find(|u| &u.user_id == pin) {
                self.command_ok(cmd::DELETE_USER, u.uid.to_le_bytes().to_vec()).await?;
                changes += 1;
            }
            ledger.set_user(&device, pin, None).map_err(|e| ZkError::Users(e.to_string()))?;
        }
        if changes > 0 {
            self.command_ok(cmd::REFRESH_DATA, Vec::new()).await?;
            tracing::info!(device = %device, changes, "terminal users brought to the roster");
        }
        ledger.flush().await.map_err(|e| ZkError::Users(e.to_string()))?;
        Ok(())
    }

    /// Submits punches; `Ok(new)` once all are stored (or invalid, which no retry changes).
    async fn store(&self, punches: Vec<DevicePunch>) -> Result<usize, ZkError> {
        let mut new = 0;
        for outcome in self.ctx.sink.submit_many(punches).await {
            match outcome {
                Outcome::Stored { duplicate, .. } => new += usize::from(!duplicate),
                Outcome::Rejected(Rejection::Invalid(reason)) => {
                    tracing::debug!(device = %self.device(), reason = %reason, "attendance record refused");
                }
                Outcome::Rejected(r) => return Err(ZkError::Store(r.to_string())),
            }
        }
        Ok(new)
    }

    /// A real-time event: stored, then acknowledged.
    async fn on_event(&mut self, p: Packet) -> Result<(), ZkError> {
        if p.session == event::ATTLOG {
            match records::parse_event(&p.data) {
                Ok(records) => {
                    self.seen = self.seen.saturating_add(records.len() as u32);
                    let now = jiff::Timestamp::now().as_millisecond();
                    let punches = records.iter().map(|r| to_punch(self.device(), r, &self.tz, now, true)).collect();
                    self.store(punches).await?;
                }
                Err(e) => {
                    // Not counted as seen: the next poll reads the record from the log, where it may be readable.
                    tracing::debug!(device = %self.device(), error = %e, "attendance event skipped");
                    self.ctx.sink.count_unparsed(self.device(), "malformed_event");
                }
            }
        }
        self.send(Packet::new(cmd::ACK_OK, self.session, p.reply, Vec::new())).await
    }
}

#[cfg(test)]
mod tests;
