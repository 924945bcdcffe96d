//! What the rest of the daemon (the API) may change in attendance: the rules, the roster and the schedule the API puts
//! in force. Each is a file in the data dir that wins over the configured one ([`rules::API_FILE`], [`roster::API_FILE`],
//! [`schedule::API_FILE`]), so a reload or a restart keeps them. The configured files are never written (under the hardened unit they are
//! read-only).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::reconcile::roster::{self, Roster, RosterError};
use crate::reconcile::rules::{self, Rules};
use crate::reconcile::schedule::{self, Schedule, Update};
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
    #[error("file write task failed: {0}")]
    Task(String),
}

impl UpdateError {
    /// [`UpdateError::Invalid`] listing `problems`, one per line.
    pub fn invalid(problems: &[crate::config::source::Problem]) -> UpdateError {
        UpdateError::Invalid(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    }
}

/// A schedule update put in force through [`Attendance::update_schedule`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleUpdated {
    pub file: PathBuf,
    /// Assignments in the schedule now.
    pub rows: usize,
    /// (employee, date) assignments the update changed.
    pub changed: usize,
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
            return Err(UpdateError::invalid(&problems));
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
        write_blocking(&file, roster.to_csv()).await?;
        let changed = self.roster.replace(&roster)?;
        self.roster.flush().await?;
        let employees = roster.len();
        if changed {
            self.engine.roster_replaced(Arc::new(roster)).await;
        }
        Ok(RosterReplaced { employees, changed })
    }

    /// The schedule in force (empty when there is none); a schedule file with problems is an error.
    pub fn schedule(&self, config: &Config) -> Result<Schedule, UpdateError> {
        match schedule::file_in_force(config) {
            None => Ok(Schedule::default()),
            Some(f) => Schedule::load(&f, None).map_err(|ps| UpdateError::invalid(&ps)),
        }
    }

    /// Merges `update` into the schedule in force, writes the result to [`schedule::API_FILE`] in the data dir
    /// (atomically), and tells the engine. Updates are applied one at a time.
    pub async fn update_schedule(&self, config: &Config, update: Update) -> Result<ScheduleUpdated, UpdateError> {
        let _one_at_a_time = self.schedule_writes.lock().await;
        let old = self.schedule(config)?;
        let mut new = old.clone();
        new.apply(update);
        if new.len() > schedule::MAX_ROWS {
            return Err(UpdateError::Invalid(format!("the schedule would have more than {} rows", schedule::MAX_ROWS)));
        }
        let changed = old.differences(&new).len();
        let file = config.gateway.data_dir.join(schedule::API_FILE);
        write_blocking(&file, new.to_csv()).await?;
        let rows = new.len();
        if changed > 0 {
            self.engine.schedule_replaced(Arc::new(new)).await;
        }
        Ok(ScheduleUpdated { file, rows, changed })
    }
}

/// Writes `text` to `file` atomically on the blocking pool.
async fn write_blocking(file: &Path, text: String) -> Result<(), UpdateError> {
    let target = file.to_owned();
    match tokio::task::spawn_blocking(move || crate::atomic_file::write_atomic(&target, text.as_bytes())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(UpdateError::Write { path: file.to_owned(), source }),
        Err(e) => Err(UpdateError::Task(e.to_string())),
    }
}
