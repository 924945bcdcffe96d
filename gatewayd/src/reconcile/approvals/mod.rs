//! Approvals: make-up punch requests (补卡), offline punch claims (离线打卡) and out-of-fence punches, decided by a manager
//! of the employee's department. An approved offline claim adds its punch like a make-up request does.
//!
//! An approval is data with a state: `pending`, then `approved` or `rejected`, with who decided and when. Punches are never
//! edited or deleted by anyone:
//! - approving a make-up request adds a new punch (method `makeup`, device [`DEVICE_ID`], device sequence = the approval
//!   id, so its punch id is `{gateway}:approvals:{id}`) through the ingest [`PunchSink`]: it is stored like any other
//!   punch, reaches the engine through the store and revises the record;
//! - deciding an out-of-fence approval tells the engine (a [`DecisionListener`]), which clears `pending_approval`
//!   (approved: the punch counts; rejected: it stays as evidence and does not count) and revises the record. The engine
//!   asks for these approvals itself when it finds a GPS punch outside the fence ([`Approvals::ensure_fence`]);
//! - approving a leave request ([`Kind::Leave`], see [`crate::reconcile::leave`]) tells the engine too, which reads every
//!   approved leave again ([`Approvals::leaves`]) and revises the records of the dates it covers. A leave request that
//!   overlaps a pending or approved leave of the same employee is refused ([`ApprovalError::Overlaps`]).
//!
//! # Key layout (sled tree `approvals`)
//! | key                    | value                                  |
//! |------------------------|----------------------------------------|
//! | `a` id:u64 BE          | the approval as JSON                   |
//! | `f` punch_id           | id:u64 BE (the out-of-fence approval of that punch) |
//! | `next`                 | u64 BE: the last id given              |
//!
//! # Durability and crash recovery
//! A decision is written with compare-and-swap (two managers deciding at once: one wins, the other gets
//! [`ApprovalError::AlreadyDecided`]) and flushed before anything else happens. If the daemon stops between an approved
//! make-up request and its punch being stored, [`Approvals::resubmit_approved`] (run by the engine stage at start) submits
//! it again; the store recognises a punch it already has by its id.

use std::fmt;

use drivers::sink::Subject;
use drivers::{DevicePunch, Method, Outcome, PunchSink};
use serde::{Deserialize, Serialize};

use crate::reconcile::leave::{Leave, LeaveType, Period};
use crate::reconcile::roster::{Employee, Roster};
use crate::store::Store;

/// An out-of-fence punch that needs a manager's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceRequest {
    pub punch_id: String,
    pub employee: String,
    pub department: String,
    pub time_ms: i64,
    /// Inside the fence, but the fix is less accurate than the fence is wide (`weak_location`).
    pub weak_location: bool,
}

/// A decision the engine must hear about, once it is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decided {
    /// An out-of-fence punch was approved or rejected.
    Fence { punch_id: String, approved: bool },
    /// A leave was approved: the approved leave changed.
    Leave,
    /// An offline claim was filed or decided: the pending claims changed.
    Claims,
}

/// Told of a [`Decided`]. The engine stage listens ([`crate::reconcile::stage`]); the approvals know nothing of it
/// beyond this.
pub type DecisionListener = std::sync::Arc<dyn Fn(Decided) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// A [`DecisionListener`] that hears nothing (for tests of other parts, where no engine runs).
pub fn no_listener() -> DecisionListener {
    std::sync::Arc::new(|_| Box::pin(async {}))
}

/// The device id make-up punches are stored under.
pub const DEVICE_ID: &str = "approvals";
/// Longest reason or note accepted.
pub const MAX_TEXT: usize = 500;
/// How far in the future a make-up punch may be asked for (none: it is for punches that were missed).
pub const MAX_FUTURE_MS: i64 = 0;

/// What is to be approved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// A missed punch: approving adds a `makeup` punch at `time_ms`.
    Makeup { time_ms: i64, reason: String },
    /// A GPS punch outside the geofence (or a Wi-Fi punch from an access point not listed), or, with
    /// `weak_location`, one whose fix is too wide to tell.
    OutOfFence {
        punch_id: String,
        time_ms: i64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        weak_location: bool,
    },
    /// Leave (请假): approving it makes the days it covers `on_leave` (see [`crate::reconcile::leave`]).
    Leave { leave_type: LeaveType, period: Period, reason: String },
    /// A punch a phone made while offline (`"offline": true`), claimed for `time_ms` and received at `received_ms`:
    /// approving adds it (its method, point and code kept, flagged `offline_claim`) at the claimed time.
    OfflineClaim {
        time_ms: i64,
        received_ms: i64,
        method: Method,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lat: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lng: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accuracy_m: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        /// A Wi-Fi claim's access point and network name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bssid: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ssid: Option<String>,
    },
}

