//! Scripted device activity for `gatewayd demo`: simulated readers on virtual serial ports, with people using them.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::pn532::sim::Pn532Sim;
use crate::r30x::sim::{Model, R30xSim};
use crate::sim::pty::VirtualPort;
use crate::sim::Fault;

/// A PN532 reader and an R503 module on pseudo-terminals, ready to be named in a configuration.
#[derive(Debug)]
pub struct SerialBench {
    pub nfc_port: VirtualPort,
    pub fingerprint_port: VirtualPort,
}

impl SerialBench {
    /// Opens the two pseudo-terminals. Must be called inside a tokio runtime.
    pub fn open() -> std::io::Result<SerialBench> {
        Ok(SerialBench { nfc_port: VirtualPort::open()?, fingerprint_port: VirtualPort::open()? })
    }

    /// `[[device]]` entries for the two devices (append to a configuration).
    pub fn config(&self, nfc_id: &str, fingerprint_id: &str) -> String {
        format!(
            "\n[[device]]\nid = \"{nfc_id}\"\ndriver = \"pn532\"\nport = \"{}\"\nhold_off = \"1s\"\n\
             description = \"simulated PN532 reader on a pseudo-terminal\"\n\
             \n[[device]]\nid = \"{fingerprint_id}\"\ndriver = \"r30x\"\nport = \"{}\"\nmin_score = 60\n\
             description = \"simulated R503 fingerprint module on a pseudo-terminal\"\n",
            self.nfc_port.path().display(),
            self.fingerprint_port.path().display()
        )
    }

    /// Serves both devices and has people use them until `stop` fires.
    pub async fn run(self, stop: CancellationToken) {
        let nfc = Pn532Sim::new();
        let fp = R30xSim::new(Model::R503);
        let serve_nfc = nfc.serve(self.nfc_port, stop.clone());
        let serve_fp = fp.serve(self.fingerprint_port, stop.clone());
        tokio::select! {
            _ = serve_nfc => {}
            _ = serve_fp => {}
            _ = card_holders(&nfc) => {}
            _ = fingers(&fp) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// People badging in: each card held for a moment (one punch however long), now and then a burst of line noise.
async fn card_holders(sim: &Pn532Sim) {
    let cards: [&[u8]; 3] = [&[0x04, 0xA1, 0xB2, 0xC3], &[0x04, 0x5E, 0x21, 0x9A], &[0x08, 0x77, 0x10, 0xF2]];
    for round in 0usize.. {
        tokio::time::sleep(Duration::from_millis(2600)).await;
        if round % 4 == 3 {
            sim.inject(Fault::Garbage(b"\x13\x37 noise on the line".to_vec()));
        }
        sim.present(cards[round % cards.len()]);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        sim.remove();
    }
}

/// People at the fingerprint module: enrolled page 7 (score 120) and page 12, now and then an unknown finger.
async fn fingers(sim: &R30xSim) {
    for round in 0usize.. {
        tokio::time::sleep(Duration::from_millis(3700)).await;
        match round % 3 {
            0 => sim.place_finger(7, 120),
            1 => sim.place_finger(12, 95),
            _ => sim.place_unknown_finger(),
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        sim.lift();
    }
}

/// A simulated ZKTeco terminal without PUSH (`zk4370`) on a loopback TCP port, with a comm key, and people punching at
/// it; the real `zk4370` driver connects to it.
#[derive(Debug)]
pub struct ZkBench {
    listener: tokio::net::TcpListener,
    sim: crate::zk4370::sim::Zk4370Sim,
}

/// The demo terminal's communication key.
const DEMO_COMM_KEY: u32 = 20_261_122 % 1_000_000;

impl ZkBench {
    /// Binds the terminal's port (loopback, any free port).
    pub async fn open() -> std::io::Result<ZkBench> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let sim = crate::zk4370::sim::Zk4370Sim::new(
            crate::zk4370::records::Layout::Long40,
            Some(DEMO_COMM_KEY),
            jiff::tz::TimeZone::get("Asia/Shanghai").unwrap_or(jiff::tz::TimeZone::UTC),
        );
        Ok(ZkBench { listener, sim })
    }

    /// The `tcp://` address the terminal listens on.
    pub fn port(&self) -> String {
        self.listener.local_addr().map(|a| format!("tcp://{a}")).unwrap_or_default()
    }

    /// The `[[device]]` entry for the terminal (append to a configuration).
    pub fn config(&self, id: &str) -> String {
        format!(
            "\n[[device]]\nid = \"{id}\"\ndriver = \"zk4370\"\nport = \"{}\"\ncomm_key = {DEMO_COMM_KEY}\n\
             description = \"simulated ZKTeco terminal without PUSH (4370 protocol over TCP)\"\n",
            self.port()
        )
    }

    /// Serves the terminal and has people punch at it until `stop` fires.
    pub async fn run(self, stop: CancellationToken) {
        let sim = self.sim.clone();
        let serve = self.sim.serve_tcp(self.listener, stop.clone());
        let punches = async {
            let pins = ["1001", "1002", "2001"];
            for round in 0usize.. {
                tokio::time::sleep(Duration::from_millis(5300)).await;
                sim.punch(pins[round % pins.len()], [15, 1, 4][round % 3]);
            }
        };
        tokio::select! {
            _ = serve => {}
            _ = punches => {}
            _ = stop.cancelled() => {}
        }
    }
}
