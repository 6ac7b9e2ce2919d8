//! `bench-redis` options: defaults, precedence, every invalid value (exit 2, precise message).

use super::cli::opt;
use super::*;
use crate::workload::bench_mix::{KeyPattern, Ratio};

fn outcome(args: &[&str], env: &[(&str, &str)]) -> ParseOutcome {
    let argv: Vec<&str> = ["analytics-demo", "bench-redis"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    parse(&argv, &|key| {
        env.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    })
}

fn bench(args: &[&str], env: &[(&str, &str)]) -> BenchRedisArgs {
    match outcome(args, env) {
        ParseOutcome::Command(Command::BenchRedis(b)) => b,
        other => panic!("{args:?} {env:?}: {other:?}"),
    }
}

fn error(args: &[&str], env: &[(&str, &str)]) -> String {
    match outcome(args, env) {
        ParseOutcome::Exit { code: 2, output } => output,
        other => panic!("{args:?} {env:?}: expected exit 2, got {other:?}"),
    }
}

/// The options only `bench-redis` takes (the others are shared with the workload).
pub(super) const BENCH_ONLY: [&str; 7] = [
    "connections",
    "pipeline",
    "ratio",
    "keys",
    "key_pattern",
    "data_size",
    "rate",
];

#[test]
fn should_use_bench_defaults() {
    let b = bench(&[], &[]);
    assert_eq!(
        (b.connections, b.pipeline, b.keys, b.data_size, b.rate),
        (50, 1, 100_000, 32, 0)
    );
    assert_eq!(b.ratio, Ratio { set: 1, get: 10 });
    assert_eq!(b.key_pattern, KeyPattern::Uniform);
    assert_eq!(
        (b.run.duration, b.run.shards, b.json, b.run.pin),
        (None, 0, false, true)
    );
    assert_eq!(b.redis_url.port, 6379);
    assert_eq!(b.redis_protocol, crate::resp::Protocol::Auto);
}

#[test]
fn should_take_flags_over_env() {
    let env = [
        ("BENCH_CONNECTIONS", "8"),
        ("BENCH_PIPELINE", "4"),
        ("BENCH_RATIO", "1:1"),
        ("BENCH_KEY_PATTERN", "ZIPF"),
        ("BENCH_RATE", "1000"),
        ("DURATION", "3"),
    ];
    let env = [&env[..], &[("REDIS_PROTOCOL", "3")]].concat();
    let b = bench(
        &[
            "--pipeline",
            "16",
            "--rate=0",
            "--json",
            "--redis-protocol",
            "2",
        ],
        &env,
    );
    assert_eq!(b.redis_protocol, crate::resp::Protocol::Resp2);
    assert_eq!((b.connections, b.pipeline, b.rate), (8, 16, 0));
    assert_eq!(b.ratio, Ratio { set: 1, get: 1 });
    assert_eq!(b.key_pattern, KeyPattern::Zipf);
    assert_eq!(b.run.duration, Some(std::time::Duration::from_secs(3)));
    assert!(b.json);
}

/// (flag, env, invalid value, text the message must contain).
const INVALID: &[(&str, &str, &str, &str)] = &[
    ("--connections", "BENCH_CONNECTIONS", "0", "--connections (BENCH_CONNECTIONS) must be between 1 and 100000, got 0"),
    ("--connections", "BENCH_CONNECTIONS", "x", "invalid value 'x' for --connections (BENCH_CONNECTIONS): expected a non-negative integer"),
    ("--pipeline", "BENCH_PIPELINE", "0", "--pipeline (BENCH_PIPELINE) must be between 1 and 10000, got 0"),
    ("--pipeline", "BENCH_PIPELINE", "10001", "must be between 1 and 10000, got 10001"),
    ("--ratio", "BENCH_RATIO", "1-10", "invalid value '1-10' for --ratio (BENCH_RATIO): expected SET:GET as two whole numbers such as 1:10"),
    ("--ratio", "BENCH_RATIO", "0:0", "invalid value '0:0' for --ratio (BENCH_RATIO): expected at least one side above 0"),
    ("--ratio", "BENCH_RATIO", "2000000:1", "expected each side at most 1000000"),
    ("--keys", "BENCH_KEYS", "0", "--keys (BENCH_KEYS) must be between 1 and 1000000000000, got 0"),
    ("--keys", "BENCH_KEYS", "1000000000001", "must be between 1 and 1000000000000"),
    ("--key-pattern", "BENCH_KEY_PATTERN", "gaussian", "invalid value 'gaussian' for --key-pattern (BENCH_KEY_PATTERN): expected 'uniform' or 'zipf'"),
    ("--data-size", "BENCH_DATA_SIZE", "0", "--data-size (BENCH_DATA_SIZE) must be between 1 and 67108864, got 0"),
    ("--data-size", "BENCH_DATA_SIZE", "1k", "invalid value '1k' for --data-size (BENCH_DATA_SIZE)"),
    ("--rate", "BENCH_RATE", "-5", "invalid value '-5' for --rate (BENCH_RATE): expected a non-negative integer"),
    ("--rate", "BENCH_RATE", "1.5", "invalid value '1.5' for --rate (BENCH_RATE)"),
    ("--redis-protocol", "REDIS_PROTOCOL", "4", "invalid value '4' for --redis-protocol (REDIS_PROTOCOL): expected 'auto', '2' or '3'"),
];

#[test]
fn should_reject_every_invalid_bench_value_by_flag_and_by_env() {
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
        }
    }
    for name in BENCH_ONLY {
        let flag = format!("--{}", name.replace('_', "-"));
        assert!(
            INVALID.iter().any(|r| r.0 == flag),
            "no invalid case for {flag}"
        );
    }
}

