//! A simulated R307/R503 fingerprint module.
//!
//! It answers VfyPwd, ReadSysPara, GenImg, Img2Tz, Search and (as an R503) AuraLedConfig with acknowledge packets as the
//! modules do. A finger is placed with [`R30xSim::place_finger`] (an enrolled page and the score a search reports) or
//! [`R30xSim::place_unknown_finger`]; it stays until [`R30xSim::lift`]. Every AuraLedConfig colour is recorded.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::codec::{self, cmd, confirm, Packet, R30xCodec, PID_COMMAND, PID_DATA};
use crate::sim::{lock, serve_frames, Fault, Plug};

/// Which module to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// No LED ring: AuraLedConfig is refused.
    R307,
    /// RGB LED ring driven by AuraLedConfig.
    R503,
}

/// AuraLedConfig colour codes (R503 manual).
pub mod color {
    pub const RED: u8 = 0x01;
    pub const BLUE: u8 = 0x02;
    pub const GREEN: u8 = 0x04;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finger {
    Enrolled { page: u16, score: u16 },
    Unknown,
}

#[derive(Debug)]
struct State {
    model: Model,
    address: u32,
    password: Option<u32>,
    capacity: u16,
    finger: Option<Finger>,
    image_errors: u32,
    faults: VecDeque<Fault>,
    leds: Vec<u8>,
    polls: u64,
    commands: u64,
    plug: Plug,
}

/// Counters of what the simulator has been asked, for tests to wait on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct R30xStats {
    /// GenImg commands answered.
    pub polls: u64,
    pub commands: u64,
    pub connections: u64,
}

/// The simulated module. Clones share the same module.
#[derive(Clone, Debug)]
pub struct R30xSim {
    state: Arc<Mutex<State>>,
}

impl R30xSim {
    pub fn new(model: Model) -> R30xSim {
        R30xSim {
            state: Arc::new(Mutex::new(State {
                model,
                address: codec::DEFAULT_ADDRESS,
                password: None,
                capacity: 200,
                finger: None,
                image_errors: 0,
                faults: VecDeque::new(),
                leds: Vec::new(),
                polls: 0,
                commands: 0,
                plug: Plug::default(),
            })),
        }
    }

    /// Requires VfyPwd with this password before anything else.
    pub fn with_password(self, password: u32) -> R30xSim {
        lock(&self.state).password = Some(password);
        self
    }

    /// Uses this module address.
    pub fn with_address(self, address: u32) -> R30xSim {
        lock(&self.state).address = address;
        self
    }

    /// Places a finger enrolled at `page`; Search reports `score`.
    pub fn place_finger(&self, page: u16, score: u16) {
        lock(&self.state).finger = Some(Finger::Enrolled { page, score });
    }

    /// Places a finger that is not enrolled (Search answers "no match").
    pub fn place_unknown_finger(&self) {
        lock(&self.state).finger = Some(Finger::Unknown);
    }

    pub fn lift(&self) {
        lock(&self.state).finger = None;
    }

    /// The next `n` images of a placed finger fail (Img2Tz answers "too few feature points").
    pub fn image_errors(&self, n: u32) {
        lock(&self.state).image_errors = n;
    }

    /// Queues a fault for the next reply.
    pub fn inject(&self, fault: Fault) {
        lock(&self.state).faults.push_back(fault);
    }

    /// Ends the current connection.
    pub fn hang_up(&self) {
        lock(&self.state).plug.hang_up();
    }

    /// Every LED colour the gateway has set (AuraLedConfig), oldest first; 0 for "off".
    pub fn leds(&self) -> Vec<u8> {
        lock(&self.state).leds.clone()
    }

    pub fn stats(&self) -> R30xStats {
        let s = lock(&self.state);
        R30xStats { polls: s.polls, commands: s.commands, connections: s.plug.connections }
    }

    /// Serves one link until it ends, `stop` fires or [`R30xSim::hang_up`] is called. The stream is dropped on return.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        stop: CancellationToken,
    ) -> std::io::Result<()> {
        let hangup = lock(&self.state).plug.connect();
        let mut verified = false;
        serve_frames(stream, R30xCodec, stop, hangup, |item| {
            let packet = match item {
                Ok(p) if p.pid == PID_COMMAND => p,
                _ => return Ok(None),
            };
            let Some((reply, fault)) = self.respond(&packet, &mut verified) else { return Ok(None) };
            apply(fault, reply).map(Some)
        })
        .await
    }

    fn respond(&self, packet: &Packet, verified: &mut bool) -> Option<(Packet, Option<Fault>)> {
        let mut s = lock(&self.state);
        if packet.address != s.address {
            return None; // modules ignore packets for another address
        }
        s.commands += 1;
        let fault = s.faults.pop_front();
        let addr = s.address;
        let ack = |code: u8, data: &[u8]| Packet::ack(addr, code, data);
        let (&code, params) = packet.payload.split_first()?;
        if s.password.is_some() && !*verified && code != cmd::VFY_PWD {
            return Some((ack(confirm::PACKET_ERROR, &[]), fault));
        }
        let reply = match code {
            cmd::VFY_PWD => {
                let given = params.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if s.password.is_none() || given == s.password {
                    *verified = true;
                    ack(confirm::OK, &[])
                } else {
                    ack(confirm::WRONG_PASSWORD, &[])
                }
            }
            cmd::READ_SYS_PARA => {
                let mut data = Vec::with_capacity(16);
                data.extend_from_slice(&[0x00, 0x00, 0x00, 0x09]); // status register, system id
                data.extend_from_slice(&s.capacity.to_be_bytes());
                data.extend_from_slice(&[0x00, 0x03]); // security level
                data.extend_from_slice(&s.address.to_be_bytes());
                data.extend_from_slice(&[0x00, 0x02, 0x00, 0x06]); // packet size 128, baud 57600
                ack(confirm::OK, &data)
            }
            cmd::GEN_IMG => {
                s.polls += 1;
                match s.finger {
                    Some(_) => ack(confirm::OK, &[]),
                    None => ack(confirm::NO_FINGER, &[]),
                }
            }
            cmd::IMG_2_TZ => {
                if s.finger.is_none() {
                    ack(confirm::INVALID_IMAGE, &[])
                } else if s.image_errors > 0 {
                    s.image_errors -= 1;
                    ack(confirm::FEW_FEATURES, &[])
                } else {
                    ack(confirm::OK, &[])
                }
            }
            cmd::SEARCH => match s.finger {
                Some(Finger::Enrolled { page, score }) => {
                    let mut data = page.to_be_bytes().to_vec();
                    data.extend_from_slice(&score.to_be_bytes());
                    ack(confirm::OK, &data)
                }
                _ => ack(confirm::NO_MATCH, &[0, 0, 0, 0]),
            },
            cmd::AURA_LED_CONFIG if s.model == Model::R503 => {
                let (ctrl, colour) = (params.first().copied().unwrap_or(0), params.get(2).copied().unwrap_or(0));
                s.leds.push(if ctrl == 0x04 { 0 } else { colour });
                ack(confirm::OK, &[])
            }
            _ => ack(confirm::PACKET_ERROR, &[]),
        };
        Some((reply, fault))
    }
}

/// The bytes of `reply` with `fault` applied (the checksum is the last byte).
fn apply(fault: Option<Fault>, reply: Packet) -> std::io::Result<Vec<u8>> {
    let wrong = Packet { pid: PID_DATA, ..reply.clone() };
    Fault::apply(fault, codec::encode(reply), 1, || codec::encode(wrong))
}
