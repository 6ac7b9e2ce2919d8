//! Tests of the integration-test harness itself (tests/common): throwaway Redis and PostgreSQL
//! servers, ports, and the minimal HTTP client.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{free_port, http_get, http_request, PgServer, RedisServer};

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ports.len(),
        "free_port handed out a port twice"
    );
    let listener = TcpListener::bind(("127.0.0.1", ports[0])).expect("bind a free port");
    drop(listener);
}

#[test]
fn free_ports_are_reserved_against_other_processes() {
    use std::os::fd::AsRawFd;
    let port = free_port();
    // Another open file description of the same lock file stands for another process: flock
    // locks belong to open file descriptions, so this one must be refused while ours is held.
    let path = std::env::temp_dir()
        .join("analytics-demo-test-ports")
        .join(port.to_string());
    let other = std::fs::File::open(&path).expect("the port's lock file exists");
    // SAFETY: flock on a descriptor this test owns.
    let rc = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(
        rc, -1,
        "port {port}'s lock was free to take by another holder"
    );
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert_eq!(errno, Some(libc::EWOULDBLOCK));
}

#[test]
fn redis_set_get_restart() {
    let mut redis = RedisServer::start();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port));
    assert_eq!(redis.cli(&["ping"]), "PONG");
    assert_eq!(redis.cli(&["set", "k", "v1"]), "OK");
    assert_eq!(redis.cli(&["get", "k"]), "v1");
    assert_eq!(redis.cli(&["config", "get", "save"]), "save");
    assert_eq!(
        redis.cli(&["config", "get", "appendonly"]),
        "appendonly\nno"
    );

    let port = redis.port;
    redis.restart();
    assert_eq!(redis.port, port, "restart keeps the port");
    assert_eq!(redis.cli(&["ping"]), "PONG");
    assert_eq!(
        redis.cli(&["get", "k"]),
        "",
        "no persistence: data is gone after restart"
    );
    assert_eq!(redis.cli(&["incr", "n"]), "1");

    redis.stop();
    assert_eq!(redis.cli(&["ping"]), "", "stopped server does not answer");
    redis.restart();
    assert_eq!(redis.cli(&["ping"]), "PONG");
}

#[test]
fn redis_with_password() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]);
    assert_eq!(
        redis.url(),
        format!("redis://:s3cret@127.0.0.1:{}", redis.port)
    );
    assert_eq!(redis.cli(&["set", "a", "1"]), "OK");
    assert_eq!(redis.cli(&["get", "a"]), "1");
}

#[test]
fn redis_pause_resume() {
    let redis = RedisServer::start();
    redis.pause();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    stream.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 16];
    assert!(
        stream.read(&mut buf).is_err(),
        "a paused server must not answer"
    );
    redis.resume();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = stream.read(&mut buf).expect("answer after resume");
    assert_eq!(&buf[..n], b"+PONG\r\n");
}

#[test]
fn several_redis_in_parallel() {
    let servers: Vec<RedisServer> = (0..4).map(|_| RedisServer::start()).collect();
    for (i, s) in servers.iter().enumerate() {
        assert_eq!(s.cli(&["set", "who", &i.to_string()]), "OK");
    }
    for (i, s) in servers.iter().enumerate() {
        assert_eq!(s.cli(&["get", "who"]), i.to_string());
    }
}

#[test]
fn postgres_query_restart() {
    let mut pg = PgServer::start();
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{}/analytics", pg.port)
    );
    assert_eq!(pg.psql("select 1"), "1");
    assert_eq!(pg.psql("select current_database()"), "analytics");
    pg.psql("create table t (id int primary key, v text)");
    pg.psql("insert into t values (1, 'a'), (2, 'b')");
    assert_eq!(
        pg.psql("select string_agg(v, ',' order by id) from t"),
        "a,b"
    );
    assert!(pg.try_psql("select * from missing_table").is_err());

    let port = pg.port;
    pg.restart();
    assert_eq!(pg.port, port, "restart keeps the port");
    assert_eq!(pg.psql("select 1"), "1");
    assert_eq!(
        pg.psql("select count(*) from t"),
        "2",
        "committed data survives restart"
    );

    pg.stop();
    assert!(
        pg.try_psql("select 1").is_err(),
        "stopped server does not answer"
    );
    pg.restart();
    assert_eq!(pg.psql("select count(*) from t"), "2");
}

#[test]
fn postgres_servers_are_independent() {
    let a = PgServer::start();
    let b = PgServer::start();
    assert_ne!(a.port, b.port);
    a.psql("create table only_in_a (x int)");
    assert!(b.try_psql("select * from only_in_a").is_err());
}

/// A one-shot HTTP server on a free port answering every connection with RESPONSE.
fn fake_http(response: &'static [u8]) -> std::net::SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(response);
        }
    });
    addr
}

#[test]
fn http_client_content_length_chunked_and_close() {
    let addr = fake_http(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(http_get(addr, "/health"), (200, "hello".to_string()));

    let addr = fake_http(
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
    );
    assert_eq!(http_get(addr, "/health"), (503, "{\"a\":1}".to_string()));

    let addr = fake_http(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close");
    let (status, body) = http_request(
        addr,
        "POST",
        "/admin/x",
        &[("Authorization", "Bearer t")],
        "{}",
    );
    assert_eq!((status, body.as_str()), (200, "until close"));
}

#[test]
fn http_client_reports_no_server_as_status_0() {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let start = Instant::now();
    let (status, err) = http_get(addr, "/health");
    assert_eq!(status, 0);
    assert!(err.contains("connect"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn spawned_apps_inherit_none_of_the_programs_variables() {
    let cmd = common::app_command();
    let removed: Vec<String> = cmd
        .get_envs()
        .filter(|(_, value)| value.is_none())
        .map(|(key, _)| key.to_string_lossy().into_owned())
        .collect();
    // NO_PIN, the bench and verify variables and RUST_LOG leaked through a hand-kept list once.
    let named = [
        "NO_PIN",
        "ADMIN_ALLOW_UNAUTHENTICATED_LOOPBACK",
        "BENCH_RATE",
        "RUST_LOG",
    ];
    for var in analytics_demo::config::ENV_VARS.iter().chain(&named) {
        assert!(
            removed.iter().any(|r| r == var),
            "{var} is passed on to spawned apps"
        );
    }
}
