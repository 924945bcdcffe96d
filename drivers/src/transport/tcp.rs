//! TCP serial device servers (`tcp://HOST:PORT`): the server bridges the socket to its RS-232/RS-485 port, raw mode.

use std::time::Duration;

use tokio::net::TcpStream;

use super::{Stream, TransportError};

/// Connects to the serial server, giving up after `timeout`.
pub async fn connect(host: &str, port: u16, timeout: Duration) -> Result<Stream, TransportError> {
    let target = format!("tcp://{host}:{port}");
    let stream = match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(TransportError::Tcp { target, source }),
        Err(_) => return Err(TransportError::Timeout { target, timeout }),
    };
    // Frames are small and latency matters more than packet count.
    stream.set_nodelay(true).map_err(|source| TransportError::Tcp { target, source })?;
    Ok(Box::new(stream))
}
