//! Fuzzing the HTTP server (`src/http.rs`: hyper over glommio) from the outside: random and
//! mutated raw requests over TCP against the running binary, which must stay up, keep
//! /health reachable, and answer every request with a non-5xx status or close the connection
//! (never hang, never panic, never leak connections).
//!
//! Inputs (proptest, `PROPTEST_CASES=N` runs N cases of every property instead of its own
//! count):
//! - structured requests built from parts that go wrong in real life: methods, targets
//!   (non-UTF-8, `%`-garbage, absolute form, 20 KiB paths), versions, header sets (huge,
//!   many, duplicated or conflicting Content-Length / Transfer-Encoding, obs-fold, NUL, no
//!   colon, bare LF), bodies (short, long, chunked, broken chunked, huge declared sizes);
//! - the seed corpus (`tests/corpus/http/*.http`) and built-in valid requests, mutated (byte
//!   flips, insertions, deletions, duplicated spans, truncation);
//! - random bytes;
//! - pipelines of several requests in one write; valid ones must each get their response;
//! - every input is delivered whole or in random chunks with short pauses, then the client
//!   half-closes its side, so a truncated request ends at once instead of at the idle timeout.
//!
//! Plus fixed scenarios: the corpus replayed with per-file expectations (`ok-`: every response
//! 2xx; `4xx-`: a 4xx or a close, never 2xx; `any-`: no 5xx, no hang), and slowloris (hundreds
//! of connections trickling headers or bodies) during which /health must stay reachable.
//! Each property prints its case count (`--nocapture`); the findings are in the report.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{wait_until, App, PgServer, RedisServer};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Longer than the server's idle timeout (10 s): a connection still open after this, with
/// the client's side closed, is a hang.
const HANG: Duration = Duration::from_secs(15);

/// The app under fuzz with its servers (light load, no admin token: the admin endpoint
/// refuses everything, so no input can switch Redis).
struct Target {
    app: App,
    _redis: RedisServer,
    _pg: PgServer,
}

impl Target {
    fn start() -> Target {
        let redis = RedisServer::start();
        let pg = PgServer::start();
        let args = common::app_args(
            &redis.url(),
            &pg.url(),
            &[
                "--events-per-second",
                "20",
                "--queries-per-second",
                "20",
                "--organizations",
                "10",
                "--redis-pool-size",
                "8",
            ],
            &[],
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let app = App::spawn_healthy(&args, &[], Duration::from_secs(60));
        // Every pool connection up, so the file descriptor count is the steady one.
        let connected = || {
            let (_, m) = app.get("/metrics");
            let up =
                common::metric_sum(&m, "analytics_redis_connections", &[("state", "connected")]);
            up.unwrap_or(0.0) >= 8.0
        };
        assert!(
            wait_until(Duration::from_secs(30), connected),
            "the Redis pool never filled"
        );
        Target {
            app,
            _redis: redis,
            _pg: pg,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.app.http
    }

    /// Alive, no panic in the log, /health 200 within a few seconds.
    fn assert_serving(&self, after: &str) {
        let log = self.app.log();
        assert!(self.app.alive(), "the app exited after {after}:\n{log}");
        assert!(
            !log.contains("panicked"),
            "the app panicked after {after}:\n{log}"
        );
        assert!(
            wait_until(Duration::from_secs(5), || self.app.get("/health").0 == 200),
            "/health not 200 after {after}: {:?}",
            self.app.get("/health")
        );
    }

    /// Open file descriptors of the app (sockets included).
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.app.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.app.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

// ---------------------------------------------------------------------------------------------
// One exchange on a fresh connection
// ---------------------------------------------------------------------------------------------

/// What the server did with one input.
#[derive(Debug)]
struct Exchange {
    /// Status of every complete response, in order.
    statuses: Vec<u16>,
    /// The server closed (EOF or reset) before HANG.
    closed: bool,
    /// Bytes that did not parse as responses (a garbled or partial response).
    trailing: usize,
    took: Duration,
}

/// Sends CHUNKS (with PAUSE between them) on a new connection, half-closes, and reads every
/// response until the server closes or HANG passes.
fn exchange(addr: SocketAddr, chunks: &[&[u8]], pause: Duration) -> Exchange {
    let started = Instant::now();
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => panic!("cannot connect to the app at {addr}: {e}"),
    };
    s.set_nodelay(true).ok();
    s.set_write_timeout(Some(Duration::from_secs(10))).ok();
    for (i, c) in chunks.iter().enumerate() {
        if i > 0 && !pause.is_zero() {
            std::thread::sleep(pause);
        }
        // The server may close early (431, 413, garbage): later writes fail, that is fine.
        if s.write_all(c).is_err() {
            break;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut closed = false;
    while started.elapsed() < HANG {
        s.set_read_timeout(Some(
            HANG.saturating_sub(started.elapsed())
                .max(Duration::from_millis(10)),
        ))
        .ok();
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(_) => {
                closed = true; // reset
                break;
            }
        }
    }
    let (statuses, trailing) = parse_responses(&got);
    Exchange {
        statuses,
        closed,
        trailing,
        took: started.elapsed(),
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Splits a byte stream into HTTP/1.1 responses: their statuses, and how many bytes are left
/// that do not form a complete response.
fn parse_responses(mut data: &[u8]) -> (Vec<u16>, usize) {
    let mut statuses = Vec::new();
    loop {
        if data.is_empty() {
            return (statuses, 0);
        }
        let Some(end) = find(data, b"\r\n\r\n") else {
            return (statuses, data.len());
        };
        let head = String::from_utf8_lossy(&data[..end]).to_string();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| {
                l.strip_prefix("HTTP/1.1 ")
                    .or_else(|| l.strip_prefix("HTTP/1.0 "))
            })
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse::<u16>().ok());
        let Some(status) = status else {
            return (statuses, data.len());
        };
        let mut length = 0usize;
        let mut chunked = false;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                    chunked = true;
                }
            }
        }
        let body = &data[end + 4..];
        // A response to HEAD announces a length but has no body: nothing after the head, or
        // the next response right after it.
        if !chunked && length > 0 && (body.is_empty() || body.starts_with(b"HTTP/1.")) {
            statuses.push(status);
            data = body;
            continue;
        }
        let used = if chunked {
            match chunked_len(body) {
                Some(n) => n,
                None => return (statuses, data.len()),
            }
        } else if body.len() >= length {
            length
        } else {
            return (statuses, data.len());
        };
        statuses.push(status);
        data = &body[used..];
    }
}

