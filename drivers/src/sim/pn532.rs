//! A simulated PN532 in HSU mode with one ISO 14443A card slot.
//!
//! It answers every host command frame with an ACK and then the response, as the chip does: GetFirmwareVersion,
//! SAMConfiguration, RFConfiguration, InListPassiveTarget (the card in the field, if any), InRelease and Diagnose;
//! anything else gets the application error frame. Faults queued with [`Pn532Sim::inject`] replace the next response.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::{lock, Fault};
use crate::codec::pn532::{self as codec, Frame, Pn532Codec, TFI_HOST};

#[derive(Debug, Default)]
struct State {
    card: Option<Vec<u8>>,
    polls_with_card: u64,
    polls_without_card: u64,
    commands: u64,
    faults: VecDeque<Fault>,
    hangup: CancellationToken,
    connections: u64,
}

/// Counters of what the simulator has been asked, for tests to wait on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pn532Stats {
    pub polls_with_card: u64,
    pub polls_without_card: u64,
    pub commands: u64,
    pub connections: u64,
}

/// The simulated reader. Clones share the same reader.
#[derive(Clone, Debug, Default)]
pub struct Pn532Sim {
    state: Arc<Mutex<State>>,
}

impl Pn532Sim {
    pub fn new() -> Pn532Sim {
        Pn532Sim::default()
    }

    /// Puts a card with this UID on the reader (replacing any other).
    pub fn present(&self, uid: &[u8]) {
        lock(&self.state).card = Some(uid.to_vec());
    }

    /// Takes the card away.
    pub fn remove(&self) {
        lock(&self.state).card = None;
    }

    pub fn stats(&self) -> Pn532Stats {
        let s = lock(&self.state);
        Pn532Stats {
            polls_with_card: s.polls_with_card,
            polls_without_card: s.polls_without_card,
            commands: s.commands,
            connections: s.connections,
        }
    }

    /// Queues a fault for the next response.
    pub fn inject(&self, fault: Fault) {
        lock(&self.state).faults.push_back(fault);
    }

    /// Ends the current connection (as a cable pulled out of a serial server would).
    pub fn hang_up(&self) {
        lock(&self.state).hangup.cancel();
    }

    /// Serves one link until it ends, `stop` fires or [`Pn532Sim::hang_up`] is called. The stream is dropped on return.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        stop: CancellationToken,
    ) -> std::io::Result<()> {
        let hangup = {
            let mut s = lock(&self.state);
            s.hangup = CancellationToken::new();
            s.connections += 1;
            s.hangup.clone()
        };
        let (read, mut write) = tokio::io::split(stream);
        let mut frames = FramedRead::new(read, Pn532Codec);
        loop {
            let item = tokio::select! {
                item = frames.next() => item,
                _ = stop.cancelled() => return Ok(()),
                _ = hangup.cancelled() => return Ok(()),
            };
            let frame = match item {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                // Wakeup preambles, host ACKs (abort) and noise need no answer.
                Some(Ok(Ok(Frame::Info { tfi: TFI_HOST, data }))) => data,
                Some(Ok(_)) => continue,
            };
            let (reply, fault) = self.respond(&frame);
            write.write_all(&codec::ACK).await?;
            let Some(reply) = reply else { continue };
            write.write_all(&apply(fault, reply, &frame)?).await?;
            write.flush().await?;
        }
    }

    fn respond(&self, data: &[u8]) -> (Option<Frame>, Option<Fault>) {
        let mut s = lock(&self.state);
        s.commands += 1;
        let fault = s.faults.pop_front();
        let Some((&code, params)) = data.split_first() else { return (Some(Frame::Error), fault) };
        let reply = match code {
            0x02 => Frame::response(code, &[0x32, 0x01, 0x06, 0x07]),
            0x14 | 0x32 => Frame::response(code, &[]),
            0x00 => Frame::response(code, params),
            0x52 => Frame::response(code, &[0x00]),
            0x4A => match s.card.clone() {
                Some(uid) => {
                    s.polls_with_card += 1;
                    let mut payload = vec![0x01, 0x01, 0x00, 0x04, 0x08, uid.len() as u8];
                    payload.extend_from_slice(&uid);
                    Frame::response(code, &payload)
                }
                None => {
                    s.polls_without_card += 1;
                    Frame::response(code, &[0x00])
                }
            },
            _ => Frame::Error,
        };
        (Some(reply), fault)
    }
}

/// The bytes of `reply` with `fault` applied.
fn apply(fault: Option<Fault>, reply: Frame, request: &[u8]) -> std::io::Result<Vec<u8>> {
    Ok(match fault {
        None => codec::encode(reply)?,
        Some(Fault::Garbage(mut noise)) => {
            noise.extend_from_slice(&codec::encode(reply)?);
            noise
        }
        Some(Fault::CorruptChecksum) => {
            let mut bytes = codec::encode(reply)?;
            let dcs = bytes.len().saturating_sub(2);
            if let Some(b) = bytes.get_mut(dcs) {
                *b ^= 0x5A;
            }
            bytes
        }
        Some(Fault::Truncate) => {
            let bytes = codec::encode(reply)?;
            bytes[..bytes.len() / 2].to_vec()
        }
        Some(Fault::WrongReply) => {
            let code = request.first().copied().unwrap_or(0).wrapping_add(2);
            codec::encode(Frame::response(code, &[0x00]))?
        }
        Some(Fault::Silence) => Vec::new(),
    })
}
