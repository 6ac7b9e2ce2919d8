//! What to do with a cluster's error reply: MOVED, ASK, and the transient refusals.
//!
//! Every one of these replies proves the command was not applied, so resending it (even an
//! INCR) is safe. A timeout or a dropped connection is not a reply: it never comes here and
//! the command is never resent.

use std::time::Duration;

/// Redirections (and transient refusals) one command may take; the next one fails it with
/// the error kind `redirect_loop`.
pub const MAX_REDIRECTS: u32 = 5;

/// Labels of `analytics_redis_redirects_total{kind}`, exported at zero.
/// Redirections seen by every router of the process, by kind (for reports; the metric
/// `analytics_redis_redirects_total` has them by shard).
static SEEN: [std::sync::atomic::AtomicU64; REDIRECT_KINDS.len()] =
    [const { std::sync::atomic::AtomicU64::new(0) }; REDIRECT_KINDS.len()];

/// Counts a redirection of kind `REDIRECT_KINDS[i]`.
pub(crate) fn seen(i: usize) {
    if let Some(c) = SEEN.get(i) {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Redirections seen so far by every router of the process, by kind.
pub fn seen_so_far() -> Vec<(&'static str, u64)> {
    REDIRECT_KINDS
        .iter()
        .zip(&SEEN)
        .map(|(k, c)| (*k, c.load(std::sync::atomic::Ordering::Relaxed)))
        .collect()
}

pub const REDIRECT_KINDS: [&str; 7] = [
    "moved",
    "ask",
    "tryagain",
    "clusterdown",
    "loading",
    "masterdown",
    "readonly",
];

/// A cluster error reply that asks for the command again (elsewhere or later).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// The slot lives on `addr` now: update the map and resend there.
    Moved {
        slot: u16,
        addr: String,
    },
    /// The slot is migrating and this key is on `addr`: ASKING + resend there, map unchanged.
    Ask {
        slot: u16,
        addr: String,
    },
    TryAgain,
    ClusterDown,
    Loading,
    MasterDown,
    /// A replica answered a write: the map is stale (a failover); refresh, then resend.
    ReadOnly,
}

impl Redirect {
    /// Recognises the reply's first word; `None` for any other error.
    pub fn parse(msg: &str) -> Option<Redirect> {
        let mut words = msg.split(' ');
        let first = words.next()?;
        let target = |mut w: std::str::Split<'_, char>| -> Option<(u16, String)> {
            let slot = w.next()?.parse::<u16>().ok()?;
            let addr = w.next()?.to_string();
            let port = addr.rsplit_once(':')?.1.parse::<u16>().ok()?;
            (usize::from(slot) < super::slot::SLOTS && port != 0).then_some((slot, addr))
        };
        Some(match first {
            "MOVED" => target(words).map(|(slot, addr)| Redirect::Moved { slot, addr })?,
            "ASK" => target(words).map(|(slot, addr)| Redirect::Ask { slot, addr })?,
            "TRYAGAIN" => Redirect::TryAgain,
            "CLUSTERDOWN" => Redirect::ClusterDown,
            "LOADING" => Redirect::Loading,
            "MASTERDOWN" => Redirect::MasterDown,
            "READONLY" => Redirect::ReadOnly,
            _ => return None,
        })
    }

    /// Its label in `REDIRECT_KINDS`.
    pub fn kind(&self) -> &'static str {
        match self {
            Redirect::Moved { .. } => "moved",
            Redirect::Ask { .. } => "ask",
            Redirect::TryAgain => "tryagain",
            Redirect::ClusterDown => "clusterdown",
            Redirect::Loading => "loading",
            Redirect::MasterDown => "masterdown",
            Redirect::ReadOnly => "readonly",
        }
    }
}

/// The next step for a command that got `r` after `taken` redirections already.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Set the slot's owner to `addr`, schedule a map refresh, resend there.
    Moved { slot: u16, addr: String },
    /// ASKING + the command on `addr`'s connection; the map stays.
    Ask { addr: String },
    /// Wait, then resend to the slot's owner (map unchanged).
    Backoff(Duration),
    /// Wait `Duration`, refresh the map (waiting for it), resend.
    Refresh(Duration),
    /// Too many redirections: fail the command (`redirect_loop`).
    GiveUp,
}

