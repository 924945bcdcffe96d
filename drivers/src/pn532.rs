//! The PN532 NFC reader driver (SPEC 3.3): the gateway polls the reader and turns each card presentation into one punch.
//!
//! Per link: wake the chip from its HSU low-power state (a long `55 55 00..` preamble), SAMConfiguration (normal mode),
//! GetFirmwareVersion (device status detail), RFConfiguration MaxRetries (so InListPassiveTarget answers "no card" at
//! once instead of waiting for one), then InListPassiveTarget every `poll_interval`. The card UID in upper-case hex is the
//! credential of a `card` punch.
//!
//! A card held on the reader is one punch: [`Presence`] remembers the card until it has been absent for `hold_off`
//! (absence means an explicit "no card" answer; a lost or garbled answer is no information). The presentation counts as
//! punched only once the sink says the punch is durable; a punch the store could not take for now (full, failing, shutting
//! down) is submitted again on the next poll while the card is still there.
//!
//! Errors: frames with bad checksums, truncated frames, line noise and answers to the wrong command are counted
//! (`gatewayd_punches_rejected_total{reason=...}`) and skipped; the codec resynchronises on the next start code. A
//! command without a usable answer is retried (after an ACK that aborts whatever the chip was doing) up to three times;
//! then the link is considered lost and reopened with backoff.
//!
//! Cancel-safety: the task may be dropped at any await. The only effect that matters, a submitted punch, is cancel-safe
//! in the sink (it is stored even if nobody waits for the outcome); a half-written command frame is discarded by the
//! chip's checksum check when the link is reopened.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::codec::Framed;

use crate::codec::pn532::{parse_passive_target, Frame, Pn532Codec, TFI_PN532};
use crate::config::HumanDuration;
use crate::driver::{DriverContext, DriverError};
use crate::sink::{DevicePunch, Method, Outcome, Rejection, Subject};
use crate::transport::{Link, SessionError, Stream};

pub const DRIVER: &str = "pn532";

const GET_FIRMWARE_VERSION: u8 = 0x02;
const SAM_CONFIGURATION: u8 = 0x14;
const RF_CONFIGURATION: u8 = 0x32;
const IN_LIST_PASSIVE_TARGET: u8 = 0x4A;
/// Wakes a PN532 in HSU mode: 0x55 0x55 then enough zero bytes to cover its wake-up time.
const WAKEUP: [u8; 16] = [0x55, 0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const ATTEMPTS: u32 = 3;

/// The driver's settings from its `[[device]]` entry.
#[derive(Clone, Debug)]
pub struct Settings {
    pub baud: u32,
    pub poll_interval: Duration,
    pub hold_off: Duration,
    pub response_timeout: Duration,
}

impl Settings {
    pub fn from_config(device: &crate::config::DeviceConfig) -> Settings {
        Settings {
            baud: device.baud.unwrap_or(115_200),
            poll_interval: device.poll_interval.map_or(Duration::from_millis(200), |HumanDuration(d)| d),
            hold_off: device.hold_off.map_or(Duration::from_secs(2), |HumanDuration(d)| d),
            response_timeout: device.response_timeout.map_or(Duration::from_secs(1), |HumanDuration(d)| d),
        }
    }
}

/// Runs the driver until cancelled, reopening the link whenever it is lost.
pub async fn run(ctx: DriverContext) -> Result<(), DriverError> {
    let spec = ctx.device.port_spec().ok_or_else(|| DriverError::Device {
        device: ctx.device.id.clone(),
        message: "no valid `port` configured".into(),
    })?;
    let settings = Settings::from_config(&ctx.device);
    let connect_timeout = settings.response_timeout.max(Duration::from_secs(3));
    let mut link = Link::new(spec, settings.baud, connect_timeout, &ctx.device.id, DRIVER, ctx.status.clone());
    // Kept across reconnects: a card held on the reader while its cable is re-seated is still the same presentation.
    let mut presence = Presence::new(settings.hold_off);
    loop {
        let Some(stream) = link.connect(&ctx.cancel).await else { return Ok(()) };
        let started = Instant::now();
        let ended = tokio::select! {
            e = session(&ctx, &settings, &mut link, &mut presence, stream) => e,
            _ = ctx.cancel.cancelled() => return Ok(()),
        };
        link.lost(&ended.to_string(), started.elapsed());
    }
}

/// One open link: handshake, then poll until the link fails. Returns why it ended.
pub async fn session(
    ctx: &DriverContext,
    settings: &Settings,
    link: &mut Link,
    presence: &mut Presence,
    stream: Stream,
) -> SessionError {
    let mut reader = Reader { framed: Framed::new(stream, Pn532Codec), ctx, timeout: settings.response_timeout };
    let firmware = match reader.handshake().await {
        Ok(f) => f,
        Err(e) => return e,
    };
    link.online(Some(format!("PN532 firmware {firmware} on {}", link.spec())));
    let mut tick = tokio::time::interval(settings.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let answer = match reader.command(IN_LIST_PASSIVE_TARGET, &[0x01, 0x00], "InListPassiveTarget").await {
            Ok(a) => a,
            Err(e) => return e,
        };
        ctx.status.seen(&ctx.device.id, DRIVER);
        let uid = match parse_passive_target(&answer) {
            Ok(uid) => uid.map(hex::encode_upper),
            Err(_) => {
                ctx.sink.count_unparsed(&ctx.device.id, "bad_reply");
                continue;
            }
        };
        let Some(card) = presence.observe(uid.as_deref(), Instant::now()) else { continue };
        let now = jiff::Timestamp::now().as_millisecond();
        let punch = DevicePunch {
            device_id: ctx.device.id.clone(),
            device_seq: None,
            method: Method::Card,
            subject: Subject::Credential(card.clone()),
            device_time_ms: now,
            received_time_ms: now,
            realtime: true,
            geo: None,
            score: None,
            attributes: Vec::new(),
        };
        match ctx.sink.submit(punch).await {
            Outcome::Stored { .. } => presence.punched(&card),
            Outcome::Rejected(Rejection::Invalid(reason)) => {
                tracing::warn!(device = %ctx.device.id, reason, "card punch rejected");
                presence.punched(&card);
            }
            Outcome::Rejected(r) => {
                if presence.retry(&card) == 1 {
                    tracing::warn!(device = %ctx.device.id, reason = %r, "card punch not stored yet; retrying while the card is held");
                }
            }
        }
    }
}

struct Reader<'a> {
    framed: Framed<Stream, Pn532Codec>,
    ctx: &'a DriverContext,
    timeout: Duration,
}

