//! The configuration file (SPEC section 2): serde structs that reject unknown keys, then explicit checks of every field
//! ([`Config::check`] for the sections no stage owns; each stage checks its own, see [`crate::app::load::check`]) and of
//! every file the configuration references.
//!
//! Relative paths are relative to the directory of the configuration file; the loader ([`crate::app::load::load`])
//! resolves them. Problems are
//! reported as `FILE:LINE: key: problem` (see [`source`]).

pub mod reload;
pub mod source;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drivers::config::{DeviceConfig, DriverKind, HumanDuration};
use serde::Deserialize;

pub use source::{Problem, Seg, TomlSource};

/// The default configuration path when neither `--config` nor `$GATEWAYD_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/gatewayd/gatewayd.toml";

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This gateway: its id, where it keeps data, its time zone.
    pub gateway: GatewaySection,
    /// The local HTTP API (health, metrics, ADMS push, the admin API).
    #[serde(default)]
    pub api: ApiSection,
    /// The embedded MQTT broker for MQTT devices.
    #[serde(default)]
    pub mqtt: MqttSection,
    /// The durable punch store.
    #[serde(default)]
    pub store: StoreSection,
    /// The devices on the site, one `[[device]]` table each.
    #[serde(default, rename = "device")]
    pub devices: Vec<DeviceConfig>,
    /// The employee roster CSV.
    pub roster: Option<FileSection>,
    /// The attendance rules file.
    pub rules: Option<FileSection>,
    /// The schedule CSV (`employee,date,shift`): day assignments that override a group's shift or rotation.
    pub schedule: Option<FileSection>,
    /// Where reconciled records go; without it they wait in the outbox.
    pub upstream: Option<UpstreamSection>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Unique per gateway; part of every punch id and upstream batch. Letters, digits, '-', '_', '.'.
    pub id: String,
    /// Where the store and the control socket live. Created if missing.
    pub data_dir: PathBuf,
    /// The IANA time zone of the site, e.g. `Asia/Shanghai`; device local times are read in it.
    pub timezone: String,
    /// Started as root (outside systemd): the user to drop to once the store is open and the listeners are bound.
    pub user: Option<String>,
    /// Allow running as root with no `user` to drop to. Default false: running as root is refused.
    #[serde(default)]
    pub allow_root: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// The address the HTTP API listens on, e.g. `127.0.0.1:8080`. Port 0 picks a free port.
    #[serde(default = "default_api_listen")]
    pub listen: String,
    /// Optional TLS (and mTLS with `client_ca`) for the API listener.
    pub tls: Option<TlsFiles>,
    /// Largest request body accepted, in bytes. Default 1 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Requests per second one API token may make, sustained (1..=10000). Default 20.
    #[serde(default = "default_rate_per_sec")]
    pub rate_per_sec: u32,
    /// Requests one API token may make in a burst (1..=100000). Default 60.
    #[serde(default = "default_rate_burst")]
    pub rate_burst: u32,
    /// Longest an `/api/v1` request may take before it is answered 503, e.g. `"30s"` (1 s to 10 min). Default 30 s.
    pub request_timeout: Option<HumanDuration>,
    /// How long after its time an offline punch claim (`"offline": true`) may be posted, e.g. `"4h"` (1m to 168h);
    /// older claims are refused with a reason. Default 4 h.
    pub offline_claim_limit: Option<HumanDuration>,
    /// Client certificates that stand for a role, one `[[api.client_cert]]` table each (mutual TLS: needs
    /// `tls.client_ca`). A request on such a connection without a bearer token acts with this role; a bearer token,
    /// when sent, decides instead.
    #[serde(default, rename = "client_cert")]
    pub client_certs: Vec<ClientCertRole>,
}

/// A client certificate mapped to an API role (`[[api.client_cert]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertRole {
    /// The subject common name of the certificate (issued by `api.tls.client_ca`), e.g. `"hr-office-pc"`.
    pub common_name: String,
    /// `admin`, `manager` or `employee`, with the same scope rules as tokens.
    pub role: crate::tokens::Role,
    /// For a manager: narrows the departments its employee manages in the roster (or, with no employee, the
    /// departments it reads; it then decides nothing).
    #[serde(default)]
    pub departments: Vec<String>,
    /// For an employee: who it is. For a manager: whose roster `manages` column is its scope; required to decide.
    pub employee: Option<String>,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: default_api_listen(),
            tls: None,
            max_body_bytes: default_max_body_bytes(),
            rate_per_sec: default_rate_per_sec(),
            rate_burst: default_rate_burst(),
            request_timeout: None,
            offline_claim_limit: None,
            client_certs: Vec::new(),
        }
    }
}

