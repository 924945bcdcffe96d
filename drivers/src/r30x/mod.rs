//! The R307/R503 fingerprint module driver (SPEC 3.3): the gateway asks the module for an image, a template and a search
//! of its library, and turns each identified finger into one `fingerprint` punch with credential `fp:{page}`.
//!
//! Per link: VfyPwd when a password is configured, ReadSysPara (library capacity for Search, and a check that the
//! module answers at its address), then a probe of AuraLedConfig (R503-family modules light their ring; R307 modules
//! refuse it and get no LED feedback). Then every `poll_interval`: GenImg → Img2Tz(1) → Search(1, 0, capacity).
//!
//! - "no finger" is quiet: no log, no count; it also marks the finger as lifted.
//! - Image errors (GenImg failed, Img2Tz found too few features or a disorderly image) are counted as
//!   `reason="image_error"`, never logged per poll.
//! - A finger is identified once per placement: after a match (or a refusal) the driver waits for "no finger" first.
//! - A match below `min_score` is refused (`reason="low_score"`), an unknown finger too (`reason="no_match"`); both light
//!   the LED red.
//! - A match becomes a punch; the LED turns green only after the sink says it is durable, red if it was rejected.
//!
//! Errors: checksum errors, truncated packets, noise, packets for another address and replies of the wrong shape
//! (the module's acks carry no instruction code, so the shape is what identifies the reply) are counted and skipped;
//! a command without a usable answer is retried up to three times, then the link is reopened with backoff.
//!
//! Cancel-safety: as for the PN532 driver, the task may be dropped at any await; a submitted punch is stored regardless,
//! and the only thing lost is the LED acknowledgement.

pub mod codec;
pub mod sim;

use std::time::Duration;

use self::codec::{cmd, confirm, Packet, R30xCodec, DEFAULT_ADDRESS, PID_ACK};
use crate::config::HumanDuration;
use crate::context::{DriverContext, DriverError};
use crate::session::{self, Exchange, Heard, SerialDevice, SessionError, ATTEMPTS};
use crate::sink::{Method, Outcome, Subject};
use crate::transport::{Link, Stream};

pub const DRIVER: &str = "r30x";

const LED_FLASH: u8 = 0x02;
const LED_OFF: u8 = 0x04;
const LED_RED: u8 = 0x01;
const LED_GREEN: u8 = 0x04;

/// The driver's settings from its `[[device]]` entry.
#[derive(Clone, Debug)]
pub struct Settings {
    pub baud: u32,
    pub poll_interval: Duration,
    pub response_timeout: Duration,
    pub min_score: u16,
    pub password: Option<u32>,
    pub address: u32,
}

impl Settings {
    pub fn from_config(device: &crate::config::DeviceConfig) -> Settings {
        Settings {
            baud: device.baud.unwrap_or(57_600),
            poll_interval: device.poll_interval.map_or(Duration::from_millis(200), |HumanDuration(d)| d),
            response_timeout: device.response_timeout.map_or(Duration::from_secs(1), |HumanDuration(d)| d),
            min_score: device.min_score.unwrap_or(50),
            password: device.password,
            address: device.address.unwrap_or(DEFAULT_ADDRESS),
        }
    }
}

/// Runs the driver until cancelled, reopening the link whenever it is lost.
pub async fn run(ctx: DriverContext) -> Result<(), DriverError> {
    let mut driver = R30x(Settings::from_config(&ctx.device));
    let (baud, timeout) = (driver.0.baud, driver.0.response_timeout);
    session::run(&ctx, DRIVER, baud, timeout, &mut driver).await
}

/// What one poll found.
#[derive(Debug, PartialEq, Eq)]
enum Poll {
    NoFinger,
    /// The finger identified last is still on the sensor.
    Held,
    ImageError,
    NoMatch,
    Match {
        page: u16,
        score: u16,
    },
}

/// The driver: its settings (nothing else lives across links).
struct R30x(Settings);

impl SerialDevice for R30x {
    /// Handshake, then poll until the link fails.
    async fn session(&mut self, ctx: &DriverContext, link: &mut Link, stream: Stream) -> SessionError {
        let settings = &self.0;
        let mut module = Module {
            port: Exchange::new(stream, R30xCodec, ctx, settings.response_timeout),
            address: settings.address,
            capacity: 0,
            led: false,
        };
        match module.handshake(settings.password).await {
            Ok(detail) => link.online(Some(format!("{detail} on {}", link.spec()))),
            Err(e) => return e,
        }
        let device = &ctx.device.id;
        let mut tick = session::poll_timer(settings.poll_interval);
        // True once the module has reported "no finger" since the last identification.
        let mut lifted = true;
        loop {
            tick.tick().await;
            let found = match module.poll(lifted).await {
                Ok(f) => f,
                Err(e) => return e,
            };
            ctx.status.seen(device, DRIVER);
            let colour = match found {
                Poll::NoFinger => {
                    lifted = true;
                    continue;
                }
                Poll::Held => continue,
                Poll::ImageError => {
                    ctx.sink.count_unparsed(device, "image_error");
                    continue;
                }
                Poll::NoMatch => {
                    lifted = false;
                    ctx.sink.count_unparsed(device, "no_match");
                    LED_RED
                }
                Poll::Match { score, .. } if score < settings.min_score => {
                    lifted = false;
                    ctx.sink.count_unparsed(device, "low_score");
                    LED_RED
                }
                Poll::Match { page, score } => {
                    lifted = false;
                    let mut punch =
                        session::live_punch(ctx, Method::Fingerprint, Subject::Credential(format!("fp:{page}")));
                    punch.score = Some(f32::from(score));
                    punch.attributes = vec![("page".into(), page.to_string())];
                    match ctx.sink.submit(punch).await {
                        Outcome::Stored { .. } => LED_GREEN,
                        Outcome::Rejected(r) => {
                            tracing::warn!(device = %device, reason = %r, "fingerprint punch rejected");
                            LED_RED
                        }
                    }
                }
            };
            if let Err(e) = module.led(colour).await {
                return e;
            }
        }
    }
}