impl Kind {
    /// The last work date the request is about (site time zone): the date of its punch, or the end of a leave.
    pub fn last_date(&self, tz: &jiff::tz::TimeZone) -> Option<jiff::civil::Date> {
        let time = match self {
            Kind::Makeup { time_ms, .. } | Kind::OutOfFence { time_ms, .. } | Kind::OfflineClaim { time_ms, .. } => {
                *time_ms
            }
            Kind::Leave { period, .. } => return Some(period.dates(tz).1),
        };
        jiff::Timestamp::from_millisecond(time).ok().map(|t| t.to_zoned(tz.clone()).date())
    }

    /// Whether approving adds a punch (make-up requests and offline claims).
    pub fn adds_punch(&self) -> bool {
        matches!(self, Kind::Makeup { .. } | Kind::OfflineClaim { .. })
    }
}

/// The state of an approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved,
    Rejected,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Rejected => "rejected",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One approval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: u64,
    pub employee: String,
    /// The employee's department when the request was made: its managers decide.
    pub department: String,
    #[serde(flatten)]
    pub kind: Kind,
    pub state: State,
    /// Who asked (the employee, or `engine` for out-of-fence punches).
    pub requested_by: String,
    pub requested_at_ms: i64,
    pub decided_by: Option<String>,
    pub decided_at_ms: Option<i64>,
    pub note: Option<String>,
    /// For an approved make-up request: the punch it added.
    pub added_punch_id: Option<String>,
}

/// Who decides, and for which departments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decider {
    /// An employee id or a token name; recorded as `decided_by`.
    pub name: String,
    pub departments: Vec<String>,
}

impl Decider {
    /// A manager from the roster: the departments in their `manages` column.
    pub fn manager(roster: &Roster, employee: &str) -> Option<Decider> {
        roster.get(employee).map(|e| Decider { name: e.id.clone(), departments: e.manages.clone() })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("approvals: {0}")]
    Sled(#[from] sled::Error),
    #[error("approvals: stored approval {id} cannot be decoded: {message}")]
    Decode { id: u64, message: String },
    #[error("approval {0} does not exist")]
    NotFound(u64),
    #[error("approval {id} is already {state}")]
    AlreadyDecided { id: u64, state: State },
    #[error("{decider} does not manage department `{department}`")]
    NotAllowed { decider: String, department: String },
    #[error("{0} cannot decide their own request")]
    OwnRequest(String),
    #[error("employee `{0}` is not in the roster")]
    UnknownEmployee(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the leave overlaps leave {id} of the same employee ({state}); withdraw or change that one first")]
    Overlaps { id: u64, state: State },
    #[error("approval {id} is approved, but its make-up punch was not stored yet ({reason}); it is submitted again at the next start")]
    PunchNotStored { id: u64, reason: String },
}

/// The approvals. Cheap to clone.
#[derive(Clone)]
pub struct Approvals {
    db: sled::Db,
    tree: sled::Tree,
    sink: PunchSink,
    engine: DecisionListener,
    gateway_id: String,
    /// Held while a leave request is checked for overlaps and filed, so two requests cannot both pass the check.
    leave_filing: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for Approvals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Approvals").field("entries", &self.tree.len()).finish()
    }
}

fn approval_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'a';
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn fence_key(punch_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(punch_id.len() + 1);
    k.push(b'f');
    k.extend_from_slice(punch_id.as_bytes());
    k
}

fn check_text(what: &str, text: &str) -> Result<(), ApprovalError> {
    if text.len() > MAX_TEXT || text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApprovalError::Invalid(format!(
            "{what} must be at most {MAX_TEXT} bytes without control characters"
        )));
    }
    Ok(())
}

impl Approvals {
    /// Opens the approvals tree. `sink` is where approved make-up punches go; `engine` hears out-of-fence decisions.
    pub fn open(
        db: &sled::Db,
        gateway_id: &str,
        sink: PunchSink,
        engine: DecisionListener,
    ) -> Result<Approvals, ApprovalError> {
        Ok(Approvals {
            db: db.clone(),
            tree: db.open_tree("approvals")?,
            sink: sink.for_driver(DEVICE_ID),
            engine,
            gateway_id: gateway_id.to_owned(),
            leave_filing: std::sync::Arc::default(),
        })
    }

