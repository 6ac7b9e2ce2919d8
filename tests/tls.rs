//! TLS and credentials against real servers: redis-server with `--tls-port` and ACL users,
//! PostgreSQL with `ssl=on` and SCRAM passwords over `hostssl`, certificates made for each
//! test with the `openssl` command (tests/common `TestCerts`).
//!
//! Covered: the whole app (events and queries) over rediss:// with a CA file and an ACL user
//! whose password comes from a file, PostgreSQL with sslmode=verify-full and a password file,
//! then `verify` clean; an untrusted server certificate (connect error, counted, /health 503,
//! no crash); `--tls-auth-clients yes` with and without a client certificate; SNI and host
//! name checks on a TLS server of our own; large values and deep pipelines over TLS;
//! sslmode=require against a plain PostgreSQL and verify-ca/verify-full name checks; a
//! wrong Redis password reported as `auth` without the password.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use analytics_demo::resp::{Connection, PoolConfig, RedisUrl};
use analytics_demo::tls::{PemPath, TlsFiles, Verify};
use common::{
    metric_sum, refs, run_binary, wait_until, write_file, App, PgServer, RedisServer, RunOutput,
    TestCerts,
};

const HEALTHY: Duration = Duration::from_secs(60);
const REDIS_PW: &str = "redis-Secret-7f3";
const PG_PW: &str = "pg-Secret-19c";

/// pg_hba.conf: `postgres` over TCP without a password (the harness's psql), `app` only over
/// TLS with a SCRAM password, nothing else.
const HBA: &str = "local all all trust\n\
                   host all postgres 127.0.0.1/32 trust\n\
                   hostssl all app 127.0.0.1/32 scram-sha-256\n";

fn metrics(app: &App) -> String {
    app.get("/metrics").1
}

fn metric(app: &App, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(&metrics(app), name, labels).unwrap_or(0.0)
}

/// Workload arguments: one shard, small tenant space, the given rates.
fn args(redis_url: &str, pg_url: &str, events: &str, queries: &str) -> Vec<String> {
    common::app_args(
        redis_url,
        pg_url,
        &[
            "--seed",
            "7",
            "--organizations",
            "20",
            "--users-per-org",
            "20",
            "--redis-pool-size",
            "4",
            "--events-per-second",
            events,
            "--queries-per-second",
            queries,
        ],
        &[],
    )
}

fn app_role(pg: &PgServer) {
    pg.psql(&format!("CREATE ROLE app LOGIN PASSWORD '{PG_PW}'"));
    pg.psql("GRANT ALL ON DATABASE analytics TO app");
    pg.psql("GRANT ALL ON SCHEMA public TO app");
}

