//! Configuration: command line and environment, resolved into typed, validated values.
//!
//! Every option is defined once, in the table in [`cli`] (flag, environment variable,
//! default, help). A flag beats the environment, which beats the default; an empty
//! environment variable counts as unset. `parse` never panics and never prints a secret:
//! the admin token is never echoed, URL passwords are shown as `***`, and as a last line of
//! defence every known secret is scrubbed from error output (argh echoes unknown arguments).
//!
//! | file | what |
//! |---|---|
//! | `cli.rs` | the option table, the argh structs built from it |
//! | `resolve.rs` | raw text to typed values, with the error messages |
//! | `connect.rs` | where and how to connect: Redis, PostgreSQL, TLS and password files, token |
//! | `redact.rs` | hiding passwords and tokens in text; `Secret` and `SecretUrl`, which hide themselves |
//! | `bench.rs` | the `bench-redis` subcommand's options and rules |

mod bench;
#[cfg(test)]
mod bench_tests;
mod cli;
mod connect;
mod redact;
mod resolve;
#[cfg(test)]
mod table_tests;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use argh::FromArgs;

pub use bench::BenchRedisArgs;

use crate::pg::PgConfig;
use crate::resp::{PoolConfig, Protocol, RedisMode, RedisUrl};
use crate::tls::TlsFiles;
use cli::{opt, SubCli, TopCli};
use connect::{database_flags, redis_flags};
use redact::{scrub, url_secrets};
pub use redact::{Secret, SecretUrl};
use resolve::{run_flags, Resolver};

/// What the process should do.
// Built once at start-up: boxing `Config` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// No subcommand: run the workload.
    Run(Config),
    Verify(VerifyArgs),
    Report(ReportArgs),
    Switch(SwitchArgs),
    /// `bench-redis`: the raw Redis benchmark.
    BenchRedis(BenchRedisArgs),
}

/// The result of [`parse`].
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ParseOutcome {
    Command(Command),
    /// Stop now: `--help` (code 0, print `output` to stdout) or bad usage (code 2, print
    /// `output` to stderr). `output` has no trailing newline.
    Exit {
        code: i32,
        output: String,
    },
}

/// The environment variable of the log filter (`tracing`'s `EnvFilter`, e.g. `info`, `debug`).
pub const LOG_FILTER_ENV: &str = "RUST_LOG";

/// Where an instance of a run takes its index from when INSTANCE_INDEX is not set, in this
/// order: a Kubernetes Indexed Job's, a StatefulSet's pod-index label (the manifests pass it
/// through the downward API), the host name's trailing `-N` (a StatefulSet pod's name).
pub const INDEX_ENV_VARS: [&str; 3] = ["JOB_COMPLETION_INDEX", "POD_INDEX", "HOSTNAME"];

/// Every environment variable the program reads: each option's (see `--help`), then
/// [`LOG_FILTER_ENV`] and [`INDEX_ENV_VARS`]. Tests clear them all from the environment of
/// the programs they spawn.
pub const ENV_VARS: &[&str] = opt::ENV_VARS;

/// Exit code for bad usage or configuration (0: done, 1: a failure or a loss found, 2: this).
pub const EXIT_USAGE: i32 = 2;

