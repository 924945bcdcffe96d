//! Starting and stopping the real daemon for tests.

#![allow(dead_code)]

pub mod nats;
pub mod postgres;

use std::fmt::Debug;
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gatewayd")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// How long [`wait_until`] waits before it looks again. Short: it polls a condition, it does not synchronise by sleeping.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Observes a state with `observe` until `done` holds for it, and returns that state. Panics after `limit` with what
/// was awaited and the last state observed. The one bounded wait of the tests for conditions nothing announces.
///
/// ```ignore
/// wait_until("the first punch stored", LIMIT, || gw.metric(STORED), |n| *n == Some(1.0));
/// ```
pub fn wait_until<S: Debug>(
    what: &str,
    limit: Duration,
    mut observe: impl FnMut() -> S,
    mut done: impl FnMut(&S) -> bool,
) -> S {
    let deadline = Instant::now() + limit;
    loop {
        let state = observe();
        if done(&state) {
            return state;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}; last observed: {state:?}");
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// The `[gateway]` table and loopback listeners on free ports; append devices and sections after it.
pub fn base_config(gateway_id: &str) -> String {
    format!(
        "[gateway]\nid = \"{gateway_id}\"\ndata_dir = \"data\"\ntimezone = \"Asia/Shanghai\"\nallow_root = true\n\n\
         [api]\nlisten = \"127.0.0.1:0\"\n\n[mqtt]\nlisten = \"127.0.0.1:0\"\n\n"
    )
}

/// A running daemon in its own temporary directory.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    child: Option<Child>,
    notify: UnixDatagram,
    notify_path: PathBuf,
    /// Everything the last daemon process wrote to stderr (filled when it exits).
    pub stderr: String,
    /// `listeners.json` of the running process.
    pub listeners: serde_json::Value,
    /// Drains the daemon's stderr while it runs (a full pipe would block the daemon's logging, and with it the daemon).
    stderr_reader: Option<std::thread::JoinHandle<String>>,
    /// Extra environment of the daemon process (every start).
    pub env: Vec<(String, String)>,
}

impl Gateway {
    /// Writes `config` to `gatewayd.toml` in a new temporary directory and starts the daemon, waiting until it is ready.
    pub fn start(config: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        Gateway::start_in(dir, config)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Gateway {
        Gateway::start_in_env(dir, config, &[])
    }

    /// [`Gateway::start_in`] with extra environment variables for the daemon, e.g. `GATEWAYD_ENGINE_TICK_MS`.
    pub fn start_in_env(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Gateway {
        let config_path = dir.path().join("gatewayd.toml");
        std::fs::write(&config_path, config).expect("write config");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        // A daemon that dropped root privileges must still be able to notify.
        std::fs::set_permissions(&notify_path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).expect("chmod");
        notify.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let mut gw = Gateway {
            dir,
            config_path,
            child: None,
            notify,
            notify_path,
            stderr: String::new(),
            listeners: serde_json::Value::Null,
            stderr_reader: None,
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        };
        gw.spawn();
        gw
    }

    /// Starts the daemon process (again) and waits for `READY=1`.
    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.dir.path().join("data").join("listeners.json"));
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env("NOTIFY_SOCKET", &self.notify_path)
            .env("RUST_LOG", std::env::var("GATEWAYD_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gatewayd");
        let mut child = child;
        self.stderr_reader = child.stderr.take().map(|mut err| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                s
            })
        });
        self.child = Some(child);
        self.wait_for("READY=1", Duration::from_secs(60));
        let listeners = std::fs::read(self.dir.path().join("data").join("listeners.json")).expect("listeners.json");
        self.listeners = serde_json::from_slice(&listeners).expect("listeners.json is JSON");
    }

    /// Waits for a notification starting with `prefix`; panics with the daemon's stderr if it exits first.
    pub fn wait_for(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if msg.lines().any(|l| l.starts_with(prefix)) {
                        return msg;
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
            if let Some(status) = self.try_exit_status() {
                panic!("gatewayd exited with {status} before {prefix}; stderr:\n{}", self.stderr);
            }
            assert!(Instant::now() < deadline, "no {prefix} within {limit:?}");
        }
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.collect_stderr();
                Some(status)
            }
            _ => None,
        }
    }

    fn collect_stderr(&mut self) {
        if let Some(reader) = self.stderr_reader.take() {
            if let Ok(s) = reader.join() {
                self.stderr.push_str(&s);
            }
        }
        if let Some(child) = self.child.as_mut() {
            if let Some(mut err) = child.stderr.take() {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                self.stderr.push_str(&s);
            }
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// An address from `listeners.json`, e.g. `addr("api")`.
    pub fn addr(&self, name: &str) -> std::net::SocketAddr {
        self.listeners[name].as_str().unwrap_or_else(|| panic!("no listener {name}")).parse().expect("socket address")
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("kill");
    }

    /// Waits for the process to exit (panics after `limit`) and returns its status; stderr is collected.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let status = wait_until("gatewayd to exit", limit, || self.try_exit_status(), Option::is_some);
        self.child = None;
        status.expect("wait_until returns a state that is done")
    }

    /// SIGTERM and wait; returns the status and how long the stop took.
    pub fn stop(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(15));
        (status, started.elapsed())
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        self.wait_exit(Duration::from_secs(10));
    }

    /// A new API token (`gatewayd token create ARGS --config …`), e.g. `&["--role", "admin"]`.
    pub fn token(&self, args: &[&str]) -> String {
        let config = self.config_path.to_str().unwrap();
        let mut all = vec!["token", "create"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", config]);
        let (code, out, err) = run_cli(&all, &[]);
        assert_eq!(code, 0, "token create {args:?}: {err}");
        let t = out.trim().to_owned();
        assert!(t.starts_with("gw_"), "{out}");
        t
    }

    /// GET `path` on the API listener: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http("GET", self.addr("api"), path, &[], None)
    }

    /// One metric sample by its exact series text (e.g. `gatewayd_punches_stored_total{driver="mqtt",device="d1"}`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics");
        body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }

    /// Waits until the metric `series` is at least `at_least` and returns its value.
    pub fn wait_metric_at_least(&self, series: &str, at_least: f64, limit: Duration) -> f64 {
        let what = format!("{series} to reach {at_least}");
        let value = wait_until(&what, limit, || self.metric(series), |v| *v >= Some(at_least));
        value.unwrap_or(at_least)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Uploads ATTLOG `lines` (one record per line) as the ZKTeco terminal `sn` would, with `Stamp={stamp}`, and checks
/// the answer is `OK: n` for all of them (that is, they are durable).
pub fn upload_attlog(gw: &Gateway, sn: &str, stamp: u32, lines: String) {
    let n = lines.lines().count();
    let (status, body) = http(
        "POST",
        gw.addr("api"),
        &format!("/iclock/cdata?SN={sn}&table=ATTLOG&Stamp={stamp}"),
        &[],
        Some(lines.into_bytes()),
    );
    assert_eq!((status, body), (200, format!("OK: {n}\n")));
}

/// A blocking HTTP/1.1 request through hyper on a throwaway runtime: (status, body).
pub fn http(
    method: &str,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, String) {
    let (status, body) = http_bytes(method, addr, path, headers, body);
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub fn http_bytes(
    method: &str,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, Vec<u8>) {
    use http_body_util::{BodyExt, Full};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Full<bytes::Bytes>>();
        let mut req = hyper::Request::builder().method(method).uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(bytes::Bytes::from(body.unwrap_or_default()))).expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
            .await
            .expect("http timeout")
            .expect("http request");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes().to_vec();
        (status, body)
    })
}