impl ApiSection {
    /// The request timeout in force.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(30))
    }

    /// The offline claim limit in force.
    pub fn offline_claim_limit(&self) -> Duration {
        self.offline_claim_limit.map(|d| d.0).unwrap_or(Duration::from_secs(4 * 3600))
    }
}

fn default_rate_per_sec() -> u32 {
    20
}

fn default_rate_burst() -> u32 {
    60
}

fn default_api_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_max_body_bytes() -> usize {
    1 << 20
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// The plain MQTT listener for devices, e.g. `127.0.0.1:1883`.
    #[serde(default = "default_mqtt_listen")]
    pub listen: String,
    /// Optional TLS listener where devices authenticate with client certificates; needs `tls`.
    pub tls_listen: Option<String>,
    /// Certificate, key and the CA that issued device certificates, for `tls_listen`.
    pub tls: Option<TlsFiles>,
    /// Largest punch payload accepted, in bytes. Default 4096.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            listen: default_mqtt_listen(),
            tls_listen: None,
            tls: None,
            max_payload_bytes: default_max_payload_bytes(),
        }
    }
}

fn default_mqtt_listen() -> String {
    "127.0.0.1:1883".into()
}

fn default_max_payload_bytes() -> usize {
    4096
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain of this listener or client.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle that client certificates must chain to (enables mutual TLS).
    pub client_ca: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// Most punches written in one group commit. Default 4096.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Requests waiting for the store before drivers are slowed down. Default 1024.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// sled page cache in MiB. Default 16.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
    /// Most disk the database (punches, outbox, engine state) may use, in MiB; 0 means no budget. At the budget new
    /// punches are refused with `store_full` (devices keep them and retry); nothing undelivered is dropped. Default 8192.
    #[serde(default = "default_disk_budget_mb")]
    pub disk_budget_mb: u64,
    /// Percentage of `disk_budget_mb` from which an alarm is raised (metric and log). 50..99, default 90.
    #[serde(default = "default_disk_alarm_percent")]
    pub disk_alarm_percent: u8,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            max_batch: default_max_batch(),
            queue: default_queue(),
            cache_mb: default_cache_mb(),
            disk_budget_mb: default_disk_budget_mb(),
            disk_alarm_percent: default_disk_alarm_percent(),
        }
    }
}

fn default_max_batch() -> usize {
    4096
}

fn default_queue() -> usize {
    1024
}

fn default_cache_mb() -> u64 {
    16
}

fn default_disk_budget_mb() -> u64 {
    8192
}

fn default_disk_alarm_percent() -> u8 {
    90
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSection {
    /// Path of the file, relative to the configuration file.
    pub file: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Where batches go: `https://HOST[:PORT][/PATH]` (posted to `{url}/v1/batches`), or `nats://HOST:PORT` to publish
    /// them to a NATS JetStream stream (SPEC 6.1, docs/fleet.md).
    pub url: String,
    /// NATS only: more servers of the same cluster (`nats://HOST:PORT`), tried together with `url`.
    #[serde(default)]
    pub servers: Vec<String>,
    /// NATS only: batches are published on `{subject_prefix}.{gateway id}`. Default `gatewayd.v1.batches`.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// NATS only: the JetStream stream that holds the batches (operators create it; the gateway says when it is
    /// missing). Default `GATEWAYD`.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// NATS only: the gateway answers requests to send work dates again on `{resend_prefix}.{gateway id}`.
    /// Default `gatewayd.v1.resend`.
    #[serde(default = "default_resend_prefix")]
    pub resend_prefix: String,
    /// PEM CA the receiver's certificate must chain to.
    pub ca: PathBuf,
    /// PEM client certificate of this gateway.
    pub cert: PathBuf,
    /// PEM private key of this gateway.
    pub key: PathBuf,
    /// Per-request timeout. Default 30s.
    pub timeout: Option<HumanDuration>,
    /// Most items (punches, records, digests) in one batch. 1..100000, default 5000.
    #[serde(default = "default_batch_max_items")]
    pub batch_max_items: usize,
    /// Most bytes of items in one batch (a single larger item still goes alone). 4096..67108864, default 4194304.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// How long a batch that is not full waits for more items before it is sent. Up to 10s, default 200ms.
    pub linger: Option<HumanDuration>,
    /// Longest wait between retries of a failing batch (backoff doubles up to this, with jitter); also how often a
    /// refused batch is tried again. 1s..1h, default 60s.
    pub max_backoff: Option<HumanDuration>,
    /// Days delivered punches and records are kept for `resend_dates` (counted from their work date). 1..3650,
    /// default 30.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
}

impl UpstreamSection {
    pub fn timeout(&self) -> Duration {
        self.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(30))
    }

    pub fn linger(&self) -> Duration {
        self.linger.map(|d| d.0).unwrap_or(Duration::from_millis(200))
    }

    pub fn max_backoff(&self) -> Duration {
        self.max_backoff.map(|d| d.0).unwrap_or(Duration::from_secs(60))
    }

    /// The defaults of `subject_prefix`, `stream` and `resend_prefix`.
    pub fn nats_defaults() -> (String, String, String) {
        (default_subject_prefix(), default_stream(), default_resend_prefix())
    }
}

