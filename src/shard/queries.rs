//! The query path: cache-aside reads of dashboards and filtered reports, and never-cached
//! real-time reads of live counters.
//!
//! Hit ratio: with a warm cache nearly every dashboard lookup hits, so the ratio would sit
//! near 100% whatever `CACHE_HIT_TARGET` says. Real dashboards also see one-off queries
//! (custom ranges, new filters) that miss. Each shard steers the share of such ad-hoc
//! queries once a second so the hit ratio of cacheable queries meets the target; after a
//! cache loss the natural hit ratio drops, the ad-hoc share falls to zero, and the ratio
//! dips and recovers on its own as the cache refills. The steered ratio is only what the
//! target asks for: the natural ratio (lookups on the queries' own keys, ad-hoc ones left
//! out) and the ad-hoc share are reported beside it, and the migration report measures
//! the cache's recovery on the natural one (docs/architecture.md, "Cache hit ratio: natural
//! and steered").

use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::stats::CacheOutcome;
use super::Shard;
use crate::resp::{RedisError, Reply};
use crate::workload::{keys, time, EventType, QueryType, FILTER_WINDOWS};

pub fn start(s: Rc<Shard>, due: Instant) {
    s.inflight.set(s.inflight.get() + 1);
    glommio::spawn_local(async move {
        run(&s, due).await;
        s.inflight.set(s.inflight.get() - 1);
    })
    .detach();
}

