use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::FenceRequest;
use super::*;
use crate::ingest::{self, IngestSettings};

const ROSTER: &str = "employee,department,manages\nE1,D-OFF,\nE2,D-OFF,D-OFF\nM1,D-ADM,D-OFF\n";
const NOW: i64 = 1_795_330_800_000;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    approvals: Approvals,
    roster: Roster,
    stop: CancellationToken,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    let metrics = crate::app::metrics();
    let (sink, rx) = PunchSink::channel(16, metrics.drivers.clone());
    let (durable, _) = watch::channel(0);
    let stop = CancellationToken::new();
    tokio::spawn(ingest::run_writer(
        store.clone(),
        IngestSettings { gateway_id: "gw".into(), max_batch: 64 },
        rx,
        durable,
        metrics,
        stop.clone(),
    ));
    let approvals = Approvals::open(store.db(), "gw", sink, super::no_listener()).unwrap();
    Fixture { _dir: dir, store, approvals, roster: Roster::parse_csv(ROSTER).unwrap(), stop }
}

#[tokio::test]
async fn makeup_request_is_checked() {
    let f = fixture();
    let err = |r: Result<Approval, ApprovalError>| r.unwrap_err().to_string();
    let a = &f.approvals;
    assert_eq!(
        err(a.request_makeup(&f.roster, "E9", NOW - 1, "", "E9", NOW).await),
        "employee `E9` is not in the roster"
    );
    assert!(err(a.request_makeup(&f.roster, "E1", NOW + 1, "", "E1", NOW).await).contains("future"));
    assert!(err(a.request_makeup(&f.roster, "E1", NOW - 1, &"x".repeat(501), "E1", NOW).await).contains("at most 500"));
    assert!(err(a.request_makeup(&f.roster, "E1", 0, "", "E1", NOW).await).contains("2000"));
    let ok = a.request_makeup(&f.roster, "E1", NOW - 3_600_000, "forgot", "E1", NOW).await.unwrap();
    assert_eq!((ok.id, ok.department.as_str(), ok.state), (1, "D-OFF", State::Pending));
    assert_eq!(a.get(1).unwrap(), ok);
    assert!(matches!(a.get(7), Err(ApprovalError::NotFound(7))));
    f.stop.cancel();
}

#[tokio::test]
async fn only_a_manager_of_the_department_decides_once_and_approval_stores_a_makeup_punch() {
    let f = fixture();
    let a = &f.approvals;
    let req = a.request_makeup(&f.roster, "E1", NOW - 3_600_000, "forgot", "E1", NOW).await.unwrap();
    let stranger = Decider { name: "X".into(), departments: vec!["D-ADM".into()] };
    assert!(matches!(a.decide(req.id, &stranger, true, None, NOW).await, Err(ApprovalError::NotAllowed { .. })));
    let own = a.request_makeup(&f.roster, "E2", NOW - 3_600_000, "", "E2", NOW).await.unwrap();
    let e2 = Decider::manager(&f.roster, "E2").unwrap();
    assert!(matches!(a.decide(own.id, &e2, true, None, NOW).await, Err(ApprovalError::OwnRequest(_))));

    let m1 = Decider::manager(&f.roster, "M1").unwrap();
    let done = a.decide(req.id, &m1, true, Some("fine"), NOW + 5).await.unwrap();
    assert_eq!(done.state, State::Approved);
    assert_eq!(
        (done.decided_by.as_deref(), done.decided_at_ms, done.note.as_deref()),
        (Some("M1"), Some(NOW + 5), Some("fine"))
    );
    let punch = f.store.get_by_id("gw:approvals:1").unwrap().expect("the make-up punch is stored");
    assert_eq!(punch.method, Method::Makeup);
    assert_eq!(punch.employee(), Some("E1"));
    assert_eq!(punch.device_time_ms, NOW - 3_600_000);
    assert_eq!(punch.attribute("approved_by"), Some("M1"));
    assert!(matches!(
        a.decide(req.id, &m1, false, None, NOW).await,
        Err(ApprovalError::AlreadyDecided { state: State::Approved, .. })
    ));
    // Nothing is missing, so nothing is submitted again; the stored punch stays one.
    assert_eq!(a.resubmit_approved(&f.store).await.unwrap(), 0);
    assert_eq!(f.store.count().unwrap(), 1);
    f.stop.cancel();
}

#[tokio::test]
async fn concurrent_decisions_one_wins() {
    let f = fixture();
    let req = f.approvals.request_makeup(&f.roster, "E1", NOW - 60_000, "", "E1", NOW).await.unwrap();
    let m1 = Decider::manager(&f.roster, "M1").unwrap();
    let e2 = Decider::manager(&f.roster, "E2").unwrap();
    let (a, b) = tokio::join!(
        f.approvals.decide(req.id, &m1, true, None, NOW),
        f.approvals.decide(req.id, &e2, false, None, NOW)
    );
    assert!(a.is_ok() != b.is_ok(), "{a:?} / {b:?}");
    f.stop.cancel();
}

#[tokio::test]
async fn fence_approvals_are_created_once_and_listed_with_decisions() {
    let f = fixture();
    let req = FenceRequest {
        punch_id: "gw:phone:1".into(),
        employee: "E1".into(),
        department: "D-OFF".into(),
        time_ms: NOW,
        weak_location: false,
    };
    let created = f.approvals.ensure_fence(&req, NOW).unwrap().unwrap();
    assert!(f.approvals.ensure_fence(&req, NOW).unwrap().is_none());
    assert_eq!(f.approvals.fence_punches().unwrap(), vec!["gw:phone:1"]);
    assert!(f.approvals.fence_decisions().unwrap().is_empty());
    let m1 = Decider::manager(&f.roster, "M1").unwrap();
    f.approvals.decide(created.id, &m1, false, None, NOW).await.unwrap();
    assert_eq!(f.approvals.fence_decisions().unwrap(), vec![("gw:phone:1".to_owned(), false)]);
    // Round trip through JSON keeps the kind tag.
    let json = serde_json::to_value(f.approvals.get(created.id).unwrap()).unwrap();
    assert_eq!((json["kind"].as_str(), json["state"].as_str()), (Some("out_of_fence"), Some("rejected")));
    f.stop.cancel();
}
