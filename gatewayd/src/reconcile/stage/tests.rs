//! Component tests of the engine stage with the real store, ingest writer and change log.

use std::time::Duration;

use drivers::sink::{GeoPoint, Subject};
use drivers::{DevicePunch, Method};

use super::*;
use crate::config::reload::Appliers;
use crate::ingest::{self, IngestSettings};
use crate::reconcile::approvals::{Decider, Kind, State};

const RULES: &str = r#"
[[shift]]
id = "day"
start = "09:00"
end = "18:00"
late_grace = "10m"
closes_after = "6h"

[[group]]
id = "all"
departments = ["D-OFF"]
shift = "day"
workdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

[[group]]
id = "field"
departments = ["D-GEO"]
shift = "day"
workdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
geofence = { center = [31.2304, 121.4737], radius_m = 200 }
"#;

const ROSTER: &str = "employee,name,department,card,fingerprint,face,pin,manages\n\
E1,One,D-OFF,0A0A0A01,,,,\n\
E2,Two,D-GEO,,,,,\n\
M1,Manager,D-ADM,,,,,D-OFF|D-GEO\n";

struct Gateway {
    dir: tempfile::TempDir,
    config: Arc<Config>,
    /// Reloads (kept open: a stage whose sender is gone sees no more).
    config_tx: watch::Sender<Arc<Config>>,
    store: Store,
    log: ChangeLog,
    sink: PunchSink,
    durable: watch::Receiver<u64>,
    ingest_cancel: CancellationToken,
    metrics: Metrics,
}

fn config_in(dir: &std::path::Path) -> Config {
    std::fs::write(dir.join("rules.toml"), RULES).unwrap();
    std::fs::write(dir.join("roster.csv"), ROSTER).unwrap();
    let path = dir.join("gatewayd.toml");
    std::fs::write(
        &path,
        "[gateway]\nid = \"gw\"\ndata_dir = \"data\"\ntimezone = \"Asia/Shanghai\"\n\n\
         [roster]\nfile = \"roster.csv\"\n\n[rules]\nfile = \"rules.toml\"\n",
    )
    .unwrap();
    crate::app::load::load(&path).unwrap_or_else(|p| panic!("{p:?}")).0
}

impl Gateway {
    fn open(dir: tempfile::TempDir) -> Gateway {
        let config = Arc::new(config_in(dir.path()));
        let store = Store::open(&dir.path().join("data").join("store"), 8).unwrap();
        let log = ChangeLog::open(store.db()).unwrap();
        let metrics = crate::app::metrics();
        let (sink, rx) = PunchSink::channel(64, metrics.drivers.clone());
        let (durable_tx, durable) = watch::channel(store.last_seq().unwrap().unwrap_or(0));
        let ingest_cancel = CancellationToken::new();
        tokio::spawn(ingest::run_writer(
            store.clone(),
            IngestSettings { gateway_id: "gw".into(), max_batch: 256 },
            rx,
            durable_tx,
            metrics.clone(),
            ingest_cancel.clone(),
        ));
        let (config_tx, _) = watch::channel(config.clone());
        Gateway { dir, config, config_tx, store, log, sink: sink.for_driver("test"), durable, ingest_cancel, metrics }
    }

    fn start_stage(&self) -> (Attendance, CancellationToken, tokio::task::JoinHandle<()>) {
        self.start_stage_with(&mut Appliers::default())
    }

    /// Starts the stage as one of `appliers`, which a reload waits for.
    fn start_stage_with(
        &self,
        appliers: &mut Appliers,
    ) -> (Attendance, CancellationToken, tokio::task::JoinHandle<()>) {
        let updates = appliers.add("engine", &self.config_tx);
        let (attendance, stage) =
            open(&self.config, &self.store, &self.log, &self.sink, &self.metrics, self.durable.clone(), updates)
                .unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(stage.run(cancel.clone()));
        (attendance, cancel, task)
    }

    async fn submit(&self, seq: u64, who: Subject, method: Method, time_ms: i64, geo: Option<GeoPoint>) {
        let outcome = self
            .sink
            .submit(DevicePunch {
                device_id: "dev".into(),
                device_seq: Some(seq),
                method,
                subject: who,
                device_time_ms: time_ms,
                received_time_ms: time_ms.max(now_ms() - 1000),
                realtime: false,
                geo,
                score: None,
                attributes: vec![],
            })
            .await;
        assert!(outcome.is_stored(), "{outcome:?}");
    }

    /// Waits (without sleeping) until the change log holds a change matching `pred`; returns all changes so far.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Change) -> bool) -> Vec<Change> {
        let mut rx = self.log.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let all: Vec<Change> = self.log.after(0).map(|r| r.unwrap().1).collect();
            if all.iter().any(&pred) {
                return all;
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep_until(deadline) => panic!("no change for {what}; log: {all:#?}"),
            }
        }
    }
}

