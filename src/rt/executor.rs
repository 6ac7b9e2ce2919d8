//! Starting our glommio executors.
//!
//! Each executor's work runs in a task queue with `Latency::Matters(preempt)`: while that
//! queue has work, a long-running task yields to the reactor (and to I/O completions) at least
//! every `preempt`. The executor-wide interval ([`FIRST_POLL_PREEMPT`]) applies only while
//! no latency queue has work, as before the first poll of the main future.
//!
//! glommio 0.9.0 as published could park an executor for ever while it had tasks to run
//! (when the preemption timer fired before the first task queue ran, with no timer or I/O
//! pending: the start-up hang of a `--duration 3` run whose shard never ran a line). The
//! glommio carried in `perf/glommio` does not park then (`no-park-with-work.patch`, as
//! glommio#53 upstream); `tests::should_not_park_with_runnable_work` checks it.

use std::future::Future;
use std::time::Duration;

use glommio::{ExecutorJoinHandle, Latency, LocalExecutorBuilder, Placement, Shares};

/// The executor-wide preemption interval, in force only while no latency queue has work.
pub const FIRST_POLL_PREEMPT: Duration = Duration::from_secs(2);
/// Preemption interval of the one-shot subcommands' executors (verify, report, switch).
pub const ONE_SHOT_PREEMPT: Duration = Duration::from_millis(100);
/// Preemption interval of a shard's tasks (the workload's and bench-redis's): a long-running
/// task yields to the reactor (and to Redis replies) at least this often.
pub const SHARD_PREEMPT: Duration = Duration::from_millis(10);
/// Preemption interval of the control core's tasks (writer, HTTP, reports).
pub const CONTROL_PREEMPT: Duration = Duration::from_millis(100);
/// Starts a named executor on `placement` running `fut_gen()` with preemption every `preempt`.
/// Errors of the executor's creation come back from `join`.
pub fn spawn<G, F, T>(
    name: &str,
    placement: Placement,
    preempt: Duration,
    fut_gen: G,
) -> glommio::Result<ExecutorJoinHandle<T>, ()>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let queue_name = name.to_string();
    LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(64 << 10)
        .preempt_timer(FIRST_POLL_PREEMPT)
        .spawn(move || async move {
            let tq = glommio::executor().create_task_queue(
                Shares::default(),
                Latency::Matters(preempt),
                &queue_name,
            );
            let fut = fut_gen();
            match glommio::spawn_local_into(fut, tq) {
                Ok(task) => task.await,
                // Only for an unknown queue handle; it was created just above.
                Err(e) => unreachable!("task queue {queue_name} vanished: {e}"),
            }
        })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    /// glommio's reproducer of the start-up hang (glommio#53): with a preemption timer that
    /// fires at once, `run_task_queues` finds it fired before running anything, and an
    /// executor that parks then never runs the main future's task.
    #[test]
    fn should_not_park_with_runnable_work() {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let ex = glommio::LocalExecutorBuilder::default()
                .preempt_timer(Duration::from_nanos(1))
                .make()
                .expect("an executor");
            for _ in 0..1_000 {
                ex.run(async {
                    glommio::spawn_local(async {}).await;
                });
            }
            let _ = tx.send(());
        });
        // A hang, not a speed: 1000 runs take milliseconds.
        assert!(
            rx.recv_timeout(Duration::from_secs(60)).is_ok(),
            "an executor parked with work to run"
        );
    }

    /// The carried glommio keeps a pending timer across a sleep when it expires when the
    /// next user timer does. If it fires between that decision and the sleep, `wait`
    /// consumes its completion with the others and must arm the user timer after all, or
    /// the executor sleeps with no timer. Like a shard's pacer: send a request, sleep until
    /// the next slot; the reply wakes the executor first, and only the timer ends the sleep.
    #[test]
    fn should_wake_for_every_timer_while_replies_wake_it_first() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;

        let echo = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
        let echo_addr = echo.local_addr().expect("its address");
        echo.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("a read timeout");
        let done = Arc::new(AtomicBool::new(false));
        let echoer = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                while !done.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = echo.recv_from(&mut buf) {
                        let _ = echo.send_to(&buf[..n], from);
                    }
                }
            })
        };
        let (steps, replies) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (tx, rx) = mpsc::channel();
        let (counted, answered) = (steps.clone(), replies.clone());
        let ex = super::spawn(
            "timer-race",
            glommio::Placement::Unbound,
            super::SHARD_PREEMPT,
            move || async move {
                let sock = std::rc::Rc::new(
                    glommio::net::UdpSocket::bind("127.0.0.1:0").expect("the executor's socket"),
                );
                let reader = sock.clone();
                glommio::spawn_local(async move {
                    let mut buf = [0u8; 16];
                    while reader.recv_from(&mut buf).await.is_ok() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .detach();
                // 40,000 slots 15-90 µs apart, each with a request: its reply comes just
                // before, at or after the slot, so the reply and the timer race.
                for i in 0..40_000u64 {
                    let _ = sock.send_to(b"x", echo_addr).await;
                    glommio::timer::sleep(Duration::from_micros(15 + (i * 7) % 76)).await;
                    counted.store(i + 1, Ordering::Relaxed);
                }
                let _ = tx.send(());
            },
        )
        .expect("an executor");
        let finished = rx.recv_timeout(Duration::from_secs(60)).is_ok();
        done.store(true, Ordering::Relaxed);
        let _ = echoer.join();
        let (steps, replies) = (
            steps.load(Ordering::Relaxed),
            replies.load(Ordering::Relaxed),
        );
        assert!(
            finished,
            "a timer never woke its executor (after {steps} slots)"
        );
        // Not vacuous: the replies did come and wake the executor.
        assert!(replies > 10_000, "only {replies} replies");
        let _ = ex.join();
    }
}
