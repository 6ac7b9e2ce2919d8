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
#![allow(dead_code)]

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
/// How many ports a server start tries before giving up (port races between parallel tests).
const START_ATTEMPTS: usize = 8;

// ---------------------------------------------------------------------------------------------
// Ports, binaries, processes
// ---------------------------------------------------------------------------------------------

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
static RNG: AtomicU64 = AtomicU64::new(0);

fn next_random() -> u64 {
    let mut current = RNG.load(Ordering::Relaxed);
    loop {
        let mut x = if current != 0 {
            current
        } else {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            (nanos ^ ((std::process::id() as u64) << 32)) | 1
        };
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        match RNG.compare_exchange(current, x, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return x.wrapping_mul(0x2545_F491_4F6C_DD1D),
            Err(actual) => current = actual,
        }
    }
}

/// A TCP port on 127.0.0.1 that is free right now and was not handed out before in this process.
///
/// Ports come from 15000-31999, below Linux's ephemeral range (32768-60999), so they do not
/// collide with the local ports of client connections. Another process may still grab the port
/// before it is used: the server starters below retry on a new port when binding fails.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = 15000 + (next_random() % 17000) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
            continue;
        }
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("free_port: no free TCP port found on 127.0.0.1");
}

/// First executable NAME on PATH.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/bin", "/usr/bin", "/usr/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn redis_bin(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("{name} not found on PATH: install Redis (bash .ci/services.sh install)")
    })
}

/// Path of a PostgreSQL program: `/usr/lib/postgresql/<highest version>/bin/NAME`, else PATH.
pub fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let candidate = entry.path().join("bin").join(name);
            is_executable(&candidate).then_some((version, candidate))
        })
        .collect();
    versions.sort();
    if let Some((_, path)) = versions.pop() {
        return path;
    }
    which(name).unwrap_or_else(|| {
        panic!(
            "PostgreSQL program {name} not found in /usr/lib/postgresql/*/bin or on PATH: \
             install PostgreSQL (bash .ci/services.sh install)"
        )
    })
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a pid we spawned; errors (process gone) are ignored.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Wait for CHILD to exit for at most TIMEOUT.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
    }
}

/// Send SIG, wait up to GRACE, then SIGKILL and reap.
fn shut_down(child: &mut Child, sig: libc::c_int, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child.id(), libc::SIGCONT); // a paused process cannot act on SIGTERM/SIGINT
    signal(child.id(), sig);
    if wait_timeout(child, grace).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Log file opened for appending, usable as stdout and stderr of a child.
fn log_stdio(path: &Path) -> (Stdio, Stdio) {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let err = file.try_clone().expect("clone log file handle");
    (Stdio::from(file), Stdio::from(err))
}

fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(std::env::temp_dir())
        .expect("create temporary directory")
}

enum StartError {
    /// The port was taken: try another one.
    AddrInUse(String),
    Other(String),
}

