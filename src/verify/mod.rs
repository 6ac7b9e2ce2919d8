//! `analytics-demo verify`: does this Redis hold every acknowledged increment of the runs
//! that wrote to it, and nothing else?
//!
//! Every workload run declares itself in the target it writes to (`a:runs`, see
//! [`crate::resp::RunDeclaration`]) before any counter lands there, so the declaration moves
//! with the data (replication, copies, dumps) and is gone when the data is (a restart without
//! persistence). `verify` reads the declared runs (or the ones `--run`/`--since` name) and,
//! for every counter key still within retention (by the Redis clock, `TIME`), sums what those
//! runs recorded in `run_rollups`: `acked` increments and `unknown` outcomes. The Redis value
//! must satisfy `acked <= value <= acked + unknown`. Below is loss; above is a phantom; a
//! counter key no judged run has a row for is a stray key (another writer, an earlier
//! rehearsal, a run not named).
//!
//! The row of an event is written after its INCR, so a run that did not end cleanly (crash,
//! SIGKILL, rows dropped at shutdown, or still running) can leave increments without rows:
//! phantoms and stray keys on the keys such a run may have written are reported apart, as
//! explained by it, and do not fail the verdict. Loss always does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

mod db;
mod redis;

use db::{load_rollups, load_runs, RollupRow, DB_TIMEOUT};
use redis::{declared_runs, redis_time, scan, values, Redis};

use crate::config::VerifyArgs;
use crate::pg::writer::HEARTBEAT_EVERY;
use crate::workload::{keys, time, EventType};

/// Stray keys listed by name (the count is always complete).
const SAMPLE: usize = 10;
/// Slack around an unclean run's active time for the hours its keys may be in (clock skew
/// between this host, PostgreSQL and the run's host).
const SPAN_SLACK_SECS: i64 = 600;
/// Keys that expire within this many seconds may vanish mid-check: left out.
const EXPIRY_MARGIN_SECS: i64 = 60;
/// `TIME_BUCKETS` of a run whose configuration does not say.
const DEFAULT_TIME_BUCKETS: u32 = 24;

/// How a run ended, as far as PostgreSQL knows.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Ended with every row written.
    Clean,
    /// Ended, but rows never reached PostgreSQL (`rows_possibly_missing` of them).
    RowsDropped,
    /// No end recorded and not seen for a while: crashed or killed.
    DidNotEnd,
    /// No end recorded, seen recently: rows in flight may not be in PostgreSQL yet.
    Running,
}

impl RunState {
    /// Whether increments of this run may lack their rows.
    pub fn unclean(self) -> bool {
        self != RunState::Clean
    }
}

/// One run as stored in `runs` (times in unix seconds).
#[derive(Clone, Debug, Default)]
pub struct RunRecord {
    pub run_id: i64,
    pub started: i64,
    pub time_buckets: Option<u32>,
    pub organizations: Option<u32>,
    pub ended: Option<i64>,
    pub end_state: Option<String>,
    pub rows_dropped: Option<i64>,
    pub last_seen: Option<i64>,
    /// Seconds since `last_seen` (or the start), by the PostgreSQL clock.
    pub seen_ago: f64,
    /// Events started by the last heartbeat.
    pub events_started: Option<i64>,
    /// Rows of the run in `run_rollups` now.
    pub rows_in_postgres: u64,
}

/// A judged run, as reported.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct RunInfo {
    pub run_id: i64,
    pub started: String,
    pub started_unix: i64,
    pub state: RunState,
    pub ended: Option<String>,
    pub last_seen: Option<String>,
    /// Rows missing from PostgreSQL: those dropped at the end (exact), or for a run that
    /// did not end (or still runs) the events it had started by its last report (a commit
    /// or a heartbeat) that have no row; events it started after that may lack rows too.
    pub rows_possibly_missing: u64,
    pub rows_in_postgres: u64,
    /// Counter keys within the window this run has rows for.
    pub counter_keys: u64,
    #[serde(skip)]
    span: Option<Span>,
}

