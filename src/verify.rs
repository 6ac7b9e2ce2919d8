//! `analytics-demo verify`: does Redis hold every acknowledged increment?
//!
//! For every counter key still within retention, Postgres knows how many increments were
//! acknowledged (`acked`) and how many had no reply (`unknown`). The Redis value must satisfy
//! `acked <= value <= acked + unknown`. Below is loss; above is a phantom increment.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::VerifyArgs;
use crate::resp::{Connection, PoolConfig, Protocol, RedisUrl, Reply};
use crate::workload::{keys, time, EventType};

#[derive(Serialize, Default, Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub keys_checked: u64,
    pub keys_matching: u64,
    /// Keys whose value is below the acknowledged count (including missing keys).
    pub keys_with_loss: u64,
    pub lost_acknowledged_increments: u64,
    pub keys_with_phantoms: u64,
    pub phantom_increments: u64,
    /// Keys with acknowledged increments that do not exist in Redis at all.
    pub missing_keys: u64,
    /// Sum of `unknown` outcomes: how far above `acked` a value may legitimately be.
    pub unknown_budget: u64,
    /// Unknown increments that did land (value - acked, where within budget).
    pub unknown_applied: u64,
    pub acked_total: u64,
    /// Counter keys found in Redis that Postgres has no event for.
    pub unexpected_keys: u64,
    pub unique_user_keys: u64,
    pub cache_keys: u64,
    pub retention_hours: u32,
    /// RESP version of the connection that read the counters (2 or 3).
    pub redis_protocol: u8,
    pub clean: bool,
}

/// One counter's ground truth.
#[derive(Clone, Debug)]
pub struct Truth {
    pub key: Vec<u8>,
    pub acked: u64,
    pub unknown: u64,
}

impl Verdict {
    /// Adds one key's comparison. `value` is None when the key does not exist.
    pub fn add(&mut self, t: &Truth, value: Option<u64>) {
        self.keys_checked += 1;
        self.acked_total += t.acked;
        self.unknown_budget += t.unknown;
        let v = value.unwrap_or(0);
        if value.is_none() && t.acked > 0 {
            self.missing_keys += 1;
        }
        if v < t.acked {
            self.keys_with_loss += 1;
            self.lost_acknowledged_increments += t.acked - v;
        } else if v > t.acked + t.unknown {
            self.keys_with_phantoms += 1;
            self.phantom_increments += v - t.acked - t.unknown;
            self.unknown_applied += t.unknown;
        } else {
            self.keys_matching += 1;
            self.unknown_applied += v - t.acked;
        }
    }

    pub fn finish(&mut self) {
        self.clean = self.lost_acknowledged_increments == 0 && self.phantom_increments == 0;
    }

    pub fn render(&self) -> String {
        let verdict = if self.clean {
            "CLEAN: every acknowledged increment is in Redis"
        } else {
            "LOSS OR PHANTOMS FOUND"
        };
        format!(
            "verify: {verdict}\n\
             counter keys checked        {}\n\
             keys matching               {}\n\
             lost acknowledged incr.     {} (in {} keys, {} keys missing)\n\
             phantom increments          {} (in {} keys)\n\
             acknowledged increments     {}\n\
             unknown budget              {} ({} landed)\n\
             counter keys not in postgres {}\n\
             unique-user keys present    {}\n\
             cache keys present          {}\n\
             retention window            {} h\n",
            self.keys_checked,
            self.keys_matching,
            self.lost_acknowledged_increments,
            self.keys_with_loss,
            self.missing_keys,
            self.phantom_increments,
            self.keys_with_phantoms,
            self.acked_total,
            self.unknown_budget,
            self.unknown_applied,
            self.unexpected_keys,
            self.unique_user_keys,
            self.cache_keys,
            self.retention_hours,
        )
    }
}

/// Runs the subcommand; exit code 0 clean, 1 loss/phantoms, 2 usage or connection error.
pub fn main(args: VerifyArgs) -> i32 {
    let url = args.redis_url.clone();
    let protocol = args.redis_protocol;
    let pg = args.database.clone();
    let tls = match args.redis_tls.client_config(crate::tls::Verify::Full) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let json = args.json;
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("verify")
        .io_memory(64 << 10)
        .spawn(move || async move { run(url, protocol, Some(tls), pg).await });
    let result = match ex {
        Ok(h) => h.join().map_err(|e| e.to_string()).and_then(|r| r),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(v) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", v.render());
            }
            if v.clean {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("error: verify: {e}");
            2
        }
    }
}

const CHUNK: usize = 1000;

