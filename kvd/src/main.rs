//! The `kvd` binary: parses flags, sets up logging, runs the node.

use clap::Parser;

// NOTE: glibc's malloc took about a sixth of a member's CPU under 64 writers
// (profiled with perf): many small, short-lived buffers across threads.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "kvd",
    version,
    about = "One node of a kv cluster: Raft over an LSM store, serving the client API",
    after_help = "Example:\n  kvd --id 1 --data-dir /var/lib/kvd --bootstrap\n\nReadiness: GET /health/ready on the client address."
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    flags: kvd::Flags,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Offline: build a data dir from a snapshot file (`kvctl snapshot save`);
    /// kvd started on it forms a new one-member cluster with that data.
    #[command(
        after_help = "Example:\n  kvd restore --snapshot backup.snap --data-dir /var/lib/kvd-new --id 1 \\\n    --client-addr 127.0.0.1:7379 --peer-addr 127.0.0.1:7380"
    )]
    Restore {
        /// The snapshot file.
        #[arg(long)]
        snapshot: std::path::PathBuf,
        /// The new data dir (must not exist or be empty).
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// Id of the new node.
        #[arg(long)]
        id: u64,
        /// Client address the node will be started with.
        #[arg(long)]
        client_addr: String,
        /// Peer address the node will be started with.
        #[arg(long)]
        peer_addr: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    if let Some(Command::Restore { snapshot, data_dir, id, client_addr, peer_addr }) = cli.command {
        return match kvd::restore(&snapshot, &data_dir) {
            Ok(rev) => {
                println!(
                    "restored revision {rev} into {}; start it with:\n  kvd --id {id} --data-dir {} --client-addr {client_addr} --peer-addr {peer_addr}",
                    data_dir.display(),
                    data_dir.display()
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kvd: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
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

#[cfg(test)]
mod man {
    /// man/kvd.8 is generated from the clap definitions; this fails when
    /// they drift. `UPDATE_MAN=1 cargo test -p kvd man` rewrites it.
    #[test]
    fn man_page_matches_the_cli() {
        use clap::CommandFactory;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../man/kvd.8");
        kv_tests::man::check_man_page(super::Cli::command().name("kvd"), "8", path);
    }
}
