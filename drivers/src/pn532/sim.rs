//! A simulated PN532 in HSU mode with one ISO 14443A card slot.
//!
//! It answers every host command frame with an ACK and then the response, as the chip does: GetFirmwareVersion,
//! SAMConfiguration, RFConfiguration, InListPassiveTarget (the card in the field, if any), InRelease and Diagnose;
//! anything else gets the application error frame. Faults queued with [`Pn532Sim::inject`] replace the next response.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::codec::{self, Frame, Pn532Codec, TFI_HOST};
use crate::sim::{lock, serve_frames, Fault, Plug};

#[derive(Debug, Default)]
struct State {
    card: Option<Vec<u8>>,
    polls_with_card: u64,
    polls_without_card: u64,
    commands: u64,
    faults: VecDeque<Fault>,
    plug: Plug,
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
            connections: s.plug.connections,
        }
    }

    /// Queues a fault for the next response.
    pub fn inject(&self, fault: Fault) {
        lock(&self.state).faults.push_back(fault);
    }

    /// Ends the current connection (as a cable pulled out of a serial server would).
    pub fn hang_up(&self) {
        lock(&self.state).plug.hang_up();
    }

    /// Serves one link until it ends, `stop` fires or [`Pn532Sim::hang_up`] is called. The stream is dropped on return.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        stop: CancellationToken,
    ) -> std::io::Result<()> {
        let hangup = lock(&self.state).plug.connect();
        serve_frames(stream, Pn532Codec, stop, hangup, |item| {
            let frame = match item {
                Ok(Frame::Info { tfi: TFI_HOST, data }) => data,
                // Wakeup preambles, host ACKs (abort) and noise need no answer.
                _ => return Ok(None),
            };
            let (reply, fault) = self.respond(&frame);
            let mut out = codec::ACK.to_vec();
            if let Some(reply) = reply {
                out.extend_from_slice(&apply(fault, reply, &frame)?);
            }
            Ok(Some(out))
        })
        .await
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

/// The bytes of `reply` with `fault` applied (the data checksum is the byte before the postamble).
fn apply(fault: Option<Fault>, reply: Frame, request: &[u8]) -> std::io::Result<Vec<u8>> {
    Fault::apply(fault, codec::encode(reply), 2, || {
        let code = request.first().copied().unwrap_or(0).wrapping_add(2);
        codec::encode(Frame::response(code, &[0x00]))
    })
}