fn looks_like_addr_in_use(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not create any TCP/IP sockets")
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// A private `redis-server` (no persistence) on a free port of 127.0.0.1.
pub struct RedisServer {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    extra_args: Vec<String>,
    password: Option<String>,
    /// Set by `start_tls`: `port` is then the TLS port (no plain port).
    tls: Option<RedisTls>,
    /// ACL user (name, password) the harness's own redis-cli calls authenticate as.
    acl_user: Option<(String, String)>,
}

/// How the harness reaches a TLS-only redis-server with redis-cli.
struct RedisTls {
    server_args: Vec<String>,
    cli_args: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start with extra `redis-server` arguments, e.g. `&["--requirepass", "pw"]`.
    pub fn start_with(args: &[&str]) -> Self {
        let extra_args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let password = args
            .windows(2)
            .rev()
            .find(|w| w[0] == "--requirepass")
            .map(|w| w[1].to_string());
        let server = RedisServer {
            port: 0,
            dir: temp_dir("ad-redis-"),
            child: None,
            extra_args,
            password,
            tls: None,
            acl_user: None,
        };
        server.start_on_free_port()
    }

    /// A TLS-only redis-server (`--port 0 --tls-port P`) with CERTS' server certificate and CA,
    /// `--tls-auth-clients AUTH_CLIENTS` (`no`, `optional` or `yes`), and, with ACL_USER, that
    /// user (all permissions) while the default user is off.
    pub fn start_tls(
        certs: &TestCerts,
        auth_clients: &str,
        acl_user: Option<(&str, &str)>,
    ) -> Self {
        let path = |p: &Path| p.display().to_string();
        let mut server_args: Vec<String> = [
            "--tls-cert-file".to_string(),
            path(&certs.server_cert),
            "--tls-key-file".into(),
            path(&certs.server_key),
            "--tls-ca-cert-file".into(),
            path(&certs.ca),
            "--tls-auth-clients".into(),
            auth_clients.into(),
        ]
        .into();
        if let Some((user, pw)) = acl_user {
            for a in ["--user", user, "on", &format!(">{pw}"), "~*", "&*", "+@all"] {
                server_args.push(a.to_string());
            }
            for a in ["--user", "default", "off"] {
                server_args.push(a.to_string());
            }
        }
        let cli_args = vec![
            "--tls".to_string(),
            "--cacert".into(),
            path(&certs.ca),
            "--cert".into(),
            path(&certs.client_cert),
            "--key".into(),
            path(&certs.client_key),
        ];
        let server = RedisServer {
            port: 0,
            dir: temp_dir("ad-redis-tls-"),
            child: None,
            extra_args: Vec::new(),
            password: None,
            tls: Some(RedisTls {
                server_args,
                cli_args,
            }),
            acl_user: acl_user.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        server.start_on_free_port()
    }

    fn start_on_free_port(self) -> Self {
        let mut server = self;
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.spawn() {
                Ok(child) => {
                    server.child = Some(child);
                    return server;
                }
                Err(StartError::AddrInUse(log)) => last = log,
                Err(StartError::Other(log)) => panic!("redis-server failed to start:\n{log}"),
            }
        }
        panic!("redis-server: no usable port after {START_ATTEMPTS} attempts:\n{last}")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&self) -> Result<Child, StartError> {
        let port = self.port.to_string();
        let (out, err) = log_stdio(&self.log_path());
        let mut cmd = Command::new(redis_bin("redis-server"));
        match &self.tls {
            None => cmd.args(["--port", &port]),
            Some(tls) => cmd
                .args(["--port", "0", "--tls-port", &port])
                .args(&tls.server_args),
        };
        let mut child = cmd
            .args(["--bind", "127.0.0.1", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn redis-server: {e}"));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = format!("exit {status}\n{}", read_lossy(&self.log_path()));
                return Err(if looks_like_addr_in_use(&log) {
                    StartError::AddrInUse(log)
                } else {
                    StartError::Other(log)
                });
            }
            let ready = match self.tls {
                None => redis_answers(self.port),
                Some(_) => {
                    let pong = self.cli(&["PING"]);
                    pong == "PONG" || pong.contains("NOAUTH")
                }
            };
            if ready {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                shut_down(&mut child, libc::SIGKILL, Duration::from_secs(5));
                return Err(StartError::Other(format!(
                    "not ready after {READY_TIMEOUT:?}\n{}",
                    read_lossy(&self.log_path())
                )));
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT` (with the password when started with `--requirepass`).
    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Run `redis-cli -p PORT ARGS...` (authenticating when needed); trimmed stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(redis_bin("redis-cli"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(tls) = &self.tls {
            cmd.args(&tls.cli_args);
        }
        if let Some((user, pw)) = &self.acl_user {
            cmd.args(["--user", user, "--pass", pw, "--no-auth-warning"]);
        } else if let Some(pw) = &self.password {
            cmd.args(["-a", pw, "--no-auth-warning"]);
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run redis-cli: {e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log (all runs).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// Kill the server (SIGKILL: no persistence anyway) and reap it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            shut_down(&mut child, libc::SIGKILL, Duration::from_secs(10));
        }
    }

    /// Start again on the same port (empty: there is no persistence) and wait until ready.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(StartError::AddrInUse(_)) if Instant::now() < deadline => {
                    sleep(Duration::from_millis(200))
                }
                Err(StartError::AddrInUse(log)) | Err(StartError::Other(log)) => {
                    panic!("redis-server restart on port {} failed:\n{log}", self.port)
                }
            }
        }
    }

    /// Freeze the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGSTOP);
        }
    }

    /// Thaw a paused server (SIGCONT).
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGCONT);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of private `redis-server`s (cluster mode, with or without replicas), each
/// on a free port (its bus port also chosen free), made with `redis-cli --cluster create`;
/// killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    node_timeout_ms: u32,
}

/// A cluster-enabled `redis-server` (bus port free too), not joined to any cluster yet.
fn cluster_node(node_timeout_ms: u32) -> RedisServer {
    let bus = free_port().to_string();
    RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-port",
        &bus,
        "--cluster-node-timeout",
        &node_timeout_ms.to_string(),
        "--repl-diskless-sync-delay",
        "0",
    ])
}

impl RedisCluster {
    /// N primaries sharing the 16384 slots; returns once every node says `cluster_state:ok`.
    pub fn start(n: usize) -> Self {
        Self::start_with_replicas(n, 0)
    }

    /// N primaries with REPLICAS replicas each (`--cluster-replicas`).
    pub fn start_with_replicas(n: usize, replicas: usize) -> Self {
        Self::start_with_timeout(n, replicas, 5000)
    }

    /// `start_with_replicas` with `--cluster-node-timeout NODE_TIMEOUT_MS` (how long a node
    /// may be unreachable before it is failed over).
    pub fn start_with_timeout(n: usize, replicas: usize, node_timeout_ms: u32) -> Self {
        let nodes: Vec<RedisServer> = (0..n * (1 + replicas))
            .map(|_| cluster_node(node_timeout_ms))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        let replicas = replicas.to_string();
        args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        let out = redis_cli_raw(&args);
        let cluster = RedisCluster {
            nodes,
            node_timeout_ms,
        };
        let ok = wait_until(Duration::from_secs(60), || {
            cluster
                .nodes
                .iter()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
        assert!(ok, "the cluster did not reach cluster_state:ok:\n{out}");
        // A replica still in its first sync would make a failover wait for it.
        let synced = wait_until(Duration::from_secs(60), || {
            cluster.nodes.iter().all(|n| {
                let info = n.cli(&["INFO", "replication"]);
                info.contains("role:master")
                    || (info.contains("master_link_status:up")
                        && info.contains("master_sync_in_progress:0"))
            })
        });
        assert!(synced, "a replica did not finish its first sync");
        cluster
    }

    /// A new empty primary joined to the cluster (`redis-cli --cluster add-node`); its index.
    pub fn add_node(&mut self) -> usize {
        let node = cluster_node(self.node_timeout_ms);
        let new = format!("127.0.0.1:{}", node.port);
        let existing = format!("127.0.0.1:{}", self.nodes[0].port);
        redis_cli_raw(&["--cluster", "add-node", &new, &existing]);
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        let id = self.id(i);
        let known = wait_until(Duration::from_secs(60), || {
            self.nodes.iter().all(|n| {
                n.cli(&["CLUSTER", "NODES"]).contains(&id)
                    && n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
            })
        });
        assert!(known, "node {new} did not join the cluster");
        i
    }

    /// The index of a replica of primary I (`ROLE` names its primary's port).
    pub fn replica_of(&self, i: usize) -> usize {
        let port = self.nodes[i].port.to_string();
        (0..self.nodes.len())
            .find(|r| {
                let role = self.nodes[*r].cli(&["ROLE"]);
                let mut lines = role.lines();
                lines.next() == Some("slave") && lines.nth(1) == Some(port.as_str())
            })
            .unwrap_or_else(|| panic!("node {i} has no replica"))
    }

    /// Moves SLOT and its keys from node FROM to node TO (`CLUSTER SETSLOT` IMPORTING and
    /// MIGRATING, `MIGRATE` in batches, then `SETSLOT NODE` on every node), as `redis-cli
    /// --cluster reshard` does for each slot.
    pub fn move_slot(&self, slot: u16, from: usize, to: usize) {
        let s = slot.to_string();
        let (from_id, to_id) = (self.id(from), self.id(to));
        let ok = |i: usize, args: &[&str]| {
            let r = self.cli(i, args);
            assert_eq!(r, "OK", "node {i}: {args:?}");
        };
        ok(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]);
        let to_port = self.nodes[to].port.to_string();
        loop {
            let keys = self.cli(from, &["CLUSTER", "GETKEYSINSLOT", &s, "100"]);
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys.lines());
            // NOKEY: every key of the batch expired meanwhile.
            let r = self.cli(from, &args);
            assert!(r == "OK" || r == "NOKEY", "MIGRATE from node {from}: {r}");
        }
        for i in std::iter::once(to)
            .chain(std::iter::once(from))
            .chain((0..self.nodes.len()).filter(|i| *i != to && *i != from))
        {
            if self.nodes[i].pid().is_none() {
                continue;
            }
            let r = self.cli(i, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
            // A primary that gave its last slot away may already have become the new
            // owner's replica (cluster-allow-replica-migration).
            let demoted = i == from && r.contains("only with masters");
            assert!(r == "OK" || demoted, "node {i}: SETSLOT {s} NODE: {r}");
        }
    }

    /// Normal clients connected to node I other than the `redis-cli` asking (the app's
    /// connections, when nothing else talks to it).
    pub fn clients(&self, i: usize) -> usize {
        self.cli(i, &["CLIENT", "LIST", "TYPE", "normal"])
            .lines()
            .filter(|l| !l.contains("cmd=client|list"))
            .count()
    }

    /// Indexes of the nodes that are primaries now (`ROLE`).
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].cli(&["ROLE"]).starts_with("master"))
            .collect()
    }

    /// The first node's URL (one seed).
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// Every node's URL, comma separated (all seeds).
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node id (`CLUSTER MYID`) of node I.
    pub fn id(&self, i: usize) -> String {
        self.nodes[i].cli(&["CLUSTER", "MYID"])
    }

    /// The index of the node serving SLOT (the one whose own `CLUSTER NODES` line lists it).
    pub fn owner(&self, slot: u16) -> usize {
        let serves = |i: usize| {
            let nodes = self.nodes[i].cli(&["CLUSTER", "NODES"]);
            let me = nodes
                .lines()
                .find(|l| l.contains("myself"))
                .unwrap_or_default()
                .to_string();
            me.split_whitespace().skip(8).any(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                    _ => false,
                }
            })
        };
        (0..self.nodes.len())
            .find(|i| serves(*i))
            .unwrap_or_else(|| panic!("no node serves slot {slot}"))
    }

    /// `redis-cli` on node I with ARGS (not following redirections); trimmed stdout.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        self.nodes[i].cli(args)
    }

    /// `redis-cli ARGS` (e.g. `--cluster reshard ...`): whether it succeeded, and its output.
    pub fn tool(&self, args: &[&str]) -> (bool, String) {
        redis_cli_tool(args)
    }
}

