//! Fake-server tests: protocol edge cases a real redis-server will not produce on demand.
//! The server is std networking on `127.0.0.1:0` in plain threads; the client runs on a
//! glommio executor.

use crate::resp::{Connection, Pool, PoolConfig, Protocol, RedisUrl, Reply};
use crate::test_util::run;
use redis_protocol::resp2::decode::decode;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the fake server does with command `cmd` on connection `conn`: write a reply, or
/// return false to stall (keep the socket open, answer nothing more).
type Handler = fn(conn: usize, cmd: usize, out: &mut TcpStream) -> bool;

fn fake_server(handler: Handler) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let conn = conns.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                s.set_nodelay(true).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut cmd = 0;
                loop {
                    while let Ok(Some((_, n))) = decode(&buf) {
                        buf.drain(..n);
                        if !handler(conn, cmd, &mut s) {
                            std::thread::sleep(Duration::from_secs(30));
                            return;
                        }
                        cmd += 1;
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    port
}

fn cfg() -> PoolConfig {
    PoolConfig {
        size: 1,
        command_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(500),
        max_reply_bytes: 1 << 20,
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        // These fake servers speak RESP2 and answer whatever comes first: no HELLO.
        protocol: Protocol::Resp2,
        ..PoolConfig::default()
    }
}

fn cfg_with(protocol: Protocol) -> PoolConfig {
    PoolConfig { protocol, ..cfg() }
}

fn url(port: u16) -> RedisUrl {
    RedisUrl::parse(&format!("redis://127.0.0.1:{port}")).unwrap()
}

/// Retries PING until it succeeds or `within` passes.
async fn recovers(pool: &Pool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if pool.cmd(&[b"PING"]).await.is_ok() {
            return true;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[test]
fn should_drop_connection_on_malformed_reply_and_recover() {
    let port = fake_server(|conn, _, s| {
        let reply: &[u8] = if conn == 0 {
            b"!garbage\r\n"
        } else {
            b"+PONG\r\n"
        };
        s.write_all(reply).is_ok()
    });
    run(move || async move {
        let pool = Pool::new(url(port), cfg());
        assert!(pool.wait_connected(Duration::from_secs(2)).await);
        let e = pool.cmd(&[b"PING"]).await.unwrap_err();
        assert_eq!(e.kind(), "protocol");
        assert!(e.outcome_unknown());
        assert!(recovers(&pool, Duration::from_secs(2)).await);
        assert_eq!(
            pool.cmd(&[b"PING"]).await.unwrap(),
            Reply::Simple("PONG".into())
        );
        pool.close().await;
    });
}

#[test]
fn should_time_out_on_stalled_server_then_recover() {
    let port = fake_server(|conn, _, s| conn > 0 && s.write_all(b"+PONG\r\n").is_ok());
    run(move || async move {
        let pool = Pool::new(url(port), cfg());
        assert!(pool.wait_connected(Duration::from_secs(2)).await);
        let started = Instant::now();
        let e = pool.cmd(&[b"PING"]).await.unwrap_err();
        assert_eq!(e.kind(), "timeout");
        assert!(e.outcome_unknown());
        assert!(started.elapsed() < Duration::from_millis(600));
        // The stalled connection is dropped after ~2x the timeout and replaced.
        assert!(recovers(&pool, Duration::from_secs(3)).await);
        pool.close().await;
    });
}

/// An idle connection's timeout sweeper waits with no timer; the next command must wake it,
/// or a command sent after a quiet spell to a stalled server would wait for ever.
#[test]
fn should_time_out_a_command_sent_after_a_quiet_spell() {
    let port =
        fake_server(|conn, cmd, s| (conn > 0 || cmd == 0) && s.write_all(b"+PONG\r\n").is_ok());
    run(move || async move {
        let pool = Pool::new(url(port), cfg());
        assert!(pool.wait_connected(Duration::from_secs(2)).await);
        assert!(pool.cmd(&[b"PING"]).await.is_ok());
        // Past the answered command's deadline: the sweeper has woken for it and found nothing.
        glommio::timer::sleep(Duration::from_millis(700)).await;
        let outcome = crate::rt::time::timeout(Duration::from_secs(10), pool.cmd(&[b"PING"])).await;
        let e = outcome
            .expect("a command to a stalled server never timed out")
            .unwrap_err();
        assert_eq!(e.kind(), "timeout");
        assert!(recovers(&pool, Duration::from_secs(3)).await);
        pool.close().await;
    });
}

#[test]
fn should_fail_huge_declared_bulk_as_reply_too_large() {
    let port = fake_server(|conn, _, s| {
        let reply: &[u8] = if conn == 0 {
            b"$99999999999\r\n"
        } else {
            b":7\r\n"
        };
        s.write_all(reply).is_ok()
    });
    run(move || async move {
        let pool = Pool::new(url(port), cfg());
        assert!(pool.wait_connected(Duration::from_secs(2)).await);
        let e = pool.cmd(&[b"GET", b"k"]).await.unwrap_err();
        assert_eq!(e.kind(), "reply_too_large");
        assert!(e.outcome_unknown());
        assert!(recovers(&pool, Duration::from_secs(2)).await);
        pool.close().await;
    });
}

#[test]
fn should_match_replies_delivered_one_byte_at_a_time() {
    let port = fake_server(|_, cmd, s| {
        let reply = format!("*2\r\n:{cmd}\r\n$3\r\nv{:02}\r\n", cmd % 100);
        for b in reply.as_bytes() {
            if s.write_all(&[*b]).is_err() {
                return false;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        true
    });
    run(move || async move {
        let mut c = cfg();
        c.command_timeout = Duration::from_secs(5);
        let pool = Pool::new(url(port), c);
        assert!(pool.wait_connected(Duration::from_secs(2)).await);
        let cmds: Vec<&[&[u8]]> = vec![&[b"GET", b"a"]; 5];
        let replies = pool.pipeline(&cmds).await;
        for (i, r) in replies.into_iter().enumerate() {
            let expected = Reply::Array(vec![
                Reply::Int(i as i64),
                Reply::Bulk(format!("v{i:02}").into()),
            ]);
            assert_eq!(r.unwrap(), expected);
        }
        pool.close().await;
    });
}

#[test]
fn should_answer_a_pipeline_around_an_empty_command() {
    // An empty command is refused on its own (Redis would not answer `*0`); the commands
    // around it are sent and get their own replies, in order.
    let port = fake_server(|_, cmd, s| s.write_all(format!(":{cmd}\r\n").as_bytes()).is_ok());
    run(move || async move {
        let pool = Pool::new(url(port), cfg());
        assert!(pool.wait_connected(Duration::from_secs(2)).await);
        let cmds: Vec<&[&[u8]]> = vec![&[b"INCR", b"a"], &[], &[b"INCR", b"b"]];
        let replies = pool.pipeline(&cmds).await;
        assert_eq!(replies.len(), 3);
        let first = replies[0].as_ref().unwrap().as_int().unwrap();
        assert_eq!(replies[1].as_ref().unwrap_err().kind(), "protocol");
        assert!(!replies[1].as_ref().unwrap_err().outcome_unknown());
        assert_eq!(replies[2].as_ref().unwrap().as_int(), Some(first + 1));
        assert!(pool.pipeline(&[]).await.is_empty());
        pool.close().await;
    });
}

#[test]
fn should_fail_fast_when_nothing_is_up() {
    // A port with nothing listening: connect fails, commands are never sent.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    run(move || async move {
        let pool = Pool::new(url(port), cfg());
        assert!(!pool.wait_connected(Duration::from_millis(100)).await);
        let e = pool.cmd(&[b"PING"]).await.unwrap_err();
        assert_eq!(e.kind(), "not_connected");
        assert!(!e.outcome_unknown());
        pool.close().await;
    });
}

#[test]
fn should_time_out_a_tls_handshake_with_a_plain_server() {
    // The fake server never answers the ClientHello (it is not RESP): the handshake must give
    // up within the connect timeout, as a connect error.
    let port = fake_server(|_, _, s| s.write_all(b"+PONG\r\n").is_ok());
    run(move || async move {
        let tls = RedisUrl::parse(&format!("rediss://127.0.0.1:{port}")).unwrap();
        let started = Instant::now();
        let e = crate::resp::Connection::connect(&tls, &cfg())
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), "connect");
        assert!(
            e.to_string()
                .contains("TLS handshake with rediss://127.0.0.1"),
            "{e}"
        );
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
    });
}

/// A server without HELLO (Redis < 6): `auto` falls back to RESP2 (and AUTH), `3` refuses
/// to connect with a message that says why, `2` never asks.
#[test]
fn should_fall_back_to_resp2_when_hello_is_refused() {
    // Every connection: the first command is refused like Redis 5 refuses HELLO; the rest
    // get +OK (AUTH) or +PONG.
    let port = fake_server(|_, cmd, s| {
        let reply: &[u8] = match cmd {
            0 => b"-ERR unknown command `HELLO`, with args beginning with: `3`, \r\n",
            _ => b"+PONG\r\n",
        };
        s.write_all(reply).is_ok()
    });
    run(move || async move {
        let c = Connection::connect(&url(port), &cfg_with(Protocol::Auto))
            .await
            .unwrap();
        assert_eq!(c.protocol(), 2);
        assert_eq!(
            c.cmd(&[b"PING"]).await.unwrap(),
            Reply::Simple("PONG".into())
        );
        // With a password: HELLO 3 AUTH is refused, then a plain AUTH (answered +PONG here).
        let with_pw = RedisUrl::parse(&format!("redis://:pw@127.0.0.1:{port}")).unwrap();
        let c = Connection::connect(&with_pw, &cfg_with(Protocol::Auto))
            .await
            .unwrap();
        assert_eq!(c.protocol(), 2);
        assert_eq!(
            c.cmd(&[b"PING"]).await.unwrap(),
            Reply::Simple("PONG".into())
        );

        let e = Connection::connect(&url(port), &cfg_with(Protocol::Resp3))
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), "connect");
        let msg = e.to_string();
        assert!(
            msg.contains("does not support RESP3") && msg.contains("unknown command `HELLO`"),
            "{msg}"
        );
        assert!(msg.contains("--redis-protocol"), "{msg}");
        // A pool that insists on RESP3 never connects to it.
        let pool = Pool::new(url(port), cfg_with(Protocol::Resp3));
        assert!(!pool.wait_connected(Duration::from_millis(300)).await);
        assert_eq!(
            pool.cmd(&[b"PING"]).await.unwrap_err().kind(),
            "not_connected"
        );
        pool.close().await;
    });
}

