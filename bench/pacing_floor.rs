//! `pacing-floor`: the least CPU an exactly paced Redis client can spend on this machine.
//!
//! `make bench-efficiency` builds this file with plain `rustc` (standard library only) and runs
//! it beside our client and memtier at the same command rate, so the table shows what any
//! client that sends each command at its own due time must pay, whatever its runtime.
//!
//! Command k is due at k / rate seconds. Like our pacer, it sleeps until the first grid point at
//! or after the next due command, sends every command due by then (each on the next of the
//! connections, round robin), then reads their replies with blocking reads. Nothing else: no
//! latency histogram, no metrics, no runtime, one thread. `--wakes-only` keeps the sleeps and
//! sends nothing: the cost of waking at those grid points alone.
//!
//! Usage: pacing-floor --rate R [--addr 127.0.0.1:6379] [--connections 50] [--seconds 10]
//!        [--grid-us 100] [--set-every 11] [--keys 100000] [--data-size 32] [--wakes-only]
//! It prints one JSON line at the end: {"commands": N, "seconds": S}.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

struct Args {
    addr: String,
    rate: f64,
    connections: usize,
    seconds: f64,
    grid_us: u64,
    set_every: u64,
    keys: u64,
    data_size: usize,
    wakes_only: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:6379".into(),
        rate: 0.0,
        connections: 50,
        seconds: 10.0,
        grid_us: 100,
        set_every: 11,
        keys: 100_000,
        data_size: 32,
        wakes_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--wakes-only" {
            a.wakes_only = true;
            continue;
        }
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => a.addr = v.clone(),
            "--rate" => a.rate = num(&flag, &v)?,
            "--connections" => a.connections = num(&flag, &v)?,
            "--seconds" => a.seconds = num(&flag, &v)?,
            "--grid-us" => a.grid_us = num(&flag, &v)?,
            "--set-every" => a.set_every = num(&flag, &v)?,
            "--keys" => a.keys = num(&flag, &v)?,
            "--data-size" => a.data_size = num(&flag, &v)?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.rate.is_nan()
        || a.rate <= 0.0
        || a.connections == 0
        || a.grid_us == 0
        || a.set_every == 0
        || a.keys == 0
    {
        return Err("--rate, --connections, --grid-us, --set-every and --keys must be > 0".into());
    }
    Ok(a)
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag}: not a number: {v}"))
}

struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    line: String,
    bulk: Vec<u8>,
}

impl Conn {
    fn open(addr: &str) -> io::Result<Conn> {
        let w = TcpStream::connect(addr)?;
        w.set_nodelay(true)?;
        let r = BufReader::new(w.try_clone()?);
        Ok(Conn {
            w,
            r,
            line: String::new(),
            bulk: Vec::new(),
        })
    }

    /// Reads one RESP2/RESP3 simple reply: a status, an error, an integer, a null or a bulk.
    fn reply(&mut self) -> io::Result<()> {
        self.line.clear();
        if self.r.read_line(&mut self.line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed"));
        }
        match self.line.as_bytes().first() {
            Some(b'+' | b':' | b'_') => Ok(()),
            Some(b'$') => {
                let n: i64 = self.line[1..].trim_end().parse().unwrap_or(-1);
                if n >= 0 {
                    self.bulk.resize(n as usize + 2, 0);
                    self.r.read_exact(&mut self.bulk)?;
                }
                Ok(())
            }
            _ => Err(io::Error::other(format!(
                "unexpected reply {:?}",
                self.line
            ))),
        }
    }
}

fn run(a: &Args) -> io::Result<(u64, f64)> {
    let mut conns = Vec::new();
    if !a.wakes_only {
        for _ in 0..a.connections {
            conns.push(Conn::open(&a.addr)?);
        }
    }
    let value = "x".repeat(a.data_size);
    let step = a.grid_us as f64 * 1e-6;
    let total = (a.rate * a.seconds) as u64;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut cmd = Vec::with_capacity(128 + a.data_size);
    let mut sent: Vec<usize> = Vec::new();
    let start = Instant::now();
    let mut k: u64 = 0;
    // The grid point (an index of steps) at or after command k's due time.
    let point_of = |k: u64| (k as f64 / a.rate / step).ceil() as u64;
    while k < total {
        let point = point_of(k);
        let at = start + Duration::from_secs_f64(point as f64 * step);
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        sent.clear();
        while k < total && point_of(k) <= point {
            if !a.wakes_only {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let key = format!("memtier-{}", seed % a.keys);
                cmd.clear();
                if k % a.set_every == 0 {
                    write!(
                        cmd,
                        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                        key.len(),
                        value.len()
                    )?;
                } else {
                    write!(cmd, "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len())?;
                }
                let c = (k % a.connections as u64) as usize;
                conns[c].w.write_all(&cmd)?;
                sent.push(c);
            }
            k += 1;
        }
        for &c in &sent {
            conns[c].reply()?;
        }
    }
    Ok((k, start.elapsed().as_secs_f64()))
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pacing-floor: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&a) {
        Ok((n, secs)) => {
            println!("{{\"commands\": {n}, \"seconds\": {secs:.3}}}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pacing-floor: {e}");
            ExitCode::FAILURE
        }
    }
}
