//! One `bench-redis` shard: a pool of `connections` and one task per command slot
//! (`connections x pipeline`), each issuing one command at a time. The pool sends each
//! command to its least busy connection, so every connection carries about `pipeline`
//! commands, and its writer coalesces whatever is queued into one write.
//!
//! Closed loop (`rate` 0) works like redis-benchmark -P: one task per connection writes
//! `pipeline` commands at once, waits for every reply, and starts the next batch.
//! Paced: one pacer task wakes on the workload's pacing grid ([`pace_step`]) and releases
//! the operations of one [`Schedule`] due by then; idle slots claim them in order and send
//! each at once. A tick wakes the executor once for all the operations it releases, instead
//! of a timer per slot and operation. When every slot is busy, released operations wait for
//! one. The grid delay and that wait count in the corrected latency (measured from the due
//! time, as in wrk2) but not in the uncorrected one (from the send).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::resp::{Pool, PoolConfig, RedisError, Reply, Target};
use crate::shard::pacer::{grid_ceil, pace_step, Schedule};
use crate::workload::bench_mix::{KeyBuf, Mix, Op};
use crate::workload::Rng;

/// Everything a shard needs, moved into its executor thread.
#[derive(Clone)]
pub struct ShardPlan {
    pub index: usize,
    pub target: Target,
    /// Connections per node (the pool size).
    pub pool: PoolConfig,
    /// Cluster mode: one hash tag per lane (lane `l` talks to node `l % nodes` on that
    /// node's connection `l / nodes`), each owned by its lane's node; empty standalone.
    pub tags: Vec<String>,
    pub pipeline: usize,
    /// This shard's share of the rate; 0 = closed loop.
    pub rate: u64,
    /// The pacing grid; zero = the workload's automatic step for `rate`.
    pub pace_step: Duration,
    pub mix: super::MixPlan,
    pub data_size: usize,
    pub duration: Option<Duration>,
    pub seed: u64,
}

/// What a shard measured; merged by the caller.
pub struct ShardResult {
    pub connected: usize,
    pub sets: u64,
    pub gets: u64,
    /// GETs that found a value.
    pub hits: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// From handing the command to the pool to its reply, in nanoseconds.
    pub latency: Histogram<u64>,
    /// From the due time to the reply (paced runs only), in nanoseconds.
    pub corrected: Option<Histogram<u64>>,
    /// Paced runs: operations due before the end that no slot was free to start.
    pub missed: u64,
    /// Paced runs: the pacing grid's step (zero in closed loop).
    pub pace_step: Duration,
    /// From the first command to the last reply.
    pub elapsed: Duration,
}

/// One hour in nanoseconds: far beyond any command timeout.
const HIST_MAX_NS: u64 = 3_600_000_000_000;
const CONNECT_WAIT: Duration = Duration::from_secs(5);