#[test]
fn should_run_the_app_over_rediss_and_verify_full_postgres_then_verify_clean() {
    let certs = TestCerts::generate();
    let redis = RedisServer::start_tls(&certs, "optional", Some(("app", REDIS_PW)));
    let pg = PgServer::start_tls(&certs, HBA);
    app_role(&pg);
    let secrets = certs.dir();
    let redis_pw = write_file(secrets, "redis.pw", &format!("{REDIS_PW}\n"));
    let pg_pw = write_file(secrets, "pg.pw", &format!("{PG_PW}\n"));
    // An IP host (checked against the IP SAN) for Redis, a name for PostgreSQL.
    let redis_url = format!("rediss://app@127.0.0.1:{}", redis.port);
    let pg_url = format!(
        "postgres://app@localhost:{}/analytics?sslmode=verify-full",
        pg.port
    );
    let env = [
        ("REDIS_CA_FILE", certs.ca.to_str().unwrap()),
        ("REDIS_PASSWORD_FILE", redis_pw.to_str().unwrap()),
        ("DATABASE_CA_FILE", certs.ca.to_str().unwrap()),
        ("DATABASE_PASSWORD_FILE", pg_pw.to_str().unwrap()),
    ];
    let a = args(&redis_url, &pg_url, "200", "400");
    let mut app = App::spawn_healthy(&refs(&a), &env, HEALTHY);
    assert!(
        wait_until(Duration::from_secs(30), || {
            metric(&app, "analytics_events_total", &[("outcome", "acked")]) > 200.0
                && metric(&app, "analytics_queries_total", &[("cache", "miss")]) > 0.0
                && metric(&app, "analytics_queries_total", &[("cache", "hit")]) > 0.0
        }),
        "no events or queries over TLS:\n{}",
        app.log()
    );
    // The app's PostgreSQL sessions are TLS (and, with SCRAM over TLS, channel-bound).
    let ssl = pg.psql(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'app'",
    );
    let (tls_sessions, all) = ssl.split_once('|').unwrap();
    assert!(
        tls_sessions == all && all != "0",
        "app sessions (tls|all): {ssl}"
    );
    let (status, health) = app.get("/health");
    assert_eq!(status, 200, "{health}");
    assert!(health.contains("rediss://app:***@127.0.0.1"), "{health}");
    assert!(health.contains("sslmode=verify-full"), "{health}");
    assert_eq!(
        metric(&app, "analytics_redis_errors_total", &[]),
        0.0,
        "{}",
        metrics(&app)
    );
    for path in ["/metrics", "/health", "/report", "/api/status", "/"] {
        let body = app.get(path).1;
        for pw in [REDIS_PW, PG_PW] {
            assert!(!body.contains(pw), "{path} shows a password");
        }
    }
    assert_eq!(app.terminate().code(), Some(0), "{}", app.log());
    let log = app.log();
    for pw in [REDIS_PW, PG_PW] {
        assert!(!log.contains(pw), "the log shows a password");
    }

    // verify reads the same options.
    let mut venv = env.to_vec();
    venv.push(("REDIS_URL", &redis_url));
    venv.push(("DATABASE_URL", &pg_url));
    let out = run_binary(&["verify", "--json"], &venv, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["clean"], true, "{v}");
    assert!(v["keys_checked"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["lost_acknowledged_increments"], 0, "{v}");
}

#[test]
fn should_count_an_untrusted_certificate_as_a_connect_error_and_stay_up() {
    let certs = TestCerts::generate();
    let redis = RedisServer::start_tls(&certs, "no", None);
    let pg = PgServer::start();
    let redis_url = format!("rediss://localhost:{}", redis.port);
    let a = args(&redis_url, &pg.url(), "50", "50");
    let mut app = App::spawn(
        &refs(&a),
        &[("REDIS_CA_FILE", certs.other_ca.to_str().unwrap())],
    );
    assert!(
        wait_until(HEALTHY, || {
            let (status, body) = app.get("/health");
            status == 503 && body.contains("not trusted")
        }),
        "no 503 naming the certificate problem: {:?}\n{}",
        app.get("/health"),
        app.log()
    );
    let (_, health) = app.get("/health");
    eprintln!("untrusted certificate, /health: {health}");
    assert!(health.contains("UnknownIssuer"), "{health}");
    assert!(health.contains("--redis-ca-file"), "{health}");
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            &app,
            "analytics_redis_errors_total",
            &[("kind", "connect")]
        ) >= 3.0),
        "connect errors not counted (or not retried):\n{}",
        metrics(&app)
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(app.alive(), "{}", app.log());
    let log = app.log();
    assert!(
        log.contains("TLS handshake with rediss://localhost"),
        "the log does not say what failed:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    let code = app.terminate().code();
    assert!(code.is_some(), "killed by a signal:\n{}", app.log());
}

#[test]
fn should_need_a_client_certificate_when_the_server_requires_one() {
    let certs = TestCerts::generate();
    let redis = RedisServer::start_tls(&certs, "yes", None);
    let pg = PgServer::start();
    // SNI and the DNS SAN: the host is a name.
    let redis_url = format!("rediss://localhost:{}", redis.port);
    let a = args(&redis_url, &pg.url(), "100", "100");
    let ca = ("REDIS_CA_FILE", certs.ca.to_str().unwrap());
    let mut app = App::spawn(&refs(&a), &[ca]);
    assert!(
        wait_until(HEALTHY, || {
            let (status, body) = app.get("/health");
            status == 503 && body.contains("client certificate")
        }),
        "without a client certificate: {:?}\n{}",
        app.get("/health"),
        app.log()
    );
    eprintln!("no client certificate, /health: {}", app.get("/health").1);
    assert!(metric(&app, "analytics_redis_errors_total", &[("kind", "connect")]) > 0.0);
    assert!(app.alive());
    app.terminate();

    let with_cert = [
        ca,
        ("REDIS_CLIENT_CERT", certs.client_cert.to_str().unwrap()),
        ("REDIS_CLIENT_KEY", certs.client_key.to_str().unwrap()),
    ];
    let mut app = App::spawn_healthy(&refs(&a), &with_cert, HEALTHY);
    assert!(
        wait_until(Duration::from_secs(30), || metric(
            &app,
            "analytics_events_total",
            &[("outcome", "acked")]
        ) > 50.0),
        "no acked events with a client certificate:\n{}",
        app.log()
    );
    assert_eq!(app.terminate().code(), Some(0), "{}", app.log());
}

