//! `analytics-demo bench-redis`: a raw Redis benchmark built from the workload's own parts,
//! so its numbers say what our client and engine cost next to `redis-benchmark`.
//!
//! Same topology as the workload ([`crate::engine`]): one glommio executor per shard, pinned
//! to the CPUs after the first; each shard owns a [`crate::resp::Pool`] and its RNG stream,
//! and shares nothing with the others. The mix is plain SET/GET (`--ratio`), keys are
//! `key:NNNNNNNNNNNN` like redis-benchmark's `-r`.
//!
//! # Layout
//! - [`shard`]: one shard's command slots, closed loop or paced, and its histograms.
//! - [`report`]: merging the shards, text and JSON output.

pub mod report;
pub mod shard;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::BenchRedisArgs;
use crate::resp::cluster::map::Topology;
use crate::resp::cluster::slot::key_slot;
use crate::resp::{PoolConfig, Target};
use crate::rt::{self, executor, executor::SHARD_PREEMPT};
use crate::shard::pacer::split_rate;
use crate::workload::bench_mix::{KeyPattern, Mix, Ratio};
use shard::{ShardPlan, ShardResult};

/// The mix as plain data (`Send`), built into samplers on the shard that uses it.
#[derive(Clone, Debug)]
pub struct MixPlan {
    pub ratio: Ratio,
    pub key_pattern: KeyPattern,
    pub keys: u64,
    pub zipf_exponent: f64,
}

impl MixPlan {
    pub fn build(&self) -> Mix {
        Mix::new(self.ratio, self.key_pattern, self.keys, self.zipf_exponent)
    }
}

/// The cluster's slot map when REDIS_MODE (or `auto` and the server) says cluster; `None`
/// for a standalone server.
fn cluster_topology(args: &BenchRedisArgs, cfg: &PoolConfig) -> Result<Option<Topology>, String> {
    let (mode, seeds, cfg) = (args.redis_mode, args.redis_seeds.clone(), cfg.clone());
    crate::http::block_on(move || async move {
        let cluster = crate::resp::cluster::resolve_mode(mode, &seeds, &cfg)
            .await
            .map_err(|e| format!("cannot reach Redis: {e}"))?;
        if !cluster {
            return Ok(None);
        }
        crate::resp::cluster::topology_from_seeds(&seeds, &cfg)
            .await
            .map(Some)
            .map_err(|why| format!("cannot read the cluster's slot map: {why}"))
    })?
}

/// Hash tags for lanes, in lane order: lane `l` of a shard gets a tag whose slot the node
/// `l % nodes` serves (the shard's pool reaches that node on its connection `l / nodes`),
/// so each node takes an equal share of the connections, as redis-benchmark --cluster does.
struct LaneTags {
    /// Unused tags per node.
    free: Vec<std::collections::VecDeque<String>>,
    next: u64,
    owner: Vec<Option<usize>>,
}

impl LaneTags {
    fn new(t: &Topology) -> LaneTags {
        let mut owner = vec![None; crate::resp::cluster::slot::SLOTS];
        for (first, last, node) in &t.ranges {
            for s in *first..=*last {
                owner[usize::from(s)] = Some(*node);
            }
        }
        LaneTags {
            free: vec![std::collections::VecDeque::new(); t.nodes.len().max(1)],
            next: 0,
            owner,
        }
    }

    /// The tags of `lanes` lanes (a shard's).
    fn take(&mut self, lanes: usize) -> Vec<String> {
        let nodes = self.free.len();
        (0..lanes)
            .map(|l| {
                let node = l % nodes;
                loop {
                    if let Some(t) = self.free[node].pop_front() {
                        return t;
                    }
                    // Give up on a node that serves no slot: any tag will do.
                    if self.next > 1_000_000 {
                        return self.next.to_string();
                    }
                    let tag = self.next.to_string();
                    self.next += 1;
                    if let Some(n) = self.owner[usize::from(key_slot(tag.as_bytes()))] {
                        self.free[n].push_back(tag);
                    }
                }
            })
            .collect()
    }
}

