//! Small async helpers for single-threaded executors (the wake-up primitive itself is
//! `resp::sync::Notify`).

/// Waits for `fut` or until `deadline`, whichever comes first (None on deadline).
pub async fn until<T>(
    deadline: std::time::Instant,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    let sleep = async {
        let now = std::time::Instant::now();
        if deadline > now {
            glommio::timer::sleep(deadline - now).await;
        }
        None
    };
    futures_lite::future::or(async { Some(fut.await) }, sleep).await
}

/// Awaits `fut` while keeping this executor waking every few milliseconds.
///
/// glommio's `shared_channel` connect completes only when the connecting executor polls
/// its reactor; a peer connecting does not wake an executor parked with no timers, so
/// an idle executor could wait forever. A short timer loop beside it avoids that.
pub async fn awake<T>(fut: impl std::future::Future<Output = T>) -> T {
    let ticker = async {
        loop {
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    futures_lite::future::or(fut, ticker).await
}
