//! Routing: a command (or a pipeline of one slot) to its slot's owner, and the
//! redirections it is answered with followed (see the module doc of `cluster`).

use super::{redirect, slot, Cluster};
use crate::resp::cluster::redirect::{decide, Action, Redirect, REDIRECT_KINDS};
use crate::resp::stats::Stats;
use crate::resp::{Pool, RedisError, Reply};

/// An error that says the node's connection is gone or could not be made: the map may be
/// stale (a killed primary whose replica takes over), so the router asks for a refresh.
fn node_unreachable(e: &RedisError) -> bool {
    matches!(
        e,
        RedisError::NotConnected
            | RedisError::Connect { .. }
            | RedisError::Closed { .. }
            | RedisError::Io { .. }
            | RedisError::Timeout { .. }
    )
}

fn as_redirect(r: &Result<Reply, RedisError>) -> Option<Redirect> {
    match r {
        Err(RedisError::Server { msg, .. }) => Redirect::parse(msg),
        _ => None,
    }
}

impl Cluster {
    fn count_redirect(&self, r: &Redirect) {
        if let Some(i) = REDIRECT_KINDS.iter().position(|k| *k == r.kind()) {
            self.redirects[i].increment(1);
            redirect::seen(i);
        }
    }

    /// Counts `cmd` as failed with `e` without sending it; returns `e`.
    fn fail(&self, cmd: &[&[u8]], e: RedisError) -> RedisError {
        self.stats
            .count(Stats::command_index(cmd.first().copied().unwrap_or(b"")));
        self.stats.error(e.kind());
        e
    }

    /// Fails every command of `cmds` with `e`, counted (for commands never sent).
    fn fail_all(&self, cmds: &[&[&[u8]]], e: RedisError) -> Vec<Result<Reply, RedisError>> {
        cmds.iter().map(|c| Err(self.fail(c, e.clone()))).collect()
    }

    /// Whether `r` is a redirection to follow; a lost or unreachable node asks for a map
    /// refresh (rate-limited by the refresh task). No allocation unless it is a redirection.
    fn check(&self, r: &Result<Reply, RedisError>) -> bool {
        match r {
            Ok(_) => false,
            Err(RedisError::Server { msg, .. }) => Redirect::parse(msg).is_some(),
            Err(e) => {
                if node_unreachable(e) {
                    self.refresh.notify();
                }
                false
            }
        }
    }

    /// The slot of `cmds` (`Err`: they span slots, a bug of ours, already failed).
    fn slot_of(&self, cmds: &[&[&[u8]]]) -> Result<Option<u16>, RedisError> {
        slot::pipeline_slot(cmds).map_err(|x| {
            debug_assert!(false, "commands across slots {} and {}", x.first, x.other);
            RedisError::Cluster {
                kind: "cross_slot",
                msg: format!(
                    "keys in different cluster slots ({} and {}): not sent",
                    x.first, x.other
                ),
            }
        })
    }

    /// Whether a workload pool must still refuse commands: as a standalone connection takes
    /// no command before it declared the run, no counter lands on a cluster that does not
    /// name the run.
    fn undeclared(&self) -> bool {
        self.declare.is_some() && !self.ready.get()
    }

    /// Commands of one slot (or keyless) sent together to the slot's owner, on connection
    /// `on` of that node's pool when given; redirected ones are resent together (see the
    /// module doc). One result per command, in order.
    pub(crate) async fn run(
        &self,
        cmds: &[&[&[u8]]],
        on: Option<usize>,
    ) -> Vec<Result<Reply, RedisError>> {
        if self.undeclared() {
            return self.fail_all(cmds, RedisError::NotConnected);
        }
        self.route(cmds, on).await
    }

    /// `run` for one command: no allocation for routing unless it is redirected.
    pub(crate) async fn run_one(
        &self,
        cmd: &[&[u8]],
        on: Option<usize>,
    ) -> Result<Reply, RedisError> {
        if self.undeclared() {
            return Err(self.fail(cmd, RedisError::NotConnected));
        }
        let cmds = [cmd];
        let slot = match self.slot_of(&cmds) {
            Ok(s) => s,
            Err(e) => return Err(self.fail(cmd, e)),
        };
        let Some(pool) = self.owner(slot) else {
            self.refresh.notify();
            return Err(self.fail(cmd, RedisError::NotConnected));
        };
        let r = pool.direct_cmd(on, cmd).await;
        if !self.check(&r) {
            return r;
        }
        let mut out = self.follow(&cmds, on, slot, vec![r]).await;
        out.pop().unwrap_or(Err(RedisError::NotConnected))
    }

