//! A pool's connections: one slot per connection, a supervisor task per slot that
//! connects, waits for the connection to end (or for a cutover or shutdown) and reconnects
//! with capped exponential backoff and jitter, and how a command picks a connection.

use super::config::{PoolConfig, DECLARE_EVERY};
use crate::resp::conn::Connection;
use crate::resp::stats::{ConnState, Stats};
use crate::resp::{RedisError, RedisUrl};
use crate::rt::sync::Notify;
use futures_lite::future::or;
use rand_xoshiro::rand_core::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Commands in flight on the connection in use before new ones spill to another.
const STICKY_INFLIGHT: usize = 32;

pub(super) struct Shared {
    pub(super) cfg: PoolConfig,
    pub(super) target: RefCell<RedisUrl>,
    pub(super) generation: Cell<u64>,
    pub(super) slots: Vec<Slot>,
    pub(super) rr: Cell<usize>,
    /// The connection new commands go to while it has room (see `pick`).
    pub(super) current: Cell<usize>,
    /// Unix time at which every slot was first up on the current target (reset by a switch):
    /// when this pool's part of a cutover was done.
    pub(super) all_on_target_at: Cell<Option<f64>>,
    pub(super) stats: Rc<Stats>,
    /// The slots are counted in the pool size gauge (until closed or dropped).
    pub(super) size_counted: Cell<bool>,
    pub(super) closed: Cell<bool>,
    pub(super) rng: RefCell<Xoshiro256PlusPlus>,
}

pub(super) struct Slot {
    pub(super) conn: RefCell<Option<Rc<Connection>>>,
    /// Target generation of `conn` (it can still be the previous one during a cutover).
    pub(super) conn_generation: Cell<u64>,
    pub(super) state: Cell<Option<ConnState>>,
    /// Wakes the supervisor for a cutover or shutdown.
    pub(super) wake: Notify,
}

impl Shared {
    /// Counts a command that found no connection up (never sent) and returns its error.
    pub(super) fn not_connected(&self, args: &[&[u8]]) -> RedisError {
        let cmd = Stats::command_index(args.first().copied().unwrap_or(b""));
        self.stats.count(cmd);
        self.stats.error("not_connected");
        RedisError::NotConnected
    }

    /// Takes this pool's connections out of the pool size gauge (once).
    pub(super) fn uncount_size(&self) {
        if self.size_counted.replace(false) {
            self.stats.pool_size.decrement(self.slots.len() as f64);
        }
    }

    pub(super) fn connected_to_target(&self) -> usize {
        let generation = self.generation.get();
        self.slots
            .iter()
            .filter(|s| s.conn_generation.get() == generation)
            .filter(|s| s.conn.borrow().as_ref().is_some_and(|c| c.is_usable()))
            .count()
    }

    pub(super) fn set_state(&self, i: usize, to: Option<ConnState>) {
        let from = self.slots[i].state.replace(to);
        if from != to {
            self.stats.move_state(from, to);
        }
    }

    /// The connection in use while it has fewer than `STICKY_INFLIGHT` commands in flight,
    /// else the least busy one (which becomes the one in use). Commands issued together then
    /// share one connection and leave in one write: one syscall and one Redis wake-up for
    /// many commands instead of one each. Load spreads once a connection is busy.
    pub(super) fn pick(&self) -> Option<Rc<Connection>> {
        let cur = self.current.get();
        if let Some(c) = self.slots[cur % self.slots.len()]
            .conn
            .borrow()
            .as_ref()
            .filter(|c| c.is_usable() && c.inflight() < STICKY_INFLIGHT)
        {
            return Some(c.clone());
        }
        let (i, c) = self.least_busy()?;
        self.current.set(i);
        Some(c)
    }

    /// Connection `index` (modulo the pool size) if it is up, else `pick`'s choice.
    pub(super) fn pick_at(&self, index: usize) -> Option<Rc<Connection>> {
        let slot = &self.slots[index % self.slots.len()];
        if let Some(c) = slot.conn.borrow().as_ref().filter(|c| c.is_usable()) {
            return Some(c.clone());
        }
        self.pick()
    }

