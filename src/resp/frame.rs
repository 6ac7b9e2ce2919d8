//! RESP2 on the wire: commands out, replies in.
//!
//! Replies are decoded by `redis_protocol::resp2::decode::decode_bytes_mut` (zero-copy), but
//! only after our own [`Decoder::scan`] has found a complete frame. The scan is what makes the
//! decoder safe against a hostile or broken server: it enforces `max_reply_bytes` before any
//! allocation, bounds nesting depth (the library recurses per level), is resumable so a
//! reply trickling in byte by byte is not re-parsed from the start, and never panics.

use crate::resp::RedisError;
use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::{decode::decode_bytes_mut, types::BytesFrame};

/// Deepest array nesting accepted; real replies nest a handful of levels.
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

    fn from_frame(f: BytesFrame) -> Reply {
        match f {
            BytesFrame::SimpleString(b) => Reply::Simple(b),
            BytesFrame::Error(s) => Reply::Error(Bytes::copy_from_slice(s.as_bytes())),
            BytesFrame::Integer(i) => Reply::Int(i),
            BytesFrame::BulkString(b) => Reply::Bulk(b),
            BytesFrame::Array(v) => Reply::Array(v.into_iter().map(Reply::from_frame).collect()),
            BytesFrame::Null => Reply::Nil,
        }
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
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&[kind]);
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Resumable frame scanner plus decode, one per connection (its state is reused).
/// Public so the criterion benchmarks (`bench/resp.rs`) measure the real reply path.
pub struct Decoder {
    max: usize,
    /// Offset of the next element header not yet scanned in the current frame.
    pos: usize,
    /// Elements still expected by each open array.
    stack: Vec<u64>,
}

impl Decoder {
    pub fn new(max_reply_bytes: usize) -> Decoder {
        Decoder {
            max: max_reply_bytes.max(1),
            pos: 0,
            stack: Vec::with_capacity(8),
        }
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
                b'$' => match parse_int(line)? {
                    -1 => header,
                    n if n < 0 => return Err(protocol("negative bulk length")),
                    n if n as u64 > self.max as u64 => return Err(self.too_large()),
                    n => {
                        let need = header + n as usize + 2;
                        if rest.len() < need {
                            return self.incomplete(buf);
                        }
                        if &rest[need - 2..need] != b"\r\n" {
                            return Err(protocol("bulk string not terminated by CRLF"));
                        }
                        need
                    }
                },
                b'*' => match parse_int(line)? {
                    -1 | 0 => header,
                    n if n < 0 => return Err(protocol("negative array length")),
                    n if n as u64 > self.max as u64 => return Err(self.too_large()),
                    n => {
                        if self.stack.len() >= MAX_DEPTH {
                            return Err(protocol("arrays nested too deeply"));
                        }
                        self.stack.push(n as u64);
                        self.pos += header;
                        continue;
                    }
                },
                _ => return Err(protocol("invalid frame type byte")),
            };
            self.pos += elem_len;
            if self.pos > self.max {
                return Err(self.too_large());
            }
            // One element done: close every array it completes.
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
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Result<Reply, RedisError>>, RedisError> {
        let Some(len) = self.scan(buf)? else {
            return Ok(None);
        };
        match decode_bytes_mut(buf) {
            Ok(Some((frame, amt, _))) if amt == len => Ok(Some(match frame {
                BytesFrame::Error(s) => Err(RedisError::from_server(s.as_bytes())),
                f => Ok(Reply::from_frame(f)),
            })),
            Ok(_) => Err(protocol("frame boundary mismatch")),
            Err(e) => Err(protocol(&e.to_string())),
        }
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
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| protocol("invalid integer"))
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
            Ok(Reply::Bulk(Bytes::from_static(b"hello"))),
            Ok(Reply::Nil),
            Ok(Reply::Nil),
            Ok(Reply::Array(vec![])),
            Ok(Reply::Array(vec![
                Reply::Int(1),
                Reply::Array(vec![
                    Reply::Bulk(Bytes::from_static(b"a")),
                    Reply::Error(Bytes::from_static(b"ERR in array")),
                ]),
                Reply::Bulk(Bytes::new()),
            ])),
            Err(RedisError::from_server(b"WRONGTYPE bad")),
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
    fn should_decode_stream_split_at_every_boundary() {
        for split in 0..=STREAM.len() {
            let mut d = Decoder::new(1 << 20);
            let mut buf = BytesMut::from(&STREAM[..split]);
            let mut got = decode_all(&mut d, &mut buf).unwrap();
            buf.extend_from_slice(&STREAM[split..]);
            got.extend(decode_all(&mut d, &mut buf).unwrap());
            assert_eq!(got, expected(), "split at {split}");
        }
        // And one byte at a time.
        let mut d = Decoder::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in STREAM {
            buf.extend_from_slice(&[*b]);
            got.extend(decode_all(&mut d, &mut buf).unwrap());
        }
        assert_eq!(got, expected());
    }

    #[test]
    fn should_reject_replies_over_the_cap() {
        let kinds = |input: &[u8]| {
            let mut buf = BytesMut::from(input);
            Decoder::new(16)
                .decode(&mut buf)
                .map(|_| ())
                .unwrap_err()
                .kind()
        };
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
    }

    #[test]
    fn should_bound_deep_nesting() {
        let mut input = Vec::new();
        for _ in 0..100_000 {
            input.extend_from_slice(b"*1\r\n");
        }
        input.extend_from_slice(b":1\r\n");
        let mut buf = BytesMut::from(&input[..]);
        let e = Decoder::new(1 << 30).decode(&mut buf).unwrap_err();
        assert_eq!(e.kind(), "protocol");
        // Nesting within the bound decodes.
        let mut input = Vec::new();
        for _ in 0..MAX_DEPTH {
            input.extend_from_slice(b"*1\r\n");
        }
        input.extend_from_slice(b":1\r\n");
        let mut buf = BytesMut::from(&input[..]);
        assert!(Decoder::new(1 << 20).decode(&mut buf).unwrap().is_some());
    }

    #[test]
    fn should_never_panic_on_garbage() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let alphabet = b"+-:$*\r\n0123456789-abc";
        for i in 0..20_000 {
            let len = (rng.next_u32() % 64) as usize;
            let input: Vec<u8> = if i % 3 == 0 {
                // Truncated or mutated valid stream.
                let mut v = STREAM[..(rng.next_u32() as usize % STREAM.len())].to_vec();
                if !v.is_empty() && i % 2 == 0 {
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