fn redis_cli_tool(args: &[&str]) -> (bool, String) {
    let out = Command::new(redis_bin("redis-cli"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run redis-cli: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn redis_cli_raw(args: &[&str]) -> String {
    let (ok, out) = redis_cli_tool(args);
    assert!(ok, "redis-cli {args:?} failed:\n{out}");
    out
}

/// True when something on PORT answers a RESP PING like Redis (PONG, or NOAUTH with a password).
fn redis_answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) if n > 0 => {
            let reply = String::from_utf8_lossy(&buf[..n]);
            reply.starts_with("+PONG") || reply.starts_with("-NOAUTH")
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// (uid, gid) of the `postgres` account when we run as root (PostgreSQL refuses root).
fn pg_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    static OWNER: OnceLock<(u32, u32)> = OnceLock::new();
    Some(*OWNER.get_or_init(|| {
        let name = std::ffi::CString::new("postgres").unwrap();
        // SAFETY: getpwnam with a valid C string; the result is read before any other call.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            panic!(
                "running as root, but there is no `postgres` user to run PostgreSQL as: \
                 install PostgreSQL (bash .ci/services.sh install) or create the user \
                 (useradd --system postgres)"
            );
        }
        // SAFETY: pw is non-null and points to a valid passwd record.
        unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
    }))
}

