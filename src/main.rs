//! `analytics-demo`: parse the command line, run, exit with its code.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(analytics_demo::cli::main());
}
