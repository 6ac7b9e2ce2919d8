//! Configuration through the binary: `--help`, and bad values rejected with exit 2 and a
//! message naming the option, never a panic, never a secret. No server is needed: every
//! case fails before connecting (the URLs point at closed ports in case one does not).

mod common;

use std::time::Duration;

use common::{run_binary, RunOutput};

/// Ports nothing listens on, so an accepted configuration cannot do anything useful.
const DEAD_ARGS: &[&str] = &[
    "--redis-url",
    "redis://127.0.0.1:1",
    "--database-url",
    "postgres://postgres@127.0.0.1:1/analytics",
    "--bind-address",
    "127.0.0.1:0",
    "--duration",
    "1",
];

fn run(args: &[&str], env: &[(&str, &str)]) -> RunOutput {
    // DEAD_ARGS' options that ARGS does not set itself (argh refuses duplicates).
    let mut all: Vec<&str> = DEAD_ARGS
        .chunks(2)
        .filter(|pair| !args.contains(&pair[0]))
        .flatten()
        .copied()
        .collect();
    all.extend_from_slice(args);
    // The harness's spawn sets BIND_ADDRESS; run_binary does not, and the flag wins anyway.
    run_binary(&all, env, Duration::from_secs(30))
}

/// Exit 2, a message on stderr naming WANT, no panic.
#[track_caller]
fn assert_rejected(out: &RunOutput, want: &str) {
    let ctx = format!("stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert_eq!(out.code(), Some(2), "exit code; {ctx}");
    assert!(!out.stderr.contains("panicked"), "panic; {ctx}");
    assert!(!out.stdout.contains("panicked"), "panic; {ctx}");
    assert!(
        out.stderr.contains(want),
        "message should name {want}; {ctx}"
    );
}

/// `assert_rejected`, and the message is an `error: ...` line (bad values, as documented).
#[track_caller]
fn assert_usage_error(out: &RunOutput, want: &str) {
    assert_rejected(out, want);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("error: ") && l.contains(want)),
        "no `error: ...` line naming {want}:\n{}",
        out.stderr
    );
}

#[test]
fn should_print_help() {
    let out = run_binary(&["--help"], &[], Duration::from_secs(30));
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(!text.contains("panicked"), "{text}");
    for want in [
        "EVENTS_PER_SECOND",
        "--events-per-second",
        "QUERIES_PER_SECOND",
        "CACHE_HIT_TARGET",
        "REDIS_URL",
        "DATABASE_URL",
        "verify",
    ] {
        assert!(text.contains(want), "--help should mention {want}:\n{text}");
    }
}

#[test]
fn should_reject_a_non_numeric_rate() {
    let out = run(&["--events-per-second", "abc"], &[]);
    assert_usage_error(&out, "--events-per-second");
}

#[test]
fn should_reject_a_negative_rate_from_the_environment() {
    let out = run(&[], &[("EVENTS_PER_SECOND", "-1")]);
    assert_usage_error(&out, "EVENTS_PER_SECOND");
}

#[test]
fn should_reject_a_hit_target_above_100() {
    let out = run(&["--cache-hit-target", "120"], &[]);
    assert_usage_error(&out, "--cache-hit-target");
}

#[test]
fn should_reject_a_non_redis_url() {
    let out = run(&["--redis-url", "http://x"], &[]);
    assert_usage_error(&out, "--redis-url");
}

#[test]
fn should_reject_a_bad_bind_address() {
    let out = run(&["--bind-address", "nope"], &[]);
    assert_usage_error(&out, "--bind-address");
}

#[test]
fn should_reject_a_pool_smaller_than_the_shards() {
    let out = run(&["--shards", "4", "--redis-pool-size", "2"], &[]);
    assert_usage_error(&out, "--redis-pool-size");
}

#[test]
fn should_reject_an_unknown_flag() {
    let out = run(&["--no-such-flag", "1"], &[]);
    // argh's own wording ("Unrecognized argument: --no-such-flag"), not an `error:` line.
    assert_rejected(&out, "--no-such-flag");
}

#[test]
fn should_not_echo_the_redis_password_in_errors() {
    let out = run(
        &[
            "--redis-url",
            "redis://:s3cret@127.0.0.1:1",
            "--cache-hit-target",
            "500",
        ],
        &[],
    );
    assert_usage_error(&out, "--cache-hit-target");
    assert!(
        !out.stderr.contains("s3cret") && !out.stdout.contains("s3cret"),
        "the password leaks:\n{}{}",
        out.stdout,
        out.stderr
    );
    // An invalid URL must not be echoed with its password either.
    let out = run_binary(
        &[
            "--redis-url",
            "redis://:s3cret@127.0.0.1:notaport",
            "--duration",
            "1",
        ],
        &[],
        Duration::from_secs(30),
    );
    assert_usage_error(&out, "--redis-url");
    assert!(
        !out.stderr.contains("s3cret"),
        "invalid URL echoed with its password:\n{}",
        out.stderr
    );
}

#[test]
fn should_reject_a_bad_verify_url() {
    let out = run_binary(
        &[
            "verify",
            "--redis-url",
            "redis://:s3cret@127.0.0.1:1",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/analytics",
        ],
        &[],
        Duration::from_secs(30),
    );
    let ctx = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code(), Some(2), "verify without servers: {ctx}");
    assert!(!ctx.contains("panicked"), "{ctx}");
    assert!(!ctx.contains("s3cret"), "{ctx}");
}