#[test]
fn should_report_a_wrong_redis_password_as_auth_without_showing_it() {
    const WRONG: &str = "not-the-Password-42";
    let certs = TestCerts::generate();
    let redis = RedisServer::start_tls(&certs, "no", Some(("app", REDIS_PW)));
    let pg = PgServer::start();
    let pw = write_file(certs.dir(), "wrong.pw", &format!("{WRONG}\n"));
    let redis_url = format!("rediss://app:{REDIS_PW}@127.0.0.1:{}", redis.port);
    let a = args(&redis_url, &pg.url(), "50", "50");
    let env = [
        ("REDIS_CA_FILE", certs.ca.to_str().unwrap()),
        // The file's password replaces the (right) one of the URL.
        ("REDIS_PASSWORD_FILE", pw.to_str().unwrap()),
    ];
    let mut app = App::spawn(&refs(&a), &env);
    assert!(
        wait_until(HEALTHY, || {
            let (status, body) = app.get("/health");
            status == 503 && body.contains("(auth)")
        }),
        "no auth error in /health: {:?}\n{}",
        app.get("/health"),
        app.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            &app,
            "analytics_redis_errors_total",
            &[("kind", "auth")]
        ) > 0.0),
        "{}",
        metrics(&app)
    );
    let (_, health) = app.get("/health");
    eprintln!("wrong password, /health: {health}");
    assert!(health.contains("WRONGPASS"), "{health}");
    for path in ["/metrics", "/health", "/report", "/api/status"] {
        let body = app.get(path).1;
        assert!(
            !body.contains(WRONG) && !body.contains(REDIS_PW),
            "{path}: {body}"
        );
    }
    app.terminate();
    let log = app.log();
    assert!(log.contains("WRONGPASS"), "{log}");
    assert!(!log.contains(WRONG) && !log.contains(REDIS_PW), "{log}");
}

/// `analytics-demo verify` against REDIS and PG as user postgres, with `sslmode` when given.
fn verify_with_pg(
    redis: &RedisServer,
    pg: &PgServer,
    sslmode: Option<&str>,
    env: &[(&str, &str)],
) -> RunOutput {
    let query = sslmode.map_or(String::new(), |m| format!("?sslmode={m}"));
    let url = format!("postgres://postgres@127.0.0.1:{}/analytics{query}", pg.port);
    run_binary(
        &[
            "verify",
            "--redis-url",
            &redis.url(),
            "--database-url",
            &url,
        ],
        env,
        Duration::from_secs(60),
    )
}

#[test]
fn should_fail_clearly_when_postgres_tls_is_required_but_not_offered() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    let out = verify_with_pg(&redis, &pg, Some("require"), &[]);
    assert_eq!(out.code(), Some(2), "{}\n{}", out.stdout, out.stderr);
    eprintln!("sslmode=require, plain server: {}", out.stderr.trim());
    assert!(
        out.stderr.contains("server does not support TLS"),
        "{}",
        out.stderr
    );
    // prefer (the default) falls back to plain TCP.
    let out = verify_with_pg(&redis, &pg, None, &[]);
    assert!(!out.stderr.contains("TLS"), "{}", out.stderr);
}

#[test]
fn should_check_the_postgres_certificate_as_the_sslmode_says() {
    let certs = TestCerts::generate();
    // This server's certificate names DNS:localhost only; we connect to 127.0.0.1.
    let pg = PgServer::start_tls_with(&certs.dns_only_cert, &certs.dns_only_key, HBA);
    let redis = RedisServer::start();
    let ca = certs.ca.to_str().unwrap();
    let other = certs.other_ca.to_str().unwrap();
    let verify = |sslmode: &str, ca_file: &str| {
        let out = verify_with_pg(&redis, &pg, Some(sslmode), &[("DATABASE_CA_FILE", ca_file)]);
        // No schema in this database: a clean TLS start fails later, on the query.
        format!("{}{}", out.stdout, out.stderr)
    };
    let full = verify("verify-full", ca);
    eprintln!("verify-full, name mismatch: {full}");
    assert!(full.contains("does not match the host"), "{full}");
    for (mode, ca_file) in [("verify-ca", ca), ("require", other)] {
        let out = verify(mode, ca_file);
        eprintln!("{mode}: {out}");
        assert!(
            out.contains("runs") && !out.contains("TLS") && !out.contains("certificate"),
            "{mode}: {out}"
        );
    }
    let untrusted = verify("verify-ca", other);
    eprintln!("verify-ca, untrusted: {untrusted}");
    assert!(untrusted.contains("UnknownIssuer"), "{untrusted}");
}

// ---------------------------------------------------------------------------------------------
// The client itself, on a glommio executor
// ---------------------------------------------------------------------------------------------

