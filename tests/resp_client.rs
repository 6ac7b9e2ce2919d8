//! The Redis client against a real `redis-server`, spawned per test on a free port.

use analytics_demo::resp::{Connection, Pool, PoolConfig, Protocol, RedisUrl, Reply};
use glommio::{LocalExecutorBuilder, Placement};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A redis-server on `port` in a temp dir, killed on drop.
struct RedisServer {
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    fn start(extra: &[&str]) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = RedisServer {
            port,
            args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        s.restart();
        s
    }

    /// (Re)starts on the same port and waits until it answers.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server in PATH");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let mut b = [0u8; 64];
                // Any reply (PONG or NOAUTH) means it is serving.
                if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok() && s.read(&mut b).unwrap_or(0) > 0 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> RedisUrl {
        self.url_with("")
    }

    fn url_with(&self, auth_and_db: &str) -> RedisUrl {
        let (auth, db) = auth_and_db.split_once('|').unwrap_or((auth_and_db, ""));
        RedisUrl::parse(&format!("redis://{auth}127.0.0.1:{}{db}", self.port)).unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn cfg(size: usize) -> PoolConfig {
    PoolConfig {
        size,
        command_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        max_reply_bytes: 1 << 20,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(500),
        shard: 0,
        protocol: Protocol::Auto,
        tls: None,
        declare_run: None,
    }
}

fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

async fn get_int(c: &Connection, key: &[u8]) -> Option<i64> {
    match c.cmd(&[b"GET", key]).await.unwrap() {
        Reply::Bulk(b) => std::str::from_utf8(&b).ok()?.parse().ok(),
        _ => None,
    }
}

#[test]
fn should_count_exactly_with_concurrent_pipelines() {
    let server = RedisServer::start(&[]);
    let url = server.url();
    run(move || async move {
        let pool = Pool::new(url.clone(), cfg(4));
        assert!(pool.wait_connected(Duration::from_secs(2)).await);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let pool = pool.clone();
                glommio::spawn_local(async move {
                    let cmds: Vec<&[&[u8]]> = vec![&[b"INCR", b"counter"]; 10];
                    for _ in 0..50 {
                        for r in pool.pipeline(&cmds).await {
                            r.unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        assert_eq!(pool.inflight(), 0);
        let c = Connection::connect(&url, &cfg(1)).await.unwrap();
        assert_eq!(get_int(&c, b"counter").await, Some(10_000));
        pool.close().await;
    });
}

#[test]
fn should_auth_and_reject_wrong_password() {
    let server = RedisServer::start(&["--requirepass", "s3cret"]);
    let good = server.url_with(":s3cret@");
    let with_user = server.url_with("default:s3cret@|/2");
    let bad = server.url_with(":wrong@");
    let none = server.url();
    run(move || async move {
        let c = Connection::connect(&good, &cfg(1)).await.unwrap();
        assert_eq!(
            c.cmd(&[b"PING"]).await.unwrap(),
            Reply::Simple("PONG".into())
        );
        // AUTH user pass plus SELECT 2: the key lands in db 2 only.
        let c2 = Connection::connect(&with_user, &cfg(1)).await.unwrap();
        c2.cmd(&[b"SET", b"in2", b"1"]).await.unwrap();
        assert_eq!(c.cmd(&[b"EXISTS", b"in2"]).await.unwrap(), Reply::Int(0));
        let e = Connection::connect(&bad, &cfg(1)).await.err().unwrap();
        assert_eq!(e.kind(), "auth");
        assert!(!e.to_string().contains("wrong"), "{e}");
        let c3 = Connection::connect(&none, &cfg(1)).await.unwrap();
        assert_eq!(c3.cmd(&[b"GET", b"x"]).await.unwrap_err().kind(), "noauth");
        let pool = Pool::new(bad, cfg(1));
        assert!(!pool.wait_connected(Duration::from_millis(300)).await);
        pool.close().await;
    });
}

#[test]
fn should_recover_after_server_restart() {
    let mut server = RedisServer::start(&[]);
    let url = server.url();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let pool = Pool::new(url, cfg(2));
            assert!(pool.wait_connected(Duration::from_secs(2)).await);
            pool.cmd(&[b"SET", b"k", b"v"]).await.unwrap();
            kill_tx.send(()).unwrap();
            // Commands fail (never hang) while the server is down.
            let mut saw_failure = false;
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                match pool.cmd(&[b"INCR", b"n"]).await {
                    Ok(_) if saw_failure => break,
                    Ok(_) => {}
                    Err(e) => {
                        assert!(
                            ["not_connected", "closed", "io", "timeout"].contains(&e.kind()),
                            "{e}"
                        );
                        saw_failure = true;
                    }
                }
                if saw_failure {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            assert!(saw_failure);
            done_tx.send(()).unwrap();
            // Server restarted: the pool must be back within ~1-2 s.
            glommio::timer::sleep(Duration::from_millis(200)).await;
            let restarted = Instant::now();
            let mut ok = false;
            while restarted.elapsed() < Duration::from_secs(3) {
                if pool.cmd(&[b"PING"]).await.is_ok() {
                    ok = true;
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            assert!(ok, "pool did not recover");
            assert!(restarted.elapsed() < Duration::from_millis(2000));
            pool.close().await;
        })
        .unwrap();
    kill_rx.recv().unwrap();
    server.stop();
    done_rx.recv().unwrap();
    server.restart();
    handle.join().unwrap();
}

#[test]
fn should_move_new_commands_on_set_target() {
    let a = RedisServer::start(&[]);
    let b = RedisServer::start(&[]);
    let (ua, ub) = (a.url(), b.url());
    run(move || async move {
        let pool = Pool::new(ua.clone(), cfg(3));
        assert!(pool.wait_connected(Duration::from_secs(2)).await);
        pool.cmd(&[b"SET", b"before", b"1"]).await.unwrap();
        pool.set_target(analytics_demo::resp::Target::standalone(ub.clone()));
        assert_eq!(pool.target(), ub);
        // Make before break: commands keep succeeding (on A) while the slots move to B.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while pool.connected_to_target() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "slots did not move to B"
            );
            pool.cmd(&[b"INCR", b"during"]).await.unwrap();
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        for _ in 0..100 {
            pool.cmd(&[b"INCR", b"after"]).await.unwrap();
        }
        let ca = Connection::connect(&ua, &cfg(1)).await.unwrap();
        let cb = Connection::connect(&ub, &cfg(1)).await.unwrap();
        assert_eq!(get_int(&ca, b"before").await, Some(1));
        assert_eq!(get_int(&ca, b"after").await, None);
        assert_eq!(get_int(&cb, b"after").await, Some(100));
        pool.close().await;
    });
}

#[test]
fn should_map_error_replies_without_killing_the_connection() {
    let server = RedisServer::start(&[]);
    let url = server.url();
    run(move || async move {
        let c: Rc<Connection> = Connection::connect(&url, &cfg(1)).await.unwrap();
        c.cmd(&[b"SET", b"s", b"text"]).await.unwrap();
        let e = c.cmd(&[b"INCR", b"s"]).await.unwrap_err();
        assert_eq!(e.kind(), "err");
        assert!(e.is_server_reply() && !e.outcome_unknown());
        let e = c.cmd(&[b"LPUSH", b"s", b"x"]).await.unwrap_err();
        assert_eq!(e.kind(), "wrongtype");
        let e = c.cmd(&[b"NOSUCHCOMMAND"]).await.unwrap_err();
        assert_eq!(e.kind(), "err");
        // Pipelined: errors stay per command.
        let r = c
            .pipeline(&[&[b"INCR", b"s"], &[b"GET", b"s"], &[b"INCR", b"n"]])
            .await;
        assert_eq!(r[0].as_ref().unwrap_err().kind(), "err");
        assert_eq!(r[1].as_ref().unwrap().as_bytes(), Some(&b"text"[..]));
        assert_eq!(r[2].as_ref().unwrap().as_int(), Some(1));
        assert!(!c.is_closed());
        assert_eq!(
            c.cmd(&[b"PING"]).await.unwrap(),
            Reply::Simple("PONG".into())
        );
    });
}

fn cfg_with(protocol: Protocol) -> PoolConfig {
    PoolConfig { protocol, ..cfg(1) }
}

/// `CLIENT INFO` of the connection: the server's view of it (a verbatim string in RESP3,
/// a bulk string in RESP2: the same `Reply::Bulk` either way).
async fn client_info(c: &Connection) -> String {
    match c.cmd(&[b"CLIENT", b"INFO"]).await.unwrap() {
        Reply::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("CLIENT INFO answered {other:?}"),
    }
}

#[test]
fn should_negotiate_resp3_with_redis_7_and_fall_back_to_2_on_request() {
    let server = RedisServer::start(&["--requirepass", "s3cret"]);
    let plain = RedisServer::start(&[]);
    let (with_pw, with_user_db) = (
        server.url_with(":s3cret@"),
        server.url_with("default:s3cret@|/3"),
    );
    let no_pw = plain.url();
    run(move || async move {
        for (url, protocol, want) in [
            (&no_pw, Protocol::Auto, 3),
            (&no_pw, Protocol::Resp3, 3),
            (&no_pw, Protocol::Resp2, 2),
            (&with_pw, Protocol::Auto, 3),
            (&with_pw, Protocol::Resp2, 2),
            (&with_user_db, Protocol::Auto, 3),
        ] {
            let c = Connection::connect(url, &cfg_with(protocol)).await.unwrap();
            assert_eq!(c.protocol(), want, "{protocol:?} {url}");
            let info = client_info(&c).await;
            assert!(
                info.contains(&format!("resp={want}")),
                "{protocol:?}: {info}"
            );
            if url.db == 3 {
                assert!(info.contains("db=3"), "HELLO 3 AUTH then SELECT 3: {info}");
            }
        }
    });
}

/// Every reply shape the app, verify and bench-redis look at is the same in RESP2 and RESP3.
#[test]
fn should_give_the_same_replies_in_resp2_and_resp3() {
    let server = RedisServer::start(&[]);
    let url = server.url();
    run(move || async move {
        let c2 = Connection::connect(&url, &cfg_with(Protocol::Resp2))
            .await
            .unwrap();
        let c3 = Connection::connect(&url, &cfg_with(Protocol::Resp3))
            .await
            .unwrap();
        assert_eq!((c2.protocol(), c3.protocol()), (2, 3));
        let setup: [&[&[u8]]; 5] = [
            &[b"SET", b"a:{1}:ev:click:1", b"7"],
            &[b"SET", b"a:{1}:c:dash", b"{\"x\":1}"],
            &[b"PFADD", b"a:{1}:uu:1", b"u1", b"u2"],
            &[b"HSET", b"h", b"f1", b"v1", b"f2", b"v2"],
            &[b"SADD", b"s", b"m1"],
        ];
        for cmd in setup {
            c2.cmd(cmd).await.unwrap();
        }
        let probes: [&[&[u8]]; 16] = [
            &[b"GET", b"a:{1}:c:dash"],
            &[b"GET", b"missing"],
            &[b"INCR", b"a:{1}:ev:click:1"],
            &[b"PFADD", b"a:{1}:uu:1", b"u1"],
            &[b"PFCOUNT", b"a:{1}:uu:1"],
            &[b"MGET", b"a:{1}:ev:click:1", b"missing", b"a:{1}:c:dash"],
            &[b"EXPIREAT", b"missing", b"4102444800"],
            &[b"SCAN", b"0", b"MATCH", b"a:{*}:ev:*", b"COUNT", b"1000"],
            &[b"PING"],
            &[b"EXISTS", b"h", b"s"],
            &[b"HGETALL", b"h"],
            &[b"SMEMBERS", b"s"],
            &[b"SISMEMBER", b"s", b"m1"],
            &[b"ZSCORE", b"missing", b"m"],
            &[b"TTL", b"a:{1}:c:dash"],
            &[b"OBJECT", b"ENCODING", b"a:{1}:ev:click:1"],
        ];
        for cmd in probes {
            let r2 = c2.cmd(cmd).await;
            let r3 = c3.cmd(cmd).await;
            // INCR moves the counter: compare the shape on a fresh read instead.
            if cmd[0] == b"INCR" {
                assert!(
                    matches!((&r2, &r3), (Ok(Reply::Int(a)), Ok(Reply::Int(b))) if b == &(a + 1))
                );
                continue;
            }
            assert_eq!(r2, r3, "{:?}", String::from_utf8_lossy(&cmd.concat()));
        }
        // INFO: a bulk (RESP2) and a verbatim string (RESP3) become the same Bulk text.
        for c in [&c2, &c3] {
            match c.cmd(&[b"INFO", b"server"]).await.unwrap() {
                Reply::Bulk(b) => {
                    let t = String::from_utf8_lossy(&b);
                    assert!(
                        t.starts_with("# Server") && t.contains("redis_version:"),
                        "{t}"
                    );
                }
                other => panic!("INFO answered {other:?}"),
            }
        }
        // Errors too.
        c2.cmd(&[b"SET", b"text", b"x"]).await.unwrap();
        for c in [&c2, &c3] {
            let e = c.cmd(&[b"INCR", b"text"]).await.unwrap_err();
            assert_eq!(e.kind(), "err");
        }
    });
}

/// A real RESP3 push (client-side caching invalidation) arrives between replies: it is not
/// taken as the reply of the next command.
#[test]
fn should_not_match_a_real_push_message_to_a_command() {
    let server = RedisServer::start(&[]);
    let url = server.url();
    run(move || async move {
        let a = Connection::connect(&url, &cfg_with(Protocol::Resp3))
            .await
            .unwrap();
        let b = Connection::connect(&url, &cfg_with(Protocol::Resp2))
            .await
            .unwrap();
        assert_eq!(
            a.cmd(&[b"CLIENT", b"TRACKING", b"ON"]).await.unwrap(),
            Reply::Simple("OK".into())
        );
        for round in 0..20 {
            let key = format!("tracked{round}");
            assert_eq!(a.cmd(&[b"GET", key.as_bytes()]).await.unwrap(), Reply::Nil);
            // Another client writes the key: Redis pushes an invalidation to `a`.
            b.cmd(&[b"SET", key.as_bytes(), b"v"]).await.unwrap();
            glommio::timer::sleep(Duration::from_millis(5)).await;
            let r = a
                .pipeline(&[&[b"PING"], &[b"GET", key.as_bytes()], &[b"ECHO", b"e"]])
                .await;
            assert_eq!(r[0], Ok(Reply::Simple("PONG".into())), "round {round}");
            assert_eq!(r[1], Ok(Reply::Bulk("v".into())), "round {round}");
            assert_eq!(r[2], Ok(Reply::Bulk("e".into())), "round {round}");
        }
        assert!(!a.is_closed());
    });
}
