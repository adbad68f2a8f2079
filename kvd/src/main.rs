//! The `kvd` binary: parses flags, sets up logging, runs the node.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "kvd",
    version,
    about = "One node of a kv cluster: Raft over an LSM store, serving the client API",
    after_help = "Example:\n  kvd --id 1 --data-dir /var/lib/kvd --bootstrap\n\nReadiness: GET /health/ready on the client address."
)]
struct Cli {
    #[command(flatten)]
    flags: kvd::Flags,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = kvd::Config::resolve(&cli.flags)
        .and_then(|cfg| tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(kvd::run(cfg)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
