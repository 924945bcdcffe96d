//! What the rest of the daemon (the API) may change in attendance: the rules and the roster the API puts in force.
//! Both are files in the data dir that win over the configured ones ([`rules::API_FILE`], [`roster::API_FILE`]), so a
//! reload or a restart keeps them. The configured files are never written (under the hardened unit they are
//! read-only).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::reconcile::roster::{self, Roster, RosterError};
use crate::reconcile::rules::{self, Rules};
use crate::reconcile::stage::Attendance;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The new rules have problems; nothing was written. One problem per line, each as `FILE:LINE: key: problem`.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Roster(#[from] RosterError),
    #[error("roster write task failed: {0}")]
    Task(String),
}

/// A roster put in force through [`Attendance::replace_roster`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RosterReplaced {
    pub employees: usize,
    /// False when the roster in force already was this one.
    pub changed: bool,
}

impl Attendance {
    /// Checks a new rules text in full and writes it to [`rules::API_FILE`] in the data dir (atomically). It is put in
    /// force by the next reload, which the caller asks for. Returns the file written.
    pub fn write_rules(&self, config: &Config, text: &str) -> Result<PathBuf, UpdateError> {
        if let Err(problems) = Rules::parse(Path::new("rules.toml"), text) {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(UpdateError::Invalid(list.join("\n")));
        }
        let file = config.gateway.data_dir.join(rules::API_FILE);
        crate::atomic_file::write_atomic(&file, text.as_bytes())
            .map_err(|source| UpdateError::Write { path: file.clone(), source })?;
        Ok(file)
    }

    /// Puts `roster` in force: first written to [`roster::API_FILE`] in the data dir (so a reload or a restart keeps
    /// it), then the roster tree (durable before this returns), then the engine reconciles with it.
    pub async fn replace_roster(&self, config: &Config, roster: Roster) -> Result<RosterReplaced, UpdateError> {
        let file = config.gateway.data_dir.join(roster::API_FILE);
        let csv = roster.to_csv();
        let written = {
            let file = file.clone();
            tokio::task::spawn_blocking(move || crate::atomic_file::write_atomic(&file, csv.as_bytes())).await
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(UpdateError::Write { path: file, source }),
            Err(e) => return Err(UpdateError::Task(e.to_string())),
        }
        let changed = self.roster.replace(&roster)?;
        self.roster.flush().await?;
        let employees = roster.len();
        if changed {
            self.engine.roster_replaced(Arc::new(roster)).await;
        }
        Ok(RosterReplaced { employees, changed })
    }
}
