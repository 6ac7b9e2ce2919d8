//! Workload micro-benchmarks: key formatting into a reused buffer, weighted picks, zipf and
//! uniform ranks, and the `bench-redis` key buffer (all on the per-operation path).
//!
//! `cargo bench --bench workload -- --quick`

use analytics_demo::workload::bench_mix::KeyBuf;
use analytics_demo::workload::{keys, EventType, Rng, Skewed, Weighted, EVENT_TYPES, QUERY_TYPES};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn key_formatting(c: &mut Criterion) {
    let mut g = c.benchmark_group("keys");
    let mut buf = Vec::with_capacity(64);
    let mut org = 0u32;
    g.bench_function("counter", |b| {
        b.iter(|| {
            org = org.wrapping_add(7919) % 10_000;
            keys::counter(&mut buf, black_box(org), EventType::Click, 2026112517);
            black_box(&buf);
        })
    });
    g.bench_function("dashboard", |b| {
        b.iter(|| {
            org = org.wrapping_add(7919) % 10_000;
            keys::dashboard(&mut buf, black_box(org));
            black_box(&buf);
        })
    });
    g.bench_function("filtered", |b| {
        b.iter(|| {
            org = org.wrapping_add(7919) % 10_000;
            keys::filtered(&mut buf, black_box(org), EventType::PageView, 24);
            black_box(&buf);
        })
    });
    let mut kb = KeyBuf::default();
    let mut i = 0u64;
    g.bench_function("bench_key", |b| {
        b.iter(|| {
            i = i.wrapping_add(104_729) % 1_000_000_000_000;
            black_box(kb.set(black_box(i)));
        })
    });
    g.finish();
}

fn sampling(c: &mut Criterion) {
    let mut g = c.benchmark_group("dist");
    let mut rng = Rng::new(42);
    let events = Weighted::new(&EVENT_TYPES);
    let queries = Weighted::new(&QUERY_TYPES);
    g.bench_function("weighted_events", |b| {
        b.iter(|| black_box(events.sample(&mut rng)))
    });
    g.bench_function("weighted_queries", |b| {
        b.iter(|| black_box(queries.sample(&mut rng)))
    });
    for n in [500usize, 1000, 100_000] {
        let z = Skewed::zipf(n, 1.0);
        g.bench_function(format!("zipf_{n}"), |b| {
            b.iter(|| black_box(z.sample(&mut rng)))
        });
    }
    let u = Skewed::uniform(100_000);
    g.bench_function("uniform_100000", |b| {
        b.iter(|| black_box(u.sample(&mut rng)))
    });
    g.bench_function("zipf_build_1000", |b| {
        b.iter(|| black_box(Skewed::zipf(black_box(1000), 1.0)))
    });
    g.finish();
}

criterion_group!(benches, key_formatting, sampling);
criterion_main!(benches);
