use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use super::*;
use crate::cli::certs::{DevPki, Validity};
use crate::outbox::digest::ids_sha256;
use crate::proto::upstream::{AttendanceRecord, DayDigest, Punch, UploadBatch};
use crate::upstream::client::{Client, Endpoint, SendError};

fn punch(id: &str, t: i64) -> Punch {
    Punch { punch_id: id.into(), device_time_ms: t, ..Default::default() }
}

fn record(id: &str, revision: u32) -> AttendanceRecord {
    AttendanceRecord { record_id: id.into(), revision, ..Default::default() }
}

fn batch(seq: u64, punches: Vec<Punch>, records: Vec<AttendanceRecord>, digests: Vec<DayDigest>) -> UploadBatch {
    UploadBatch { gateway_id: "gw".into(), batch_seq: seq, punches, records, digests, outbox_id: String::new() }
}

fn digest_of(ids: &[&str], from_ms: i64, to_ms: i64) -> DayDigest {
    let (punch_count, punch_ids_sha256) = ids_sha256(ids.iter().copied());
    DayDigest { work_date: "2026-11-22".into(), punch_count, punch_ids_sha256, record_count: 0, from_ms, to_ms }
}

#[test]
fn ledger_dedupes_punches_and_keeps_the_highest_revision() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let mut ledger = Ledger::open(&out).unwrap();
    let (ack, s) = ledger.apply(&batch(1, vec![punch("a", 1), punch("b", 2)], vec![record("r", 2)], vec![])).unwrap();
    assert!(ack.accepted);
    assert_eq!(ack.batch_seq, 1);
    assert_eq!((s.punches, s.records), (2, 1));
    let (_, s) = ledger
        .apply(&batch(
            2,
            vec![punch("a", 1), punch("c", 3)],
            vec![record("r", 1), record("r", 2), record("r", 3)],
            vec![],
        ))
        .unwrap();
    assert_eq!((s.punches, s.punch_duplicates, s.records, s.records_stale), (1, 1, 1, 2));
    drop(ledger);

    // The file holds exactly what was accepted, and a restarted ledger remembers it.
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[4]["revision"], 3);
    let mut again = Ledger::open(&out).unwrap();
    assert_eq!(again.summary().restored, 5);
    let (_, s) = again.apply(&batch(1, vec![punch("a", 1)], vec![record("r", 3)], vec![])).unwrap();
    assert_eq!((s.punches, s.punch_duplicates, s.records, s.records_stale), (0, 1, 0, 1));
}

#[test]
fn digests_are_checked_and_missing_days_asked_for_a_bounded_number_of_times() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(&dir.path().join("out.jsonl")).unwrap();
    let full = digest_of(&["a", "b"], 0, 100);
    let (ack, s) = ledger.apply(&batch(1, vec![punch("a", 10), punch("z", 100)], vec![], vec![full.clone()])).unwrap();
    assert_eq!(s.digests[0], DigestCheck { work_date: "2026-11-22".into(), ok: false, expected: 2, received: 1 });
    assert_eq!(ack.resend_dates, vec!["2026-11-22".to_owned()]);
    for _ in 0..MAX_RESEND_ASKS + 2 {
        ledger.apply(&batch(2, vec![], vec![], vec![full.clone()])).unwrap();
    }
    let (ack, _) = ledger.apply(&batch(3, vec![], vec![], vec![full.clone()])).unwrap();
    assert!(ack.resend_dates.is_empty(), "asks are bounded");
    let (ack, s) = ledger.apply(&batch(4, vec![punch("b", 99)], vec![], vec![full])).unwrap();
    assert!(s.digests[0].ok);
    assert!(ack.resend_dates.is_empty());
    assert_eq!(ledger.summary().digests_ok, 1);
}

