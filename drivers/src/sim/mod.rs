//! Device simulators: a PN532 NFC reader ([`pn532`], from `crate::pn532::sim`) and an R30x fingerprint module
//! ([`r30x`], from `crate::r30x::sim`) speaking their real wire protocols, and what they share.
//!
//! They serve any byte stream: the master end of a pseudo-terminal ([`pty::VirtualPort`]), whose slave path the gateway
//! opens as a serial port exactly as it would open `/dev/ttyUSB0`, or a TCP connection (as a serial device server would
//! carry it). The end-to-end tests and `gatewayd demo` drive them: present a card, hold it, take it away; place a finger;
//! unplug; inject corrupted frames and line noise. Their state sits behind a `std::sync::Mutex` that is never held
//! across an await.

pub mod pty;
pub mod scenario;

pub use crate::pn532::sim as pn532;
pub use crate::r30x::sim as r30x;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;

/// A fault to put on the wire instead of (or before) the next reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// These bytes go out before the next reply (which is itself intact).
    Garbage(Vec<u8>),
    /// The next reply goes out with a wrong checksum.
    CorruptChecksum,
    /// Only the first half of the next reply goes out.
    Truncate,
    /// The next reply answers the wrong command (PN532: wrong response code; R30x: a data packet instead of an ack).
    WrongReply,
    /// The next command gets no reply at all.
    Silence,
}

impl Fault {
    /// The bytes of an encoded `reply` with `fault` (if any) applied. The checksum byte to corrupt is `checksum_from_end`
    /// bytes before the end; `wrong_reply` encodes an answer to the wrong command.
    pub(crate) fn apply(
        fault: Option<Fault>,
        reply: std::io::Result<Vec<u8>>,
        checksum_from_end: usize,
        wrong_reply: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) -> std::io::Result<Vec<u8>> {
        Ok(match fault {
            None => reply?,
            Some(Fault::Garbage(mut noise)) => {
                noise.extend_from_slice(&reply?);
                noise
            }
            Some(Fault::CorruptChecksum) => {
                let mut bytes = reply?;
                let at = bytes.len().saturating_sub(checksum_from_end);
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= 0x5A;
                }
                bytes
            }
            Some(Fault::Truncate) => {
                let bytes = reply?;
                bytes[..bytes.len() / 2].to_vec()
            }
            Some(Fault::WrongReply) => wrong_reply()?,
            Some(Fault::Silence) => Vec::new(),
        })
    }
}

/// The simulated device's end of its current connection: [`Plug::hang_up`] ends it.
#[derive(Debug, Default)]
pub(crate) struct Plug {
    hangup: CancellationToken,
    /// Connections served so far.
    pub connections: u64,
}

impl Plug {
    /// A new connection: its hang-up token.
    pub fn connect(&mut self) -> CancellationToken {
        self.hangup = CancellationToken::new();
        self.connections += 1;
        self.hangup.clone()
    }

    /// Ends the current connection (as a cable pulled out of a serial server would).
    pub fn hang_up(&self) {
        self.hangup.cancel();
    }
}

/// Serves one link with `codec` until it ends, `stop` or `hangup` fires: every decoded item goes to `answer`, whose
/// bytes (if any) are written back.
pub(crate) async fn serve_frames<S, C>(
    stream: S,
    codec: C,
    stop: CancellationToken,
    hangup: CancellationToken,
    mut answer: impl FnMut(C::Item) -> std::io::Result<Option<Vec<u8>>>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: Decoder<Error = std::io::Error>,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read, codec);
    loop {
        let item = tokio::select! {
            item = frames.next() => item,
            _ = stop.cancelled() => return Ok(()),
            _ = hangup.cancelled() => return Ok(()),
        };
        let item = match item {
            None => return Ok(()),
            Some(item) => item?,
        };
        if let Some(bytes) = answer(item)? {
            write.write_all(&bytes).await?;
            write.flush().await?;
        }
    }
}

/// Accepts TCP connections one at a time (as a serial device server with one serial port does) and serves each with
/// `serve` until `stop` fires.
pub async fn serve_tcp<F, Fut>(listener: TcpListener, stop: CancellationToken, mut serve: F)
where
    F: FnMut(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::select! {
                    _ = serve(stream) => {}
                    _ = stop.cancelled() => return,
                }
            }
            Err(e) => tracing::debug!(error = %e, "simulator accept failed"),
        }
    }
}

pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Test kit: a driver context whose sink stores into memory, and helpers to wait on conditions.
#[cfg(test)]
pub(crate) mod testkit {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use crate::config::{DeviceConfig, DriverKind, HumanDuration};
    use crate::driver::DriverContext;
    use crate::sink::{DevicePunch, Outcome, PunchSink};
    use crate::status::StatusBoard;
    use crate::telemetry::DriverMetrics;

    pub fn device(driver: DriverKind, port: &str) -> DeviceConfig {
        DeviceConfig {
            id: "dev1".into(),
            driver,
            port: Some(port.into()),
            baud: None,
            secret: None,
            serial_number: None,
            poll_interval: Some(HumanDuration(Duration::from_millis(20))),
            hold_off: None,
            min_score: None,
            password: None,
            address: None,
            response_timeout: Some(HumanDuration(Duration::from_millis(200))),
            description: None,
        }
    }