/// Give PATH to the postgres account (when root).
fn chown_to_pg(path: &Path) {
    if let Some((uid, gid)) = pg_owner() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// A PostgreSQL program run as the cluster owner.
fn pg_command(name: &str, cwd: &Path) -> Command {
    let mut cmd = Command::new(pg_bin(name));
    cmd.current_dir(cwd).stdin(Stdio::null());
    for var in [
        "PGDATA",
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGOPTIONS",
    ] {
        cmd.env_remove(var);
    }
    if let Some((uid, gid)) = pg_owner() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn cp_a(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap_or_else(|e| panic!("run cp: {e}"));
    assert!(
        out.status.success(),
        "cp -a {} {}: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Start `postgres` on DATA/PORT and wait until it accepts connections.
fn spawn_postgres(
    dir: &Path,
    data: &Path,
    port: u16,
    extra: &[String],
) -> Result<Child, StartError> {
    let sock = dir.join("s");
    if !sock.exists() {
        fs::create_dir(&sock).expect("create socket dir");
        chown_to_pg(&sock);
    }
    let log = dir.join("postgres.log");
    let (out, err) = log_stdio(&log);
    let mut child = pg_command("postgres", dir)
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string()])
        .arg("-k")
        .arg(&sock)
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
        .args(["-c", "synchronous_commit=off"])
        .args(["-c", "shared_buffers=64MB", "-c", "max_connections=100"])
        .args(["-c", "logging_collector=off"])
        .args(extra)
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn postgres: {e}"));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let text = format!("exit {status}\n{}", read_lossy(&log));
            return Err(if looks_like_addr_in_use(&text) {
                StartError::AddrInUse(text)
            } else {
                StartError::Other(text)
            });
        }
        let ready = Command::new(pg_bin("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-t", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ready {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            shut_down(&mut child, libc::SIGQUIT, Duration::from_secs(5));
            return Err(StartError::Other(format!(
                "not ready after {READY_TIMEOUT:?}\n{}",
                read_lossy(&log)
            )));
        }
        sleep(Duration::from_millis(50));
    }
}

/// Start postgres on a free port (retrying on port races).
fn spawn_postgres_anywhere(dir: &Path, data: &Path, extra: &[String]) -> (u16, Child) {
    let mut last = String::new();
    for _ in 0..START_ATTEMPTS {
        let port = free_port();
        match spawn_postgres(dir, data, port, extra) {
            Ok(child) => return (port, child),
            Err(StartError::AddrInUse(log)) => last = log,
            Err(StartError::Other(log)) => panic!("postgres failed to start:\n{log}"),
        }
    }
    panic!("postgres: no usable port after {START_ATTEMPTS} attempts:\n{last}")
}

fn run_psql(port: u16, db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(pg_bin("psql"))
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "psql failed ({}) for: {sql}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Data directory of an initialised cluster with database `analytics`, built once and cached
/// under CARGO_TARGET_TMPDIR (keyed by PostgreSQL version and user).
fn pg_template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let version = Command::new(pg_bin("postgres"))
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let key: String = version
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let final_dir = cache.join(format!("pg-template-{}-uid{euid}", key.trim_matches('_')));
        if final_dir.join("PG_VERSION").is_file() {
            fix_template_owner(&final_dir);
            return final_dir;
        }

        // initdb in a directory the postgres account can reach, then copy into the cache.
        let work = temp_dir("ad-pgtpl-");
        chown_to_pg(work.path());
        let data = work.path().join("data");
        let out = pg_command("initdb", work.path())
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            ])
            .arg("--no-sync")
            .output()
            .unwrap_or_else(|e| panic!("run initdb: {e}"));
        assert!(
            out.status.success(),
            "initdb failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (port, mut child) = spawn_postgres_anywhere(work.path(), &data, &[]);
        run_psql(port, "postgres", "create database analytics").unwrap_or_else(|e| panic!("{e}"));
        shut_down(&mut child, libc::SIGINT, Duration::from_secs(60)); // clean (fast) shutdown
        let _ = fs::remove_file(data.join("postmaster.opts"));

        fs::create_dir_all(&cache).expect("create CARGO_TARGET_TMPDIR");
        let staging = cache.join(format!(
            ".pg-template-{}-{}.tmp",
            std::process::id(),
            next_random()
        ));
        cp_a(&data, &staging);
        if fs::rename(&staging, &final_dir).is_err() {
            // Another test process won the race: use its template.
            let _ = fs::remove_dir_all(&staging);
            assert!(
                final_dir.join("PG_VERSION").is_file(),
                "could not install the PostgreSQL template at {}",
                final_dir.display()
            );
        }
        final_dir
    })
}

