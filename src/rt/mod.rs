//! The runtime room: what every command needs to run on glommio, below everything else (it
//! imports nothing of this crate).
//!
//! - [`executor`]: starting a named executor (pinned or not), with the guard against glommio's
//!   park bug, and the preemption intervals of our executors.
//! - [`time`]: a future bounded by a timeout or a deadline; keeping an idle executor awake.
//! - [`sync`]: single-threaded wake-ups (`Notify`, `Latch`).
//! - Here: the CPUs this process may use, where an executor goes, the seed of a run, the
//!   signals that stop one, and a second handle on a socket.

pub mod executor;
pub mod sync;
pub mod time;

use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use glommio::Placement;

/// CPUs this process may run on (its affinity mask, so containers' cpusets are honoured).
pub fn usable_cpus() -> Vec<usize> {
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => ids.into_iter().map(|c| c.id).collect(),
        _ => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Where an executor runs: on `cpu` when pinning, else wherever the kernel puts it.
pub fn placement(pin: bool, cpu: usize) -> Placement {
    if pin {
        Placement::Fixed(cpu)
    } else {
        Placement::Unbound
    }
}

/// A seed that differs between runs: the clock's nanoseconds mixed with the pid.
pub fn seed_from_clock() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

/// Sets `flag` on SIGINT and SIGTERM (the run then stops in order). The error says what failed.
pub fn stop_on_signals(flag: &Arc<AtomicBool>) -> Result<(), String> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, flag.clone())
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }
    Ok(())
}

/// A socket pair that carries a byte on each SIGINT and SIGTERM (`signal_hook`'s pipe, written
/// by the handler), so a task can sleep until one comes instead of polling a flag: `.0` is
/// the end to read, `.1` one more end to write to (for a stop decided by another thread).
pub fn signal_bell() -> Result<(UnixStream, UnixStream), String> {
    let err = |e: std::io::Error| format!("cannot install signal handler: {e}");
    let (read, write) = UnixStream::pair().map_err(err)?;
    write.set_nonblocking(true).map_err(err)?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let w = write.try_clone().map_err(err)?;
        signal_hook::low_level::pipe::register(sig, w).map_err(err)?;
    }
    Ok((read, write))
}

/// A second handle on a socket (glommio's `TcpStream` cannot be split, and a closing HTTP
/// connection must outlive hyper's handle).
pub fn dup_stream(stream: &glommio::net::TcpStream) -> std::io::Result<glommio::net::TcpStream> {
    use std::os::unix::io::{AsRawFd, FromRawFd};
    // SAFETY: dup returns a new fd we own exclusively, or -1 (checked).
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, open socket fd owned by nobody else.
    Ok(unsafe { glommio::net::TcpStream::from_raw_fd(fd) })
}