fn run_on_executor<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

fn tls_pool_config(ca: &std::path::Path, client: Option<(&TestCerts,)>) -> PoolConfig {
    let (cert, key) = match client {
        Some((c,)) => (
            Some(PemPath::new("cert", &c.client_cert)),
            Some(PemPath::new("key", &c.client_key)),
        ),
        None => (None, None),
    };
    let files = TlsFiles::load(Some(PemPath::new("ca", ca)), cert, key, ["cert", "key"]).unwrap();
    PoolConfig {
        size: 1,
        command_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        max_reply_bytes: 64 << 20,
        tls: Some(files.client_config(Verify::Full).unwrap()),
        ..PoolConfig::default()
    }
}

#[test]
fn should_move_large_values_and_deep_pipelines_over_tls() {
    let certs = TestCerts::generate();
    let redis = RedisServer::start_tls(&certs, "yes", Some(("app", REDIS_PW)));
    let cfg = tls_pool_config(&certs.ca, Some((&certs,)));
    let url = RedisUrl::parse(&format!(
        "rediss://app:{REDIS_PW}@localhost:{}/3",
        redis.port
    ))
    .unwrap();
    run_on_executor(move || async move {
        let conn = Connection::connect(&url, &cfg).await.expect("connect");
        // 5 MB out and back: many TLS records, past rustls' 64 KiB buffer limit both ways.
        let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        conn.cmd(&[b"SET", b"big", &big]).await.expect("SET");
        match conn.cmd(&[b"GET", b"big"]).await.expect("GET") {
            analytics_demo::resp::Reply::Bulk(b) => assert!(b[..] == big[..]),
            other => panic!("{other:?}"),
        }
        // 20 000 commands in one write.
        let keys: Vec<Vec<u8>> = (0..20_000).map(|i| format!("k{i}").into_bytes()).collect();
        let cmds: Vec<[&[u8]; 2]> = keys.iter().map(|k| [&b"INCR"[..], &k[..]]).collect();
        let refs: Vec<&[&[u8]]> = cmds.iter().map(|c| &c[..]).collect();
        let replies = conn.pipeline(&refs).await;
        assert!(
            replies.iter().all(|r| r.is_ok()),
            "a pipelined command failed"
        );
        assert_eq!(replies.len(), 20_000);
    });
    assert_eq!(redis.cli(&["-n", "3", "DBSIZE"]), "20001");
}