/// A cached template copied without its owner (e.g. a target directory copied by root) makes
/// every cluster fail with "Permission denied": give it back to the postgres account.
fn fix_template_owner(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Some((uid, gid)) = pg_owner() else {
        return;
    };
    let owned = fs::metadata(dir.join("PG_VERSION")).is_ok_and(|m| m.uid() == uid);
    if !owned {
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("run chown: {e}"));
        assert!(
            out.status.success(),
            "chown -R {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A private PostgreSQL cluster (trust auth, database `analytics`) on a free port of 127.0.0.1.
/// Tuned for tests: fsync off.
pub struct PgServer {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// Extra `postgres` arguments (kept for `restart`).
    extra: Vec<String>,
}

impl PgServer {
    pub fn start() -> Self {
        Self::start_prepared(|_| {}, Vec::new())
    }

    /// A cluster with TLS on (CERTS' server certificate) and
    /// HBA as its whole pg_hba.conf. Keep a line that lets `postgres` in over TCP without a
    /// password (`host all postgres 127.0.0.1/32 trust`): the harness's psql needs it.
    pub fn start_tls(certs: &TestCerts, hba: &str) -> Self {
        Self::start_tls_with(&certs.server_cert, &certs.server_key, hba)
    }

    /// `start_tls` with another server certificate and key.
    pub fn start_tls_with(cert: &Path, key: &Path, hba: &str) -> Self {
        let extra = [
            "ssl=on",
            "ssl_cert_file=server.crt",
            "ssl_key_file=server.key",
        ]
        .iter()
        .flat_map(|kv| ["-c".to_string(), kv.to_string()])
        .collect();
        Self::start_prepared(
            |data| {
                for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
                    let dest = data.join(to);
                    fs::copy(from, &dest).unwrap_or_else(|e| panic!("copy {to}: {e}"));
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&dest, fs::Permissions::from_mode(0o600))
                        .expect("chmod 600");
                    chown_to_pg(&dest);
                }
                let hba_path = data.join("pg_hba.conf");
                fs::write(&hba_path, hba).expect("write pg_hba.conf");
                chown_to_pg(&hba_path);
            },
            extra,
        )
    }

    fn start_prepared(prepare: impl FnOnce(&Path), extra: Vec<String>) -> Self {
        let dir = temp_dir("ad-pg-");
        chown_to_pg(dir.path());
        let data = dir.path().join("data");
        cp_a(pg_template(), &data);
        prepare(&data);
        let (port, child) = spawn_postgres_anywhere(dir.path(), &data, &extra);
        PgServer {
            port,
            dir,
            child: Some(child),
            extra,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://postgres@127.0.0.1:PORT/analytics`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/analytics", self.port)
    }

    /// Run SQL with psql against `analytics`; trimmed unaligned output (`-At`). Panics with
    /// psql's stderr on failure.
    pub fn psql(&self, sql: &str) -> String {
        run_psql(self.port, "analytics", sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `psql` but returns the error text instead of panicking.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        run_psql(self.port, "analytics", sql)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The server's log (all runs).
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("postgres.log"))
    }

    /// Clean ("fast") shutdown: committed data survives a later `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            shut_down(&mut child, libc::SIGINT, Duration::from_secs(60));
        }
    }

    /// Crash-like ("immediate") shutdown, as `pg_ctl stop -m immediate`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            shut_down(&mut child, libc::SIGQUIT, Duration::from_secs(20));
        }
    }

    /// Start again on the same port and data, wait until ready.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match spawn_postgres(self.dir.path(), &self.data(), self.port, &self.extra) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(StartError::AddrInUse(_)) if Instant::now() < deadline => {
                    sleep(Duration::from_millis(200))
                }
                Err(StartError::AddrInUse(log)) | Err(StartError::Other(log)) => {
                    panic!("postgres restart on port {} failed:\n{log}", self.port)
                }
            }
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
        // The TempDir removes the data directory.
    }
}

