//! Bad input for our RESP2/RESP3 reply decoder (`src/resp/frame.rs`): property tests
//! (proptest), a differential check against redis-protocol's RESP2 and RESP3 decoders, a
//! committed corpus of nasty inputs (`tests/corpus/resp/*.bin`), and the same corpus fed to
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
//! - a valid stream (RESP2, or RESP3 with maps, sets, attributes and push frames) decodes to
//!   exactly the replies it encodes, split at any points, pushes skipped;
//! - redis-protocol's decoders read the same streams to the same values (RESP3: maps and
//!   sets compared unordered, as it keeps them in hash tables) and, on mutated streams,
//!   wherever both accept a frame they agree on where it ends (and, RESP2, on its value);
//! - an incomplete prefix of a valid stream is never an error (only "need more bytes");
//! - a declared length over the cap (strings, arrays, maps, sets, attributes, pushes, at
//!   any depth) is `reply_too_large` before anything is allocated;
//! - negative lengths other than `$-1`/`*-1`, bad integer, boolean, double and big-number
//!   lines, unknown type bytes, nested pushes and nesting deeper than `MAX_DEPTH` are
//!   `protocol` errors.
//!
//! Each property prints how many cases it ran (`--nocapture`). `PROPTEST_CASES=N` runs N
//! cases of every property instead of its own count (a longer run).

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
// A model of valid replies: encoded bytes, the expected decode, and what redis-protocol's
// decoders must make of it
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
    // RESP3
    Null,
    Bool(bool),
    /// The text as sent (it is what the decoder returns).
    Double(String),
    BigNumber(String),
    BulkError(Vec<u8>),
    /// Format (`txt`, `mkd`) and text.
    Verbatim(&'static str, Vec<u8>),
    Map(Vec<(Model, Model)>),
    Set(Vec<Model>),
    /// Attribute pairs, then the value they annotate.
    Attribute(Vec<(Model, Model)>, Box<Model>),
    /// Out of band (top level only): decodes to nothing.
    Push(Vec<Model>),
}

fn header(out: &mut Vec<u8>, kind: char, n: usize) {
    out.extend_from_slice(format!("{kind}{n}\r\n").as_bytes());
}

fn line(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
    out.push(kind);
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
}

