use super::*;

/// Environment variables of a test case.
type Env<'a> = &'a [(&'a str, &'a str)];

fn outcome(args: &[&str], env: Env) -> ParseOutcome {
    let argv: Vec<&str> = std::iter::once("/usr/bin/analytics-demo")
        .chain(args.iter().copied())
        .collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse(&argv, &|key| {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    })
}

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    match outcome(args, env) {
        ParseOutcome::Command(c) => c,
        ParseOutcome::Exit { code, output } => {
            panic!("{args:?} {env:?}: exit {code}: {output}")
        }
    }
}

fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
    match command(args, env) {
        Command::Run(c) => c,
        other => panic!("{args:?}: expected Run, got {other:?}"),
    }
}

/// The error output; asserts exit code 2.
fn error(args: &[&str], env: &[(&str, &str)]) -> String {
    match outcome(args, env) {
        ParseOutcome::Exit { code: 2, output } => output,
        other => panic!("{args:?} {env:?}: expected exit 2, got {other:?}"),
    }
}

#[test]
fn should_use_defaults_when_nothing_is_set() {
    let c = config(&[], &[]);
    let expected = Config {
        events_per_second: 1000,
        queries_per_second: 10000,
        organizations: 500,
        users_per_org: 1000,
        cache_hit_target: 0.95,
        max_workers: 500,
        redis_pool_size: 100,
        cache_ttl: Duration::from_secs(300),
        warmup_interval: Duration::from_secs(300),
        time_buckets: 24,
        redis_url: RedisUrl::parse("redis://127.0.0.1:6379").unwrap(),
        redis_seeds: vec![RedisUrl::parse("redis://127.0.0.1:6379").unwrap()],
        redis_mode: crate::resp::RedisMode::Auto,
        redis_protocol: Protocol::Auto,
        redis_tls: crate::tls::TlsFiles::default(),
        database_url: "postgres://postgres@127.0.0.1:5432/analytics".into(),
        database: crate::pg::PgConfig::parse(
            "postgres://postgres@127.0.0.1:5432/analytics",
            "DATABASE_URL",
            None,
            None,
        )
        .unwrap(),
        bind_address: "0.0.0.0:3000".parse().unwrap(),
        run: RunOptions {
            duration: None,
            shards: 0,
            seed: None,
            zipf_exponent: 1.0,
            command_timeout: Duration::from_millis(1000),
            max_reply_bytes: 16_777_216,
            pin: true,
        },
        log_format: LogFormat::Text,
        admin_token: None,
        distribution: Distribution::Zipf,
        db_batch_size: 5000,
        db_buffer_rows: 500_000,
        db_timeout: Duration::from_millis(5000),
        db_read_timeout: Duration::from_millis(1000),
        progress_interval: Duration::from_secs(5),
        pace_step: Duration::ZERO,
        admin_allow_unauthenticated_loopback: false,
        instance_index: 0,
        instance_count: 1,
        run_name: None,
        start_timeout: Duration::from_secs(600),
    };
    assert_eq!(c, expected);
}

type Getter = fn(&Config) -> String;

/// (flag, env, value a, value b, field): a and b both valid, different, and not the default.
const OVERRIDES: &[(&str, &str, &str, &str, Getter)] = &[
    ("--events-per-second", "EVENTS_PER_SECOND", "50", "0", |c| {
        format!("{:?}", c.events_per_second)
    }),
    (
        "--queries-per-second",
        "QUERIES_PER_SECOND",
        "150",
        "0",
        |c| format!("{:?}", c.queries_per_second),
    ),
    ("--organizations", "ORGANIZATIONS", "10", "10000000", |c| {
        format!("{:?}", c.organizations)
    }),
    ("--users-per-org", "USERS_PER_ORG", "1", "20", |c| {
        format!("{:?}", c.users_per_org)
    }),
    ("--cache-hit-target", "CACHE_HIT_TARGET", "80", "100", |c| {
        format!("{:?}", c.cache_hit_target)
    }),
    ("--max-workers", "MAX_WORKERS", "1", "64", |c| {
        format!("{:?}", c.max_workers)
    }),
    ("--redis-pool-size", "REDIS_POOL_SIZE", "1", "8", |c| {
        format!("{:?}", c.redis_pool_size)
    }),
    ("--cache-ttl", "CACHE_TTL", "1", "60", |c| {
        format!("{:?}", c.cache_ttl)
    }),
    ("--warmup-interval", "WARMUP_INTERVAL", "1", "60", |c| {
        format!("{:?}", c.warmup_interval)
    }),
    ("--time-buckets", "TIME_BUCKETS", "1", "8760", |c| {
        format!("{:?}", c.time_buckets)
    }),
    (
        "--redis-url",
        "REDIS_URL",
        "redis://a:6380/1",
        "rediss://b",
        |c| c.redis_url.redacted(),
    ),
    ("--redis-protocol", "REDIS_PROTOCOL", "3", "2", |c| {
        format!("{:?}", c.redis_protocol)
    }),
    ("--redis-mode", "REDIS_MODE", "cluster", "standalone", |c| {
        format!("{:?}", c.redis_mode)
    }),
    (
        "--database-url",
        "DATABASE_URL",
        "postgresql://u@db/x",
        "postgres://h/y",
        |c| c.database_url.as_str().to_string(),
    ),
    (
        "--bind-address",
        "BIND_ADDRESS",
        "127.0.0.1:9000",
        "[::1]:80",
        |c| c.bind_address.to_string(),
    ),
    ("--shards", "SHARDS", "1", "3", |c| {
        format!("{:?}", c.run.shards)
    }),
    ("--duration", "DURATION", "60", "1", |c| {
        format!("{:?}", c.run.duration)
    }),
    ("--seed", "SEED", "0", "18446744073709551615", |c| {
        format!("{:?}", c.run.seed)
    }),
    ("--log-format", "LOG_FORMAT", "JSON", "text", |c| {
        format!("{:?}", c.log_format)
    }),
    ("--admin-token", "ADMIN_TOKEN", "tok-a", "tok-b", |c| {
        format!("{:?}", c.admin_token.as_deref())
    }),
    ("--distribution", "DISTRIBUTION", "Uniform", "zipf", |c| {
        format!("{:?}", c.distribution)
    }),
    ("--zipf-exponent", "ZIPF_EXPONENT", "0.5", "5", |c| {
        format!("{:?}", c.run.zipf_exponent)
    }),
    (
        "--command-timeout-ms",
        "REDIS_COMMAND_TIMEOUT_MS",
        "1",
        "600000",
        |c| format!("{:?}", c.run.command_timeout),
    ),
    (
        "--max-reply-bytes",
        "REDIS_MAX_REPLY_BYTES",
        "1024",
        "65536",
        |c| format!("{:?}", c.run.max_reply_bytes),
    ),
    ("--db-batch-size", "DB_BATCH_SIZE", "1", "1000", |c| {
        format!("{:?}", c.db_batch_size)
    }),
    (
        "--db-buffer-rows",
        "DB_BUFFER_ROWS",
        "5000",
        "1000000",
        |c| format!("{:?}", c.db_buffer_rows),
    ),
    ("--db-timeout-ms", "DB_TIMEOUT_MS", "1", "600000", |c| {
        format!("{:?}", c.db_timeout)
    }),
    (
        "--db-read-timeout-ms",
        "DB_READ_TIMEOUT_MS",
        "250",
        "600000",
        |c| format!("{:?}", c.db_read_timeout),
    ),
    (
        "--progress-interval",
        "PROGRESS_INTERVAL",
        "1",
        "3600",
        |c| format!("{:?}", c.progress_interval),
    ),
    ("--instance-count", "INSTANCE_COUNT", "2", "500", |c| {
        format!("{:?}", c.instance_count)
    }),
];

