//! The topology: which CPU runs what. Core 0 (of the CPUs this process may use) is the
//! control core; shards take the others. Each runs one pinned glommio executor.

use std::sync::Arc;
use std::time::Duration;

use glommio::channels::shared_channel;

use crate::config::{Config, Distribution};
use crate::control::{self, ControlParams, Flags};
use crate::pg::writer::Backlog;
use crate::resp::{PoolConfig, Target};
use crate::rt;
use crate::rt::executor::{self, CONTROL_PREEMPT, SHARD_PREEMPT};
use crate::shard::{self, pacer, pacer::split_rate, ShardLinks, ShardParams};

/// Organizations owned by shard `index` of `shards` in instance `instance` of `instances`.
pub fn shard_orgs(
    organizations: u32,
    instance: u32,
    instances: u32,
    index: usize,
    shards: usize,
) -> Vec<u32> {
    let parts = u64::from(instances.max(1)) * shards.max(1) as u64;
    let part = u64::from(instance) * shards as u64 + index as u64;
    (1..=organizations)
        .filter(|&o| u64::from(o - 1) % parts == part)
        .collect()
}

/// Runs the workload to its end; returns the exit code.
pub fn run(cfg: Config) -> i32 {
    let cpus = rt::usable_cpus();
    let shards = cfg.run.resolved_shards(cpus.len());
    if let Err(e) = cfg.validate_against_shards(shards) {
        eprintln!("error: {e}");
        return 2;
    }
    let pg = cfg.database.clone();
    // Built even for redis:// (a switch may move to rediss://); the trust roots load once.
    let redis_tls = match cfg.redis_tls.client_config(crate::tls::Verify::Full) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let prom = match crate::metrics::install() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let seed = cfg.run.seed.unwrap_or_else(rt::seed_from_clock);
    let run_id = (rt::seed_from_clock() >> 1) as i64;
    let parts = shards as u64 * u64::from(cfg.instance_count.max(1));
    if u64::from(cfg.organizations) < parts {
        eprintln!(
            "error: ORGANIZATIONS ({}) must be at least the number of shards x instances ({parts})",
            cfg.organizations
        );
        return 2;
    }
    // With several instances the rates are the run's totals: this one takes its share.
    let (count, index) = (
        cfg.instance_count.max(1) as usize,
        cfg.instance_index as usize,
    );
    let rates = (
        split_rate(cfg.events_per_second, count, index),
        split_rate(cfg.queries_per_second, count, index),
    );
    let control_cpu = cpus[0];
    let shard_cpu = |i: usize| cpus[(1 + i) % cpus.len()];
    tracing::info!(
        shards,
        cpus = ?cpus,
        control_cpu,
        pinned = cfg.run.pin,
        seed,
        run_id,
        redis = %cfg.redis_url,
        postgres = %crate::pg::redacted(&pg),
        events_per_second = rates.0,
        queries_per_second = rates.1,
        instance = cfg.instance_index,
        instances = cfg.instance_count,
        run_name = cfg.run_name.as_deref().unwrap_or(""),
        "starting"
    );

    let mut flags = Flags::default();
    if let Err(e) = rt::stop_on_signals(&flags.term) {
        eprintln!("error: {e}");
        return 1;
    }
    let bell_writer = match rt::signal_bell() {
        Ok((read, write)) => {
            flags.term_bell = Some(Arc::new(read));
            Arc::new(write)
        }
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };

    // Health probes declare no run; the shards' pools do (below).
    let pool_base = cfg.run.redis_pool(cfg.redis_protocol, redis_tls);
    let cluster = match cfg.redis_mode {
        crate::resp::RedisMode::Standalone => false,
        crate::resp::RedisMode::Cluster => true,
        crate::resp::RedisMode::Auto => {
            let (seeds, pc) = (cfg.redis_seeds.clone(), pool_base.clone());
            let mode = cfg.redis_mode;
            let found = crate::http::block_on(move || async move {
                crate::resp::cluster::resolve_mode(mode, &seeds, &pc).await
            });
            match found.and_then(|r| r) {
                Ok(c) => c,
                Err(why) => {
                    tracing::warn!(error = %why, "REDIS_MODE auto: Redis not reachable, assuming standalone");
                    false
                }
            }
        }
    };
    tracing::info!(
        mode = if cluster { "cluster" } else { "standalone" },
        "redis mode"
    );
    let target = match cluster {
        true => Target::new(cfg.redis_seeds.clone(), true),
        false => None,
    }
    .unwrap_or_else(|| Target::standalone(cfg.redis_url.clone()));
    let start_unix = crate::workload::time::unix_now();
    let declaration = crate::resp::RunDeclaration::new(run_id, start_unix as i64, cfg.time_buckets);
    let mut row_rx = Vec::new();
    let mut report_rx = Vec::new();
    let mut backlogs = Vec::new();
    let mut command_tx = Vec::new();
    let mut shard_handles = Vec::new();
    for i in 0..shards {
        let (rows_tx, rows_rx) = shared_channel::new_bounded(64);
        let (rep_tx, rep_rx) = shared_channel::new_bounded(16);
        let backlog = Arc::new(Backlog::default());
        let (cmd_tx, cmd_rx) = shared_channel::new_bounded(8);
        command_tx.push(cmd_tx);
        row_rx.push(rows_rx);
        report_rx.push(rep_rx);
        backlogs.push(backlog.clone());
        let (events_per_second, queries_per_second) = (
            split_rate(rates.0, shards, i),
            split_rate(rates.1, shards, i),
        );
        let params = ShardParams {
            index: i,
            shards,
            events_per_second,
            queries_per_second,
            orgs: shard_orgs(
                cfg.organizations,
                cfg.instance_index,
                cfg.instance_count,
                i,
                shards,
            ),
            users_per_org: cfg.users_per_org,
            zipf_exponent: match cfg.distribution {
                Distribution::Zipf => Some(cfg.run.zipf_exponent),
                Distribution::Uniform => None,
            },
            cache_hit_target: cfg.cache_hit_target,
            max_inflight: (cfg.max_workers / shards).max(1),
            cache_ttl: cfg.cache_ttl,
            warmup_interval: cfg.warmup_interval,
            time_buckets: cfg.time_buckets,
            redis: target.clone(),
            pool: PoolConfig {
                size: split_rate(cfg.redis_pool_size as u64, shards, i).max(1) as usize,
                shard: i,
                declare_run: Some(declaration.clone()),
                ..pool_base.clone()
            },
            pg: pg.clone(),
            db_timeout: cfg.db_timeout,
            db_read_timeout: cfg.db_read_timeout,
            backlog_cap: (cfg.db_buffer_rows / shards).max(1) as u64,
            seed,
            late_limit: Duration::from_secs(1),
            pace_step: pacer::pace_step(cfg.pace_step, events_per_second + queries_per_second),
            report_every: Duration::from_secs(1),
        };
        let links = ShardLinks {
            commands: cmd_rx,
            rows: rows_tx,
            reports: rep_tx,
            backlog,
            stopping: flags.stopping.clone(),
            ready: flags.ready.clone(),
        };
        let placement = rt::placement(cfg.run.pin, shard_cpu(i));
        let spawned = executor::spawn(&format!("shard-{i}"), placement, SHARD_PREEMPT, move || {
            shard::run(params, links)
        });
        match spawned {
            Ok(h) => shard_handles.push(h),
            Err(e) => {
                eprintln!("error: cannot start shard {i} executor: {e}");
                flags
                    .stopping
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                flags.ready.store(true, std::sync::atomic::Ordering::SeqCst);
                return 1;
            }
        }
    }

    let params = ControlParams {
        bind: cfg.bind_address,
        redis: target.clone(),
        redis_cfg: pool_base,
        pg,
        run_id,
        duration: cfg.run.duration,
        progress_interval: cfg.progress_interval,
        targets: rates,
        hit_target: cfg.cache_hit_target,
        batch_size: cfg.db_batch_size,
        retention_hours: cfg.time_buckets,
        db_timeout: cfg.db_timeout,
        config_json: config_json(&cfg, shards, seed),
        shards,
        start_unix,
        admin_token: cfg.admin_token.as_deref().map(str::to_string),
        admin_allow_loopback: cfg.admin_allow_unauthenticated_loopback,
        member: cfg
            .run_name
            .clone()
            .map(|run_name| crate::control::barrier::Member {
                run_name,
                index: cfg.instance_index,
                count: cfg.instance_count,
                timeout: cfg.start_timeout,
            }),
    };
    let placement = rt::placement(cfg.run.pin, control_cpu);
    let control_flags = flags.clone();
    let control = executor::spawn("control", placement, CONTROL_PREEMPT, move || {
        control::run(
            params,
            prom,
            row_rx,
            report_rx,
            backlogs,
            command_tx,
            control_flags,
        )
    });
    // A shard whose executor cannot start (or panics) ends its thread early; without a watch
    // the run would go on short of that shard, and its stop would wait for it for ever. Each
    // watcher returns whether its shard failed.
    let watchers: Vec<_> = shard_handles
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            let (term, bell) = (flags.term.clone(), bell_writer.clone());
            std::thread::spawn(move || match h.join() {
                Ok(()) => false,
                Err(e) => {
                    eprintln!("error: shard {i} stopped: {e}; stopping the run");
                    term.store(true, std::sync::atomic::Ordering::SeqCst);
                    // Wakes the control core now (it would see `term` within two seconds).
                    let _ = std::io::Write::write(&mut &*bell, &[1]);
                    true
                }
            })
        })
        .collect();
    let code = match control {
        Ok(h) => match h.join() {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: control core failed: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("error: cannot start the control executor: {e}");
            1
        }
    };
    flags
        .stopping
        .store(true, std::sync::atomic::Ordering::SeqCst);
    flags.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = watchers
        .into_iter()
        .map(|w| w.join().unwrap_or(true))
        .fold(false, |any, f| any | f);
    if failed {
        return 1;
    }
    code
}

