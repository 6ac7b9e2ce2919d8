//! Starting our glommio executors, with a guard against a scheduler bug of glommio 0.9 that
//! can park an executor for ever while it has tasks to run.
//!
//! # The bug
//!
//! glommio's run loop arms the preemption timer (`poll_io`), then runs the task queues. When
//! the timer has already fired before the first queue ran (the thread lost its CPU for longer
//! than the preemption interval just there: a busy machine, a frozen process),
//! `run_task_queues` returns `false`, which the loop reads as "nothing to run", and it parks.
//! If no timer and no I/O is pending, as at start-up or on a quiet shard, nothing ends that
//! park: the runnable tasks never run (fixed upstream after the 0.9.0 release, glommio#53).
//! This was the start-up hang: a `--duration 3` run whose shard never ran a line.
//!
//! # The guard
//!
//! - The executor's own preemption interval is long ([`FIRST_POLL_PREEMPT`]), so the park
//!   before the first poll of its main future needs a stall of that length in a window of
//!   microseconds. The real work runs in a task queue with `Latency::Matters(preempt)`, which
//!   gives the interval the caller asked for while that queue has work.
//! - From its first poll on, each executor registers a sentinel task; one process-wide thread
//!   wakes every sentinel every [`NUDGE_EVERY`]. A wake from another thread writes the
//!   executor's eventfd, which ends any park, and the next loop runs what was queued. A park
//!   caused by the bug then costs at most that period (and shows as pacer lateness).

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Poll, Waker};
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
/// How often every executor is woken from outside.
pub const NUDGE_EVERY: Duration = Duration::from_millis(50);

type Slot = Mutex<Option<Waker>>;

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
            install_sentinel();
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

/// Registers this executor's sentinel with the nudging thread (started on first use).
fn install_sentinel() {
    let slot: Arc<Slot> = Arc::new(Mutex::new(None));
    lock(registry()).push(Arc::downgrade(&slot));
    glommio::spawn_local(async move {
        std::future::poll_fn(|cx| {
            *lock(&slot) = Some(cx.waker().clone());
            Poll::<()>::Pending
        })
        .await
    })
    .detach();
}

fn registry() -> &'static Mutex<Vec<Weak<Slot>>> {
    static REGISTRY: OnceLock<Mutex<Vec<Weak<Slot>>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        if let Err(e) = std::thread::Builder::new()
            .name("nudge".into())
            .spawn(nudge_loop)
        {
            tracing::warn!(error = %e, "cannot start the executor nudging thread");
        }
        Mutex::new(Vec::new())
    })
}

fn nudge_loop() {
    loop {
        std::thread::sleep(NUDGE_EVERY);
        let wakers: Vec<Waker> = {
            let mut reg = lock(registry());
            reg.retain(|w| w.strong_count() > 0);
            reg.iter()
                .filter_map(Weak::upgrade)
                .filter_map(|slot| lock(&slot).take())
                .collect()
        };
        for w in wakers {
            w.wake();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
