//! Throwaway PostgreSQL clusters, copied from a template built once.

use super::*;

/// (uid, gid) of the `postgres` account when we run as root (PostgreSQL refuses root).
pub(crate) fn pg_owner() -> Option<(u32, u32)> {
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
pub(crate) fn chown_to_pg(path: &Path) {
    if let Some((uid, gid)) = pg_owner() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// A PostgreSQL program run as the cluster owner.
pub(crate) fn pg_command(name: &str, cwd: &Path) -> Command {
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

pub(crate) fn cp_a(from: &Path, to: &Path) {
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
pub(crate) fn spawn_postgres(
    dir: &Path,
    data: &Path,
    port: u16,
    extra: &[String],
) -> Result<Child, String> {
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
            return Err(format!("exit {status}\n{}", read_lossy(&log)));
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
            return Err(format!(
                "not ready after {READY_TIMEOUT:?}\n{}",
                read_lossy(&log)
            ));
        }
        sleep(Duration::from_millis(50));
    }
}

/// Start postgres on a port from `free_port` (reserved for this process: no retry).
pub(crate) fn spawn_postgres_anywhere(dir: &Path, data: &Path, extra: &[String]) -> (u16, Child) {
    let port = free_port();
    (
        port,
        started("postgres", port, spawn_postgres(dir, data, port, extra)),
    )
}

pub(crate) fn run_psql(port: u16, db: &str, sql: &str) -> Result<String, String> {
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
pub(crate) fn pg_template() -> &'static Path {
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
pub(crate) fn fix_template_owner(dir: &Path) {
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

    /// A single integer from SQL.
    pub fn int(&self, sql: &str) -> i64 {
        let out = self.psql(sql);
        out.parse()
            .unwrap_or_else(|e| panic!("{sql}: not an integer: {out:?} ({e})"))
    }

    /// Like `int`, but 0 while the query fails (e.g. the table does not exist yet).
    pub fn try_int(&self, sql: &str) -> i64 {
        self.try_psql(sql)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
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
        let start = spawn_postgres(self.dir.path(), &self.data(), self.port, &self.extra);
        self.child = Some(started("postgres restart", self.port, start));
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
pub(crate) fn children_of(parent: u32) -> Vec<u32> {
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