/// Bytes taken by a complete chunked body at the start of DATA.
fn chunked_len(data: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let line = find(&data[pos..], b"\r\n")?;
        let text = String::from_utf8_lossy(&data[pos..pos + line]);
        let size = usize::from_str_radix(text.split(';').next()?.trim(), 16).ok()?;
        pos += line + 2;
        if size == 0 {
            let end = find(&data[pos..], b"\r\n")?;
            return Some(pos + end + 2);
        }
        pos += size + 2;
        if pos > data.len() {
            return None;
        }
    }
}

/// The rule every input obeys: no hang, no 5xx, responses well formed.
fn check_exchange(x: &Exchange, input: &[u8]) -> Result<(), TestCaseError> {
    let shown = || String::from_utf8_lossy(&input[..input.len().min(300)]).to_string();
    prop_assert!(
        x.closed,
        "the server neither answered nor closed within {:?} (client side closed): {:?}",
        HANG,
        shown()
    );
    // 1xx (100 Continue) is an interim answer; 2xx-4xx are fine; 5xx never is.
    for s in &x.statuses {
        prop_assert!(
            (100..500).contains(s),
            "status {} for {:?} (all: {:?})",
            s,
            shown(),
            x.statuses
        );
    }
    prop_assert_eq!(x.trailing, 0, "a garbled response to {:?}", shown());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// Valid requests the app serves (the mutation seeds besides the corpus).
fn valid_requests() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = ["/health", "/metrics", "/report", "/api/status", "/"]
        .iter()
        .map(|p| format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes())
        .collect();
    v.push(
        b"POST /admin/redis-target HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 33\r\n\r\n{\"url\": \"redis://127.0.0.1:6390\"}"
            .to_vec(),
    );
    v.push(
        b"POST /admin/redis-target HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\n{\"url\r\n4\r\n\": \"\r\n0\r\n\r\n"
            .to_vec(),
    );
    v
}

/// The seed corpus: `tests/corpus/http/*.http`, sorted by name.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/http");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "http"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(e.path()).unwrap_or_else(|err| panic!("{name}: {err}"));
            (name, bytes)
        })
        .collect();
    files.sort();
    assert!(files.len() >= 20, "http corpus has {} files", files.len());
    files
}

