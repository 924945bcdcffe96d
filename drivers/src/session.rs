//! What the polled serial drivers ([`crate::pn532`], [`crate::r30x`]) share: the reconnecting run loop, the
//! command/answer exchange over a framed link with retries, the poll tick and the punch they submit.
//!
//! A serial driver is a [`SerialDevice`]: given an open byte stream, its `session` runs the device's handshake and then
//! polls until the link fails, and returns why. [`run`] opens the link through [`Link`] (backoff, status, reconnects),
//! runs one session per open link and reopens it when the session ends, until the driver is cancelled.
//!
//! Inside a session, [`Exchange`] sends a command frame and waits for its answer within the response timeout. Every
//! decoded item goes to the driver's `hear` function, which says whether it is the answer ([`Heard::Answer`]), something
//! to count and skip ([`Heard::Reject`]), a refusal that ends this attempt ([`Heard::Failed`]), or nothing at all
//! ([`Heard::Ignore`]). Frames the codec could not decode are counted under their error's label, and skipped. A command
//! without a usable answer is tried again (after the device's abort frame, where it has one) and, after its last
//! attempt, ends the session with [`SessionError::NoAnswer`].
//!
//! Cancel-safety: as for the drivers, any await may be the last; a command frame cut in half is discarded by the
//! device's checksum check when the link is reopened.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::time::{Instant, Interval};
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::context::{DriverContext, DriverError};
use crate::framing::FrameFault;
use crate::sink::{DevicePunch, Method, Subject};
use crate::transport::{Link, Stream};

/// How many times a serial driver sends a command before it gives the link up.
pub const ATTEMPTS: u32 = 3;

/// Why an open link stopped working. The driver reopens it with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the device closed the link")]
    Closed,
    #[error("read from the device: {0}")]
    Read(#[source] std::io::Error),
    #[error("write to the device: {0}")]
    Write(#[source] std::io::Error),
    #[error("no usable answer to {command} in {attempts} attempts of {timeout:?}")]
    NoAnswer { command: &'static str, attempts: u32, timeout: Duration },
    #[error("{0}")]
    Refused(String),
}

/// A driver that polls a device over a byte stream. Its state lives as long as the driver task (across reconnects).
pub(crate) trait SerialDevice {
    /// One open link: handshake, then poll until the link fails. Returns why it ended. `link` reports the device
    /// online once its handshake succeeded.
    async fn session(&mut self, ctx: &DriverContext, link: &mut Link, stream: Stream) -> SessionError;
}

/// Runs `device` until the driver is cancelled, reopening the link whenever it is lost.
pub(crate) async fn run<D: SerialDevice>(
    ctx: &DriverContext,
    driver: &'static str,
    baud: u32,
    response_timeout: Duration,
    device: &mut D,
) -> Result<(), DriverError> {
    let spec = ctx.device.port_spec().ok_or_else(|| DriverError::Device {
        device: ctx.device.id.clone(),
        message: "no valid `port` configured".into(),
    })?;
    let connect_timeout = response_timeout.max(Duration::from_secs(3));
    let mut link = Link::new(spec, baud, connect_timeout, &ctx.device.id, driver, ctx.status.clone());
    loop {
        let Some(stream) = link.connect(&ctx.cancel).await else { return Ok(()) };
        let started = Instant::now();
        let ended = tokio::select! {
            e = device.session(ctx, &mut link, stream) => e,
            _ = ctx.cancel.cancelled() => return Ok(()),
        };
        link.lost(&ended.to_string(), started.elapsed());
    }
}

/// The poll timer of a session: ticks every `period`, and after a slow poll waits a whole period again instead of
/// catching up.
pub(crate) fn poll_timer(period: Duration) -> Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// A punch the device reports as it happens, received now.
pub(crate) fn live_punch(ctx: &DriverContext, method: Method, subject: Subject) -> DevicePunch {
    let now = jiff::Timestamp::now().as_millisecond();
    DevicePunch {
        device_id: ctx.device.id.clone(),
        device_seq: None,
        method,
        subject,
        device_time_ms: now,
        received_time_ms: now,
        realtime: true,
        geo: None,
        score: None,
        attributes: Vec::new(),
    }
}

/// What a decoded frame means to the command waiting for its answer.
pub(crate) enum Heard<T> {
    /// The answer.
    Answer(T),
    /// Not the answer, and nothing to count (an ACK before the response): keep waiting.
    Ignore,
    /// Not the answer: counted under this reason, keep waiting.
    Reject(&'static str),
    /// The device refused the command: counted under this reason, and this attempt failed.
    Failed(&'static str),
}

/// Commands and answers over one open link, with the driver's context to count what was unusable.
pub(crate) struct Exchange<'a, C> {
    pub framed: Framed<Stream, C>,
    pub ctx: &'a DriverContext,
    /// How long one attempt waits for its answer.
    pub timeout: Duration,
}

impl<'a, C> Exchange<'a, C> {
    pub fn new(stream: Stream, codec: C, ctx: &'a DriverContext, timeout: Duration) -> Exchange<'a, C> {
        Exchange { framed: Framed::new(stream, codec), ctx, timeout }
    }

    /// Sends `request` and returns its answer, as `hear` picks it out of what the device sends. Up to `attempts`
    /// tries; between two, the read buffer is dropped and `abort` (if any) is sent to stop whatever the device was
    /// doing. A command that never gets a usable answer ends the session.
    pub async fn command<F, E, T>(
        &mut self,
        request: F,
        abort: Option<F>,
        name: &'static str,
        attempts: u32,
        mut hear: impl FnMut(F) -> Heard<T>,
    ) -> Result<T, SessionError>
    where
        F: Clone,
        E: FrameFault,
        C: Encoder<F, Error = std::io::Error> + Decoder<Item = Result<F, E>, Error = std::io::Error>,
    {
        for _ in 0..attempts {
            self.framed.send(request.clone()).await.map_err(SessionError::Write)?;
            if let Some(answer) = self.answer(&mut hear).await? {
                return Ok(answer);
            }
            self.framed.read_buffer_mut().clear();
            if let Some(abort) = &abort {
                self.framed.send(abort.clone()).await.map_err(SessionError::Write)?;
            }
        }
        Err(SessionError::NoAnswer { command: name, attempts, timeout: self.timeout })
    }

    /// Waits for the answer. `None` when this attempt failed (timeout, or the device refused the command).
    async fn answer<F, E, T>(&mut self, hear: &mut impl FnMut(F) -> Heard<T>) -> Result<Option<T>, SessionError>
    where
        E: FrameFault,
        C: Decoder<Item = Result<F, E>, Error = std::io::Error>,
    {
        let deadline = Instant::now() + self.timeout;
        let device = &self.ctx.device.id;
        loop {
            let item = match tokio::time::timeout_at(deadline, self.framed.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err(SessionError::Closed),
                Ok(Some(Err(e))) => return Err(SessionError::Read(e)),
                Ok(Some(Ok(item))) => item,
            };
            match item.map(&mut *hear) {
                Err(bad) => self.ctx.sink.count_unparsed(device, bad.label()),
                Ok(Heard::Answer(answer)) => return Ok(Some(answer)),
                Ok(Heard::Ignore) => {}
                Ok(Heard::Reject(reason)) => self.ctx.sink.count_unparsed(device, reason),
                Ok(Heard::Failed(reason)) => {
                    self.ctx.sink.count_unparsed(device, reason);
                    return Ok(None);
                }
            }
        }
    }
}