/// Where a run that did not end cleanly may have written without rows: hours and orgs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    first_bucket: i32,
    last_bucket: i32,
    max_org: Option<u32>,
}

impl Span {
    fn contains(&self, org: u32, bucket: i32) -> bool {
        (self.first_bucket..=self.last_bucket).contains(&bucket)
            && self.max_org.is_none_or(|m| org <= m)
    }
}

impl RunInfo {
    /// Classifies a stored run. `stale_after`: a run not seen for this long without an end
    /// did not end cleanly.
    pub fn from_record(r: &RunRecord, stale_after: f64, now: i64) -> RunInfo {
        let state = match (r.ended, r.end_state.as_deref()) {
            (Some(_), Some("clean")) => RunState::Clean,
            (Some(_), _) => RunState::RowsDropped,
            (None, _) if r.seen_ago <= stale_after => RunState::Running,
            (None, _) => RunState::DidNotEnd,
        };
        let missing_at_least = r
            .events_started
            .map_or(0, |s| (s.max(0) as u64).saturating_sub(r.rows_in_postgres));
        let rows_possibly_missing = match state {
            RunState::Clean => 0,
            RunState::RowsDropped => r.rows_dropped.map_or(0, |d| d.max(0) as u64),
            RunState::DidNotEnd | RunState::Running => missing_at_least,
        };
        let last_active = match state {
            RunState::Running => now,
            _ => r.ended.or(r.last_seen).unwrap_or(r.started),
        };
        let span = state.unclean().then(|| Span {
            first_bucket: time::bucket_of(r.started - SPAN_SLACK_SECS),
            last_bucket: time::bucket_of(last_active.max(r.started) + SPAN_SLACK_SECS),
            max_org: r.organizations,
        });
        RunInfo {
            run_id: r.run_id,
            started: time::rfc3339(r.started),
            started_unix: r.started,
            state,
            ended: r.ended.map(time::rfc3339),
            last_seen: r.last_seen.map(time::rfc3339),
            rows_possibly_missing,
            rows_in_postgres: r.rows_in_postgres,
            counter_keys: 0,
            span,
        }
    }

    fn describe(&self) -> String {
        let ended = self.ended.as_deref().unwrap_or("?");
        let seen = self.last_seen.as_deref().unwrap_or("never");
        let n = self.rows_possibly_missing;
        match self.state {
            RunState::Clean => format!("ended cleanly {ended}"),
            RunState::RowsDropped => {
                format!("ended {ended} with {n} rows dropped (not in PostgreSQL)")
            }
            RunState::DidNotEnd => format!(
                "DID NOT END CLEANLY (crashed or killed; last seen {seen}): {n} rows missing \
                 as of then, plus those of events it started after"
            ),
            RunState::Running => format!(
                "still running (seen {seen}): {n}+ rows in flight; the verdict may lag them"
            ),
        }
    }
}

/// Where the judged runs come from.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RunsFrom {
    /// The target's `a:runs`.
    #[default]
    Declared,
    /// `--run` / `--since`.
    Override,
}

/// A run that may have left increments without rows, for the JSON summary.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct UncleanRun {
    pub run_id: i64,
    pub state: RunState,
    pub rows_possibly_missing: u64,
}

