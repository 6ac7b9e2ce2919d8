//! Histogram recording costs: hdrhistogram `record` (what shards and `bench-redis` do per
//! operation) and a `metrics` histogram handle with the Prometheus recorder installed (what
//! every Redis command records in the client).
//!
//! `cargo bench --bench histogram -- --quick`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use hdrhistogram::Histogram;

fn hdr(c: &mut Criterion) {
    let mut g = c.benchmark_group("hdrhistogram");
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
    let mut v = 1u64;
    g.bench_function("record_ns", |b| {
        b.iter(|| {
            // A spread of latencies from ~1 us to ~8 ms.
            v = (v * 6364136223846793005 + 1442695040888963407) % 8_000_000 + 1000;
            h.saturating_record(black_box(v));
        })
    });
    let mut small = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    g.bench_function("record_us", |b| {
        b.iter(|| {
            v = (v * 6364136223846793005 + 1442695040888963407) % 8_000 + 1;
            small.saturating_record(black_box(v));
        })
    });
    g.bench_function("p99_of_1M", |b| {
        let mut full = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        for i in 0..1_000_000u64 {
            full.record(i * 37 % 5_000_000 + 1000).unwrap();
        }
        b.iter(|| black_box(full.value_at_quantile(0.99)))
    });
    g.finish();
}

fn metrics_handle(c: &mut Criterion) {
    // The application's own recorder (Prometheus, its bucket layout), installed globally.
    analytics_demo::metrics::install().expect("install the metrics recorder");
    let h = metrics::histogram!(analytics_demo::metrics::QUERY_DURATION, "shard" => "0", "query_type" => "dashboard");
    let mut v = 1u64;
    c.bench_function("metrics/histogram_record", |b| {
        b.iter(|| {
            v = (v * 6364136223846793005 + 1442695040888963407) % 8_000 + 1;
            h.record(black_box(v as f64 / 1e6));
        })
    });
    c.bench_function("metrics/histogram_lookup_and_record", |b| {
        b.iter(|| {
            metrics::histogram!(analytics_demo::metrics::QUERY_DURATION, "shard" => "0", "query_type" => "dashboard")
                .record(black_box(0.001));
        })
    });
}

criterion_group!(benches, hdr, metrics_handle);
criterion_main!(benches);
