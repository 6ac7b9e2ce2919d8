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
}
