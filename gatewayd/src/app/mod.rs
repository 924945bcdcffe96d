//! Assembly, supervision and shutdown of the daemon.
//!
//! [`start`] opens the store, starts the ingest writer, binds every listener, starts the drivers and returns a [`Running`]
//! gateway; [`Running::run_until_signalled`] then serves until SIGTERM/SIGINT, reloading on SIGHUP. The shutdown tree is
//! one root [`CancellationToken`] with a child per stage, stopped in pipeline order: drivers and API stop accepting, the
//! ingest writer answers what is queued and flushes, then the later stages stop. All of it is bounded by
//! [`SHUTDOWN_GRACE`].

pub mod control;
mod devices;
pub mod load;
pub mod quarantine;
mod reload;
pub mod retention;
mod terminals;

pub use reload::RELOAD_LIMIT;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drivers::status::StatusBoard;
use drivers::PunchSink;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, HealthState, Readiness};
use crate::config::reload::Appliers;
use crate::config::{Config, Problem};
use crate::daemon::{Notifier, Signals};
use crate::ingest::{self, IngestSettings};
use crate::outbox::{feeder, Outbox, OutboxError};
use crate::reconcile::changes::ChangeLog;
use crate::store::budget::{self, DiskBudget};
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;
use devices::{mqtt_settings, spawn_device_manager, spawn_device_tables};
use reload::Certificates;

/// How long a graceful stop may take before the daemon exits anyway (SIGTERM must end within 10 s).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(9);