    fn next_id(&self) -> Result<u64, ApprovalError> {
        let v = self.tree.update_and_fetch(b"next", |old| {
            let n = old.and_then(|o| o.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
            Some((n + 1).to_be_bytes().to_vec())
        })?;
        Ok(v.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(1))
    }

    fn decode(id: u64, bytes: &[u8]) -> Result<Approval, ApprovalError> {
        serde_json::from_slice(bytes).map_err(|e| ApprovalError::Decode { id, message: e.to_string() })
    }

    fn insert(&self, a: &Approval) -> Result<(), ApprovalError> {
        self.tree.insert(approval_key(a.id), serde_json::to_vec(a).unwrap_or_default())?;
        Ok(())
    }

    /// One approval.
    pub fn get(&self, id: u64) -> Result<Approval, ApprovalError> {
        match self.tree.get(approval_key(id))? {
            Some(v) => Approvals::decode(id, &v),
            None => Err(ApprovalError::NotFound(id)),
        }
    }

    /// Every approval, oldest first.
    pub fn list(&self) -> Result<Vec<Approval>, ApprovalError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([b'a']) {
            let (k, v) = item?;
            let id = k.get(1..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
            out.push(Approvals::decode(id, &v)?);
        }
        Ok(out)
    }

    /// An employee asks for a make-up punch at `time_ms`. `now_ms` is the time of the request.
    pub async fn request_makeup(
        &self,
        roster: &Roster,
        employee: &str,
        time_ms: i64,
        reason: &str,
        requested_by: &str,
        now_ms: i64,
    ) -> Result<Approval, ApprovalError> {
        let e = roster.get(employee).ok_or_else(|| ApprovalError::UnknownEmployee(employee.to_owned()))?;
        check_text("the reason", reason)?;
        if time_ms > now_ms + MAX_FUTURE_MS {
            return Err(ApprovalError::Invalid("a make-up punch cannot be in the future".into()));
        }
        if time_ms < crate::punch::MIN_DEVICE_TIME_MS {
            return Err(ApprovalError::Invalid("the time is before 2000-01-01".into()));
        }
        self.file(e, Kind::Makeup { time_ms, reason: reason.to_owned() }, requested_by, now_ms).await
    }

    /// An employee's offline claim (`kind` must be [`Kind::OfflineClaim`]), held until a manager decides.
    pub async fn request_offline_claim(
        &self,
        roster: &Roster,
        employee: &str,
        kind: Kind,
        requested_by: &str,
        now_ms: i64,
    ) -> Result<Approval, ApprovalError> {
        let e = roster.get(employee).ok_or_else(|| ApprovalError::UnknownEmployee(employee.to_owned()))?;
        if !matches!(kind, Kind::OfflineClaim { .. }) {
            return Err(ApprovalError::Invalid("not an offline claim".into()));
        }
        let a = self.file(e, kind, requested_by, now_ms).await?;
        (self.engine)(Decided::Claims).await;
        Ok(a)
    }

    /// Offline claims waiting for a decision: (employee, claimed time).
    pub fn pending_claims(&self) -> Result<Vec<(String, i64)>, ApprovalError> {
        Ok(self
            .list()?
            .into_iter()
            .filter_map(|a| match a.kind {
                Kind::OfflineClaim { time_ms, .. } if a.state == State::Pending => Some((a.employee, time_ms)),
                _ => None,
            })
            .collect())
    }

    /// An employee asks for leave. Refused when it overlaps a pending or approved leave of theirs.
    #[allow(clippy::too_many_arguments)]
    pub async fn request_leave(
        &self,
        roster: &Roster,
        employee: &str,
        leave_type: LeaveType,
        period: Period,
        reason: &str,
        requested_by: &str,
        now_ms: i64,
        tz: &jiff::tz::TimeZone,
    ) -> Result<Approval, ApprovalError> {
        let e = roster.get(employee).ok_or_else(|| ApprovalError::UnknownEmployee(employee.to_owned()))?;
        check_text("the reason", reason)?;
        let _filing = self.leave_filing.lock().await;
        for a in self.list()? {
            if let Kind::Leave { period: other, .. } = &a.kind {
                if a.employee == e.id && a.state != State::Rejected && other.overlaps(&period, tz) {
                    return Err(ApprovalError::Overlaps { id: a.id, state: a.state });
                }
            }
        }
        self.file(e, Kind::Leave { leave_type, period, reason: reason.to_owned() }, requested_by, now_ms).await
    }

    /// Every approved leave.
    pub fn leaves(&self) -> Result<Vec<Leave>, ApprovalError> {
        Ok(self
            .list()?
            .into_iter()
            .filter_map(|a| match a.kind {
                Kind::Leave { leave_type, period, .. } if a.state == State::Approved => {
                    Some(Leave { approval: a.id, employee: a.employee, leave_type, period })
                }
                _ => None,
            })
            .collect())
    }

    /// Stores a new pending request of `employee`, durable before it returns.
    async fn file(
        &self,
        employee: &Employee,
        kind: Kind,
        requested_by: &str,
        now_ms: i64,
    ) -> Result<Approval, ApprovalError> {
        let a = self.pending(&employee.id, &employee.department, kind, requested_by, now_ms)?;
        self.insert(&a)?;
        self.db.flush_async().await?;
        Ok(a)
    }

    /// A new pending approval with the next id (not stored yet).
    fn pending(
        &self,
        employee: &str,
        department: &str,
        kind: Kind,
        requested_by: &str,
        now_ms: i64,
    ) -> Result<Approval, ApprovalError> {
        Ok(Approval {
            id: self.next_id()?,
            employee: employee.to_owned(),
            department: department.to_owned(),
            kind,
            state: State::Pending,
            requested_by: requested_by.to_owned(),
            requested_at_ms: now_ms,
            decided_by: None,
            decided_at_ms: None,
            note: None,
            added_punch_id: None,
        })
    }

    /// Creates the approval for an out-of-fence punch unless it exists. Returns it when new.
    pub fn ensure_fence(&self, req: &FenceRequest, now_ms: i64) -> Result<Option<Approval>, ApprovalError> {
        let key = fence_key(&req.punch_id);
        if self.tree.get(&key)?.is_some() {
            return Ok(None);
        }
        let kind =
            Kind::OutOfFence { punch_id: req.punch_id.clone(), time_ms: req.time_ms, weak_location: req.weak_location };
        let a = self.pending(&req.employee, &req.department, kind, "engine", now_ms)?;
        // The index entry decides who creates it; the approval follows.
        if self.tree.compare_and_swap(&key, None as Option<&[u8]>, Some(&a.id.to_be_bytes()[..]))?.is_err() {
            return Ok(None);
        }
        self.insert(&a)?;
        Ok(Some(a))
    }

    /// Out-of-fence punches that have an approval (decided or not).
    pub fn fence_punches(&self) -> Result<Vec<String>, ApprovalError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([b'f']) {
            let (k, _) = item?;
            out.push(String::from_utf8_lossy(&k[1..]).into_owned());
        }
        Ok(out)
    }