#[test]
fn should_let_env_override_default_and_flag_override_env() {
    let default = config(&[], &[]);
    for &(flag, env, a, b, get) in OVERRIDES {
        let from_env = config(&[], &[(env, a)]);
        let from_flag = config(&[flag, a], &[(env, b)]);
        let from_env_b = config(&[], &[(env, b)]);
        assert_ne!(
            get(&from_env),
            get(&default),
            "{flag}: value a equals the default"
        );
        assert_ne!(
            get(&from_env),
            get(&from_env_b),
            "{flag}: a and b resolve alike"
        );
        assert_eq!(
            get(&from_flag),
            get(&from_env),
            "{flag}: flag must beat env"
        );
    }
    // Fields with rules tied to another option.
    let c = config(
        &["--instance-index", "1"],
        &[("INSTANCE_INDEX", "0"), ("INSTANCE_COUNT", "3")],
    );
    assert_eq!((c.instance_index, c.instance_count), (1, 3));
    assert_eq!(
        config(&[], &[("INSTANCE_INDEX", "2"), ("INSTANCE_COUNT", "3")]).instance_index,
        2
    );
    assert_eq!(
        config(&[], &[("CACHE_HIT_TARGET", "12.5")]).cache_hit_target,
        0.125
    );
    assert_eq!(config(&[], &[("DURATION", "0")]).run.duration, None);
}

#[test]
fn should_treat_empty_env_as_unset() {
    let c = config(
        &[],
        &[("EVENTS_PER_SECOND", ""), ("ADMIN_TOKEN", ""), ("SEED", "")],
    );
    assert_eq!(
        (c.events_per_second, c.admin_token, c.run.seed),
        (1000, None, None)
    );
}

#[test]
fn should_pin_unless_no_pin_by_flag_or_env() {
    assert!(config(&[], &[]).run.pin);
    assert!(!config(&["--no-pin"], &[]).run.pin);
    assert!(
        !config(&["--no-pin"], &[("NO_PIN", "false")]).run.pin,
        "flag beats env"
    );
    for (value, pin) in [
        ("1", false),
        ("true", false),
        ("YES", false),
        ("0", true),
        ("false", true),
        ("no", true),
    ] {
        assert_eq!(
            config(&[], &[("NO_PIN", value)]).run.pin,
            pin,
            "NO_PIN={value}"
        );
    }
}

#[test]
fn should_accept_flag_equals_value() {
    let c = config(&["--events-per-second=5", "--admin-token=a=b"], &[]);
    assert_eq!(
        (c.events_per_second, c.admin_token.as_deref()),
        (5, Some("a=b"))
    );
    // A value that looks like `--flag=value` stays a value.
    let c = config(&["--admin-token", "--seed=1"], &[]);
    assert_eq!(
        (c.admin_token.as_deref(), c.run.seed),
        (Some("--seed=1"), None)
    );
}