/// One open link to the module, and what its handshake found.
struct Module<'a> {
    port: Exchange<'a, R30xCodec>,
    address: u32,
    capacity: u16,
    led: bool,
}

impl Module<'_> {
    /// Verifies the password, reads the system parameters and probes the LED ring; returns a status line.
    async fn handshake(&mut self, password: Option<u32>) -> Result<String, SessionError> {
        if let Some(password) = password {
            let reply = self.command(cmd::VFY_PWD, &password.to_be_bytes(), 1, "VfyPwd", ATTEMPTS).await?;
            if reply.first() != Some(&confirm::OK) {
                return Err(SessionError::Refused(format!(
                    "the module refused the configured password (confirmation code {:#04x})",
                    reply.first().copied().unwrap_or(0)
                )));
            }
        }
        let para = self.command(cmd::READ_SYS_PARA, &[], 17, "ReadSysPara", ATTEMPTS).await?;
        if para[0] != confirm::OK {
            return Err(SessionError::Refused(format!("ReadSysPara answered confirmation code {:#04x}", para[0])));
        }
        self.capacity = u16::from_be_bytes([para[5], para[6]]).max(1);
        let level = u16::from_be_bytes([para[7], para[8]]);
        // One attempt: a module without a LED ring may not answer at all.
        self.led = match self.command(cmd::AURA_LED_CONFIG, &[LED_OFF, 0, 0, 0], 1, "AuraLedConfig", 1).await {
            Ok(reply) => reply[0] == confirm::OK,
            Err(SessionError::NoAnswer { .. }) => false,
            Err(e) => return Err(e),
        };
        Ok(format!(
            "fingerprint module, library of {} templates, security level {level}{}",
            self.capacity,
            if self.led { ", LED ring" } else { "" }
        ))
    }

    /// GenImg, and unless the finger has not been lifted since the last identification, Img2Tz and Search.
    async fn poll(&mut self, lifted: bool) -> Result<Poll, SessionError> {
        let gen = self.command(cmd::GEN_IMG, &[], 1, "GenImg", ATTEMPTS).await?;
        match gen[0] {
            confirm::OK => {}
            confirm::NO_FINGER => return Ok(Poll::NoFinger),
            _ => return Ok(Poll::ImageError),
        }
        if !lifted {
            return Ok(Poll::Held);
        }
        let tz = self.command(cmd::IMG_2_TZ, &[0x01], 1, "Img2Tz", ATTEMPTS).await?;
        if tz[0] != confirm::OK {
            return Ok(Poll::ImageError);
        }
        let [hi, lo] = self.capacity.to_be_bytes();
        let found = self.command(cmd::SEARCH, &[0x01, 0x00, 0x00, hi, lo], 1, "Search", ATTEMPTS).await?;
        match found.as_slice() {
            [confirm::OK, p1, p2, s1, s2, ..] => {
                Ok(Poll::Match { page: u16::from_be_bytes([*p1, *p2]), score: u16::from_be_bytes([*s1, *s2]) })
            }
            [confirm::OK, ..] => {
                self.port.ctx.sink.count_unparsed(&self.port.ctx.device.id, "wrong_reply");
                Ok(Poll::ImageError)
            }
            [confirm::NO_MATCH, ..] => Ok(Poll::NoMatch),
            _ => Ok(Poll::ImageError),
        }
    }

    /// Flashes the LED ring in `colour`, where the module has one.
    async fn led(&mut self, colour: u8) -> Result<(), SessionError> {
        if !self.led {
            return Ok(());
        }
        // A lost LED acknowledgement is not worth a retry; the link itself must still work.
        match self.command(cmd::AURA_LED_CONFIG, &[LED_FLASH, 0x20, colour, 0x02], 1, "AuraLedConfig", 1).await {
            Ok(_) | Err(SessionError::NoAnswer { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends a command and returns the acknowledge payload from our module (confirmation code first, at least `min_len`
    /// bytes). The module's acks carry no instruction code, so the reply's shape is what identifies it: a success must
    /// carry the command's data, an error code alone is a complete answer.
    async fn command(
        &mut self,
        code: u8,
        params: &[u8],
        min_len: usize,
        name: &'static str,
        attempts: u32,
    ) -> Result<Vec<u8>, SessionError> {
        let address = self.address;
        self.port
            .command(Packet::command(address, code, params), None, name, attempts, |p| {
                if p.address != address {
                    Heard::Reject("wrong_address")
                } else if p.pid == PID_ACK
                    && !p.payload.is_empty()
                    && (p.payload.len() >= min_len || p.payload[0] != confirm::OK)
                {
                    let mut payload = p.payload;
                    payload.resize(payload.len().max(min_len), 0);
                    Heard::Answer(payload)
                } else {
                    Heard::Reject("wrong_reply")
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::sim::{color, Model, R30xSim};
    use crate::config::DriverKind;
    use crate::sim::testkit::{device, next_punch, on_tcp, until, Running};
    use crate::sim::Fault;
    use crate::sink::{Method, Subject};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r30x_driver_against_the_simulator() {
        let sim = R30xSim::new(Model::R503).with_password(0x0000_1234);
        let s = sim.clone();
        let (port, stop) = on_tcp(move |conn| {
            let s = s.clone();
            async move { s.serve(conn, CancellationToken::new()).await }
        })
        .await;
        let mut dev = device(DriverKind::R30x, &port);
        dev.password = Some(0x1234);
        dev.min_score = Some(60);
        let mut driver = Running::start(dev, crate::driver::run);
        let (punches, metrics, status) = (&mut driver.punches, driver.metrics.clone(), driver.status.clone());

        until("the module online", || status.get("dev1").is_some_and(|s| s.online)).await;
        sim.place_finger(7, 120);
        let p = next_punch(punches).await;
        assert_eq!((p.method, p.subject.clone()), (Method::Fingerprint, Subject::Credential("fp:7".into())));
        assert_eq!(p.score, Some(120.0));
        until("the green LED", || sim.leds().last() == Some(&color::GREEN)).await;
        // Held: one punch.
        let polls = sim.stats().polls;
        until("polls with the finger held", || sim.stats().polls >= polls + 5).await;
        assert!(punches.try_recv().is_err(), "a held finger punched twice");

        // An unknown finger and a weak match: no punch, red LED, counted.
        sim.lift();
        let polls = sim.stats().polls;
        until("the finger lifted", || sim.stats().polls > polls + 1).await;
        sim.place_unknown_finger();
        until("no_match counted", || metrics.rejected_count("r30x", "dev1", "no_match") == 1).await;
        until("the red LED", || sim.leds().last() == Some(&color::RED)).await;
        sim.lift();
        let polls = sim.stats().polls;
        until("the finger lifted", || sim.stats().polls > polls + 1).await;
        sim.place_finger(9, 30);
        until("low_score counted", || metrics.rejected_count("r30x", "dev1", "low_score") == 1).await;
        sim.lift();

        // Bad images are counted; line noise and corrupted packets too; then a good finger still punches.
        let polls = sim.stats().polls;
        until("the finger lifted", || sim.stats().polls > polls + 1).await;
        for fault in [Fault::Garbage(vec![0x55; 9]), Fault::CorruptChecksum, Fault::WrongReply, Fault::Truncate] {
            sim.inject(fault);
        }
        let commands = sim.stats().commands;
        until("the faults to be served", || sim.stats().commands >= commands + 6).await;
        sim.image_errors(3);
        sim.place_finger(7, 120);
        assert_eq!(next_punch(punches).await.subject, Subject::Credential("fp:7".into()));
        assert_eq!(metrics.rejected_count("r30x", "dev1", "image_error"), 3);
        for reason in ["garbage", "bad_checksum", "wrong_reply"] {
            assert!(metrics.rejected_count("r30x", "dev1", reason) > 0, "{reason} not counted");
        }

        // Hang up: reconnect (password verified again) and carry on.
        sim.lift();
        sim.hang_up();
        until("a reconnect", || status.get("dev1").is_some_and(|s| s.reconnects >= 1 && s.online)).await;
        sim.place_finger(3, 200);
        assert_eq!(next_punch(punches).await.subject, Subject::Credential("fp:3".into()));

        driver.stop().await;
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r30x_wrong_password_is_reported() {
        let sim = R30xSim::new(Model::R307).with_password(42);
        let (port, stop) = on_tcp(move |conn| {
            let s = sim.clone();
            async move { s.serve(conn, CancellationToken::new()).await }
        })
        .await;
        let mut dev = device(DriverKind::R30x, &port);
        dev.password = Some(41);
        let driver = Running::start(dev, crate::driver::run);
        let status = driver.status.clone();
        until("the password error", || {
            status.get("dev1").and_then(|s| s.last_error).is_some_and(|e| e.contains("password"))
        })
        .await;
        assert!(!status.get("dev1").is_some_and(|s| s.online));
        driver.stop().await;
        stop.cancel();
    }
}
