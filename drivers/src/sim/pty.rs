//! A virtual serial port on a pseudo-terminal: the simulator holds the master, the gateway opens the slave path.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_serial::{SerialPort, SerialStream};

/// A pseudo-terminal pair. Reading and writing it talks to whoever opened [`VirtualPort::path`]; dropping it is
/// unplugging the device (the gateway's next read fails or ends).
///
/// The port keeps the slave end open itself, so that the master never sees a hang-up while the gateway is between two
/// opens (a real device keeps its end powered, too). Both ends are in raw mode.
pub struct VirtualPort {
    master: SerialStream,
    _slave: SerialStream,
    path: PathBuf,
}

impl std::fmt::Debug for VirtualPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualPort").field("path", &self.path).finish()
    }
}

impl VirtualPort {
    /// Opens a new pseudo-terminal (nix `posix_openpt` through tokio-serial). Must be called inside a tokio runtime.
    pub fn open() -> io::Result<VirtualPort> {
        let (master, slave) = SerialStream::pair().map_err(io::Error::from)?;
        let path =
            slave.name().map(PathBuf::from).ok_or_else(|| io::Error::other("the pseudo-terminal has no slave path"))?;
        Ok(VirtualPort { master, _slave: slave, path })
    }

    /// The slave device path (`/dev/pts/N`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Points the symlink `link` at this port, replacing an older link atomically: like udev's stable
    /// `/dev/serial/by-id/...` names, the link survives unplugging and re-plugging while the pts number changes.
    pub fn link_at(&self, link: &Path) -> io::Result<()> {
        let tmp = link.with_extension("tmp-link");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&self.path, &tmp)?;
        std::fs::rename(&tmp, link)
    }
}

impl AsyncRead for VirtualPort {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.master).poll_read(cx, buf)
    }
}

impl AsyncWrite for VirtualPort {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.master).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.master).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.master).poll_shutdown(cx)
    }
}