/// (flag, env, invalid value, text the message must contain). Each row runs once as a flag
/// and once as an env var; the message must also name both the flag and the env var.
const INVALID: &[(&str, &str, &str, &str)] = &[
    ("--events-per-second", "EVENTS_PER_SECOND", "abc",
        "invalid value 'abc' for --events-per-second (EVENTS_PER_SECOND): expected a non-negative integer"),
    ("--events-per-second", "EVENTS_PER_SECOND", "-1", "expected a non-negative integer"),
    ("--queries-per-second", "QUERIES_PER_SECOND", "1.5", "invalid value '1.5'"),
    ("--queries-per-second", "QUERIES_PER_SECOND", "99999999999999999999", "must be at most 18446744073709551615, got 99999999999999999999"),
    ("--organizations", "ORGANIZATIONS", "0", "must be between 1 and 10000000, got 0"),
    ("--organizations", "ORGANIZATIONS", "10000001", "must be between 1 and 10000000, got 10000001"),
    ("--users-per-org", "USERS_PER_ORG", "0", "must be at least 1, got 0"),
    ("--users-per-org", "USERS_PER_ORG", "4294967296", "must be at most 4294967295"),
    ("--cache-hit-target", "CACHE_HIT_TARGET", "120",
        "--cache-hit-target (CACHE_HIT_TARGET) must be between 0 and 100, got 120"),
    ("--cache-hit-target", "CACHE_HIT_TARGET", "-0.5", "must be between 0 and 100, got -0.5"),
    ("--cache-hit-target", "CACHE_HIT_TARGET", "NaN", "invalid value 'NaN'"),
    ("--max-workers", "MAX_WORKERS", "0", "must be at least 1, got 0"),
    ("--redis-pool-size", "REDIS_POOL_SIZE", "0", "must be at least 1, got 0"),
    ("--cache-ttl", "CACHE_TTL", "0", "must be between 1 and 315360000, got 0"),
    ("--warmup-interval", "WARMUP_INTERVAL", "0", "must be between 1 and 315360000, got 0"),
    ("--time-buckets", "TIME_BUCKETS", "8761", "must be between 1 and 8760, got 8761"),
    ("--time-buckets", "TIME_BUCKETS", "0", "must be between 1 and 8760, got 0"),
    ("--redis-url", "REDIS_URL", "http://x",
        "invalid --redis-url (REDIS_URL) 'http://x': unsupported scheme 'http' (expected redis:// or rediss://)"),
    ("--redis-url", "REDIS_URL", "redis://h/x", "database 'x' is not a number"),
    ("--redis-protocol", "REDIS_PROTOCOL", "resp3",
        "invalid value 'resp3' for --redis-protocol (REDIS_PROTOCOL): expected 'auto', '2' or '3'"),
    ("--redis-protocol", "REDIS_PROTOCOL", "1", "expected 'auto', '2' or '3'"),
    ("--redis-mode", "REDIS_MODE", "sentinel",
        "invalid value 'sentinel' for --redis-mode (REDIS_MODE): expected 'auto', 'standalone' or 'cluster'"),
    ("--database-url", "DATABASE_URL", "mysql://h/db",
        "invalid --database-url (DATABASE_URL) 'mysql://h/db': unsupported scheme 'mysql' (expected postgres:// or postgresql://)"),
    ("--database-url", "DATABASE_URL", "postgres:///analytics", "missing host"),
    ("--database-url", "DATABASE_URL", "not a url", "not a URL"),
    ("--bind-address", "BIND_ADDRESS", "localhost:3000",
        "invalid value 'localhost:3000' for --bind-address (BIND_ADDRESS): expected an IP address and port"),
    ("--shards", "SHARDS", "1025", "must be at most 1024, got 1025"),
    ("--duration", "DURATION", "-1", "invalid value '-1'"),
    ("--duration", "DURATION", "1.5", "invalid value '1.5'"),
    ("--seed", "SEED", "x", "invalid value 'x' for --seed (SEED)"),
    ("--log-format", "LOG_FORMAT", "xml", "invalid value 'xml' for --log-format (LOG_FORMAT): expected 'text' or 'json'"),
    ("--admin-token", "ADMIN_TOKEN", "two words", "must be printable ASCII without spaces"),
    ("--distribution", "DISTRIBUTION", "normal", "expected 'zipf' or 'uniform'"),
    ("--zipf-exponent", "ZIPF_EXPONENT", "0", "must be greater than 0 and at most 5, got 0"),
    ("--zipf-exponent", "ZIPF_EXPONENT", "5.01", "must be greater than 0 and at most 5, got 5.01"),
    ("--zipf-exponent", "ZIPF_EXPONENT", "inf", "invalid value 'inf'"),
    ("--command-timeout-ms", "REDIS_COMMAND_TIMEOUT_MS", "0", "must be between 1 and 600000, got 0"),
    ("--command-timeout-ms", "REDIS_COMMAND_TIMEOUT_MS", "600001", "must be between 1 and 600000"),
    ("--db-timeout-ms", "DB_TIMEOUT_MS", "0", "must be between 1 and 600000, got 0"),
    ("--db-timeout-ms", "DB_TIMEOUT_MS", "5s", "invalid value '5s' for --db-timeout-ms (DB_TIMEOUT_MS)"),
    ("--db-read-timeout-ms", "DB_READ_TIMEOUT_MS", "600001", "must be between 1 and 600000, got 600001"),
    ("--max-reply-bytes", "REDIS_MAX_REPLY_BYTES", "1023", "must be at least 1024, got 1023"),
    ("--db-batch-size", "DB_BATCH_SIZE", "0", "must be between 1 and 1000000, got 0"),
    ("--db-batch-size", "DB_BATCH_SIZE", "1000001", "must be between 1 and 1000000"),
    ("--db-buffer-rows", "DB_BUFFER_ROWS", "4999",
        "--db-buffer-rows (DB_BUFFER_ROWS) (4999) must be at least --db-batch-size (DB_BATCH_SIZE) (5000)"),
    ("--progress-interval", "PROGRESS_INTERVAL", "3601", "must be between 1 and 3600, got 3601"),
    ("--pace-step-us", "PACE_STEP_US", "100001", "must be at most 100000, got 100001"),
    ("--instance-index", "INSTANCE_INDEX", "1",
        "--instance-index (INSTANCE_INDEX) (1) must be less than --instance-count (INSTANCE_COUNT) (1)"),
    ("--database-url", "DATABASE_URL", "postgres://h/db?sslmode=verify",
        "invalid --database-url (DATABASE_URL) 'postgres://h/db?sslmode=verify': sslmode 'verify': unknown value (expected disable, prefer, require, verify-ca or verify-full)"),
    ("--database-url", "DATABASE_URL", "postgres://h/db?sslmode=allow", "sslmode 'allow': 'allow' is not supported"),
    ("--database-url", "DATABASE_URL", "postgres://h/db?sslrootcert=/nonexistent/root.crt&sslmode=verify-ca",
        "sslrootcert in --database-url (DATABASE_URL): cannot read '/nonexistent/root.crt'"),
    ("--database-url", "DATABASE_URL", "postgres://h/db?sslcert=/nonexistent/c.crt",
        "sslcert in --database-url (DATABASE_URL) is set but sslkey in --database-url (DATABASE_URL) is not"),
    ("--database-url", "DATABASE_URL", "postgres://h/db?bogus_option=1", "unknown option"),
    ("--redis-ca-file", "REDIS_CA_FILE", "/nonexistent/ca.pem",
        "--redis-ca-file (REDIS_CA_FILE): cannot read '/nonexistent/ca.pem': No such file or directory"),
    ("--redis-client-cert", "REDIS_CLIENT_CERT", "/nonexistent/client.pem",
        "--redis-client-cert (REDIS_CLIENT_CERT) is set but --redis-client-key (REDIS_CLIENT_KEY) is not"),
    ("--redis-client-key", "REDIS_CLIENT_KEY", "/nonexistent/client.key",
        "--redis-client-key (REDIS_CLIENT_KEY) is set but --redis-client-cert (REDIS_CLIENT_CERT) is not"),
    ("--redis-password-file", "REDIS_PASSWORD_FILE", "/nonexistent/pw",
        "--redis-password-file (REDIS_PASSWORD_FILE): cannot read '/nonexistent/pw'"),
    ("--database-ca-file", "DATABASE_CA_FILE", "/nonexistent/ca.pem",
        "--database-ca-file (DATABASE_CA_FILE): cannot read '/nonexistent/ca.pem'"),
    ("--database-password-file", "DATABASE_PASSWORD_FILE", "/nonexistent/pw",
        "--database-password-file (DATABASE_PASSWORD_FILE): cannot read '/nonexistent/pw'"),
    ("--instance-count", "INSTANCE_COUNT", "0", "must be at least 1, got 0"),
    ("--instance-count", "INSTANCE_COUNT", "501", "is larger than --organizations (ORGANIZATIONS) (500)"),
    ("--admin-token-file", "ADMIN_TOKEN_FILE", "/nonexistent/token", "--admin-token-file (ADMIN_TOKEN_FILE): cannot read '/nonexistent/token'"),
    ("--run-name", "RUN_NAME", "a/b", "invalid value 'a/b' for --run-name (RUN_NAME): expected 1 to 100 letters"),
    ("--start-timeout", "START_TIMEOUT", "0", "must be between 1 and 86400, got 0"),
];

#[test]
fn should_reject_every_invalid_value_by_flag_and_by_env() {
    for &(flag, env, bad, expect) in INVALID {
        for (how, out) in [
            ("flag", error(&[flag, bad], &[])),
            ("env", error(&[], &[(env, bad)])),
        ] {
            assert!(out.starts_with("error: "), "{flag} by {how}: {out}");
            assert!(
                out.contains(expect),
                "{flag} by {how}: {out:?} lacks {expect:?}"
            );
            assert!(
                out.contains(flag) && out.contains(env),
                "{flag} by {how}: {out}"
            );
        }
    }
}

