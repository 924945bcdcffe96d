//! Local serial ports (USB adapters, on-board UARTs, the kernel's `/dev/rfcommN` Bluetooth SPP links).

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};

use super::{Stream, TransportError};

/// Opens `path` at `baud`, 8N1 without flow control, exclusively (TIOCEXCL and flock: a second opener gets EBUSY, so two
/// daemons or a stray terminal program cannot interleave with the driver's frames).
pub fn open(path: &str, baud: u32) -> Result<Stream, TransportError> {
    let err = |source| TransportError::Serial { port: path.to_owned(), source };
    let mut port = tokio_serial::new(path, baud)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
        .open_native_async()
        .map_err(err)?;
    port.set_exclusive(true).map_err(err)?;
    Ok(Box::new(ExclusivePort(port)))
}

/// A port opened exclusively that gives up exclusivity when dropped. TIOCEXCL lives on the tty, not on the descriptor:
/// if something else still holds the tty open (a Bluetooth rfcomm binding, a virtual port), the flag would otherwise
/// outlive our descriptor and refuse our own reopen with EBUSY.
struct ExclusivePort(SerialStream);

impl Drop for ExclusivePort {
    fn drop(&mut self) {
        let _ = self.0.set_exclusive(false);
    }
}

impl AsyncRead for ExclusivePort {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ExclusivePort {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