/// The configuration recorded in the `runs` table: no URLs with credentials, no token.
fn config_json(cfg: &Config, shards: usize, seed: u64) -> serde_json::Value {
    serde_json::json!({
        "events_per_second": cfg.events_per_second,
        "queries_per_second": cfg.queries_per_second,
        "run_name": cfg.run_name,
        "instance_index": cfg.instance_index,
        "instance_count": cfg.instance_count,
        "organizations": cfg.organizations,
        "users_per_org": cfg.users_per_org,
        "cache_hit_target": cfg.cache_hit_target,
        "max_workers": cfg.max_workers,
        "redis_pool_size": cfg.redis_pool_size,
        "cache_ttl_seconds": cfg.cache_ttl.as_secs(),
        "warmup_interval_seconds": cfg.warmup_interval.as_secs(),
        "time_buckets": cfg.time_buckets,
        "redis": cfg.redis_url.redacted(),
        "redis_protocol": cfg.redis_protocol.as_str(),
        "db_timeout_ms": cfg.db_timeout.as_millis() as u64,
        "db_read_timeout_ms": cfg.db_read_timeout.as_millis() as u64,
        "redis_mode": cfg.redis_mode.as_str(),
        "shards": shards,
        "seed": seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_partition_orgs_without_overlap() {
        let mut all: Vec<u32> = Vec::new();
        for inst in 0..2 {
            for i in 0..3 {
                all.extend(shard_orgs(100, inst, 2, i, 3));
            }
        }
        all.sort_unstable();
        assert_eq!(all, (1..=100).collect::<Vec<_>>());
    }
}