/// Development certificates (`gatewayd certs dev`) in `dir/certs`: `ca.pem`, `server.pem`/`.key`, `client.pem`/`.key`.
pub fn dev_certs(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    let (code, stdout, stderr) = run_cli(&["certs", "dev", "--out", certs.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "gatewayd certs dev: {stdout}{stderr}");
    certs
}

/// [`dev_certs`] with a client certificate named `client_name` (receivers accept batches only from the gateway their
/// client certificate names: use the gateway id).
pub fn dev_certs_named(dir: &Path, client_name: &str) -> PathBuf {
    let certs = dir.join("certs");
    let (code, stdout, stderr) =
        run_cli(&["certs", "dev", "--out", certs.to_str().unwrap(), "--client-name", client_name], &[]);
    assert_eq!(code, 0, "gatewayd certs dev: {stdout}{stderr}");
    certs
}

/// Runs `gatewayd` with `args` to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).envs(env.iter().copied()).output().expect("run gatewayd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn wait_until_returns_the_state_or_names_what_it_awaited_and_what_it_saw() {
    let mut polls = 0;
    let count = || {
        polls += 1;
        polls
    };
    assert_eq!(wait_until("the third poll", Duration::from_secs(5), count, |n| *n == 3), 3);
    let timed_out =
        std::panic::catch_unwind(|| wait_until("seven to change", Duration::from_millis(50), || 7, |_| false));
    let message = timed_out.expect_err("the wait times out");
    let message = message.downcast_ref::<String>().expect("a formatted panic message");
    assert!(message.contains("waiting for seven to change; last observed: 7"), "{message}");
}
