//! The option table: every option's flag, environment variable, default and help text, once.
//!
//! argh only accepts string literals as help text and has no environment support, so the
//! table is a macro: each entry is one doc line ending in `[env: NAME] [default: VALUE]`, and
//! for a number `[range: MIN..=MAX]` too. From it come both the argh structs (`--help` shows
//! the env name, default and range) and [`OptDef`]s, whose `env`, `default` and `range` are cut
//! out of that same line at compile time: the parsing code takes the range from there.
//! The flag is the field name in kebab case, which is what argh derives.

use argh::FromArgs;

/// One option of the table.
#[derive(Debug)]
pub(crate) struct OptDef {
    /// Field name, e.g. `events_per_second`.
    pub name: &'static str,
    /// Environment variable, e.g. `EVENTS_PER_SECOND`.
    pub env: &'static str,
    /// Built-in default as text; `None` for `[default: none]`.
    pub default: Option<&'static str>,
    /// Accepted values of a numeric option, from `[range: ...]`; unbounded when absent.
    pub range: Range,
    /// Whether the option is an argh switch (a flag without a value).
    pub switch: bool,
}

/// The accepted values of a numeric option, as the help text shows them: `[range: 1..=8760]`,
/// `[range: 0..]` (no maximum but the field type's), `[range: >0..=5]` (0 itself excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    pub min: u64,
    /// `>`: the minimum itself is not accepted (only for decimal numbers).
    pub min_excluded: bool,
    /// `None`: the field type's maximum.
    pub max: Option<u64>,
}

impl Range {
    /// No bounds but the field type's (options without a `[range: ...]`).
    pub const ANY: Range = Range {
        min: 0,
        min_excluded: false,
        max: None,
    };

    /// Parses the text of a `[range: ...]` tag; fails the build if it is malformed.
    const fn parse(text: &str) -> Range {
        let b = text.as_bytes();
        let min_excluded = !b.is_empty() && b[0] == b'>';
        let (min, i) = digits(b, if min_excluded { 1 } else { 0 });
        assert!(
            i + 2 <= b.len() && b[i] == b'.' && b[i + 1] == b'.',
            "option doc: a range is MIN..=MAX or MIN.."
        );
        if i + 2 == b.len() {
            return Range {
                min,
                min_excluded,
                max: None,
            };
        }
        assert!(
            b[i + 2] == b'=',
            "option doc: a range is MIN..=MAX or MIN.."
        );
        let (max, end) = digits(b, i + 3);
        assert!(end == b.len() && min <= max, "option doc: bad range");
        Range {
            min,
            min_excluded,
            max: Some(max),
        }
    }
}

/// The number whose digits start at `b[i]`, and the index after them.
const fn digits(b: &[u8], mut i: usize) -> (u64, usize) {
    let start = i;
    let mut v: u64 = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        v = v * 10 + (b[i] - b'0') as u64;
        i += 1;
    }
    assert!(i > start, "option doc: a range bound is not a number");
    (v, i)
}

impl OptDef {
    const fn new(name: &'static str, doc: &'static str, switch: bool) -> OptDef {
        let default = tag(doc, "[default: ");
        OptDef {
            name,
            env: tag(doc, "[env: "),
            default: if str_eq(default, "none") {
                None
            } else {
                Some(default)
            },
            range: match find_tag(doc, "[range: ") {
                Some(text) => Range::parse(text),
                None => Range::ANY,
            },
            switch,
        }
    }

    /// `--events-per-second`, the flag argh derives from the field name.
    pub fn flag(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }

    /// `--events-per-second (EVENTS_PER_SECOND)`: how error messages name an option.
    pub fn label(&self) -> String {
        format!("{} ({})", self.flag(), self.env)
    }
}

