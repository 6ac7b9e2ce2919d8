//! process_* metrics from /proc (the Prometheus client conventions).

use crate::metrics as m;

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as f64
    } else {
        4096.0
    }
}

/// (cpu seconds, resident bytes) of this process.
pub fn sample() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let rss_pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(((utime + stime) / clock_ticks(), rss_pages * page_size()))
}

/// The process_* families in Prometheus text format (rendered directly: the CPU counter is
/// fractional, which the `metrics` crate's integer counters cannot express).
pub fn render(start_unix: f64) -> String {
    let mut out = String::new();
    if let Some((cpu, rss)) = sample() {
        out.push_str(&format!(
            "# HELP {c} Total user and system CPU time spent in seconds.\n# TYPE {c} counter\n{c} {cpu}\n",
            c = m::PROCESS_CPU_SECONDS
        ));
        out.push_str(&format!(
            "# HELP {r} Resident memory size in bytes.\n# TYPE {r} gauge\n{r} {rss}\n",
            r = m::PROCESS_RESIDENT_MEMORY
        ));
    }
    out.push_str(&format!(
        "# HELP {s} Start time of the process since unix epoch in seconds.\n# TYPE {s} gauge\n{s} {start_unix}\n",
        s = m::PROCESS_START_TIME
    ));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn should_read_own_cpu_and_memory() {
        let (cpu, rss) = super::sample().expect("proc is readable");
        assert!(cpu >= 0.0);
        assert!(rss > 1_000_000.0);
    }
}