#[test]
fn should_have_an_invalid_case_for_every_option() {
    for def in opt::ALL {
        // bench-redis options have their own table in `bench_tests.rs`.
        let covered = INVALID.iter().any(|(flag, ..)| *flag == def.flag())
            || [
                "admin_url",
                "no_pin",
                "admin_allow_unauthenticated_loopback",
                // Any non-empty text; see `should_resolve_passwords_from_files_and_values`.
                "database_password",
            ]
            .contains(&def.name)
            || super::bench_tests::BENCH_ONLY.contains(&def.name)
            // See `should_resolve_verify_run_selection`.
            || VERIFY_ONLY.contains(&def.name);
        assert!(covered, "no invalid-value test for {}", def.flag());
    }
}

#[test]
fn should_reject_the_remaining_invalid_values() {
    // Empty admin token: only a flag can give one (an empty env var is unset).
    let out = error(&["--admin-token", ""], &[]);
    assert_eq!(out, "error: --admin-token (ADMIN_TOKEN) must not be empty");
    // NO_PIN: invalid by env; the switch takes no value.
    let out = error(&[], &[("NO_PIN", "maybe")]);
    assert_eq!(
        out,
        "error: invalid value 'maybe' for --no-pin (NO_PIN): expected 1, 0, true, false, yes or no"
    );
    assert!(error(&["--no-pin=yes"], &[]).contains("Unrecognized argument: --no-pin="));
    let out = error(&[], &[("ADMIN_ALLOW_UNAUTHENTICATED_LOOPBACK", "perhaps")]);
    assert_eq!(
        out,
        "error: invalid value 'perhaps' for --admin-allow-unauthenticated-loopback \
         (ADMIN_ALLOW_UNAUTHENTICATED_LOOPBACK): expected 1, 0, true, false, yes or no"
    );
    assert!(
        config(&["--admin-allow-unauthenticated-loopback"], &[])
            .admin_allow_unauthenticated_loopback
    );
    assert!(!config(&[], &[]).admin_allow_unauthenticated_loopback);
    // ADMIN_URL (report and switch).
    let out = error(&["report", "--admin-url", "ftp://h"], &[]);
    assert!(
        out.contains("invalid --admin-url (ADMIN_URL) 'ftp://h': unsupported scheme 'ftp'"),
        "{out}"
    );
    let out = error(&["report"], &[("ADMIN_URL", "http://")]);
    assert!(out.contains("--admin-url (ADMIN_URL)"), "{out}");
}

#[test]
fn should_check_rules_between_options() {
    let out = error(
        &[],
        &[("EVENTS_PER_SECOND", "0"), ("QUERIES_PER_SECOND", "0")],
    );
    assert!(out.contains("--events-per-second (EVENTS_PER_SECOND) and --queries-per-second (QUERIES_PER_SECOND) are both 0"), "{out}");
    let out = error(&["--shards", "4", "--redis-pool-size", "2"], &[]);
    assert!(out.contains("REDIS_POOL_SIZE (2) is smaller than the number of shards (4): every shard needs at least one connection"), "{out}");
    assert!(
        out.contains("--redis-pool-size") && out.contains("--shards (SHARDS)"),
        "{out}"
    );
    let out = error(&[], &[("SHARDS", "8"), ("MAX_WORKERS", "7")]);
    assert!(
        out.contains("MAX_WORKERS (7) is smaller than the number of shards (8)"),
        "{out}"
    );
    assert!(out.contains("--max-workers"), "{out}");
    // With automatic shards the caller checks, once it knows the count.
    let c = config(&["--redis-pool-size", "2", "--max-workers", "3"], &[]);
    assert_eq!(c.validate_against_shards(2), Ok(()));
    assert!(c
        .validate_against_shards(3)
        .unwrap_err()
        .contains("REDIS_POOL_SIZE (2)"));
    assert!(c
        .validate_against_shards(4)
        .unwrap_err()
        .contains("REDIS_POOL_SIZE (2)"));
    let c = config(&["--redis-pool-size", "9", "--max-workers", "3"], &[]);
    assert!(c
        .validate_against_shards(4)
        .unwrap_err()
        .contains("MAX_WORKERS (3)"));
}

#[test]
fn should_resolve_automatic_shards() {
    let auto = config(&[], &[]);
    let fixed = config(&["--shards", "3"], &[]);
    for (c, cpus, want) in [
        (&auto, 0, 1),
        (&auto, 1, 1),
        (&auto, 2, 1),
        (&auto, 8, 7),
        (&fixed, 8, 3),
        (&fixed, 1, 3),
    ] {
        assert_eq!(
            c.run.resolved_shards(cpus),
            want,
            "shards {} cpus {cpus}",
            c.run.shards
        );
    }
}

#[test]
fn should_exit_2_on_unknown_flags_and_bad_usage() {
    for (args, expect) in [
        (&["--bogus"][..], "Unrecognized argument: --bogus"),
        (
            &["--events-per-second"],
            "No value provided for option '--events-per-second'",
        ),
        (&["--seed", "1", "--seed", "2"], "duplicate values provided"),
        (&["stray"], "Unrecognized argument: stray"),
        (
            &["verify", "--events-per-second", "5"],
            "Unrecognized argument: --events-per-second",
        ),
        (&["switch"], "Required options not provided"),
    ] {
        let out = error(args, &[]);
        assert!(out.contains(expect), "{args:?}: {out}");
    }
}

#[test]
fn should_print_help_with_every_env_var_and_default() {
    let help = |args: &[&str]| match outcome(args, &[]) {
        ParseOutcome::Exit { code: 0, output } => {
            output.split_whitespace().collect::<Vec<_>>().join(" ")
        }
        other => panic!("{args:?}: {other:?}"),
    };
    let top = help(&["--help"]);
    assert!(top.starts_with("Usage: analytics-demo"), "{top}");
    assert!(top.contains("verify") && top.contains("report") && top.contains("switch"));
    let subs = [
        help(&["verify", "--help"]),
        help(&["report", "--help"]),
        help(&["switch", "--help"]),
        help(&["bench-redis", "--help"]),
    ]
    .join(" ");
    for def in opt::ALL {
        let sub_only = def.name == "admin_url"
            || super::bench_tests::BENCH_ONLY.contains(&def.name)
            || VERIFY_ONLY.contains(&def.name);
        let text = if sub_only { &subs } else { &top };
        let default = def.default.unwrap_or("none");
        for want in [
            def.flag(),
            format!("[env: {}]", def.env),
            format!("[default: {default}]"),
        ] {
            assert!(text.contains(&want), "--help lacks {want}");
        }
    }
    assert_eq!(help(&["help"]), top);
}