pub fn histogram() -> Histogram<u64> {
    // Bounds are constants within hdrhistogram's limits.
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

struct Ctx {
    pool: Rc<Pool>,
    mix: Mix,
    rng: RefCell<Rng>,
    value: Vec<u8>,
    sched: Option<Schedule>,
    /// Next operation of `sched` to claim.
    next: Cell<u64>,
    /// Operations below this index are released by the pacer (due, and before the end).
    released: Cell<u64>,
    /// Operations below this index were released while a slot was idle for each.
    handed: Cell<u64>,
    /// Idle slots waiting for the pacer to release an operation, most recently idle last.
    idle: RefCell<Vec<Waker>>,
    end: Option<Instant>,
    stop: Arc<AtomicBool>,
    tally: RefCell<ShardResult>,
}

impl Ctx {
    fn stopped(&self, now: Instant) -> bool {
        self.stop.load(Ordering::Relaxed) || self.ended(now)
    }

    fn ended(&self, now: Instant) -> bool {
        self.end.is_some_and(|e| now >= e)
    }

    /// Paced: the operations missed by a run that started at `start` and whose slots were all
    /// done at `finished`.
    fn missed(&self, rate: u64, start: Instant, finished: Instant) -> u64 {
        if self.stop.load(Ordering::Relaxed) && !self.ended(finished) {
            // Stopped before the end: an operation not released yet is not started, and one
            // handed to an idle slot is given up for the stop. Missed are the released ones
            // left waiting for a busy slot.
            let taken = self.next.get().max(self.handed.get());
            self.released.get().saturating_sub(taken)
        } else {
            let until = self.end.unwrap_or(finished).min(finished);
            let due = due_before(rate, until.saturating_duration_since(start));
            due.saturating_sub(self.next.get())
        }
    }
}

/// Runs the shard until its duration ends or `stop` is set; in-flight commands finish.
pub async fn run(p: ShardPlan, stop: Arc<AtomicBool>) -> ShardResult {
    let pool = Pool::for_target(&p.target, p.pool.clone());
    let lanes = p.tags.len().max(p.pool.size);
    let nodes = lanes.div_ceil(p.pool.size);
    let deadline = Instant::now() + CONNECT_WAIT;
    while (pool.connected() < p.pool.size * nodes || !pool.wait_connected(Duration::ZERO).await)
        && Instant::now() < deadline
        && !stop.load(Ordering::Relaxed)
    {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let connected = pool.connected();
    let mut result = ShardResult {
        connected,
        sets: 0,
        gets: 0,
        hits: 0,
        errors: BTreeMap::new(),
        latency: histogram(),
        corrected: (p.rate > 0).then(histogram),
        missed: 0,
        pace_step: Duration::ZERO,
        elapsed: Duration::ZERO,
    };
    if connected == 0 {
        result.errors.insert("connect", 1);
        pool.close().await;
        return result;
    }
    let start = Instant::now();
    let ctx = Rc::new(Ctx {
        pool,
        mix: p.mix.build(),
        rng: RefCell::new(Rng::for_shard(p.seed, p.index)),
        value: vec![b'x'; p.data_size],
        sched: (p.rate > 0).then(|| Schedule::new(start, p.rate)),
        next: Cell::new(0),
        released: Cell::new(0),
        handed: Cell::new(0),
        idle: RefCell::new(Vec::new()),
        end: p.duration.map(|d| start + d),
        stop,
        tally: RefCell::new(result),
    });
    let depth = p.pipeline.max(1);
    // A lane is one connection's worth of commands: to node `l % nodes` on its connection
    // `l / nodes` (standalone: one node, lane = connection).
    let lane = |l: usize| (l / nodes, p.tags.get(l).map(String::as_str));
    let mut pacer_task = None;
    let slots: Vec<_> = if ctx.sched.is_none() {
        (0..lanes)
            .map(|l| {
                let (conn, tag) = lane(l);
                glommio::spawn_local(batch(ctx.clone(), conn, KeyBuf::tagged(tag), depth))
            })
            .collect()
    } else {
        // Slot i uses lane i / pipeline: `pipeline` commands in flight per connection, each
        // sent when the pacer releases it.
        let step = pace_step(p.pace_step, p.rate);
        ctx.tally.borrow_mut().pace_step = step;
        pacer_task = Some(glommio::spawn_local(pacer(
            ctx.clone(),
            start,
            p.rate,
            step,
        )));
        (0..lanes * depth)
            .map(|i| {
                let (conn, tag) = lane(i / depth);
                glommio::spawn_local(slot(ctx.clone(), conn, KeyBuf::tagged(tag)))
            })
            .collect()
    };
    for s in slots {
        s.await;
    }
    let finished = Instant::now();
    if let Some(t) = pacer_task {
        t.await;
    }
    ctx.pool.close().await;
    let ctx = match Rc::try_unwrap(ctx) {
        Ok(c) => c,
        Err(_) => unreachable!("every slot task has ended"),
    };
    let missed = ctx
        .sched
        .is_some()
        .then(|| ctx.missed(p.rate, start, finished));
    let mut result = ctx.tally.into_inner();
    result.elapsed = finished - start;
    result.missed = missed.unwrap_or(0);
    result
}

/// How many operations of a `rate` schedule are due strictly before `span` after its start
/// (the same integer arithmetic as [`Schedule::at`], so the count matches it exactly).
fn due_before(rate: u64, span: Duration) -> u64 {
    // at(k) = start + floor(k * 1e9 / rate) < start + span  <=>  k < span * rate / 1e9.
    (span.as_nanos() * u128::from(rate))
        .div_ceil(1_000_000_000)
        .min(u128::from(u64::MAX)) as u64
}

/// Closed loop on one connection: `depth` commands in one write, every reply awaited,
/// repeat until the end. Each command's latency runs from the batch's send to the
/// batch's last reply, as redis-benchmark counts it, so a batch records it once.
async fn batch(c: Rc<Ctx>, conn: usize, key: KeyBuf, depth: usize) {
    let mut keys: Vec<KeyBuf> = (0..depth).map(|_| key.clone()).collect();
    let mut ops = Vec::with_capacity(depth);
    // The clock read after a batch's replies serves the next stop check: at -P 16 a clock
    // read per batch shows in the profile.
    let mut now = Instant::now();
    while !c.stopped(now) {
        ops.clear();
        {
            let mut rng = c.rng.borrow_mut();
            for k in keys.iter_mut() {
                let (op, index) = c.mix.next(&mut rng);
                k.set(index);
                ops.push(op);
            }
        }
        let args: Vec<[&[u8]; 3]> = ops
            .iter()
            .zip(&keys)
            .map(|(op, k)| match op {
                Op::Set => [&b"SET"[..], k.get(), &c.value[..]],
                Op::Get => [&b"GET"[..], k.get(), &[][..]],
            })
            .collect();
        let cmds: Vec<&[&[u8]]> = ops
            .iter()
            .zip(&args)
            .map(|(op, a)| match op {
                Op::Set => &a[..],
                Op::Get => &a[..2],
            })
            .collect();
        let sent = Instant::now();
        let replies = c.pool.pipeline_on(conn, &cmds).await;
        now = Instant::now();
        let mut t = c.tally.borrow_mut();
        let mut ok = 0;
        for (op, r) in ops.iter().zip(&replies) {
            ok += u64::from(count(&mut t, *op, r));
        }
        t.latency.saturating_record_n(nanos(now - sent), ok);
    }
}

/// Releases the paced operations: on each point of the grid `start + n * step`, every
/// operation due by then (and before the end), handing as many as there are idle slots to
/// them. Sleeps from one grid point with a due operation to the next; once every operation due
/// before the end is released it waits for the end. It returns only at the end or a stop,
/// which is when `claim` ends idle slots, and wakes them for it.
async fn pacer(c: Rc<Ctx>, start: Instant, rate: u64, step: Duration) {
    let Some(s) = &c.sched else {
        return;
    };
    // Operations due before the end: the last one released is `last - 1`.
    let last = c
        .end
        .map(|e| due_before(rate, e.saturating_duration_since(start)));
    // Sleeps in slices, so a stop is seen within 200 ms however far the next wake is.
    let nap = |until: Instant, now: Instant| {
        until
            .saturating_duration_since(now)
            .min(Duration::from_millis(200))
    };
    while !c.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let due = s.due_by(now).min(last.unwrap_or(u64::MAX));
        let before = c.released.get();
        if due > before {
            c.released.set(due);
            // Idle slots wait only when every released operation is claimed (next == before).
            let mut idle = c.idle.borrow_mut();
            let n = idle
                .len()
                .min(usize::try_from(due - before).unwrap_or(usize::MAX));
            c.handed.set(c.handed.get().max(c.next.get() + n as u64));
            let keep = idle.len() - n;
            for w in idle.drain(keep..) {
                w.wake();
            }
        }
        if last.is_some_and(|l| due >= l) {
            let end = c.end.unwrap_or(now);
            let d = nap(end, now);
            if d.is_zero() {
                break;
            }
            glommio::timer::sleep(d).await;
            continue;
        }
        glommio::timer::sleep(nap(grid_ceil(start, s.at(due), step), now)).await;
    }
    for w in c.idle.borrow_mut().drain(..) {
        w.wake();
    }
}

/// Paced: the next released operation for this slot to claim, or None when the run is over.
/// Before the end a slot takes any released operation; after it, only one that was handed to
/// an idle slot at its release (released at the last grid point, it may be claimed just after
/// the end). Operations left waiting for a busy slot at the end are missed.
async fn claim(c: &Ctx) -> Option<u64> {
    poll_fn(|cx| {
        if c.stop.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        let k = c.next.get();
        let ended = c.ended(Instant::now());
        if k < c.released.get() && (!ended || k < c.handed.get()) {
            c.next.set(k + 1);
            return Poll::Ready(Some(k));
        }
        if ended {
            return Poll::Ready(None);
        }
        c.idle.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    })
    .await
}

/// One paced command slot: claim a released operation, send it, record; until the end.
async fn slot(c: Rc<Ctx>, conn: usize, mut key: KeyBuf) {
    let Some(s) = &c.sched else {
        return;
    };
    while let Some(k) = claim(&c).await {
        let due = s.at(k);
        let (op, index) = c.mix.next(&mut c.rng.borrow_mut());
        let k = key.set(index);
        let sent = Instant::now();
        let r = match op {
            Op::Set => c.pool.cmd_on(conn, &[b"SET", k, &c.value]).await,
            Op::Get => c.pool.cmd_on(conn, &[b"GET", k]).await,
        };
        record(&mut c.tally.borrow_mut(), op, &r, sent, Some(due));
    }
}

fn record(
    t: &mut ShardResult,
    op: Op,
    r: &Result<Reply, RedisError>,
    sent: Instant,
    due: Option<Instant>,
) {
    let done = Instant::now();
    if count(t, op, r) {
        t.latency.saturating_record(nanos(done - sent));
        if let (Some(h), Some(due)) = (&mut t.corrected, due) {
            h.saturating_record(nanos(done.saturating_duration_since(due)));
        }
    }
}

/// Counts one command's outcome; true when it succeeded (its latency is then recorded).
fn count(t: &mut ShardResult, op: Op, r: &Result<Reply, RedisError>) -> bool {
    match r {
        Ok(reply) => {
            match op {
                Op::Set => t.sets += 1,
                Op::Get => {
                    t.gets += 1;
                    t.hits += u64::from(*reply != Reply::Nil);
                }
            }
            true
        }
        Err(e) => {
            *t.errors.entry(e.kind()).or_default() += 1;
            false
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_count_operations_due_before_the_end() {
        // Due at 0, 1 ms, ..., 999 ms: 1000 before 1 s, 1001 before 1 s + 1 ns.
        assert_eq!(due_before(1000, Duration::from_secs(1)), 1000);
        assert_eq!(due_before(1000, Duration::from_nanos(1_000_000_001)), 1001);
        assert_eq!(due_before(1000, Duration::ZERO), 0);
        // Against the schedule itself, at awkward rates.
        let t0 = Instant::now();
        for rate in [3u64, 7, 999, 100_003] {
            let s = Schedule::new(t0, rate);
            for span in [1u64, 333_333_333, 1_000_000_000, 2_500_000_007] {
                let n = due_before(rate, Duration::from_nanos(span));
                let end = t0 + Duration::from_nanos(span);
                assert!(n == 0 || s.at(n - 1) < end, "rate {rate} span {span}");
                assert!(s.at(n) >= end, "rate {rate} span {span}");
            }
        }
    }
}