/// The workload's configuration. See `analytics-demo --help` for each option.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub events_per_second: u64,
    pub queries_per_second: u64,
    pub organizations: u32,
    pub users_per_org: u32,
    /// Ratio in 0..=1 (the option is given in percent).
    pub cache_hit_target: f64,
    /// In-flight cap, all shards together.
    pub max_workers: usize,
    /// Redis connections, all shards together.
    pub redis_pool_size: usize,
    pub cache_ttl: Duration,
    pub warmup_interval: Duration,
    /// Hours of per-hour counters.
    pub time_buckets: u32,
    /// With the password of REDIS_PASSWORD_FILE when given (it replaces the URL's). In
    /// cluster mode, the first seed node.
    pub redis_url: RedisUrl,
    /// Every URL of REDIS_URL (several only in cluster mode), `redis_url` first.
    pub redis_seeds: Vec<RedisUrl>,
    pub redis_mode: RedisMode,
    /// RESP version to negotiate with Redis.
    pub redis_protocol: Protocol,
    /// CA bundle and client certificate for `rediss://` (also for a switched-to target).
    pub redis_tls: TlsFiles,
    /// A validated `postgres://`/`postgresql://` URL with a host, as given. May hold a
    /// password (`Debug` and `Display` hide it).
    pub database_url: SecretUrl,
    /// `database_url` resolved with DATABASE_PASSWORD(_FILE) and DATABASE_CA_FILE.
    pub database: PgConfig,
    pub bind_address: SocketAddr,
    /// Shards, duration, seed, Redis command bounds, pinning (shared with `bench-redis`).
    pub run: RunOptions,
    pub log_format: LogFormat,
    /// `None` = admin endpoint disabled. Never printed (`Debug` shows `***`).
    pub admin_token: Option<Secret>,
    pub distribution: Distribution,
    pub db_batch_size: usize,
    /// Rows held in memory while PostgreSQL is slow or down; at least `db_batch_size`.
    pub db_buffer_rows: usize,
    /// Bound of each writer / start-up operation on PostgreSQL (connect, one batch, retention).
    pub db_timeout: Duration,
    /// Bound of one cache-miss read.
    pub db_read_timeout: Duration,
    pub progress_interval: Duration,
    /// The shards' pacing grid; zero = auto (see `shard::pacer::pace_step`).
    pub pace_step: Duration,
    /// Admin endpoints without a token for loopback clients (off by default).
    pub admin_allow_unauthenticated_loopback: bool,
    pub instance_index: u32,
    pub instance_count: u32,
    /// `RUN_NAME`: the coordinated run this instance belongs to.
    pub run_name: Option<String>,
    /// `START_TIMEOUT`: how long a named run's instance waits for the others.
    pub start_timeout: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How organizations and users are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    Zipf,
    Uniform,
}

/// `analytics-demo verify`.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyArgs {
    /// As [`Config::redis_url`].
    pub redis_url: RedisUrl,
    pub redis_seeds: Vec<RedisUrl>,
    pub redis_mode: RedisMode,
    pub redis_protocol: Protocol,
    pub redis_tls: TlsFiles,
    /// Validated like [`Config::database_url`].
    pub database_url: SecretUrl,
    pub database: PgConfig,
    pub json: bool,
    /// `--run`: judge these runs (sorted, no duplicates) instead of the declared ones.
    pub runs: Vec<i64>,
    /// `--since`: judge the runs started at or after this unix time instead.
    pub since: Option<i64>,
    /// `--run-name`: judge every instance's run of this coordinated run instead.
    pub run_name: Option<String>,
}

/// `analytics-demo report`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportArgs {
    /// `http://` or `https://` URL of a running instance.
    pub admin_url: SecretUrl,
    pub json: bool,
    /// `--run-name`: the whole coordinated run, from PostgreSQL (with its URL as given and
    /// resolved) instead of one instance's /report.
    pub run: Option<(String, SecretUrl, crate::pg::PgConfig)>,
}

/// `analytics-demo switch`.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchArgs {
    /// The new server, or a cluster's seed nodes; with the password of `--to-password-file`
    /// when given.
    pub to: Vec<RedisUrl>,
    /// `--to-mode`: what `to` is (auto: the running instance asks it; several URLs: a
    /// cluster).
    pub mode: crate::resp::RedisMode,
    pub admin_url: SecretUrl,
    /// Never printed (`Debug` shows `***`).
    pub admin_token: Option<Secret>,
    /// How long to wait for the cutover to complete (zero: do not wait).
    pub wait: std::time::Duration,
}

/// The options of a run that the workload and `bench-redis` share, resolved once (by
/// `Resolver::run_options`) for both.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// `None` = run until stopped.
    pub duration: Option<Duration>,
    /// 0 = auto; see [`RunOptions::resolved_shards`].
    pub shards: usize,
    /// `None` = derive one from the time and pid.
    pub seed: Option<u64>,
    /// Skew of the zipf distributions (tenants and users; bench-redis keys).
    pub zipf_exponent: f64,
    pub command_timeout: Duration,
    pub max_reply_bytes: usize,
    /// Pin threads to CPUs (`--no-pin` turns it off).
    pub pin: bool,
}

impl RunOptions {
    /// The shard count to use: `--shards` if set, else one per usable CPU but one (that one
    /// runs the control core), and at least 1.
    pub fn resolved_shards(&self, usable_cpus: usize) -> usize {
        if self.shards != 0 {
            self.shards
        } else {
            usable_cpus.saturating_sub(1).max(1)
        }
    }