/// The file in the data dir that names the bound listener addresses (useful when a config asks for port 0).
pub const LISTENERS_FILE: &str = "listeners.json";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store {path} is damaged and cannot be moved aside to quarantine: {source}")]
    Quarantine {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Engine(#[from] crate::reconcile::StageError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("{0}")]
    Driver(String),
    #[error(transparent)]
    Privileges(#[from] crate::daemon::privileges::PrivilegeError),
    #[error(transparent)]
    Tokens(#[from] crate::tokens::TokenError),
    #[error(transparent)]
    Qr(#[from] crate::api::qr::QrError),
    #[error(transparent)]
    Control(#[from] crate::app::control::ControlError),
    #[error("api tls: {0}")]
    ApiTls(crate::upstream::tls::TlsError),
}

/// The addresses the gateway actually listens on.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Listeners {
    pub api: SocketAddr,
    /// The MQTT device listener (the front of the embedded broker).
    pub mqtt: SocketAddr,
    /// The MQTT TLS listener, when `[mqtt].tls_listen` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt_tls: Option<SocketAddr>,
}

/// A started gateway.
pub struct Running {
    pub config: Arc<Config>,
    config_path: PathBuf,
    pub store: Store,
    pub sink: PunchSink,
    pub metrics: Metrics,
    /// Online state, last seen and errors of every device.
    pub status: StatusBoard,
    pub listeners: Listeners,
    /// The highest sequence number durable in the store.
    pub durable: watch::Receiver<u64>,
    /// The engine's decisions, in order (the engine appends, the outbox follows). One instance per process: its watch
    /// channel is how the outbox learns that more is durable.
    pub changes: ChangeLog,
    /// What waits for upstream delivery.
    pub outbox: Outbox,
    /// The disk budget state the ingest writer consults.
    pub disk_budget: DiskBudget,
    /// The attendance engine's handle, records, roster and approvals (for the API).
    pub attendance: crate::reconcile::Attendance,
    config_tx: watch::Sender<Arc<Config>>,
    /// The tasks a reload waits for before it reports `READY=1`.
    appliers: Appliers,
    /// The TLS listeners whose certificates SIGHUP reloads.
    certificates: Certificates,
    readiness: Arc<Readiness>,
    notifier: Notifier,
    signals: Signals,
    root: CancellationToken,
    front: CancellationToken,
    front_tasks: TaskTracker,
    ingest_cancel: CancellationToken,
    ingest_tasks: TaskTracker,
    back: CancellationToken,
    back_tasks: TaskTracker,
}

/// Opens the store in a blocking thread (sled's open does file I/O and recovery).
pub async fn open_store(dir: &Path, cache_mb: u64) -> Result<Store, AppError> {
    std::fs::create_dir_all(dir).map_err(|source| AppError::DataDir { path: dir.to_owned(), source })?;
    let store_dir = dir.join("store");
    let result = tokio::task::spawn_blocking(move || Store::open(&store_dir, cache_mb)).await;
    match result {
        Ok(r) => Ok(r?),
        Err(e) => Err(AppError::Store(StoreError::Open { path: dir.join("store"), message: e.to_string() })),
    }
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr).await.map_err(|source| AppError::Bind { what, addr: addr.to_owned(), source })
}

/// Starts every stage. Returns once the store is open and every listener is bound (and `READY=1` was sent).
pub async fn start(config: Config, config_path: PathBuf) -> Result<Running, AppError> {
    let notifier = Notifier::from_env();
    // Before anything can report READY: a SIGHUP or SIGTERM right after READY must find the handlers in place.
    let signals = Signals::install().map_err(AppError::Signals)?;
    // Decided before anything is opened: refuse root early, or know whom to become once everything is bound.
    let drop_to = crate::daemon::privileges::prepare(config.gateway.user.as_deref(), config.gateway.allow_root)?;
    let config = Arc::new(config);
    let readiness = Arc::new(Readiness::default());
    let metrics = metrics();
    let status = StatusBoard::new(metrics.drivers.clone());
    for device in &config.devices {
        metrics.drivers.init_device(device.driver.as_str(), &device.id);
        status.register(&device.id, device.driver.as_str());
    }

    // A damaged store is moved aside to data/quarantine and a fresh one opened (crate::app::quarantine).
    let state = crate::app::quarantine::open_state(
        &config.gateway.data_dir,
        config.store.cache_mb,
        config.timezone(),
        &metrics,
    )
    .await?;
    let crate::app::quarantine::State { store, changes, outbox, tokens, audit, quarantined } = state;
    readiness.set_store_open();
    tracing::info!(path = %store.path().display(), punches = store.count().unwrap_or(0), "store open");
    let disk_budget = DiskBudget::new();

    let root = CancellationToken::new();
    let front = root.child_token();
    let ingest_cancel = root.child_token();
    let back = root.child_token();
    let front_tasks = TaskTracker::new();
    let ingest_tasks = TaskTracker::new();
    let back_tasks = TaskTracker::new();

    // Ingest: the bounded channel every driver submits into, and the group-commit writer behind it.
    let (sink, rx) = PunchSink::channel(config.store.queue, metrics.drivers.clone());
    let (durable_tx, durable) = watch::channel(store.last_seq()?.unwrap_or(0));
    let settings = IngestSettings { gateway_id: config.gateway.id.clone(), max_batch: config.store.max_batch };
    ingest_tasks.spawn(ingest::run_writer_with_budget(
        store.clone(),
        settings,
        rx,
        durable_tx,
        metrics.clone(),
        ingest_cancel.clone(),
        disk_budget.clone(),
    ));

    let (config_tx, _) = watch::channel(config.clone());
    let mut appliers = Appliers::default();

    // The attendance engine: follows the durable punches, writes the change log the outbox delivers (runs with or
    // without a rules file: punches are forwarded either way).
    let (attendance, engine_stage) = crate::reconcile::stage::open(
        &config,
        &store,
        &changes,
        &sink,
        &metrics,
        durable.clone(),
        appliers.add("engine", &config_tx),
    )?;
    back_tasks.spawn(engine_stage.run(back.clone()));

    start_delivery(&config_tx, &store, &changes, &outbox, &disk_budget, &metrics, &back, &back_tasks);
    let retention = crate::app::retention::Retention {
        store: store.clone(),
        records: attendance.records.clone(),
        approvals: attendance.approvals.clone(),
        changes: changes.clone(),
        outbox: outbox.clone(),
        audit: audit.clone(),
        metrics: metrics.clone(),
    };
    back_tasks.spawn(crate::app::retention::run(retention, config_tx.subscribe(), back.clone()));

    // MQTT devices: the embedded broker behind its authenticating front (drivers::mqtt).
    let mqtt_ctx = drivers::mqtt::MqttContext {
        sink: sink.clone(),
        status: status.clone(),
        metrics: metrics.drivers.clone(),
        timezone: config.timezone(),
        cancel: front.clone(),
        tasks: front_tasks.clone(),
    };
    let mqtt = drivers::mqtt::start(mqtt_settings(&config), &config.devices, mqtt_ctx).await.map_err(|e| match e {
        drivers::mqtt::MqttError::Bind { what, addr, source } => {
            AppError::Bind { what: if what.is_empty() { "mqtt" } else { "mqtt tls" }, addr, source }
        }
        other => AppError::Driver(other.to_string()),
    })?;
    // ZKTeco PUSH terminals: the /iclock routes on the API listener (drivers::adms).
    // Their command channel: a durable queue in the store's database (tree `adms_commands`), the roster kept on them.
    let history = drivers::history::History::new(devices::StoreHistory(store.clone()));
    let commands =
        drivers::adms::commands::CommandQueue::open(store.db()).map_err(|e| AppError::Driver(e.to_string()))?;
    let adms =
        drivers::adms::Adms::new(&config.devices, &sink, status.clone(), config.timezone(), config.api.max_body_bytes)
            .persist_stamps(config.gateway.data_dir.join(drivers::adms::STAMP_FILE))
            .with_commands(commands, history.clone());
    let people = terminals::spawn(store.db(), attendance.roster.clone(), adms.clone(), front.clone(), &front_tasks)
        .map_err(|e| AppError::Driver(format!("roster sync to the terminals: {e}")))?;
    if quarantined.is_some() {
        // The punches of the damaged store are set aside: ask the PUSH terminals for what they still hold.
        terminals::backfill_after_quarantine(&adms).await;
    }
    adms.spawn_presence(front.clone(), &front_tasks);
    spawn_device_tables(
        appliers.add("device tables", &config_tx),
        mqtt.clone(),
        adms.clone(),
        front.clone(),
        &front_tasks,
    );

    // HTTP API.
    let api_state = api::v1::ApiState {
        config: config_tx.subscribe(),
        store: store.clone(),
        sink: sink.for_driver(api::v1::API_DEVICE),
        status: status.clone(),
        attendance: attendance.clone(),
        tokens: tokens.clone(),
        audit: audit.clone(),
        limiter: api::auth::limiter(),
        qr: api::qr::QrCodes::open(store.db())?,
        metrics: metrics.clone(),
        reload: signals.reload_handle(),
        adms: adms.clone(),
    };
    let health = HealthState { readiness: readiness.clone(), metrics: metrics.clone(), store: store.clone() };
    let (api_addr, api_tls) = start_api(&config, health, api_state, adms.router(), &front, &front_tasks).await?;
    let certificates = Certificates { mqtt: mqtt.clone(), api: api_tls };

    let listeners = Listeners { api: api_addr, mqtt: mqtt.addr, mqtt_tls: mqtt.tls_addr };
    write_listeners(&config.gateway.data_dir, &listeners);

    // Devices the gateway drives itself, each under a supervisor.
    spawn_device_manager(
        &config,
        appliers.add("device drivers", &config_tx),
        &sink,
        history,
        people,
        &metrics,
        &status,
        &front,
        &front_tasks,
    );

    if let Some(user) = &drop_to {
        crate::daemon::privileges::drop_to(user, &config.gateway.data_dir)?;
    }
    // The control socket (`gatewayd token …` while the daemon runs), created by the user the daemon runs as.
    crate::app::control::start(&config.gateway.data_dir, tokens, audit, front.clone(), &front_tasks)?;
    readiness.set_listeners_bound();
    notifier.notify("READY=1");
    notifier.notify(&format!("STATUS=serving: {} devices, api on {api_addr}", config.devices.len()));
    spawn_watchdog(&notifier, &root);
    tracing::info!(gateway = %config.gateway.id, "gateway ready");

    Ok(Running {
        config,
        config_path,
        store,
        sink,
        metrics,
        status,
        listeners,
        durable,
        changes,
        outbox,
        disk_budget,
        attendance,
        config_tx,
        appliers,
        certificates,
        readiness,
        notifier,
        signals,
        root,
        front,
        front_tasks,
        ingest_cancel,
        ingest_tasks,
        back,
        back_tasks,
    })
}

/// Delivery: the feeder moves the change log into the outbox, the sender delivers it upstream over mTLS, and the disk
/// budget monitor guards the disk. All in the back stage: stopped after ingest has flushed.
#[allow(clippy::too_many_arguments)]
fn start_delivery(
    config_tx: &watch::Sender<Arc<Config>>,
    store: &Store,
    changes: &ChangeLog,
    outbox: &Outbox,
    disk_budget: &DiskBudget,
    metrics: &Metrics,
    back: &CancellationToken,
    back_tasks: &TaskTracker,
) {
    let (resend_tx, resend_rx) = tokio::sync::mpsc::channel(feeder::RESEND_QUEUE);
    let feeder_parts = feeder::Feeder {
        outbox: outbox.clone(),
        changes: changes.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
    };
    back_tasks.spawn(feeder::run(feeder_parts, resend_rx, back.clone()));
    let sender = crate::upstream::Sender {
        outbox: outbox.clone(),
        config: config_tx.subscribe(),
        metrics: metrics.clone(),
        resend: resend_tx,
    };
    back_tasks.spawn(crate::upstream::run(sender, back.clone()));
    back_tasks.spawn(budget::monitor(
        store.clone(),
        config_tx.subscribe(),
        disk_budget.clone(),
        metrics.clone(),
        back.clone(),
    ));
}

/// Binds the API listener and serves health, metrics, the ADMS routes and `/api/v1` on it (over TLS when configured).
/// Returns the bound address and the TLS configuration that SIGHUP reloads.
async fn start_api(
    config: &Config,
    health: HealthState,
    state: api::v1::ApiState,
    adms: axum::Router,
    front: &CancellationToken,
    front_tasks: &TaskTracker,
) -> Result<(SocketAddr, Option<api::tls::SharedConfig>), AppError> {
    let api_listener = bind("api", &config.api.listen).await?;
    let api_addr = api_listener.local_addr().map_err(|source| AppError::Bind {
        what: "api",
        addr: config.api.listen.clone(),
        source,
    })?;
    let router = api::health_router(health)
        .merge(adms.layer(axum::middleware::from_fn(api::with_peer)))
        .merge(api::v1::router(state))
        .layer(axum::extract::DefaultBodyLimit::max(config.api.max_body_bytes));
    let api_cancel = front.clone();
    let api_tls = config
        .api
        .tls
        .as_ref()
        .map(api::tls::config)
        .transpose()
        .map_err(AppError::ApiTls)?
        .map(api::tls::SharedConfig::new);
    let served_tls = api_tls.clone();
    front_tasks.spawn(async move {
        let served = match served_tls {
            Some(tls) => api::tls::serve(api_listener, tls, router, api_cancel).await,
            None => api::serve(api_listener, router, api_cancel).await,
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "api server failed");
        }
    });
    tracing::info!(addr = %api_addr, "api listening");
    Ok((api_addr, api_tls))
}

/// `WATCHDOG=1` at half of systemd's `WATCHDOG_USEC`, when it is set, until `root` is cancelled.
fn spawn_watchdog(notifier: &Notifier, root: &CancellationToken) {
    let Some(every) = notifier.watchdog_interval() else { return };
    let n = Notifier::from_env();
    let cancel = root.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => n.notify("WATCHDOG=1"),
                _ = cancel.cancelled() => break,
            }
        }
    });
}

