//! Throwaway redis-server processes: one server, and clusters.

use super::*;

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
pub(crate) struct RedisTls {
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
        server.port = free_port();
        server.child = Some(started("redis-server", server.port, server.spawn()));
        server
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&self) -> Result<Child, String> {
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
                return Err(format!("exit {status}\n{}", read_lossy(&self.log_path())));
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
                return Err(format!(
                    "not ready after {READY_TIMEOUT:?}\n{}",
                    read_lossy(&self.log_path())
                ));
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
        self.child = Some(started("redis-server restart", self.port, self.spawn()));
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
pub(crate) fn cluster_node(node_timeout_ms: u32) -> RedisServer {
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
        // A primary learns that a node is its replica from the cluster bus, some time after
        // the replica knows it; until then it ignores the replica's manual failover request
        // (which then times out after 5 s).
        let agreed = wait_until(Duration::from_secs(60), || cluster.roles_agreed());
        assert!(agreed, "the nodes do not agree about who replicates whom");
        cluster
    }

    /// Every node sees every other node with the role (and primary) that node gives itself,
    /// over a connected bus link.
    fn roles_agreed(&self) -> bool {
        // The fields of a `CLUSTER NODES` line that matter: id, role, its primary's id.
        fn role(line: &str) -> Option<(String, bool, String)> {
            let f: Vec<&str> = line.split_whitespace().collect();
            let slave = f.get(2)?.split(',').any(|flag| flag == "slave");
            Some((f[0].to_string(), slave, f.get(3)?.to_string()))
        }
        let views: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.cli(&["CLUSTER", "NODES"]))
            .collect();
        let own: Vec<(String, bool, String)> = views
            .iter()
            .filter_map(|v| v.lines().find(|l| l.contains("myself")).and_then(role))
            .collect();
        own.len() == self.nodes.len()
            && views.iter().all(|v| {
                own.iter().all(|me| {
                    v.lines().any(|l| {
                        role(l).as_ref() == Some(me)
                            && (l.contains("myself") || l.contains(" connected"))
                    })
                })
            })
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

pub(crate) fn redis_cli_tool(args: &[&str]) -> (bool, String) {
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

pub(crate) fn redis_cli_raw(args: &[&str]) -> String {
    let (ok, out) = redis_cli_tool(args);
    assert!(ok, "redis-cli {args:?} failed:\n{out}");
    out
}

/// True when something on PORT answers a RESP PING like Redis (PONG, or NOAUTH with a password).
pub(crate) fn redis_answers(port: u16) -> bool {
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
