//! The `kvd` binary: parses flags, sets up logging, runs the node.

use clap::Parser;

// NOTE: many small, short-lived buffers across threads make glibc's malloc a
// large share of a member's CPU under many writers (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "kvd",
    version,
    about = "One node of a kv cluster: Raft over an LSM store, serving the client API",
    after_help = "Example:\n  kvd --id 1 --data-dir /var/lib/kvd --bootstrap\n\nReadiness: GET /health/ready on the client address.",
    after_long_help = concat!(
        "Example:\n  kvd --id 1 --data-dir /var/lib/kvd --bootstrap\n\n",
        "Readiness: GET /health/ready on the client address.\n\n",
        "Cluster id: --bootstrap (and the first start of a data dir built by `kvd restore`) makes a new cluster ",
        "with a random id, kept in the data dir. A node started empty learns its cluster's id from the leader ",
        "when it is added. Every peer message carries the id; a node refuses messages from another cluster and ",
        "logs both ids, and `kvctl member add` refuses a node that belongs to another cluster or holds data.\n\n",
        "Adding a second host that runs the packaged kvd (/etc/kvd/kvd.toml ships bootstrap = true, so the ",
        "package makes a one-node cluster of its own on every host it is installed on):\n",
        "  1. On host 2: systemctl stop kvd\n",
        "  2. On host 2, in /etc/kvd/kvd.toml: id = 2, bootstrap = false, client_addr and peer_addr on an address ",
        "host 1 reaches (with TLS: tls_cert, tls_key, tls_ca from the cluster CA)\n",
        "  3. On host 2, wipe the data the package's first start made: rm -rf /var/lib/kvd/*\n",
        "  4. On host 2: systemctl start --no-block kvd (it is not ready until it is added, and a plain ",
        "start would wait for that until it times out)\n",
        "  5. On host 1 (which must listen beyond loopback too): kvctl --token-file /var/lib/kvd/admin-token ",
        "member add 2 http://HOST2:7380 --client-url http://HOST2:7379\n",
        "  6. kvctl status lists both members; kvctl health passes.\n",
        "Without steps 1 to 4, member add answers 409 not_joinable naming both cluster ids, and changes nothing.\n\n",
        "Signals: SIGTERM or SIGINT stops the node cleanly. SIGHUP (systemctl reload kvd) reads the TLS ",
        "certificate, key and CA (--tls-cert, --tls-key, --tls-ca) and the JWKS file ([jwt] jwks_file) again ",
        "without a restart; connections made after it use them. Files that cannot be used (missing, malformed, ",
        "a key that does not match the certificate, a certificate the CA did not sign or that is not valid now) are ",
        "logged as an error and the ones read before stay in use.\n\n",
        "Under systemd (Type=notify) kvd sends READY=1 once it is ready, a status line with its leader, term and ",
        "revision (systemctl status), WATCHDOG=1 every half of WatchdogSec= while its Raft core answers, so a ",
        "frozen or wedged kvd is restarted, and STOPPING=1 when it stops."
    )
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
    if let Some(Command::Restore { snapshot, data_dir, id, client_addr, peer_addr }) = cli.command {
        init_logging(cli.flags.log_format.unwrap_or_default());
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
    let result = kvd::Config::resolve(&cli.flags).and_then(|cfg| {
        init_logging(cfg.log_format);
        tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(kvd::run(cfg))
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr (journald under systemd), filtered by `RUST_LOG`: text by
/// default, or one JSON object per line with the event's fields at the top
/// level (`timestamp`, `level`, `target`, `message`, ...) for log shippers.
fn init_logging(format: kvd::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        kvd::LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
        kvd::LogFormat::Json => fmt.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
    }
}

#[cfg(test)]
mod man {
    const SECTIONS: kv_tests::man::Sections = kv_tests::man::Sections {
        exit_status: r#".TP
.B 0
kvd stopped on SIGTERM or SIGINT after finishing its requests, or \fBkvd restore\fR built the data dir.
.TP
.B 1
kvd could not start or had to stop: a configuration it refuses (the message names the setting), a data
dir it cannot open or that a newer release wrote, an address in use, or a fatal storage error (a
failed fsync: restart it, and it recovers from its log).
.TP
.B 2
A usage error in the command line (an unknown flag, a bad value); nothing was written."#,
        environment: r#".TP
.B KVD_*
Each option above can be set by the variable shown with it; a flag wins over its variable, and a
variable over the config file (\fB\-\-config\fR, see \fBkvd.toml\fR(5)).
.TP
.B RUST_LOG
Which log lines are written, in tracing's filter syntax (default: info,openraft=warn). Lines go to
stderr, which systemd sends to the journal.
.TP
.BR NOTIFY_SOCKET ", " WATCHDOG_USEC ", " WATCHDOG_PID
Set by systemd for a Type=notify unit: kvd reports READY=1 once it serves, STATUS= lines with its
role, term and revision (shown by \fBsystemctl status\fR), WATCHDOG=1 keepalives while it is
healthy when the unit sets WatchdogSec=, and STOPPING=1 when it shuts down."#,
        signals: r#".TP
.BR SIGTERM ", " SIGINT
Stop: finish the requests in flight, close the store, exit 0. Writing the store's memtables out
waits 10 s at most (a removed data dir, a full or failing disk); the next start replays the journal.
.TP
.B SIGHUP
Reload the TLS certificate and key, the cluster CA and the JWKS file from the paths configured,
without a restart (\fBsystemctl reload kvd\fR); new connections get the new certificate. Material
that fails to load, or a certificate the peers would refuse (not signed by the CA, expired), is logged
and the old material stays in use; connections already open keep theirs."#,
        see_also: &["kvd.toml(5)", "kvctl(1)", "kvfs(8)", "systemd.service(5)"],
    };

    /// man/kvd.8 is generated from the clap definitions; this fails when
    /// they drift. `UPDATE_MAN=1 cargo test -p kvd man` rewrites it.
    #[test]
    fn man_page_matches_the_cli() {
        use clap::CommandFactory;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../man/kvd.8");
        kv_tests::man::check_man_page(super::Cli::command().name("kvd"), "8", path, &SECTIONS);
    }
}