impl PgServer {
    /// Freeze the whole server (SIGSTOP to the postmaster, then to every process it started:
    /// backends, checkpointer, ...): connections stay open and nothing answers, not even a new
    /// connection's login. The guard thaws it (SIGCONT) when dropped, also when a test panics.
    pub fn freeze(&self) -> PgFrozen {
        let postmaster = self.pid().expect("postgres is not running");
        // The postmaster first, so it starts no process after the list is taken.
        signal(postmaster, libc::SIGSTOP);
        let mut pids = vec![postmaster];
        for child in children_of(postmaster) {
            signal(child, libc::SIGSTOP);
            pids.push(child);
        }
        PgFrozen { pids }
    }
}

/// A frozen PostgreSQL (see `PgServer::freeze`); dropping it thaws the server.
pub struct PgFrozen {
    pids: Vec<u32>,
}

impl PgFrozen {
    /// Thaw now (the same as dropping the guard).
    pub fn thaw(self) {}
}

impl Drop for PgFrozen {
    fn drop(&mut self) {
        for &pid in self.pids.iter().rev() {
            signal(pid, libc::SIGCONT);
        }
    }
}

/// Pids whose parent is PARENT (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // After "pid (comm)": state, then the parent's pid.
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The application
// ---------------------------------------------------------------------------------------------

/// The `analytics-demo` binary with every variable it reads (`config::ENV_VARS`) removed from
/// the inherited environment, so a test sees only what it passes.
pub fn app_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_analytics-demo"));
    for var in analytics_demo::config::ENV_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// The `analytics-demo` binary running as a child process.
pub struct App {
    pub child: Child,
    /// Where its HTTP server is reached (127.0.0.1 when bound to 0.0.0.0).
    pub http: SocketAddr,
    log_path: PathBuf,
    _dir: TempDir,
}

impl App {
    /// Run the binary with ARGS and ENV (on top of a cleaned environment). BIND_ADDRESS defaults
    /// to 127.0.0.1:<free port>. stdout and stderr go to a log file (`log()`).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> App {
        let dir = temp_dir("ad-app-");
        let log_path = dir.path().join("app.log");
        let bind = env
            .iter()
            .rev()
            .find(|(k, _)| *k == "BIND_ADDRESS")
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        let mut http: SocketAddr = bind
            .parse()
            .unwrap_or_else(|e| panic!("BIND_ADDRESS {bind:?} is not host:port: {e}"));
        if http.ip().is_unspecified() {
            http.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let (out, err) = log_stdio(&log_path);
        let child = app_command()
            .env("BIND_ADDRESS", &bind)
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn analytics-demo: {e}"));
        App {
            child,
            http,
            log_path,
            _dir: dir,
        }
    }

    /// `spawn` and wait until /health answers 200; when the app died because its (free) port was
    /// taken meanwhile, try again on another port. Panics with the log when it never gets healthy.
    pub fn spawn_healthy(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> App {
        let mut last_log = String::new();
        for _ in 0..3 {
            let app = App::spawn(args, env);
            if app.wait_healthy(timeout) {
                return app;
            }
            last_log = app.log();
            let port_race = !app.alive()
                && !env.iter().any(|(k, _)| *k == "BIND_ADDRESS")
                && last_log
                    .to_ascii_lowercase()
                    .contains("address already in use");
            if !port_race {
                break;
            }
        }
        panic!("analytics-demo did not become healthy within {timeout:?}:\n{last_log}")
    }

    /// Run the binary to completion (for subcommands such as `verify`): exit status and log.
    pub fn run(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> (ExitStatus, String) {
        let mut app = App::spawn(args, env);
        let status = app.wait(timeout).unwrap_or_else(|| {
            let _ = app.child.kill();
            panic!(
                "analytics-demo {args:?} did not finish within {timeout:?}:\n{}",
                app.log()
            )
        });
        (status, app.log())
    }

    /// Poll GET /health until it answers 200 (false on timeout or when the process exited).
    pub fn wait_healthy(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.alive() {
                return false;
            }
            if self.get("/health").0 == 200 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// True while the process has not exited (a zombie counts as exited).
    pub fn alive(&self) -> bool {
        match fs::read_to_string(format!("/proc/{}/stat", self.child.id())) {
            // Field 3, after "pid (comm)", is the state; Z = zombie, X = dead.
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X"),
            Err(_) => false,
        }
    }

    /// GET PATH: (status, body). Status 0 (and the error text as body) when no HTTP answer.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_request(self.http, "GET", path, &[], "")
    }

    /// POST BODY to PATH with extra HEADERS: (status, body).
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        http_request(self.http, "POST", path, headers, body)
    }

    /// SIGTERM, then wait (60 s at most, then SIGKILL).
    pub fn terminate(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        signal(self.child.id(), libc::SIGTERM);
        match self.wait(Duration::from_secs(60)) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                self.child.wait().expect("reap analytics-demo")
            }
        }
    }

    /// Send a signal (e.g. `libc::SIGINT`).
    pub fn signal(&self, sig: libc::c_int) {
        signal(self.child.id(), sig);
    }

    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_timeout(&mut self.child, timeout)
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Minimal HTTP/1.1 client (std only)
// ---------------------------------------------------------------------------------------------

/// One HTTP/1.1 request with `Connection: close`: (status, body). Handles Content-Length,
/// chunked and read-to-close bodies. Status 0 with the error text when there is no answer.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    match try_http_request(addr, method, path, headers, body) {
        Ok(reply) => reply,
        Err(e) => (0, e),
    }
}

