//! Ports, binaries, processes, temporary files, polling.

use super::*;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
static RNG: AtomicU64 = AtomicU64::new(0);

pub(crate) fn next_random() -> u64 {
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
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/bin", "/usr/bin", "/usr/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

pub(crate) fn redis_bin(name: &str) -> PathBuf {
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

pub(crate) fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a pid we spawned; errors (process gone) are ignored.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Wait for CHILD to exit for at most TIMEOUT.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
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
pub(crate) fn shut_down(child: &mut Child, sig: libc::c_int, grace: Duration) {
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

pub(crate) fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Log file opened for appending, usable as stdout and stderr of a child.
pub(crate) fn log_stdio(path: &Path) -> (Stdio, Stdio) {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let err = file.try_clone().expect("clone log file handle");
    (Stdio::from(file), Stdio::from(err))
}

pub(crate) fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(std::env::temp_dir())
        .expect("create temporary directory")
}

pub(crate) enum StartError {
    /// The port was taken: try another one.
    AddrInUse(String),
    Other(String),
}

/// Starts a server again on its `port`, retrying for 10 s while the port is still held (the
/// old process's socket); panics with the log on any other failure.
pub(crate) fn restart_on_port(
    what: &str,
    port: u16,
    mut spawn: impl FnMut() -> Result<Child, StartError>,
) -> Child {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match spawn() {
            Ok(child) => return child,
            Err(StartError::AddrInUse(_)) if Instant::now() < deadline => {
                sleep(Duration::from_millis(200))
            }
            Err(StartError::AddrInUse(log)) | Err(StartError::Other(log)) => {
                panic!("{what} restart on port {port} failed:\n{log}")
            }
        }
    }
}

pub(crate) fn looks_like_addr_in_use(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not create any TCP/IP sockets")
}

/// Write TEXT to a fresh file in DIR (helper for tests that need config files).
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
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