#[derive(Serialize, Default, Debug, Clone, PartialEq)]
pub struct Verdict {
    pub clean: bool,
    /// Why it is not clean, one short phrase each (empty when clean).
    pub problems: Vec<String>,
    pub runs_from: RunsFrom,
    pub runs_judged: Vec<RunInfo>,
    /// Runs that did not end cleanly or still run (a subset of `runs_judged`).
    pub unclean_runs: Vec<UncleanRun>,
    /// Members of `a:runs` this PostgreSQL has no run for (not judged).
    pub runs_declared_unknown: Vec<String>,
    /// The Redis clock (`TIME`) the window is computed from.
    pub redis_time: String,
    /// Oldest and newest hour bucket judged (counters of older hours have expired, or
    /// expire within a minute).
    pub window_first_bucket: i32,
    pub window_last_bucket: i32,
    pub retention_hours: u32,
    pub keys_checked: u64,
    pub keys_matching: u64,
    /// Keys whose value is below the acknowledged count (including missing keys).
    pub keys_with_loss: u64,
    pub lost_acknowledged_increments: u64,
    /// Phantoms on keys only cleanly ended runs wrote: these fail the verdict.
    pub keys_with_phantoms: u64,
    pub phantom_increments: u64,
    /// Phantoms on keys a run that did not end cleanly may have written without its rows.
    pub keys_with_explained_phantoms: u64,
    pub explained_phantom_increments: u64,
    /// Keys with acknowledged increments that do not exist in Redis at all.
    pub missing_keys: u64,
    /// Sum of `unknown` outcomes: how far above `acked` a value may legitimately be.
    pub unknown_budget: u64,
    /// Unknown increments that did land (value - acked, where within budget).
    pub unknown_applied: u64,
    pub acked_total: u64,
    /// Counter keys within the window no row of a judged run explains: fail the verdict.
    pub stray_keys: u64,
    pub stray_increments: u64,
    pub stray_sample: Vec<String>,
    /// Such keys in the hours and organizations of a run that did not end cleanly.
    pub explained_stray_keys: u64,
    pub explained_stray_increments: u64,
    pub explained_stray_sample: Vec<String>,
    pub unique_user_keys: u64,
    pub cache_keys: u64,
    /// RESP version of the connection that read the counters (2 or 3).
    pub redis_protocol: u8,
}