/// `tls`: for a `rediss://` URL (`None`: system CAs, no client certificate).
pub async fn run(
    url: RedisUrl,
    protocol: Protocol,
    tls: Option<Arc<rustls::ClientConfig>>,
    pg: crate::pg::PgConfig,
) -> Result<Verdict, String> {
    let client = crate::pg::connect(&pg, Duration::from_secs(5), None).await?;
    let d = |e: tokio_postgres::Error| crate::pg::describe(&e);
    let tb: u32 = client
        .query_opt(
            "SELECT (config->>'time_buckets')::int4 FROM runs ORDER BY started_at DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(d)?
        .and_then(|r| r.try_get::<_, Option<i32>>(0).ok().flatten())
        .map_or(24, |v| v.max(1) as u32);
    // Keys that expire within a minute may vanish mid-check: leave them out.
    let now = time::unix_now() as i64;
    let rows = client
        .query(
            "SELECT org_id, bucket, event_type, acked, unknown FROM event_rollups WHERE bucket >= $1 \
             ORDER BY org_id, bucket, event_type",
            &[&time::bucket_hours_ago(now, tb)],
        )
        .await
        .map_err(d)?;
    let mut truths = Vec::with_capacity(rows.len());
    for r in rows {
        let (org, bucket, ty): (i32, i32, i16) = (r.get(0), r.get(1), r.get(2));
        let (acked, unknown): (i64, i64) = (r.get(3), r.get(4));
        let Some(ty) = EventType::from_code(ty) else {
            continue;
        };
        let expires = time::bucket_start(bucket).unwrap_or(0) + 3600 * (i64::from(tb) + 1);
        if expires <= now + 60 {
            continue;
        }
        let mut key = Vec::with_capacity(40);
        keys::counter(&mut key, org as u32, ty, bucket);
        truths.push(Truth {
            key,
            acked: acked.max(0) as u64,
            unknown: unknown.max(0) as u64,
        });
    }
    let cfg = PoolConfig {
        size: 1,
        command_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        max_reply_bytes: 64 << 20,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_secs(1),
        shard: 0,
        protocol,
        tls,
    };
    let redis = Connection::connect(&url, &cfg)
        .await
        .map_err(|e| e.to_string())?;
    let mut v = compare(&redis, &truths).await?;
    v.retention_hours = tb;
    v.redis_protocol = redis.protocol();
    let known: HashSet<&[u8]> = truths.iter().map(|t| t.key.as_slice()).collect();
    let counters = scan(&redis, "a:{*}:ev:*").await?;
    v.unexpected_keys = counters
        .iter()
        .filter(|k| !known.contains(k.as_slice()))
        .filter(|k| {
            keys::parse_counter(k).is_some_and(|(_, _, b)| {
                time::bucket_start(b).is_some_and(|s| s + 3600 * (i64::from(tb) + 1) > now + 60)
            })
        })
        .count() as u64;
    v.unique_user_keys = scan(&redis, "a:{*}:uu:*").await?.len() as u64;
    v.cache_keys = scan(&redis, "a:{*}:c:*").await?.len() as u64;
    v.finish();
    Ok(v)
}

/// GETs the truths' keys in pipelined chunks and compares.
pub async fn compare(redis: &Rc<Connection>, truths: &[Truth]) -> Result<Verdict, String> {
    let mut v = Verdict::default();
    for chunk in truths.chunks(CHUNK) {
        let cmds: Vec<[&[u8]; 2]> = chunk.iter().map(|t| [&b"GET"[..], &t.key[..]]).collect();
        let refs: Vec<&[&[u8]]> = cmds.iter().map(|c| &c[..]).collect();
        let replies = redis.pipeline(&refs).await;
        for (t, r) in chunk.iter().zip(replies) {
            let value = match r {
                Ok(Reply::Nil) => None,
                Ok(Reply::Bulk(b)) => Some(
                    std::str::from_utf8(&b)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| {
                            format!(
                                "counter {} is not a number",
                                String::from_utf8_lossy(&t.key)
                            )
                        })?,
                ),
                Ok(other) => {
                    return Err(format!(
                        "unexpected reply {other:?} for {}",
                        String::from_utf8_lossy(&t.key)
                    ))
                }
                Err(e) => return Err(e.to_string()),
            };
            v.add(t, value);
        }
    }
    Ok(v)
}

/// All keys matching `pattern` (SCAN, so a big keyspace does not block Redis).
pub async fn scan(redis: &Rc<Connection>, pattern: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut cursor = b"0".to_vec();
    let mut out = Vec::new();
    loop {
        let reply = redis
            .cmd(&[
                b"SCAN",
                &cursor,
                b"MATCH",
                pattern.as_bytes(),
                b"COUNT",
                b"1000",
            ])
            .await
            .map_err(|e| e.to_string())?;
        let Reply::Array(parts) = reply else {
            return Err("unexpected SCAN reply".into());
        };
        let mut it = parts.into_iter();
        let (Some(Reply::Bulk(next)), Some(Reply::Array(found))) = (it.next(), it.next()) else {
            return Err("unexpected SCAN reply".into());
        };
        out.extend(found.into_iter().filter_map(|k| match k {
            Reply::Bulk(b) => Some(b.to_vec()),
            _ => None,
        }));
        if next.as_ref() == b"0" {
            return Ok(out);
        }
        cursor = next.to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(acked: u64, unknown: u64) -> Truth {
        Truth {
            key: b"k".to_vec(),
            acked,
            unknown,
        }
    }

    #[test]
    fn should_classify_each_case() {
        let mut v = Verdict::default();
        v.add(&t(5, 0), Some(5)); // exact
        v.add(&t(5, 2), Some(6)); // one unknown landed
        v.add(&t(5, 0), Some(3)); // lost 2
        v.add(&t(4, 0), None); // missing: lost 4
        v.add(&t(0, 1), None); // only unknown: fine
        v.add(&t(5, 1), Some(9)); // phantom 3
        v.finish();
        assert_eq!(v.keys_checked, 6);
        assert_eq!(v.keys_matching, 3);
        assert_eq!(v.lost_acknowledged_increments, 6);
        assert_eq!(v.keys_with_loss, 2);
        assert_eq!(v.missing_keys, 1);
        assert_eq!(v.phantom_increments, 3);
        assert_eq!(v.unknown_budget, 4);
        assert_eq!(v.unknown_applied, 2);
        assert!(!v.clean);
    }

    #[test]
    fn should_be_clean_within_bounds() {
        let mut v = Verdict::default();
        v.add(&t(10, 3), Some(13));
        v.add(&t(10, 3), Some(10));
        v.finish();
        assert!(v.clean);
        assert!(v.render().contains("CLEAN"));
    }
}
