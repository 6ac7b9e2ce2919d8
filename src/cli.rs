//! Entry point behind `main`: configuration, logging, and the subcommands.

use crate::config::{self, Command, LogFormat, ParseOutcome};

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
        Command::Report(_) | Command::Switch(_) => {
            eprintln!("error: this subcommand is not available yet");
            2
        }
    }
}

/// Logs go to stderr (stdout carries the summary and reports), as text or JSON lines.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