/// One counter's ground truth: the judged runs' rows summed.
#[derive(Clone, Debug, Default)]
pub struct Truth {
    pub key: Vec<u8>,
    pub acked: u64,
    pub unknown: u64,
    /// A run that did not end cleanly may have written to it without rows.
    pub unclean: bool,
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
            let extra = v - t.acked - t.unknown;
            if t.unclean {
                self.keys_with_explained_phantoms += 1;
                self.explained_phantom_increments += extra;
            } else {
                self.keys_with_phantoms += 1;
                self.phantom_increments += extra;
            }
            self.unknown_applied += t.unknown;
        } else {
            self.keys_matching += 1;
            self.unknown_applied += v - t.acked;
        }
    }

    /// Adds a counter key no judged row explains, holding `value` increments. `explained`:
    /// it lies in the hours and organizations of a run that did not end cleanly.
    pub fn add_stray(&mut self, key: &[u8], value: u64, explained: bool) {
        let (count, increments, sample) = if explained {
            (
                &mut self.explained_stray_keys,
                &mut self.explained_stray_increments,
                &mut self.explained_stray_sample,
            )
        } else {
            (
                &mut self.stray_keys,
                &mut self.stray_increments,
                &mut self.stray_sample,
            )
        };
        *count += 1;
        *increments += value;
        if sample.len() < SAMPLE {
            sample.push(String::from_utf8_lossy(key).into_owned());
        }
    }

    /// Decides: clean only with runs judged, no loss, no phantom and no stray key outside
    /// what unclean runs explain.
    pub fn finish(&mut self) {
        self.stray_sample.sort();
        self.explained_stray_sample.sort();
        self.unclean_runs = self
            .runs_judged
            .iter()
            .filter(|r| r.state.unclean())
            .map(|r| UncleanRun {
                run_id: r.run_id,
                state: r.state,
                rows_possibly_missing: r.rows_possibly_missing,
            })
            .collect();
        let mut problems = Vec::new();
        if self.runs_judged.is_empty() {
            problems.push(match self.runs_from {
                RunsFrom::Declared if self.runs_declared_unknown.is_empty() => {
                    "the target declares no runs".to_string()
                }
                RunsFrom::Declared => "no declared run is known to this PostgreSQL".to_string(),
                RunsFrom::Override => "no run matches --run/--since/--run-name".to_string(),
            });
        }
        if self.lost_acknowledged_increments > 0 {
            problems.push("lost acknowledged increments".to_string());
        }
        if self.phantom_increments > 0 {
            problems.push("phantom increments".to_string());
        }
        if self.stray_keys > 0 {
            problems.push("stray counter keys".to_string());
        }
        self.clean = problems.is_empty();
        self.problems = problems;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        let explained = self.explained_phantom_increments + self.explained_stray_increments;
        if self.clean && explained > 0 {
            line(format!(
                "verify: CLEAN: every acknowledged increment of the judged runs is in Redis; \
                 {explained} increments have no row because a run did not end cleanly (below)"
            ));
        } else if self.clean {
            line(
                "verify: CLEAN: every acknowledged increment of the judged runs is in Redis, \
                  and no counter is unexplained"
                    .to_string(),
            );
        } else {
            line(format!("verify: NOT CLEAN: {}", self.problems.join("; ")));
        }
        let from = match self.runs_from {
            RunsFrom::Declared => "declared by the target in a:runs",
            RunsFrom::Override => "named by --run/--since/--run-name",
        };
        line(format!("runs judged ({from}): {}", self.runs_judged.len()));
        for r in &self.runs_judged {
            line(format!(
                "  run {}  started {}  {}",
                r.run_id,
                r.started,
                r.describe()
            ));
        }
        if self.runs_judged.is_empty() {
            let why = match self.runs_from {
                RunsFrom::Declared if self.runs_declared_unknown.is_empty() => {
                    "  no a:runs in this Redis: no run of this version wrote to it, or a:runs was \
                     not migrated with the counters (or was deleted)"
                }
                RunsFrom::Declared => {
                    "  the runs it declares are not in this PostgreSQL (wrong --database-url?)"
                }
                RunsFrom::Override => "  no run in PostgreSQL matches",
            };
            line(why.to_string());
            line(
                "  to judge named runs instead: --run ID (VERIFY_RUN, repeatable or a comma list) \
                 or --since TIME (VERIFY_SINCE, RFC 3339 or unix seconds)"
                    .to_string(),
            );
        }
        if !self.runs_declared_unknown.is_empty() {
            line(format!(
                "declared runs unknown to this PostgreSQL (not judged): {}",
                self.runs_declared_unknown.join(", ")
            ));
        }
        line(format!(
            "window: Redis time {}, hour buckets {}..{} ({} h retention)",
            self.redis_time,
            self.window_first_bucket,
            self.window_last_bucket,
            self.retention_hours
        ));
        line(format!(
            "counter keys checked         {}",
            self.keys_checked
        ));
        line(format!(
            "keys matching                {}",
            self.keys_matching
        ));
        line(format!(
            "lost acknowledged incr.      {} (in {} keys, {} keys missing)",
            self.lost_acknowledged_increments, self.keys_with_loss, self.missing_keys
        ));
        line(format!(
            "phantom increments           {} (in {} keys)",
            self.phantom_increments, self.keys_with_phantoms
        ));
        if !self.unclean_runs.is_empty() || self.explained_phantom_increments > 0 {
            line(format!(
                "  explained by unclean runs  {} (in {} keys; increments whose rows an unclean \
                 run did not write)",
                self.explained_phantom_increments, self.keys_with_explained_phantoms
            ));
        }
        line(format!(
            "stray counter keys           {} (holding {} increments){}",
            self.stray_keys,
            self.stray_increments,
            sample(&self.stray_sample, self.stray_keys)
        ));
        if !self.unclean_runs.is_empty() || self.explained_stray_keys > 0 {
            line(format!(
                "  explained by unclean runs  {} (holding {} increments){}",
                self.explained_stray_keys,
                self.explained_stray_increments,
                sample(&self.explained_stray_sample, self.explained_stray_keys)
            ));
        }
        line(format!("acknowledged increments      {}", self.acked_total));
        line(format!(
            "unknown budget               {} ({} landed)",
            self.unknown_budget, self.unknown_applied
        ));
        line(format!(
            "unique-user keys present     {}",
            self.unique_user_keys
        ));
        line(format!("cache keys present           {}", self.cache_keys));
        out
    }
}