enum Failure {
    Redis(&'static str),
    /// The cache-miss read failed; true when it timed out.
    Db {
        timeout: bool,
    },
}

impl From<crate::pg::DbError> for Failure {
    fn from(e: crate::pg::DbError) -> Failure {
        Failure::Db {
            timeout: e.is_timeout(),
        }
    }
}

impl From<RedisError> for Failure {
    fn from(e: RedisError) -> Failure {
        Failure::Redis(e.kind())
    }
}

async fn run(s: &Shard, due: Instant) {
    let started = Instant::now();
    let (qt, org, ty, window, adhoc) = {
        let mut rng = s.rng.borrow_mut();
        let qt = s.query_pick.sample(&mut rng);
        let org = s.p.orgs[s.org_pick.sample(&mut rng) as usize];
        let ty = EventType::ALL[rng.below(5) as usize];
        let window = s.windows[rng.below(s.windows.len() as u64) as usize];
        let adhoc = (qt != QueryType::Realtime && rng.unit() < s.adhoc_fraction.get())
            .then(|| rng.next_u64());
        (qt, org, ty, window, adhoc)
    };
    let result = match qt {
        QueryType::Realtime => realtime(s, org).await.map(|()| CacheOutcome::None),
        _ => {
            let mut key = Vec::with_capacity(40);
            match (adhoc, qt) {
                (Some(nonce), _) => keys::adhoc(&mut key, org, nonce),
                (None, QueryType::Dashboard) => keys::dashboard(&mut key, org),
                (None, _) => keys::filtered(&mut key, org, ty, window),
            }
            let r = cache_aside(s, &key, qt, org, ty, window).await;
            if adhoc.is_none() {
                if let Ok(c) = r {
                    let mut st = s.stats.borrow_mut();
                    let hit = u64::from(c == CacheOutcome::Hit);
                    st.counts.natural_lookups += 1;
                    st.counts.natural_hits += hit;
                    st.steer_lookups += 1;
                    st.steer_hits += hit;
                }
            }
            r
        }
    };
    let cache = match result {
        Ok(c) => {
            s.stats.borrow_mut().outages.ok(s.p.index, started);
            c
        }
        Err(Failure::Redis(kind)) => {
            s.stats.borrow_mut().redis_failed(started, kind);
            CacheOutcome::Error
        }
        Err(Failure::Db { timeout }) => {
            let kind = if timeout {
                "postgres_timeout"
            } else {
                "postgres"
            };
            s.stats.borrow_mut().counts.error(kind);
            CacheOutcome::Error
        }
    };
    let done = Instant::now();
    s.record_query(
        qt,
        cache,
        done.saturating_duration_since(due),
        done.saturating_duration_since(started),
    );
}

async fn cache_aside(
    s: &Shard,
    key: &[u8],
    qt: QueryType,
    org: u32,
    ty: EventType,
    window: u32,
) -> Result<CacheOutcome, Failure> {
    if let Reply::Bulk(_) = s.pool.cmd(&[b"GET", key]).await? {
        return Ok(CacheOutcome::Hit);
    }
    // The Postgres read futures are large (about 3 KiB); boxed here, on the miss path
    // only, every query's task stays small and cheap to spawn.
    let value = match qt {
        QueryType::Dashboard => Box::pin(dashboard_value(s, org)).await?,
        _ => Box::pin(filtered_value(s, org, ty, window)).await?,
    };
    let ttl = s.p.cache_ttl.as_secs().to_string();
    s.pool
        .cmd(&[b"SET", key, value.as_bytes(), b"EX", ttl.as_bytes()])
        .await?;
    Ok(CacheOutcome::Miss)
}

/// The dashboard document of an organization, computed from the hourly rollups.
async fn dashboard_value(s: &Shard, org: u32) -> Result<String, Failure> {
    let now = time::unix_now() as i64;
    let from = time::bucket_hours_ago(now, s.p.time_buckets.saturating_sub(1));
    let totals = s.reader.dashboard(org as i32, from).await?;
    let mut v = format!(
        "{{\"org\":{org},\"hours\":{},\"computed_at\":{now}",
        s.p.time_buckets
    );
    for ty in EventType::ALL {
        let _ = write!(v, ",\"{}\":{}", ty.as_str(), totals[ty as usize]);
    }
    let views = totals[EventType::PageView as usize];
    let conv = totals[EventType::Conversion as usize];
    let rate = if views > 0 {
        conv as f64 / views as f64
    } else {
        0.0
    };
    let _ = write!(v, ",\"conversion_rate\":{rate:.4}}}");
    Ok(v)
}

async fn filtered_value(
    s: &Shard,
    org: u32,
    ty: EventType,
    window: u32,
) -> Result<String, Failure> {
    let now = time::unix_now() as i64;
    let from = time::bucket_hours_ago(now, window.saturating_sub(1));
    let n = s.reader.filtered(org as i32, ty.code(), from).await?;
    Ok(format!(
        "{{\"org\":{org},\"type\":\"{}\",\"hours\":{window},\"events\":{n},\"computed_at\":{now}}}",
        ty.as_str()
    ))
}

/// Live counters of the current hour and its unique users, straight from Redis.
async fn realtime(s: &Shard, org: u32) -> Result<(), Failure> {
    let bucket = time::bucket_of(time::unix_now() as i64);
    let mut counters: Vec<Vec<u8>> = Vec::with_capacity(6);
    for ty in EventType::ALL {
        let mut k = Vec::with_capacity(40);
        keys::counter(&mut k, org, ty, bucket);
        counters.push(k);
    }
    let mut uniques = Vec::with_capacity(32);
    keys::uniques(&mut uniques, org, bucket);
    let mget: Vec<&[u8]> = std::iter::once(&b"MGET"[..])
        .chain(counters.iter().map(|k| k.as_slice()))
        .collect();
    let replies = s.pool.pipeline(&[&mget, &[b"PFCOUNT", &uniques]]).await;
    for r in replies {
        r?;
    }
    Ok(())
}

/// Refreshes the cached reports of every organization this shard owns (the dashboard
/// overview and every filtered view), every `WARMUP_INTERVAL`, first right at start, a
/// few at a time. Warmed entries live until just after the next refresh, so a steady run
/// does not see them expire; on-demand entries use `CACHE_TTL`.
pub async fn warmup_loop(s: &Rc<Shard>, stop: &AtomicBool) {
    const PARALLEL: usize = 16;
    let ttl =
        s.p.cache_ttl
            .max(s.p.warmup_interval + Duration::from_secs(30))
            .as_secs()
            .to_string();
    let windows = windows(s.p.time_buckets);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            // The whole wait: the shard cancels this loop when it stops.
            glommio::timer::sleep(next - now).await;
            continue;
        }
        next = now + s.p.warmup_interval;
        let started = Instant::now();
        // (org, None) = dashboard; (org, Some((type, window))) = a filtered view.
        let mut jobs: Vec<(u32, Option<(EventType, u32)>)> = Vec::new();
        for &org in &s.p.orgs {
            jobs.push((org, None));
        }
        for &org in &s.p.orgs {
            for ty in EventType::ALL {
                for &w in &windows {
                    jobs.push((org, Some((ty, w))));
                }
            }
        }
        let mut refreshed = 0u64;
        for chunk in jobs.chunks(PARALLEL) {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let tasks: Vec<_> = chunk
                .iter()
                .map(|&(org, view)| {
                    let (s, ttl) = (s.clone(), ttl.clone());
                    glommio::spawn_local(async move {
                        let mut key = Vec::with_capacity(40);
                        let value = match view {
                            None => {
                                keys::dashboard(&mut key, org);
                                dashboard_value(&s, org).await
                            }
                            Some((ty, w)) => {
                                keys::filtered(&mut key, org, ty, w);
                                filtered_value(&s, org, ty, w).await
                            }
                        };
                        let Ok(v) = value else {
                            return false;
                        };
                        s.pool
                            .cmd(&[b"SET", &key, v.as_bytes(), b"EX", ttl.as_bytes()])
                            .await
                            .is_ok()
                    })
                })
                .collect();
            for t in tasks {
                if t.await {
                    refreshed += 1;
                    s.metrics.warmups.increment(1);
                }
            }
        }
        s.stats.borrow_mut().counts.warmups += refreshed;
        tracing::debug!(
            shard = s.p.index,
            refreshed,
            secs = started.elapsed().as_secs_f64(),
            "cache warmup done"
        );
    }
}

/// Filter windows that fit in the retained hours.
pub fn windows(time_buckets: u32) -> Vec<u32> {
    let w: Vec<u32> = FILTER_WINDOWS
        .iter()
        .copied()
        .filter(|&w| w <= time_buckets)
        .collect();
    if w.is_empty() {
        vec![1]
    } else {
        w
    }
}

/// Once a second: set the ad-hoc share so that (1 - share) x natural hit ratio = target.
pub fn steer_hit_ratio(s: &Shard) {
    let (hits, lookups) = {
        let mut st = s.stats.borrow_mut();
        let r = (st.steer_hits, st.steer_lookups);
        st.steer_hits = 0;
        st.steer_lookups = 0;
        r
    };
    if lookups < 20 {
        return;
    }
    let natural = hits as f64 / lookups as f64;
    let want = if natural > s.p.cache_hit_target {
        (1.0 - s.p.cache_hit_target / natural).clamp(0.0, 0.99)
    } else {
        0.0
    };
    // Smooth, so one noisy second does not swing the share.
    let cur = s.adhoc_fraction.get();
    s.adhoc_fraction.set(cur + (want - cur) * 0.5);
}