#[test]
fn should_have_unique_flags_and_env_names() {
    let mut flags: Vec<String> = opt::ALL.iter().map(|d| d.flag()).collect();
    let mut envs: Vec<&str> = opt::ALL.iter().map(|d| d.env).collect();
    flags.sort();
    flags.dedup();
    envs.sort();
    envs.dedup();
    assert_eq!((flags.len(), envs.len()), (opt::ALL.len(), opt::ALL.len()));
}

/// The options only `verify` takes.
const VERIFY_ONLY: [&str; 2] = ["run", "since"];

fn verify_args(args: &[&str], env: &[(&str, &str)]) -> VerifyArgs {
    let argv: Vec<&str> = std::iter::once("verify")
        .chain(args.iter().copied())
        .collect();
    match command(&argv, env) {
        Command::Verify(v) => v,
        other => panic!("{args:?}: expected Verify, got {other:?}"),
    }
}

#[test]
fn should_resolve_verify_run_selection() {
    let v = verify_args(&[], &[]);
    assert_eq!((v.runs, v.since), (vec![], None));
    // Repeated flag, comma lists, duplicates, blanks; the flag beats the environment.
    let v = verify_args(
        &["--run", "7,3", "--run=12", "--run", " 3 ,"],
        &[("VERIFY_RUN", "99")],
    );
    assert_eq!(v.runs, vec![3, 7, 12]);
    let v = verify_args(&[], &[("VERIFY_RUN", "5, 6")]);
    assert_eq!(v.runs, vec![5, 6]);
    let v = verify_args(&["--since", "2026-11-25T17:23:03Z"], &[]);
    assert_eq!(v.since, Some(1_795_627_383));
    let v = verify_args(&[], &[("VERIFY_SINCE", "1795627383")]);
    assert_eq!(v.since, Some(1_795_627_383));
    let v = verify_args(
        &["--since", "2026-11-25T18:23:03+01:00"],
        &[("VERIFY_SINCE", "0")],
    );
    assert_eq!(v.since, Some(1_795_627_383));

    let bad = [
        (
            &["--run", "abc"][..],
            &[][..],
            "invalid value 'abc' for --run (VERIFY_RUN): expected a run id (a non-negative integer",
        ),
        (
            &["--run", "1,-2"],
            &[],
            "invalid value '-2' for --run (VERIFY_RUN)",
        ),
        (
            &[],
            &[("VERIFY_RUN", "1;2")],
            "invalid value '1;2' for --run (VERIFY_RUN)",
        ),
        (
            &["--since", "yesterday"],
            &[],
            "invalid value 'yesterday' for --since (VERIFY_SINCE): expected an RFC 3339 time",
        ),
        (
            &[],
            &[("VERIFY_SINCE", "2026-11-25")],
            "invalid value '2026-11-25' for --since (VERIFY_SINCE)",
        ),
        (
            &["--since", "2026-02-30T00:00:00Z"],
            &[],
            "for --since (VERIFY_SINCE)",
        ),
    ];
    for (args, env, expect) in bad {
        let argv: Vec<&str> = std::iter::once("verify")
            .chain(args.iter().copied())
            .collect();
        let out = error(&argv, env);
        assert!(
            out.starts_with("error: ") && out.contains(expect),
            "{args:?} {env:?}: {out}"
        );
    }
    // Only verify takes them.
    assert!(error(&["--run", "1"], &[]).contains("--run"));
}

#[test]
fn should_parse_subcommands() {
    let env = [
        ("REDIS_URL", "redis://r:7000"),
        ("EVENTS_PER_SECOND", "not checked by verify"),
    ];
    match command(
        &["verify", "--database-url", "postgres://u@db/x", "--json"],
        &env,
    ) {
        Command::Verify(v) => {
            assert_eq!((v.redis_url.host.as_str(), v.redis_url.port), ("r", 7000));
            assert_eq!(
                (v.database_url.as_str(), v.json),
                ("postgres://u@db/x", true)
            );
        }
        other => panic!("{other:?}"),
    }
    match command(&["verify"], &[]) {
        Command::Verify(v) => {
            assert_eq!(
                v.redis_url,
                RedisUrl::parse("redis://127.0.0.1:6379").unwrap()
            );
            assert_eq!(
                v.database_url,
                "postgres://postgres@127.0.0.1:5432/analytics"
            );
            assert!(!v.json);
            assert_eq!(v.redis_protocol, Protocol::Auto);
        }
        other => panic!("{other:?}"),
    }
    // verify takes --redis-protocol too (flag beats env).
    match command(
        &["verify", "--redis-protocol", "2"],
        &[("REDIS_PROTOCOL", "3")],
    ) {
        Command::Verify(v) => assert_eq!(v.redis_protocol, Protocol::Resp2),
        other => panic!("{other:?}"),
    }
    match command(&["verify"], &[("REDIS_PROTOCOL", "AUTO")]) {
        Command::Verify(v) => assert_eq!(v.redis_protocol, Protocol::Auto),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        command(&["report"], &[]),
        Command::Report(ReportArgs {
            admin_url: "http://127.0.0.1:3000".into(),
            json: false,
            run: None,
        })
    );
    assert_eq!(
        command(&["report", "--json"], &[("ADMIN_URL", "https://a:8443")]),
        Command::Report(ReportArgs {
            admin_url: "https://a:8443".into(),
            json: true,
            run: None,
        })
    );
    match command(
        &["switch", "--to", "redis://new:6380", "--admin-token", "t1"],
        &[("ADMIN_TOKEN", "t2")],
    ) {
        Command::Switch(s) => {
            assert_eq!((s.to[0].host.as_str(), s.to[0].port), ("new", 6380));
            assert_eq!(
                (s.admin_url.as_str(), s.admin_token.as_deref()),
                ("http://127.0.0.1:3000", Some("t1"))
            );
        }
        other => panic!("{other:?}"),
    }
    match command(&["switch", "--to=rediss://new"], &[("ADMIN_TOKEN", "t2")]) {
        Command::Switch(s) => {
            assert_eq!((s.to[0].tls, s.admin_token.as_deref()), (true, Some("t2")))
        }
        other => panic!("{other:?}"),
    }
    match command(
        &[
            "switch",
            "--to",
            "redis://a:7000, redis://b:7001",
            "--to-mode",
            "cluster",
        ],
        &[("ADMIN_TOKEN", "t")],
    ) {
        Command::Switch(s) => {
            let hosts: Vec<&str> = s.to.iter().map(|u| u.host.as_str()).collect();
            assert_eq!(
                (hosts, s.mode),
                (vec!["a", "b"], crate::resp::RedisMode::Cluster)
            );
        }
        other => panic!("{other:?}"),
    }
    let out = error(&["switch", "--to", "redis://a", "--to-mode", "ring"], &[]);
    assert_eq!(
        out,
        "error: --to-mode: 'ring' is not one of auto, standalone, cluster"
    );
    let out = error(&["switch", "--to", "http://x"], &[]);
    assert_eq!(out, "error: invalid --to 'http://x': unsupported scheme 'http' (expected redis:// or rediss://)");
    let out = error(&["--redis-url", "redis://a", "verify"], &[]);
    assert!(
        out.contains("--redis-url given before the subcommand"),
        "{out}"
    );
}

