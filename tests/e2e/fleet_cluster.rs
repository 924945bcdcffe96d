//! The fleet end to end (SPEC 6.1 and 6.2, docs/fleet.md): three gateways (real daemons) with MQTT devices publish to a
//! three-node JetStream cluster (a stream with three replicas, created by the test as an operator would); two loaders
//! share the durable consumer and write PostgreSQL. While devices keep punching, the stream's leader node is SIGKILLed
//! and restarted, a loader is SIGKILLed and restarted, and a gateway is SIGKILLed and restarted. At the end PostgreSQL
//! holds every acknowledged punch exactly once, every record at the highest revision any gateway sent, and every
//! gateway's latest digest of each day matches the punches in the database.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::fleet::{gateway_config, runtime, stream_batches, Device};
use crate::harness::nats::Cluster;
use crate::harness::postgres::Postgres;
use crate::harness::{wait_until, Gateway};
use crate::loader::{count, nats_args, Loader};
use gatewayd::outbox::digest::ids_sha256;

/// Punches per device.
const PUNCHES: u64 = 600;
/// Between two punches of one device: spreads the run over a few seconds so the failures land in the middle of it.
const PACE: Duration = Duration::from_millis(4);
const LIMIT: Duration = Duration::from_secs(180);
const GATEWAYS: [&str; 3] = ["fleet-gw1", "fleet-gw2", "fleet-gw3"];

const RULES: &str = r#"
dedupe_window = "1m"

[[shift]]
id = "day"
start = "09:00"
end = "18:00"
late_grace = "10m"
closes_after = "6h"
overtime_after = "30m"

[[group]]
id = "all"
departments = ["D-1"]
shift = "day"
workdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
"#;

/// Punch `seq` of a device: one of three past days, one of 20 employees, spread over the working day so records get
/// several revisions.
fn punch_time(seq: u64) -> (String, String) {
    let day = 20 + seq % 3;
    let minutes = 8 * 60 + (seq * 7) % (10 * 60);
    (format!("2026-11-{day}T{:02}:{:02}:{:02}+08:00", minutes / 60, minutes % 60, seq % 60), format!("E{}", seq % 20))
}

/// Starts gateway `id` in its own directory with the rules and the roster.
fn start_gateway(id: &str, device: &str, cluster: &Cluster) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), RULES).unwrap();
    let roster: String = std::iter::once("employee,name,department\n".to_owned())
        .chain((0..20).map(|e| format!("E{e},Employee {e},D-1\n")))
        .collect();
    std::fs::write(dir.path().join("roster.csv"), roster).unwrap();
    let config = gateway_config(id, id, &[device], cluster)
        + "\n[roster]\nfile = \"roster.csv\"\n\n[rules]\nfile = \"rules.toml\"\n";
    // `gateway_config` ends with [upstream]; the tables after it are top-level tables of their own.
    Gateway::start_in(dir, &config)
}

/// Devices stop at this punch until the test lets them go on (the restarted loader is back first).
const HOLD_AT: u64 = 400;

/// A device that punches `PUNCHES` times, reconnecting to the gateway's new address after the gateway restarts
/// (a punch whose ack was lost is sent again: the gateway stores it once). Counts acknowledged punches in `acked`;
/// waits at [`HOLD_AT`] until `go` says true.
async fn run_device(
    id: String,
    mut addr: watch::Receiver<SocketAddr>,
    acked: Arc<AtomicU64>,
    mut go: watch::Receiver<bool>,
) {
    let mut seq = 1;
    while seq <= PUNCHES {
        let current = *addr.borrow_and_update();
        let mut dev = Device::connect(current, &id).await;
        while seq <= PUNCHES {
            if seq == HOLD_AT + 1 {
                tokio::time::timeout(LIMIT, go.wait_for(|go| *go)).await.expect("released").unwrap();
            }
            let (time, employee) = punch_time(seq);
            if !dev.punch_at(seq, &time, &employee).await {
                break;
            }
            acked.store(seq, Ordering::SeqCst);
            seq += 1;
            tokio::time::sleep(PACE).await;
        }
        if seq <= PUNCHES {
            // The gateway went away: wait for its new address.
            tokio::time::timeout(LIMIT, addr.changed()).await.expect("the gateway came back").unwrap();
        }
    }
}