fn blob(out: &mut Vec<u8>, kind: char, body: &[u8]) {
    header(out, kind, body.len());
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

impl Model {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Model::Simple(s) => line(out, b'+', s),
            Model::Error(s) => line(out, b'-', s.as_bytes()),
            Model::Int(i) => line(out, b':', i.to_string().as_bytes()),
            Model::Bulk(b) => blob(out, '$', b),
            Model::NilBulk => out.extend_from_slice(b"$-1\r\n"),
            Model::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Model::Array(v) | Model::Set(v) | Model::Push(v) => {
                let kind = match self {
                    Model::Array(_) => '*',
                    Model::Set(_) => '~',
                    _ => '>',
                };
                header(out, kind, v.len());
                for m in v {
                    m.encode(out);
                }
            }
            Model::Null => out.extend_from_slice(b"_\r\n"),
            Model::Bool(b) => line(out, b'#', if *b { b"t" } else { b"f" }),
            Model::Double(t) => line(out, b',', t.as_bytes()),
            Model::BigNumber(t) => line(out, b'(', t.as_bytes()),
            Model::BulkError(b) => blob(out, '!', b),
            Model::Verbatim(f, t) => blob(out, '=', &[f.as_bytes(), b":", t].concat()),
            Model::Map(pairs) | Model::Attribute(pairs, _) => {
                header(
                    out,
                    if matches!(self, Model::Map(_)) {
                        '%'
                    } else {
                        '|'
                    },
                    pairs.len(),
                );
                for (k, v) in pairs {
                    k.encode(out);
                    v.encode(out);
                }
                if let Model::Attribute(_, v) = self {
                    v.encode(out);
                }
            }
        }
    }

    /// What our decoder returns for it inside an aggregate (RESP3 mapped as Redis maps it
    /// for a RESP2 client).
    fn reply(&self) -> Reply {
        let b = |v: &[u8]| Bytes::copy_from_slice(v);
        match self {
            Model::Simple(s) => Reply::Simple(b(s)),
            Model::Error(s) => Reply::Error(b(s.as_bytes())),
            Model::BulkError(s) => Reply::Error(b(s)),
            Model::Int(i) => Reply::Int(*i),
            Model::Bool(t) => Reply::Int(i64::from(*t)),
            Model::Bulk(v) | Model::Verbatim(_, v) => Reply::Bulk(b(v)),
            Model::Double(t) | Model::BigNumber(t) => Reply::Bulk(b(t.as_bytes())),
            Model::NilBulk | Model::NilArray | Model::Null => Reply::Nil,
            Model::Array(v) | Model::Set(v) | Model::Push(v) => {
                Reply::Array(v.iter().map(Model::reply).collect())
            }
            Model::Map(pairs) => Reply::Array(
                pairs
                    .iter()
                    .flat_map(|(k, v)| [k.reply(), v.reply()])
                    .collect(),
            ),
            Model::Attribute(_, v) => v.reply(),
        }
    }

    /// The decode at top level: an error reply is the caller's `Err(Server)`; a push is
    /// no reply at all.
    fn top(&self) -> Option<Decoded> {
        match self {
            Model::Push(_) => None,
            m => Some(match m.reply() {
                Reply::Error(text) => Err(RedisError::from_server(&text)),
                r => Ok(r),
            }),
        }
    }

    /// A canonical text that redis-protocol's RESP3 frame must render to as well (maps and
    /// sets are unordered there, so their entries are sorted; attributes are dropped).
    fn norm(&self) -> String {
        match self {
            Model::Simple(s) => format!("+{s:?}"),
            Model::Error(s) => format!("-{:?}", s.as_bytes()),
            Model::Int(i) => format!(":{i}"),
            Model::Bulk(b) => format!("${b:?}"),
            Model::NilBulk | Model::NilArray | Model::Null => "_".into(),
            Model::Array(v) => format!(
                "*[{}]",
                v.iter().map(Model::norm).collect::<Vec<_>>().join(",")
            ),
            Model::Push(v) => format!(
                ">[{}]",
                v.iter().map(Model::norm).collect::<Vec<_>>().join(",")
            ),
            Model::Set(v) => sorted('~', v.iter().map(Model::norm).collect()),
            Model::Map(pairs) => sorted(
                '%',
                pairs
                    .iter()
                    .map(|(k, v)| format!("{}=>{}", k.norm(), v.norm()))
                    .collect(),
            ),
            Model::Bool(b) => format!("#{b}"),
            Model::Double(t) => format!(",{:?}", t.parse::<f64>().unwrap()),
            Model::BigNumber(t) => format!("({:?}", t.as_bytes()),
            Model::BulkError(b) => format!("!{b:?}"),
            Model::Verbatim(f, t) => format!("={f}:{t:?}"),
            Model::Attribute(_, v) => v.norm(),
        }
    }
}

fn sorted(kind: char, mut items: Vec<String>) -> String {
    items.sort();
    format!("{kind}{{{}}}", items.join(","))
}

/// redis-protocol's RESP3 frame in `Model::norm`'s terms.
fn lib3_norm(f: &redis_protocol::resp3::types::BytesFrame) -> String {
    use redis_protocol::resp3::types::{BytesFrame as F, VerbatimStringFormat};
    match f {
        F::SimpleString { data, .. } => format!("+{:?}", data.to_vec()),
        F::SimpleError { data, .. } => format!("-{:?}", data.as_bytes()),
        F::Number { data, .. } => format!(":{data}"),
        F::BlobString { data, .. } => format!("${:?}", data.to_vec()),
        F::Null => "_".into(),
        F::Array { data, .. } => format!(
            "*[{}]",
            data.iter().map(lib3_norm).collect::<Vec<_>>().join(",")
        ),
        F::Push { data, .. } => format!(
            ">[{}]",
            data.iter().map(lib3_norm).collect::<Vec<_>>().join(",")
        ),
        F::Set { data, .. } => sorted('~', data.iter().map(lib3_norm).collect()),
        F::Map { data, .. } => sorted(
            '%',
            data.iter()
                .map(|(k, v)| format!("{}=>{}", lib3_norm(k), lib3_norm(v)))
                .collect(),
        ),
        F::Boolean { data, .. } => format!("#{data}"),
        F::Double { data, .. } => format!(",{data:?}"),
        F::BigNumber { data, .. } => format!("({:?}", data.to_vec()),
        F::BlobError { data, .. } => format!("!{:?}", data.to_vec()),
        F::VerbatimString { data, format, .. } => {
            let f = match format {
                VerbatimStringFormat::Text => "txt",
                VerbatimStringFormat::Markdown => "mkd",
            };
            format!("={f}:{:?}", data.to_vec())
        }
        other => format!("unexpected {other:?}"),
    }
}