fn seeds() -> Vec<Vec<u8>> {
    let mut s = valid_requests();
    s.extend(corpus().into_iter().map(|(_, b)| b));
    s
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Flip(a, b)),
        (
            any::<usize>(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 1..16),
                Just(b"\r\n".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"\r".to_vec()),
                Just(b"\0".to_vec()),
                Just(b":".to_vec()),
                Just(b" ".to_vec()),
                Just(b"\r\nContent-Length: 5\r\n".to_vec()),
                Just(b"\r\nTransfer-Encoding: chunked\r\n".to_vec()),
                Just(b"\r\n\r\n".to_vec()),
            ]
        )
            .prop_map(|(a, b)| Mutation::Insert(a, b)),
        (any::<usize>(), 1usize..32).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), 1usize..64).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(mut v: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let at = |a: usize, len: usize| if len == 0 { 0 } else { a % (len + 1) };
        match m {
            Mutation::Flip(a, b) if !v.is_empty() => {
                let i = a % v.len();
                v[i] = *b;
            }
            Mutation::Flip(..) => {}
            Mutation::Insert(a, b) => {
                let i = at(*a, v.len());
                v.splice(i..i, b.iter().copied());
            }
            Mutation::Delete(a, n) => {
                let i = at(*a, v.len());
                let j = (i + n).min(v.len());
                v.drain(i..j);
            }
            Mutation::Duplicate(a, n) => {
                let i = at(*a, v.len());
                let j = (i + n).min(v.len());
                let span = v[i..j].to_vec();
                v.splice(j..j, span);
            }
            Mutation::Truncate(a) => {
                let i = at(*a, v.len());
                v.truncate(i);
            }
        }
    }
    v
}

fn bytes_no_crlf(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
        0..max,
    )
}

fn method() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop_oneof![
            Just("GET"), Just("POST"), Just("HEAD"), Just("PUT"), Just("DELETE"),
            Just("OPTIONS"), Just("PATCH"), Just("TRACE"), Just("CONNECT"), Just("PRI"),
            Just("get"), Just("G\u{e9}T"),
        ]
        .prop_map(|m| m.as_bytes().to_vec()),
        1 => "[A-Z]{1,20}".prop_map(String::into_bytes),
        1 => bytes_no_crlf(12),
    ]
}

fn target() -> impl Strategy<Value = Vec<u8>> {
    let base = prop_oneof![
        Just("/health"),
        Just("/metrics"),
        Just("/report"),
        Just("/api/status"),
        Just("/"),
        Just("/admin/redis-target"),
        Just("*"),
        Just("http://127.0.0.1/health"),
        Just("//health"),
        Just("/health/../metrics"),
        Just(""),
    ];
    let suffix = prop_oneof![
        4 => Just(Vec::new()),
        1 => Just(b"?x=1&y=%zz%ff%".to_vec()),
        1 => Just(b"%00%0d%0a".to_vec()),
        1 => bytes_no_crlf(40),
        1 => (1usize..20_000).prop_map(|n| vec![b'a'; n]),
    ];
    (base, suffix).prop_map(|(b, s)| [b.as_bytes(), &s].concat())
}

fn version() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => Just(b" HTTP/1.1".to_vec()),
        1 => Just(b" HTTP/1.0".to_vec()),
        1 => Just(b" HTTP/2.0".to_vec()),
        1 => Just(b" HTTP/9.9".to_vec()),
        1 => Just(b" HTTP/1.1 extra".to_vec()),
        1 => Just(Vec::new()),
        1 => bytes_no_crlf(12).prop_map(|b| [b" ".to_vec(), b].concat()),
    ]
}