/// Backoff before the `n`th resend (1-based) after a transient refusal: 20 ms doubling,
/// capped at 640 ms. The five a command may get add up to 620 ms: a multi-key command
/// (MGET) on a slot being migrated gets TRYAGAIN until the migration of its keys ends.
pub fn backoff(n: u32) -> Duration {
    Duration::from_millis(20u64 << n.saturating_sub(1).min(5))
}

pub fn decide(r: &Redirect, taken: u32) -> Action {
    if taken >= MAX_REDIRECTS {
        return Action::GiveUp;
    }
    match r {
        Redirect::Moved { slot, addr } => Action::Moved {
            slot: *slot,
            addr: addr.clone(),
        },
        Redirect::Ask { addr, .. } => Action::Ask { addr: addr.clone() },
        Redirect::TryAgain | Redirect::ClusterDown | Redirect::Loading | Redirect::MasterDown => {
            Action::Backoff(backoff(taken + 1))
        }
        Redirect::ReadOnly => Action::Refresh(backoff(taken + 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_parse_redirections() {
        assert_eq!(
            Redirect::parse("MOVED 9842 127.0.0.1:7202"),
            Some(Redirect::Moved {
                slot: 9842,
                addr: "127.0.0.1:7202".into()
            })
        );
        assert_eq!(
            Redirect::parse("ASK 1 [::1]:7000"),
            Some(Redirect::Ask {
                slot: 1,
                addr: "[::1]:7000".into()
            })
        );
        assert_eq!(
            Redirect::parse("TRYAGAIN Multiple keys request during rehashing of slot"),
            Some(Redirect::TryAgain)
        );
        assert_eq!(
            Redirect::parse("CLUSTERDOWN The cluster is down"),
            Some(Redirect::ClusterDown)
        );
        assert_eq!(Redirect::parse("LOADING x"), Some(Redirect::Loading));
        assert_eq!(Redirect::parse("MASTERDOWN x"), Some(Redirect::MasterDown));
        assert_eq!(Redirect::parse("READONLY x"), Some(Redirect::ReadOnly));
        for bad in [
            "MOVED",
            "MOVED x 1:2",
            "MOVED 16384 h:1",
            "MOVED 1 nohost",
            "MOVED 1 h:x",
            "ASK 1 h:0",
            "ERR x",
            "",
        ] {
            assert_eq!(Redirect::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn should_decide_and_bound_redirections() {
        let moved = Redirect::Moved {
            slot: 3,
            addr: "h:1".into(),
        };
        assert_eq!(
            decide(&moved, 0),
            Action::Moved {
                slot: 3,
                addr: "h:1".into()
            }
        );
        let ask = Redirect::Ask {
            slot: 3,
            addr: "h:2".into(),
        };
        assert_eq!(decide(&ask, 4), Action::Ask { addr: "h:2".into() });
        assert_eq!(
            decide(&Redirect::TryAgain, 0),
            Action::Backoff(Duration::from_millis(20))
        );
        assert_eq!(
            decide(&Redirect::ClusterDown, 2),
            Action::Backoff(Duration::from_millis(80))
        );
        assert!(matches!(decide(&Redirect::ReadOnly, 1), Action::Refresh(_)));
        // The loop bound: after MAX_REDIRECTS, whatever the reply, the command fails.
        for r in [moved, ask, Redirect::TryAgain, Redirect::ReadOnly] {
            assert_eq!(decide(&r, MAX_REDIRECTS), Action::GiveUp);
            assert_ne!(decide(&r, MAX_REDIRECTS - 1), Action::GiveUp);
        }
        assert!(backoff(100) <= Duration::from_millis(640));
        let total: Duration = (1..=MAX_REDIRECTS).map(backoff).sum();
        assert_eq!(total, Duration::from_millis(620));
        let kinds: Vec<&str> = [
            Redirect::Moved {
                slot: 0,
                addr: String::new(),
            },
            Redirect::Ask {
                slot: 0,
                addr: String::new(),
            },
            Redirect::TryAgain,
            Redirect::ClusterDown,
            Redirect::Loading,
            Redirect::MasterDown,
            Redirect::ReadOnly,
        ]
        .iter()
        .map(Redirect::kind)
        .collect();
        assert_eq!(kinds, REDIRECT_KINDS);
    }
}
