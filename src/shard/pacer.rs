//! Open-loop pacing: operation `k` is due at `start + k / rate`, whatever happened to
//! earlier operations. Latency is measured from that due time, so a stall shows up as the
//! latency it caused instead of as a quietly lower rate (no coordinated omission). An
//! operation that the grid below starts before its due time is measured from its start.

use std::time::{Duration, Instant};

/// The schedule of one stream of operations at a constant integer rate.
#[derive(Debug, Clone)]
pub struct Schedule {
    start: Instant,
    rate: u64,
    /// The next operation to start.
    next: u64,
}

/// What to do with the operations that are due now.
#[derive(Debug, PartialEq, Eq)]
pub struct Due {
    /// Operations to skip because they are further behind than the late limit.
    pub late: u64,
    /// Indices `from..to` to start now.
    pub from: u64,
    pub to: u64,
}

impl Schedule {
    pub fn new(start: Instant, rate: u64) -> Schedule {
        Schedule {
            start,
            rate: rate.max(1),
            next: 0,
        }
    }

    /// When operation `k` is due (exact integer arithmetic: no drift over long runs).
    pub fn at(&self, k: u64) -> Instant {
        let nanos = u128::from(k) * 1_000_000_000 / u128::from(self.rate);
        self.start + Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
    }

    /// How many operations are due by `now` (indices below the returned value).
    pub fn due_by(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        (elapsed * u128::from(self.rate) / 1_000_000_000).min(u128::from(u64::MAX - 1)) as u64 + 1
    }

    /// Takes every operation due by `now`. Operations more than `late_limit` behind are
    /// reported as late (to be counted and skipped) rather than started in a burst.
    pub fn take_due(&mut self, now: Instant, late_limit: Duration) -> Due {
        let due = self.due_by(now);
        let mut late = 0;
        if due > self.next {
            let cutoff = now.checked_sub(late_limit).unwrap_or(self.start);
            if self.at(self.next) < cutoff {
                let first_ok = self.due_by(cutoff).min(due);
                late = first_ok.saturating_sub(self.next);
                self.next += late;
            }
        }
        let from = self.next;
        self.next = self.next.max(due);
        Due {
            late,
            from,
            to: self.next,
        }
    }

    /// When the next operation is due.
    pub fn next_at(&self) -> Instant {
        self.at(self.next)
    }

    /// The point of the grid `start + n * step` on which the next operation starts: the one
    /// nearest its due time (of two equally near, the earlier). A wake there takes, with
    /// [`Schedule::take_due`] at `now + lead(step)`, every operation due up to half a step
    /// after it.
    pub fn next_wake(&self, step: Duration) -> Instant {
        let t = self.next_at().checked_sub(lead(step)).unwrap_or(self.start);
        grid_ceil(self.start, t, step)
    }
}

/// Pacing wakes land on a grid of `pace_step`: an operation due at `t` starts at the grid
/// point nearest `t`, at most half a step early or late. Operations due within one step start
/// together, so their commands share one write and the executor wakes once for them (and
/// once more for their replies) instead of once per operation: each wake costs a context
/// switch and several io_uring syscalls, the largest cost in the profiles at 10k and 100k
/// operations/s. A late start's delay (at most half a step) counts in the latency measured
/// from the schedule; an early start is measured from the start itself, so an operation's
/// latency is never less than it took. (Rounding up to the next grid point instead put a
/// delay of up to a whole step, half a step on average, into every latency.)
///
/// The fine step, kept below [`AUTO_COARSE_FROM`] operations/s per shard: there the
/// operations are far enough apart that a coarser grid would save few wakes.
pub const FINE_STEP: Duration = Duration::from_micros(100);
/// The coarse step, from [`AUTO_COARSE_FROM`] operations/s per shard on. At 5,000/s on one
/// shard it took our CPU per Redis command from 36 to 11 µs (`make bench-efficiency`, 10k
/// point) and the query p99 from the schedule from 0.65 to 1.3 ms.
pub const COARSE_STEP: Duration = Duration::from_millis(1);
/// The rate per shard (events and queries) from which the automatic step is coarse.
pub const AUTO_COARSE_FROM: u64 = 2_000;

/// How far ahead of its due time an operation may start on a grid of `step`.
pub fn lead(step: Duration) -> Duration {
    step / 2
}

/// The grid step of a shard running `ops_per_second`: `configured` unless zero (auto).
pub fn pace_step(configured: Duration, ops_per_second: u64) -> Duration {
    if !configured.is_zero() {
        configured
    } else if ops_per_second >= AUTO_COARSE_FROM {
        COARSE_STEP
    } else {
        FINE_STEP
    }
}

/// The first point of the grid `origin + n * step` at or after `t`.
pub fn grid_ceil(origin: Instant, t: Instant, step: Duration) -> Instant {
    let step_ns = step.as_nanos().max(1);
    let off = t.saturating_duration_since(origin).as_nanos();
    let n = off.div_ceil(step_ns);
    origin + Duration::from_nanos((n * step_ns).min(u128::from(u64::MAX)) as u64)
}