/// redis-protocol's RESP2 frame as our decoder's reply at top level.
fn lib2_top(f: redis_protocol::resp2::types::BytesFrame) -> Decoded {
    fn reply(f: redis_protocol::resp2::types::BytesFrame) -> Reply {
        use redis_protocol::resp2::types::BytesFrame as F;
        match f {
            F::SimpleString(b) => Reply::Simple(b),
            F::Error(s) => Reply::Error(Bytes::copy_from_slice(s.as_bytes())),
            F::Integer(i) => Reply::Int(i),
            F::BulkString(b) => Reply::Bulk(b),
            F::Array(v) => Reply::Array(v.into_iter().map(reply).collect()),
            F::Null => Reply::Nil,
        }
    }
    match reply(f) {
        Reply::Error(text) => Err(RedisError::from_server(&text)),
        r => Ok(r),
    }
}

fn encode_all(frames: &[Model]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode(&mut out);
    }
    out
}

fn replies_of(frames: &[Model]) -> Vec<Decoded> {
    frames.iter().filter_map(Model::top).collect()
}

fn simple_text() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
        0..24,
    )
}

/// RESP2 scalars: simple strings with any bytes but CR and LF (non-UTF-8 included), error
/// lines of printable ASCII, any i64, binary bulk strings (CR and LF included).
fn scalar2() -> BoxedStrategy<Model> {
    prop_oneof![
        simple_text().prop_map(Model::Simple),
        "[A-Z]{1,10}( [ -~]{0,20})?".prop_map(Model::Error),
        any::<i64>().prop_map(Model::Int),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Model::Bulk),
    ]
    .boxed()
}

/// RESP3-only scalars, in the forms Redis sends (and redis-protocol reads back exactly):
/// doubles as Rust prints them or `inf`/`-inf`, big numbers, bulk errors, verbatim strings.
fn scalar3() -> BoxedStrategy<Model> {
    prop_oneof![
        any::<bool>().prop_map(Model::Bool),
        prop_oneof![
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| f.to_string()),
            Just("inf".to_string()),
            Just("-inf".to_string()),
            (-1000i64..1000).prop_map(|i| format!("{i}.5")),
        ]
        .prop_map(Model::Double),
        "-?[1-9][0-9]{0,60}".prop_map(Model::BigNumber),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Model::BulkError),
        (
            prop_oneof![Just("txt"), Just("mkd")],
            proptest::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(f, t)| Model::Verbatim(f, t)),
    ]
    .boxed()
}

/// Valid RESP2 replies: scalars, nils and nested arrays.
fn model2() -> impl Strategy<Value = Model> {
    let leaf = prop_oneof![scalar2(), Just(Model::NilBulk), Just(Model::NilArray)];
    leaf.prop_recursive(6, 64, 6, |inner| {
        proptest::collection::vec(inner, 0..6).prop_map(Model::Array)
    })
}

/// Distinct map keys or set members (redis-protocol keeps maps and sets in hash tables, so
/// duplicates would merge there): scalars made unique by their position.
fn distinct(n: usize, seed: &[Model]) -> Vec<Model> {
    (0..n)
        .map(|i| match seed.get(i) {
            Some(Model::Int(v)) => Model::Int(v.wrapping_mul(64).wrapping_add(i as i64)),
            Some(Model::Bulk(v)) => Model::Bulk([format!("{i}:").as_bytes(), v].concat()),
            _ => Model::Simple(format!("k{i}").into_bytes()),
        })
        .collect()
}

