//! TLS on the API listener (`[api].tls`), mutual TLS when `client_ca` is set.
//!
//! A [`TlsListener`] is an `axum::serve::Listener`: one task accepts TCP connections and runs each TLS handshake in its
//! own task (bounded by [`HANDSHAKE_TIMEOUT`], at most [`MAX_HANDSHAKES`] at once), so a slow or silent client never
//! holds up the others; finished handshakes reach axum through a bounded channel. With `client_ca`, a connection
//! without a certificate chaining to it never gets to HTTP; bearer tokens still decide the role of each request
//! (certificates are not mapped to roles).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsFiles;
use crate::upstream::tls::{load_certs, load_key, provider, server_config, TlsError};

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once.
pub const MAX_HANDSHAKES: usize = 256;
/// Finished handshakes waiting for the HTTP server.
const READY_QUEUE: usize = 64;

/// The rustls server configuration for `[api].tls`.
pub fn config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    if let Some(ca) = &files.client_ca {
        return server_config(ca, &files.cert, &files.key);
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| TlsError::Config(format!("{}: {e}", files.key.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener that yields TLS streams.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Starts accepting on `tcp`; stops when `cancel` fires.
    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        cancel: CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                let (stream, peer) = tokio::select! {
                    _ = cancel.cancelled() => break,
                    accepted = tcp.accept() => match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "api accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "api TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "api TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        });
        Ok(TlsListener { local, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(x) => x,
            // The accept task stopped (cancelled): wait for the graceful shutdown to stop calling us.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The peer address of a TLS connection, as `ConnectInfo` (the auth middleware reads it for the audit log).
#[derive(Clone, Copy, Debug)]
pub struct TlsPeer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> TlsPeer {
        TlsPeer(*stream.remote_addr())
    }
}

/// Serves `router` over TLS on `listener` until `cancel` fires, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: axum::Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let tls = TlsListener::new(listener, config, cancel.clone())?;
    axum::serve(tls, router.into_make_service_with_connect_info::<TlsPeer>())
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
