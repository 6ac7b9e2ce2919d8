//! A live cutover of a pool to another target (make before break), and closing a pool.

use super::Pool;
use crate::resp::conn::Connection;
use crate::resp::{RedisUrl, Target};
use std::rc::Rc;
use std::time::{Duration, Instant};

impl Pool {
    /// Live cutover to `target`, make before break.
    ///
    /// - Standalone to standalone: every slot connects to the new server; each keeps serving
    ///   on its old connection until the new one is up, then the old one stops taking
    ///   commands and its in-flight ones finish or fail. If the new target cannot be
    ///   reached, the old connection is retired at the first failed attempt and the slot
    ///   keeps retrying.
    /// - To or from a cluster, or to another cluster: a new pool of the target's kind starts
    ///   beside the current one, which keeps serving until the new one is up (a connection,
    ///   or for a cluster its map loaded and the run declared) or `HANDOVER_WAIT` has passed
    ///   (an unreachable target: its errors then show). Then every new command goes to the
    ///   new pool and the old one drains and closes. A later switch abandons a handover not
    ///   yet done.
    pub fn set_target(self: &Rc<Pool>, target: Target) {
        let generation = self.switch_generation.get() + 1;
        self.switch_generation.set(generation);
        if let Some(abandoned) = self.handover.borrow_mut().take() {
            close_later(abandoned, false);
        }
        let serving = self.next().unwrap_or_else(|| self.clone());
        if !target.cluster && !serving.kind_cluster {
            serving.switch_direct(target.first().clone());
            return;
        }
        tracing::info!(from = %serving.label.borrow(), to = %target.label(),
            cluster = target.cluster, "redis target switch to a new pool");
        let fresh = Pool::for_target(&target, self.sh.cfg.clone());
        *self.handover.borrow_mut() = Some(fresh.clone());
        let pool = Rc::downgrade(self);
        let wait = HANDOVER_WAIT.max(self.sh.cfg.connect_timeout * 2);
        glommio::spawn_local(async move {
            fresh.wait_connected(wait).await;
            let Some(pool) = pool.upgrade() else { return };
            if pool.switch_generation.get() != generation {
                return; // A later switch closed `fresh`.
            }
            pool.handover.borrow_mut().take();
            match pool.next.replace(Some(fresh.clone())) {
                Some(old) => close_later(old, false),
                None => close_later(pool.clone(), true),
            }
            drop(pool);
            tracing::info!(to = %fresh.label.borrow(), up = fresh.up(), "redis target switch handed over");
            // The cutover is complete when the new pool is fully up, and not before the
            // commands went to it.
            fresh.sh.all_on_target_at.set(None);
            while !fresh.sh.closed.get() {
                let full = match &fresh.cluster {
                    Some(c) => c.ready(),
                    None => fresh.sh.connected_to_target() == fresh.sh.slots.len(),
                };
                if full {
                    fresh
                        .sh
                        .all_on_target_at
                        .set(Some(crate::workload::time::unix_now()));
                    return;
                }
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        })
        .detach();
    }

    /// The standalone cutover of `set_target` on this pool's own connections.
    fn switch_direct(&self, url: RedisUrl) {
        tracing::info!(from = %self.sh.target.borrow(), to = %url, "redis target switch");
        *self.label.borrow_mut() = url.redacted();
        *self.sh.target.borrow_mut() = url;
        self.sh.generation.set(self.sh.generation.get() + 1);
        self.sh.all_on_target_at.set(None);
        // Make before break: each slot keeps serving on its old connection until its
        // connection to the new target is up (or failed), then retires the old one.
        for s in &self.sh.slots {
            s.wake.notify();
        }
    }

    /// Stops the supervisors, lets in-flight commands finish (up to `command_timeout`),
    /// closes the sockets.
    pub async fn close(&self) {
        self.switch_generation.set(self.switch_generation.get() + 1);
        let handover = self.handover.borrow_mut().take();
        if let Some(p) = handover {
            p.close_own().await;
        }
        let next = self.next();
        if let Some(n) = next {
            n.close_own().await;
        }
        self.close_own().await;
    }

    /// `close` for this pool's own connections or router (not its successor's).
    async fn close_own(&self) {
        if let Some(c) = &self.cluster {
            if !self.sh.closed.replace(true) {
                c.close().await;
                self.supervisors.borrow_mut().clear();
            }
            return;
        }
        self.close_direct().await;
    }

    /// `close` for a pool with connections of its own (a standalone pool, a cluster node's).
    pub(crate) async fn close_direct(&self) {
        if self.sh.closed.replace(true) {
            return;
        }
        let conns: Vec<Rc<Connection>> = self
            .sh
            .slots
            .iter()
            .filter_map(|s| s.conn.borrow_mut().take())
            .collect();
        for s in &self.sh.slots {
            s.wake.notify();
        }
        let deadline = Instant::now() + self.sh.cfg.command_timeout;
        for c in &conns {
            c.stop_taking_commands();
        }
        for c in conns {
            c.drain(deadline).await;
        }
        let tasks = std::mem::take(&mut *self.supervisors.borrow_mut());
        for t in tasks {
            t.await;
        }
        self.sh.uncount_size();
    }
}

/// How long a switch that needs a new pool keeps the old one serving while the new one
/// connects (at least twice the connect timeout).
const HANDOVER_WAIT: Duration = Duration::from_secs(3);

/// Closes `pool` in the background: its own connections (`own`: the pool itself, serving
/// under a successor now) or all of it (a pool that was a successor or a handover).
fn close_later(pool: Rc<Pool>, own: bool) {
    glommio::spawn_local(async move {
        match own {
            true => pool.close_own().await,
            false => pool.close().await,
        }
    })
    .detach();
}