fn header() -> impl Strategy<Value = Vec<u8>> {
    let h = |s: &'static str| Just(s.as_bytes().to_vec());
    prop_oneof![
        h("Host: x"),
        h("Connection: close"),
        h("Connection: keep-alive"),
        h("Connection: upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__"),
        h("Upgrade: websocket"),
        h("Expect: 100-continue"),
        h("Content-Type: application/json"),
        h("Authorization: Bearer nope"),
        h("Transfer-Encoding: chunked"),
        h("Transfer-Encoding: gzip, chunked"),
        h("Transfer-Encoding: chunked, identity"),
        h("Transfer-Encoding: xchunked"),
        h("Transfer-Encoding:\tchunked"),
        h("Content-Length: 0"),
        h("Content-Length: 5"),
        h("Content-Length: -1"),
        h("Content-Length: 1e3"),
        h("Content-Length: 18446744073709551616"),
        h("Content-Length: 99999999999999999999999"),
        h("Content-Length: 5, 6"),
        h("Content-Length: 5\r\nContent-Length: 6"),
        h("Content-Length:  +5"),
        h(" folded: continuation"),
        h("\tobs-fold"),
        h("NoColonHere"),
        h(": empty name"),
        h("X-Null: a\0b"),
        h("Host: x\r\nHost: y"),
        (1usize..20_000).prop_map(|n| format!("X-Big: {}", "b".repeat(n)).into_bytes()),
        ("[A-Za-z-]{1,30}", bytes_no_crlf(64))
            .prop_map(|(n, v)| [n.as_bytes(), b": ", &v].concat()),
        bytes_no_crlf(64),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => Just(Vec::new()),
        2 => proptest::collection::vec(any::<u8>(), 1..256),
        1 => Just(b"{\"url\": \"redis://127.0.0.1:1\"}".to_vec()),
        1 => Just(b"5\r\nhello\r\n0\r\n\r\n".to_vec()),
        1 => Just(b"zz\r\nhello\r\n0\r\n\r\n".to_vec()),
        1 => Just(b"5\r\nhelloXX0\r\n\r\n".to_vec()),
        1 => Just(b"ffffffffffffffffff\r\n".to_vec()),
        1 => Just(b"7fffffffffffffff\r\nabc".to_vec()),
        1 => Just(b"5;ext=\"\xff\"\r\nhello\r\n0\r\nTrailer: x\r\n\r\n".to_vec()),
        1 => Just(b"-5\r\nhello\r\n0\r\n\r\n".to_vec()),
        1 => Just(b"5\r\nhello\r\n".to_vec()),
        1 => (1usize..200_000).prop_map(|n| vec![b'{'; n]),
    ]
}

/// A request assembled from parts, with CRLF, bare LF or bare CR line ends.
fn structured() -> impl Strategy<Value = Vec<u8>> {
    (
        method(),
        target(),
        version(),
        proptest::collection::vec(header(), 0..12),
        prop_oneof![8 => Just(&b"\r\n"[..]), 1 => Just(&b"\n"[..]), 1 => Just(&b"\r"[..])],
        body(),
        0usize..300,
    )
        .prop_map(|(m, t, v, headers, eol, body, many)| {
            let mut r = [m, b" ".to_vec(), t, v].concat();
            r.extend_from_slice(eol);
            for h in headers {
                r.extend_from_slice(&h);
                r.extend_from_slice(eol);
            }
            // Sometimes a flood of small headers (over hyper's 100).
            if many > 250 {
                for i in 0..many {
                    r.extend_from_slice(format!("X-H{i}: v").as_bytes());
                    r.extend_from_slice(eol);
                }
            }
            r.extend_from_slice(eol);
            r.extend_from_slice(&body);
            r
        })
}

fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    (0..n, proptest::collection::vec(mutation(), 1..5))
        .prop_map(move |(i, muts)| apply(seeds[i].clone(), &muts))
}

/// How an input reaches the server: whole, or cut into pieces sent with a short pause.
fn delivery() -> impl Strategy<Value = (Vec<usize>, u64)> {
    prop_oneof![
        3 => Just((Vec::new(), 0u64)),
        1 => (proptest::collection::vec(any::<usize>(), 1..6), 0u64..5),
    ]
}

