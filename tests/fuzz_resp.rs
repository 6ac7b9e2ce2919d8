//! Bad input for our RESP reply decoder (`src/resp/frame.rs`): property tests (proptest),
//! a committed corpus of nasty inputs (`tests/corpus/resp/*.bin`), and the same corpus fed to
//! the real client (`Connection`) by a fake server.
//!
//! The decoder (`Decoder`) is crate-private, and tests/ may not change src/, so this file
//! compiles `src/resp/frame.rs` itself (`#[path]`) against a stand-in for the one item it
//! borrows from the crate, `RedisError` (the variants it builds, `from_server` and `kind`).
//! The scanning and decoding code under test is the very source the app is built from.
//! (frame.rs's own unit tests are compiled in too and run here a second time.)
//!
//! Properties:
//! - nothing panics, whatever the bytes and however they are split;
//! - a valid stream decodes to exactly the frames it encodes, split at any points;
//! - an incomplete prefix of a valid stream is never an error (only "need more bytes");
//! - a declared length over the cap is `reply_too_large` before anything is allocated;
//! - negative lengths other than -1, bad integer lines, unknown type bytes and nesting
//!   deeper than `MAX_DEPTH` are `protocol` errors.
//!
//! Each property prints how many cases it ran (`--nocapture`).

/// Stand-in for `crate::resp` as seen by frame.rs.
mod resp {
    /// The variants frame.rs builds, as in `src/resp/error.rs`.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum RedisError {
        Protocol {
            sent: bool,
            msg: String,
        },
        ReplyTooLarge {
            sent: bool,
            limit: usize,
        },
        /// A server error reply (its text).
        Server(Vec<u8>),
    }

    impl RedisError {
        pub fn from_server(msg: &[u8]) -> RedisError {
            RedisError::Server(msg.to_vec())
        }

        /// The labels of the real type for these variants.
        pub fn kind(&self) -> &'static str {
            match self {
                RedisError::Protocol { .. } => "protocol",
                RedisError::ReplyTooLarge { .. } => "reply_too_large",
                RedisError::Server(_) => "server",
            }
        }
    }
}

#[allow(dead_code)]
#[path = "../src/resp/frame.rs"]
mod frame;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use frame::{Decoder, Reply, MAX_DEPTH};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use resp::RedisError;

type Decoded = Result<Reply, RedisError>;

/// Decodes everything complete in BUF with D: the replies, and the fatal error if one came.
fn drain(d: &mut Decoder, buf: &mut BytesMut, out: &mut Vec<Decoded>) -> Result<(), RedisError> {
    // Bounded: every Ok(Some) consumes at least 3 bytes.
    for _ in 0..=buf.len() {
        match d.decode(buf)? {
            Some(r) => out.push(r),
            None => return Ok(()),
        }
    }
    panic!("decode returned replies without consuming input");
}

/// Feeds INPUT in the chunks given by CUTS (sorted offsets) to one decoder with CAP:
/// (replies, fatal error, bytes left undecoded).
fn feed(input: &[u8], cuts: &[usize], cap: usize) -> (Vec<Decoded>, Option<RedisError>, usize) {
    let mut d = Decoder::new(cap);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&input.len())) {
        let to = to.clamp(from, input.len());
        buf.extend_from_slice(&input[from..to]);
        from = to;
        if let Err(e) = drain(&mut d, &mut buf, &mut out) {
            return (out, Some(e), buf.len());
        }
    }
    (out, None, buf.len())
}

// ---------------------------------------------------------------------------------------------
// A model of valid replies: encoded bytes and the expected decode
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Model {
    Simple(Vec<u8>),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    NilBulk,
    NilArray,
    Array(Vec<Model>),
}

impl Model {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Model::Simple(s) => {
                out.push(b'+');
                out.extend_from_slice(s);
                out.extend_from_slice(b"\r\n");
            }
            Model::Error(s) => {
                out.push(b'-');
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Model::Int(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
            Model::Bulk(b) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Model::NilBulk => out.extend_from_slice(b"$-1\r\n"),
            Model::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Model::Array(v) => {
                out.extend_from_slice(format!("*{}\r\n", v.len()).as_bytes());
                for m in v {
                    m.encode(out);
                }
            }
        }
    }