/// A TLS server of our own (rustls) that records the SNI of each handshake and answers every
/// RESP command with +PONG.
fn sni_server(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (u16, Arc<Mutex<Vec<Option<String>>>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let config = config.clone();
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut buf = [0u8; 4096];
                let mut recorded = false;
                loop {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            if !recorded {
                                let sni = tls.conn.server_name().map(str::to_string);
                                seen.lock().unwrap().push(sni);
                                recorded = true;
                            }
                            if tls.write_all(b"+PONG\r\n").is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (port, seen)
}

#[test]
fn should_send_sni_for_names_and_check_names_and_ips() {
    let certs = TestCerts::generate();
    let (port, seen) = sni_server(&certs.server_cert, &certs.server_key);
    let (dns_only_port, _) = sni_server(&certs.dns_only_cert, &certs.dns_only_key);
    let cfg = tls_pool_config(&certs.ca, None);
    run_on_executor(move || async move {
        for host in ["localhost", "127.0.0.1"] {
            let url = RedisUrl::parse(&format!("rediss://{host}:{port}")).unwrap();
            let conn = Connection::connect(&url, &cfg).await.expect(host);
            assert!(conn.cmd(&[b"PING"]).await.is_ok());
        }
        // A certificate for DNS:localhost only does not cover the IP.
        let url = RedisUrl::parse(&format!("rediss://127.0.0.1:{dns_only_port}")).unwrap();
        let e = Connection::connect(&url, &cfg)
            .await
            .err()
            .expect("must fail");
        assert_eq!(e.kind(), "connect");
        let msg = e.to_string();
        assert!(msg.contains("does not match the host"), "{msg}");
        let url = RedisUrl::parse(&format!("rediss://localhost:{dns_only_port}")).unwrap();
        assert!(Connection::connect(&url, &cfg).await.is_ok());
    });
    let seen = seen.lock().unwrap().clone();
    // SNI carries a DNS name, never an IP (RFC 6066).
    assert_eq!(
        seen,
        [Some("localhost".to_string()), None],
        "SNI seen per connection"
    );
}

#[test]
fn should_switch_a_running_app_to_rediss_and_bench_over_tls() {
    const TOKEN: &str = "tls-switch-token";
    let certs = TestCerts::generate();
    let plain = RedisServer::start();
    let secure = RedisServer::start_tls(&certs, "optional", Some(("app", REDIS_PW)));
    let pg = PgServer::start();
    // No trailing newline this time.
    let pw = write_file(certs.dir(), "redis.pw", REDIS_PW);
    let ca = certs.ca.to_str().unwrap();
    let a = args(&plain.url(), &pg.url(), "100", "100");
    // The app's CA file applies to whatever target it is switched to.
    let env = [("REDIS_CA_FILE", ca), ("ADMIN_TOKEN", TOKEN)];
    let mut app = App::spawn_healthy(&refs(&a), &env, HEALTHY);
    let acked = |app: &App| metric(app, "analytics_events_total", &[("outcome", "acked")]);
    assert!(wait_until(Duration::from_secs(30), || acked(&app) > 20.0));
    let to = format!("rediss://app@localhost:{}", secure.port);
    let admin = format!("http://{}", app.http);
    let out = run_binary(
        &[
            "switch",
            "--to",
            &to,
            "--to-password-file",
            pw.to_str().unwrap(),
            "--admin-url",
            &admin,
        ],
        &[("ADMIN_TOKEN", TOKEN)],
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("rediss://app:***@localhost"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(REDIS_PW) && !out.stderr.contains(REDIS_PW));
    // Events now land in the TLS Redis, and keep being acknowledged.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let (status, health) = app.get("/health");
            status == 200
                && health.contains("rediss://app:***@localhost")
                && secure.cli(&["DBSIZE"]).parse::<u64>().unwrap_or(0) > 0
        }),
        "the switch to rediss:// did not take: {:?}\n{}",
        app.get("/health"),
        app.log()
    );
    let before = acked(&app);
    assert!(
        wait_until(Duration::from_secs(20), || acked(&app) > before + 100.0),
        "no acked events after the switch:\n{}",
        app.log()
    );
    assert_eq!(app.terminate().code(), Some(0), "{}", app.log());
    assert!(!app.log().contains(REDIS_PW));

    // bench-redis over TLS: the same CA, a client certificate and the password file.
    let bench_env = [
        ("REDIS_CA_FILE", ca),
        ("REDIS_CLIENT_CERT", certs.client_cert.to_str().unwrap()),
        ("REDIS_CLIENT_KEY", certs.client_key.to_str().unwrap()),
        ("REDIS_PASSWORD_FILE", pw.to_str().unwrap()),
    ];
    let out = run_binary(
        &[
            "bench-redis",
            "--redis-url",
            &to,
            "--duration",
            "2",
            "--rate",
            "2000",
            "--connections",
            "4",
            "--shards",
            "1",
            "--no-pin",
            "--json",
        ],
        &bench_env,
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    eprintln!("bench-redis over TLS: {v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["ops"].as_u64().unwrap() >= 3000, "{v}");
}

#[test]
fn should_refuse_bad_tls_files_at_startup_before_connecting() {
    let certs = TestCerts::generate();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    // Ports nothing listens on: the run must stop at the configuration.
    let base = [
        "--redis-url",
        "rediss://127.0.0.1:1",
        "--database-url",
        "postgres://postgres@127.0.0.1:1/analytics",
        "--bind-address",
        "127.0.0.1:0",
        "--duration",
        "1",
    ];
    let cases: Vec<(Vec<(&str, String)>, String)> = vec![
        (
            vec![
                ("REDIS_CLIENT_CERT", s(&certs.client_cert)),
                ("REDIS_CLIENT_KEY", s(&certs.server_key)),
            ],
            "do not go together".to_string(),
        ),
        (
            vec![("REDIS_CA_FILE", s(&certs.server_key))],
            format!(
                "--redis-ca-file (REDIS_CA_FILE): '{}' holds no certificate",
                s(&certs.server_key)
            ),
        ),
        (
            vec![
                ("REDIS_CLIENT_CERT", s(&certs.client_cert)),
                ("REDIS_CLIENT_KEY", s(&certs.client_cert)),
            ],
            "--redis-client-key (REDIS_CLIENT_KEY)".to_string(),
        ),
        (
            vec![("DATABASE_CA_FILE", "/nonexistent/ca.pem".to_string())],
            "--database-ca-file (DATABASE_CA_FILE): cannot read '/nonexistent/ca.pem'".to_string(),
        ),
    ];
    for (env, want) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = run_binary(&base, &env, Duration::from_secs(30));
        assert_eq!(out.code(), Some(2), "{env:?}: {}", out.stderr);
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with("error: ") && l.contains(&want)),
            "{env:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("connect"), "{env:?}: {}", out.stderr);
    }
}