fn split<'a>(input: &'a [u8], raw_cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = raw_cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut from = 0;
    for c in cuts.into_iter().chain(std::iter::once(input.len())) {
        out.push(&input[from..c.max(from)]);
        from = c.max(from);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Running properties against the app
// ---------------------------------------------------------------------------------------------

/// Runs STRATEGY through TEST for CASES cases (or `PROPTEST_CASES`), checking the app between
/// cases; prints the count. Failures are not shrunk (each case costs a connection or more):
/// the failing input is printed as it is.
fn check<S: Strategy>(
    t: &Target,
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let ran = AtomicU64::new(0);
    let started = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    });
    let result = runner.run(&strategy, |v| {
        let n = ran.fetch_add(1, Ordering::Relaxed) + 1;
        test(v)?;
        if n.is_multiple_of(100) {
            t.assert_serving(&format!("{n} cases of {name}"));
        }
        Ok(())
    });
    eprintln!(
        "fuzz_http {name}: {} cases in {:.1?}",
        ran.load(Ordering::Relaxed),
        started.elapsed()
    );
    if let Err(e) = result {
        panic!("{name}: {e}\napp log tail:\n{}", tail(&t.app.log(), 40));
    }
    t.assert_serving(&format!("all cases of {name}"));
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn run_one(
    t: &Target,
    input: &[u8],
    cuts: &[usize],
    pause_ms: u64,
) -> Result<Exchange, TestCaseError> {
    let chunks = split(input, cuts);
    let x = exchange(t.addr(), &chunks, Duration::from_millis(pause_ms));
    check_exchange(&x, input)?;
    prop_assert!(
        t.app.alive(),
        "the app died on {:?}",
        String::from_utf8_lossy(&input[..input.len().min(300)])
    );
    Ok(x)
}

#[test]
fn should_survive_random_and_mutated_requests() {
    let t = Target::start();
    let fds_before = t.fds();
    let rss_before = t.rss_mib();
    let worst = std::cell::Cell::new(Duration::ZERO);
    let note = |x: &Exchange| worst.set(worst.get().max(x.took));

    check(
        &t,
        "structured requests",
        2000,
        (structured(), delivery()),
        |(r, (cuts, pause))| {
            note(&run_one(&t, &r, &cuts, pause)?);
            Ok(())
        },
    );
    check(
        &t,
        "mutated seeds",
        2000,
        (mutated(seeds()), delivery()),
        |(r, (cuts, pause))| {
            note(&run_one(&t, &r, &cuts, pause)?);
            Ok(())
        },
    );
    check(
        &t,
        "random bytes",
        500,
        (proptest::collection::vec(any::<u8>(), 0..4096), delivery()),
        |(r, (cuts, pause))| {
            note(&run_one(&t, &r, &cuts, pause)?);
            Ok(())
        },
    );
    // Pipelines: valid requests only must each get a 2xx, in order; mixed ones obey the
    // general rule (a bad one may end the connection; nothing after it is owed).
    let valid = valid_requests()[..5].to_vec();
    check(
        &t,
        "pipelined valid requests",
        300,
        proptest::collection::vec(0..valid.len(), 1..12),
        |picks| {
            let input: Vec<u8> = picks.iter().flat_map(|i| valid[*i].clone()).collect();
            let x = run_one(&t, &input, &[], 0)?;
            note(&x);
            prop_assert_eq!(x.statuses.len(), picks.len(), "{:?}", x);
            prop_assert!(x.statuses.iter().all(|s| *s == 200), "{:?}", x.statuses);
            Ok(())
        },
    );
    check(
        &t,
        "pipelined mixed requests",
        500,
        (
            proptest::collection::vec(prop_oneof![structured(), mutated(seeds())], 2..6),
            delivery(),
        ),
        |(reqs, (cuts, pause))| {
            note(&run_one(&t, &reqs.concat(), &cuts, pause)?);
            Ok(())
        },
    );

    // Nothing leaks: connections are closed (fds back near the start), memory is flat.
    assert!(
        wait_until(Duration::from_secs(15), || t.fds() <= fds_before + 8),
        "file descriptors: {fds_before} before, {} after the fuzz",
        t.fds()
    );
    let rss_after = t.rss_mib();
    eprintln!(
        "fuzz_http: slowest exchange {:?}; fds {fds_before} -> {}; RSS {rss_before:.1} -> {rss_after:.1} MiB",
        worst.get(),
        t.fds()
    );
    assert!(
        rss_after < rss_before + 64.0,
        "RSS grew from {rss_before:.1} to {rss_after:.1} MiB"
    );
    t.assert_serving("the fuzz");
}

/// Expectation of a corpus file, from its name.
fn expectation(name: &str) -> &'static str {
    ["ok", "4xx", "any"]
        .into_iter()
        .find(|p| name.starts_with(&format!("{p}-")))
        .unwrap_or_else(|| panic!("http corpus file {name}: unknown prefix"))
}