fn default_batch_max_items() -> usize {
    5000
}

fn default_batch_max_bytes() -> usize {
    4 << 20
}

fn default_subject_prefix() -> String {
    "gatewayd.v1.batches".into()
}

fn default_stream() -> String {
    "GATEWAYD".into()
}

fn default_resend_prefix() -> String {
    "gatewayd.v1.resend".into()
}

/// Days delivered data is kept when `[upstream]` does not say.
pub fn default_retention_days() -> u32 {
    30
}

impl Config {
    /// Reads the file, parses it (unknown keys are errors) and resolves relative paths. Nothing is checked beyond the
    /// syntax and the types: the full check is [`crate::app::load_config`], which runs [`Config::check`] and each
    /// stage's check of its own section.
    pub fn parse(path: &Path) -> Result<(Config, TomlSource), Vec<Problem>> {
        let source = TomlSource::read(path).map_err(|p| vec![p])?;
        Config::parse_source(path, source)
    }

    /// [`Config::parse`] after the read: `source` is the text of the file at `path` (relative paths in it are resolved
    /// against `path`'s directory).
    pub fn parse_source(path: &Path, source: TomlSource) -> Result<(Config, TomlSource), Vec<Problem>> {
        let mut config: Config = source.deserialize().map_err(|p| vec![p])?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.resolve_paths(&base);
        Ok((config, source))
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.gateway.data_dir);
        for tls in [self.api.tls.as_mut(), self.mqtt.tls.as_mut()].into_iter().flatten() {
            fix(&mut tls.cert);
            fix(&mut tls.key);
            if let Some(ca) = tls.client_ca.as_mut() {
                fix(ca);
            }
        }
        for f in [self.roster.as_mut(), self.rules.as_mut(), self.schedule.as_mut()].into_iter().flatten() {
            fix(&mut f.file);
        }
        if let Some(up) = self.upstream.as_mut() {
            fix(&mut up.ca);
            fix(&mut up.cert);
            fix(&mut up.key);
        }
    }

    /// The site time zone (validated by `load`).
    pub fn timezone(&self) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get(&self.gateway.timezone).unwrap_or(jiff::tz::TimeZone::UTC)
    }

    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.listen.parse().ok()
    }

    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt.listen.parse().ok()
    }

    /// Checks what no stage owns: `[gateway]`, `[mqtt]` (the drivers' listener), the devices and the listener
    /// addresses together. Each stage checks its own section (see [`crate::app::load_config`]).
    pub fn check(&self, out: &mut Problems<'_>) {
        let gw = &self.gateway;
        if let Err(e) = drivers::config::valid_device_id(&gw.id) {
            out.add(&[Seg::Key("gateway"), Seg::Key("id")], "gateway.id", e);
        }
        if jiff::tz::TimeZone::get(&gw.timezone).is_err() {
            out.add(
                &[Seg::Key("gateway"), Seg::Key("timezone")],
                "gateway.timezone",
                format!("`{}` is not a known IANA time zone (e.g. Asia/Shanghai)", gw.timezone),
            );
        }
        if gw.data_dir.exists() && !gw.data_dir.is_dir() {
            out.add(
                &[Seg::Key("gateway"), Seg::Key("data_dir")],
                "gateway.data_dir",
                format!("{} exists and is not a directory", gw.data_dir.display()),
            );
        }

        check_addr(out, "mqtt", "listen", Some(&self.mqtt.listen));
        check_addr(out, "mqtt", "tls_listen", self.mqtt.tls_listen.as_ref());
        match (&self.mqtt.tls_listen, &self.mqtt.tls) {
            (Some(_), None) => out.add(
                &[Seg::Key("mqtt"), Seg::Key("tls_listen")],
                "mqtt.tls",
                "missing: tls_listen needs tls = { cert, key, client_ca }".into(),
            ),
            (None, Some(_)) => out.add(
                &[Seg::Key("mqtt"), Seg::Key("tls")],
                "mqtt.tls_listen",
                "missing: tls is set but tls_listen is not".into(),
            ),
            (Some(_), Some(tls)) => check_tls(out, "mqtt", tls),
            (None, None) => {}
        }
        if self.mqtt.max_payload_bytes < 256 || self.mqtt.max_payload_bytes > 1 << 20 {
            out.add(
                &[Seg::Key("mqtt"), Seg::Key("max_payload_bytes")],
                "mqtt.max_payload_bytes",
                "must be between 256 and 1048576".into(),
            );
        }
        let listeners = [Some(&self.api.listen), Some(&self.mqtt.listen), self.mqtt.tls_listen.as_ref()];
        let mut seen_addrs = HashSet::new();
        for addr in listeners.into_iter().flatten().filter_map(|a| a.parse::<SocketAddr>().ok()) {
            if addr.port() != 0 && !seen_addrs.insert(addr) {
                out.add(
                    &[Seg::Key("mqtt"), Seg::Key("listen")],
                    "mqtt.listen",
                    format!("{addr} is used by two listeners"),
                );
            }
        }

        let mut ids = HashSet::new();
        let mut serials = HashSet::new();
        let mut ports = HashSet::new();
        for (i, device) in self.devices.iter().enumerate() {
            let name = if device.id.is_empty() { i.to_string() } else { device.id.clone() };
            let at = |key: &'static str| vec![Seg::Key("device"), Seg::Index(i), Seg::Key(key)];
            for p in device.validate() {
                out.add(&at(p.key), &format!("device[{name}].{}", p.key), p.message);
            }
            if !ids.insert(device.id.as_str()) {
                out.add(&at("id"), &format!("device[{name}].id"), format!("`{}` is used by another device", device.id));
            }
            if let Some(sn) = &device.serial_number {
                if !serials.insert(sn.as_str()) {
                    out.add(
                        &at("serial_number"),
                        &format!("device[{name}].serial_number"),
                        format!("`{sn}` is used by another device"),
                    );
                }
            }
            if let (true, Some(port)) = (device.driver.is_serial(), &device.port) {
                if !ports.insert(port.as_str()) {
                    out.add(
                        &at("port"),
                        &format!("device[{name}].port"),
                        format!("`{port}` is used by another device"),
                    );
                }
            }
            if device.driver == DriverKind::Adms && self.api.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
                out.add(
                    &at("driver"),
                    &format!("device[{name}].driver"),
                    "adms terminals cannot present client certificates, but api.tls requires them".into(),
                );
            }
        }
    }
}

