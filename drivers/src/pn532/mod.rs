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

pub mod codec;
pub mod sim;

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use self::codec::{parse_passive_target, Frame, Pn532Codec, TFI_PN532};
use crate::config::HumanDuration;
use crate::context::{DriverContext, DriverError};
use crate::session::{self, Exchange, Heard, SerialDevice, SessionError, ATTEMPTS};
use crate::sink::{Method, Outcome, Rejection, Subject};
use crate::transport::{Link, Stream};

pub const DRIVER: &str = "pn532";

const GET_FIRMWARE_VERSION: u8 = 0x02;
const SAM_CONFIGURATION: u8 = 0x14;
const RF_CONFIGURATION: u8 = 0x32;
const IN_LIST_PASSIVE_TARGET: u8 = 0x4A;
/// Wakes a PN532 in HSU mode: 0x55 0x55 then enough zero bytes to cover its wake-up time.
const WAKEUP: [u8; 16] = [0x55, 0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

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
    let settings = Settings::from_config(&ctx.device);
    // The presence is kept across reconnects: a card held on the reader while its cable is re-seated is still the
    // same presentation.
    let mut reader = Pn532 { presence: Presence::new(settings.hold_off), settings };
    let (baud, timeout) = (reader.settings.baud, reader.settings.response_timeout);
    session::run(&ctx, DRIVER, baud, timeout, &mut reader).await
}

/// The driver's state across links.
struct Pn532 {
    settings: Settings,
    presence: Presence,
}

