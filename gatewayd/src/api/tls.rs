//! TLS on the API listener (`[api].tls`), mutual TLS when `client_ca` is set.
//!
//! A [`TlsListener`] is an `axum::serve::Listener`: one task accepts TCP connections and runs each TLS handshake in its
//! own task (bounded by [`HANDSHAKE_TIMEOUT`], at most [`MAX_HANDSHAKES`] at once), so a slow or silent client never
//! holds up the others; finished handshakes reach axum through a bounded channel. With `client_ca`, a connection
//! without a certificate chaining to it never gets to HTTP. The verified certificate's subject common name travels
//! with the connection ([`TlsPeer`]); the auth middleware maps it to a role through `[[api.client_cert]]` when the
//! request carries no bearer token (a bearer token, when sent, decides).
//!
//! The certificate, key and client CA are read at start and again on SIGHUP ([`SharedConfig::reload`]): each new
//! connection takes the configuration in force when it is accepted; connections already up keep theirs. Files that do
//! not load leave the configuration in force.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use drivers::tls::{SharedServerConfig, TlsError};

use crate::config::TlsFiles;

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once.
pub const MAX_HANDSHAKES: usize = 256;
/// Finished handshakes waiting for the HTTP server.
const READY_QUEUE: usize = 64;

/// The rustls server configuration for `[api].tls` (HTTP/1.1; mutual TLS with `client_ca`).
pub fn config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    drivers::tls::server_config(&files.cert, &files.key, files.client_ca.as_deref(), &[b"http/1.1"])
}

/// The rustls configuration of the API listener, replaceable while it runs.
#[derive(Clone, Debug)]
pub struct SharedConfig(SharedServerConfig);

impl SharedConfig {
    pub fn new(config: Arc<rustls::ServerConfig>) -> SharedConfig {
        SharedConfig(SharedServerConfig::new(config))
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.0.current()
    }

    /// Reads `files` again and puts them in force for new connections; on error the configuration in force stays.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        self.0.replace(config(files)?);
        Ok(())
    }
}

/// The subject common name of a client certificate (the first of the chain, already verified by rustls).
pub fn client_name(der: &[u8]) -> Option<Arc<str>> {
    let cn = drivers::tls::subject_common_name(der).ok()?;
    (!cn.is_empty() && !cn.chars().any(char::is_control)).then(|| Arc::from(cn))
}

/// A TCP listener that yields TLS streams.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, TlsPeer)>,
}

impl TlsListener {
    /// Starts accepting on `tcp`; stops when `cancel` fires.
    pub fn new(tcp: TcpListener, config: SharedConfig, cancel: CancellationToken) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
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
                // The configuration in force now (a SIGHUP may have replaced the certificate since).
                let (acceptor, tx) = (TlsAcceptor::from(config.current()), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let client = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| client_name(c));
                            let _ = tx.send((tls, TlsPeer { addr: peer, client })).await;
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
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(x) => x,
            // The accept task stopped (cancelled): wait for the graceful shutdown to stop calling us.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(TlsPeer { addr: self.local, client: None })
    }
}

/// Who is on the other end of a TLS connection, as `ConnectInfo`: the peer address (for the audit log) and the
/// subject common name of its verified client certificate, if it presented one.
#[derive(Clone, Debug)]
pub struct TlsPeer {
    pub addr: SocketAddr,
    pub client: Option<Arc<str>>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> TlsPeer {
        stream.remote_addr().clone()
    }
}

/// Serves `router` over TLS on `listener` until `cancel` fires, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    config: SharedConfig,
    router: axum::Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let tls = TlsListener::new(listener, config, cancel.clone())?;
    axum::serve(tls, router.into_make_service_with_connect_info::<TlsPeer>())
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
