//! The event path: pick a tenant, a user and a type; INCR the hour's counter, add the user to
//! the hour's unique-user HyperLogLog and set both keys' expiry (one pipelined write); record
//! the outcome of the INCR with the event's Postgres row.
//!
//! INCR is never retried: a retry after a lost reply could apply it twice, and the outcome
//! `unknown` is exactly what `verify` needs to bound the counter.

use std::io::Write;
use std::rc::Rc;
use std::time::Instant;

use super::stats::{Op, Skip};
use super::{push_row, Shard};
use crate::pg::writer::EventRow;
use crate::workload::{keys, time, Outcome};

/// Starts one event due at `due` as its own task (or skips it when the writer is behind).
pub fn start(s: Rc<Shard>, due: Instant) {
    if s.backlog.pending() >= s.p.backlog_cap {
        s.record_skip(Op::Event, Skip::DbBacklog, 1);
        return;
    }
    // Reserve the row's place before the write, so the cap holds across in-flight events.
    s.backlog
        .pending
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    s.inflight.set(s.inflight.get() + 1);
    glommio::spawn_local(async move {
        run(&s, due).await;
        s.inflight.set(s.inflight.get() - 1);
    })
    .detach();
}

async fn run(s: &Shard, due: Instant) {
    let (org_rank, org, user, ty) = {
        let mut rng = s.rng.borrow_mut();
        let org_rank = s.org_pick.sample(&mut rng) as usize;
        let org = s.p.orgs[org_rank];
        let rank = s.user_pick.sample(&mut rng);
        // Rotate ranks per organization so each has different power users.
        let user = ((rank + u64::from(org) * 7) % u64::from(s.p.users_per_org)) as u32 + 1;
        (org_rank, org, user, s.event_pick.sample(&mut rng))
    };
    let ts_micros = time::unix_micros_now();
    let unix = ts_micros.div_euclid(1_000_000);
    let bucket = time::bucket_of(unix);

    let mut counter = Vec::with_capacity(40);
    let mut uniques = Vec::with_capacity(32);
    let mut user_buf = Vec::with_capacity(10);
    keys::counter(&mut counter, org, ty, bucket);
    keys::uniques(&mut uniques, org, bucket);
    let _ = write!(user_buf, "{user}");

    // Every event sets the expiry of its keys in the same pipeline: the time is fixed per
    // hour, so repeating it is harmless, and a counter whose creating INCR lost its reply (or
    // was made by a run that crashed) still gets one. `TIME_BUCKETS` hours after its hour ends.
    let expire_at =
        time::bucket_start(bucket).unwrap_or(unix) + 3600 * (i64::from(s.p.time_buckets) + 1);
    let mut at = Vec::with_capacity(12);
    let _ = write!(at, "{expire_at}");

    let started = Instant::now();
    let replies = s
        .pool
        .pipeline(&[
            &[b"INCR", &counter],
            &[b"PFADD", &uniques, &user_buf],
            &[b"EXPIREAT", &counter, &at],
            &[b"EXPIREAT", &uniques, &at],
        ])
        .await;
    let outcome = match replies.first() {
        Some(Ok(_)) => {
            s.stats.borrow_mut().outages.ok(s.p.index, started);
            Outcome::Acked
        }
        Some(Err(e)) => {
            s.stats.borrow_mut().redis_failed(started, e.kind());
            if e.outcome_unknown() {
                Outcome::Unknown
            } else {
                Outcome::Failed
            }
        }
        None => Outcome::Failed,
    };
    if outcome == Outcome::Acked {
        for e in replies.iter().skip(1).filter_map(|r| r.as_ref().err()) {
            s.stats.borrow_mut().counts.error(e.kind());
        }
    }
    let done = Instant::now();

    push_row(
        s,
        EventRow {
            event_id: ((s.p.index as i64) << 48) | s.next_seq.replace(s.next_seq.get() + 1),
            ts_micros,
            bucket,
            org: org as i32,
            user: user as i32,
            ty: ty.code(),
            outcome: outcome.code(),
        },
    );
    s.record_event(ty, outcome, done.saturating_duration_since(due));
    let mut st = s.stats.borrow_mut();
    if let Some(seen) = st.org_last_seen.get_mut(org_rank) {
        *seen = unix as u32;
    }
    st.users_now
        .insert((u64::from(org) << 32) | u64::from(user));
}
