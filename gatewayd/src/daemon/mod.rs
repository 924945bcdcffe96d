//! Process-level concerns: signals, systemd notification, and the supervisor that restarts failing tasks.

pub mod privileges;

use std::future::Future;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a signal asks the daemon to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: stop gracefully.
    Stop,
    /// SIGHUP: reload configuration, rules, roster and certificates.
    Reload,
}

/// The daemon's signal handlers, installed once at start-up, and the in-process way to ask for a reload.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    requests: mpsc::Receiver<()>,
    handle: ReloadHandle,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        // One waiting request is enough: requests made before the reload starts are all served by it.
        let (tx, requests) = mpsc::channel(1);
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            requests,
            handle: ReloadHandle { tx },
        })
    }

    /// A handle that asks for a reload as SIGHUP does (the API uses it after writing rules).
    pub fn reload_handle(&self) -> ReloadHandle {
        self.handle.clone()
    }

    /// Waits for the next signal or reload request.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
            Some(()) = self.requests.recv() => Signal::Reload,
        }
    }
}

/// Asks the running daemon to reload its configuration, rules, roster and certificates, exactly as SIGHUP does (one
/// reload path: the daemon's signal loop). Cheap to clone.
#[derive(Clone, Debug)]
pub struct ReloadHandle {
    tx: mpsc::Sender<()>,
}

impl ReloadHandle {
    /// Asks for a reload. Returns at once; a request made while another is waiting to start joins it.
    pub fn request(&self) {
        let _ = self.tx.try_send(());
    }
}

/// systemd's notification socket (`sd_notify`), when `NOTIFY_SOCKET` is set. Without it every call does nothing.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Notifier { socket: None } };
        let path = path.to_string_lossy().into_owned();
        let addr = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        } else {
            std::os::unix::net::SocketAddr::from_pathname(&path)
        };
        match (UnixDatagram::unbound(), addr) {
            (Ok(sock), Ok(addr)) => Notifier { socket: Some((sock, addr)) },
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(socket = %path, error = %e, "NOTIFY_SOCKET is set but unusable; not notifying systemd");
                Notifier { socket: None }
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends one notification such as `READY=1` or `STATUS=…`.
    pub fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                tracing::debug!(error = %e, state, "sd_notify failed");
            }
        }
    }

    /// The watchdog interval requested by systemd (half of `WATCHDOG_USEC`), if any and meant for this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.socket.as_ref()?;
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok()) {
            if pid != std::process::id() {
                return None;
            }
        }
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

/// Restart policy for supervised tasks (and the outbox and upstream retries): `drivers::backoff`, whose default is the
/// supervisor's policy.
pub use drivers::backoff::Backoff;

/// Runs `task` until `cancel` fires, restarting it with backoff whenever it returns an error (or returns early).
/// One failing device never takes the daemon down.
pub async fn supervise<F, Fut, E>(
    name: String,
    driver: &'static str,
    backoff: Backoff,
    cancel: CancellationToken,
    mut task: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut retries = drivers::backoff::Retries::new(backoff);
    loop {
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = task() => r,
            _ = cancel.cancelled() => return,
        };
        if cancel.is_cancelled() {
            return;
        }
        retries.ran_for(started.elapsed());
        let delay = retries.next_delay();
        match result {
            Err(e) => driver_restarting(&name, driver, &e, delay),
            Ok(()) => driver_restarting(&name, driver, &"task ended unexpectedly", delay),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// A supervised task failed or ended and is started again after `backoff` (an internal event: it logs).
fn driver_restarting(device: &str, driver: &str, error: &dyn std::fmt::Display, backoff: Duration) {
    tracing::warn!(device, driver, %error, backoff_ms = backoff.as_millis() as u64, "driver failed; restarting");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn supervisor_restarts_a_failing_task() {
        let runs = Arc::new(AtomicU32::new(0));
        let cancel = CancellationToken::new();
        let r = runs.clone();
        let c = cancel.clone();
        let backoff = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            stable_after: Duration::from_secs(60),
        };
        let handle = tokio::spawn(supervise("dev".into(), "test", backoff, cancel.clone(), move || {
            let r = r.clone();
            let c = c.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) >= 4 {
                    c.cancel();
                    c.cancelled().await;
                    Ok(())
                } else {
                    Err("port vanished")
                }
            }
        }));
        handle.await.ok();
        assert_eq!(runs.load(Ordering::SeqCst), 5);
    }
}
