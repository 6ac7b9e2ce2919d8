//! One pipelined Redis connection.
//!
//! glommio's `TcpStream` cannot be split, so the socket fd is `dup`ed: a writer task owns one
//! stream and a reader task the other. Callers append encoded commands to a shared buffer
//! and a FIFO of pending commands; the writer flushes everything queued in one `write_all`
//! (pipelining for free), the reader completes slots strictly in order. A sweeper task times
//! commands out (they all share one timeout, so FIFO order is deadline order and one timer
//! per connection suffices) and drops a connection whose oldest command is stuck, so a
//! stalled server cannot pin the pool. Everything is `Rc`/`RefCell`: one executor, no locks.
//! Under TLS (`rediss://`) the reader and writer still own one fd each and share the rustls
//! session (see `transport`).

use crate::resp::dial::dial;
use crate::resp::frame::{encode_command, Decoder};
use crate::resp::handshake::handshake;
use crate::resp::stats::Stats;
use crate::resp::transport::{self, ReadHalf, WriteHalf};
use crate::resp::{PoolConfig, Protocol, RedisError, RedisUrl, Reply};
use crate::rt::sync::{Latch, Notify};
use crate::rt::time::timeout;
use bytes::BytesMut;
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::os::unix::io::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

const READ_CHUNK: usize = 16 * 1024;
/// Write buffers that grew past this (a burst) are not kept, so idle connections stay small.
const KEEP_WRITE_BUF: usize = 1 << 20;

/// A live connection; dropping the last handle closes it.
pub struct Connection {
    inner: Rc<Inner>,
}

struct Inner {
    st: RefCell<State>,
    timeout: Duration,
    stats: Rc<Stats>,
    /// The reader's fd, for `shutdown`; `fd_open` turns false when the reader drops its
    /// stream, so a closed (and possibly reused) fd number is never touched.
    fd: RawFd,
    fd_open: Cell<bool>,
    url: String,
    /// RESP version the handshake settled on (2 or 3).
    protocol: Cell<u8>,
    writer_wake: Notify,
    sweeper_wake: Notify,
    /// The sweeper waits for a command with no timer (its FIFO was empty): the next enqueue
    /// wakes it.
    sweeper_parked: Cell<bool>,
    idle: Notify,
    closed: Latch,
}

struct State {
    /// Encoded commands not yet handed to the socket.
    out: BytesMut,
    /// Every command awaiting its reply, in send order.
    fifo: VecDeque<Pending>,
    /// Front entries of `fifo` already timed out by the sweeper.
    swept: usize,
    next_seq: u64,
    /// Every command with `seq < sent_seq` was handed to the socket.
    sent_seq: u64,
    closed: Option<RedisError>,
    draining: bool,
}

/// One command awaiting its reply: command `i` of `batch`.
struct Pending {
    batch: Rc<Batch>,
    i: usize,
    seq: u64,
}

/// Commands enqueued together (one command, or a pipeline), whose caller waits for all of
/// their outcomes: one allocation and one waker for the lot, where one of each per command
/// showed in the profile at -P 16.
struct Batch {
    enqueued: Instant,
    st: RefCell<BatchState>,
}

struct BatchState {
    /// The outcome of command 0, then of the others; None until it has one.
    head: Option<Result<Reply, RedisError>>,
    tail: Vec<Option<Result<Reply, RedisError>>>,
    /// Commands without an outcome yet.
    left: usize,
    waker: Option<Waker>,
}

impl BatchState {
    fn outcome(&mut self, i: usize) -> Option<&mut Option<Result<Reply, RedisError>>> {
        match i {
            0 => Some(&mut self.head),
            _ => self.tail.get_mut(i - 1),
        }
    }
}

impl Batch {
    fn new(n: usize, enqueued: Instant) -> Batch {
        Batch {
            enqueued,
            st: RefCell::new(BatchState {
                head: None,
                tail: (1..n).map(|_| None).collect(),
                left: n,
                waker: None,
            }),
        }
    }

