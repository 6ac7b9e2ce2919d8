//! A shard's Redis outages: spans during which its Redis operations failed, as the shard saw
//! them (what the migration report calls unavailability).

use std::time::Instant;

/// A span during which a shard's Redis operations failed: from the start of the first
/// failed operation to the completion of the first later-started one that succeeded.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outage {
    pub shard: usize,
    pub start_unix: f64,
    pub duration_ms: f64,
    pub failed_operations: u64,
}

/// An outage in progress.
#[derive(Clone, Copy, Debug)]
pub struct OpenOutage {
    pub since: Instant,
    pub since_unix: f64,
    pub failed: u64,
}

/// Ended outages kept between two reports at most (a flapping server must not grow memory).
const ENDED_KEPT: usize = 10_000;

/// Failures and outages since the last report (the open outage carries over).
#[derive(Default)]
pub struct Outages {
    pub open: Option<OpenOutage>,
    /// Outages that ended since the last report.
    pub ended: Vec<Outage>,
    /// Start of the first and end of the last failed operation since the last report.
    pub first_failure_unix: Option<f64>,
    pub last_failure_unix: Option<f64>,
}

impl Outages {
    /// A Redis operation that started at `started` failed.
    pub fn failed(&mut self, started: Instant) {
        let now = crate::workload::time::unix_now();
        let started_unix = now - started.elapsed().as_secs_f64();
        self.first_failure_unix.get_or_insert(started_unix);
        self.last_failure_unix = Some(now);
        match &mut self.open {
            Some(o) => o.failed += 1,
            None => {
                self.open = Some(OpenOutage {
                    since: started,
                    since_unix: started_unix,
                    failed: 1,
                })
            }
        }
    }

    /// A Redis operation of `shard` that started at `started` succeeded: closes an outage
    /// that began before it started.
    pub fn ok(&mut self, shard: usize, started: Instant) {
        if let Some(o) = self.open {
            if started >= o.since {
                self.open = None;
                if self.ended.len() < ENDED_KEPT {
                    self.ended.push(Outage {
                        shard,
                        start_unix: o.since_unix,
                        duration_ms: o.since.elapsed().as_secs_f64() * 1000.0,
                        failed_operations: o.failed,
                    });
                }
            }
        }
    }

    /// The outage still going on: (start, milliseconds so far).
    pub fn open_span(&self) -> Option<(f64, f64)> {
        self.open
            .map(|o| (o.since_unix, o.since.elapsed().as_secs_f64() * 1000.0))
    }
}