/// The text between `key` and the next `]` in `doc`; fails the build if it is missing.
const fn tag(doc: &'static str, key: &str) -> &'static str {
    match find_tag(doc, key) {
        Some(value) => value,
        None => panic!("option doc: every option needs [env: ...] and [default: ...]"),
    }
}

/// The text between `key` and the next `]` in `doc`, if `key` is there.
const fn find_tag(doc: &'static str, key: &str) -> Option<&'static str> {
    let (d, k) = (doc.as_bytes(), key.as_bytes());
    let mut i = 0;
    while i + k.len() <= d.len() {
        let mut j = 0;
        while j < k.len() && d[i + j] == k[j] {
            j += 1;
        }
        if j == k.len() {
            let start = i + k.len();
            let mut end = start;
            while end < d.len() && d[end] != b']' {
                end += 1;
            }
            assert!(end < d.len(), "option doc: unterminated tag");
            let (_, rest) = d.split_at(start);
            let (value, _) = rest.split_at(end - start);
            match core::str::from_utf8(value) {
                Ok(s) => return Some(s),
                Err(_) => panic!("option doc: tag is not UTF-8"),
            }
        }
        i += 1;
    }
    None
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Turns the table into `opt::<name>` definitions, `opt::ALL`, and the `cli_struct!` macro,
/// which builds an argh struct from a list of table names plus fields of its own.
/// (`$d` is a literal `$`, so the generated macro can have variables of its own.)
macro_rules! option_table {
    ($d:tt
        options { $( #[doc = $doc:tt] $name:ident, )* }
        lists { $( #[doc = $ldoc:tt] $lname:ident, )* }
        switches { $( #[doc = $sdoc:tt] $sname:ident, )* }
    ) => {
        #[allow(non_upper_case_globals)]
        pub(crate) mod opt {
            use super::OptDef;
            $( pub const $name: OptDef = OptDef::new(stringify!($name), $doc, false); )*
            $( pub const $lname: OptDef = OptDef::new(stringify!($lname), $ldoc, false); )*
            $( pub const $sname: OptDef = OptDef::new(stringify!($sname), $sdoc, true); )*
            /// Every option of the table, for tests and for `--flag=value` splitting.
            pub const ALL: &[&OptDef] = &[$(&$name,)* $(&$lname,)* $(&$sname,)*];
            /// Every environment variable the program reads: the table's, then the log filter.
            pub const ENV_VARS: &[&str] = &[
                $($name.env,)* $($lname.env,)* $($sname.env,)* crate::config::LOG_FILTER_ENV,
                crate::config::INDEX_ENV_VARS[0], crate::config::INDEX_ENV_VARS[1],
                crate::config::INDEX_ENV_VARS[2],
            ];
        }

        macro_rules! cli_struct {
            (
                $d(#[$d($d attr:tt)*])*
                $d vis:vis struct $d sname:ident [$d($d opt:ident),* $d(,)?] { $d($d own:tt)* }
            ) => {
                impl $d sname {
                    /// Table options given on the command line (not via env or default).
                    #[allow(dead_code)]
                    pub(crate) fn given(&self) -> Vec<&'static OptDef> {
                        let mut given = Vec::new();
                        $d( if Given::given(&self.$d opt) { given.push(&opt::$d opt); } )*
                        given
                    }
                }
                cli_struct!(@munch [$d(#[$d($d attr)*])* $d vis struct $d sname]
                    [$d($d own)*] [$d($d opt)*]);
            };
            $(
                (@munch $d hdr:tt [$d($d acc:tt)*] [$name $d($d rest:ident)*]) => {
                    cli_struct!(@munch $d hdr
                        [$d($d acc)* #[doc = $doc] #[argh(option)] pub $name: Option<String>,]
                        [$d($d rest)*]);
                };
            )*
            $(
                (@munch $d hdr:tt [$d($d acc:tt)*] [$lname $d($d rest:ident)*]) => {
                    cli_struct!(@munch $d hdr
                        [$d($d acc)* #[doc = $ldoc] #[argh(option)] pub $lname: Vec<String>,]
                        [$d($d rest)*]);
                };
            )*
            $(
                (@munch $d hdr:tt [$d($d acc:tt)*] [$sname $d($d rest:ident)*]) => {
                    cli_struct!(@munch $d hdr
                        [$d($d acc)* #[doc = $sdoc] #[argh(switch)] pub $sname: bool,]
                        [$d($d rest)*]);
                };
            )*
            (@munch [$d(#[$d($d attr:tt)*])* $d vis:vis struct $d sname:ident]
                [$d($d acc:tt)*] []) => {
                #[derive(FromArgs)]
                $d(#[$d($d attr)*])*
                $d vis struct $d sname { $d($d acc)* }
            };
        }
    };
}

/// Whether a raw argh field was set on the command line.
trait Given {
    fn given(&self) -> bool;
}

impl Given for Option<String> {
    fn given(&self) -> bool {
        self.is_some()
    }
}

impl Given for Vec<String> {
    fn given(&self) -> bool {
        !self.is_empty()
    }
}

impl Given for bool {
    fn given(&self) -> bool {
        *self
    }
}

option_table! { $
    options {
        /// events started per second, all shards together [env: EVENTS_PER_SECOND] [default: 1000] [range: 0..]
        events_per_second,
        /// dashboard queries started per second [env: QUERIES_PER_SECOND] [default: 10000] [range: 0..]
        queries_per_second,
        /// number of tenant organizations [env: ORGANIZATIONS] [default: 500] [range: 1..=10000000]
        organizations,
        /// users per organization [env: USERS_PER_ORG] [default: 1000] [range: 1..]
        users_per_org,
        /// steady-state cache hit ratio to aim for, in percent [env: CACHE_HIT_TARGET] [default: 95] [range: 0..=100]
        cache_hit_target,
        /// cap on operations in flight, all shards together (at least one per shard) [env: MAX_WORKERS] [default: 500] [range: 1..]
        max_workers,
        /// number of Redis connections, all shards together (at least one per shard) [env: REDIS_POOL_SIZE] [default: 100] [range: 1..]
        redis_pool_size,
        /// lifetime of cached query results, in seconds [env: CACHE_TTL] [default: 300] [range: 1..=315360000]
        cache_ttl,
        /// seconds between refreshes of every organization's dashboard cache [env: WARMUP_INTERVAL] [default: 300] [range: 1..=315360000]
        warmup_interval,
        /// hours of per-hour counters kept in Redis [env: TIME_BUCKETS] [default: 24] [range: 1..=8760]
        time_buckets,
        /// the Redis to load: redis://[user[:password]@]host[:port][/db] or rediss:// [env: REDIS_URL] [default: redis://127.0.0.1:6379]
        redis_url,
        /// standalone, cluster (REDIS_URL may then list several seed nodes, comma separated), or auto: cluster when the server's INFO cluster says cluster_enabled:1 [env: REDIS_MODE] [default: auto]
        redis_mode,
        /// protocol to speak with Redis: auto (RESP3 via HELLO 3 where the server supports it, else RESP2), 2, or 3 (RESP3 or no connection) [env: REDIS_PROTOCOL] [default: auto]
        redis_protocol,
        /// the PostgreSQL source of truth: postgres://user[:password]@host[:port]/db[?sslmode=...] [env: DATABASE_URL] [default: postgres://postgres@127.0.0.1:5432/analytics]
        database_url,
        /// the CAs trusted for rediss://, a PEM bundle (unset = the system store) [env: REDIS_CA_FILE] [default: none]
        redis_ca_file,
        /// client certificate (PEM, with its chain) for rediss:// servers that ask for one; needs --redis-client-key [env: REDIS_CLIENT_CERT] [default: none]
        redis_client_cert,
        /// private key (PEM) of --redis-client-cert [env: REDIS_CLIENT_KEY] [default: none]
        redis_client_key,
        /// file holding the Redis password (one trailing newline ignored); replaces the password of the Redis URL [env: REDIS_PASSWORD_FILE] [default: none]
        redis_password_file,
        /// the CAs trusted for PostgreSQL TLS (sslmode verify-ca/verify-full), a PEM bundle; replaces sslrootcert of the URL (unset = sslrootcert, else the system store) [env: DATABASE_CA_FILE] [default: none]
        database_ca_file,
        /// the PostgreSQL password; replaces the password of the URL (prefer --database-password-file) [env: DATABASE_PASSWORD] [default: none]
        database_password,
        /// file holding the PostgreSQL password (one trailing newline ignored); replaces the password of the URL [env: DATABASE_PASSWORD_FILE] [default: none]
        database_password_file,
        /// address of the HTTP server (metrics, health, report, admin, dashboard) [env: BIND_ADDRESS] [default: 0.0.0.0:3000]
        bind_address,
        /// shard executors (0 = usable CPUs - 1, at least 1) [env: SHARDS] [default: 0] [range: 0..=1024]
        shards,
        /// seconds to run (0 = until stopped) [env: DURATION] [default: 0] [range: 0..=315360000]
        duration,
        /// seed of the random generators (unset = derived from time and pid) [env: SEED] [default: none] [range: 0..]
        seed,
        /// log format: text or json [env: LOG_FORMAT] [default: text]
        log_format,
        /// token required by POST /admin/redis-target (unset = admin endpoint disabled) [env: ADMIN_TOKEN] [default: none]
        admin_token,
        /// file holding the admin token (one trailing newline ignored), e.g. a mounted secret; instead of ADMIN_TOKEN [env: ADMIN_TOKEN_FILE] [default: none]
        admin_token_file,
        /// how organizations and users are picked: zipf or uniform [env: DISTRIBUTION] [default: zipf]
        distribution,
        /// skew of the zipf distribution [env: ZIPF_EXPONENT] [default: 1.0] [range: >0..=5]
        zipf_exponent,
        /// timeout of one Redis command, in milliseconds [env: REDIS_COMMAND_TIMEOUT_MS] [default: 1000] [range: 1..=600000]
        command_timeout_ms,
        /// largest Redis reply accepted, in bytes [env: REDIS_MAX_REPLY_BYTES] [default: 16777216] [range: 1024..]
        max_reply_bytes,
        /// rows per PostgreSQL COPY batch [env: DB_BATCH_SIZE] [default: 5000] [range: 1..=1000000]
        db_batch_size,
        /// event rows held in memory while PostgreSQL is slow or down (at least the batch size) [env: DB_BUFFER_ROWS] [default: 500000] [range: 1..]
        db_buffer_rows,
        /// timeout of each PostgreSQL operation of the writer and of start-up, in milliseconds: connecting and logging in, one batch's COPY transaction, retention; 90% of it is the server-side statement_timeout of those connections. A batch that times out is retried on a new connection; raise this with a large --db-batch-size [env: DB_TIMEOUT_MS] [default: 5000] [range: 1..=600000]
        db_timeout_ms,
        /// timeout of one cache-miss read from PostgreSQL, in milliseconds: a read that takes longer fails its query (counted as an error) and frees its in-flight slot; 90% of it is the server-side statement_timeout of the read connections [env: DB_READ_TIMEOUT_MS] [default: 1000] [range: 1..=600000]
        db_read_timeout_ms,
        /// seconds between progress log lines [env: PROGRESS_INTERVAL] [default: 5] [range: 1..=3600]
        progress_interval,
        /// pacing grid of each shard, in microseconds: the operations due within one step start on one wake of the shard (fewer wakes, less CPU at high rates), each on the grid point nearest its scheduled time; latency counts from that time, or from the start when it came first. 0 = auto: 100 below 2000 operations/s per shard, 1000 from there [env: PACE_STEP_US] [default: 0] [range: 0..=100000]
        pace_step_us,
        /// this instance's index among --instance-count instances sharing the organizations and the rates; unset: JOB_COMPLETION_INDEX (a Kubernetes Indexed Job), else POD_INDEX (a StatefulSet's pod-index label), else the host name's trailing -N, else 0 [env: INSTANCE_INDEX] [default: 0] [range: 0..]
        instance_index,
        /// number of instances of one run: they split the organizations, and EVENTS_PER_SECOND / QUERIES_PER_SECOND are the run's totals [env: INSTANCE_COUNT] [default: 1] [range: 1..]
        instance_count,
        /// name shared by every instance of one coordinated run: with --instance-count above 1 they register in PostgreSQL, wait until all are there and start their load at one instant; report --run-name and verify --run-name take the run as a whole [env: RUN_NAME] [default: none]
        run_name,
        /// seconds an instance of a named run waits at the start for the others before it gives up [env: START_TIMEOUT] [default: 600] [range: 1..=86400]
        start_timeout,
        /// admin URL of a running analytics-demo [env: ADMIN_URL] [default: http://127.0.0.1:3000]
        admin_url,
        /// bench-redis: Redis connections, all shards together (at least one per shard) [env: BENCH_CONNECTIONS] [default: 50] [range: 1..=100000]
        connections,
        /// bench-redis: commands in flight per connection, like redis-benchmark -P [env: BENCH_PIPELINE] [default: 1] [range: 1..=10000]
        pipeline,
        /// bench-redis: SET:GET command ratio, e.g. 1:10 [env: BENCH_RATIO] [default: 1:10]
        ratio,
        /// bench-redis: key space, keys key:000000000000 upwards (zipf at most 10000000) [env: BENCH_KEYS] [default: 100000] [range: 1..=1000000000000]
        keys,
        /// bench-redis: how keys are picked: uniform or zipf (skew: --zipf-exponent) [env: BENCH_KEY_PATTERN] [default: uniform]
        key_pattern,
        /// bench-redis: bytes per SET value (below --max-reply-bytes) [env: BENCH_DATA_SIZE] [default: 32] [range: 1..=67108864]
        data_size,
        /// bench-redis: commands per second, all shards together (0 = unlimited: closed loop) [env: BENCH_RATE] [default: 0] [range: 0..]
        rate,
        /// verify: judge the runs started at or after this time (RFC 3339, e.g. 2026-11-25T17:00:00Z, or unix seconds) instead of the runs the target declares [env: VERIFY_SINCE] [default: none]
        since,
    }
    lists {
        /// verify: judge this run id instead of the runs the target declares (repeat the flag or give a comma-separated list; with --since, both) [env: VERIFY_RUN] [default: none]
        run,
    }
    switches {
        /// do not pin threads to CPUs (env accepts 1/0/true/false/yes/no) [env: NO_PIN] [default: false]
        no_pin,
        /// allow admin endpoints without ADMIN_TOKEN for clients on the loopback interface (env accepts 1/0/true/false/yes/no) [env: ADMIN_ALLOW_UNAUTHENTICATED_LOOPBACK] [default: false]
        admin_allow_unauthenticated_loopback,
    }
}

cli_struct! {
    /// Thread-per-core analytics workload on Redis and PostgreSQL. Without a subcommand it runs
    /// the workload. Every option can also be set by the environment variable shown; a flag beats
    /// the environment, which beats the default.
    pub(crate) struct TopCli [
        events_per_second, queries_per_second, organizations, users_per_org, cache_hit_target,
        max_workers, redis_pool_size, cache_ttl, warmup_interval, time_buckets, redis_url,
        redis_mode, redis_protocol, database_url, redis_ca_file, redis_client_cert, redis_client_key, redis_password_file,
        database_ca_file, database_password, database_password_file,
        bind_address, shards, duration, seed, log_format, admin_token, admin_token_file, distribution,
        zipf_exponent, command_timeout_ms, max_reply_bytes, db_batch_size, db_buffer_rows,
        db_timeout_ms, db_read_timeout_ms, progress_interval, pace_step_us, no_pin, instance_index,
        instance_count, run_name, start_timeout, admin_allow_unauthenticated_loopback,
    ] {
        #[argh(subcommand)]
        pub command: Option<SubCli>,
    }
}

/// The subcommands.
// Parsed once at start-up; argh cannot derive through a `Box`.
#[allow(clippy::large_enum_variant)]
#[derive(FromArgs)]
#[argh(subcommand)]
pub(crate) enum SubCli {
    Verify(VerifyCli),
    Report(ReportCli),
    Switch(SwitchCli),
    BenchRedis(BenchRedisCli),
}

cli_struct! {
    /// Check Redis counters against PostgreSQL for the runs the Redis declares (a:runs): lost
    /// acknowledged writes, phantom increments, counters no run explains. Exits 0 when clean, 1
    /// when something is found (or no run is declared), 2 on usage or connection errors.
    #[argh(subcommand, name = "verify")]
    pub(crate) struct VerifyCli [
        redis_url, redis_mode, redis_protocol, database_url, redis_ca_file, redis_client_cert,
        redis_client_key, redis_password_file, database_ca_file, database_password,
        database_password_file, run,
        since, run_name,
    ] {
        /// print the result as JSON
        #[argh(switch)]
        pub json: bool,
    }
}

cli_struct! {
    /// Print the migration report of a running instance.
    #[argh(subcommand, name = "report")]
    pub(crate) struct ReportCli [
        admin_url, run_name, database_url, database_ca_file, database_password,
        database_password_file,
    ] {
        /// print the raw JSON report
        #[argh(switch)]
        pub json: bool,
    }
}

cli_struct! {
    /// Switch a running instance to another Redis.
    #[argh(subcommand, name = "switch")]
    pub(crate) struct SwitchCli [admin_url, admin_token, admin_token_file] {
        /// the new Redis: redis://[user[:password]@]host[:port][/db] or rediss:// (the running
        /// instance applies its own --redis-ca-file and client certificate to it); a Redis
        /// Cluster's seed nodes comma separated
        #[argh(option)]
        pub to: String,
        /// what --to is: auto (default: the running instance asks it with INFO; several URLs
        /// mean a cluster), standalone or cluster
        #[argh(option)]
        pub to_mode: Option<String>,
        /// file holding the password of the new Redis (one trailing newline ignored); replaces
        /// the password of --to
        #[argh(option)]
        pub to_password_file: Option<String>,
        /// after the switch, wait up to this many seconds until every connection of every
        /// shard is up on the new Redis; exit 1 if that does not happen in time (0 = do not
        /// wait)
        #[argh(option, default = "0")]
        pub wait: u64,
    }
}

cli_struct! {
    /// Raw Redis benchmark: a plain SET/GET mix on the workload's shards, Redis pool and
    /// pacing, to compare our client with redis-benchmark. Prints ops/s, latency percentiles
    /// and errors.
    #[argh(subcommand, name = "bench-redis")]
    pub(crate) struct BenchRedisCli [
        connections, pipeline, ratio, keys, key_pattern, data_size, rate, pace_step_us, duration,
        redis_url, redis_mode, redis_protocol, shards, seed, zipf_exponent, command_timeout_ms,
        max_reply_bytes, no_pin,
        redis_ca_file, redis_client_cert, redis_client_key, redis_password_file,
    ] {
        /// print the result as one JSON object
        #[argh(switch)]
        pub json: bool,
    }
}
