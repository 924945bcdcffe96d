//! What the device simulators share. The simulators themselves live with their drivers: a PN532 NFC reader
//! (`crate::pn532::sim`) and an R30x fingerprint module (`crate::r30x::sim`), speaking their real wire protocols.
//!
//! They serve any byte stream: the master end of a pseudo-terminal ([`pty::VirtualPort`]), whose slave path the gateway
//! opens as a serial port exactly as it would open `/dev/ttyUSB0`, or a TCP connection (as a serial device server would
//! carry it). The end-to-end tests and `gatewayd demo` drive them: present a card, hold it, take it away; place a finger;
//! unplug; inject corrupted frames and line noise. Their state sits behind a `std::sync::Mutex` that is never held
//! across an await.

pub mod pty;

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

    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    use crate::config::{DeviceConfig, DriverKind, HumanDuration};
    use crate::context::{DriverContext, DriverError};
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
            allow_from: None,
            poll_interval: Some(HumanDuration(Duration::from_millis(20))),
            hold_off: None,
            min_score: None,
            password: None,
            address: None,
            response_timeout: Some(HumanDuration(Duration::from_millis(200))),
            comm_key: None,
            timezone: None,
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
            history: crate::history::History::default(),
            people: crate::people::PeopleFeed::default(),
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

    /// Serves a simulator (`serve`, once per connection) on a loopback TCP port, as a serial device server with one
    /// port does: the `tcp://` port to configure and the token that stops it.
    pub async fn on_tcp<F, Fut>(serve: F) -> (String, CancellationToken)
    where
        F: FnMut(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = format!("tcp://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(super::serve_tcp(listener, stop.clone(), serve));
        (port, stop)
    }

    /// A driver task under test, and what the test watches of it.
    pub struct Running {
        pub punches: mpsc::UnboundedReceiver<DevicePunch>,
        pub metrics: DriverMetrics,
        pub status: StatusBoard,
        cancel: CancellationToken,
        task: JoinHandle<Result<(), DriverError>>,
    }

    impl Running {
        /// Runs the driver task `run` for `dev` with a [`context`].
        pub fn start<Fut>(dev: DeviceConfig, run: impl FnOnce(DriverContext) -> Fut) -> Running
        where
            Fut: std::future::Future<Output = Result<(), DriverError>> + Send + 'static,
        {
            let (ctx, punches) = context(dev);
            let (metrics, status, cancel) = (ctx.metrics.clone(), ctx.status.clone(), ctx.cancel.clone());
            Running { punches, metrics, status, cancel, task: tokio::spawn(run(ctx)) }
        }

        /// Cancels the driver; it must end cleanly.
        pub async fn stop(self) {
            self.cancel.cancel();
            assert!(self.task.await.unwrap().is_ok());
        }
    }
}
