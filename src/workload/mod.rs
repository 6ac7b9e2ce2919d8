//! What the simulated SaaS does: event and query mixes, skewed tenants and users, the
//! Redis key layout, and the hour buckets counters live in; and `bench-redis`'s plain SET/GET
//! mix ([`bench_mix`]).

pub mod bench_mix;
pub mod dist;
pub mod keys;
pub mod time;

pub use dist::{Rng, Skewed, Weighted};

/// Event types with their share of the event stream, in per-mille (sums to 1000).
pub const EVENT_TYPES: [(EventType, u32); 5] = [
    (EventType::PageView, 600),
    (EventType::Click, 280),
    (EventType::Conversion, 100),
    (EventType::Signup, 15),
    (EventType::Purchase, 5),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventType {
    PageView = 0,
    Click = 1,
    Conversion = 2,
    Signup = 3,
    Purchase = 4,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::PageView,
        EventType::Click,
        EventType::Conversion,
        EventType::Signup,
        EventType::Purchase,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PageView => "page_view",
            EventType::Click => "click",
            EventType::Conversion => "conversion",
            EventType::Signup => "signup",
            EventType::Purchase => "purchase",
        }
    }

    pub fn from_code(code: i16) -> Option<EventType> {
        EventType::ALL.get(usize::try_from(code).ok()?).copied()
    }

    pub fn code(self) -> i16 {
        self as i16
    }
}

/// Query types with their share of the query stream, in per-mille.
pub const QUERY_TYPES: [(QueryType, u32); 3] = [
    (QueryType::Dashboard, 700),
    (QueryType::Filtered, 200),
    (QueryType::Realtime, 100),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum QueryType {
    /// Organization overview over all retained hours: cached, refreshed by warmup.
    Dashboard = 0,
    /// Organization x event type x window: a larger key space, cached on demand.
    Filtered = 1,
    /// Live counters of the current hour: never cached.
    Realtime = 2,
}

impl QueryType {
    pub const ALL: [QueryType; 3] = [
        QueryType::Dashboard,
        QueryType::Filtered,
        QueryType::Realtime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QueryType::Dashboard => "dashboard",
            QueryType::Filtered => "filtered",
            QueryType::Realtime => "realtime",
        }
    }
}

/// What became of an event's counter write: the migration truth (the `outcome` of its row;
/// docs/migration.md, "Did the migration lose writes?").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Outcome {
    /// Redis replied: the increment is applied.
    Acked = 0,
    /// Known not applied: never sent, or the server refused it.
    Failed = 1,
    /// Sent, but no reply came: it may or may not be applied.
    Unknown = 2,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Acked, Outcome::Failed, Outcome::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Acked => "acked",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        }
    }

    pub fn code(self) -> i16 {
        self as i16
    }
}

/// Filter windows of the filtered query, in hours (capped by `TIME_BUCKETS`).
pub const FILTER_WINDOWS: [u32; 4] = [1, 6, 12, 24];