/// Valid RESP3 replies as Redis 7 sends them: every type (nested maps, sets, attributes on
/// non-null values); RESP2 nils only when `resp2_nils` (redis-protocol's RESP3 decoder does
/// not read them). Pushes are added at top level by `stream3`.
fn model3(resp2_nils: bool) -> impl Strategy<Value = Model> {
    let nils = if resp2_nils {
        prop_oneof![
            Just(Model::Null),
            Just(Model::NilBulk),
            Just(Model::NilArray)
        ]
        .boxed()
    } else {
        Just(Model::Null).boxed()
    };
    let leaf = prop_oneof![3 => scalar2(), 3 => scalar3(), 1 => nils];
    leaf.prop_recursive(6, 64, 6, |inner| {
        let pairs = (
            proptest::collection::vec(inner.clone(), 0..5),
            proptest::collection::vec(scalar2(), 0..5),
        )
            .prop_map(|(values, keys)| {
                let keys = distinct(values.len(), &keys);
                keys.into_iter().zip(values).collect::<Vec<_>>()
            });
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Model::Array),
            pairs.clone().prop_map(Model::Map),
            proptest::collection::vec(scalar2(), 0..6)
                .prop_map(|seed| Model::Set(distinct(seed.len(), &seed))),
            (pairs, inner)
                .prop_filter(
                    "an attribute annotates a value, not a null or another attribute",
                    |(_, v)| {
                        !matches!(
                            v,
                            Model::Null | Model::NilBulk | Model::NilArray | Model::Attribute(..)
                        )
                    }
                )
                .prop_map(|(p, v)| Model::Attribute(p, Box::new(v))),
        ]
    })
}

fn stream() -> impl Strategy<Value = Vec<Model>> {
    proptest::collection::vec(model2(), 1..8)
}

