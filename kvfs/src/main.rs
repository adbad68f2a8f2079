//! kvfs: mounts a key prefix of a kv cluster as a directory tree.
//!
//! NOTE: the FUSE filesystem itself is not in this build yet; this binary
//! takes the command line of DESIGN.md §7 and says so, rather than pretending
//! to mount.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "kvfs", version, about = "Mount a kv key prefix as a filesystem (not yet available)")]
struct Cli {
    /// Stay in the foreground.
    #[arg(short = 'f')]
    foreground: bool,
    /// Mount options, comma-separated.
    #[arg(short = 'o', value_delimiter = ',')]
    options: Vec<String>,
    /// Client URL whose path is the key prefix, e.g. http://127.0.0.1:7379/app
    source: String,
    /// Where to mount.
    mountpoint: std::path::PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = kv_client::Client::new(&[cli.source.as_str()]) {
        eprintln!("kvfs: {e}");
        return ExitCode::from(2);
    }
    eprintln!(
        "kvfs: cannot mount {} at {}: the FUSE filesystem is not part of this build yet",
        cli.source,
        cli.mountpoint.display()
    );
    ExitCode::FAILURE
}