impl Reader<'_> {
    /// Wakes the chip and configures it; returns its firmware version.
    async fn handshake(&mut self) -> Result<String, SessionError> {
        self.framed.get_mut().write_all(&WAKEUP).await.map_err(SessionError::write)?;
        self.command(SAM_CONFIGURATION, &[0x01, 0x14, 0x01], "SAMConfiguration").await?;
        let fw = self.command(GET_FIRMWARE_VERSION, &[], "GetFirmwareVersion").await?;
        let firmware = match fw.as_slice() {
            [ic, ver, rev, ..] => format!("{ver}.{rev} (IC {ic:#04x})"),
            _ => "unknown".to_owned(),
        };
        // MaxRetries: MxRtyATR default, MxRtyPSL 1, MxRtyPassiveActivation 1 -> "no card" answers come at once.
        self.command(RF_CONFIGURATION, &[0x05, 0xFF, 0x01, 0x01], "RFConfiguration").await?;
        Ok(firmware)
    }

    /// Sends a command and returns the response payload (after the response code). Retries a few times; a command that
    /// never gets a usable answer ends the session.
    async fn command(&mut self, code: u8, params: &[u8], name: &'static str) -> Result<Vec<u8>, SessionError> {
        for _ in 0..ATTEMPTS {
            self.framed.send(Frame::command(code, params)).await.map_err(SessionError::write)?;
            if let Some(answer) = self.answer(code).await? {
                return Ok(answer);
            }
            // Abort whatever the chip is doing and drop any half frame before trying again.
            self.framed.read_buffer_mut().clear();
            self.framed.send(Frame::Ack).await.map_err(SessionError::write)?;
        }
        Err(SessionError::NoAnswer { command: name, attempts: ATTEMPTS, timeout: self.timeout })
    }

    /// Waits for the response to `code`. `None` when this attempt failed (timeout, NACK, error frame).
    async fn answer(&mut self, code: u8) -> Result<Option<Vec<u8>>, SessionError> {
        let deadline = Instant::now() + self.timeout;
        let device = &self.ctx.device.id;
        loop {
            let item = match tokio::time::timeout_at(deadline, self.framed.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err(SessionError::Closed),
                Ok(Some(Err(e))) => return Err(SessionError::read(e)),
                Ok(Some(Ok(item))) => item,
            };
            match item {
                Err(bad) => self.ctx.sink.count_unparsed(device, bad.label()),
                Ok(Frame::Ack) => {}
                Ok(Frame::Nack) | Ok(Frame::Error) => {
                    self.ctx.sink.count_unparsed(device, "device_error");
                    return Ok(None);
                }
                Ok(Frame::Info { tfi, data }) => match data.split_first() {
                    Some((&rc, payload)) if tfi == TFI_PN532 && rc == code.wrapping_add(1) => {
                        return Ok(Some(payload.to_vec()))
                    }
                    _ => self.ctx.sink.count_unparsed(device, "wrong_reply"),
                },
            }
        }
    }
}