    /// First outcome wins (reply, timeout or close); later ones are dropped. The waiter
    /// wakes once every command has one.
    fn complete(&self, i: usize, r: Result<Reply, RedisError>) {
        let mut s = self.st.borrow_mut();
        if s.left == 0 {
            // Every command had its outcome, and the waiter may have taken them.
            return;
        }
        match s.outcome(i) {
            Some(o @ None) => *o = Some(r),
            _ => return,
        }
        s.left -= 1;
        if s.left == 0 {
            let w = s.waker.take();
            drop(s);
            if let Some(w) = w {
                w.wake();
            }
        }
    }

    /// Resolves once every command has an outcome.
    fn done(&self) -> BatchWait<'_> {
        BatchWait(self)
    }

    /// The outcomes, in command order (after `done`; later outcomes are dropped).
    fn take(&self) -> Vec<Result<Reply, RedisError>> {
        let mut s = self.st.borrow_mut();
        let head = s.head.take();
        let tail = std::mem::take(&mut s.tail);
        std::iter::once(head)
            .chain(tail)
            .map(|o| o.unwrap_or(Err(RedisError::Closed { sent: true })))
            .collect()
    }

    /// The outcome of a batch of one (after `done`).
    fn take_one(&self) -> Result<Reply, RedisError> {
        let mut s = self.st.borrow_mut();
        s.head
            .take()
            .unwrap_or(Err(RedisError::Closed { sent: true }))
    }
}

struct BatchWait<'a>(&'a Batch);