/// `days` days ago at `hh:mm` local time.
fn local(days: i64, hh: i8, mm: i8) -> i64 {
    let tz = TimeZone::get("Asia/Shanghai").unwrap();
    let today = local_date(now_ms(), &tz);
    let d = today.checked_sub(jiff::Span::new().days(days)).unwrap();
    tz.to_timestamp(d.at(hh, mm, 0, 0)).unwrap().as_millisecond()
}

fn date(days: i64) -> String {
    let tz = TimeZone::get("Asia/Shanghai").unwrap();
    local_date(local(days, 12, 0), &tz).to_string()
}

fn records(changes: &[Change]) -> Vec<&crate::proto::upstream::AttendanceRecord> {
    changes.iter().filter_map(|c| if let Change::Record(r) = c { Some(r) } else { None }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punches_become_records_and_a_restart_adds_nothing() {
    let gw = Gateway::open(tempfile::tempdir().unwrap());
    let (attendance, cancel, task) = gw.start_stage();
    // Two days ago: in at 09:05, out at 18:00 by card (resolved through the roster).
    gw.submit(1, Subject::Employee("E1".into()), Method::Face, local(2, 9, 5), None).await;
    gw.submit(2, Subject::Credential("0a0a0a01".into()), Method::Card, local(2, 18, 0), None).await;
    let id = format!("gw:E1:{}:day", date(2));
    let all = gw
        .wait_for(
            "the closed record",
            |c| matches!(c, Change::Record(r) if r.record_id == id && r.clock_out_ms.is_some()),
        )
        .await;
    let last = records(&all).into_iter().rfind(|r| r.record_id == id).unwrap().clone();
    assert!(last.closed);
    assert!(last.statuses.is_empty(), "{last:?}");
    assert_eq!(last.rules_version, 1);
    // Both punches went upstream, the card one resolved to E1.
    let punches: Vec<_> = all.iter().filter_map(|c| if let Change::Punch(p) = c { Some(p) } else { None }).collect();
    assert_eq!(punches.len(), 2);
    assert!(punches.iter().all(|p| p.employee_id == "E1"));
    // Readable locally.
    let stored = attendance.records.get(&date(2), "E1", "day").unwrap().unwrap();
    assert_eq!(stored, last);
    let roster = attendance.roster.load().unwrap();
    let q = crate::reconcile::RecordQuery { department: Some("D-OFF".into()), ..Default::default() };
    assert!(attendance.records.query(&q, &roster).unwrap().iter().any(|r| r.record_id == id));
    // Absent records were written for E2 on the closed days since the engine started? No: the engine's first day is
    // today, so earlier days only have records where there are punches.
    assert!(attendance.records.get(&date(2), "E2", "day").unwrap().is_none());

    // Restart the stage: it re-derives everything and emits nothing new.
    cancel.cancel();
    task.await.unwrap();
    let before = gw.log.last_seq().unwrap();
    let (_attendance, cancel, task) = gw.start_stage();
    // A new punch after the restart proves the stage is running again.
    gw.submit(3, Subject::Employee("E1".into()), Method::Face, local(1, 9, 0), None).await;
    let after = gw.wait_for("the new punch", |c| matches!(c, Change::Punch(p) if p.punch_id == "gw:dev:3")).await;
    let new: Vec<&Change> = after.iter().skip(usize::try_from(before).unwrap()).collect();
    assert!(
        new.iter().all(|c| match c {
            Change::Punch(p) => p.punch_id == "gw:dev:3",
            Change::Record(r) => r.work_date == date(1),
            Change::DayClosed(_) => true,
        }),
        "after the restart: {new:#?}"
    );
    cancel.cancel();
    task.await.unwrap();
    gw.ingest_cancel.cancel();
    drop(gw.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punches_older_than_the_horizon_are_reconciled_from_the_store() {
    let gw = Gateway::open(tempfile::tempdir().unwrap());
    let (attendance, cancel, task) = gw.start_stage();
    // 40 days ago (the horizon is 31 days): in at 09:00, then, in a later batch, out at 18:30.
    gw.submit(1, Subject::Employee("E1".into()), Method::Face, local(40, 9, 0), None).await;
    let id = format!("gw:E1:{}:day", date(40));
    gw.wait_for("the old day's record", |c| matches!(c, Change::Record(r) if r.record_id == id)).await;
    gw.submit(2, Subject::Credential("0a0a0a01".into()), Method::Card, local(40, 18, 30), None).await;
    let all = gw
        .wait_for("its revision", |c| matches!(c, Change::Record(r) if r.record_id == id && r.clock_out_ms.is_some()))
        .await;
    let revisions: Vec<u32> = records(&all).iter().filter(|r| r.record_id == id).map(|r| r.revision).collect();
    assert_eq!(revisions, [1, 2]);
    assert!(all.iter().any(|c| matches!(c, Change::DayClosed(d) if *d == date(40))));
    let stored = attendance.records.get(&date(40), "E1", "day").unwrap().unwrap();
    assert_eq!((stored.revision, stored.punch_ids.len(), stored.overtime_minutes), (2, 2, 30));
    assert_eq!(stored.statuses, ["overtime"]);

    // A restart re-derives only the horizon: nothing about the old day comes out again.
    cancel.cancel();
    task.await.unwrap();
    let before = gw.log.last_seq().unwrap();
    let (_attendance, cancel, task) = gw.start_stage();
    gw.submit(3, Subject::Employee("E1".into()), Method::Face, local(1, 9, 0), None).await;
    let after = gw.wait_for("the new punch", |c| matches!(c, Change::Punch(p) if p.punch_id == "gw:dev:3")).await;
    let new: Vec<&Change> = after.iter().skip(usize::try_from(before).unwrap()).collect();
    assert!(
        new.iter().all(|c| match c {
            Change::Record(r) => r.work_date == date(1),
            Change::DayClosed(d) => *d != date(40),
            Change::Punch(p) => p.punch_id == "gw:dev:3",
        }),
        "after the restart: {new:#?}"
    );
    cancel.cancel();
    task.await.unwrap();
    gw.ingest_cancel.cancel();
    drop(gw.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn makeup_and_fence_approvals_revise_records() {
    let gw = Gateway::open(tempfile::tempdir().unwrap());
    let (attendance, cancel, task) = gw.start_stage();
    let roster = Roster::parse_csv(ROSTER).unwrap();
    gw.submit(1, Subject::Employee("E1".into()), Method::Face, local(1, 9, 0), None).await;
    let id = format!("gw:E1:{}:day", date(1));
    gw.wait_for(
        "missing_out",
        |c| matches!(c, Change::Record(r) if r.record_id == id && r.statuses == ["missing_out"]),
    )
    .await;

    // E1 forgot to punch out: asks for a make-up punch at 18:00; the manager approves.
    let a = attendance
        .approvals
        .request_makeup(&roster, "E1", local(1, 18, 0), "reader down", "E1", now_ms())
        .await
        .unwrap();
    assert_eq!(a.state, State::Pending);
    let other = Decider { name: "X".into(), departments: vec!["D-OTHER".into()] };
    assert!(attendance.approvals.decide(a.id, &other, true, None, now_ms()).await.is_err());
    let manager = Decider::manager(&roster, "M1").unwrap();
    let decided = attendance.approvals.decide(a.id, &manager, true, Some("ok"), now_ms()).await.unwrap();
    assert_eq!((decided.state, decided.decided_by.as_deref()), (State::Approved, Some("M1")));
    let punch_id = decided.added_punch_id.clone().unwrap();
    assert_eq!(punch_id, format!("gw:approvals:{}", a.id));
    let all = gw
        .wait_for(
            "the make-up punch in the record",
            |c| matches!(c, Change::Record(r) if r.record_id == id && r.punch_ids.contains(&punch_id)),
        )
        .await;
    let r = records(&all).into_iter().rfind(|r| r.record_id == id).unwrap();
    assert!(r.statuses.is_empty(), "{r:?}");
    assert!(attendance.approvals.decide(a.id, &manager, false, None, now_ms()).await.is_err(), "decided once");

    // A GPS punch outside the fence: pending until the manager decides.
    let outside = GeoPoint { lat: 31.2404, lng: 121.4737, accuracy_m: None };
    gw.submit(2, Subject::Employee("E2".into()), Method::Gps, local(1, 9, 0), Some(outside)).await;
    let gid = format!("gw:E2:{}:day", date(1));
    gw.wait_for(
        "pending",
        |c| matches!(c, Change::Record(r) if r.record_id == gid && r.statuses.contains(&"pending_approval".to_owned())),
    )
    .await;
    let fence = loop {
        let list = attendance.approvals.list().unwrap();
        if let Some(f) = list.into_iter().find(|a| matches!(a.kind, Kind::OutOfFence { .. })) {
            break f;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!((fence.employee.as_str(), fence.department.as_str()), ("E2", "D-GEO"));
    attendance.approvals.decide(fence.id, &manager, true, None, now_ms()).await.unwrap();
    gw.wait_for("approved", |c| {
        matches!(c, Change::Record(r) if r.record_id == gid && !r.statuses.contains(&"pending_approval".to_owned()))
    })
    .await;
    cancel.cancel();
    task.await.unwrap();
    gw.ingest_cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_is_reported_applied_once_its_roster_and_rules_are_in_force() {
    let gw = Gateway::open(tempfile::tempdir().unwrap());
    let mut appliers = Appliers::default();
    let (attendance, cancel, task) = gw.start_stage_with(&mut appliers);
    let wait = |config: &Arc<Config>| {
        let (appliers, config) = (appliers.clone(), config.clone());
        async move { appliers.wait(&config, Duration::from_secs(20)).await }
    };
    // Two reloads in a row, the second before the first is applied: waiting for the second is enough, and once it
    // is applied the roster store and the rules in force are the second's, with nothing left to poll for.
    // The files are replaced atomically, as an operator's editor or the API does: the stage may be reading them for
    // the first reload while the second is written, and a half-written rules file would be a version of its own.
    let replace =
        |name: &str, text: String| crate::atomic_file::write_atomic(&gw.dir.path().join(name), text.as_bytes());
    replace("roster.csv", format!("{ROSTER}E3,Three,D-OFF,,,,,\n")).unwrap();
    let first = Arc::new(config_in_place(gw.dir.path()));
    gw.config_tx.send_replace(first.clone());
    replace("roster.csv", format!("{ROSTER}E4,Four,D-OFF,,,,,\n")).unwrap();
    let second_rules = RULES.replace("D-OFF", "D-OFFICE");
    replace("rules.toml", second_rules.clone()).unwrap();
    let second = Arc::new(config_in_place(gw.dir.path()));
    gw.config_tx.send_replace(second.clone());
    assert!(wait(&second).await.is_empty(), "the engine did not apply the reload");
    let roster = attendance.roster.load().unwrap();
    assert!(roster.get("E4").is_some() && roster.get("E3").is_none(), "{:?}", roster.employees());
    // The text in force, not a version number: when the stage's start-up read the files after they were replaced,
    // the second rules are its first version.
    let current = attendance.records.current_rules().unwrap();
    let texts = attendance.records.rules_versions().unwrap();
    assert_eq!(texts.get(&current), Some(&second_rules), "the second rules file is in force");
    // The first configuration was replaced before the engine applied it: a wait for it runs into its limit.
    let late = appliers.wait(&first, Duration::from_millis(200)).await;
    assert_eq!(late, ["engine"]);
    cancel.cancel();
    task.await.unwrap();
    gw.ingest_cancel.cancel();
}

/// The configuration file of `dir` loaded again (a new value, as a SIGHUP makes).
fn config_in_place(dir: &std::path::Path) -> Config {
    crate::app::load::load(&dir.join("gatewayd.toml")).unwrap_or_else(|p| panic!("{p:?}")).0
}

#[test]
fn a_date_from_the_store_is_committed_in_slices_and_taken_off_the_set_last() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    let log = ChangeLog::open(store.db()).unwrap();
    let records = RecordStore::open(store.db()).unwrap();
    let date: Date = "2026-09-01".parse().unwrap();
    let record = |i: usize| {
        Change::Record(crate::proto::upstream::AttendanceRecord {
            record_id: format!("gw:E{i}:2026-09-01:day"),
            revision: 1,
            employee_id: format!("E{i}"),
            work_date: date.to_string(),
            shift_id: "day".into(),
            statuses: vec!["absent".into()],
            closed: true,
            ..Default::default()
        })
    };
    let mut changes: Vec<Change> = (0..2 * BACKFILL_SLICE + 1).map(record).collect();
    changes.push(Change::DayClosed(date.to_string()));
    let marks = crate::reconcile::Watermarks::default();
    commit_backfill(&records, &log, &changes, date, 7, &marks).unwrap();
    // Everything is written, in order, and the last transaction took the date off the set.
    let logged: Vec<Change> = log.after(0).map(|r| r.unwrap().1).collect();
    assert_eq!(logged, changes);
    assert_eq!(records.len(), 2 * BACKFILL_SLICE + 1);
    assert_eq!((records.applied_seq().unwrap(), records.watermarks().unwrap()), (7, marks));
    // A slice before the last keeps the date waiting (what a crash between them leaves).
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    let (log, records) = (ChangeLog::open(store.db()).unwrap(), RecordStore::open(store.db()).unwrap());
    let mut waiting = crate::reconcile::Watermarks::default();
    waiting.backfill.insert(date);
    commit_backfill(&records, &log, &changes[..1], date, 7, &waiting).unwrap();
    assert!(records.watermarks().unwrap().backfill.contains(&date));
}
