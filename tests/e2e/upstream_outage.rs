//! Issue 8: an upstream outage for a whole working day of a 5,000-employee site, then recovery.
//!
//! The real daemon with the attendance engine: ten ZKTeco terminals (ADMS push over HTTP) upload yesterday's punches of
//! 5,000 employees — four each (in, out for lunch, back, out), some double taps (distinct punches, merged by the engine)
//! and re-uploads of lines a terminal did not see acknowledged (the same punch again). The receiver is down the whole
//! time: its port refuses connections, so the sender keeps failing and the outbox holds the day: punches, the engine's
//! record revisions and the day digest. Then the reference receiver (`gatewayd upstream-sink`) comes up on that port.
//!
//! Checked afterwards, from the receiver's output file: every punch arrived exactly once (nothing lost, no duplicate on
//! the wire either, since nothing had reached the receiver before), batches arrived in order with `batch_seq` 1, 2, 3,
//! ... and no gaps, every record's revisions arrived in increasing order and after the punches they cite, every
//! employee has a record, and the day's digest arrived after all the day's punches and matches them. The drain rate is
//! printed (`cargo test -p gatewayd --test e2e upstream_outage -- --nocapture`; see docs/benchmarks.md).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::harness::{base_config, dev_certs_named, http, wait_until, Gateway};
use crate::upstream::{number_after, Sink};

const EMPLOYEES: u32 = 5000;
const TERMINALS: u32 = 10;
/// Employees whose clock-in is a double tap (a second punch 30 s later).
const DOUBLE_TAP_EVERY: u32 = 50;
/// Lines of the previous upload a terminal sends again (it did not see the answer).
const RESENT_LINES: usize = 50;
const LIMIT: Duration = Duration::from_secs(300);

const RULES: &str = r#"
dedupe_window = "2m"

[[shift]]
id = "day"
start = "09:00"
end = "18:00"
late_grace = "10m"
closes_after = "6h"
overtime_after = "30m"

[[group]]
id = "plant"
departments = ["ASSY", "PACK", "QA", "STORES", "OFFICE"]
shift = "day"
workdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
"#;

fn tz() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::get("Asia/Shanghai").unwrap()
}

fn pin(e: u32) -> String {
    format!("{}", 10_000 + e)
}

/// One ATTLOG line: PIN, local time, status, verify mode (15 = face).
struct Line {
    terminal: u32,
    pin: String,
    time: jiff::civil::DateTime,
    text: String,
}

/// The day's punches, per wave (in, lunch out, lunch in, out), each wave in time order.
fn day_of_punches(date: jiff::civil::Date) -> Vec<Vec<Line>> {
    let at = |e: u32, h: i8, base_min: u32, spread: u32, sec: u32| {
        let minute = base_min + (e * 7) % spread;
        date.at(h + (minute / 60) as i8, (minute % 60) as i8, (sec % 60) as i8, 0)
    };
    let line = |e: u32, time: jiff::civil::DateTime, status: u8| Line {
        terminal: e % TERMINALS,
        pin: pin(e),
        time,
        text: format!("{}\t{}\t{status}\t15\n", pin(e), time.strftime("%Y-%m-%d %H:%M:%S")),
    };
    let mut waves: Vec<Vec<Line>> = (0..4).map(|_| Vec::new()).collect();
    for e in 0..EMPLOYEES {
        let clock_in = at(e, 8, 20, 55, e);
        waves[0].push(line(e, clock_in, 0));
        if e % DOUBLE_TAP_EVERY == 0 {
            let again = clock_in.checked_add(jiff::Span::new().seconds(30)).unwrap();
            waves[0].push(line(e, again, 0));
        }
        waves[1].push(line(e, at(e, 12, 0, 25, e + 11), 1));
        waves[2].push(line(e, at(e, 12, 45, 30, e + 23), 0));
        waves[3].push(line(e, at(e, 17, 55, 70, e + 37), 1));
    }
    for wave in &mut waves {
        wave.sort_by_key(|l| l.time);
    }
    waves
}

fn serial(terminal: u32) -> String {
    format!("OUTAGE{terminal:04}")
}

fn upload(gw: &Gateway, terminal: u32, stamp: usize, lines: &[&Line]) {
    let body: String = lines.iter().map(|l| l.text.as_str()).collect();
    let (status, answer) = http(
        "POST",
        gw.addr("api"),
        &format!("/iclock/cdata?SN={}&table=ATTLOG&Stamp={stamp}", serial(terminal)),
        &[],
        Some(body.into_bytes()),
    );
    assert_eq!((status, answer.as_str()), (200, format!("OK: {}\n", lines.len()).as_str()));
}