fn write_listeners(data_dir: &Path, listeners: &Listeners) {
    let path = data_dir.join(LISTENERS_FILE);
    let tmp = data_dir.join(format!("{LISTENERS_FILE}.tmp"));
    let body = serde_json::to_vec_pretty(listeners).unwrap_or_default();
    if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &path)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the listener addresses");
    }
}

impl Running {
    /// Subscribes to configuration reloads.
    pub fn config_updates(&self) -> watch::Receiver<Arc<Config>> {
        self.config_tx.subscribe()
    }

    /// The root cancellation token (cancel it to stop the gateway from inside, as `demo` does on Ctrl-C).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.root.clone()
    }

    /// Stops in pipeline order within [`SHUTDOWN_GRACE`].
    pub async fn shutdown(self) {
        self.notifier.notify("STOPPING=1");
        self.readiness.set_stopping();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let stage = |name: &'static str, token: CancellationToken, tasks: TaskTracker| async move {
            token.cancel();
            tasks.close();
            if tokio::time::timeout_at(deadline, tasks.wait()).await.is_err() {
                tracing::error!(stage = name, "did not stop in time");
            }
        };
        stage("drivers and api", self.front.clone(), self.front_tasks.clone()).await;
        stage("ingest", self.ingest_cancel.clone(), self.ingest_tasks.clone()).await;
        stage("delivery", self.back.clone(), self.back_tasks.clone()).await;
        self.root.cancel();
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "final store flush failed");
        }
        tracing::info!("stopped");
    }

    /// Spawns a task of the delivery stages (engine, outbox, upstream): stopped after ingest has flushed.
    pub fn spawn_back<F>(&self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.back_tasks.spawn(task(self.back.clone()));
    }
}

/// Loads and validates a configuration, returning the problems formatted one per line.
pub fn load_config(path: &Path) -> Result<Config, Vec<Problem>> {
    load::load(path).map(|(c, _)| c)
}

/// The registry with every stage's metrics, as the daemon exports them on `/metrics`.
pub fn metrics() -> Metrics {
    Metrics::builder()
        .stage::<crate::store::metrics::StoreMetrics>()
        .stage::<crate::reconcile::metrics::EngineMetrics>()
        .stage::<crate::outbox::metrics::OutboxMetrics>()
        .stage::<crate::upstream::metrics::UpstreamMetrics>()
        .stage::<crate::api::qr::TrustMetrics>()
        .stage::<crate::app::retention::RetentionMetrics>()
        .build()
}