impl Future for BatchWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.0.st.borrow_mut();
        if s.left == 0 {
            return Poll::Ready(());
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Connection {
    /// One connection (health checks, `verify`): resolve, connect with timeout, then the
    /// handshake (`HELLO 3` / AUTH / SELECT, see [`crate::resp::handshake`]).
    pub async fn connect(url: &RedisUrl, cfg: &PoolConfig) -> Result<Rc<Connection>, RedisError> {
        Self::open(url, cfg, Rc::new(Stats::new(cfg.shard))).await
    }

    pub(crate) async fn open(
        url: &RedisUrl,
        cfg: &PoolConfig,
        stats: Rc<Stats>,
    ) -> Result<Rc<Connection>, RedisError> {
        let r = Self::open_inner(url, cfg, stats.clone()).await;
        if let Err(e) = &r {
            stats.error(e.kind());
        }
        r
    }

    async fn open_inner(
        url: &RedisUrl,
        cfg: &PoolConfig,
        stats: Rc<Stats>,
    ) -> Result<Rc<Connection>, RedisError> {
        let connect_err = |msg: String| RedisError::Connect { msg };
        let mut stream = dial(url, cfg.connect_timeout).await?;
        let _ = stream.set_nodelay(true);
        let tls = match url.tls {
            true => Some(tls_handshake(&mut stream, url, cfg).await?),
            false => None,
        };
        let wstream =
            crate::rt::dup_stream(&stream).map_err(|e| connect_err(format!("dup: {e}")))?;
        let inner = Rc::new(Inner {
            st: RefCell::new(State {
                out: BytesMut::with_capacity(READ_CHUNK),
                fifo: VecDeque::with_capacity(64),
                swept: 0,
                next_seq: 0,
                sent_seq: 0,
                closed: None,
                draining: false,
            }),
            timeout: cfg.command_timeout.max(Duration::from_millis(1)),
            stats,
            fd: stream.as_raw_fd(),
            fd_open: Cell::new(true),
            url: url.redacted(),
            protocol: Cell::new(2),
            writer_wake: Notify::default(),
            sweeper_wake: Notify::default(),
            sweeper_parked: Cell::new(false),
            idle: Notify::default(),
            closed: Latch::default(),
        });
        let max_reply = cfg.max_reply_bytes;
        match tls {
            None => {
                glommio::spawn_local(reader(inner.clone(), stream, max_reply)).detach();
                glommio::spawn_local(writer(inner.clone(), wstream)).detach();
            }
            Some(tls) => {
                let wake = Rc::downgrade(&inner);
                let wake_writer = move || {
                    if let Some(inner) = wake.upgrade() {
                        inner.writer_wake.notify();
                    }
                };
                let (r, w) = transport::split(tls, stream, wstream, wake_writer);
                glommio::spawn_local(reader(inner.clone(), r, max_reply)).detach();
                glommio::spawn_local(writer(inner.clone(), w)).detach();
            }
        }
        glommio::spawn_local(sweeper(inner.clone())).detach();
        let conn = Rc::new(Connection { inner });
        let version = handshake(&conn, url, cfg.protocol).await?;
        if url.tls && cfg.protocol == Protocol::Resp2 && url.password().is_none() && url.db == 0 {
            // A TLS 1.3 server checks our certificate after our side of the handshake is
            // done: one round trip turns its refusal into a connect error (the HELLO of
            // RESP3 negotiation already made one).
            match conn.probe(&[b"PING"]).await {
                Ok(_) => {}
                Err(e @ RedisError::Server { .. }) => return Err(e),
                // The transport's message already says "TLS: ...".
                Err(RedisError::Io { msg, .. }) => return Err(connect_err(msg)),
                Err(e) => return Err(connect_err(format!("PING after the TLS handshake: {e}"))),
            }
        }
        // Before the connection takes a command: no counter lands on a target that does not
        // name the run (see `RunDeclaration`).
        if let Some(d) = &cfg.declare_run {
            d.send(&conn).await?;
        }
        conn.inner.protocol.set(version);
        Ok(conn)
    }

    /// One command; errors are counted, durations recorded.
    pub async fn cmd(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let r = self.round_trip(args).await;
        if let Err(e) = &r {
            self.inner.stats.error(e.kind());
        }
        r
    }

    /// A command whose error reply is not counted as an error: the handshake's, where a
    /// refusal (HELLO on Redis < 6) is an answer, and a real failure is counted once by
    /// `open`.
    pub(crate) async fn probe(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        self.round_trip(args).await
    }

    /// Enqueues one command, wakes the writer, waits for the reply, records the duration.
    async fn round_trip(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let batch = self.inner.enqueue(&[args], Instant::now())?;
        self.inner.writer_wake.notify();
        batch.done().await;
        self.record(args, batch.enqueued.elapsed().as_secs_f64());
        batch.take_one()
    }

    /// Counts an error of a command sent with `probe` (errors of `cmd` count themselves).
    pub(crate) fn count_error(&self, e: &RedisError) {
        self.inner.stats.error(e.kind());
    }

    /// The RESP version in use: 3 after a successful `HELLO 3`, else 2.
    pub fn protocol(&self) -> u8 {
        self.inner.protocol.get()
    }

    /// Records a command's duration, from its batch's enqueue to its reply (an empty
    /// command was never sent).
    fn record(&self, args: &[&[u8]], secs: f64) {
        if let Some(name) = args.first() {
            self.inner.stats.record(Stats::command_index(name), secs);
        }
    }

    /// Commands written back-to-back in one write; replies matched in order. One clock
    /// read for the enqueue and one after the last reply: the replies of a pipeline
    /// arrive together, and at several million commands a second the clock reads show.
    pub async fn pipeline(&self, cmds: &[&[&[u8]]]) -> Vec<Result<Reply, RedisError>> {
        if cmds.is_empty() {
            return Vec::new();
        }
        let batch = match self.inner.enqueue(cmds, Instant::now()) {
            Ok(b) => b,
            Err(e) => {
                for _ in cmds {
                    self.inner.stats.error(e.kind());
                }
                return cmds.iter().map(|_| Err(e.clone())).collect();
            }
        };
        self.inner.writer_wake.notify();
        batch.done().await;
        // The replies of a pipeline arrive together: one duration for all of them.
        let secs = batch.enqueued.elapsed().as_secs_f64();
        let out = batch.take();
        for (args, r) in cmds.iter().zip(&out) {
            self.record(args, secs);
            if let Err(e) = r {
                self.inner.stats.error(e.kind());
            }
        }
        out
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_set()
    }

    /// Commands enqueued and awaiting a reply.
    pub(crate) fn inflight(&self) -> usize {
        self.inner.st.borrow().fifo.len()
    }

    /// Usable for new commands: open and not being drained by a cutover.
    pub(crate) fn is_usable(&self) -> bool {
        let st = self.inner.st.borrow();
        st.closed.is_none() && !st.draining
    }

    /// Resolves when the connection has closed, for whatever reason.
    pub(crate) async fn closed(&self) {
        self.inner.closed.wait().await
    }

    /// New commands should go elsewhere (cutover); pending ones still complete here.
    pub(crate) fn stop_taking_commands(&self) {
        self.inner.st.borrow_mut().draining = true;
    }

    /// Stops taking commands, lets in-flight ones finish until `deadline`, then closes.
    pub(crate) async fn drain(&self, deadline: Instant) {
        self.stop_taking_commands();
        loop {
            if self.inner.st.borrow().fifo.is_empty() || self.is_closed() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            timeout(left, self.inner.idle.notified()).await;
        }
        self.close();
    }

    /// Closes now; pending commands fail with `Closed` (outcome unknown if written).
    pub(crate) fn close(&self) {
        self.inner
            .close_with(RedisError::Closed { sent: false }, None);
    }
}

/// The TLS handshake on a fresh socket, bounded by the connect timeout.
async fn tls_handshake(
    stream: &mut TcpStream,
    url: &RedisUrl,
    cfg: &PoolConfig,
) -> Result<rustls::ClientConnection, RedisError> {
    let config = match &cfg.tls {
        Some(c) => c.clone(),
        None => crate::tls::TlsFiles::default()
            .client_config(crate::tls::Verify::Full)
            .map_err(|msg| RedisError::Connect { msg })?,
    };
    let limit = cfg.connect_timeout.max(Duration::from_millis(1));
    match timeout(limit, transport::handshake(stream, config, &url.host)).await {
        Some(Ok(tls)) => Ok(tls),
        Some(Err(why)) => Err(RedisError::Connect {
            msg: format!("TLS handshake with {}: {why}", url.redacted()),
        }),
        None => Err(RedisError::Connect {
            msg: format!("TLS handshake with {} timed out", url.redacted()),
        }),
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

impl Inner {
    /// Queues `cmds` for the writer as one batch; refused whole on a closed connection.
    fn enqueue(&self, cmds: &[&[&[u8]]], now: Instant) -> Result<Rc<Batch>, RedisError> {
        let mut st = self.st.borrow_mut();
        if st.closed.is_some() {
            return Err(RedisError::Closed { sent: false });
        }
        let batch = Rc::new(Batch::new(cmds.len(), now));
        for (i, args) in cmds.iter().enumerate() {
            if args.is_empty() {
                // Redis ignores `*0`: no reply would come and the FIFO would desync.
                batch.complete(
                    i,
                    Err(RedisError::Protocol {
                        sent: false,
                        msg: "empty command".into(),
                    }),
                );
                continue;
            }
            encode_command(&mut st.out, args);
            let seq = st.next_seq;
            st.next_seq += 1;
            st.fifo.push_back(Pending {
                batch: batch.clone(),
                i,
                seq,
            });
        }
        if self.sweeper_parked.replace(false) {
            self.sweeper_wake.notify();
        }
        Ok(batch)
    }

    /// The reader got one reply: it belongs to the oldest pending command.
    fn on_reply(&self, r: Result<Reply, RedisError>) -> Result<(), RedisError> {
        let mut st = self.st.borrow_mut();
        let Some(p) = st.fifo.pop_front() else {
            return Err(RedisError::Protocol {
                sent: true,
                msg: "reply without a pending command".into(),
            });
        };
        st.swept = st.swept.saturating_sub(1);
        let idle = st.fifo.is_empty() && st.draining;
        drop(st);
        p.batch.complete(p.i, r);
        if idle {
            self.idle.notify();
        }
        Ok(())
    }

    /// First call wins: fails every pending command with `cause` (marked sent or not),
    /// counts the error under `count` (None = closed on purpose), wakes every task.
    fn close_with(&self, cause: RedisError, count: Option<&'static str>) {
        let mut st = self.st.borrow_mut();
        if st.closed.is_some() {
            return;
        }
        st.closed = Some(cause.clone());
        let fifo = std::mem::take(&mut st.fifo);
        let sent_seq = st.sent_seq;
        st.out.clear();
        drop(st);
        if let Some(kind) = count {
            self.stats.error(kind);
            tracing::warn!(url = %self.url, kind, error = %cause, pending = fifo.len(), "redis connection lost");
        }
        for p in fifo {
            p.batch
                .complete(p.i, Err(cause.with_sent(p.seq < sent_seq)));
        }
        if self.fd_open.get() {
            // SAFETY: plain syscall on an fd the reader task still owns (`fd_open`); it wakes
            // a reader blocked in recv and a writer blocked in send.
            unsafe {
                libc::shutdown(self.fd, libc::SHUT_RDWR);
            }
        }
        self.writer_wake.notify();
        self.sweeper_wake.notify();
        self.idle.notify();
        self.closed.set();
    }
}

/// Marks the reader's fd closed when the reader task ends or is dropped.
struct FdGuard(Rc<Inner>);

impl Drop for FdGuard {
    fn drop(&mut self) {
        self.0.fd_open.set(false);
    }
}

async fn reader(inner: Rc<Inner>, stream: impl ReadHalf, max_reply: usize) {
    // Declared before `stream`'s new binding, so it drops after the stream is closed.
    let _guard = FdGuard(inner.clone());
    let mut stream = stream;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut scratch = vec![0u8; READ_CHUNK];
    let mut dec = Decoder::new(max_reply);
    // RESP3 push frames are out of band: the decoder drops them (they answer no command)
    // and we only count them.
    let mut pushes = 0;
    let (cause, kind) = 'run: loop {
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(r)) => {
                    if let Err(e) = inner.on_reply(r) {
                        break 'run (e, "protocol");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let kind = e.kind();
                    break 'run (e, kind);
                }
            }
        }
        if dec.pushes() > pushes {
            inner.stats.pushes.increment(dec.pushes() - pushes);
            pushes = dec.pushes();
        }
        if inner.closed.is_set() {
            return;
        }
        match stream.read_into(&mut buf, &mut scratch).await {
            Ok(0) => break (RedisError::Closed { sent: true }, "closed"),
            Ok(_) => {}
            Err(e) => {
                let msg = e.to_string();
                break (RedisError::Io { sent: true, msg }, "io");
            }
        }
    };
    inner.close_with(cause, Some(kind));
}