    /// The reply inside an array.
    fn reply(&self) -> Reply {
        match self {
            Model::Simple(s) => Reply::Simple(Bytes::copy_from_slice(s)),
            Model::Error(s) => Reply::Error(Bytes::copy_from_slice(s.as_bytes())),
            Model::Int(i) => Reply::Int(*i),
            Model::Bulk(b) => Reply::Bulk(Bytes::copy_from_slice(b)),
            Model::NilBulk | Model::NilArray => Reply::Nil,
            Model::Array(v) => Reply::Array(v.iter().map(Model::reply).collect()),
        }
    }

    /// The decode at top level (an error reply is the caller's `Err(Server)`).
    fn top(&self) -> Decoded {
        match self {
            Model::Error(s) => Err(RedisError::from_server(s.as_bytes())),
            m => Ok(m.reply()),
        }
    }
}

fn encode_all(frames: &[Model]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode(&mut out);
    }
    out
}

/// Valid replies: simple strings with any bytes but CR and LF (non-UTF-8 included), error
/// lines of printable ASCII, any i64, binary bulk strings (CR and LF included), nils and
/// nested arrays.
fn model() -> impl Strategy<Value = Model> {
    let leaf = prop_oneof![
        proptest::collection::vec(
            any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
            0..24
        )
        .prop_map(Model::Simple),
        "[A-Z]{1,10}( [ -~]{0,20})?".prop_map(Model::Error),
        any::<i64>().prop_map(Model::Int),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Model::Bulk),
        Just(Model::NilBulk),
        Just(Model::NilArray),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        proptest::collection::vec(inner, 0..6).prop_map(Model::Array)
    })
}