    /// The Redis pool settings of the run: its command bounds, `protocol` and `tls`; one
    /// connection, shard 0, no run declaration (callers set what differs).
    pub fn redis_pool(&self, protocol: Protocol, tls: Arc<rustls::ClientConfig>) -> PoolConfig {
        PoolConfig {
            size: 1,
            command_timeout: self.command_timeout,
            connect_timeout: REDIS_CONNECT_TIMEOUT,
            max_reply_bytes: self.max_reply_bytes,
            protocol,
            tls: Some(tls),
            ..PoolConfig::default()
        }
    }
}

/// Bound of one Redis connection attempt (resolve, connect, TLS, handshake) in a run.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Config {
    /// Checks that need the shard count; `parse` runs it when `--shards` is explicit, the
    /// caller must run it with [`RunOptions::resolved_shards`] otherwise.
    pub fn validate_against_shards(&self, shards: usize) -> Result<(), String> {
        let checks = [
            (&opt::redis_pool_size, self.redis_pool_size, "connection"),
            (&opt::max_workers, self.max_workers, "in-flight operation"),
        ];
        for (def, value, unit) in checks {
            if value < shards {
                return Err(format!(
                    "{} ({value}) is smaller than the number of shards ({shards}): every shard \
                     needs at least one {unit}; raise {} or lower {}",
                    def.env,
                    def.flag(),
                    opt::shards.label()
                ));
            }
        }
        Ok(())
    }
}

