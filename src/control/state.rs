//! The control core's state, shared by its run loop (control/mod.rs) and its HTTP API
//! (control/http_api.rs), and what it is started with.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::shared_channel::ConnectedSender;
use metrics_exporter_prometheus::PrometheusHandle;

use super::aggregate::Aggregate;
use super::api::Load;
use super::barrier;
use super::health::Health;
use super::migration::Migration;
use crate::pg::writer::{Backlog, WriterStatus};
use crate::resp::{PoolConfig, Target};
use crate::shard::ShardCommand;

/// What the control core is started with.
pub struct ControlParams {
    pub bind: std::net::SocketAddr,
    /// The Redis server or cluster the shards start on.
    pub redis: Target,
    pub redis_cfg: PoolConfig,
    pub pg: crate::pg::PgConfig,
    pub run_id: i64,
    pub duration: Option<Duration>,
    pub progress_interval: Duration,
    pub targets: (u64, u64),
    pub hit_target: f64,
    pub batch_size: usize,
    pub retention_hours: u32,
    /// Bound of each PostgreSQL operation (`DB_TIMEOUT_MS`): connect, schema, writer batches.
    pub db_timeout: Duration,
    pub config_json: serde_json::Value,
    pub shards: usize,
    pub start_unix: f64,
    /// Bearer token of the admin endpoints (None: refused, see below).
    pub admin_token: Option<String>,
    /// Without a token, accept admin requests from loopback clients.
    pub admin_allow_loopback: bool,
    /// A named run (`RUN_NAME`): this instance's place in it (start barrier, final record).
    pub member: Option<barrier::Member>,
}

/// Everything the control core's tasks share (one thread: `Rc`, `RefCell`).
pub(super) struct State {
    pub(super) p: ControlParams,
    pub(super) prom: PrometheusHandle,
    pub(super) health: Rc<RefCell<Health>>,
    pub(super) agg: Rc<RefCell<Aggregate>>,
    pub(super) writer: Rc<RefCell<WriterStatus>>,
    pub(super) backlogs: Vec<Arc<Backlog>>,
    pub(super) target: Rc<RefCell<Target>>,
    pub(super) migration: RefCell<Migration>,
    /// Filled in by a task as shards connect (connecting waits for the peer).
    pub(super) commands: RefCell<Vec<Rc<ConnectedSender<ShardCommand>>>>,
    /// Where the run is: /health says 503 until the load runs.
    pub(super) load: Cell<Load>,
    /// A switch is being delivered to the shards (one at a time, so shards never end on
    /// different targets).
    pub(super) switching: Cell<bool>,
}

impl State {
    /// Rows waiting for the writer, over every shard.
    pub(super) fn pending_rows(&self) -> u64 {
        self.backlogs.iter().map(|b| b.pending()).sum()
    }
}