/// RESP3 replies with push frames between them.
fn stream3(resp2_nils: bool) -> impl Strategy<Value = Vec<Model>> {
    let push = proptest::collection::vec(model3(resp2_nils), 0..4).prop_map(Model::Push);
    proptest::collection::vec(prop_oneof![4 => model3(resp2_nils), 1 => push], 1..8)
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
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
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
            const ALPHABET: &[u8] = b"+-:$**_#,(!=%~|>\r\n\r\n\r\n0123456789-1?tf";
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

/// A valid stream decodes to exactly its replies (pushes skipped and counted), whole and
/// split at random points.
fn decodes_split_anywhere(frames: &[Model], raw_cuts: &[usize]) -> Result<(), TestCaseError> {
    let input = encode_all(frames);
    let want = replies_of(frames);
    let (whole, err, left) = feed(&input, &[], 1 << 20);
    prop_assert_eq!(err, None);
    prop_assert_eq!(left, 0);
    prop_assert_eq!(&whole, &want);
    let cuts = cuts_for(raw_cuts, input.len());
    let (split, err, left) = feed(&input, &cuts, 1 << 20);
    prop_assert_eq!(err, None, "cuts {:?}", cuts);
    prop_assert_eq!(left, 0);
    prop_assert_eq!(&split, &want, "cuts {:?}", cuts);
    Ok(())
}

#[test]
fn should_decode_valid_streams_split_anywhere() {
    check(
        "valid RESP2 stream split at random points",
        3000,
        (stream(), proptest::collection::vec(any::<usize>(), 0..12)),
        |(frames, raw_cuts)| decodes_split_anywhere(&frames, &raw_cuts),
    );
    check(
        "valid RESP3 stream (pushes, attributes, RESP2 nils) split at random points",
        3000,
        (
            stream3(true),
            proptest::collection::vec(any::<usize>(), 0..12),
        ),
        |(frames, raw_cuts)| decodes_split_anywhere(&frames, &raw_cuts),
    );
}

#[test]
fn should_never_fail_on_a_truncated_valid_stream() {
    // Every cut point of every generated stream: the prefix alone decodes the complete frames
    // and asks for more (no error), and the rest completes it to the same frames.
    let points = AtomicU64::new(0);
    check(
        "valid RESP2/RESP3 stream truncated at every point",
        400,
        prop_oneof![stream(), stream3(true)],
        |frames| {
            let input = encode_all(&frames);
            let want = replies_of(&frames);
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
            prop_oneof![
                Just(b'$'),
                Just(b'*'),
                Just(b'!'),
                Just(b'='),
                Just(b'%'),
                Just(b'~'),
                Just(b'|'),
                Just(b'>')
            ],
            0usize..3,
            prop_oneof![
                Just(&b"*1\r\n"[..]),
                Just(&b"%1\r\n+k\r\n"[..]),
                Just(&b"~1\r\n"[..]),
                Just(&b"|0\r\n"[..])
            ],
        ),
        |(cap, extra, kind, depth, open)| {
            // Declared length in (cap, i64::MAX], optionally inside aggregates (a push is
            // only valid at top level, but its size is checked first).
            let span = (i64::MAX as u64) - cap as u64;
            let n = cap as u64 + 1 + extra % span;
            let mut input = open.repeat(depth);
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
    check(
        "map or attribute whose pairs exceed the cap",
        1000,
        (
            16usize..1_000_000,
            any::<u64>(),
            prop_oneof![Just('%'), Just('|')],
        ),
        |(cap, extra, kind)| {
            // n <= cap, but 2n (+1) elements follow.
            let n = cap as u64 / 2 + 1 + extra % (cap as u64 / 2);
            let (got, err, _) = feed(format!("{kind}{n}\r\n").as_bytes(), &[], cap);
            prop_assert!(got.is_empty());
            prop_assert_eq!(
                err.map(|e| e.kind()),
                Some("reply_too_large"),
                "{}{}",
                kind,
                n
            );
            Ok(())
        },
    );
    for input in [
        &b"$999999999999\r\n"[..],
        b"*99999999\r\n",
        b"$9223372036854775807\r\n",
        b"*9223372036854775807\r\n",
        b"%9223372036854775807\r\n",
        b"~9223372036854775807\r\n",
        b"|9223372036854775807\r\n",
        b">9223372036854775807\r\n",
        b"!9223372036854775807\r\n",
        b"=9223372036854775807\r\n",
        b"%1\r\n+k\r\n~99999999\r\n",
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
        (
            i64::MIN..-1i64,
            prop_oneof![
                Just(b'$'),
                Just(b'*'),
                Just(b'!'),
                Just(b'='),
                Just(b'%'),
                Just(b'~'),
                Just(b'|'),
                Just(b'>')
            ],
        ),
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
            prop_oneof![
                Just(b':'),
                Just(b'$'),
                Just(b'*'),
                Just(b'!'),
                Just(b'='),
                Just(b'%'),
                Just(b'~'),
                Just(b'|'),
                Just(b'>')
            ],
        ),
        |(line, kind)| {
            let input = format!("{}{line}\r\n", kind as char);
            let (got, err, _) = feed(input.as_bytes(), &[], 1 << 20);
            prop_assert!(got.is_empty());
            prop_assert_eq!(err.map(|e| e.kind()), Some("protocol"), "{:?}", input);
            Ok(())
        },
    );
    // -1 is a RESP2 null only for `$` and `*`.
    for input in [
        &b"!-1\r\n"[..],
        b"=-1\r\n",
        b"%-1\r\n",
        b"~-1\r\n",
        b"|-1\r\n",
        b">-1\r\n",
    ] {
        let (_, err, _) = feed(input, &[], 1 << 20);
        assert_eq!(err.map(|e| e.kind()), Some("protocol"), "{input:?}");
    }
    // Overflowing integers, empty lines, non-ASCII digits.
    for input in [
        &b":99999999999999999999\r\n"[..],
        b":-9223372036854775809\r\n",
        b":\r\n",
        b"$\r\n",
        b"*\r\n",
        b":\xd9\xa3\r\n",
        b"$1 \r\nx\r\n",
        // RESP3 scalars with bad payloads, streamed types Redis never sends.
        b"#x\r\n",
        b"#tt\r\n",
        b"#\r\n",
        b",\r\n",
        b",1.5.5\r\n",
        b",0x10\r\n",
        b"(\r\n",
        b"(1.5\r\n",
        b"(--1\r\n",
        b"_0\r\n",
        b"=3\r\nabc\r\n",
        b"=4\r\nabcd\r\n",
        b"$?\r\n;3\r\nabc\r\n;0\r\n",
        b"*?\r\n:1\r\n.\r\n",
        b"~?\r\n",
        b"*1\r\n>0\r\n",
    ] {
        let (_, err, _) = feed(input, &[], 1 << 20);
        assert_eq!(err.map(|e| e.kind()), Some("protocol"), "{input:?}");
    }
}

#[test]
fn should_bound_nesting_depth() {
    // 100k nested aggregates of each kind: a protocol error, no stack overflow, nothing
    // allocated per level beyond MAX_DEPTH.
    for open in [
        &b"*1\r\n"[..],
        b"~1\r\n",
        b"%1\r\n+k\r\n",
        b"|0\r\n",
        b"|1\r\n+k\r\n",
    ] {
        let mut deep = open.repeat(100_000);
        deep.extend_from_slice(b":1\r\n");
        let (_, err, _) = feed(&deep, &[], 1 << 30);
        assert_eq!(err.map(|e| e.kind()), Some("protocol"), "{open:?}");
        // Split byte-chunk-wise too.
        let cuts: Vec<usize> = (0..deep.len()).step_by(4093).collect();
        let (_, err, _) = feed(&deep, &cuts, 1 << 30);
        assert_eq!(err.map(|e| e.kind()), Some("protocol"), "{open:?}");
    }
    check(
        "nesting depth",
        500,
        (1usize..200, 1u32..4),
        |(depth, width)| {
            // DEPTH levels of aggregates of WIDTH elements (arrays, sets, maps, or attributes
            // annotating an array), each level's first element the next level.
            fn build(out: &mut Vec<u8>, depth: usize, width: u32) {
                if depth == 0 {
                    out.extend_from_slice(b":1\r\n");
                    return;
                }
                match depth % 4 {
                    0 => out.extend_from_slice(format!("*{width}\r\n").as_bytes()),
                    1 => out.extend_from_slice(format!("~{width}\r\n").as_bytes()),
                    // A map of WIDTH pairs: the nested value first, then keys and values.
                    2 => out.extend_from_slice(format!("%{width}\r\n+k\r\n").as_bytes()),
                    _ => {
                        // An attribute (a level of its own) on an array (another level).
                        out.extend_from_slice(b"|0\r\n");
                        build(out, depth - 1, width);
                        return;
                    }
                }
                build(out, depth - 1, width);
                let rest = if depth % 4 == 2 {
                    2 * width - 2
                } else {
                    width - 1
                };
                for _ in 0..rest {
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

            // An error reply, as `-` or as RESP3 `!`: the server's error, whatever its bytes
            // (Redis puts key names in some messages); the connection goes on.
            for bulk_error in [false, true] {
                let mut error = if nested {
                    b"*1\r\n".to_vec()
                } else {
                    Vec::new()
                };
                if bulk_error {
                    error.extend_from_slice(format!("!{}\r\n", text.len()).as_bytes());
                } else {
                    error.push(b'-');
                }
                error.extend_from_slice(&text);
                error.extend_from_slice(b"\r\n:7\r\n");
                let (got, err, _) = feed(&error, &[], 1 << 20);
                prop_assert_eq!(err, None);
                let first = if nested {
                    Ok(Reply::Array(vec![Reply::Error(Bytes::copy_from_slice(
                        &text,
                    ))]))
                } else {
                    Err(RedisError::from_server(&text))
                };
                prop_assert_eq!(got, vec![first, Ok(Reply::Int(7))]);
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Differential: the same bytes through redis-protocol's decoders
// ---------------------------------------------------------------------------------------------

/// Applies MUTATIONS (offset, byte) to INPUT.
fn mutate(mut input: Vec<u8>, mutations: &[(usize, u8)]) -> Vec<u8> {
    for &(at, byte) in mutations {
        if !input.is_empty() {
            let i = at % input.len();
            input[i] = byte;
        }
    }
    input
}

/// Frame by frame, while both sides decode a complete frame: our scanner's frame length and
/// the library's bytes consumed must be equal (`check` can compare the two frames too).
/// Stops at the first frame either side refuses or needs more bytes for.
fn walk_boundaries(
    input: &[u8],
    mut lib: impl FnMut(&Bytes) -> Option<usize>,
) -> Result<usize, TestCaseError> {
    let mut pos = 0;
    let mut frames = 0;
    while pos < input.len() {
        let ours = Decoder::new(1 << 20).scan(&input[pos..]);
        let theirs = lib(&Bytes::copy_from_slice(&input[pos..]));
        match (ours, theirs) {
            (Ok(Some(a)), Some(b)) => {
                prop_assert_eq!(
                    a,
                    b,
                    "frame {} at byte {}: our scanner and redis-protocol disagree on {:?}",
                    frames,
                    pos,
                    String::from_utf8_lossy(&input[pos..])
                );
                pos += a;
                frames += 1;
            }
            _ => break,
        }
    }
    Ok(frames)
}

fn lib2_decode(b: &Bytes) -> Option<(redis_protocol::resp2::types::BytesFrame, usize)> {
    redis_protocol::resp2::decode::decode_bytes(b)
        .ok()
        .flatten()
}

fn lib3_decode(b: &Bytes) -> Option<(redis_protocol::resp3::types::BytesFrame, usize)> {
    redis_protocol::resp3::decode::complete::decode_bytes(b)
        .ok()
        .flatten()
}

#[test]
fn should_agree_with_redis_protocol_resp2_decoder() {
    check(
        "valid RESP2 streams: ours vs redis-protocol resp2",
        3000,
        stream(),
        |frames| {
            let input = encode_all(&frames);
            let (ours, err, _) = feed(&input, &[], 1 << 20);
            prop_assert_eq!(err, None);
            let mut theirs = Vec::new();
            let mut rest = Bytes::from(input.clone());
            while let Some((f, n)) = lib2_decode(&rest) {
                theirs.push(lib2_top(f));
                rest = rest.slice(n..);
            }
            prop_assert!(rest.is_empty(), "redis-protocol stopped early: {:?}", rest);
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(
                walk_boundaries(&input, |b| lib2_decode(b).map(|x| x.1))?,
                frames.len()
            );
            Ok(())
        },
    );
    let compared = AtomicU64::new(0);
    check(
        "mutated RESP2 streams: frame boundaries and replies, ours vs redis-protocol resp2",
        3000,
        (
            stream(),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ),
        |(frames, mutations)| {
            let input = mutate(encode_all(&frames), &mutations);
            let n = walk_boundaries(&input, |b| {
                let (f, n) = lib2_decode(b)?;
                // Where both accept the frame they must also read the same reply.
                let mut buf = BytesMut::from(&b[..n]);
                if let Ok(Some(ours)) = Decoder::new(1 << 20).decode(&mut buf) {
                    assert_eq!(ours, lib2_top(f), "{:?}", String::from_utf8_lossy(&b[..n]));
                }
                Some(n)
            })?;
            compared.fetch_add(n as u64, Ordering::Relaxed);
            Ok(())
        },
    );
    eprintln!(
        "fuzz_resp mutated RESP2 streams: {} frames accepted by both decoders and compared",
        compared.load(Ordering::Relaxed)
    );
}

#[test]
fn should_agree_with_redis_protocol_resp3_decoder() {
    check(
        "valid RESP3 streams: ours vs redis-protocol resp3",
        3000,
        stream3(false),
        |frames| {
            let input = encode_all(&frames);
            // Ours: exactly the model's replies (order kept, pushes skipped).
            let (ours, err, _) = feed(&input, &[], 1 << 20);
            prop_assert_eq!(err, None);
            prop_assert_eq!(&ours, &replies_of(&frames));
            // Theirs: the same values (maps and sets unordered, pushes included).
            let mut theirs = Vec::new();
            let mut rest = Bytes::from(input.clone());
            while let Some((f, n)) = lib3_decode(&rest) {
                theirs.push(lib3_norm(&f));
                rest = rest.slice(n..);
            }
            prop_assert!(
                rest.is_empty(),
                "redis-protocol stopped early at {:?}",
                rest
            );
            let want: Vec<String> = frames.iter().map(Model::norm).collect();
            prop_assert_eq!(&theirs, &want);
            // And the same frame boundaries, pushes included.
            prop_assert_eq!(
                walk_boundaries(&input, |b| lib3_decode(b).map(|x| x.1))?,
                frames.len()
            );
            Ok(())
        },
    );
    let compared = AtomicU64::new(0);
    check(
        "mutated RESP3 streams: frame boundaries, ours vs redis-protocol resp3",
        3000,
        (
            stream3(false),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ),
        |(frames, mutations)| {
            let input = mutate(encode_all(&frames), &mutations);
            let n = walk_boundaries(&input, |b| lib3_decode(b).map(|x| x.1))?;
            compared.fetch_add(n as u64, Ordering::Relaxed);
            Ok(())
        },
    );
    eprintln!(
        "fuzz_resp mutated RESP3 streams: {} frames accepted by both decoders and compared",
        compared.load(Ordering::Relaxed)
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
    use analytics_demo::resp::{Connection, PoolConfig, Protocol, RedisUrl};
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
                // The fake answers the first command with the file: no HELLO first.
                protocol: Protocol::Resp2,
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