    /// A context whose punches land in the returned receiver, each answered `Stored`.
    pub fn context(device: DeviceConfig) -> (DriverContext, mpsc::UnboundedReceiver<DevicePunch>) {
        let metrics = DriverMetrics::default();
        let (sink, mut rx) = PunchSink::channel(8, metrics.clone());
        let (tx, punches) = mpsc::unbounded_channel();
        let seq = Arc::new(Mutex::new(0u64));
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let mut outcomes = Vec::new();
                for p in req.punches {
                    let n = {
                        let mut s = super::lock(&seq);
                        *s += 1;
                        *s
                    };
                    let _ = tx.send(p);
                    outcomes.push(Outcome::Stored { punch_id: format!("p{n}"), duplicate: false });
                }
                let _ = req.reply.send(outcomes);
            }
        });
        let ctx = DriverContext {
            sink: sink.for_driver(device.driver.as_str()),
            device,
            cancel: CancellationToken::new(),
            metrics: metrics.clone(),
            status: StatusBoard::new(metrics),
            timezone: jiff::tz::TimeZone::UTC,
        };
        (ctx, punches)
    }

    /// Waits (polling) until `cond` holds; panics after 10 s.
    pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The next punch; panics after 10 s.
    pub async fn next_punch(rx: &mut mpsc::UnboundedReceiver<DevicePunch>) -> DevicePunch {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(p)) => p,
            _ => panic!("no punch within 10 s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;

    use super::testkit::{context, device, next_punch, until};
    use super::{pn532::Pn532Sim, r30x, serve_tcp, Fault};
    use crate::config::{DeviceConfig, DriverKind, HumanDuration};
    use crate::driver::DriverError;
    use crate::sink::{DevicePunch, Method, Subject};
    use crate::status::StatusBoard;
    use crate::telemetry::DriverMetrics;

    /// Serves a simulator (`serve`, once per connection) on a loopback TCP port, as a serial device server with one
    /// port does: the `tcp://` port to configure and the token that stops it.
    async fn on_tcp<F, Fut>(serve: F) -> (String, CancellationToken)
    where
        F: FnMut(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = format!("tcp://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(serve_tcp(listener, stop.clone(), serve));
        (port, stop)
    }

    /// A driver task under test, and what the test watches of it.
    struct Running {
        punches: mpsc::UnboundedReceiver<DevicePunch>,
        metrics: DriverMetrics,
        status: StatusBoard,
        cancel: CancellationToken,
        task: JoinHandle<Result<(), DriverError>>,
    }

    fn start(dev: DeviceConfig) -> Running {
        let (ctx, punches) = context(dev);
        let (metrics, status, cancel) = (ctx.metrics.clone(), ctx.status.clone(), ctx.cancel.clone());
        Running { punches, metrics, status, cancel, task: tokio::spawn(crate::driver::run(ctx)) }
    }

    impl Running {
        /// Cancels the driver; it must end cleanly.
        async fn stop(self) {
            self.cancel.cancel();
            assert!(self.task.await.unwrap().is_ok());
        }
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
        let mut driver = start(dev);
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
    async fn r30x_driver_against_the_simulator() {
        let sim = r30x::R30xSim::new(r30x::Model::R503).with_password(0x0000_1234);
        let s = sim.clone();
        let (port, stop) = on_tcp(move |conn| {
            let s = s.clone();
            async move { s.serve(conn, CancellationToken::new()).await }
        })
        .await;
        let mut dev = device(DriverKind::R30x, &port);
        dev.password = Some(0x1234);
        dev.min_score = Some(60);
        let mut driver = start(dev);
        let (punches, metrics, status) = (&mut driver.punches, driver.metrics.clone(), driver.status.clone());

        until("the module online", || status.get("dev1").is_some_and(|s| s.online)).await;
        sim.place_finger(7, 120);
        let p = next_punch(punches).await;
        assert_eq!((p.method, p.subject.clone()), (Method::Fingerprint, Subject::Credential("fp:7".into())));
        assert_eq!(p.score, Some(120.0));
        until("the green LED", || sim.leds().last() == Some(&r30x::color::GREEN)).await;
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
        until("the red LED", || sim.leds().last() == Some(&r30x::color::RED)).await;
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
        let sim = r30x::R30xSim::new(r30x::Model::R307).with_password(42);
        let (port, stop) = on_tcp(move |conn| {
            let s = sim.clone();
            async move { s.serve(conn, CancellationToken::new()).await }
        })
        .await;
        let mut dev = device(DriverKind::R30x, &port);
        dev.password = Some(41);
        let driver = start(dev);
        let status = driver.status.clone();
        until("the password error", || {
            status.get("dev1").and_then(|s| s.last_error).is_some_and(|e| e.contains("password"))
        })
        .await;
        assert!(!status.get("dev1").is_some_and(|s| s.online));
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
            let port = super::pty::VirtualPort::open().unwrap();
            port.link_at(&link).unwrap();
            let stop = CancellationToken::new();
            let (s, st) = (sim.clone(), stop.clone());
            tokio::spawn(async move { s.serve(port, st).await });
            stop
        };
        let first = plug(&sim);
        let mut dev = device(DriverKind::Pn532, link.to_str().unwrap());
        dev.hold_off = Some(HumanDuration(Duration::ZERO));
        let mut driver = start(dev);
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