/// `: a, b, c (and N more)` for a sample of `total` keys.
fn sample(keys: &[String], total: u64) -> String {
    if keys.is_empty() {
        return String::new();
    }
    let more = total.saturating_sub(keys.len() as u64);
    let tail = if more > 0 {
        format!(" (and {more} more)")
    } else {
        String::new()
    };
    format!(": {}{tail}", keys.join(", "))
}

/// The judged window: counters of hours from `first_bucket` on, expiring after `now` + the
/// margin (a counter expires `retention_hours` + 1 hours after its hour starts).
#[derive(Clone, Copy, Debug)]
struct Window {
    now: i64,
    retention_hours: u32,
}

impl Window {
    fn contains(&self, bucket: i32) -> bool {
        time::bucket_start(bucket).is_some_and(|s| {
            s + 3600 * (i64::from(self.retention_hours) + 1) > self.now + EXPIRY_MARGIN_SECS
        })
    }

    /// The oldest bucket that may be in the window (a lower bound for SQL).
    fn first_bucket(&self) -> i32 {
        time::bucket_of(
            self.now + EXPIRY_MARGIN_SECS - 3600 * (i64::from(self.retention_hours) + 1),
        )
    }
}

/// Sums the judged runs' rows per counter key and marks the keys an unclean run may have
/// written. `rows`: (run, org, bucket, type, acked, unknown). Keys outside `window` are left
/// out; `runs` get their `counter_keys`.
fn truths(rows: &[RollupRow], runs: &mut [RunInfo], window: impl Fn(i32) -> bool) -> Vec<Truth> {
    let spans: Vec<Span> = runs.iter().filter_map(|r| r.span).collect();
    let index: HashMap<i64, usize> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| (r.run_id, i))
        .collect();
    let mut by_key: HashMap<(u32, i32, EventType), Truth> = HashMap::new();
    for &(run, org, bucket, ty, acked, unknown) in rows {
        if !window(bucket) {
            continue;
        }
        let run = index.get(&run).map(|&i| &mut runs[i]);
        let t = by_key.entry((org, bucket, ty)).or_insert_with(|| {
            let mut key = Vec::with_capacity(40);
            keys::counter(&mut key, org, ty, bucket);
            Truth {
                key,
                unclean: spans.iter().any(|s| s.contains(org, bucket)),
                ..Truth::default()
            }
        });
        t.acked += acked;
        t.unknown += unknown;
        if let Some(r) = run {
            r.counter_keys += 1;
            t.unclean |= r.state.unclean();
        }
    }
    let mut out: Vec<Truth> = by_key.into_values().collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// Runs the subcommand; exit code 0 clean, 1 not clean, 2 usage or connection error.
