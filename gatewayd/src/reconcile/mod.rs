//! Reconciliation: stored punches in, attendance records out (SPEC section 4).
//!
//! - [`day`]: one record's evaluation, a pure function (merge duplicates, pair dual verification, clock-in/clock-out,
//!   late/early/overtime minutes, statuses).
//! - [`engine`]: the synchronous, I/O-free engine. It assigns punches to (employee, work date, shift) records, keeps the
//!   latest revision of each, and turns inputs (punches, ticks, rules, roster, decisions) into [`crate::reconcile::changes::Change`]s.
//!   Time is an input ([`engine::Input::Tick`]); nothing in it reads a clock or a file.
//! - [`schedule`] and [`leave`]: per-employee day assignments and approved leave, which the engine reads alongside the
//!   rules (`gatewayd/src/reconcile/tests/plans.rs` has their table of cases).
//! - [`records`]: the sled trees that keep the latest revision of every record and the engine's watermarks, with the
//!   queries the API uses (by date range, employee, department).
//! - [`stage`]: the daemon stage that feeds the engine from the store, writes its changes and its state in one sled
//!   transaction, closes windows on a timer in the site time zone and survives restarts without duplicating or losing
//!   changes.

pub mod approvals;
pub mod attendance;
pub mod changes;
pub mod day;
pub mod engine;
pub mod leave;
pub mod metrics;
mod punch_id;
mod punches;
pub mod records;
pub mod roster;
pub mod rules;
pub mod schedule;
pub mod stage;
pub use approvals::FenceRequest;
pub use day::Status;
pub use engine::{Engine, EngineSettings, Input, StoredDay, Watermarks};
pub use records::{RecordQuery, RecordStore};
pub use stage::{Attendance, EngineHandle, StageError};

#[cfg(test)]
mod tests;
