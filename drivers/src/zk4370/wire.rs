//! The two carriers of 4370 packets: a TCP connection (framed by [`TcpCodec`]) or UDP datagrams (one bare packet
//! each), behind one type.
//!
//! Cancel-safety: [`Wire::recv`] is cancel-safe (a packet is either returned or left in the socket or read buffer);
//! a [`Wire::send`] cut short leaves at most a partial TCP frame, which the terminal drops with the connection.

use std::fmt;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::codec::Framed;

use super::codec::{Packet, PacketError, TcpCodec, MAX_PACKET};
pub use crate::config::Endpoint;

/// The largest chunk one `CMD_READ_BUFFER` asks for: a UDP answer must fit one datagram.
pub fn max_chunk(endpoint: &Endpoint) -> u32 {
    match endpoint {
        Endpoint::Tcp { .. } => 0xFFC0,
        Endpoint::Udp { .. } => 16 * 1024,
    }
}

/// An open carrier.
pub enum Wire {
    Tcp(Framed<TcpStream, TcpCodec>),
    Udp(UdpSocket),
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Wire::Tcp(_) => "Wire::Tcp",
            Wire::Udp(_) => "Wire::Udp",
        })
    }
}

/// A datagram or frame the wire received.
pub type Received = Result<Packet, PacketError>;

impl Wire {
    /// Connects (TCP) or binds and connects a socket (UDP), within `timeout`.
    pub async fn open(endpoint: &Endpoint, timeout: Duration) -> std::io::Result<Wire> {
        let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {timeout:?}"));
        match endpoint {
            Endpoint::Tcp { host, port } => {
                let stream = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), *port)))
                    .await
                    .map_err(|_| timed_out())??;
                stream.set_nodelay(true)?;
                Ok(Wire::Tcp(Framed::new(stream, TcpCodec)))
            }
            Endpoint::Udp { host, port } => {
                let target = tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), *port)))
                    .await
                    .map_err(|_| timed_out())??
                    .next()
                    .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host}: no address")))?;
                let local = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let socket = UdpSocket::bind(local).await?;
                socket.connect(target).await?;
                Ok(Wire::Udp(socket))
            }
        }
    }

    pub async fn send(&mut self, packet: Packet) -> std::io::Result<()> {
        match self {
            Wire::Tcp(framed) => framed.send(packet).await,
            Wire::Udp(socket) => socket.send(&packet.to_bytes()).await.map(drop),
        }
    }

    /// The next packet (or packet error); `Ok(None)` when the terminal closed the TCP connection.
    pub async fn recv(&mut self) -> std::io::Result<Option<Received>> {
        match self {
            Wire::Tcp(framed) => framed.next().await.transpose(),
            Wire::Udp(socket) => {
                let mut buf = vec![0u8; MAX_PACKET + 1];
                let n = socket.recv(&mut buf).await?;
                Ok(Some(Packet::parse(&buf[..n])))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_chunks_fit_a_datagram() {
        assert_eq!(max_chunk(&Endpoint::parse("udp://h:1").unwrap()), 16 * 1024);
        assert_eq!(max_chunk(&Endpoint::parse("tcp://h:1").unwrap()), 0xFFC0);
    }
}