/// GET PATH from ADDR: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], "")
}

fn try_http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;

    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut head_end = None;
    let mut content_length = None;
    let mut chunked = false;
    let mut status = 0u16;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            // A reset after the full response (server closed early) is not an error for us.
            Err(e) if head_end.is_some() && e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(format!("read from {addr}: {e}")),
        };
        raw.extend_from_slice(&buf[..n]);
        if head_end.is_none() {
            if let Some(pos) = find(&raw, b"\r\n\r\n") {
                head_end = Some(pos + 4);
                let head = String::from_utf8_lossy(&raw[..pos]).into_owned();
                let mut lines = head.split("\r\n");
                status = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad HTTP status line from {addr}: {head:?}"))?;
                for line in lines {
                    if let Some((name, value)) = line.split_once(':') {
                        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                        if name == "content-length" {
                            content_length = value.parse::<usize>().ok();
                        } else if name == "transfer-encoding"
                            && value.to_ascii_lowercase().contains("chunked")
                        {
                            chunked = true;
                        }
                    }
                }
                if method == "HEAD" || status == 204 || status == 304 {
                    content_length = Some(0);
                }
            }
        }
        if let Some(start) = head_end {
            let body = &raw[start..];
            if let Some(len) = content_length.filter(|_| !chunked) {
                if body.len() >= len {
                    return Ok((status, String::from_utf8_lossy(&body[..len]).into_owned()));
                }
            } else if chunked {
                if let Some(decoded) = dechunk(body) {
                    return Ok((status, String::from_utf8_lossy(&decoded).into_owned()));
                }
            }
        }
        if n == 0 {
            return match head_end {
                Some(start) if content_length.is_none() && !chunked => {
                    Ok((status, String::from_utf8_lossy(&raw[start..]).into_owned()))
                }
                _ => Err(format!(
                    "connection to {addr} closed mid-response: {:?}",
                    String::from_utf8_lossy(&raw)
                )),
            };
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decode a complete chunked body; None while incomplete.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
        let size = usize::from_str_radix(&size_text, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out); // trailers, if any, are ignored
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Write TEXT to a fresh file in DIR (helper for tests that need config files).
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

// ---------------------------------------------------------------------------------------------
// Helpers for engine tests: one-shot runs with stdout/stderr apart, polling, log and metric parsing
// ---------------------------------------------------------------------------------------------

/// What a run of the binary to completion printed, stdout and stderr apart.
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    /// The exit code (None when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Run the binary with ARGS and ENV (on top of the cleaned environment, like `App::spawn`) to
/// completion, keeping stdout and stderr apart. Panics when it does not finish within TIMEOUT.
pub fn run_binary(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> RunOutput {
    let dir = temp_dir("ad-run-");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let out = File::create(&out_path).expect("create stdout file");
    let err = File::create(&err_path).expect("create stderr file");
    let mut child = app_command()
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn analytics-demo: {e}"));
    let status = wait_timeout(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "analytics-demo {args:?} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            read_lossy(&out_path),
            read_lossy(&err_path)
        )
    });
    RunOutput {
        status,
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
    }
}

/// Poll COND every 100 ms until it is true (true) or TIMEOUT passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(100));
    }
}

/// True once the app started its load: /metrics counts at least one event (of any outcome).
pub fn load_running(app: &App) -> bool {
    let (status, body) = app.get("/metrics");
    status == 200 && metric_sum(&body, "analytics_events_total", &[]).unwrap_or(0.0) > 0.0
}

/// Spawns the app and waits until its load runs (events counted in /metrics), or until a
/// short `--duration` run has finished having made events. Every start must start the load:
/// one that does not within 60 s fails the test with the app's log (no retry).
pub fn spawn_running(args: &[&str], env: &[(&str, &str)]) -> App {
    let app = App::spawn(args, env);
    let settled = wait_until(Duration::from_secs(60), || {
        !app.alive() || load_running(&app)
    });
    let finished_with_events =
        || summary_from_log(&app.log()).is_some_and(|s| s["events"].as_u64().unwrap_or(0) > 0);
    if settled && (app.alive() || finished_with_events()) {
        return app;
    }
    panic!("the load did not start within 60 s:\n{}", app.log())
}

/// The run summary from a `--log-format json` log: the JSON log line with
/// `"message":"summary"`, whose `summary` field holds the summary as a JSON string.
pub fn summary_from_log(log: &str) -> Option<serde_json::Value> {
    log.lines()
        .rev()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("message").and_then(|m| m.as_str()) == Some("summary"))
        .filter_map(|v| {
            let s = v.get("summary")?.as_str()?.to_string();
            serde_json::from_str(&s).ok()
        })
        .next()
}