/// Collects problems with their lines.
pub struct Problems<'a> {
    source: &'a TomlSource,
    pub list: Vec<Problem>,
}

impl<'a> Problems<'a> {
    pub fn new(source: &'a TomlSource) -> Problems<'a> {
        Problems { source, list: Vec::new() }
    }

    pub fn add(&mut self, path: &[Seg<'_>], key: &str, message: String) {
        let line = self.source.line_of_path(path);
        self.list.push(Problem { file: self.source.path.clone(), line, key: key.to_owned(), message });
    }
}

/// Checks a file a stage reads (`[roster].file`, `[rules].file`): that it exists and is readable, then its contents
/// with `load`, which reports problems with the file's own `FILE:LINE`. `written` is the copy the API wrote to the
/// data dir, which wins over the configured file when it exists: it is checked too.
pub fn check_stage_file<T>(
    out: &mut Problems<'_>,
    section: &'static str,
    file: Option<&FileSection>,
    written: &Path,
    load: impl Fn(&Path) -> Result<T, Vec<Problem>>,
) {
    if let Some(f) = file {
        let before = out.list.len();
        check_file(out, &[Seg::Key(section), Seg::Key("file")], &format!("{section}.file"), &f.file);
        if out.list.len() == before {
            out.list.extend(load(&f.file).err().unwrap_or_default());
        }
    }
    if written.is_file() {
        out.list.extend(load(written).err().unwrap_or_default());
    }
}

pub fn check_addr(out: &mut Problems<'_>, section: &'static str, key: &'static str, value: Option<&String>) {
    if let Some(v) = value {
        if v.parse::<SocketAddr>().is_err() {
            out.add(
                &[Seg::Key(section), Seg::Key(key)],
                &format!("{section}.{key}"),
                format!("`{v}` is not an address like 127.0.0.1:8080 or [::1]:8080"),
            );
        }
    }
}

pub fn check_tls(out: &mut Problems<'_>, section: &'static str, tls: &TlsFiles) {
    let files = [("cert", Some(&tls.cert)), ("key", Some(&tls.key)), ("client_ca", tls.client_ca.as_ref())];
    for (key, path) in files {
        if let Some(path) = path {
            check_file(out, &[Seg::Key(section), Seg::Key("tls")], &format!("{section}.tls.{key}"), path);
        }
    }
}

pub fn check_file(out: &mut Problems<'_>, at: &[Seg<'_>], key: &str, path: &Path) {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {
            if let Err(e) = std::fs::File::open(path) {
                out.add(at, key, format!("cannot read {}: {e}", path.display()));
            }
        }
        Ok(_) => out.add(at, key, format!("{} is not a file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.add(at, key, format!("{} does not exist", path.display()))
        }
        Err(e) => out.add(at, key, format!("cannot read {}: {e}", path.display())),
    }
}
