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

/// A TCP port on 127.0.0.1 that is free right now and reserved for this process.
///
/// Ports come from 15000-31999, below Linux's ephemeral range (32768-60999), so they do not
/// collide with the local ports of client connections. A port is handed out once per process
/// and reserved across processes by an exclusive `flock` on a file named after it (under the
/// temporary directory), held until the process exits: two test binaries or two checkouts
/// running their tests at once never get the same port. A server that still fails to bind one
/// met a process outside this harness, which the starters report as an error.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = 15000 + (next_random() % 17000) as u16;
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        let handed_out = guard.get_or_insert_with(HashSet::new);
        if handed_out.contains(&port) {
            continue;
        }
        let Some(lock) = reserve_port(port) else {
            continue;
        };
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
            continue;
        }
        handed_out.insert(port);
        // Kept open (and so locked) for the life of the process.
        std::mem::forget(lock);
        return port;
    }
    panic!("free_port: no free TCP port found on 127.0.0.1");
}

/// The cross-process reservation of PORT: its lock file, locked, or None if another process
/// holds it.
fn reserve_port(port: u16) -> Option<File> {
    use std::os::fd::AsRawFd;
    let dir = std::env::temp_dir().join("analytics-demo-test-ports");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join(port.to_string());
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: flock on a descriptor this function owns; no memory is shared.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    locked.then_some(file)
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

/// The server a start produced, or a panic saying why it did not: its exit status or timeout,
/// and its log. A port taken by a process outside this harness (see `free_port`) is named as
/// such.
pub(crate) fn started(what: &str, port: u16, start: Result<Child, String>) -> Child {
    match start {
        Ok(child) => child,
        Err(log)
            if log.contains("Address already in use")
                || log.contains("could not create any TCP/IP sockets") =>
        {
            panic!("{what}: port {port}, reserved by free_port, is held by another process:\n{log}")
        }
        Err(log) => panic!("{what} failed to start on port {port}:\n{log}"),
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