impl SerialDevice for Pn532 {
    /// Handshake, then poll until the link fails.
    async fn session(&mut self, ctx: &DriverContext, link: &mut Link, stream: Stream) -> SessionError {
        let mut chip = Exchange::new(stream, Pn532Codec, ctx, self.settings.response_timeout);
        let firmware = match handshake(&mut chip).await {
            Ok(f) => f,
            Err(e) => return e,
        };
        link.online(Some(format!("PN532 firmware {firmware} on {}", link.spec())));
        let mut tick = session::poll_timer(self.settings.poll_interval);
        loop {
            tick.tick().await;
            let answer = match command(&mut chip, IN_LIST_PASSIVE_TARGET, &[0x01, 0x00], "InListPassiveTarget").await {
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
            let Some(card) = self.presence.observe(uid.as_deref(), Instant::now()) else { continue };
            let punch = session::live_punch(ctx, Method::Card, Subject::Credential(card.clone()));
            match ctx.sink.submit(punch).await {
                Outcome::Stored { .. } => self.presence.punched(&card),
                Outcome::Rejected(Rejection::Invalid(reason)) => {
                    tracing::warn!(device = %ctx.device.id, reason, "card punch rejected");
                    self.presence.punched(&card);
                }
                Outcome::Rejected(r) => {
                    if self.presence.retry(&card) == 1 {
                        tracing::warn!(device = %ctx.device.id, reason = %r, "card punch not stored yet; retrying while the card is held");
                    }
                }
            }
        }
    }
}

/// Wakes the chip and configures it; returns its firmware version.
async fn handshake(chip: &mut Exchange<'_, Pn532Codec>) -> Result<String, SessionError> {
    chip.framed.get_mut().write_all(&WAKEUP).await.map_err(SessionError::Write)?;
    command(chip, SAM_CONFIGURATION, &[0x01, 0x14, 0x01], "SAMConfiguration").await?;
    let fw = command(chip, GET_FIRMWARE_VERSION, &[], "GetFirmwareVersion").await?;
    let firmware = match fw.as_slice() {
        [ic, ver, rev, ..] => format!("{ver}.{rev} (IC {ic:#04x})"),
        _ => "unknown".to_owned(),
    };
    // MaxRetries: MxRtyATR default, MxRtyPSL 1, MxRtyPassiveActivation 1 -> "no card" answers come at once.
    command(chip, RF_CONFIGURATION, &[0x05, 0xFF, 0x01, 0x01], "RFConfiguration").await?;
    Ok(firmware)
}

/// Sends a command and returns the response payload (after the response code). An attempt fails on a NACK or an
/// error frame; between attempts an ACK aborts whatever the chip was doing.
async fn command(
    chip: &mut Exchange<'_, Pn532Codec>,
    code: u8,
    params: &[u8],
    name: &'static str,
) -> Result<Vec<u8>, SessionError> {
    chip.command(Frame::command(code, params), Some(Frame::Ack), name, ATTEMPTS, |frame| match frame {
        Frame::Ack => Heard::Ignore,
        Frame::Nack | Frame::Error => Heard::Failed("device_error"),
        Frame::Info { tfi, data } => match data.split_first() {
            Some((&rc, payload)) if tfi == TFI_PN532 && rc == code.wrapping_add(1) => Heard::Answer(payload.to_vec()),
            _ => Heard::Reject("wrong_reply"),
        },
    })
    .await
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
    use super::sim::Pn532Sim;
    use super::*;
    use crate::config::DriverKind;
    use crate::sim::testkit::{device, next_punch, on_tcp, until, Running};
    use crate::sim::Fault;
    use tokio_util::sync::CancellationToken;

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pn532_driver_against_the_simulator() {
        let sim = Pn532Sim::new();
        let s = sim.clone();
        let (port, stop) = on_tcp(move |conn| {
            let s = s.clone();
            async move { s.serve(conn, CancellationToken::new()).await }
        })
        .await;
        let mut dev = device(DriverKind::Pn532, &port);
        dev.hold_off = Some(HumanDuration(Duration::ZERO));
        let mut driver = Running::start(dev, crate::driver::run);
        let (punches, metrics, status) = (&mut driver.punches, driver.metrics.clone(), driver.status.clone());

        sim.present(&[0x04, 0xA1, 0xB2, 0xC3]);
        let p = next_punch(punches).await;
        assert_eq!((p.method, p.subject), (Method::Card, Subject::Credential("04A1B2C3".into())));
        // Held for many polls: still one punch.
        let held = sim.stats().polls_with_card;
        until("polls with the card held", || sim.stats().polls_with_card >= held + 5).await;
        assert!(punches.try_recv().is_err(), "a held card punched twice");
        // Taken away and presented again: a second punch.
        sim.remove();
        let empty = sim.stats().polls_without_card;
        until("a poll without the card", || sim.stats().polls_without_card > empty).await;
        sim.present(&[0x04, 0xA1, 0xB2, 0xC3]);
        assert_eq!(next_punch(punches).await.subject, Subject::Credential("04A1B2C3".into()));

        // Corrupted frames, noise, wrong replies and silence: counted, and the driver carries on.
        sim.remove();
        for fault in [
            Fault::Garbage(b"\x13\x37line noise".to_vec()),
            Fault::CorruptChecksum,
            Fault::WrongReply,
            Fault::Truncate,
            Fault::Silence,
        ] {
            sim.inject(fault);
        }
        let commands = sim.stats().commands;
        until("the faults to be served", || sim.stats().commands >= commands + 8).await;
        sim.present(&[0x08, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66]);
        assert_eq!(next_punch(punches).await.subject, Subject::Credential("08112233445566".into()));
        for reason in ["garbage", "bad_checksum", "wrong_reply"] {
            assert!(metrics.rejected_count("pn532", "dev1", reason) > 0, "{reason} not counted");
        }

        // Unplugged and back: the driver reconnects by itself.
        sim.remove();
        sim.hang_up();
        until("a reconnect", || status.get("dev1").is_some_and(|s| s.reconnects >= 1 && s.online)).await;
        sim.present(&[0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(next_punch(punches).await.subject, Subject::Credential("DEADBEEF".into()));

        driver.stop().await;
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pn532_over_a_pseudo_terminal_survives_unplugging() {
        let dir = std::env::temp_dir().join(format!("drivers-pty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("ttyNFC");
        let sim = Pn532Sim::new();
        let plug = |sim: &Pn532Sim| {
            let port = crate::sim::pty::VirtualPort::open().unwrap();
            port.link_at(&link).unwrap();
            let stop = CancellationToken::new();
            let (s, st) = (sim.clone(), stop.clone());
            tokio::spawn(async move { s.serve(port, st).await });
            stop
        };
        let first = plug(&sim);
        let mut dev = device(DriverKind::Pn532, link.to_str().unwrap());
        dev.hold_off = Some(HumanDuration(Duration::ZERO));
        let mut driver = Running::start(dev, crate::driver::run);
        let (punches, status) = (&mut driver.punches, driver.status.clone());
        sim.present(&[1, 2, 3, 4]);
        assert_eq!(next_punch(punches).await.subject, Subject::Credential("01020304".into()));
        sim.remove();
        first.cancel(); // unplug: the pseudo-terminal closes
        until("offline", || status.get("dev1").is_some_and(|s| !s.online)).await;
        let _second = plug(&sim);
        until("a reconnect", || status.get("dev1").is_some_and(|s| s.reconnects >= 1 && s.online)).await;
        sim.present(&[5, 6, 7, 8]);
        assert_eq!(next_punch(punches).await.subject, Subject::Credential("05060708".into()));
        driver.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