    /// Decided out-of-fence approvals: (punch id, approved).
    pub fn fence_decisions(&self) -> Result<Vec<(String, bool)>, ApprovalError> {
        Ok(self
            .list()?
            .into_iter()
            .filter_map(|a| match (a.kind, a.state) {
                (Kind::OutOfFence { punch_id, .. }, State::Approved) => Some((punch_id, true)),
                (Kind::OutOfFence { punch_id, .. }, State::Rejected) => Some((punch_id, false)),
                _ => None,
            })
            .collect())
    }

    /// A manager decides. Approving a make-up request stores its punch before this returns.
    pub async fn decide(
        &self,
        id: u64,
        decider: &Decider,
        approve: bool,
        note: Option<&str>,
        now_ms: i64,
    ) -> Result<Approval, ApprovalError> {
        if let Some(n) = note {
            check_text("the note", n)?;
        }
        let key = approval_key(id);
        let old_bytes = self.tree.get(key)?.ok_or(ApprovalError::NotFound(id))?;
        let old = Approvals::decode(id, &old_bytes)?;
        if old.state != State::Pending {
            return Err(ApprovalError::AlreadyDecided { id, state: old.state });
        }
        if decider.name == old.employee {
            return Err(ApprovalError::OwnRequest(decider.name.clone()));
        }
        if !decider.departments.contains(&old.department) {
            return Err(ApprovalError::NotAllowed {
                decider: decider.name.clone(),
                department: old.department.clone(),
            });
        }
        let mut new = old.clone();
        new.state = if approve { State::Approved } else { State::Rejected };
        new.decided_by = Some(decider.name.clone());
        new.decided_at_ms = Some(now_ms);
        new.note = note.map(str::to_owned);
        if approve && new.kind.adds_punch() {
            new.added_punch_id = Some(self.makeup_punch_id(id));
        }
        let swapped =
            self.tree.compare_and_swap(key, Some(old_bytes), Some(serde_json::to_vec(&new).unwrap_or_default()))?;
        if swapped.is_err() {
            let now = self.get(id)?;
            return Err(ApprovalError::AlreadyDecided { id, state: now.state });
        }
        self.db.flush_async().await?;
        if matches!(new.kind, Kind::OfflineClaim { .. }) {
            // No longer pending, whatever the decision (an approved claim's punch follows).
            (self.engine)(Decided::Claims).await;
        }
        match &new.kind {
            Kind::Makeup { .. } | Kind::OfflineClaim { .. } if approve => {
                if let Err(reason) = self.submit_makeup(&new).await {
                    return Err(ApprovalError::PunchNotStored { id, reason });
                }
            }
            Kind::OutOfFence { punch_id, .. } => {
                // Durable already; if the engine is not running it reads the decision when it starts.
                (self.engine)(Decided::Fence { punch_id: punch_id.clone(), approved: approve }).await;
            }
            Kind::Leave { .. } if approve => (self.engine)(Decided::Leave).await,
            Kind::Makeup { .. } | Kind::OfflineClaim { .. } | Kind::Leave { .. } => {}
        }
        Ok(new)
    }