#[test]
fn a_fleet_loses_nothing_through_node_loader_and_gateway_failures() {
    let work = tempfile::tempdir().unwrap();
    let rt = runtime();
    let pg = Postgres::start();
    let mut cluster = Cluster::start(work.path(), 3, &GATEWAYS);
    rt.block_on(cluster.create_stream(3));

    let loader_args = nats_args(&cluster, &pg, 2);
    let mut loaders: Vec<Loader> = (0..2)
        .map(|i| Loader::start(&loader_args, &work.path().join(format!("loader{i}.log")), "loader consuming"))
        .collect();

    let mut gateways: Vec<Gateway> = Vec::new();
    let mut addrs = Vec::new();
    let mut acked = Vec::new();
    let mut devices = Vec::new();
    let (go, go_rx) = watch::channel(false);
    for (i, id) in GATEWAYS.iter().enumerate() {
        let device = format!("dev-{}", i + 1);
        let gw = start_gateway(id, &device, &cluster);
        let (tx, rx) = watch::channel(gw.addr("mqtt"));
        let count = Arc::new(AtomicU64::new(0));
        devices.push(rt.spawn(run_device(device, rx, count.clone(), go_rx.clone())));
        addrs.push(tx);
        acked.push(count);
        gateways.push(gw);
    }
    let least = |acked: &[Arc<AtomicU64>]| acked.iter().map(|a| a.load(Ordering::SeqCst)).min().unwrap_or(0);

    // 1. The node that leads the stream is lost, then comes back.
    wait_until("every device past 100 punches", LIMIT, || least(&acked), |n| *n >= 100);
    let leader = rt.block_on(async {
        let js = async_nats::jetstream::new(cluster.connect("operator").await);
        let mut stream = js.get_stream("GATEWAYD").await.unwrap();
        stream.info().await.unwrap().cluster.as_ref().and_then(|c| c.leader.clone()).unwrap()
    });
    let lost = cluster.nodes.iter().position(|n| n.name == leader).unwrap();
    cluster.nodes[lost].kill();
    wait_until("every device past 200 punches", LIMIT, || least(&acked), |n| *n >= 200);
    cluster.restart(lost);

    // 2. A loader is SIGKILLed (whatever it held is delivered to the other after the ack wait), then restarted; the
    //    devices wait at punch 400 until it is consuming again, so it takes part in the rest of the run.
    wait_until("every device past 300 punches", LIMIT, || least(&acked), |n| *n >= 300);
    loaders[0].kill9();
    wait_until("every device at 400 punches", LIMIT, || least(&acked), |n| *n >= HOLD_AT);
    loaders[0].spawn("loader consuming");
    go.send_replace(true);

    // 3. A gateway is SIGKILLed and restarted; its device reconnects and goes on.
    wait_until("every device past 450 punches", LIMIT, || least(&acked), |n| *n >= 450);
    gateways[1].kill9();
    gateways[1].spawn();
    addrs[1].send_replace(gateways[1].addr("mqtt"));

    for d in devices {
        rt.block_on(async { tokio::time::timeout(LIMIT, d).await.expect("devices finish").unwrap() });
    }

    // Every acknowledged punch, exactly once.
    let db = rt.block_on(pg.client());
    let expected: BTreeSet<String> = GATEWAYS
        .iter()
        .enumerate()
        .flat_map(|(i, gw)| (1..=PUNCHES).map(move |s| format!("{gw}:dev-{}:{s}", i + 1)))
        .collect();
    let total = || rt.block_on(count(&db, "SELECT count(*) FROM punches"));
    wait_until("every punch in PostgreSQL", LIMIT, total, |n| *n >= expected.len() as i64);
    let ids: BTreeSet<String> = rt
        .block_on(db.query("SELECT punch_id FROM punches", &[]))
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    assert_eq!(ids.len() as i64, total(), "punch ids are unique");
    assert_eq!(ids, expected, "PostgreSQL holds exactly the acknowledged punches");

    // Every record at the highest revision the gateways sent, once the gateways are done sending: wait until the
    // stream is quiet and PostgreSQL agrees with it.
    let stream_records = || {
        rt.block_on(async {
            let mut best: BTreeMap<String, u32> = BTreeMap::new();
            for (_, _, b) in stream_batches(&cluster).await {
                for r in b.records {
                    let e = best.entry(r.record_id).or_insert(0);
                    *e = (*e).max(r.revision);
                }
            }
            best
        })
    };
    let db_records = || -> BTreeMap<String, u32> {
        rt.block_on(db.query("SELECT record_id, revision FROM records", &[]))
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u32))
            .collect()
    };
    let agree = || {
        let (s, d) = (stream_records(), db_records());
        (s.len(), d.len(), s == d)
    };
    let (records, _, _) = wait_until("records at their highest revision", LIMIT, agree, |(s, _, same)| *s > 0 && *same);
    let revisions = rt.block_on(count(&db, "SELECT count(*) FROM records WHERE revision > 1"));
    assert!(revisions > 0, "some of the {records} records were revised");

    // The digests agree: each gateway's latest digest of each day is complete, and matches the database.
    let digests_ok = || {
        rt.block_on(async {
            let rows = db
                .query(
                    "SELECT gateway_id, work_date, punch_count, punch_ids_sha256, from_ms, to_ms, complete FROM digests",
                    &[],
                )
                .await
                .unwrap();
            let mut bad = Vec::new();
            for r in &rows {
                let (gw, date): (String, String) = (r.get(0), r.get(1));
                let ids: Vec<String> = db
                    .query(
                        "SELECT punch_id FROM punches WHERE gateway_id = $1 AND device_time_ms >= $2 AND device_time_ms < $3",
                        &[&gw, &r.get::<_, i64>(4), &r.get::<_, i64>(5)],
                    )
                    .await
                    .unwrap()
                    .iter()
                    .map(|x| x.get(0))
                    .collect();
                let (n, sha) = ids_sha256(ids.iter());
                if !r.get::<_, bool>(6) || n as i64 != r.get::<_, i64>(2) || sha != r.get::<_, Vec<u8>>(3) {
                    bad.push(format!("{gw} {date}: {n} in the database, {} in the digest", r.get::<_, i64>(2)));
                }
            }
            (rows.len(), bad)
        })
    };
    wait_until("9 digests (3 gateways x 3 days), all matching", LIMIT, digests_ok, |(n, bad)| {
        *n == 9 && bad.is_empty()
    });
    let per_gateway: HashMap<String, i64> = rt
        .block_on(db.query("SELECT gateway_id, max(last_batch_seq) FROM gateways GROUP BY gateway_id", &[]))
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(per_gateway.len(), 3, "{per_gateway:?}");

    // The failures happened: a loader's batches went to the other, the lost node came back into the cluster.
    let summaries: Vec<String> = loaders.iter_mut().map(Loader::stop).collect();
    for gw in &mut gateways {
        gw.stop();
    }
    assert!(cluster.nodes[lost].running());
    let batches = |s: &str| s.split("summary: ").nth(1).and_then(|t| t.split(' ').next()?.parse::<u64>().ok());
    assert!(
        summaries.iter().all(|s| batches(s).is_some_and(|n| n > 0)),
        "both loaders loaded batches after the restart: {summaries:?}"
    );
}
