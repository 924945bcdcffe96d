//! Direct Bluetooth RFCOMM links (`rfcomm://AA:BB:CC:DD:EE:FF/CHANNEL`) through the kernel's AF_BLUETOOTH socket.
//!
//! The socket comes from bluer's `rfcomm` feature, which talks to the kernel directly and needs neither D-Bus nor a running
//! bluetoothd for an outgoing connection to a known channel. The device must already be paired if it requires it.
//! A kernel without Bluetooth refuses the socket with `EAFNOSUPPORT`; that is reported as
//! [`TransportError::NoBluetooth`] with what to do about it, not as a bare errno.

use std::time::Duration;

use super::{Stream, TransportError};

const EAFNOSUPPORT: i32 = 97;
const EPROTONOSUPPORT: i32 = 93;

/// Connects to `channel` on the device at `address`, giving up after `timeout`.
pub async fn connect(address: [u8; 6], channel: u8, timeout: Duration) -> Result<Stream, TransportError> {
    let target = crate::config::PortSpec::Rfcomm { address, channel }.to_string();
    let addr = bluer::rfcomm::SocketAddr::new(bluer::Address::new(address), channel);
    match tokio::time::timeout(timeout, bluer::rfcomm::Stream::connect(addr)).await {
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(source)) if matches!(source.raw_os_error(), Some(EAFNOSUPPORT | EPROTONOSUPPORT)) => {
            Err(TransportError::NoBluetooth { target, source })
        }
        Ok(Err(source)) => Err(TransportError::Rfcomm { target, source }),
        Err(_) => Err(TransportError::Timeout { target, timeout }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without Bluetooth (as on most build machines) the error says so; with it, connecting to a made-up address fails
    /// with an error naming the target. Never a panic.
    #[tokio::test]
    async fn unreachable_device_is_a_clear_error() {
        let result = connect([0x00, 0x11, 0x22, 0x33, 0x44, 0x55], 1, Duration::from_millis(300)).await;
        let Err(e) = result else { panic!("connected to a made-up Bluetooth address") };
        assert!(e.to_string().contains("rfcomm://00:11:22:33:44:55/1"), "{e}");
    }
}