    /// `run` without the wait for the run's declaration (which goes through here). The
    /// first attempt allocates nothing beyond the node pool's own pipeline; only a
    /// redirection does (`follow`).
    pub(super) async fn route(
        &self,
        cmds: &[&[&[u8]]],
        on: Option<usize>,
    ) -> Vec<Result<Reply, RedisError>> {
        let slot = match self.slot_of(cmds) {
            Ok(s) => s,
            Err(e) => return self.fail_all(cmds, e),
        };
        let Some(pool) = self.owner(slot) else {
            self.refresh.notify();
            return self.fail_all(cmds, RedisError::NotConnected);
        };
        let replies = match cmds.len() {
            1 => vec![pool.direct_cmd(on, cmds[0]).await],
            _ => pool.direct_pipeline(on, cmds).await,
        };
        // Every reply is checked (each may ask for a refresh).
        let mut redirected = false;
        for r in &replies {
            redirected |= self.check(r);
        }
        if !redirected {
            return replies;
        }
        self.follow(cmds, on, slot, replies).await
    }

    /// Resends the commands of `out` answered with a redirection until none is (or the
    /// bound is reached); `out` holds the first attempt's replies, one per command.
    async fn follow(
        &self,
        cmds: &[&[&[u8]]],
        on: Option<usize>,
        slot: Option<u16>,
        mut out: Vec<Result<Reply, RedisError>>,
    ) -> Vec<Result<Reply, RedisError>> {
        let mut taken = 0;
        loop {
            // The commands whose last reply is a redirection (the others have their final
            // reply), and the first of those redirections.
            let mut pending = Vec::new();
            let mut redirect = None;
            for (i, r) in out.iter().enumerate() {
                if let Some(rd) = as_redirect(r) {
                    redirect.get_or_insert(rd);
                    pending.push(i);
                }
            }
            let Some(rd) = redirect else {
                return out;
            };
            self.count_redirect(&rd);
            let mut ask = None;
            match decide(&rd, taken) {
                Action::GiveUp => {
                    for i in pending {
                        // Until resent, the reply stands: the loop error keeps its message.
                        let last = match &out[i] {
                            Err(e) => e.to_string(),
                            Ok(_) => String::new(),
                        };
                        let e = RedisError::Cluster {
                            kind: "redirect_loop",
                            msg: format!(
                                "{} redirections, the last: {last}",
                                redirect::MAX_REDIRECTS + 1
                            ),
                        };
                        self.stats.error(e.kind());
                        out[i] = Err(e);
                    }
                    return out;
                }
                Action::Moved { slot: s, addr } => {
                    // The map points other commands there once a connection is up, so they
                    // do not fail not_connected while it is made (they get MOVED meanwhile).
                    let n = self.redirected_to(&addr).await;
                    self.map.borrow_mut().set(s, n);
                    if let Some(node) = &self.nodes.borrow()[n] {
                        node.in_map.set(true);
                    }
                    self.refresh.notify();
                }
                Action::Ask { addr } => ask = self.node_pool(self.redirected_to(&addr).await),
                Action::Backoff(d) => glommio::timer::sleep(d).await,
                Action::Refresh(d) => {
                    glommio::timer::sleep(d).await;
                    self.await_refresh().await;
                }
            }
            taken += 1;
            let asking = ask.is_some();
            let Some(pool) = ask.or_else(|| self.owner(slot)) else {
                self.refresh.notify();
                for i in pending {
                    out[i] = Err(self.fail(cmds[i], RedisError::NotConnected));
                }
                return out;
            };
            // A node just learnt of from a refresh: as in `redirected_to`.
            if pool.connected() == 0 {
                pool.wait_connected(self.cfg.connect_timeout).await;
            }
            let replies = send(&pool, cmds, &pending, asking, on).await;
            for (i, r) in pending.into_iter().zip(replies) {
                self.check(&r);
                out[i] = r;
            }
        }
    }
}

/// Sends `cmds[pending]` to `pool` (each after an `ASKING` when `asking`), on connection
/// `on` when given; one result per pending command.
async fn send(
    pool: &Pool,
    cmds: &[&[&[u8]]],
    pending: &[usize],
    asking: bool,
    on: Option<usize>,
) -> Vec<Result<Reply, RedisError>> {
    const ASKING: &[&[u8]] = &[b"ASKING"];
    if !asking && pending.len() == cmds.len() {
        // The first attempt: no copy of the command list.
        return match cmds.len() {
            1 => vec![pool.direct_cmd(on, cmds[0]).await],
            _ => pool.direct_pipeline(on, cmds).await,
        };
    }
    let mut sub: Vec<&[&[u8]]> = Vec::with_capacity(pending.len() * (1 + usize::from(asking)));
    for i in pending {
        if asking {
            sub.push(ASKING);
        }
        sub.push(cmds[*i]);
    }
    let replies = match sub.len() {
        1 => vec![pool.direct_cmd(on, sub[0]).await],
        _ => pool.direct_pipeline(on, &sub).await,
    };
    match asking {
        // The reply to ASKING is OK (or the same failure as the command's).
        true => replies.into_iter().skip(1).step_by(2).collect(),
        false => replies,
    }
}