#[test]
fn should_never_show_secrets_in_errors() {
    let cases: &[(&[&str], Env)] = &[
        (&["--redis-url", "http://u:hunter2@x"], &[]),
        (&["--redis-url", "redis://u:hunter2@x:0"], &[]),
        (&[], &[("REDIS_URL", "redis://:hunter2@h/notanumber")]),
        (&[], &[("DATABASE_URL", "mysql://u:hunter2@h/db")]),
        (&["--database-url", "postgres://u:hun/ter2@/db"], &[]),
        (
            &["--database-url", "postgres://u@/db?password=hunter2"],
            &[],
        ),
        (
            &["verify", "--database-url", "postgres://u:hunter2@:5432/db"],
            &[],
        ),
        (&["switch", "--to", "redis://:hunter2@h:99999"], &[]),
        (&["report", "--admin-url", "ftp://admin:hunter2@h"], &[]),
        (&["--admin-token", "hunter2 x"], &[]),
        (&[], &[("ADMIN_TOKEN", "hunter2\n")]),
        (
            &["--admin-token", "s3cret", "--admin-token", "hunter2"],
            &[],
        ),
        (&["--admin-token=hunter2", "--bogus"], &[]),
        (&["--admin-token-typo=hunter2"], &[]),
        (&["redis://:hunter2@h"], &[]),
        (
            &["--bogus", "x"],
            &[
                ("ADMIN_TOKEN", "hunter2"),
                ("REDIS_URL", "redis://:hunter2@h"),
            ],
        ),
        (
            &[
                "switch",
                "--to",
                "redis://h",
                "--admin-token",
                "hunter2",
                "--admin-token",
                "hunter2",
            ],
            &[],
        ),
    ];
    for (args, env) in cases {
        let out = error(args, env);
        assert!(
            !out.contains("hunter2") && !out.contains("hun/ter2"),
            "{args:?} {env:?}: {out}"
        );
    }
    // The echoed URL keeps the parts that help, and hides the rest.
    let out = error(&["--redis-url", "http://u:hunter2@x"], &[]);
    assert!(out.contains("'http://u:***@x'"), "{out}");
}

#[test]
fn should_never_show_secrets_in_debug() {
    let env = [
        ("ADMIN_TOKEN", "hunter2"),
        ("REDIS_URL", "redis://u:hunter2@r"),
        ("DATABASE_URL", "postgres://u:hunter2@db/x?password=hunter2"),
    ];
    let c = config(&[], &env);
    assert_eq!(c.admin_token.as_deref(), Some("hunter2"));
    let shown = format!("{c:?} {:?}", Command::Run(c.clone()));
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("admin_token: Some(\"***\")"), "{shown}");
    let mut env = env.to_vec();
    env.push(("ADMIN_URL", "http://a:hunter2@h"));
    for args in [
        &["verify"][..],
        &["switch", "--to", "redis://:hunter2@n"],
        &["report"],
    ] {
        let shown = format!("{:?}", command(args, &env));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

#[test]
fn should_not_panic_on_odd_input() {
    let odd = [
        "",
        " ",
        "-",
        "--",
        "=",
        "\0",
        "💥",
        "1e400",
        "-0",
        "+1",
        "0x10",
        "99999999999999999999999",
        "://@:",
        "redis://@",
        "a:b@c",
    ];
    for def in opt::ALL {
        for value in odd {
            let _ = outcome(&[&def.flag(), value], &[]);
            let _ = outcome(&["switch", "--to", value, &def.flag(), value], &[]);
            let _ = outcome(&[&format!("{}={value}", def.flag())], &[]);
            let _ = outcome(&[], &[(def.env, value)]);
        }
    }
}

/// A temporary directory with files NAME -> CONTENT; returns the directory and the paths.
fn files(list: &[(&str, &[u8])]) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let paths = list
        .iter()
        .map(|(name, content)| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            p.display().to_string()
        })
        .collect();
    (dir, paths)
}

#[test]
fn should_resolve_passwords_from_files_and_values() {
    let (_dir, p) = files(&[
        ("redis", b"s3cret pass\n"),
        ("crlf", b"pw\r\n"),
        ("two", b"pw\n\n"),
        ("pg", b"pgsecret"),
    ]);
    // The file replaces the URL's password; the user name stays.
    let c = config(
        &["--redis-password-file", &p[0]],
        &[("REDIS_URL", "rediss://app:old@cache:6380/2")],
    );
    assert_eq!(c.redis_url.password(), Some("s3cret pass"));
    assert_eq!(c.redis_url.username.as_deref(), Some("app"));
    assert_eq!(c.redis_url.redacted(), "rediss://app:***@cache:6380/2");
    // Only one trailing newline goes.
    let pw = |path: &str| {
        config(&[], &[("REDIS_PASSWORD_FILE", path)])
            .redis_url
            .password()
            .map(str::to_string)
    };
    assert_eq!(pw(&p[1]).as_deref(), Some("pw"));
    assert_eq!(pw(&p[2]).as_deref(), Some("pw\n"));
    // PostgreSQL: value or file, replacing the URL's.
    let pg_pw = |c: &Config| c.database.driver.get_password().map(|p| p.to_vec());
    let url = ("DATABASE_URL", "postgres://u:urlpw@db/x");
    assert_eq!(pg_pw(&config(&[], &[url])), Some(b"urlpw".to_vec()));
    let c = config(&["--database-password", "flagpw"], &[url]);
    assert_eq!(pg_pw(&c), Some(b"flagpw".to_vec()));
    let c = config(&[], &[url, ("DATABASE_PASSWORD_FILE", &p[3])]);
    assert_eq!(pg_pw(&c), Some(b"pgsecret".to_vec()));
    assert_eq!(
        c.database_url, "postgres://u:urlpw@db/x",
        "the URL is kept as given"
    );
    let out = error(
        &["--database-password", "longer-secret"],
        &[("DATABASE_PASSWORD_FILE", &p[3])],
    );
    assert_eq!(
        out,
        "error: --database-password (DATABASE_PASSWORD) and --database-password-file \
         (DATABASE_PASSWORD_FILE) are both set: give one"
    );
    let out = error(&["--database-password", ""], &[]);
    assert_eq!(
        out,
        "error: --database-password (DATABASE_PASSWORD) must not be empty"
    );
    // verify and bench-redis read the same options; switch has its own file for --to.
    match command(
        &["verify", "--redis-password-file", &p[0]],
        &[("DATABASE_PASSWORD_FILE", &p[3])],
    ) {
        Command::Verify(v) => {
            assert_eq!(v.redis_url.password(), Some("s3cret pass"));
            assert_eq!(pg_pw_of(&v.database), Some(b"pgsecret".to_vec()));
        }
        other => panic!("{other:?}"),
    }
    match command(&["bench-redis"], &[("REDIS_PASSWORD_FILE", &p[0])]) {
        Command::BenchRedis(b) => assert_eq!(b.redis_url.password(), Some("s3cret pass")),
        other => panic!("{other:?}"),
    }
    match command(
        &[
            "switch",
            "--to",
            "rediss://app@new:6380",
            "--to-password-file",
            &p[1],
        ],
        &[("REDIS_PASSWORD_FILE", &p[0])],
    ) {
        Command::Switch(s) => assert_eq!(s.to[0].password(), Some("pw")),
        other => panic!("{other:?}"),
    }
    match command(
        &["switch", "--to=redis://:urlpw@new"],
        &[("REDIS_PASSWORD_FILE", &p[0])],
    ) {
        Command::Switch(s) => assert_eq!(
            s.to[0].password(),
            Some("urlpw"),
            "REDIS_PASSWORD_FILE is the app's"
        ),
        other => panic!("{other:?}"),
    }
}

