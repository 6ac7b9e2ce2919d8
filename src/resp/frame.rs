//! RESP2 and RESP3 on the wire: commands out, replies in.
//!
//! A reply passes two steps. [`Decoder::scan`] finds where one complete frame ends: it
//! enforces `max_reply_bytes` before any allocation, bounds nesting depth, validates every
//! header (lengths, integers, booleans, doubles), is resumable so a reply trickling in byte
//! by byte is not re-parsed from the start, and never panics. Only then does `build` turn the
//! frame's bytes into a [`Reply`], zero-copy (every string is a slice of one `Bytes`).
//!
//! RESP3 types map onto the RESP2-shaped [`Reply`] the way Redis itself answers a RESP2
//! client, so callers see the same replies whichever protocol a connection negotiated:
//!
//! | RESP3 | [`Reply`] |
//! |---|---|
//! | null `_` | `Nil` (as `$-1` / `*-1`) |
//! | boolean `#t` / `#f` | `Int(1)` / `Int(0)` |
//! | double `,` and big number `(` | `Bulk` of the text as sent |
//! | bulk error `!` | like `-`: the server's error at top level, `Reply::Error` inside |
//! | verbatim string `=` | `Bulk` without the `txt:` prefix (INFO, CLIENT INFO) |
//! | map `%` | `Array` of key, value, key, value, ... in the order sent |
//! | set `~` | `Array` |
//! | attribute `\|` | skipped: the value it annotates is the reply |
//! | push `>` | not a reply: counted ([`Decoder::pushes`]) and dropped, never matched to a command |
//!
//! Streamed strings and aggregates (`$?`, `*?`), which Redis does not send, are protocol
//! errors, as is a push inside an aggregate. redis-protocol's decoders are not used here (its
//! RESP3 decoder puts maps in hash maps, losing order and duplicate keys, turns doubles into
//! `f64`, and refuses RESP2 nulls); tests/fuzz_resp.rs checks this decoder against both of
//! them.

use crate::resp::RedisError;
use bytes::{Buf, Bytes, BytesMut};

/// Deepest aggregate nesting accepted (an attribute counts as a level); real replies nest a
/// handful of levels.
pub(crate) const MAX_DEPTH: usize = 64;

/// A decoded reply. Server error replies at top level become `Err(RedisError::Server)`;
/// inside arrays (e.g. `EXEC`) they stay as [`Reply::Error`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(Bytes),
    Int(i64),
    Bulk(Bytes),
    Nil,
    Array(Vec<Reply>),
    Error(Bytes),
}

impl Reply {
    /// The integer of an `Int` reply.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The bytes of a `Bulk` or `Simple` reply.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(b) | Reply::Simple(b) => Some(b),
            _ => None,
        }
    }

    /// The value of `key` in a map reply (`Array` of key, value pairs, as HELLO answers).
    pub fn field(&self, key: &[u8]) -> Option<&Reply> {
        let Reply::Array(items) = self else {
            return None;
        };
        items
            .chunks_exact(2)
            .find(|kv| kv[0].as_bytes() == Some(key))
            .map(|kv| &kv[1])
    }
}