#[test]
fn malformed_batches_and_lines_are_errors() {
    assert!(decode_batch(&[0xff, 0xff, 0xff]).unwrap_err().contains("not an UploadBatch"));
    assert!(decode_batch(&UploadBatch::default().encode_to_vec()).unwrap_err().contains("gateway_id"));
    let no_id = batch(1, vec![punch("", 1)], vec![], vec![]);
    assert!(decode_batch(&no_id.encode_to_vec()).unwrap_err().contains("punch_id"));
    let no_rec = batch(1, vec![], vec![record("", 1)], vec![]);
    assert!(decode_batch(&no_rec.encode_to_vec()).unwrap_err().contains("record_id"));
    let bad_range = batch(1, vec![], vec![], vec![digest_of(&[], 10, 5)]);
    assert!(decode_batch(&bad_range.encode_to_vec()).is_err());
    for (line, needle) in [
        ("", "not JSON"),
        ("{}", "no `kind`"),
        (r#"{"kind":"punch","gateway_id":"g"}"#, "punch_id"),
        (r#"{"kind":"punch","gateway_id":"g","punch_id":"p"}"#, "device_time_ms"),
        (r#"{"kind":"record","gateway_id":"g","record_id":"r","revision":-1}"#, "revision"),
    ] {
        assert!(restore_line(line).unwrap_err().contains(needle), "{line}");
    }
    assert_eq!(restore_line(r#"{"kind":"digest"}"#).unwrap(), Restored::Other);
}

#[test]
fn a_damaged_output_file_is_read_around() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    std::fs::write(
        &out,
        "{\"kind\":\"punch\",\"gateway_id\":\"gw\",\"punch_id\":\"a\",\"device_time_ms\":1}\n{\"kind\":\"pun",
    )
    .unwrap();
    let ledger = Ledger::open(&out).unwrap();
    assert_eq!(ledger.summary().restored, 1);
}

proptest::proptest! {
    #[test]
    fn sink_parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
        let _ = decode_batch(&bytes);
        let _ = restore_line(&String::from_utf8_lossy(&bytes));
    }
}

/// A CA, a sink serving with its server certificate, and files for clients.
struct Tls {
    dir: tempfile::TempDir,
    pki: DevPki,
}

impl Tls {
    fn new() -> Tls {
        Tls::with_names(&["localhost", "127.0.0.1"])
    }

    fn with_names(names: &[&str]) -> Tls {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new("test ca").unwrap();
        std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
        let server = pki.server(names, Validity::days(10)).unwrap();
        std::fs::write(dir.path().join("server.pem"), server.cert_pem).unwrap();
        std::fs::write(dir.path().join("server.key"), server.key_pem).unwrap();
        Tls { dir, pki }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a client certificate issued by `pki` as NAME.pem/NAME.key.
    fn client_files(&self, pki: &DevPki, name: &str, validity: Validity) {
        let c = pki.client(name, validity).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), c.cert_pem).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), c.key_pem).unwrap();
    }

    fn client(&self, ca: &str, name: &str, host: &str, port: u16) -> Client {
        let config = crate::upstream::tls::client_config(
            &self.path(ca),
            &self.path(&format!("{name}.pem")),
            &self.path(&format!("{name}.key")),
        )
        .unwrap();
        let endpoint = Endpoint::parse(&format!("https://{host}:{port}/base")).unwrap();
        Client::new(endpoint, config, Duration::from_secs(10))
    }

    async fn start(&self, plan: &str) -> (u16, CancellationToken, tokio::task::JoinHandle<Summary>) {
        let opts = SinkOptions {
            listen: "127.0.0.1:0".into(),
            ca: self.path("ca.pem"),
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            out: self.path("out.jsonl"),
            faults: FaultPlan::parse(plan).unwrap(),
            quiet: true,
        };
        let (listener, tls, ledger) = bind(&opts).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(serve(listener, tls, ledger, opts.faults, None, cancel.clone()));
        (port, cancel, handle)
    }
}

fn body(seq: u64, ids: &[&str]) -> Bytes {
    Bytes::from(batch(seq, ids.iter().map(|id| punch(id, 1)).collect(), vec![], vec![]).encode_to_vec())
}