#[test]
fn should_answer_the_http_corpus_as_expected() {
    let t = Target::start();
    let files = corpus();
    for (name, input) in &files {
        // Whole, then split in pieces of 7 bytes (at most 64 pieces) with a 1 ms pause.
        let step = 7.max(input.len() / 64);
        let cuts: Vec<usize> = (step..input.len()).step_by(step).collect();
        for (how, cuts, pause) in [("whole", vec![], 0), ("split", cuts, 1)] {
            let x = exchange(t.addr(), &split(input, &cuts), Duration::from_millis(pause));
            let fine = match expectation(name) {
                "ok" => !x.statuses.is_empty() && x.statuses.iter().all(|s| (200..300).contains(s)),
                "4xx" => x.statuses.first().is_none_or(|s| (400..500).contains(s)),
                _ => true,
            };
            eprintln!(
                "{name} ({how}): {:?} closed {} in {:.1?}",
                x.statuses, x.closed, x.took
            );
            assert!(fine, "{name} ({how}): {x:?}");
            if let Err(e) = check_exchange(&x, input) {
                panic!("{name} ({how}): {e}");
            }
        }
        assert!(t.app.alive(), "{name} killed the app:\n{}", t.app.log());
    }
    t.assert_serving("the corpus");
    eprintln!(
        "fuzz_http corpus: {} files, each whole and split",
        files.len()
    );
}

/// Slowloris: hundreds of connections trickling a request head, or a request body, a byte at
/// a time, each within the idle timeout, so activity alone never closes them. /health must
/// stay reachable for probes and scrapes, which means the server must shed them.
#[test]
fn should_keep_health_reachable_under_slowloris() {
    let t = Target::start();
    let addr = t.addr();
    const CONNS: usize = 300;
    const RUN: Duration = Duration::from_secs(40);
    let trickler = std::thread::spawn(move || {
        let mut conns: Vec<(TcpStream, Vec<u8>, usize)> = (0..CONNS)
            .filter_map(|i| {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
                s.set_nodelay(true).ok();
                s.set_write_timeout(Some(Duration::from_millis(200))).ok();
                let req = if i % 2 == 0 {
                    // A head that never ends: one more header line, byte by byte.
                    let mut r = b"GET /health HTTP/1.1\r\nHost: x\r\n".to_vec();
                    for k in 0..10_000 {
                        r.extend_from_slice(format!("X-{k}: v\r\n").as_bytes());
                    }
                    r
                } else {
                    // A complete head, then a 60000-byte body byte by byte.
                    let mut r = b"POST /admin/redis-target HTTP/1.1\r\nHost: x\r\n\
                                  Content-Length: 60000\r\n\r\n"
                        .to_vec();
                    r.extend(std::iter::repeat_n(b'x', 60_000));
                    r
                };
                Some((s, req, 0))
            })
            .collect();
        let started = Instant::now();
        let mut closed_by_server = 0;
        while started.elapsed() < RUN && !conns.is_empty() {
            conns.retain_mut(|(s, req, sent)| {
                // Heads go out fast up to the last line, then a byte every round.
                let n = if *sent == 0 { 20 } else { 1 };
                match s.write(&req[*sent..(*sent + n).min(req.len())]) {
                    Ok(k) if k > 0 => {
                        *sent += k;
                        true
                    }
                    _ => {
                        closed_by_server += 1;
                        false
                    }
                }
            });
            std::thread::sleep(Duration::from_secs(2));
        }
        (closed_by_server, conns.len())
    });
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let mut first_ok = None;
    let mut failures_after_ok = 0;
    let mut probes = 0;
    while started.elapsed() < RUN - Duration::from_secs(4) {
        probes += 1;
        let ok = t.app.get("/health").0 == 200;
        match (ok, first_ok) {
            (true, None) => first_ok = Some(started.elapsed()),
            (false, Some(_)) => failures_after_ok += 1,
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (closed, still_open) = trickler.join().expect("trickler thread");
    eprintln!(
        "slowloris: {CONNS} trickling connections; /health first 200 after {first_ok:?}, \
         {failures_after_ok} of {probes} probes failed after that; the server closed {closed}, \
         {still_open} still open after {RUN:?}"
    );
    assert!(t.app.alive(), "{}", t.app.log());
    let first_ok = first_ok.expect("/health never answered 200 while slow clients trickled");
    assert!(
        first_ok < Duration::from_secs(20),
        "/health unreachable for {first_ok:?} under slowloris"
    );
    assert!(
        failures_after_ok <= 2,
        "/health failed {failures_after_ok} times under slowloris"
    );
    t.assert_serving("slowloris");
}
