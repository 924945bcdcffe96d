//! Configuration reloads (SIGHUP), and knowing when one is in effect.
//!
//! Most of the daemon reads the configuration in force each time it uses it (a `watch::Receiver` it borrows from), so a
//! new configuration is in effect for it as soon as it is sent. A few tasks act on a reload instead: the engine stage
//! reads the rules and roster files in force, the device tables swap MQTT credentials and ADMS serial numbers, the
//! device manager starts and stops drivers. Each of those holds an [`Updates`] and says when it has applied a
//! configuration; [`Appliers::wait`] is how the reload learns that all of them have, before it reports `READY=1`. So
//! whoever sent the SIGHUP and waited for `READY=1` (systemd, a script, the tests) finds the new roster, rules and
//! devices in force.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Config;

/// The subscription of a task that acts on reloads.
#[derive(Debug)]
pub struct Updates {
    rx: watch::Receiver<Arc<Config>>,
    applied: watch::Sender<Arc<Config>>,
}

impl Updates {
    /// Waits for a configuration not seen yet; `Err` once no more can come (the sender is gone).
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.rx.changed().await
    }

    /// The newest configuration, marked seen.
    pub fn latest(&mut self) -> Arc<Config> {
        self.rx.borrow_and_update().clone()
    }

    /// The newest configuration, not marked seen.
    pub fn current(&self) -> Arc<Config> {
        self.rx.borrow().clone()
    }

    /// Says that `config` is in effect for this task.
    pub fn applied(&self, config: &Arc<Config>) {
        self.applied.send_replace(config.clone());
    }
}

/// The tasks that act on reloads, as the reload sees them.
#[derive(Clone, Debug, Default)]
pub struct Appliers(Vec<(&'static str, watch::Receiver<Arc<Config>>)>);

impl Appliers {
    /// Subscribes the task `name` to the configurations `tx` sends; the configuration in force now counts as applied.
    pub fn add(&mut self, name: &'static str, tx: &watch::Sender<Arc<Config>>) -> Updates {
        let (applied, done) = watch::channel(tx.borrow().clone());
        self.0.push((name, done));
        Updates { rx: tx.subscribe(), applied }
    }

    /// Waits until every task has applied `config` (or has stopped), for at most `limit`. Returns the tasks that had not.
    pub async fn wait(&self, config: &Arc<Config>, limit: Duration) -> Vec<&'static str> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut late = Vec::new();
        for (name, done) in &self.0 {
            let mut done = done.clone();
            let applied = tokio::time::timeout_at(deadline, done.wait_for(|c| Arc::ptr_eq(c, config))).await;
            // `Ok(Err(_))`: the task stopped (shutting down); there is nothing to wait for.
            if applied.is_err() {
                late.push(*name);
            }
        }
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: &str) -> Arc<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatewayd.toml");
        std::fs::write(&path, format!("[gateway]\nid = \"{id}\"\ndata_dir = \"data\"\ntimezone = \"UTC\"\n")).unwrap();
        Arc::new(crate::app::load::load(&path).unwrap_or_else(|p| panic!("{p:?}")).0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_waits_for_every_task_that_applies_it() {
        let (tx, _) = watch::channel(config("a"));
        let mut appliers = Appliers::default();
        let mut engine = appliers.add("engine", &tx);
        let mut devices = appliers.add("devices", &tx);
        // What was in force when they subscribed counts as applied.
        assert!(appliers.wait(&tx.borrow().clone(), Duration::from_secs(1)).await.is_empty());

        let b = config("b");
        tx.send_replace(b.clone());
        engine.changed().await.unwrap();
        let seen = engine.latest();
        assert!(Arc::ptr_eq(&seen, &b));
        engine.applied(&seen);
        // `devices` has not applied it: named after the limit.
        assert_eq!(appliers.wait(&b, Duration::from_secs(1)).await, ["devices"]);

        // Applied while the reload waits: the wait ends then.
        let waiting = tokio::spawn({
            let appliers = appliers.clone();
            let b = b.clone();
            async move { appliers.wait(&b, Duration::from_secs(3600)).await }
        });
        devices.changed().await.unwrap();
        let latest = devices.latest();
        devices.applied(&latest);
        assert!(waiting.await.unwrap().is_empty());

        // A configuration equal to the applied one but sent later is a new reload.
        let b_again = config("b");
        tx.send_replace(b_again.clone());
        assert_eq!(appliers.wait(&b_again, Duration::from_secs(1)).await, ["engine", "devices"]);

        // A task that stopped is not waited for.
        drop(engine);
        drop(devices);
        assert!(appliers.wait(&b_again, Duration::from_secs(3600)).await.is_empty());
    }
}