async fn writer(inner: Rc<Inner>, mut stream: impl WriteHalf) {
    let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        {
            let mut st = inner.st.borrow_mut();
            if st.closed.is_some() {
                return;
            }
            if !st.out.is_empty() {
                std::mem::swap(&mut st.out, &mut wbuf);
                st.sent_seq = st.next_seq;
            }
        }
        if wbuf.is_empty() && !stream.wants_flush() {
            inner.writer_wake.notified().await;
            continue;
        }
        if let Err(e) = stream.send(&wbuf).await {
            let msg = e.to_string();
            inner.close_with(RedisError::Io { sent: true, msg }, Some("io"));
            return;
        }
        wbuf.clear();
        if wbuf.capacity() > KEEP_WRITE_BUF {
            wbuf = BytesMut::with_capacity(READ_CHUNK);
        }
    }
}

async fn sweeper(inner: Rc<Inner>) {
    let t = inner.timeout;
    loop {
        if inner.closed.is_set() {
            return;
        }
        if inner.st.borrow().fifo.is_empty() {
            // Nothing can time out: no timer, so an idle connection costs no wakes.
            inner.sweeper_parked.set(true);
            inner.sweeper_wake.notified().await;
            continue;
        }
        let now = Instant::now();
        let mut wake = now + t;
        let mut stalled = false;
        {
            let mut st = inner.st.borrow_mut();
            while st.swept < st.fifo.len() {
                let p = &st.fifo[st.swept];
                let deadline = p.batch.enqueued + t;
                if deadline > now {
                    wake = deadline;
                    break;
                }
                // Even if not written yet, its bytes stay in the outgoing buffer and may
                // still reach the server: the outcome is unknown, never "not applied".
                p.batch
                    .complete(p.i, Err(RedisError::Timeout { sent: true }));
                st.swept += 1;
            }
            if let Some(front) = st.fifo.front() {
                let stall = front.batch.enqueued + 2 * t;
                if stall <= now {
                    stalled = true;
                } else {
                    wake = wake.min(stall);
                }
            }
        }
        if stalled {
            inner.close_with(RedisError::Closed { sent: false }, Some("timeout"));
            return;
        }
        let nap = wake.saturating_duration_since(now);
        timeout(nap, inner.sweeper_wake.notified()).await;
    }
}