fn pg_pw_of(c: &crate::pg::PgConfig) -> Option<Vec<u8>> {
    c.driver.get_password().map(|p| p.to_vec())
}

#[test]
fn should_reject_bad_tls_and_password_files_naming_option_and_file() {
    let (dir, p) = files(&[
        ("empty", b""),
        ("newline", b"\n"),
        ("garbage.pem", b"not a certificate\n"),
        ("broken.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n"),
        ("latin1", b"p\xe4ss"),
    ]);
    /// (arguments, environment, text the message must contain)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case> = vec![
        (
            vec!["--redis-password-file", &p[0]],
            vec![],
            format!(
                "--redis-password-file (REDIS_PASSWORD_FILE): '{}' is empty",
                p[0]
            ),
        ),
        (
            vec![],
            vec![("DATABASE_PASSWORD_FILE", &p[1])],
            format!(
                "--database-password-file (DATABASE_PASSWORD_FILE): '{}' is empty",
                p[1]
            ),
        ),
        (
            vec![],
            vec![("REDIS_PASSWORD_FILE", &p[4])],
            format!("'{}' is not UTF-8 text", p[4]),
        ),
        (
            vec!["--redis-ca-file", &p[2]],
            vec![],
            format!(
                "--redis-ca-file (REDIS_CA_FILE): '{}' holds no certificate (expected PEM",
                p[2]
            ),
        ),
        (
            vec![],
            vec![("REDIS_CA_FILE", &p[3])],
            format!(
                "--redis-ca-file (REDIS_CA_FILE): '{}' is not valid PEM",
                p[3]
            ),
        ),
        (
            vec!["--redis-client-cert", &p[2], "--redis-client-key", &p[2]],
            vec![],
            format!(
                "--redis-client-cert (REDIS_CLIENT_CERT): '{}' holds no certificate",
                p[2]
            ),
        ),
        (
            vec!["--database-ca-file", &p[2]],
            vec![],
            format!(
                "--database-ca-file (DATABASE_CA_FILE): '{}' holds no certificate",
                p[2]
            ),
        ),
        (
            vec![],
            vec![(
                "DATABASE_URL",
                "postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/x",
            )],
            "sslrootcert in --database-url (DATABASE_URL): cannot read '/nonexistent/x'"
                .to_string(),
        ),
        (
            vec!["verify", "--redis-ca-file", &p[2]],
            vec![],
            "--redis-ca-file (REDIS_CA_FILE)".to_string(),
        ),
        (
            vec!["bench-redis"],
            vec![("REDIS_CLIENT_KEY", &p[2])],
            "--redis-client-key (REDIS_CLIENT_KEY) is set but --redis-client-cert".to_string(),
        ),
        (
            vec![
                "switch",
                "--to",
                "redis://h",
                "--to-password-file",
                "/nonexistent/pw",
            ],
            vec![],
            "--to-password-file: cannot read '/nonexistent/pw'".to_string(),
        ),
    ];
    for (args, env, want) in cases {
        let out = error(&args, &env);
        assert!(
            out.starts_with("error: ") && out.contains(&want),
            "{args:?} {env:?}: {out}"
        );
    }
    // DATABASE_CA_FILE replaces sslrootcert (which then is not read at all).
    let (_d2, ca) = files(&[("ca.pem", b"")]);
    let out = error(
        &["--database-ca-file", &ca[0]],
        &[("DATABASE_URL", "postgres://h/db?sslrootcert=/nonexistent/x")],
    );
    assert!(
        out.contains("--database-ca-file (DATABASE_CA_FILE)"),
        "{out}"
    );
    drop(dir);
}