/// Appends `*N\r\n$len\r\narg\r\n...` to `out` (no allocation besides growing `out`).
pub fn encode_command(out: &mut BytesMut, args: &[&[u8]]) {
    let extra: usize = args.iter().map(|a| a.len() + 16).sum();
    out.reserve(16 + extra);
    push_header(out, b'*', args.len());
    for a in args {
        push_header(out, b'$', a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_header(out: &mut BytesMut, kind: u8, n: usize) {
    // The common headers (under 100) as fixed-size copies, which compile to plain stores: a
    // copy of a variable length calls memcpy, and at -P 16 those calls were 4% of the
    // client's CPU.
    if n < 10 {
        out.extend_from_slice(&[kind, b'0' + n as u8, b'\r', b'\n']);
        return;
    }
    if n < 100 {
        out.extend_from_slice(&[
            kind,
            b'0' + (n / 10) as u8,
            b'0' + (n % 10) as u8,
            b'\r',
            b'\n',
        ]);
        return;
    }
    // Built right to left in one stack buffer, then one copy into `out`.
    let mut b = [0u8; 23];
    let mut i = b.len() - 2;
    b[i..].copy_from_slice(b"\r\n");
    let mut v = n;
    loop {
        i -= 1;
        b[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    i -= 1;
    b[i] = kind;
    out.extend_from_slice(&b[i..]);
}

/// Resumable frame scanner plus decode, one per connection (its state is reused).
/// Public so the criterion benchmarks (`benches/resp.rs`) measure the real reply path.
pub struct Decoder {
    max: usize,
    /// Offset of the next element header not yet scanned in the current frame.
    pos: usize,
    /// Elements still expected by each open aggregate.
    stack: Vec<u64>,
    /// Push frames seen (and dropped) so far.
    pushes: u64,
}

impl Decoder {
    pub fn new(max_reply_bytes: usize) -> Decoder {
        Decoder {
            max: max_reply_bytes.max(1),
            pos: 0,
            stack: Vec::with_capacity(8),
            pushes: 0,
        }
    }

    /// Out-of-band push frames (RESP3 `>`) received so far; they are not replies.
    pub fn pushes(&self) -> u64 {
        self.pushes
    }

    fn too_large(&self) -> RedisError {
        RedisError::ReplyTooLarge {
            sent: true,
            limit: self.max,
        }
    }

    /// `Ok(Some(n))` when `buf[..n]` is one complete frame, `Ok(None)` when more bytes are
    /// needed. Errors are fatal for the connection.
    pub(crate) fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, RedisError> {
        loop {
            let rest = buf.get(self.pos..).unwrap_or(&[]);
            let Some(&kind) = rest.first() else {
                return Ok(None);
            };
            let Some(line_len) = find_crlf(&rest[1..]) else {
                return self.incomplete(buf);
            };
            let line = &rest[1..1 + line_len];
            let header = line_len + 3;
            let elem_len = match kind {
                b'+' | b'-' => header,
                b':' => {
                    parse_int(line)?;
                    header
                }
                b'_' if line.is_empty() => header,
                b'_' => return Err(protocol("null with a payload")),
                b'#' if line == b"t" || line == b"f" => header,
                b'#' => return Err(protocol("invalid boolean")),
                b',' => {
                    parse_double(line)?;
                    header
                }
                b'(' => {
                    parse_big_number(line)?;
                    header
                }
                b'$' | b'!' | b'=' => match parse_int(line)? {
                    -1 if kind == b'$' => header,
                    n if n < 0 => return Err(protocol("negative string length")),
                    n if n as u64 > self.max as u64 => return Err(self.too_large()),
                    n => {
                        let n = n as usize;
                        if kind == b'=' && n < 4 {
                            return Err(protocol("verbatim string shorter than its format"));
                        }
                        let need = header + n + 2;
                        if rest.len() < need {
                            return self.incomplete(buf);
                        }
                        if &rest[need - 2..need] != b"\r\n" {
                            return Err(protocol("string not terminated by CRLF"));
                        }
                        if kind == b'=' && rest[header + 3] != b':' {
                            return Err(protocol("verbatim string without a format"));
                        }
                        need
                    }
                },
                b'*' | b'~' | b'%' | b'|' | b'>' => {
                    let n = parse_int(line)?;
                    if n == -1 && kind == b'*' {
                        header
                    } else if n < 0 {
                        return Err(protocol("negative aggregate length"));
                    } else {
                        // Elements that follow: maps and attributes hold pairs, and an
                        // attribute is followed by the value it annotates. n <= i64::MAX, so
                        // 2n + 1 fits in a u64.
                        let n = n as u64;
                        let elements = match kind {
                            b'%' => 2 * n,
                            b'|' => 2 * n + 1,
                            _ => n,
                        };
                        if elements > self.max as u64 {
                            return Err(self.too_large());
                        }
                        if kind == b'>' && !self.stack.is_empty() {
                            return Err(protocol("push frame inside an aggregate"));
                        }
                        if elements == 0 {
                            header
                        } else {
                            if self.stack.len() >= MAX_DEPTH {
                                return Err(protocol("aggregates nested too deeply"));
                            }
                            self.stack.push(elements);
                            self.pos += header;
                            continue;
                        }
                    }
                }
                _ => return Err(protocol("invalid frame type byte")),
            };
            self.pos += elem_len;
            if self.pos > self.max {
                return Err(self.too_large());
            }
            // One element done: close every aggregate it completes.
            loop {
                match self.stack.last_mut() {
                    None => {
                        let n = self.pos;
                        self.pos = 0;
                        return Ok(Some(n));
                    }
                    Some(c) => {
                        *c -= 1;
                        if *c > 0 {
                            break;
                        }
                        self.stack.pop();
                    }
                }
            }
        }
    }

    fn incomplete(&self, buf: &[u8]) -> Result<Option<usize>, RedisError> {
        if buf.len() > self.max {
            Err(self.too_large())
        } else {
            Ok(None)
        }
    }

    /// Takes one complete reply off the front of `buf`: `Ok(None)` = need more bytes;
    /// `Ok(Some(Err(Server)))` = the server's error reply (not fatal); `Err` = fatal.
    /// Push frames before the reply are consumed and counted, never returned.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Result<Reply, RedisError>>, RedisError> {
        loop {
            let Some(len) = self.scan(buf)? else {
                return Ok(None);
            };
            // The commonest replies (integers, +OK, nulls, small strings) are built straight
            // from the buffer: splitting a frame off makes its bytes shared (reference
            // counted), which costs more than the whole reply is worth.
            if let Some(reply) = small_reply(&buf[..len])? {
                buf.advance(len);
                return Ok(Some(Ok(reply)));
            }
            let frame = buf.split_to(len).freeze();
            if frame.first() == Some(&b'>') {
                self.pushes += 1;
                continue;
            }
            let mut p = Builder { frame, pos: 0 };
            let reply = p.value()?;
            if p.pos != len {
                return Err(protocol("frame boundary mismatch"));
            }
            return Ok(Some(match reply {
                Reply::Error(text) => Err(RedisError::from_server(&text)),
                r => Ok(r),
            }));
        }
    }
}

/// A reply that needs no bytes kept: `:n`, `+OK`, `_`, `$-1`, `*-1` (a frame the scanner
/// accepted, so its header is valid); `None` for everything else.
fn small_reply(frame: &[u8]) -> Result<Option<Reply>, RedisError> {
    Ok(match frame {
        [b':', .., b'\r', b'\n'] => Some(Reply::Int(parse_int(&frame[1..frame.len() - 2])?)),
        b"+OK\r\n" => Some(Reply::Simple(Bytes::from_static(b"OK"))),
        b"_\r\n" | b"$-1\r\n" | b"*-1\r\n" => Some(Reply::Nil),
        _ => small_bulk(frame)?,
    })
}

/// Bulk strings up to this size are copied out of the read buffer rather than shared with it.
const COPY_BULK: usize = 128;

/// A top-level bulk string of at most [`COPY_BULK`] bytes (a GET of a small value), copied:
/// one small allocation costs less than the reference counting of a shared slice, and a
/// read buffer nothing points into is reused in place by the next read.
fn small_bulk(frame: &[u8]) -> Result<Option<Reply>, RedisError> {
    if frame.len() > COPY_BULK + 16 || frame.first() != Some(&b'$') {
        return Ok(None);
    }
    let Some(line) = find_crlf(&frame[1..]) else {
        return Ok(None);
    };
    let start = line + 3;
    // The scanner validated the frame: `$n\r\n` then n bytes then CRLF, n >= 0 here.
    let Some(body) = frame.get(start..frame.len().saturating_sub(2)) else {
        return Err(protocol("frame boundary mismatch"));
    };
    if usize::try_from(parse_int(&frame[1..line + 1])?).ok() != Some(body.len()) {
        return Err(protocol("frame boundary mismatch"));
    }
    Ok(Some(Reply::Bulk(Bytes::copy_from_slice(body))))
}

/// Turns one frame the scanner accepted into a [`Reply`]. It re-reads headers the scanner
/// already validated, so its errors cannot happen; they are errors rather than panics all
/// the same. Recursion is bounded by the scanner's `MAX_DEPTH`.
struct Builder {
    frame: Bytes,
    pos: usize,
}

impl Builder {
    /// The type byte and header line at `pos`; moves past the line's CRLF.
    fn header(&mut self) -> Result<(u8, usize, usize), RedisError> {
        let rest = self.frame.get(self.pos..).unwrap_or(&[]);
        let kind = *rest.first().ok_or_else(|| protocol("frame ends early"))?;
        let len = find_crlf(&rest[1..]).ok_or_else(|| protocol("frame ends early"))?;
        let start = self.pos + 1;
        self.pos = start + len + 2;
        Ok((kind, start, start + len))
    }

    /// `n` bytes of a string body at `pos` (then its CRLF).
    fn body(&mut self, n: usize) -> Result<Bytes, RedisError> {
        let end = self.pos + n;
        if end + 2 > self.frame.len() {
            return Err(protocol("frame ends early"));
        }
        let b = self.frame.slice(self.pos..end);
        self.pos = end + 2;
        Ok(b)
    }

    fn value(&mut self) -> Result<Reply, RedisError> {
        let (kind, start, end) = self.header()?;
        let line = self.frame.slice(start..end);
        Ok(match kind {
            b'+' => Reply::Simple(line),
            b'-' => Reply::Error(line),
            b':' => Reply::Int(parse_int(&line)?),
            b'_' => Reply::Nil,
            b'#' => Reply::Int(i64::from(&line[..] == b"t")),
            b',' | b'(' => Reply::Bulk(line),
            b'$' | b'!' | b'=' => match parse_int(&line)? {
                -1 => Reply::Nil,
                n => {
                    let body = self.body(usize::try_from(n).map_err(|_| protocol("length"))?)?;
                    match kind {
                        b'$' => Reply::Bulk(body),
                        b'!' => Reply::Error(body),
                        _ => Reply::Bulk(body.slice(4.min(body.len())..)),
                    }
                }
            },
            b'*' | b'~' | b'%' | b'|' => match parse_int(&line)? {
                -1 => Reply::Nil,
                n => {
                    let n = usize::try_from(n).map_err(|_| protocol("length"))?;
                    if kind == b'|' {
                        for _ in 0..2 * n {
                            self.value()?;
                        }
                        return self.value();
                    }
                    let n = if kind == b'%' { 2 * n } else { n };
                    // Every element takes 3 bytes at least: the frame bounds the capacity.
                    let mut items = Vec::with_capacity(n.min(self.frame.len() / 3));
                    for _ in 0..n {
                        items.push(self.value()?);
                    }
                    Reply::Array(items)
                }
            },
            _ => return Err(protocol("unexpected frame type")),
        })
    }
}

fn protocol(msg: &str) -> RedisError {
    RedisError::Protocol {
        sent: true,
        msg: msg.to_string(),
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = b[from..].iter().position(|&c| c == b'\r') {
        let at = from + i;
        match b.get(at + 1) {
            Some(b'\n') => return Some(at),
            Some(_) => from = at + 1,
            None => return None,
        }
    }
    None
}

fn parse_int(line: &[u8]) -> Result<i64, RedisError> {
    // What `str::parse::<i64>` accepts (an optional sign, then at least one ASCII digit,
    // no overflow), without the UTF-8 check and the generic parser: it runs for every
    // reply header. Accumulated negatively so that i64::MIN parses.
    let (neg, digits) = match line.first() {
        Some(b'-') => (true, &line[1..]),
        Some(b'+') => (false, &line[1..]),
        _ => (false, line),
    };
    if digits.is_empty() {
        return Err(protocol("invalid integer"));
    }
    let mut v: i64 = 0;
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return Err(protocol("invalid integer"));
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_sub(i64::from(d)))
            .ok_or_else(|| protocol("invalid integer"))?;
    }
    if neg {
        Ok(v)
    } else {
        v.checked_neg().ok_or_else(|| protocol("invalid integer"))
    }
}

/// A RESP3 double: what Rust parses as an `f64`, which includes `inf`, `-inf` and `nan`.
fn parse_double(line: &[u8]) -> Result<(), RedisError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|_| ())
        .ok_or_else(|| protocol("invalid double"))
}

/// A RESP3 big number: an optional sign, then decimal digits.
fn parse_big_number(line: &[u8]) -> Result<(), RedisError> {
    let digits = match line.first() {
        Some(b'-' | b'+') => &line[1..],
        _ => line,
    };
    if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
        Ok(())
    } else {
        Err(protocol("invalid big number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_xoshiro::rand_core::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn decode_all(
        d: &mut Decoder,
        buf: &mut BytesMut,
    ) -> Result<Vec<Result<Reply, RedisError>>, RedisError> {
        let mut out = Vec::new();
        while let Some(r) = d.decode(buf)? {
            out.push(r);
        }
        Ok(out)
    }

    fn bulk(b: &'static [u8]) -> Reply {
        Reply::Bulk(Bytes::from_static(b))
    }

    #[test]
    fn should_parse_integers_exactly_as_str_parse_does() {
        let cases: &[&[u8]] = &[
            b"0",
            b"-0",
            b"+0",
            b"7",
            b"-42",
            b"+42",
            b"9223372036854775807",
            b"-9223372036854775808",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"",
            b"-",
            b"+",
            b"1a",
            b" 1",
            b"1 ",
            b"--1",
            b"+-1",
            b"00012",
            b"\xff1",
            b"99999999999999999999999",
        ];
        for &c in cases {
            let want = std::str::from_utf8(c)
                .ok()
                .and_then(|s| s.parse::<i64>().ok());
            assert_eq!(parse_int(c).ok(), want, "{:?}", String::from_utf8_lossy(c));
        }
    }

    #[test]
    fn should_encode_headers_of_every_width() {
        for n in [0usize, 9, 10, 99, 100, 12345, usize::MAX] {
            let mut out = BytesMut::new();
            push_header(&mut out, b'$', n);
            assert_eq!(&out[..], format!("${n}\r\n").as_bytes());
        }
    }

    #[test]
    fn should_encode_exact_bytes() {
        let mut out = BytesMut::new();
        encode_command(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        out.clear();
        encode_command(&mut out, &[&[b'x'; 12][..]]);
        assert_eq!(&out[..], b"*1\r\n$12\r\nxxxxxxxxxxxx\r\n");
    }

    const STREAM: &[u8] = b"+OK\r\n:-42\r\n$5\r\nhello\r\n$-1\r\n*-1\r\n*0\r\n\
        *3\r\n:1\r\n*2\r\n$1\r\na\r\n-ERR in array\r\n$0\r\n\r\n-WRONGTYPE bad\r\n";

    fn expected() -> Vec<Result<Reply, RedisError>> {
        vec![
            Ok(Reply::Simple(Bytes::from_static(b"OK"))),
            Ok(Reply::Int(-42)),
            Ok(bulk(b"hello")),
            Ok(Reply::Nil),
            Ok(Reply::Nil),
            Ok(Reply::Array(vec![])),
            Ok(Reply::Array(vec![
                Reply::Int(1),
                Reply::Array(vec![
                    bulk(b"a"),
                    Reply::Error(Bytes::from_static(b"ERR in array")),
                ]),
                Reply::Bulk(Bytes::new()),
            ])),
            Err(RedisError::from_server(b"WRONGTYPE bad")),
        ]
    }

    /// Every RESP3 type, with push frames between (and before) replies.
    const STREAM3: &[u8] = b">2\r\n+invalidate\r\n*1\r\n$1\r\nk\r\n\
        _\r\n#t\r\n#f\r\n,3.25\r\n,-inf\r\n(3492890328409238509324850943850943825024385\r\n\
        !21\r\nSYNTAX invalid syntax\r\n=15\r\ntxt:Some string\r\n\
        %2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n_\r\n~3\r\n:1\r\n:2\r\n:2\r\n%0\r\n~0\r\n\
        |1\r\n+ttl\r\n:3600\r\n$1\r\nv\r\n\
        *2\r\n:1\r\n|1\r\n+a\r\n%1\r\n+b\r\n#t\r\n!3\r\nERR\r\n\
        >1\r\n+pong\r\n:7\r\n";

    fn expected3() -> Vec<Result<Reply, RedisError>> {
        vec![
            Ok(Reply::Nil),
            Ok(Reply::Int(1)),
            Ok(Reply::Int(0)),
            Ok(bulk(b"3.25")),
            Ok(bulk(b"-inf")),
            Ok(bulk(b"3492890328409238509324850943850943825024385")),
            Err(RedisError::from_server(b"SYNTAX invalid syntax")),
            Ok(bulk(b"Some string")),
            Ok(Reply::Array(vec![
                Reply::Simple(Bytes::from_static(b"first")),
                Reply::Int(1),
                bulk(b"second"),
                Reply::Nil,
            ])),
            Ok(Reply::Array(vec![
                Reply::Int(1),
                Reply::Int(2),
                Reply::Int(2),
            ])),
            Ok(Reply::Array(vec![])),
            Ok(Reply::Array(vec![])),
            Ok(bulk(b"v")),
            Ok(Reply::Array(vec![
                Reply::Int(1),
                Reply::Error(Bytes::from_static(b"ERR")),
            ])),
            Ok(Reply::Int(7)),
        ]
    }

    #[test]
    fn should_decode_every_reply_type() {
        let mut d = Decoder::new(1 << 20);
        let mut buf = BytesMut::from(STREAM);
        assert_eq!(decode_all(&mut d, &mut buf).unwrap(), expected());
        assert!(buf.is_empty());
        assert_eq!(expected()[1].as_ref().unwrap().as_int(), Some(-42));
        assert_eq!(
            expected()[2].as_ref().unwrap().as_bytes(),
            Some(&b"hello"[..])
        );
    }

    #[test]
    fn should_decode_every_resp3_type_and_skip_pushes() {
        let mut d = Decoder::new(1 << 20);
        let mut buf = BytesMut::from(STREAM3);
        assert_eq!(decode_all(&mut d, &mut buf).unwrap(), expected3());
        assert!(buf.is_empty());
        assert_eq!(d.pushes(), 2);
        // A map reply's fields, as the handshake reads HELLO's.
        let map = &expected3()[8];
        let map = map.as_ref().unwrap();
        assert_eq!(map.field(b"first"), Some(&Reply::Int(1)));
        assert_eq!(map.field(b"second"), Some(&Reply::Nil));
        assert_eq!(map.field(b"third"), None);
    }

    #[test]
    fn should_decode_stream_split_at_every_boundary() {
        for (stream, want) in [(STREAM, expected()), (STREAM3, expected3())] {
            for split in 0..=stream.len() {
                let mut d = Decoder::new(1 << 20);
                let mut buf = BytesMut::from(&stream[..split]);
                let mut got = decode_all(&mut d, &mut buf).unwrap();
                buf.extend_from_slice(&stream[split..]);
                got.extend(decode_all(&mut d, &mut buf).unwrap());
                assert_eq!(got, want, "split at {split}");
            }
            // And one byte at a time.
            let mut d = Decoder::new(1 << 20);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for b in stream {
                buf.extend_from_slice(&[*b]);
                got.extend(decode_all(&mut d, &mut buf).unwrap());
            }
            assert_eq!(got, want);
        }
    }

    #[test]
    fn should_decode_bulk_strings_either_side_of_the_copy_limit() {
        // Small ones are copied out, larger ones shared with the read buffer: same replies.
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            COPY_BULK - 1,
            COPY_BULK,
            COPY_BULK + 1,
            4096,
        ] {
            let body: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            let mut buf = BytesMut::from(format!("${n}\r\n").as_bytes());
            buf.extend_from_slice(&body);
            buf.extend_from_slice(b"\r\n:5\r\n");
            let mut d = Decoder::new(1 << 20);
            let got = decode_all(&mut d, &mut buf).unwrap();
            let want = Reply::Bulk(Bytes::from(body));
            assert_eq!(got, vec![Ok(want), Ok(Reply::Int(5))], "length {n}");
            assert!(buf.is_empty());
        }
    }

    fn kind_of(input: &[u8], cap: usize) -> &'static str {
        let mut buf = BytesMut::from(input);
        Decoder::new(cap)
            .decode(&mut buf)
            .map(|_| ())
            .unwrap_err()
            .kind()
    }

    #[test]
    fn should_reject_replies_over_the_cap() {
        let kinds = |input: &[u8]| kind_of(input, 16);
        assert_eq!(kinds(b"$17\r\n"), "reply_too_large");
        assert_eq!(kinds(b"$999999999999999\r\n"), "reply_too_large");
        assert_eq!(kinds(b"*9999999999\r\n"), "reply_too_large");
        assert_eq!(kinds(b"+aaaaaaaaaaaaaaaaaaaaaaaa"), "reply_too_large");
        assert_eq!(
            kinds(b"*3\r\n$5\r\nhello\r\n$5\r\nhello\r\n"),
            "reply_too_large"
        );
        assert_eq!(kinds(b"$-2\r\n"), "protocol");
        assert_eq!(kinds(b"$2\r\nabcd"), "protocol");
        assert_eq!(kinds(b"!x\r\n"), "protocol");
        assert_eq!(kinds(b":x\r\n"), "protocol");
        // RESP3 aggregates and strings: declared sizes over the cap, before any allocation.
        for input in [
            &b"%9\r\n"[..],
            b"~17\r\n",
            b">17\r\n",
            b"|8\r\n",
            b"!17\r\n",
            b"=17\r\n",
            b"%9223372036854775807\r\n",
            b"|9223372036854775807\r\n",
        ] {
            assert_eq!(kinds(input), "reply_too_large", "{input:?}");
        }
    }

    #[test]
    fn should_reject_malformed_resp3_frames() {
        for input in [
            &b"_x\r\n"[..],
            b"#\r\n",
            b"#true\r\n",
            b",\r\n",
            b",1.5x\r\n",
            b"(\r\n",
            b"(12a\r\n",
            b"(-\r\n",
            b"!-1\r\n",
            b"=-1\r\n",
            b"=3\r\ntxt\r\n",
            b"=5\r\ntxt-x\r\n",
            b"%-1\r\n",
            b"~-1\r\n",
            b"|-1\r\n",
            b">-1\r\n",
            b"$?\r\n",
            b"*?\r\n",
            b";4\r\n",
            b".\r\n",
            b"*1\r\n>1\r\n:1\r\n",
            b"%1\r\n>0\r\n:1\r\n",
        ] {
            assert_eq!(kind_of(input, 1 << 20), "protocol", "{input:?}");
        }
    }

    #[test]
    fn should_bound_deep_nesting() {
        for open in [&b"*1\r\n"[..], b"~1\r\n", b"%1\r\n:0\r\n", b"|0\r\n"] {
            let mut input = Vec::new();
            for _ in 0..100_000 {
                input.extend_from_slice(open);
            }
            input.extend_from_slice(b":1\r\n");
            let mut buf = BytesMut::from(&input[..]);
            let e = Decoder::new(1 << 30).decode(&mut buf).unwrap_err();
            assert_eq!(e.kind(), "protocol");
            // Nesting within the bound decodes.
            let mut input = Vec::new();
            for _ in 0..MAX_DEPTH {
                input.extend_from_slice(open);
            }
            input.extend_from_slice(b":1\r\n");
            let mut buf = BytesMut::from(&input[..]);
            assert!(Decoder::new(1 << 20).decode(&mut buf).unwrap().is_some());
        }
    }

    #[test]
    fn should_never_panic_on_garbage() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let alphabet = b"+-:$*_#,(!=%~|>\r\n0123456789-abc?tf:";
        for i in 0..20_000 {
            let len = (rng.next_u32() % 64) as usize;
            let input: Vec<u8> = if i % 3 == 0 {
                // Truncated or mutated valid stream.
                let stream = if i % 2 == 0 { STREAM } else { STREAM3 };
                let mut v = stream[..(rng.next_u32() as usize % stream.len())].to_vec();
                if !v.is_empty() && i % 4 < 2 {
                    let at = rng.next_u32() as usize % v.len();
                    v[at] = rng.next_u32() as u8;
                }
                v
            } else if i % 3 == 1 {
                (0..len)
                    .map(|_| alphabet[rng.next_u32() as usize % alphabet.len()])
                    .collect()
            } else {
                (0..len).map(|_| rng.next_u32() as u8).collect()
            };
            let mut d = Decoder::new(1024);
            let mut buf = BytesMut::from(&input[..]);
            // Feed in two chunks to exercise resumption too.
            let cut = input.len() / 2;
            let mut part = buf.split_to(cut);
            if decode_all(&mut d, &mut part).is_ok() {
                part.extend_from_slice(&buf);
                let _ = decode_all(&mut d, &mut part);
            }
        }
    }
}
