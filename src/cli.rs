//! Entry point behind `main`: configuration, logging, and the subcommands.

use crate::config::{self, Command, LogFormat, ParseOutcome};
use crate::control::api::{Cutover, Report, SwitchAnswer};

/// Runs the process; returns the exit code (0 ok, 1 failure or loss found, 2 usage).
pub fn main() -> i32 {
    let cmd = match config::parse_from_process() {
        ParseOutcome::Command(c) => c,
        ParseOutcome::Exit { code, output } => {
            if code == 0 {
                println!("{output}");
            } else {
                eprintln!("{output}");
            }
            return code;
        }
    };
    match cmd {
        Command::Run(cfg) => {
            init_logging(cfg.log_format);
            crate::engine::run(cfg)
        }
        Command::Verify(args) => {
            init_logging(LogFormat::Text);
            crate::verify::main(args)
        }
        Command::Report(args) => report(args),
        Command::Switch(args) => switch(args),
        Command::BenchRedis(args) => {
            init_logging(LogFormat::Text);
            crate::bench_redis::main(args)
        }
    }
}

/// Logs go to stderr (stdout carries the summary and reports), as text or JSON lines.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env(config::LOG_FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// `analytics-demo report`: the migration report of a running instance.
fn report(args: config::ReportArgs) -> i32 {
    if let Some((name, url, pg)) = args.run {
        return crate::run_report::main(name, url, pg, args.json);
    }
    let base = args.admin_url.clone();
    let got = crate::http::block_on(move || async move {
        crate::http::request(&base, hyper::Method::GET, "/report", None, None).await
    });
    match got {
        Ok(Ok((200, body))) => {
            if args.json {
                println!("{body}");
                return 0;
            }
            match serde_json::from_str::<Report>(&body) {
                Ok(report) => {
                    print!("{}", crate::control::migration::render(&report));
                    0
                }
                Err(e) => {
                    eprintln!("error: the report does not read as one: {e}");
                    1
                }
            }
        }
        Ok(Ok((status, body))) => {
            eprintln!(
                "error: {} answered {status}: {}",
                args.admin_url,
                body.trim()
            );
            1
        }
        Ok(Err(e)) | Err(e) => {
            eprintln!("error: cannot reach {}: {e}", args.admin_url);
            2
        }
    }
}

/// `switch --wait`: polls the instance's report until switch `seq` says every connection is
/// up on the new target (exit 0), or `--wait` seconds pass (exit 1, with how far it got).
fn wait_for_cutover(args: &config::SwitchArgs, seq: u64) -> i32 {
    let base = args.admin_url.clone();
    let wait = args.wait;
    let last = crate::http::block_on(move || async move {
        let deadline = std::time::Instant::now() + wait;
        let mut last = Cutover::default();
        let mut unreadable = None;
        loop {
            if let Ok((200, body)) =
                crate::http::request(&base, hyper::Method::GET, "/report", None, None).await
            {
                match serde_json::from_str::<Report>(&body) {
                    Ok(report) => {
                        unreadable = None;
                        let sw = report.migration.switches.iter().find(|s| s.seq == seq);
                        if let Some(sw) = sw {
                            last = sw.cutover;
                            if last.complete {
                                return (last, None);
                            }
                        }
                    }
                    Err(e) => unreadable = Some(e.to_string()),
                }
            }
            if std::time::Instant::now() >= deadline {
                return (last, unreadable);
            }
            glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    let c = match last {
        Ok((c, None)) => c,
        Ok((_, Some(e))) => {
            eprintln!("error: cannot wait for the cutover: the report does not read as one: {e}");
            return 1;
        }
        Err(e) => {
            eprintln!("error: cannot wait for the cutover: {e}");
            return 1;
        }
    };
    if c.complete {
        println!(
            "cutover complete after {:.3} s: {} connections on the new target",
            c.seconds.unwrap_or(0.0),
            c.connections
        );
        0
    } else {
        eprintln!(
            "error: cutover not complete after {} s: {} of {} connections on the new target",
            wait.as_secs(),
            c.connections_on_target,
            c.connections
        );
        1
    }
}

/// `analytics-demo switch --to URL`: asks a running instance to switch Redis.
fn switch(args: config::SwitchArgs) -> i32 {
    let base = args.admin_url.clone();
    let token = args.admin_token.clone();
    // The only place the full URL (with its password) leaves this process: the request body.
    let urls: Vec<String> = args.to.iter().map(|u| u.to_full_string()).collect();
    let body = serde_json::json!({ "url": urls.join(","), "mode": args.mode.as_str() }).to_string();
    // A 503 means the instance is still starting (its shards are not listening yet): retry
    // for a while rather than fail a scripted cutover.
    let got = crate::http::block_on(move || async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let r = crate::http::request(
                &base,
                hyper::Method::POST,
                "/admin/redis-target",
                token.as_deref(),
                Some(body.clone()),
            )
            .await;
            match r {
                Ok((503, _)) if std::time::Instant::now() < deadline => {
                    glommio::timer::sleep(std::time::Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    });
    match got {
        Ok(Ok((200, body))) => {
            println!("{}", body.trim());
            if args.wait.is_zero() {
                return 0;
            }
            match serde_json::from_str::<SwitchAnswer>(&body) {
                Ok(answer) => wait_for_cutover(&args, answer.seq),
                Err(e) => {
                    eprintln!(
                        "error: cannot wait for the cutover: the answer does not read as one: {e}"
                    );
                    1
                }
            }
        }
        Ok(Ok((status, body))) => {
            eprintln!("error: switch refused ({status}): {}", body.trim());
            if status == 400 {
                2
            } else {
                1
            }
        }
        Ok(Err(e)) | Err(e) => {
            eprintln!("error: cannot reach {}: {e}", args.admin_url);
            2
        }
    }
}
