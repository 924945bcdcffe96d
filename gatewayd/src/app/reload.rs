//! Serving until a stop signal, and reloading on SIGHUP (or a [`crate::daemon::ReloadHandle`] request): the
//! configuration, rules, roster and certificates are re-read; each task that acts on a reload says when it has
//! applied it ([`crate::config::reload`]), and `READY=1` follows.

use super::*;
use crate::daemon::Signal;

impl Running {
    /// Serves until SIGTERM/SIGINT (or the root token is cancelled); reloads on SIGHUP. Then stops gracefully.
    pub async fn run_until_signalled(mut self) -> Result<(), AppError> {
        // A reload waiting for the tasks that apply it (a newer SIGHUP replaces it; SIGTERM does not wait for it).
        let mut reloading: Option<Reloading> = None;
        loop {
            tokio::select! {
                sig = self.signals.next() => match sig {
                    Signal::Stop => {
                        tracing::info!("stop requested");
                        break;
                    }
                    Signal::Reload => match self.begin_reload() {
                        Some(wait) => reloading = Some(wait),
                        // A bad file while a good reload is still being applied: that one reports READY=1.
                        None if reloading.is_some() => {}
                        None => self.notifier.notify("READY=1"),
                    },
                },
                late = async {
                    match reloading.as_mut() {
                        Some(wait) => wait.await,
                        None => std::future::pending().await,
                    }
                } => {
                    reloading = None;
                    if late.is_empty() {
                        tracing::info!(path = %self.config_path.display(), "configuration reloaded");
                    } else {
                        tracing::warn!(
                            path = %self.config_path.display(),
                            waiting_for = ?late,
                            limit = ?RELOAD_LIMIT,
                            "configuration reloaded; not yet in effect everywhere, it will be"
                        );
                    }
                    self.notifier.notify("READY=1");
                }
                _ = self.root.cancelled() => break,
            }
        }
        self.shutdown().await;
        Ok(())
    }

    /// Re-reads the configuration file (after `RELOADING=1`). A good one goes to every stage, and the result waits for
    /// the tasks that act on it (at most [`RELOAD_LIMIT`]) and names those that had not applied it; after it the reload
    /// is reported done. A file with problems is logged, the old configuration stays, and the result is `None`.
    fn begin_reload(&self) -> Option<Reloading> {
        self.notifier.notify("RELOADING=1");
        let new = match load::load(&self.config_path) {
            Ok((new, _)) => new,
            Err(problems) => {
                for p in &problems {
                    tracing::error!(problem = %p, "configuration not reloaded");
                }
                return None;
            }
        };
        let old = self.config_tx.borrow().clone();
        for (what, changed) in [
            ("gateway.id", old.gateway.id != new.gateway.id),
            ("gateway.data_dir", old.gateway.data_dir != new.gateway.data_dir),
            ("api.listen", old.api.listen != new.api.listen),
            ("mqtt.listen", old.mqtt.listen != new.mqtt.listen),
        ] {
            if changed {
                tracing::warn!(key = what, "changed in the configuration file; takes effect after a restart");
            }
        }
        // Before READY=1: once the reload is reported done, new connections get the new certificates.
        self.certificates.reload(&new);
        let new = Arc::new(new);
        self.config_tx.send_replace(new.clone());
        let appliers = self.appliers.clone();
        Some(Box::pin(async move { appliers.wait(&new, RELOAD_LIMIT).await }))
    }
}

/// How long a reload waits for the tasks that apply it before it reports `READY=1` anyway (the engine stage applies
/// a reload between batches: behind a large backlog it can take longer, and the reload is logged as not yet in effect).
pub const RELOAD_LIMIT: Duration = Duration::from_secs(10);

/// A reload in progress: resolves to the tasks that had not applied it within [`RELOAD_LIMIT`].
pub(super) type Reloading = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<&'static str>> + Send>>;

/// The listeners with certificates: the MQTT TLS listener and the API listener.
#[derive(Clone, Debug)]
pub(super) struct Certificates {
    pub(super) mqtt: drivers::mqtt::MqttService,
    pub(super) api: Option<api::tls::SharedConfig>,
}

impl Certificates {
    /// Reads the certificates, keys and client CAs of `config` again (SIGHUP). New connections use them; a file that does
    /// not load is logged and the certificate in force stays. Adding or removing a TLS listener needs a restart.
    pub(super) fn reload(&self, config: &Config) {
        if let Some(t) = &config.mqtt.tls {
            match self.mqtt.reload_tls(&t.cert, &t.key, t.client_ca.as_deref()) {
                Some(Ok(())) => tracing::info!(cert = %t.cert.display(), "mqtt tls certificate reloaded"),
                Some(Err(e)) => tracing::error!(error = %e, "mqtt tls files not reloaded; the previous ones stay"),
                None => tracing::warn!("mqtt.tls_listen added; takes effect after a restart"),
            }
        }
        match (&self.api, &config.api.tls) {
            (Some(shared), Some(files)) => match shared.reload(files) {
                Ok(()) => tracing::info!(cert = %files.cert.display(), "api tls certificate reloaded"),
                Err(e) => tracing::error!(error = %e, "api tls files not reloaded; the previous ones stay"),
            },
            (None, Some(_)) | (Some(_), None) => {
                tracing::warn!(key = "api.tls", "changed in the configuration file; takes effect after a restart")
            }
            (None, None) => {}
        }
    }
}
