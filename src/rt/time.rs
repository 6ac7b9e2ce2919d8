//! Bounding a future in time, and keeping an idle executor awake.

use std::future::Future;
use std::time::{Duration, Instant};

// Plain functions returning the race, not `async fn`s: a layer of async fn would hold one
// more copy of `fut` (large for the writer's batch) in the caller's state.

/// Waits for `fut` at most `limit` (None when the time ran out; `fut` is then dropped, which
/// cancels what it awaited).
pub fn timeout<T>(
    limit: Duration,
    fut: impl Future<Output = T>,
) -> impl Future<Output = Option<T>> {
    let expire = async move {
        glommio::timer::sleep(limit).await;
        None
    };
    futures_lite::future::or(async { Some(fut.await) }, expire)
}

/// Waits for `fut` or until `deadline`, whichever comes first (None on deadline; a deadline
/// already past still polls `fut` once).
pub fn until<T>(
    deadline: Instant,
    fut: impl Future<Output = T>,
) -> impl Future<Output = Option<T>> {
    let expire = async move {
        let now = Instant::now();
        if deadline > now {
            glommio::timer::sleep(deadline - now).await;
        }
        None
    };
    futures_lite::future::or(async { Some(fut.await) }, expire)
}

/// Awaits `fut` while keeping this executor waking every few milliseconds.
///
/// glommio's `shared_channel` connect completes only when the connecting executor polls
/// its reactor; a peer connecting does not wake an executor parked with no timers, so
/// an idle executor could wait forever. A short timer loop beside it avoids that.
pub async fn awake<T>(fut: impl Future<Output = T>) -> T {
    let ticker = async {
        loop {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    };
    futures_lite::future::or(fut, ticker).await
}