/// Parses `args` (`args[0]` is the program name) with `env` as the environment.
pub fn parse(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> ParseOutcome {
    let args = split_equals(args.get(1..).unwrap_or_default());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match parse_args(&args, env) {
        ParseOutcome::Exit { code, output } if code != 0 => ParseOutcome::Exit {
            code,
            output: scrub(&output, &secrets(&args, env)),
        },
        outcome => outcome,
    }
}

/// [`parse`] with the process's arguments and environment.
pub fn parse_from_process() -> ParseOutcome {
    let mut args = Vec::new();
    for (i, arg) in std::env::args_os().enumerate() {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(_) => return usage_error(format!("argument {i} is not valid UTF-8")),
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // A non-UTF-8 variable is read lossily (U+FFFD): numbers, choices and the token reject it.
    parse(&args, &|key| {
        std::env::var_os(key).map(|v| v.to_string_lossy().into_owned())
    })
}

/// Help and error output use the program name without its directory, like argh's `from_env`.
const PROGRAM: &str = "analytics-demo";

fn parse_args(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> ParseOutcome {
    let mut top = match TopCli::from_args(&[PROGRAM], args) {
        Ok(top) => top,
        Err(early) => {
            let code = if early.status.is_ok() { 0 } else { EXIT_USAGE };
            return ParseOutcome::Exit {
                code,
                output: early.output.trim_end().to_string(),
            };
        }
    };
    let r = Resolver { env };
    let command = match top.command.take() {
        None => resolve_config(top, &r).map(Command::Run),
        Some(sub) => {
            let misplaced: Vec<String> = top.given().iter().map(|d| d.flag()).collect();
            if misplaced.is_empty() {
                resolve_sub(sub, &r)
            } else {
                Err(format!(
                    "{} given before the subcommand: workload options do not apply to it; \
                     put the subcommand's own options after its name",
                    misplaced.join(", ")
                ))
            }
        }
    };
    match command {
        Ok(command) => ParseOutcome::Command(command),
        Err(message) => usage_error(message),
    }
}

fn usage_error(message: String) -> ParseOutcome {
    ParseOutcome::Exit {
        code: EXIT_USAGE,
        output: format!("error: {message}"),
    }
}

fn resolve_config(c: TopCli, r: &Resolver) -> Result<Config, String> {
    let (database_url, database) = r.postgres(database_flags!(c))?;
    let redis_mode_flag = c.redis_mode.clone();
    let (redis_seeds, redis_protocol, redis_tls) = r.redis_endpoints(redis_flags!(c))?;
    let redis_mode = r.redis_mode(redis_mode_flag, &redis_seeds)?;
    let mut cfg = Config {
        events_per_second: r.uint(&opt::events_per_second, c.events_per_second)?,
        queries_per_second: r.uint(&opt::queries_per_second, c.queries_per_second)?,
        organizations: r.uint(&opt::organizations, c.organizations)?,
        users_per_org: r.uint(&opt::users_per_org, c.users_per_org)?,
        cache_hit_target: r.number(&opt::cache_hit_target, c.cache_hit_target)? / 100.0,
        max_workers: r.uint(&opt::max_workers, c.max_workers)?,
        redis_pool_size: r.uint(&opt::redis_pool_size, c.redis_pool_size)?,
        cache_ttl: r.seconds(&opt::cache_ttl, c.cache_ttl)?,
        warmup_interval: r.seconds(&opt::warmup_interval, c.warmup_interval)?,
        time_buckets: r.uint(&opt::time_buckets, c.time_buckets)?,
        redis_url: redis_seeds[0].clone(),
        redis_seeds,
        redis_mode,
        redis_protocol,
        redis_tls,
        database_url,
        database,
        bind_address: r.socket_addr(&opt::bind_address, c.bind_address)?,
        run: r.run_options(run_flags!(c))?,
        log_format: r.choice(
            &opt::log_format,
            c.log_format,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        )?,
        admin_token: r.token(c.admin_token, c.admin_token_file)?,
        distribution: r.choice(
            &opt::distribution,
            c.distribution,
            &[
                ("zipf", Distribution::Zipf),
                ("uniform", Distribution::Uniform),
            ],
        )?,
        db_batch_size: r.uint(&opt::db_batch_size, c.db_batch_size)?,
        db_buffer_rows: r.uint(&opt::db_buffer_rows, c.db_buffer_rows)?,
        db_timeout: r.millis(&opt::db_timeout_ms, c.db_timeout_ms)?,
        db_read_timeout: r.millis(&opt::db_read_timeout_ms, c.db_read_timeout_ms)?,
        progress_interval: r.seconds(&opt::progress_interval, c.progress_interval)?,
        pace_step: r
            .uint(&opt::pace_step_us, c.pace_step_us)
            .map(Duration::from_micros)?,
        admin_allow_unauthenticated_loopback: r.switch(
            &opt::admin_allow_unauthenticated_loopback,
            c.admin_allow_unauthenticated_loopback,
        )?,
        instance_index: 0,
        instance_count: r.uint(&opt::instance_count, c.instance_count)?,
        run_name: r.run_name(&opt::run_name, c.run_name)?,
        start_timeout: r.seconds(&opt::start_timeout, c.start_timeout)?,
    };
    cfg.instance_index = r.instance_index(c.instance_index, cfg.instance_count)?;
    cfg.validate()?;
    Ok(cfg)
}

impl Config {
    /// Rules between options (single-option rules are checked while resolving).
    fn validate(&self) -> Result<(), String> {
        if self.events_per_second == 0 && self.queries_per_second == 0 {
            return Err(format!(
                "{} and {} are both 0: nothing to do",
                opt::events_per_second.label(),
                opt::queries_per_second.label()
            ));
        }
        if self.db_buffer_rows < self.db_batch_size {
            return Err(format!(
                "{} ({}) must be at least {} ({})",
                opt::db_buffer_rows.label(),
                self.db_buffer_rows,
                opt::db_batch_size.label(),
                self.db_batch_size
            ));
        }
        if self.instance_index >= self.instance_count {
            return Err(format!(
                "{} ({}) must be less than {} ({})",
                opt::instance_index.label(),
                self.instance_index,
                opt::instance_count.label(),
                self.instance_count
            ));
        }
        if self.instance_count > self.organizations {
            return Err(format!(
                "{} ({}) is larger than {} ({}): some instances would have no organization",
                opt::instance_count.label(),
                self.instance_count,
                opt::organizations.label(),
                self.organizations
            ));
        }
        if self.run.shards != 0 {
            self.validate_against_shards(self.run.shards)?;
        }
        Ok(())
    }
}

fn resolve_sub(sub: SubCli, r: &Resolver) -> Result<Command, String> {
    Ok(match sub {
        SubCli::Verify(v) => {
            let (database_url, database) = r.postgres(database_flags!(v))?;
            let redis_mode_flag = v.redis_mode.clone();
            let (redis_seeds, redis_protocol, redis_tls) = r.redis_endpoints(redis_flags!(v))?;
            Command::Verify(VerifyArgs {
                redis_mode: r.redis_mode(redis_mode_flag, &redis_seeds)?,
                redis_url: redis_seeds[0].clone(),
                redis_seeds,
                redis_protocol,
                redis_tls,
                database_url,
                database,
                json: v.json,
                runs: r.run_ids(&opt::run, v.run)?,
                since: r.instant(&opt::since, v.since)?,
                run_name: r.run_name(&opt::run_name, v.run_name)?,
            })
        }
        SubCli::Report(v) => Command::Report(ReportArgs {
            admin_url: r.http_url(&opt::admin_url, v.admin_url.clone())?,
            json: v.json,
            run: match r.run_name(&opt::run_name, v.run_name.clone())? {
                Some(name) => {
                    let (url, pg) = r.postgres(database_flags!(v))?;
                    Some((name, url, pg))
                }
                None => None,
            },
        }),
        SubCli::Switch(v) => Command::Switch(SwitchArgs {
            to: {
                let pw = match &v.to_password_file {
                    Some(path) => Some(connect::read_secret_file(SWITCH_TO_PW, path)?),
                    None => None,
                };
                let mut to = Vec::new();
                for item in v.to.split(',').map(str::trim) {
                    let url = connect::redis_url(SWITCH_TO, item)?;
                    to.push(match &pw {
                        Some(pw) => url.with_password(pw.clone()),
                        None => url,
                    });
                }
                to
            },
            mode: match v.to_mode.as_deref() {
                None => crate::resp::RedisMode::Auto,
                Some(m) => crate::resp::RedisMode::CHOICES
                    .iter()
                    .find(|(name, _)| *name == m)
                    .map(|(_, mode)| *mode)
                    .ok_or_else(|| {
                        format!("{SWITCH_TO_MODE}: '{m}' is not one of auto, standalone, cluster")
                    })?,
            },
            admin_url: r.http_url(&opt::admin_url, v.admin_url)?,
            admin_token: r.token(v.admin_token, v.admin_token_file)?,
            wait: std::time::Duration::from_secs(v.wait),
        }),
        SubCli::BenchRedis(v) => Command::BenchRedis(bench::resolve(v, r)?),
    })
}

/// The options outside the table (`switch`'s own, no environment variable).
const SWITCH_TO: &str = "--to";
const SWITCH_TO_PW: &str = "--to-password-file";
const SWITCH_TO_MODE: &str = "--to-mode";

fn takes_value(flag: &str) -> bool {
    flag == SWITCH_TO
        || flag == SWITCH_TO_PW
        || flag == SWITCH_TO_MODE
        || opt::ALL.iter().any(|d| !d.switch && d.flag() == flag)
}

/// Accepts `--flag=value` (argh does not) by splitting it in two; otherwise argh would echo
/// `--admin-token=secret` back as an unknown argument. Values are left alone.
fn split_equals(args: &[&str]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let (mut value_next, mut options_ended) = (false, false);
    for &arg in args {
        let is_value = value_next;
        value_next = false;
        if !is_value && !options_ended {
            if arg == "--" {
                options_ended = true;
            } else if let Some((flag, value)) = arg.split_once('=').filter(|_| arg.starts_with('-'))
            {
                if takes_value(flag) {
                    out.push(flag.to_string());
                    out.push(value.to_string());
                } else {
                    // argh rejects it as a whole and would echo it: the value could be a
                    // secret given to a misspelt flag.
                    out.push(format!("{flag}=***"));
                }
                continue;
            } else {
                value_next = takes_value(arg);
            }
        }
        out.push(arg.to_string());
    }
    out
}

/// Every secret the input holds: admin tokens and passwords (flag and env), URL passwords,
/// and the content of password files.
fn secrets(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let valued = [&opt::admin_token, &opt::database_password];
    let files = [
        &opt::redis_password_file,
        &opt::database_password_file,
        &opt::admin_token_file,
    ];
    let mut secrets: Vec<String> = args.iter().flat_map(|a| url_secrets(a)).collect();
    let mut secret_files: Vec<String> = Vec::new();
    for pair in args.windows(2) {
        if valued.iter().any(|d| pair[0] == d.flag()) {
            secrets.push(pair[1].to_string());
        }
        if pair[0] == SWITCH_TO_PW || files.iter().any(|d| pair[0] == d.flag()) {
            secret_files.push(pair[1].to_string());
        }
    }
    for def in valued {
        secrets.extend(env(def.env));
    }
    for def in files {
        secret_files.extend(env(def.env));
    }
    for path in secret_files {
        if let Ok(text) = std::fs::read_to_string(&path) {
            secrets.push(text.trim_end_matches(['\r', '\n']).to_string());
        }
    }
    for def in opt::ALL {
        if let Some(v) = env(def.env) {
            secrets.extend(url_secrets(&v));
        }
    }
    secrets
}
