//! RESP micro-benchmarks: encoding commands and decoding replies with the client's own
//! `resp::frame` code (the per-command CPU cost that `bench-redis` measures end to end).
//!
//! `cargo bench --bench resp -- --quick`

use analytics_demo::resp::frame::{encode_command, Decoder};
use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let key = b"key:000000012345";
    for size in [32usize, 1024] {
        let value = vec![b'x'; size];
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("set", size), &value, |b, v| {
            // The buffer is reused, as a connection reuses its write buffer.
            let mut out = BytesMut::with_capacity(64 * 1024);
            b.iter(|| {
                encode_command(&mut out, black_box(&[b"SET", key, v]));
                if out.len() > 60 * 1024 {
                    out.clear();
                }
            });
        });
    }
    g.bench_function("get", |b| {
        let mut out = BytesMut::with_capacity(64 * 1024);
        b.iter(|| {
            encode_command(&mut out, black_box(&[b"GET", key]));
            if out.len() > 60 * 1024 {
                out.clear();
            }
        });
    });
    g.finish();
}

/// Decodes `n` copies of `reply` from one buffer per iteration (as the reader does with a
/// read that carries many pipelined replies).
fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let bulk32 = format!("$32\r\n{}\r\n", "x".repeat(32));
    let bulk1k = format!("$1024\r\n{}\r\n", "x".repeat(1024));
    let cases: [(&str, &[u8]); 5] = [
        ("ok", b"+OK\r\n"),
        ("int", b":12345\r\n"),
        ("nil", b"$-1\r\n"),
        ("bulk32", bulk32.as_bytes()),
        ("bulk1k", bulk1k.as_bytes()),
    ];
    const N: usize = 64;
    for (name, reply) in cases {
        let wire: Vec<u8> = reply.repeat(N);
        g.throughput(Throughput::Elements(N as u64));
        g.bench_function(name, |b| {
            let mut dec = Decoder::new(16 << 20);
            let mut buf = BytesMut::with_capacity(wire.len());
            b.iter(|| {
                buf.extend_from_slice(&wire);
                for _ in 0..N {
                    match dec.decode(&mut buf) {
                        Ok(Some(r)) => {
                            black_box(r.ok());
                        }
                        other => panic!("decode: {other:?}"),
                    }
                }
            });
        });
    }
    let array = b"*3\r\n:1\r\n:2\r\n$3\r\nabc\r\n";
    g.throughput(Throughput::Elements(1));
    g.bench_function("array3", |b| {
        let mut dec = Decoder::new(16 << 20);
        let mut buf = BytesMut::with_capacity(64);
        b.iter(|| {
            buf.extend_from_slice(array);
            black_box(dec.decode(&mut buf).ok());
        });
    });
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