#[tokio::test]
async fn mutual_tls_delivery_and_refusals_both_ways() {
    let t = Tls::new();
    t.client_files(&t.pki, "gw", Validity::days(10));
    let (port, cancel, handle) = t.start("").await;

    // The good case, twice over one connection; the second is all duplicates.
    let mut good = t.client("ca.pem", "gw", "localhost", port);
    let ack = good.post(1, body(1, &["a", "b"])).await.unwrap();
    assert!(ack.accepted && ack.batch_seq == 1);
    good.post(2, body(2, &["a"])).await.unwrap();

    // A client certificate from another CA, an expired one, and none at all: refused by the receiver.
    let other = DevPki::new("other ca").unwrap();
    t.client_files(&other, "intruder", Validity::days(10));
    let mut intruder = t.client("ca.pem", "intruder", "localhost", port);
    let e = intruder.post(1, body(1, &["x"])).await.unwrap_err();
    assert!(matches!(e, SendError::Tls(_)), "{e:?}");
    t.client_files(&t.pki, "expired", Validity { from_days: -30, to_days: -1 });
    let mut expired = t.client("ca.pem", "expired", "localhost", port);
    let e = expired.post(1, body(1, &["x"])).await.unwrap_err();
    assert!(matches!(e, SendError::Tls(_)), "{e:?}");
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        for c in crate::upstream::tls::load_certs(&t.path("ca.pem")).unwrap() {
            r.add(c).unwrap();
        }
        r
    };
    let anonymous = rustls::ClientConfig::builder_with_provider(crate::upstream::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let endpoint = Endpoint::parse(&format!("https://localhost:{port}")).unwrap();
    let mut anonymous = Client::new(endpoint, Arc::new(anonymous), Duration::from_secs(10));
    let e = anonymous.post(1, body(1, &["x"])).await.unwrap_err();
    assert!(matches!(e, SendError::Tls(_)), "{e:?}");

    // The gateway refuses a receiver whose certificate does not chain to its pinned CA, or has another name.
    std::fs::write(t.path("other-ca.pem"), other.ca_pem()).unwrap();
    let mut pinned_elsewhere = t.client("other-ca.pem", "gw", "localhost", port);
    let e = pinned_elsewhere.post(1, body(1, &["x"])).await.unwrap_err();
    assert!(matches!(e, SendError::Tls(ref m) if m.contains("certificate")), "{e:?}");
    let elsewhere = Tls::with_names(&["receiver.invalid"]);
    elsewhere.client_files(&elsewhere.pki, "gw", Validity::days(10));
    let (other_port, other_cancel, _) = elsewhere.start("").await;
    let mut wrong_name = elsewhere.client("ca.pem", "gw", "127.0.0.1", other_port);
    let e = wrong_name.post(1, body(1, &["x"])).await.unwrap_err();
    assert!(matches!(e, SendError::Tls(ref m) if m.contains("certificate")), "{e:?}");
    other_cancel.cancel();

    cancel.cancel();
    let summary = handle.await.unwrap();
    assert_eq!((summary.batches, summary.punches, summary.punch_duplicates), (2, 2, 1));
    assert!(summary.tls_refused >= 3, "{summary:?}");
    let out = std::fs::read_to_string(t.path("out.jsonl")).unwrap();
    assert_eq!(out.lines().count(), 2);
}

#[tokio::test]
async fn a_batch_is_accepted_only_from_the_gateway_its_certificate_names() {
    let t = Tls::new();
    t.client_files(&t.pki, "gw", Validity::days(10));
    t.client_files(&t.pki, "gw-2", Validity::days(10));
    let (port, cancel, handle) = t.start("").await;
    let mut forger = t.client("ca.pem", "gw-2", "127.0.0.1", port);
    let e = forger.post(1, body(1, &["a"])).await.unwrap_err();
    assert!(
        matches!(e, SendError::Refused { status: 403, ref error } if error.contains("names gateway `gw-2`")),
        "{e:?}"
    );
    let mut own = t.client("ca.pem", "gw", "127.0.0.1", port);
    assert!(own.post(1, body(1, &["a"])).await.unwrap().accepted);
    cancel.cancel();
    let summary = handle.await.unwrap();
    assert_eq!((summary.refused, summary.punches), (1, 1));
}

#[tokio::test]
async fn injected_faults_are_classified_by_the_client() {
    let t = Tls::new();
    t.client_files(&t.pki, "gw", Validity::days(10));
    let (port, cancel, handle) = t.start("503,422,reject,reset,drop,slow=10").await;
    let mut c = t.client("ca.pem", "gw", "127.0.0.1", port);
    let mut results = Vec::new();
    for seq in 1..=7 {
        results.push(c.post(seq, body(seq, &["a"])).await.map(|a| a.accepted).map_err(|e| e.label()));
    }
    assert_eq!(
        results,
        vec![Err("server_error"), Err("refused"), Err("rejected"), Err("reset"), Err("reset"), Ok(true), Ok(true)]
    );
    cancel.cancel();
    let summary = handle.await.unwrap();
    // The reset batch was applied (its ack was lost); the later ones were duplicates of it.
    assert_eq!((summary.punches, summary.punch_duplicates, summary.faults_injected), (1, 2, 6));
}
