//! Integration-test harness: throwaway Redis and PostgreSQL servers and the application binary.
//!
//! Use it from a test file with `mod common;`. Every server gets its own free port and its own
//! temporary directory, so tests share nothing and run in parallel. Requirements: `redis-server`
//! and `redis-cli` on PATH, PostgreSQL server binaries under `/usr/lib/postgresql/<v>/bin` or on
//! PATH (`bash .ci/services.sh install` provides both). When the tests run as root, PostgreSQL runs
//! as the `postgres` system user (it refuses to run as root).
//!
//! PostgreSQL clusters are copied from a template (initdb + database `analytics`) that is built
//! once and cached under `CARGO_TARGET_TMPDIR`, so starting one costs a copy and a start, not an
//! initdb. `cargo clean` removes the cache.
//!
//! | room | what |
//! |---|---|
//! | `proc` | free ports, binaries, child processes, temporary files, `wait_until` |
//! | `redis` | `RedisServer`, `RedisCluster` |
//! | `pg` | `PgServer` (and freezing it) |
//! | `app` | the binary: `App`, `run_binary`, `TestContext` (a test's servers and app), `verify` |
//! | `http` | a minimal HTTP/1.1 client, Prometheus text |
//! | `certs` | throwaway certificates |
#![allow(dead_code)]

// The rooms' shared imports: each room starts with `use super::*`.
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// How long servers get to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

mod app;
mod certs;
mod http;
mod pg;
mod proc;
mod redis;

// Each test file uses some rooms only.
#[allow(unused_imports)]
pub use app::*;
#[allow(unused_imports)]
pub use certs::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use pg::*;
#[allow(unused_imports)]
pub use proc::*;
#[allow(unused_imports)]
pub use redis::*;