/// Which card is on the reader, and whether its presentation has been punched. Pure: time is a parameter.
#[derive(Debug)]
pub struct Presence {
    hold_off: Duration,
    current: Option<Seen>,
}

#[derive(Debug)]
struct Seen {
    uid: String,
    absent_since: Option<Instant>,
    punched: bool,
    retries: u32,
}

impl Presence {
    pub fn new(hold_off: Duration) -> Presence {
        Presence { hold_off, current: None }
    }

    /// A poll answered with `uid` on the reader (or none). Returns the card to punch when this is a presentation that
    /// has not been punched yet.
    pub fn observe(&mut self, uid: Option<&str>, now: Instant) -> Option<String> {
        match uid {
            None => {
                if let Some(seen) = &mut self.current {
                    let since = *seen.absent_since.get_or_insert(now);
                    if now.duration_since(since) >= self.hold_off {
                        self.current = None;
                    }
                }
                None
            }
            Some(uid) => {
                if let Some(seen) = self.current.as_mut().filter(|s| s.uid == uid) {
                    seen.absent_since = None;
                    return (!seen.punched).then(|| uid.to_owned());
                }
                self.current = Some(Seen { uid: uid.to_owned(), absent_since: None, punched: false, retries: 0 });
                Some(uid.to_owned())
            }
        }
    }

    /// The presentation of `uid` is done (durable, or refused for good).
    pub fn punched(&mut self, uid: &str) {
        if let Some(seen) = self.current.as_mut().filter(|s| s.uid == uid) {
            seen.punched = true;
        }
    }

    /// The punch of `uid` must be tried again; returns how many retries this presentation has had.
    pub fn retry(&mut self, uid: &str) -> u32 {
        match self.current.as_mut().filter(|s| s.uid == uid) {
            Some(seen) => {
                seen.retries += 1;
                seen.retries
            }
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_card_is_one_punch_and_a_new_presentation_another() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut p = Presence::new(Duration::from_millis(500));
        assert_eq!(p.observe(Some("04A1"), ms(0)).as_deref(), Some("04A1"));
        p.punched("04A1");
        for n in 1..20 {
            assert_eq!(p.observe(Some("04A1"), ms(n * 100)), None);
        }
        // Away briefly (shorter than hold_off): same presentation.
        assert_eq!(p.observe(None, ms(2000)), None);
        assert_eq!(p.observe(Some("04A1"), ms(2300)), None);
        // Away for hold_off: presented again is a new punch.
        assert_eq!(p.observe(None, ms(2400)), None);
        assert_eq!(p.observe(None, ms(2900)), None);
        assert_eq!(p.observe(Some("04A1"), ms(3000)).as_deref(), Some("04A1"));
        // A different card at once is a new punch.
        p.punched("04A1");
        assert_eq!(p.observe(Some("BEEF"), ms(3100)).as_deref(), Some("BEEF"));
    }

    #[test]
    fn an_unstored_punch_is_retried_while_the_card_is_held() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::ZERO);
        assert!(p.observe(Some("CAFE"), t0).is_some());
        assert_eq!(p.retry("CAFE"), 1);
        assert!(p.observe(Some("CAFE"), t0).is_some());
        p.punched("CAFE");
        assert!(p.observe(Some("CAFE"), t0).is_none());
        // hold_off zero: the first "no card" answer ends the presentation.
        assert!(p.observe(None, t0).is_none());
        assert!(p.observe(Some("CAFE"), t0).is_some());
    }
}