#[test]
fn should_check_bench_rules_between_options() {
    let out = error(&["--shards", "4", "--connections", "3"], &[]);
    assert_eq!(out, "error: --connections (BENCH_CONNECTIONS) (3) is smaller than the number of shards (4): every shard needs at least one connection; raise --connections or lower --shards (SHARDS)");
    let out = error(&["--key-pattern", "zipf", "--keys", "10000001"], &[]);
    assert!(out.contains("--keys (BENCH_KEYS) (10000001) is above 10000000 with --key-pattern (BENCH_KEY_PATTERN) zipf"), "{out}");
    let out = error(&["--data-size", "2000", "--max-reply-bytes", "2000"], &[]);
    assert!(out.contains("--data-size (BENCH_DATA_SIZE) (2000) does not fit in --max-reply-bytes (REDIS_MAX_REPLY_BYTES) (2000)"), "{out}");
    let out = error(&["--connections", "1000", "--pipeline", "1001"], &[]);
    assert!(
        out.contains("(1000 x 1001) is above 1000000 commands in flight"),
        "{out}"
    );
    // Automatic shards: checked by the caller once the count is known.
    let b = bench(&["--connections", "2"], &[]);
    assert!(b.validate_against_shards(2).is_ok());
    assert!(b.validate_against_shards(3).is_err());
    assert_eq!((b.run.resolved_shards(2), b.run.resolved_shards(8)), (1, 7));
}

#[test]
fn should_keep_bench_options_out_of_the_workload() {
    let top = |args: &[&str]| {
        let argv: Vec<&str> = std::iter::once("analytics-demo")
            .chain(args.iter().copied())
            .collect();
        match parse(&argv, &|_| None) {
            ParseOutcome::Exit { code, output } => (code, output),
            ParseOutcome::Command(c) => panic!("{args:?}: {c:?}"),
        }
    };
    let (code, out) = top(&["--connections", "5"]);
    assert_eq!(code, 2);
    assert!(
        out.contains("Unrecognized argument: --connections"),
        "{out}"
    );
    let (code, out) = top(&["--shards", "1", "bench-redis"]);
    assert_eq!(code, 2);
    assert!(
        out.contains("--shards given before the subcommand"),
        "{out}"
    );
    // The help of the subcommand lists its options with env names and defaults.
    let (code, help) = top(&["bench-redis", "--help"]);
    assert_eq!(code, 0);
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for name in BENCH_ONLY {
        let def = opt::ALL.iter().find(|d| d.name == name).unwrap();
        assert!(
            help.contains(&def.flag()) && help.contains(&format!("[env: {}]", def.env)),
            "{name}"
        );
    }
    assert!(help.contains("--json") && help.contains("--redis-url"));
}