/// Splits a total rate across `n` shards: the first `total % n` shards take one more.
pub fn split_rate(total: u64, n: usize, index: usize) -> u64 {
    let n = n.max(1) as u64;
    total / n + u64::from((index as u64) < total % n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_pick_the_coarse_step_only_from_the_auto_threshold() {
        let auto = Duration::ZERO;
        assert_eq!(pace_step(auto, 0), FINE_STEP);
        assert_eq!(pace_step(auto, AUTO_COARSE_FROM - 1), FINE_STEP);
        assert_eq!(pace_step(auto, AUTO_COARSE_FROM), COARSE_STEP);
        assert_eq!(pace_step(auto, 100_000), COARSE_STEP);
        // A configured step is kept at every rate.
        let set = Duration::from_micros(250);
        assert_eq!(pace_step(set, 10), set);
        assert_eq!(pace_step(set, 100_000), set);
    }

    #[test]
    fn should_round_wakes_up_to_the_grid() {
        let t0 = Instant::now();
        let step = Duration::from_micros(100);
        let us = |n: u64| t0 + Duration::from_micros(n);
        assert_eq!(grid_ceil(t0, t0, step), t0);
        assert_eq!(grid_ceil(t0, us(1), step), us(100));
        assert_eq!(grid_ceil(t0, us(100), step), us(100));
        assert_eq!(grid_ceil(t0, us(101), step), us(200));
        assert_eq!(grid_ceil(t0, us(123_456), step), us(123_500));
        // Before the origin: the origin itself.
        assert_eq!(grid_ceil(us(500), us(10), step), us(500));
    }

    #[test]
    fn should_start_each_operation_on_the_nearest_grid_point() {
        let t0 = Instant::now();
        let step = Duration::from_millis(1);
        // 350/s: due times fall anywhere between grid points.
        let mut s = Schedule::new(t0, 350);
        let mut wake = s.next_wake(step);
        assert_eq!(wake, t0);
        let mut started = 0;
        while wake < t0 + Duration::from_secs(10) {
            // Wakes land on the grid, each with something to start.
            assert_eq!(grid_ceil(t0, wake, step), wake);
            let d = s.take_due(wake + lead(step), Duration::from_secs(1));
            assert!(d.to > d.from, "a wake at {:?} with nothing due", wake - t0);
            for k in d.from..d.to {
                let due = s.at(k);
                let off = if due >= wake { due - wake } else { wake - due };
                assert!(off <= lead(step), "op {k}: {off:?} from its grid point");
                // The grid point nearest its due time.
                let nearest = grid_ceil(t0, due.checked_sub(lead(step)).unwrap_or(t0), step);
                assert_eq!(nearest, wake, "op {k}");
            }
            started += d.to - d.from;
            let next = s.next_wake(step);
            assert!(next > wake);
            wake = next;
        }
        // Everything due before 10 s - half a step was started, and nothing twice.
        assert_eq!(started, s.due_by(t0 + Duration::from_secs(10) - lead(step)));
        // Due exactly on a grid point: started on it, not a step early.
        let s = Schedule::new(t0, 1000);
        assert_eq!(s.next_wake(step), t0);
        let mut s = Schedule::new(t0, 1000);
        s.take_due(t0, Duration::from_secs(1));
        assert_eq!(s.next_wake(step), t0 + step);
    }

    #[test]
    fn should_schedule_exactly_without_drift() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 3);
        assert_eq!(s.at(0), t0);
        assert_eq!(s.at(3), t0 + Duration::from_secs(1));
        assert_eq!(s.at(3_000_000), t0 + Duration::from_secs(1_000_000));
        assert_eq!(s.at(1), t0 + Duration::from_nanos(333_333_333));
    }

    #[test]
    fn should_take_exactly_rate_times_elapsed() {
        let t0 = Instant::now();
        for rate in [1u64, 7, 10, 999, 2000, 8000, 100_000, 1_000_000] {
            let mut s = Schedule::new(t0, rate);
            let mut started = 0;
            // Irregular wake-ups over 10 s.
            let mut t = Duration::ZERO;
            let mut step = 1u64;
            while t < Duration::from_secs(10) {
                let d = s.take_due(t0 + t, Duration::from_secs(1));
                assert_eq!(d.late, 0);
                started += d.to - d.from;
                step = (step * 7919) % 3001 + 1;
                t += Duration::from_micros(step);
            }
            let d = s.take_due(t0 + Duration::from_secs(10), Duration::from_secs(1));
            started += d.to - d.from;
            // Operations 0..=rate*10 are due at exactly 10 s.
            assert_eq!(started, rate * 10 + 1, "rate {rate}");
        }
    }

    #[test]
    fn should_skip_what_is_too_late_and_count_it() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 1000);
        let d = s.take_due(t0, Duration::from_secs(1));
        assert_eq!((d.late, d.from, d.to), (0, 0, 1));
        // A 5 s stall: ops due up to t=4 s are late, those after 4 s up to 5 s start now.
        let d = s.take_due(t0 + Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(d.late, 4000);
        assert_eq!(d.to - d.from, 1000);
        assert_eq!(d.late + (d.to - d.from) + 1, 5001);
        assert_eq!(s.next_at(), t0 + Duration::from_micros(5_001_000));
    }

    #[test]
    fn should_split_rates_exactly() {
        for total in [0u64, 1, 7, 2000, 8001] {
            for n in 1..6 {
                let sum: u64 = (0..n).map(|i| split_rate(total, n, i)).sum();
                assert_eq!(sum, total);
            }
        }
    }
}
