//! A single-threaded doorbell: one task waits, any task on the same executor rings.
//! A ring with nobody waiting is remembered, so a wake-up is never lost.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct Notify {
    rung: Cell<bool>,
    waiter: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn ring(&self) {
        self.rung.set(true);
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once rung since the last `wait` returned.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.rung.replace(false) {
                Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

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