    /// The punch id an approved make-up request produces (what the store derives from device and sequence).
    /// Removes the decided requests about dates before `before` (and the out-of-fence markers of their punches).
    /// Pending requests stay whatever their age: they still wait for a manager. Returns how many went. Blocking.
    pub fn expire_before(&self, before: jiff::civil::Date, tz: &jiff::tz::TimeZone) -> Result<u64, ApprovalError> {
        let mut batch = sled::Batch::default();
        let mut removed = 0u64;
        for item in self.tree.scan_prefix([b'a']) {
            let (k, v) = item?;
            let Some(id) = k.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes) else { continue };
            let a = Self::decode(id, &v)?;
            if a.state == State::Pending || a.kind.last_date(tz).is_none_or(|d| d >= before) {
                continue;
            }
            if let Kind::OutOfFence { punch_id, .. } = &a.kind {
                batch.remove(fence_key(punch_id));
            }
            batch.remove(k);
            removed += 1;
        }
        self.tree.apply_batch(batch)?;
        Ok(removed)
    }

    pub fn makeup_punch_id(&self, id: u64) -> String {
        format!("{}:{DEVICE_ID}:{id}", self.gateway_id)
    }

    async fn submit_makeup(&self, a: &Approval) -> Result<(), String> {
        let mut attributes = vec![
            ("approval".into(), a.id.to_string()),
            ("approved_by".into(), a.decided_by.clone().unwrap_or_default()),
        ];
        let (time_ms, method, geo) = match &a.kind {
            Kind::Makeup { time_ms, .. } => (*time_ms, Method::Makeup, None),
            Kind::OfflineClaim { time_ms, received_ms, method, lat, lng, accuracy_m, code, bssid, ssid } => {
                attributes.push(("offline_claim".into(), received_ms.to_string()));
                if let Some(code) = code {
                    attributes.push(("qr".into(), code.clone()));
                }
                if let Some(b) = bssid {
                    attributes.push(("bssid".into(), b.clone()));
                }
                if let Some(s) = ssid {
                    attributes.push(("ssid".into(), s.clone()));
                }
                let geo = lat.zip(*lng).map(|(lat, lng)| drivers::sink::GeoPoint { lat, lng, accuracy_m: *accuracy_m });
                (*time_ms, *method, geo)
            }
            Kind::OutOfFence { .. } | Kind::Leave { .. } => return Ok(()),
        };
        let now = jiff::Timestamp::now().as_millisecond();
        let punch = DevicePunch {
            device_id: DEVICE_ID.into(),
            device_seq: Some(a.id),
            method,
            subject: Subject::Employee(a.employee.clone()),
            device_time_ms: time_ms,
            received_time_ms: now.max(time_ms),
            realtime: false,
            geo,
            score: None,
            attributes,
        };
        match self.sink.submit(punch).await {
            Outcome::Stored { .. } => Ok(()),
            Outcome::Rejected(r) => Err(r.to_string()),
        }
    }

    /// Submits the make-up punch of every approved request whose punch is not in the store (after a crash between the
    /// decision and the punch). Returns how many were submitted.
    pub async fn resubmit_approved(&self, store: &Store) -> Result<usize, ApprovalError> {
        let mut n = 0;
        for a in self.list()? {
            if a.state != State::Approved || !a.kind.adds_punch() {
                continue;
            }
            let id = self.makeup_punch_id(a.id);
            let stored = store.get_by_id(&id).map_err(|e| ApprovalError::Invalid(e.to_string()))?;
            if stored.is_none() {
                self.submit_makeup(&a).await.map_err(|reason| ApprovalError::PunchNotStored { id: a.id, reason })?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