/// HELLO 3 accepted: the connection speaks RESP3; push frames between replies are counted
/// and never taken for the reply of a pending command.
#[test]
fn should_speak_resp3_and_skip_push_frames() {
    let port = fake_server(|_, cmd, s| {
        let reply: &[u8] = match cmd {
            0 => b"%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n",
            // Pushes before and inside a burst of replies.
            1 => b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n:1\r\n",
            2 => b"_\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n",
            _ => b"=8\r\ntxt:info\r\n",
        };
        s.write_all(reply).is_ok()
    });
    run(move || async move {
        let c = Connection::connect(&url(port), &cfg_with(Protocol::Resp3))
            .await
            .unwrap();
        assert_eq!(c.protocol(), 3);
        let r = c
            .pipeline(&[&[b"INCR", b"n"], &[b"GET", b"missing"], &[b"INFO"]])
            .await;
        assert_eq!(r[0], Ok(Reply::Int(1)));
        assert_eq!(r[1], Ok(Reply::Nil));
        assert_eq!(r[2], Ok(Reply::Bulk("info".into())));
        assert!(!c.is_closed());
    });
}

/// Wrong credentials in HELLO 3 AUTH are an auth error: no fallback to RESP2.
#[test]
fn should_not_fall_back_when_hello_refuses_the_password() {
    let port = fake_server(|_, cmd, s| {
        let reply: &[u8] = match cmd {
            0 => b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
            _ => b"+OK\r\n",
        };
        s.write_all(reply).is_ok()
    });
    run(move || async move {
        let u = RedisUrl::parse(&format!("redis://:nope@127.0.0.1:{port}")).unwrap();
        for p in [Protocol::Auto, Protocol::Resp3] {
            let e = Connection::connect(&u, &cfg_with(p)).await.err().unwrap();
            assert_eq!(e.kind(), "auth", "{p:?}: {e}");
            assert!(!e.to_string().contains("nope"), "{e}");
        }
    });
}