#[test]
fn a_day_long_upstream_outage_of_a_5000_employee_site_loses_nothing_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_certs_named(dir.path(), "site-gw");
    // The receiver's port, refusing connections until the receiver starts on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();

    let departments = ["ASSY", "PACK", "QA", "STORES", "OFFICE"];
    let roster: String = std::iter::once("employee,name,department\n".to_owned())
        .chain((0..EMPLOYEES).map(|e| format!("{},Employee {e},{}\n", pin(e), departments[(e % 5) as usize])))
        .collect();
    let gw_dir = tempfile::tempdir().unwrap();
    std::fs::write(gw_dir.path().join("roster.csv"), roster).unwrap();
    std::fs::write(gw_dir.path().join("rules.toml"), RULES).unwrap();
    let devices: String = (0..TERMINALS)
        .map(|t| format!("[[device]]\nid = \"zk-{t:02}\"\ndriver = \"adms\"\nserial_number = \"{}\"\n\n", serial(t)))
        .collect();
    let config = format!(
        "{}{devices}[roster]\nfile = \"roster.csv\"\n\n[rules]\nfile = \"rules.toml\"\n\n\
         [upstream]\nurl = \"https://localhost:{port}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         max_backoff = \"1s\"\n",
        base_config("site-gw"),
        ca = certs.join("ca.pem").display(),
        cert = certs.join("client.pem").display(),
        key = certs.join("client.key").display(),
    );
    let gw = Gateway::start_in(gw_dir, &config);

    // Yesterday (site time): the whole day goes in while the receiver is down.
    let date = jiff::Timestamp::now().to_zoned(tz()).date().yesterday().unwrap();
    let waves = day_of_punches(date);
    let mut unique: HashSet<(String, String, i64)> = HashSet::new();
    let mut stamp = 0;
    let mut resent = 0;
    let mut previous: Vec<Vec<&Line>> = (0..TERMINALS).map(|_| Vec::new()).collect();
    for wave in &waves {
        for t in 0..TERMINALS {
            // A terminal that lost the answer to its previous upload sends those lines again, then the new ones.
            let mut lines: Vec<&Line> = previous[t as usize].iter().rev().take(RESENT_LINES).rev().copied().collect();
            resent += lines.len();
            let fresh: Vec<&Line> = wave.iter().filter(|l| l.terminal == t).collect();
            lines.extend(fresh.iter().copied());
            for chunk in lines.chunks(400) {
                stamp += 1;
                upload(&gw, t, stamp, chunk);
            }
            for l in &fresh {
                let ms = l.time.to_zoned(tz()).unwrap().timestamp().as_millisecond();
                unique.insert((format!("zk-{t:02}"), l.pin.clone(), ms));
            }
            previous[t as usize] = fresh;
        }
    }
    let punches = unique.len();
    assert_eq!(punches as u32, EMPLOYEES * 4 + EMPLOYEES / DOUBLE_TAP_EVERY);
    assert!(resent > 0);

    // Everything is in the outbox: the punches, the records and the digest of the closed day.
    gw.wait_metric_at_least("gatewayd_engine_punches_total", punches as f64, LIMIT);
    gw.wait_metric_at_least("gatewayd_outbox_enqueued_total{kind=\"punch\"}", punches as f64, LIMIT);
    gw.wait_metric_at_least("gatewayd_outbox_enqueued_total{kind=\"record\"}", f64::from(EMPLOYEES), LIMIT);
    gw.wait_metric_at_least("gatewayd_outbox_enqueued_total{kind=\"digest\"}", 1.0, LIMIT);
    // ...and the sender kept trying all day: the receiver's port refused every attempt.
    gw.wait_metric_at_least("gatewayd_upstream_batches_total{result=\"connect_error\"}", 1.0, LIMIT);
    assert_eq!(gw.metric("gatewayd_upstream_batches_total{result=\"accepted\"}").unwrap_or(0.0), 0.0);
    assert_eq!(gw.metric("gatewayd_store_punches"), Some(punches as f64));
    let backlog = gw.metric("gatewayd_outbox_depth").unwrap_or(0.0);

    // Recovery: the receiver comes up on the port the gateway has been trying.
    let out = dir.path().join("received.jsonl");
    let mut sink = Sink::start(&certs, &out, &format!("127.0.0.1:{port}"), "");
    let up = Instant::now();
    sink.stdout.wait_for("batch 1 ", LIMIT);
    let first_batch = Instant::now();
    let delivered = |gw: &Gateway| gw.metric("gatewayd_upstream_items_delivered_total").unwrap_or(0.0);
    let depth_and_delivered = || (gw.metric("gatewayd_outbox_depth"), delivered(&gw));
    wait_until("the outbox drained and the backlog delivered", LIMIT, depth_and_delivered, |(depth, items)| {
        *depth == Some(0.0) && *items >= backlog
    });
    let drained = first_batch.elapsed();
    let items = delivered(&gw);
    let summary = sink.stop();
    println!(
        "outage of a {EMPLOYEES}-employee day: {punches} punches ({resent} lines re-sent by terminals), backlog {backlog} \
         items; after the receiver came up: first batch in {:.2} s, {items} items delivered in {:.2} s after it = \
         {:.0} items/s\n{summary}",
        (first_batch - up).as_secs_f64(),
        drained.as_secs_f64(),
        items / drained.as_secs_f64().max(1e-3)
    );

    // Nothing reached the receiver before, so nothing is a duplicate on the wire; nothing was refused.
    assert_eq!(number_after(&summary, "punches ("), punches as u64, "{summary}");
    assert_eq!(number_after(&summary, "duplicates ignored"), 0, "{summary}");
    assert_eq!(number_after(&summary, "stale"), 0, "{summary}");
    assert_eq!(number_after(&summary, "requests refused"), 0, "{summary}");

    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Batches in order, none skipped: 1, 2, 3, ...
    let mut seqs: Vec<u64> = lines.iter().map(|v| v["batch_seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "batches out of order");
    seqs.dedup();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    let (from_ms, to_ms) = {
        let from = date.to_zoned(tz()).unwrap().timestamp().as_millisecond();
        let to = date.tomorrow().unwrap().to_zoned(tz()).unwrap().timestamp().as_millisecond();
        (from, to)
    };
    let mut seen_ids: HashSet<String> = HashSet::new();
    let mut seen_punches: HashSet<(String, String, i64)> = HashSet::new();
    let mut revisions: BTreeMap<String, u64> = BTreeMap::new();
    let mut employees_with_records: HashSet<String> = HashSet::new();
    let mut digests: Vec<(usize, serde_json::Value)> = Vec::new();
    let mut last_punch_of_day = 0;
    let mut merged = 0;
    for (i, v) in lines.iter().enumerate() {
        match v["kind"].as_str().unwrap() {
            "punch" => {
                let id = v["punch_id"].as_str().unwrap().to_owned();
                assert!(seen_ids.insert(id.clone()), "punch {id} twice");
                let key = (
                    v["device_id"].as_str().unwrap().to_owned(),
                    v["employee_id"].as_str().unwrap().to_owned(),
                    v["device_time_ms"].as_i64().unwrap(),
                );
                assert!(unique.contains(&key), "unexpected punch {v}");
                assert!(seen_punches.insert(key), "the same punch twice: {v}");
                if (from_ms..to_ms).contains(&v["device_time_ms"].as_i64().unwrap()) {
                    last_punch_of_day = i;
                }
                if v["flags"].as_array().unwrap().iter().any(|f| f == "duplicate_merged") {
                    merged += 1;
                }
            }
            "record" => {
                let id = v["record_id"].as_str().unwrap().to_owned();
                let revision = v["revision"].as_u64().unwrap();
                let before = revisions.insert(id.clone(), revision);
                assert!(before.is_none_or(|b| b < revision), "record {id}: revision {revision} after {before:?}");
                for p in v["punch_ids"].as_array().unwrap() {
                    assert!(seen_ids.contains(p.as_str().unwrap()), "record {id} cites {p} before it arrived");
                }
                assert_eq!(v["work_date"], date.to_string());
                employees_with_records.insert(v["employee_id"].as_str().unwrap().to_owned());
            }
            "digest" => digests.push((i, v.clone())),
            other => panic!("unknown line kind {other}"),
        }
    }
    assert_eq!(seen_punches, unique, "every punch delivered");
    assert_eq!(employees_with_records.len() as u32, EMPLOYEES, "every employee has a record");
    assert_eq!(merged as u32, EMPLOYEES / DOUBLE_TAP_EVERY, "double taps flagged");

    // The digest of the day: after the day's last punch, complete, and counting exactly what was delivered.
    let (at, digest) = digests.last().expect("a day digest");
    assert!(*at > last_punch_of_day, "the digest came before punches of its day");
    assert_eq!(digest["work_date"], date.to_string());
    assert_eq!(digest["complete"], true, "{digest}");
    assert_eq!(digest["punch_count"].as_u64(), Some(punches as u64), "{digest}");
    assert_eq!(digest["record_count"].as_u64(), Some(revisions.len() as u64), "{digest}");
    let incomplete: Vec<&serde_json::Value> =
        digests.iter().map(|(_, d)| d).filter(|d| d["complete"] != true).collect();
    assert!(incomplete.is_empty(), "digests that did not match what was delivered before them: {incomplete:?}");
    let mut per_kind: HashMap<&str, usize> = HashMap::new();
    for v in &lines {
        *per_kind.entry(v["kind"].as_str().unwrap()).or_default() += 1;
    }
    println!("receiver file: {per_kind:?}, {} batches, {} digests", seqs.len(), digests.len());
    drop(gw);
}