pub fn main(args: VerifyArgs) -> i32 {
    let tls = match args.redis_tls.client_config(crate::tls::Verify::Full) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let json = args.json;
    let ex = crate::rt::executor::spawn(
        "verify",
        glommio::Placement::Unbound,
        crate::rt::executor::ONE_SHOT_PREEMPT,
        move || async move { run(&args, Some(tls)).await },
    );
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

/// `tls`: for a `rediss://` URL (`None`: system CAs, no client certificate).
pub async fn run(
    args: &VerifyArgs,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Verdict, String> {
    let client = crate::pg::connect(
        &args.database,
        Duration::from_secs(5),
        Some(crate::pg::statement_timeout_for(DB_TIMEOUT)),
    )
    .await?;
    let redis = Redis::connect(args, tls).await?;
    let mut v = Verdict {
        redis_protocol: redis.protocol(),
        ..Verdict::default()
    };
    let now = redis_time(&redis).await?;
    v.redis_time = time::rfc3339(now);

    let (ids, since) = if args.runs.is_empty() && args.since.is_none() && args.run_name.is_none() {
        let declared = declared_runs(&redis).await?;
        let ids: Vec<i64> = declared.iter().filter_map(|m| m.parse().ok()).collect();
        v.runs_declared_unknown = declared;
        (ids, None)
    } else {
        v.runs_from = RunsFrom::Override;
        (args.runs.clone(), args.since)
    };
    let records = load_runs(&client, &ids, since, args.run_name.as_deref()).await?;
    v.runs_declared_unknown
        .retain(|m| !records.iter().any(|r| r.run_id.to_string() == *m));
    let stale_after = HEARTBEAT_EVERY.as_secs_f64() * 3.0;
    let mut runs: Vec<RunInfo> = records
        .iter()
        .map(|r| RunInfo::from_record(r, stale_after, now))
        .collect();
    let window = Window {
        now,
        retention_hours: records
            .iter()
            .map(|r| r.time_buckets.unwrap_or(DEFAULT_TIME_BUCKETS).max(1))
            .min()
            .unwrap_or(DEFAULT_TIME_BUCKETS),
    };
    v.retention_hours = window.retention_hours;
    v.window_first_bucket = next_bucket_in(window);
    v.window_last_bucket = time::bucket_of(now);

    let judged: Vec<i64> = runs.iter().map(|r| r.run_id).collect();
    let rows = load_rollups(&client, &judged, window.first_bucket()).await?;
    let truths = truths(&rows, &mut runs, |b| window.contains(b));
    v.runs_judged = runs;

    for (t, value) in truths.iter().zip(values(&redis, &truths, true).await?) {
        v.add(t, value);
    }
    let known: std::collections::HashSet<&[u8]> = truths.iter().map(|t| t.key.as_slice()).collect();
    let spans: Vec<Span> = v.runs_judged.iter().filter_map(|r| r.span).collect();
    let mut strays: Vec<(Truth, bool)> = Vec::new();
    for key in scan(&redis, "a:{*}:ev:*").await? {
        let Some((org, _, bucket)) = keys::parse_counter(&key) else {
            continue;
        };
        if known.contains(key.as_slice()) || !window.contains(bucket) {
            continue;
        }
        let explained = spans.iter().any(|s| s.contains(org, bucket));
        strays.push((
            Truth {
                key,
                ..Truth::default()
            },
            explained,
        ));
    }
    let stray_truths: Vec<Truth> = strays.iter().map(|(t, _)| t.clone()).collect();
    for ((t, explained), value) in strays
        .iter()
        .zip(values(&redis, &stray_truths, false).await?)
    {
        v.add_stray(&t.key, value.unwrap_or(0), *explained);
    }
    v.unique_user_keys = scan(&redis, "a:{*}:uu:*").await?.len() as u64;
    v.cache_keys = scan(&redis, "a:{*}:c:*").await?.len() as u64;
    v.finish();
    Ok(v)
}

/// The first bucket whose counters are still in the window (the window's start rounded up).
fn next_bucket_in(window: Window) -> i32 {
    let mut b = window.first_bucket();
    if !window.contains(b) {
        b = time::bucket_of(time::bucket_start(b).unwrap_or(window.now) + 3600);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(acked: u64, unknown: u64) -> Truth {
        Truth {
            key: b"k".to_vec(),
            acked,
            unknown,
            unclean: false,
        }
    }

    fn judged(v: &mut Verdict, state: RunState) {
        let rec = RunRecord {
            run_id: 1,
            started: 1_795_627_383,
            ended: (state != RunState::Running && state != RunState::DidNotEnd)
                .then_some(1_795_627_483),
            end_state: Some(
                if state == RunState::Clean {
                    "clean"
                } else {
                    "rows_dropped"
                }
                .into(),
            ),
            seen_ago: if state == RunState::Running {
                1.0
            } else {
                100.0
            },
            ..RunRecord::default()
        };
        let info = RunInfo::from_record(&rec, 15.0, 1_795_627_600);
        assert_eq!(info.state, state);
        v.runs_judged.push(info);
    }

    #[test]
    fn should_classify_each_case() {
        let mut v = Verdict::default();
        judged(&mut v, RunState::Clean);
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
        assert_eq!(
            v.problems,
            ["lost acknowledged increments", "phantom increments"]
        );
    }

    #[test]
    fn should_be_clean_within_bounds() {
        let mut v = Verdict::default();
        judged(&mut v, RunState::Clean);
        v.add(&t(10, 3), Some(13));
        v.add(&t(10, 3), Some(10));
        v.finish();
        assert!(v.clean, "{:?}", v.problems);
        assert!(v.render().contains("CLEAN"));
    }

    #[test]
    fn should_fail_without_judged_runs_and_say_how_to_override() {
        let mut v = Verdict::default();
        v.finish();
        assert!(!v.clean);
        assert_eq!(v.problems, ["the target declares no runs"]);
        let text = v.render();
        assert!(
            text.contains("--run ID") && text.contains("--since"),
            "{text}"
        );
        let mut v = Verdict {
            runs_declared_unknown: vec!["42".into()],
            ..Verdict::default()
        };
        v.finish();
        assert_eq!(v.problems, ["no declared run is known to this PostgreSQL"]);
    }

    #[test]
    fn should_fail_on_stray_keys_and_list_a_bounded_sample() {
        let mut v = Verdict::default();
        judged(&mut v, RunState::Clean);
        v.add(&t(3, 0), Some(3));
        for i in 0..(SAMPLE as u64 + 5) {
            v.add_stray(
                format!("a:{{9{i:02}}}:ev:click:2026112517").as_bytes(),
                2,
                false,
            );
        }
        v.finish();
        assert!(!v.clean);
        assert_eq!(v.problems, ["stray counter keys"]);
        assert_eq!(v.stray_keys, SAMPLE as u64 + 5);
        assert_eq!(v.stray_increments, 2 * (SAMPLE as u64 + 5));
        assert_eq!(v.stray_sample.len(), SAMPLE);
        assert!(v.render().contains("(and 5 more)"), "{}", v.render());
    }

    #[test]
    fn should_report_phantoms_and_strays_of_unclean_runs_apart() {
        for state in [
            RunState::DidNotEnd,
            RunState::RowsDropped,
            RunState::Running,
        ] {
            let mut v = Verdict::default();
            judged(&mut v, state);
            let unclean = Truth {
                unclean: true,
                ..t(5, 0)
            };
            v.add(&unclean, Some(8)); // 3 increments whose rows the run did not write
            v.add_stray(b"a:{1}:ev:click:2026112517", 4, true);
            v.finish();
            assert!(v.clean, "{state:?}: {:?}", v.problems);
            assert_eq!(
                (
                    v.explained_phantom_increments,
                    v.keys_with_explained_phantoms
                ),
                (3, 1)
            );
            assert_eq!((v.phantom_increments, v.keys_with_phantoms), (0, 0));
            assert_eq!((v.explained_stray_keys, v.stray_keys), (1, 0));
            assert_eq!(v.unclean_runs.len(), 1);
            assert_eq!(v.unclean_runs[0].state, state);
            // Loss still fails.
            v.add(
                &Truth {
                    unclean: true,
                    ..t(5, 0)
                },
                Some(4),
            );
            v.finish();
            assert_eq!(v.problems, ["lost acknowledged increments"]);
        }
    }

    #[test]
    fn should_classify_runs_and_what_they_may_miss() {
        let base = RunRecord {
            run_id: 7,
            started: 1_795_626_300, // 2026-11-25T17:05:00Z
            organizations: Some(10),
            events_started: Some(120),
            rows_in_postgres: 100,
            seen_ago: 60.0,
            last_seen: Some(1_795_626_317),
            ..RunRecord::default()
        };
        let now = 1_795_640_000;
        let crashed = RunInfo::from_record(&base, 15.0, now);
        assert_eq!(crashed.state, RunState::DidNotEnd);
        assert_eq!(crashed.rows_possibly_missing, 20);
        let span = crashed.span.expect("span");
        assert!(span.contains(10, 2026112517) && !span.contains(11, 2026112517));
        assert!(
            span.contains(1, 2026112516),
            "10 min of slack before the start"
        );
        assert!(
            !span.contains(1, 2026112519),
            "nothing after its last heartbeat"
        );
        let running = RunInfo::from_record(
            &RunRecord {
                seen_ago: 2.0,
                ..base.clone()
            },
            15.0,
            now,
        );
        assert_eq!(running.state, RunState::Running);
        assert!(running
            .span
            .expect("span")
            .contains(1, time::bucket_of(now)));
        let ended = RunRecord {
            ended: Some(1_795_627_500),
            end_state: Some("clean".into()),
            ..base.clone()
        };
        let clean = RunInfo::from_record(&ended, 15.0, now);
        assert_eq!(
            (clean.state, clean.rows_possibly_missing, clean.span),
            (RunState::Clean, 0, None)
        );
        let dropped = RunRecord {
            end_state: Some("rows_dropped".into()),
            rows_dropped: Some(40),
            ..ended
        };
        let dropped = RunInfo::from_record(&dropped, 15.0, now);
        assert_eq!(
            (dropped.state, dropped.rows_possibly_missing),
            (RunState::RowsDropped, 40)
        );
    }

    #[test]
    fn should_sum_runs_per_key_and_mark_keys_unclean_runs_may_have_written() {
        let clean = RunInfo::from_record(
            &RunRecord {
                run_id: 1,
                started: 1_795_600_000,
                ended: Some(1_795_600_100),
                end_state: Some("clean".into()),
                ..RunRecord::default()
            },
            15.0,
            0,
        );
        let crashed = RunInfo::from_record(
            &RunRecord {
                run_id: 2,
                started: 1_795_627_383,
                last_seen: Some(1_795_627_400),
                organizations: Some(5),
                seen_ago: 100.0,
                ..RunRecord::default()
            },
            15.0,
            0,
        );
        let mut runs = vec![clean, crashed];
        let ev = EventType::Click;
        let rows = [
            (1, 1, 2026112417, ev, 4, 0), // clean run only, another hour
            (1, 1, 2026112517, ev, 2, 1), // both runs on this key
            (2, 1, 2026112517, ev, 3, 0),
            (1, 9, 2026112517, ev, 6, 0), // clean run, an org the crashed run does not have
            (1, 3, 2026112000, ev, 1, 0), // outside the window
        ];
        let t = truths(&rows, &mut runs, |b| b > 2026112100);
        let got: Vec<(String, u64, u64, bool)> = t
            .iter()
            .map(|t| {
                (
                    String::from_utf8_lossy(&t.key).into_owned(),
                    t.acked,
                    t.unknown,
                    t.unclean,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a:{1}:ev:click:2026112417".to_string(), 4, 0, false),
                ("a:{1}:ev:click:2026112517".to_string(), 5, 1, true),
                ("a:{9}:ev:click:2026112517".to_string(), 6, 0, false),
            ]
        );
        assert_eq!((runs[0].counter_keys, runs[1].counter_keys), (3, 1));
    }

    #[test]
    fn should_bound_the_window_by_the_redis_clock() {
        // 2026-11-25T17:23:03Z, 24 h retention: counters of 2026-11-24T16:00 expire at
        // 17:00 today (gone), those of 17:00 yesterday at 18:00 (kept).
        let w = Window {
            now: 1_795_627_383,
            retention_hours: 24,
        };
        assert!(!w.contains(2026112416));
        assert!(w.contains(2026112417));
        assert!(w.contains(2026112517));
        assert_eq!(next_bucket_in(w), 2026112417);
        assert!(w.first_bucket() <= 2026112417);
        // Within a minute of expiry: left out.
        let edge = Window {
            now: 1_795_626_000 - 30,
            retention_hours: 24,
        };
        assert!(!edge.contains(2026112416));
    }
}
