//! Durable punches per second through the ingest writer (group commit + flush) at 1, 16 and 256 concurrent writers, and
//! bytes on disk per punch after 1,000,000 punches.
//!
//! `cargo bench -p gatewayd --bench store` (set `STORE_BENCH_PUNCHES` to change the size of the disk-usage run).
//! Each writer behaves like a device: it submits one punch and waits until it is durable before sending the next.

// A benchmark, like a test: a failed setup should stop it loudly.
#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use drivers::sink::Subject;
use drivers::telemetry::DriverMetrics;
use drivers::{DevicePunch, Method, Outcome, PunchSink};
use gatewayd::ingest::{run_writer, IngestSettings};
use gatewayd::store::Store;
use tokio_util::sync::CancellationToken;

fn punch(writer: usize, seq: u64) -> DevicePunch {
    let t = 1_795_827_570_000 + seq as i64 * 37;
    DevicePunch {
        device_id: format!("dev-{writer}"),
        device_seq: Some(seq),
        method: Method::Face,
        subject: Subject::Employee(format!("E{:05}", (seq as usize * 7919 + writer) % 10_000)),
        device_time_ms: t,
        received_time_ms: t + 150,
        realtime: true,
        geo: None,
        score: Some(0.93),
        attributes: Vec::new(),
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    sink: PunchSink,
    cancel: CancellationToken,
    writer: tokio::task::JoinHandle<()>,
}

fn rig(rt: &tokio::runtime::Runtime) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 64).expect("open");
    let (sink, rx) = PunchSink::channel(1024, DriverMetrics::default());
    let (durable, _) = tokio::sync::watch::channel(0);
    let cancel = CancellationToken::new();
    let settings = IngestSettings { gateway_id: "bench-gw".into(), max_batch: 4096 };
    let writer = rt.spawn(run_writer(store.clone(), settings, rx, durable, gatewayd::app::metrics(), cancel.clone()));
    Rig { _dir: dir, store, sink: sink.for_driver("mqtt"), cancel, writer }
}

/// `writers` devices each submitting `per_writer` punches one at a time; returns the elapsed time.
async fn drive(sink: &PunchSink, writers: usize, per_writer: u64, seq_base: u64) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let sink = sink.clone();
            tokio::spawn(async move {
                for i in 0..per_writer {
                    let outcome = sink.submit(punch(w, seq_base + i)).await;
                    assert!(matches!(outcome, Outcome::Stored { duplicate: false, .. }), "{outcome:?}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer task");
    }
    started.elapsed()
}

fn durable_throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("store_durable_punches");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    for writers in [1usize, 16, 256] {
        let r = rig(&rt);
        let mut seq_base = 0u64;
        group.throughput(Throughput::Elements(writers as u64));
        group.bench_with_input(BenchmarkId::from_parameter(writers), &writers, |b, &writers| {
            // One iteration = every writer stores one durable punch.
            b.iter_custom(|iters| {
                let elapsed = rt.block_on(drive(&r.sink, writers, iters, seq_base));
                seq_base += iters;
                elapsed
            });
        });
        r.cancel.cancel();
        let _ = rt.block_on(r.writer);
    }
    group.finish();
}

/// Not a timed benchmark: fills a store with 1,000,000 punches and reports bytes on disk per punch.
fn disk_usage() {
    let total: u64 = std::env::var("STORE_BENCH_PUNCHES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let r = rig(&rt);
    let writers = 256;
    let elapsed = rt.block_on(drive(&r.sink, writers, total / writers as u64, 0));
    // The read indexes follow the durable path; the writer stops after its follower has indexed everything.
    let lag = r.store.index_lag();
    let catch_up = Instant::now();
    r.cancel.cancel();
    let _ = rt.block_on(r.writer);
    let catch_up = catch_up.elapsed();
    assert_eq!(r.store.index_lag(), 0, "indexes current after the writer stopped");
    rt.block_on(r.store.flush()).expect("flush");
    let stored = r.store.count().expect("count");
    let bytes = r.store.size_on_disk();
    println!(
        "store_disk_usage: {stored} punches, {bytes} bytes on disk, {:.0} bytes/punch, filled in {:.1} s ({:.0} durable \
         punches/s); index lag at the end {lag} punches, indexed {:.2} s later ({:.0} punches/s durable and indexed)",
        bytes as f64 / stored as f64,
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64(),
        catch_up.as_secs_f64(),
        stored as f64 / (elapsed + catch_up).as_secs_f64(),
    );
}

criterion_group!(benches, durable_throughput);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|a| a == "--bench") {
        disk_usage();
    }
}