/// Runs the benchmark and prints its result; returns the exit code (1 when Redis was never
/// reached or no command succeeded).
pub fn main(args: BenchRedisArgs) -> i32 {
    let cpus = rt::usable_cpus();
    let shards = args.run.resolved_shards(cpus.len());
    if let Err(e) = args.validate_against_shards(shards) {
        eprintln!("error: {e}");
        return crate::config::EXIT_USAGE;
    }
    let stop = Arc::new(AtomicBool::new(false));
    if let Err(e) = rt::stop_on_signals(&stop) {
        eprintln!("error: {e}");
        return 1;
    }
    let seed = args.run.seed.unwrap_or_else(rt::seed_from_clock);
    tracing::info!(
        shards,
        connections = args.connections,
        pipeline = args.pipeline,
        rate = args.rate,
        redis = %args.redis_url,
        "bench-redis starting"
    );
    let tls = match args.redis_tls.client_config(crate::tls::Verify::Full) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return crate::config::EXIT_USAGE;
        }
    };
    let base = args.run.redis_pool(args.redis_protocol, tls.clone());
    let topology = match cluster_topology(&args, &base) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let target = match &topology {
        Some(_) => Target::new(args.redis_seeds.clone(), true),
        None => None,
    }
    .unwrap_or_else(|| Target::standalone(args.redis_url.clone()));
    let nodes = topology.as_ref().map_or(1, |t| t.nodes.len().max(1));
    if let Some(t) = &topology {
        tracing::info!(nodes = t.nodes.len(), "bench-redis: cluster mode");
    }
    // Hash tags for every lane of every shard, each owned by its lane's node.
    let mut tags = topology.as_ref().map(LaneTags::new);
    let mut handles = Vec::with_capacity(shards);
    for i in 0..shards {
        let lanes = split_rate(args.connections as u64, shards, i).max(1) as usize;
        let plan = ShardPlan {
            index: i,
            target: target.clone(),
            tags: tags.as_mut().map_or_else(Vec::new, |t| t.take(lanes)),
            pool: PoolConfig {
                size: lanes.div_ceil(nodes),
                shard: i,
                ..base.clone()
            },
            pipeline: args.pipeline,
            rate: split_rate(args.rate, shards, i),
            pace_step: args.pace_step,
            mix: MixPlan {
                ratio: args.ratio,
                key_pattern: args.key_pattern,
                keys: args.keys,
                zipf_exponent: args.run.zipf_exponent,
            },
            data_size: args.data_size,
            duration: args.run.duration,
            seed,
        };
        // A shard whose share of a tiny rate is 0 would run closed loop: give it nothing.
        if args.rate > 0 && plan.rate == 0 {
            continue;
        }
        // Same placement as the workload's shards: the CPUs after the first.
        let placement = rt::placement(args.run.pin, cpus[(1 + i) % cpus.len()]);
        let shard_stop = stop.clone();
        let spawned = executor::spawn(&format!("bench-{i}"), placement, SHARD_PREEMPT, move || {
            shard::run(plan, shard_stop)
        });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                eprintln!("error: cannot start shard {i} executor: {e}");
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                return 1;
            }
        }
    }
    let mut results: Vec<ShardResult> = Vec::with_capacity(handles.len());
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("error: shard {i} failed: {e}");
                return 1;
            }
        }
    }
    let mut summary = report::Summary::merge(&args, shards, results);
    summary.cluster_nodes = topology.as_ref().map_or(0, |t| t.nodes.len());
    if args.json {
        println!("{}", summary.to_json());
    } else {
        print!("{}", summary.render());
    }
    if summary.connected == 0 || summary.ops() == 0 {
        eprintln!("error: no command succeeded against {}", args.redis_url);
        return 1;
    }
    0
}
