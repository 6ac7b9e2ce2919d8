//! The timeout plumbing against a server that accepts connections and never answers: what a
//! frozen PostgreSQL looks like from the client (the kernel completes the TCP handshake, the
//! process says nothing). A std listener that never accepts plays it.

use std::cell::Cell;
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::shared_channel;
use glommio::Placement;

use crate::rt::executor::SHARD_PREEMPT;

use super::writer::{self, Backlog, EventRow, WriterConfig, WriterStatus};
use super::{connect, set_keepalive, within, DbError, PgConfig};
use crate::test_util::run;

/// A listener that never accepts: connections complete (kernel backlog), nothing answers.
fn silent_server() -> (TcpListener, PgConfig) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("postgres://postgres:s3cret@127.0.0.1:{port}/analytics?sslmode=disable");
    let cfg = PgConfig::parse(&url, "DATABASE_URL", None, None).unwrap();
    (listener, cfg)
}

#[test]
fn should_time_out_an_operation_that_never_answers() {
    run(|| async {
        let started = Instant::now();
        let r: Result<(), DbError> = within(
            Duration::from_millis(50),
            std::future::pending::<Result<(), DbError>>(),
        )
        .await;
        assert_eq!(r, Err(DbError::Timeout(Duration::from_millis(50))));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(r.unwrap_err().kind(), "timeout");
    });
}

#[test]
fn should_pass_results_and_errors_through_within_the_bound() {
    run(|| async {
        let ok = within(Duration::from_secs(5), async { Ok::<_, DbError>(7) }).await;
        assert_eq!(ok, Ok(7));
        let failed = within(Duration::from_secs(5), async {
            Err::<(), _>(DbError::Failed("ERROR: boom (XX000)".into()))
        })
        .await;
        assert_eq!(failed.unwrap_err().kind(), "error");
    });
}

#[test]
fn should_give_up_connecting_to_a_server_that_never_answers() {
    let (_listener, cfg) = silent_server();
    run(move || async move {
        let started = Instant::now();
        let limit = Duration::from_millis(300);
        let r = connect(&cfg, limit, Some(limit)).await;
        let took = started.elapsed();
        let e = r.err().expect("connected to a server that never answers");
        assert_eq!(e, DbError::Timeout(limit));
        assert!(took >= limit, "gave up early: {took:?}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        // The message names neither the password nor the URL.
        assert!(!e.to_string().contains("s3cret"), "{e}");
    });
}

#[test]
fn should_set_tcp_keepalive_on_postgres_sockets() {
    use std::os::unix::io::AsRawFd;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let s = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let get = |level: libc::c_int, name: libc::c_int| {
        let mut v: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on an open socket into a live c_int with its size.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                level,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
        v
    };
    assert_eq!(get(libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
    set_keepalive(s.as_raw_fd()).unwrap();
    assert_eq!(get(libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
    assert_eq!(get(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 15);
    assert_eq!(get(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 5);
    assert_eq!(get(libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
}

fn row(seq: i64) -> EventRow {
    EventRow {
        event_id: seq,
        ts_micros: 0,
        bucket: 2026112517,
        org: 1,
        user: 1,
        ty: 0,
        outcome: 0,
    }
}

/// The writer against a server that never answers, with 3 rows pending and a stop after
/// `stop_after`: how long after the stop it ended, and its status and backlog.
fn writer_stopped_while_frozen(
    stop_after: Duration,
    grace: Duration,
    db_timeout: Duration,
) -> (Duration, WriterStatus, Arc<Backlog>) {
    let (_listener, pg) = silent_server();
    let backlog = Arc::new(Backlog::default());
    let out = Arc::new(std::sync::Mutex::new(None));
    let (b, o) = (backlog.clone(), out.clone());
    let (tx, rx) = shared_channel::new_bounded(4);
    // The shard's side on its own executor, as in the app.
    let shard =
        crate::rt::executor::spawn("shard", Placement::Unbound, SHARD_PREEMPT, || async move {
            let tx = tx.connect().await;
            let _ = tx.send(vec![row(1), row(2), row(3)]).await;
        })
        .unwrap();
    run(move || async move {
        b.pending.store(3, Ordering::Relaxed);
        let stopped_at: Rc<Cell<Option<Instant>>> = Rc::default();
        let status: Rc<std::cell::RefCell<WriterStatus>> = Rc::default();
        let cfg = WriterConfig {
            pg,
            run_id: 1,
            batch_size: 3,
            retention_hours: 24,
            db_timeout,
            shutdown_grace: grace,
        };
        let task = glommio::spawn_local(writer::run(
            cfg,
            vec![rx],
            vec![b.clone()],
            stopped_at.clone(),
            status.clone(),
        ));
        glommio::timer::sleep(stop_after).await;
        let stop = Instant::now();
        stopped_at.set(Some(stop));
        task.await;
        *o.lock().unwrap() = Some((stop.elapsed(), status.borrow().clone()));
    });
    shard.join().unwrap();
    let (took, status) = out.lock().unwrap().take().unwrap();
    (took, status, backlog)
}

#[test]
fn should_end_the_grace_counted_from_the_stop_even_mid_attempt() {
    // The attempt under way at the stop may last 60 s (DB_TIMEOUT_MS); the grace ends it.
    let grace = Duration::from_millis(700);
    let (took, status, backlog) =
        writer_stopped_while_frozen(Duration::from_millis(300), grace, Duration::from_secs(60));
    assert!(took >= grace, "gave up before the grace ended: {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "ended {took:?} after the stop"
    );
    assert_eq!(status.rows_dropped, 3, "{status:?}");
    assert_eq!(status.rows_written, 0, "{status:?}");
    assert_eq!(backlog.dropped.load(Ordering::Relaxed), 3);
    assert_eq!(backlog.pending(), 0);
    assert!(status.errors >= 1, "{status:?}");
    let last = status.last_error.unwrap_or_default();
    assert!(last.contains("no answer"), "{last}");
    assert!(!last.contains("s3cret"), "{last}");
}

#[test]
fn should_retry_a_timed_out_batch_until_the_stop() {
    // 200 ms per attempt: several attempts time out (each on a new connection) before the
    // stop, and the run still ends with the grace.
    let grace = Duration::from_millis(300);
    let (took, status, _) = writer_stopped_while_frozen(
        Duration::from_millis(1500),
        grace,
        Duration::from_millis(200),
    );
    assert!(status.errors >= 3, "{status:?}");
    assert!(took >= grace && took < Duration::from_secs(10), "{took:?}");
    assert_eq!(status.rows_dropped, 3, "{status:?}");
}

#[test]
fn should_fail_reads_fast_with_one_reconnect_at_a_time_while_postgres_is_silent() {
    let (listener, cfg) = silent_server();
    run(move || async move {
        let reader =
            super::reader::Reader::new(cfg, Duration::from_secs(3), Duration::from_secs(1), 0);
        for i in 0..50 {
            let started = Instant::now();
            let r = reader.dashboard(1, 0).await;
            assert_eq!(r, Err(DbError::NotConnected), "read {i}");
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "read {i} waited {:?}",
                started.elapsed()
            );
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        // Half a second of reads started one reconnect, still waiting for its answer.
        listener.set_nonblocking(true).unwrap();
        let attempts = std::iter::from_fn(|| listener.accept().ok()).count();
        assert_eq!(attempts, 1, "reconnect attempts piled up");
    });
}