/// Labels of one Prometheus sample line `name{a="x",b="y"} value`; None if NAME differs.
fn prom_sample<'a>(line: &'a str, name: &str) -> Option<(Vec<(&'a str, &'a str)>, f64)> {
    let rest = line.strip_prefix(name)?;
    let (labels, value) = if let Some(inner) = rest.strip_prefix('{') {
        let (labels, value) = inner.split_once('}')?;
        (labels, value)
    } else if rest.starts_with(' ') {
        ("", rest)
    } else {
        return None;
    };
    let value: f64 = value.split_whitespace().next()?.parse().ok()?;
    let labels = labels
        .split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.trim(), v.trim().trim_matches('"')))
        })
        .collect();
    Some((labels, value))
}

/// Sum of the samples of metric NAME (exact name) whose labels include all of LABELS.
/// None when no sample matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((have, value)) = prom_sample(line, name) else {
            continue;
        };
        if labels.iter().all(|want| have.contains(want)) {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// Event type names by their `event_type` code (the app's `EventType` order).
pub const TYPE_NAMES: [&str; 5] = ["page_view", "click", "conversion", "signup", "purchase"];

/// Arguments of a workload run against the given servers: one unpinned shard, JSON logs, a
/// progress line every second, then `defaults` (a test file's own) and `extra` (a test's).
/// argh refuses a repeated option, so `extra` must not repeat one of `defaults`.
pub fn app_args(redis_url: &str, pg_url: &str, defaults: &[&str], extra: &[&str]) -> Vec<String> {
    let base = [
        "--redis-url",
        redis_url,
        "--database-url",
        pg_url,
        "--shards",
        "1",
        "--no-pin",
        "--log-format",
        "json",
        "--progress-interval",
        "1",
    ];
    base.iter()
        .chain(defaults)
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

/// `analytics-demo verify --json` against the given servers: exit code and the verdict.
/// Panics (with both outputs) when it prints no JSON.
pub fn verify_json(redis_url: &str, pg_url: &str) -> (i32, serde_json::Value) {
    verify_json_with(redis_url, pg_url, &[])
}

/// `verify_json` with EXTRA arguments (e.g. `--redis-protocol 2`).
pub fn verify_json_with(redis_url: &str, pg_url: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec![
        "verify",
        "--redis-url",
        redis_url,
        "--database-url",
        pg_url,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = run_binary(&args, &[], Duration::from_secs(60));
    let code = out.code().expect("verify killed by a signal");
    let verdict = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "verify (exit {code}) printed no JSON ({e}):\nstdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        )
    });
    (code, verdict)
}

// ---------------------------------------------------------------------------------------------
// Throwaway certificates (openssl CLI)
// ---------------------------------------------------------------------------------------------

/// A test CA, a server certificate it signed (SAN DNS:localhost and IP:127.0.0.1), a server
/// certificate valid only for DNS:localhost, a client certificate, and an unrelated CA: PEM
/// files in a temporary directory, made with the `openssl` command (EC P-256 keys, 2 days).
pub struct TestCerts {
    dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Valid for DNS:localhost only (not for 127.0.0.1).
    pub dns_only_cert: PathBuf,
    pub dns_only_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed none of the above.
    pub other_ca: PathBuf,
}

impl TestCerts {
    pub fn generate() -> TestCerts {
        let dir = temp_dir("ad-certs-");
        // Readable by the postgres account too (it reads its copies, but keep it simple).
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let d = dir.path();
        let ossl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| {
                    panic!("run openssl (install it: apt-get install openssl): {e}")
                });
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, cn) in [
            ("ca", "analytics-demo test CA"),
            ("other-ca", "some other CA"),
        ] {
            let (key, crt, subj) = (
                format!("{name}.key"),
                format!("{name}.crt"),
                format!("/CN={cn}"),
            );
            let mut args = vec![
                "req", "-x509", "-days", "2", "-subj", &subj, "-keyout", &key, "-out", &crt,
            ];
            args.extend(ec);
            args.extend([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            ossl(&args);
        }
        let leaf = |name: &str, cn: &str, ext: &str| {
            let ext_file = format!("{name}.ext");
            fs::write(d.join(&ext_file), ext).expect("write ext file");
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            let subj = format!("/CN={cn}");
            let mut args = vec!["req", "-new", "-subj", &subj, "-keyout", &key, "-out", &csr];
            args.extend(ec);
            ossl(&args);
            ossl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &ext_file,
            ]);
            fs::set_permissions(d.join(&key), fs::Permissions::from_mode(0o644)).expect("chmod");
        };
        let server_ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                          extendedKeyUsage=serverAuth\n";
        leaf(
            "server",
            "localhost",
            &format!("{server_ext}subjectAltName=DNS:localhost,IP:127.0.0.1\n"),
        );
        leaf(
            "dns-only",
            "localhost",
            &format!("{server_ext}subjectAltName=DNS:localhost\n"),
        );
        leaf(
            "client",
            "app",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        );
        TestCerts {
            ca: d.join("ca.crt"),
            server_cert: d.join("server.crt"),
            server_key: d.join("server.key"),
            dns_only_cert: d.join("dns-only.crt"),
            dns_only_key: d.join("dns-only.key"),
            client_cert: d.join("client.crt"),
            client_key: d.join("client.key"),
            other_ca: d.join("other-ca.crt"),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