    /// Least in-flight usable connection, scanning from a rotating start so ties spread.
    pub(super) fn least_busy(&self) -> Option<(usize, Rc<Connection>)> {
        let n = self.slots.len();
        let start = self.rr.get();
        self.rr.set(start.wrapping_add(1));
        let mut best: Option<(usize, usize, Rc<Connection>)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let slot = self.slots[i].conn.borrow();
            let Some(c) = slot.as_ref().filter(|c| c.is_usable()) else {
                continue;
            };
            let load = c.inflight();
            if best.as_ref().is_none_or(|(b, _, _)| load < *b) {
                best = Some((load, i, c.clone()));
                if load == 0 {
                    break;
                }
            }
        }
        best.map(|(_, i, c)| (i, c))
    }

    /// Capped exponential backoff with jitter: uniform in [min, min * 2^failures] (capped),
    /// so reconnecting slots and shards spread out but never spin.
    pub(super) fn backoff(&self, failures: u32) -> Duration {
        let min = self
            .cfg
            .backoff_min
            .max(Duration::from_millis(1))
            .as_micros() as u64;
        let max = (self.cfg.backoff_max.as_micros() as u64).max(min);
        let cap = min.saturating_mul(1u64 << failures.min(30)).min(max);
        let jitter = self.rng.borrow_mut().next_u64() % (cap - min + 1);
        Duration::from_micros(min + jitter)
    }

    pub(super) fn stale(&self, generation: u64) -> bool {
        self.closed.get() || self.generation.get() != generation
    }
}

/// Stops routing to `conn` and lets its in-flight commands finish in the background.
pub(super) fn retire(sh: &Shared, conn: Rc<Connection>) {
    conn.stop_taking_commands();
    let deadline = Instant::now() + sh.cfg.command_timeout;
    glommio::spawn_local(async move { conn.drain(deadline).await }).detach();
}

/// Declares the run again every `DECLARE_EVERY` while `conn` lives; never returns (a pool
/// without a declaration waits forever). A failure is logged and counted; the key still has
/// at least an hour to live, and the next attempt comes in `DECLARE_EVERY`.
async fn redeclare(cfg: &PoolConfig, conn: &Connection) {
    let Some(d) = &cfg.declare_run else {
        return futures_lite::future::pending().await;
    };
    loop {
        glommio::timer::sleep(DECLARE_EVERY).await;
        if let Err(e) = d.send(conn).await {
            conn.count_error(&e);
            tracing::warn!(kind = e.kind(), error = %e, "declaring the run in a:runs again failed");
        }
    }
}

pub(super) async fn supervise(sh: Rc<Shared>, i: usize) {
    let slot = &sh.slots[i];
    let mut failures: u32 = 0;
    let mut attempts: u64 = 0;
    // During a cutover: the previous target's connection, still in the slot and serving
    // until the new one is up.
    let mut previous: Option<Rc<Connection>> = None;
    while !sh.closed.get() {
        if attempts > 0 {
            sh.stats.reconnects.increment(1);
        }
        attempts += 1;
        let url = sh.target.borrow().clone();
        let generation = sh.generation.get();
        if previous.is_none() {
            sh.set_state(i, Some(ConnState::Connecting));
        }
        let open = async { Some(Connection::open(&url, &sh.cfg, sh.stats.clone()).await) };
        let cancelled = async {
            loop {
                slot.wake.notified().await;
                if sh.stale(generation) {
                    return None;
                }
            }
        };
        match or(open, cancelled).await {
            None => continue,
            Some(Ok(conn)) => {
                if sh.stale(generation) {
                    conn.close();
                    continue;
                }
                failures = 0;
                *slot.conn.borrow_mut() = Some(conn.clone());
                slot.conn_generation.set(generation);
                if let Some(old) = previous.take() {
                    retire(&sh, old);
                }
                sh.set_state(i, Some(ConnState::Connected));
                if sh.all_on_target_at.get().is_none() && sh.connected_to_target() == sh.slots.len()
                {
                    sh.all_on_target_at
                        .set(Some(crate::workload::time::unix_now()));
                }
                let woken = async {
                    loop {
                        slot.wake.notified().await;
                        if sh.stale(generation) {
                            return;
                        }
                    }
                };
                or(or(conn.closed(), woken), redeclare(&sh.cfg, &conn)).await;
                if !conn.is_closed() {
                    if sh.closed.get() {
                        slot.conn.borrow_mut().take();
                        break; // `Pool::close` drains it.
                    }
                    // Cutover: keep serving on this connection while the new one connects.
                    previous = Some(conn);
                    continue;
                }
                slot.conn.borrow_mut().take();
                sh.set_state(i, Some(ConnState::Disconnected));
                failures = 1;
            }
            Some(Err(e)) => {
                if let Some(old) = previous.take() {
                    slot.conn.borrow_mut().take();
                    retire(&sh, old);
                }
                sh.set_state(i, Some(ConnState::Disconnected));
                if failures == 0 {
                    tracing::warn!(url = %url, kind = e.kind(), error = %e, "redis connect failed");
                } else {
                    tracing::debug!(url = %url, kind = e.kind(), error = %e, "redis connect failed");
                }
                failures = failures.saturating_add(1);
            }
        }
        let nap = sh.backoff(failures);
        let woken = async {
            loop {
                slot.wake.notified().await;
                if sh.stale(generation) {
                    return;
                }
            }
        };
        or(glommio::timer::sleep(nap), woken).await;
    }
    sh.set_state(i, None);
}
