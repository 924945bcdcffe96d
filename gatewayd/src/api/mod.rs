//! The HTTP listener on `[api].listen`: health, readiness and metrics here; the ADMS push endpoints and the admin API
//! are merged in as further routers.
//!
//! The API writes files only in the data dir (the service's StateDirectory, the one place the hardened unit may write):
//! rules ([`crate::reconcile::rules::API_FILE`]) and roster ([`crate::reconcile::roster::API_FILE`]), which then win over the configured files
//! (see [`crate::reconcile::rules::file_in_force`], [`crate::reconcile::roster::file_in_force`]).

pub mod audit;
pub mod auth;
pub mod error;
pub mod qr;
pub mod tls;
pub mod v1;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{check_addr, check_tls, Config, Problems, Seg};
use crate::store::Store;
use crate::telemetry::Metrics;

/// What `/readyz` reports: the store is open and every listener is bound.
#[derive(Debug, Default)]
pub struct Readiness {
    store_open: AtomicBool,
    listeners_bound: AtomicBool,
    stopping: AtomicBool,
}

impl Readiness {
    pub fn set_store_open(&self) {
        self.store_open.store(true, Ordering::SeqCst);
    }

    pub fn set_listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::SeqCst);
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// `Ok` when ready, else what is missing.
    pub fn check(&self) -> Result<(), String> {
        let mut missing = Vec::new();
        if self.stopping.load(Ordering::SeqCst) {
            missing.push("shutting down");
        }
        if !self.store_open.load(Ordering::SeqCst) {
            missing.push("store not open");
        }
        if !self.listeners_bound.load(Ordering::SeqCst) {
            missing.push("listeners not bound");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join(", "))
        }
    }
}

/// Shared state of the health and metrics handlers.
#[derive(Clone)]
pub struct HealthState {
    pub readiness: Arc<Readiness>,
    pub metrics: Metrics,
    pub store: Store,
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn health_router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HealthState>) -> impl IntoResponse {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(missing) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {missing}\n")),
    }
}

async fn metrics(State(state): State<HealthState>) -> impl IntoResponse {
    let store = state.store.clone();
    let counts = tokio::task::spawn_blocking(move || (store.size_on_disk(), store.count().unwrap_or(0))).await;
    if let Ok((size, count)) = counts {
        crate::store::metrics::events::store_size(&state.metrics, size, count);
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}

/// Serves `router` on `listener` until `cancel` fires, then finishes in-flight requests.
pub async fn serve(listener: TcpListener, router: Router, cancel: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// Checks `[api]` (called by the configuration loader, [`crate::app::load_config`]).
pub fn check_config(config: &Config, out: &mut Problems<'_>) {
    let section = &config.api;
    check_addr(out, "api", "listen", Some(&section.listen));
    if let Some(tls) = &section.tls {
        check_tls(out, "api", tls);
    }
    let has_client_ca = section.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    for (i, problem) in auth::check_client_certs(&section.client_certs, has_client_ca) {
        out.add(&[Seg::Key("api"), Seg::Key("client_cert"), Seg::Index(i)], "api.client_cert", problem);
    }
    if section.max_body_bytes < 1024 || section.max_body_bytes > 64 << 20 {
        out.add(
            &[Seg::Key("api"), Seg::Key("max_body_bytes")],
            "api.max_body_bytes",
            "must be between 1024 and 67108864".into(),
        );
    }
    if !(1..=10_000).contains(&section.rate_per_sec) {
        out.add(&[Seg::Key("api"), Seg::Key("rate_per_sec")], "api.rate_per_sec", "must be 1 to 10000".into());
    }
    if !(1..=100_000).contains(&section.rate_burst) {
        out.add(&[Seg::Key("api"), Seg::Key("rate_burst")], "api.rate_burst", "must be 1 to 100000".into());
    }
    if !(Duration::from_secs(60)..=Duration::from_secs(7 * 86_400)).contains(&section.offline_claim_limit()) {
        out.add(
            &[Seg::Key("api"), Seg::Key("offline_claim_limit")],
            "api.offline_claim_limit",
            "must be between 1m and 168h".into(),
        );
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&section.request_timeout()) {
        out.add(
            &[Seg::Key("api"), Seg::Key("request_timeout")],
            "api.request_timeout",
            "must be between 1s and 10m".into(),
        );
    }
}

/// Puts the peer address on a request as [`drivers::adms::Peer`], for the ADMS routes' `allow_from` check: from the
/// plain listener's or the TLS listener's connection info.
pub async fn with_peer(mut req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::extract::ConnectInfo;
    let ip = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
        .or_else(|| req.extensions().get::<ConnectInfo<tls::TlsPeer>>().map(|ConnectInfo(p)| p.addr.ip()));
    if let Some(ip) = ip {
        req.extensions_mut().insert(drivers::adms::Peer(ip));
    }
    next.run(req).await
}