fn stream() -> impl Strategy<Value = Vec<Model>> {
    proptest::collection::vec(model(), 1..8)
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// Runs STRATEGY through TEST for CASES cases and prints the count.
fn check<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let ran = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |v| {
        ran.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    eprintln!(
        "fuzz_resp {name}: {} cases run (including shrinking)",
        ran.load(Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

/// Sorted cut points within LEN from raw random offsets.
fn cuts_for(raw: &[usize], len: usize) -> Vec<usize> {
    let mut c: Vec<usize> = raw.iter().map(|r| r % (len + 1)).collect();
    c.sort_unstable();
    c
}

#[test]
fn should_never_panic_on_random_bytes() {
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        // Mostly RESP syntax: type bytes, digits, signs, CR and LF (each random byte picks
        // from this alphabet; a quarter of them stay arbitrary).
        proptest::collection::vec(any::<u8>(), 0..512).prop_map(|v| {
            const ALPHABET: &[u8] = b"+-:$**\r\n\r\n\r\n0123456789-1";
            v.into_iter()
                .map(|b| {
                    if b < 192 {
                        ALPHABET[b as usize % ALPHABET.len()]
                    } else {
                        b
                    }
                })
                .collect::<Vec<u8>>()
        }),
    ];
    check(
        "random bytes",
        4000,
        (
            bytes,
            proptest::collection::vec(any::<usize>(), 0..6),
            1usize..2048,
        ),
        |(input, raw_cuts, cap)| {
            let cuts = cuts_for(&raw_cuts, input.len());
            let (_, err, _) = feed(&input, &cuts, cap);
            if let Some(e) = err {
                prop_assert!(matches!(e.kind(), "protocol" | "reply_too_large"), "{e:?}");
            }
            Ok(())
        },
    );
}

#[test]
fn should_decode_valid_streams_split_anywhere() {
    check(
        "valid stream split at random points",
        3000,
        (stream(), proptest::collection::vec(any::<usize>(), 0..12)),
        |(frames, raw_cuts)| {
            let input = encode_all(&frames);
            let want: Vec<Decoded> = frames.iter().map(Model::top).collect();
            let (whole, err, left) = feed(&input, &[], 1 << 20);
            prop_assert_eq!(err, None);
            prop_assert_eq!(left, 0);
            prop_assert_eq!(&whole, &want);
            let cuts = cuts_for(&raw_cuts, input.len());
            let (split, err, left) = feed(&input, &cuts, 1 << 20);
            prop_assert_eq!(err, None, "cuts {:?}", cuts);
            prop_assert_eq!(left, 0);
            prop_assert_eq!(&split, &want, "cuts {:?}", cuts);
            Ok(())
        },
    );
}

#[test]
fn should_never_fail_on_a_truncated_valid_stream() {
    // Every cut point of every generated stream: the prefix alone decodes the complete frames
    // and asks for more (no error), and the rest completes it to the same frames.
    let points = AtomicU64::new(0);
    check(
        "valid stream truncated at every point",
        400,
        stream(),
        |frames| {
            let input = encode_all(&frames);
            let want: Vec<Decoded> = frames.iter().map(Model::top).collect();
            for cut in 0..=input.len() {
                points.fetch_add(1, Ordering::Relaxed);
                let mut d = Decoder::new(input.len().max(1));
                let mut buf = BytesMut::from(&input[..cut]);
                let mut got = Vec::new();
                let r = drain(&mut d, &mut buf, &mut got);
                prop_assert!(r.is_ok(), "prefix of {} bytes: {:?}", cut, r);
                prop_assert!(got.len() <= want.len());
                prop_assert_eq!(&got[..], &want[..got.len()]);
                buf.extend_from_slice(&input[cut..]);
                let r = drain(&mut d, &mut buf, &mut got);
                prop_assert!(r.is_ok(), "rest after {} bytes: {:?}", cut, r);
                prop_assert_eq!(&got, &want);
            }
            Ok(())
        },
    );
    eprintln!(
        "fuzz_resp truncation: {} prefixes checked",
        points.load(Ordering::Relaxed)
    );
}

#[test]
fn should_reject_declared_sizes_over_the_cap() {
    check(
        "declared length over the cap",
        3000,
        (
            1usize..1_000_000,
            any::<u64>(),
            prop_oneof![Just(b'$'), Just(b'*')],
            0usize..3,
        ),
        |(cap, extra, kind, depth)| {
            // Declared length in (cap, i64::MAX], optionally inside arrays.
            let span = (i64::MAX as u64) - cap as u64;
            let n = cap as u64 + 1 + extra % span;
            let mut input = b"*1\r\n".repeat(depth);
            input.extend_from_slice(format!("{}{n}\r\n", kind as char).as_bytes());
            let (got, err, _) = feed(&input, &[], cap);
            prop_assert!(got.is_empty());
            prop_assert_eq!(
                err.map(|e| e.kind()),
                Some("reply_too_large"),
                "{:?}",
                input
            );
            Ok(())
        },
    );
    for input in [
        &b"$999999999999\r\n"[..],
        b"*99999999\r\n",
        b"$9223372036854775807\r\n",
        b"*9223372036854775807\r\n",
    ] {
        let (_, err, _) = feed(input, &[], 16 << 20);
        assert_eq!(err.map(|e| e.kind()), Some("reply_too_large"), "{input:?}");
    }
}

#[test]
fn should_reject_negative_lengths_other_than_minus_one() {
    check(
        "negative lengths",
        2000,
        (i64::MIN..-1i64, prop_oneof![Just(b'$'), Just(b'*')]),
        |(n, kind)| {
            let input = format!("{}{n}\r\n", kind as char);
            let (got, err, _) = feed(input.as_bytes(), &[], 1 << 20);
            prop_assert!(got.is_empty());
            prop_assert_eq!(err.map(|e| e.kind()), Some("protocol"), "{}", input);
            Ok(())
        },
    );
}

#[test]
fn should_reject_bad_integer_lines() {
    check(
        "bad integer lines",
        3000,
        (
            "[-+ 0-9a-fx.]{0,24}".prop_filter("not an integer", |s| s.parse::<i64>().is_err()),
            prop_oneof![Just(b':'), Just(b'$'), Just(b'*')],
        ),
        |(line, kind)| {
            let input = format!("{}{line}\r\n", kind as char);
            let (got, err, _) = feed(input.as_bytes(), &[], 1 << 20);
            prop_assert!(got.is_empty());
            prop_assert_eq!(err.map(|e| e.kind()), Some("protocol"), "{:?}", input);
            Ok(())
        },
    );
    // Overflowing integers, empty lines, non-ASCII digits.
    for input in [
        &b":99999999999999999999\r\n"[..],
        b":-9223372036854775809\r\n",
        b":\r\n",
        b"$\r\n",
        b"*\r\n",
        b":\xd9\xa3\r\n",
        b"$1 \r\nx\r\n",
    ] {
        let (_, err, _) = feed(input, &[], 1 << 20);
        assert_eq!(err.map(|e| e.kind()), Some("protocol"), "{input:?}");
    }
}

#[test]
fn should_bound_nesting_depth() {
    // 100k nested arrays: a protocol error, no stack overflow, nothing allocated per level
    // beyond MAX_DEPTH.
    let mut deep = b"*1\r\n".repeat(100_000);
    deep.extend_from_slice(b":1\r\n");
    let (_, err, _) = feed(&deep, &[], 1 << 30);
    assert_eq!(err.map(|e| e.kind()), Some("protocol"));
    // Split byte-chunk-wise too.
    let cuts: Vec<usize> = (0..deep.len()).step_by(4093).collect();
    let (_, err, _) = feed(&deep, &cuts, 1 << 30);
    assert_eq!(err.map(|e| e.kind()), Some("protocol"));
    check(
        "nesting depth",
        500,
        (1usize..200, 1u32..4),
        |(depth, width)| {
            // DEPTH levels of arrays of WIDTH elements, each a nested array or a :1.
            fn build(out: &mut Vec<u8>, depth: usize, width: u32) {
                if depth == 0 {
                    out.extend_from_slice(b":1\r\n");
                    return;
                }
                out.extend_from_slice(format!("*{width}\r\n").as_bytes());
                build(out, depth - 1, width);
                for _ in 1..width {
                    out.extend_from_slice(b":1\r\n");
                }
            }
            let mut input = Vec::new();
            build(&mut input, depth, width);
            let (got, err, _) = feed(&input, &[], 1 << 20);
            if depth <= MAX_DEPTH {
                prop_assert_eq!(err, None);
                prop_assert_eq!(got.len(), 1);
            } else {
                prop_assert_eq!(err.map(|e| e.kind()), Some("protocol"));
            }
            Ok(())
        },
    );
}

#[test]
fn should_handle_non_utf8_simple_strings_and_errors() {
    check(
        "non-UTF-8 simple strings and errors",
        2000,
        (
            proptest::collection::vec(
                any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
                0..40,
            ),
            any::<bool>(),
        ),
        |(text, nested)| {
            let mut simple = if nested {
                b"*1\r\n+".to_vec()
            } else {
                b"+".to_vec()
            };
            simple.extend_from_slice(&text);
            simple.extend_from_slice(b"\r\n");
            let (got, err, _) = feed(&simple, &[], 1 << 20);
            prop_assert_eq!(err, None);
            let s = Reply::Simple(Bytes::copy_from_slice(&text));
            let want = if nested { Reply::Array(vec![s]) } else { s };
            prop_assert_eq!(got, vec![Ok(want)]);

            // An error reply: decoded as the server's error when it is UTF-8; otherwise
            // the connection is dropped with a protocol error (redis-protocol keeps error
            // text as a str). Either way: no panic, no desync.
            let mut error = if nested {
                b"*1\r\n-".to_vec()
            } else {
                b"-".to_vec()
            };
            error.extend_from_slice(&text);
            error.extend_from_slice(b"\r\n:7\r\n");
            let (got, err, _) = feed(&error, &[], 1 << 20);
            if std::str::from_utf8(&text).is_ok() {
                prop_assert_eq!(err, None);
                prop_assert_eq!(got.len(), 2);
                prop_assert_eq!(&got[1], &Ok(Reply::Int(7)));
            } else {
                prop_assert!(got.is_empty());
                prop_assert_eq!(err.map(|e| e.kind()), Some("protocol"));
            }
            Ok(())
        },
    );
}

#[test]
fn should_agree_with_redis_protocol_on_frame_boundaries() {
    // Mutated valid streams: wherever our scanner calls a frame complete, the library must
    // decode exactly that frame ("frame boundary mismatch" would be a scanner bug).
    check(
        "scanner vs library on mutated streams",
        3000,
        (
            stream(),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ),
        |(frames, mutations)| {
            let mut input = encode_all(&frames);
            for (at, byte) in mutations {
                if !input.is_empty() {
                    let i = at % input.len();
                    input[i] = byte;
                }
            }
            let (_, err, _) = feed(&input, &[], 1 << 20);
            if let Some(RedisError::Protocol { msg, .. }) = &err {
                prop_assert!(
                    msg != "frame boundary mismatch",
                    "scanner and library disagree on {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------------

/// `tests/corpus/resp/*.bin`, sorted. The name says what the decoder must make of the file:
/// `ok-` (decodes completely), `incomplete-` (no error, more bytes needed), `protocol-` or
/// `too_large-` (that fatal error). Decoded with a 1 MiB cap.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/resp");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    assert!(files.len() >= 20, "corpus has {} files", files.len());
    files
}

const CORPUS_CAP: usize = 1 << 20;

fn expectation(name: &str) -> &'static str {
    ["ok", "incomplete", "protocol", "too_large"]
        .into_iter()
        .find(|p| name.starts_with(&format!("{p}-")))
        .unwrap_or_else(|| panic!("corpus file {name}: unknown prefix"))
}

#[test]
fn should_replay_the_corpus() {
    let files = corpus();
    for (name, input) in &files {
        // Whole, byte by byte, and split in the middle: the same verdict.
        let splits: [Vec<usize>; 3] = [vec![], (1..input.len()).collect(), vec![input.len() / 2]];
        for cuts in &splits {
            let (got, err, left) = feed(input, cuts, CORPUS_CAP);
            let verdict = match (&err, left) {
                (Some(e), _) if e.kind() == "reply_too_large" => "too_large",
                (Some(e), _) => e.kind(),
                (None, 0) => "ok",
                (None, _) => "incomplete",
            };
            assert_eq!(
                verdict,
                expectation(name),
                "{name} ({} cuts): got {got:?}, error {err:?}, {left} bytes left",
                cuts.len()
            );
            if verdict == "ok" {
                assert!(!got.is_empty(), "{name}: no reply");
            }
        }
    }
    eprintln!("fuzz_resp corpus: {} files replayed", files.len());
}

/// The corpus through the real client: a fake server answers one PING with each file's
/// bytes. The client must not panic; a valid reply is returned, bad bytes drop the
/// connection with the matching error kind, an incomplete reply times out.
#[test]
fn should_survive_the_corpus_as_a_real_client() {
    use analytics_demo::resp::{Connection, PoolConfig, RedisUrl};
    use std::io::{Read, Write};
    use std::net::TcpListener;

    let files = corpus();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let replies: Vec<Vec<u8>> = files.iter().map(|(_, b)| b.clone()).collect();
    let server = std::thread::spawn(move || {
        for reply in replies {
            let (mut s, _) = listener.accept().unwrap();
            let mut cmd = [0u8; 64];
            let _ = s.read(&mut cmd); // the PING
            let _ = s.write_all(&reply);
            // Hold the connection open past the client's timeout, so "incomplete" shows as
            // a timeout rather than a close.
            s.set_read_timeout(Some(Duration::from_millis(1500))).ok();
            let mut sink = [0u8; 1024];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        }
    });
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let results = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let url = RedisUrl::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
            let cfg = PoolConfig {
                size: 1,
                command_timeout: Duration::from_millis(400),
                connect_timeout: Duration::from_secs(2),
                max_reply_bytes: CORPUS_CAP,
                ..PoolConfig::default()
            };
            let mut out = Vec::new();
            for _ in 0..names.len() {
                let conn = Connection::connect(&url, &cfg).await.expect("connect");
                let r = conn.cmd(&[b"PING"]).await;
                out.push(r.map(|_| ()).map_err(|e| e.kind()));
            }
            out
        })
        .unwrap()
        .join()
        .expect("the client's executor panicked");
    server.join().unwrap();
    for ((name, _), r) in files.iter().zip(&results) {
        let ok = match expectation(name) {
            // A first frame that is an error reply comes back as the server's error.
            "ok" => {
                r.is_ok()
                    || r.is_err_and(|k| {
                        !matches!(k, "protocol" | "reply_too_large" | "timeout" | "closed")
                    })
            }
            "incomplete" => *r == Err("timeout"),
            "protocol" => *r == Err("protocol"),
            "too_large" => *r == Err("reply_too_large"),
            _ => unreachable!(),
        };
        assert!(ok, "{name}: the client returned {r:?}");
    }
    eprintln!("fuzz_resp corpus via Connection: {} files", files.len());
}