#[test]
fn should_never_show_file_passwords_in_errors() {
    let (_dir, p) = files(&[("pw", b"hunter2\n")]);
    for (args, env) in [
        (vec!["--redis-password-file", &p[0], "--bogus"], vec![]),
        (
            vec!["--database-password-file", &p[0], "--seed", "x"],
            vec![],
        ),
        (
            vec!["--bogus"],
            vec![("REDIS_PASSWORD_FILE", p[0].as_str())],
        ),
        (vec!["--database-password", "hunter2", "--bogus"], vec![]),
        (
            vec!["--bogus", "hunter2"],
            vec![("DATABASE_PASSWORD", "hunter2")],
        ),
        (
            vec![
                "switch",
                "--to",
                "redis://h",
                "--to-password-file",
                &p[0],
                "--x",
                "hunter2",
            ],
            vec![],
        ),
    ] {
        let out = error(&args, &env);
        assert!(!out.contains("hunter2"), "{args:?} {env:?}: {out}");
    }
    let c = config(
        &[],
        &[
            ("REDIS_PASSWORD_FILE", &p[0]),
            ("DATABASE_PASSWORD", "hunter2"),
        ],
    );
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn should_map_sslmode_and_keep_other_url_parameters() {
    use crate::pg::SslMode;
    let db = |url: &str| config(&[], &[("DATABASE_URL", url)]).database;
    assert_eq!(db("postgres://h/x").sslmode, SslMode::Prefer);
    for (name, mode) in [
        ("disable", SslMode::Disable),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ] {
        let c = db(&format!(
            "postgres://u@h:5433/x?application_name=a&sslmode={name}&sslrootcert=system"
        ));
        assert_eq!(c.sslmode, mode, "{name}");
        assert_eq!(c.driver.get_application_name(), Some("a"));
        assert_eq!(c.driver.get_ports(), &[5433]);
        assert_eq!(
            crate::pg::redacted(&c).ends_with(&format!("sslmode={name}")),
            mode != SslMode::Prefer
        );
    }
}

#[test]
fn should_take_several_seed_nodes_only_in_cluster_mode() {
    use crate::resp::RedisMode;
    let seeds = "redis://a:7000, redis://b:7001,redis://c:7002";
    let pw = std::env::temp_dir().join(format!("seed-pw-{}", std::process::id()));
    std::fs::write(&pw, "s3cret\n").unwrap();
    let pw = pw.to_string_lossy().into_owned();
    let c = config(
        &["--redis-mode", "cluster", "--redis-password-file", &pw],
        &[("REDIS_URL", seeds)],
    );
    assert_eq!(c.redis_mode, RedisMode::Cluster);
    let hosts: Vec<(&str, u16)> = c
        .redis_seeds
        .iter()
        .map(|u| (u.host.as_str(), u.port))
        .collect();
    assert_eq!(hosts, [("a", 7000), ("b", 7001), ("c", 7002)]);
    assert_eq!(c.redis_url, c.redis_seeds[0]);
    assert!(c.redis_seeds.iter().all(|u| u.password() == Some("s3cret")));
    // One URL: any mode; the default is auto.
    assert_eq!(config(&[], &[]).redis_mode, RedisMode::Auto);
    let one = config(
        &["--redis-mode", "Standalone"],
        &[("REDIS_URL", "redis://a")],
    );
    assert_eq!(
        (one.redis_mode, one.redis_seeds.len()),
        (RedisMode::Standalone, 1)
    );
    // Several without cluster mode: a clear usage error (exit 2).
    for mode in [None, Some("auto"), Some("standalone")] {
        let mut env = vec![("REDIS_URL", seeds)];
        if let Some(m) = mode {
            env.push(("REDIS_MODE", m));
        }
        let out = error(&[], &env);
        assert!(
            out.contains("lists 3 nodes") && out.contains("--redis-mode (REDIS_MODE)"),
            "{out}"
        );
        let v = error(&["verify"], &env);
        assert!(v.contains("lists 3 nodes"), "{v}");
    }
    let out = error(&["--redis-mode", "sentinel"], &[]);
    assert!(out.contains("'auto', 'standalone' or 'cluster'"), "{out}");
    let out = error(
        &[],
        &[
            ("REDIS_MODE", "cluster"),
            ("REDIS_URL", "redis://a,redis://b/2"),
        ],
    );
    assert!(out.contains("only database 0"), "{out}");
    let out = error(
        &[],
        &[
            ("REDIS_MODE", "cluster"),
            ("REDIS_URL", "redis://a,,redis://b"),
        ],
    );
    assert!(out.contains("empty item"), "{out}");
    let out = error(
        &[],
        &[
            ("REDIS_MODE", "cluster"),
            ("REDIS_URL", "redis://u:pw@a,http://b"),
        ],
    );
    assert!(
        out.contains("unsupported scheme") && !out.contains("pw@"),
        "{out}"
    );
    // bench-redis: several seeds only in cluster mode, as for the workload.
    let out = error(&["bench-redis"], &[("REDIS_URL", seeds)]);
    assert!(out.contains("lists 3 nodes"), "{out}");
    match command(
        &["bench-redis", "--redis-mode", "cluster"],
        &[("REDIS_URL", seeds)],
    ) {
        Command::BenchRedis(b) => {
            assert_eq!((b.redis_mode, b.redis_seeds.len()), (RedisMode::Cluster, 3))
        }
        other => panic!("{other:?}"),
    }
    match command(
        &["verify", "--redis-mode", "cluster"],
        &[("REDIS_URL", seeds)],
    ) {
        Command::Verify(v) => {
            assert_eq!((v.redis_mode, v.redis_seeds.len()), (RedisMode::Cluster, 3))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn should_take_the_instance_index_from_kubernetes_when_instance_index_is_unset() {
    let index = |env: &[(&str, &str)]| match command(&[], env) {
        Command::Run(c) => (c.instance_index, c.instance_count),
        other => panic!("{other:?}"),
    };
    let three = ("INSTANCE_COUNT", "3");
    assert_eq!(index(&[three, ("JOB_COMPLETION_INDEX", "2")]), (2, 3));
    assert_eq!(
        index(&[three, ("POD_INDEX", "1"), ("HOSTNAME", "x-2")]),
        (1, 3)
    );
    assert_eq!(index(&[three, ("HOSTNAME", "analytics-demo-2")]), (2, 3));
    // INSTANCE_INDEX wins; one instance ignores the rest.
    assert_eq!(
        index(&[
            three,
            ("INSTANCE_INDEX", "0"),
            ("JOB_COMPLETION_INDEX", "2")
        ]),
        (0, 3)
    );
    assert_eq!(
        index(&[("JOB_COMPLETION_INDEX", "2"), ("HOSTNAME", "web-7")]),
        (0, 1)
    );
    assert_eq!(index(&[three, ("HOSTNAME", "laptop")]), (0, 3));
    let out = error(&[], &[three, ("JOB_COMPLETION_INDEX", "x")]);
    assert!(out.contains("JOB_COMPLETION_INDEX"), "{out}");
    let out = error(&[], &[three, ("JOB_COMPLETION_INDEX", "3")]);
    assert!(out.contains("must be less than"), "{out}");
    // Run names are labels and keys: a small alphabet.
    match command(
        &[],
        &[("RUN_NAME", "rehearsal-7.a_b"), ("START_TIMEOUT", "30")],
    ) {
        Command::Run(c) => assert_eq!(
            (c.run_name.as_deref(), c.start_timeout),
            (Some("rehearsal-7.a_b"), Duration::from_secs(30))
        ),
        other => panic!("{other:?}"),
    }
    let out = error(&[], &[("RUN_NAME", "a b")]);
    assert!(out.contains("RUN_NAME"), "{out}");
}

#[test]
fn should_read_the_admin_token_from_a_file_and_refuse_both() {
    let dir = std::env::temp_dir().join(format!("ad-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "s3cr3t-from-file\n").unwrap();
    let path = file.to_str().unwrap();
    match command(&[], &[("ADMIN_TOKEN_FILE", path)]) {
        Command::Run(c) => assert_eq!(c.admin_token.as_deref(), Some("s3cr3t-from-file")),
        other => panic!("{other:?}"),
    }
    let out = error(&[], &[("ADMIN_TOKEN_FILE", path), ("ADMIN_TOKEN", "x")]);
    assert!(out.contains("are both set"), "{out}");
    assert!(!out.contains("s3cr3t"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
