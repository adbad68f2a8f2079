//! kvctl: the operator's command-line client of a kv cluster.

// What `--help`, the man page and the README say one apply takes.
macro_rules! size_help {
    () => {
        "Size: one apply is one transaction, so it must fit the cluster's limits: at most 4,096 compares and \
         operations and 16 MiB of JSON by default (kvd --max-txn-size), each file at most the value limit \
         (1 MiB by default). That is at least 2,000 entries (files, directories, symlinks and pruned keys \
         together) and 8 MiB of file content. kvctl reads the answering member's limits, works out the \
         request's size and refuses a larger tree before sending anything, naming the limit."
    };
}
mod apply;
mod bench;
mod data;
mod debounce;
mod diff;
mod history;
mod member;
mod mounted;
mod output;
mod rollback;
mod snapshot;
mod token;
mod tree;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "kvctl",
    version,
    about = "Operate a kv cluster: members, status, health, data, watches, benchmarks",
    after_help = "Examples:\n  kvctl put app/db/url postgres://db\n  kvctl get app/db/url\n  kvctl ls app -o json",
    after_long_help = concat!(
        "Examples:\n  kvctl put app/db/url postgres://db\n  kvctl get app/db/url\n  kvctl ls app -o json\n\n",
        "Exit status: 0 success, 1 failure, 2 usage error, 3 conflict (kvctl apply: what it read changed ",
        "before it wrote; nothing was written).\n\n",
        "Config delivery: kvctl apply DIR PREFIX makes PREFIX equal to DIR in one transaction ",
        "(--prune, --dry-run, --if-rev REV, --check CMD, --owners); kvctl export PREFIX DIR writes it out. ",
        "FIFOs, sockets and devices in DIR are published as entries of their kind (a device with its number, ",
        "MAJOR:MINOR, as its value), and export makes them again (devices as root).\n",
        size_help!()
    )
)]
pub(crate) struct Cli {
    /// Client URLs of cluster members, comma-separated.
    #[arg(
        long,
        global = true,
        env = "KVCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7379"
    )]
    endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Bearer token (or JWT) for clusters that need one. Prefer
    /// --token-file: arguments show up in `ps`.
    #[arg(long, global = true, env = "KVCTL_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the token (e.g. the data dir's admin-token).
    #[arg(long, global = true, env = "KVCTL_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// CA certificate(s) (PEM) that sign the members' certificates, for
    /// https:// endpoints [default: the system's CA bundle].
    #[arg(long, global = true, env = "KVCTL_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// How long each member gets to answer a request (5s, 500ms, 2m or
    /// plain seconds; at most 1h) before kvctl tries the next endpoint; a
    /// command fails once every endpoint had its turn. Membership changes,
    /// which take longer, get ten times as long (member add 5 min more)
    /// [default: 7s].
    #[arg(long, global = true, env = "KVCTL_COMMAND_TIMEOUT", value_name = "DURATION", value_parser = parse_timeout)]
    command_timeout: Option<std::time::Duration>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a key's value (raw bytes) to stdout.
    Get(data::GetArgs),
    /// Write a key.
    Put(data::PutArgs),
    /// Delete a key (or a whole prefix with --recursive).
    Del(data::DelArgs),
    /// List the entries below a prefix.
    Ls(data::LsArgs),
    /// Publish a directory tree under a prefix, atomically (config delivery).
    Apply(apply::ApplyArgs),
    /// Write a prefix out as files, with their modes, into a directory.
    Export(apply::ExportArgs),
    /// Watch a prefix for changes (optionally running a command on changes).
    Watch(watch::WatchArgs),
    /// A key's versions in the history: revision, time, writer.
    History(history::HistoryArgs),
    /// What changed under a key or prefix between two revisions (a unified diff).
    Diff(rollback::DiffArgs),
    /// Make a prefix what it was at a past revision, in one transaction.
    Rollback(rollback::RollbackArgs),
    /// Members: list, add, promote, remove.
    #[command(subcommand)]
    Member(member::MemberCommand),
    /// One row per member: role, term, commit/applied index, lag, data size;
    /// exit 1 naming the members that did not answer.
    #[command(after_help = "Example:\n  kvctl status --endpoints http://10.0.0.1:7379")]
    Status,
    /// Check every member; exit 1 naming the unhealthy ones.
    #[command(after_help = "Example:\n  kvctl health || page-oncall")]
    Health,
    /// Leadership.
    #[command(subcommand)]
    Leader(member::LeaderCommand),
    /// Snapshots for backup.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Bearer tokens: create, list, revoke (admin).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Measure put or get throughput and latency.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  kvctl completion bash > /etc/bash_completion.d/kvctl")]
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// A failure, with the exit code it maps to.
pub enum Failure {
    /// Bad arguments: exit 2.
    Usage(String),
    /// A conflict: what the command read changed before it wrote; nothing
    /// was written: exit 3.
    Conflict(String),
    /// Anything else: exit 1.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Failed(e)
    }
}

impl From<kv_client::Error> for Failure {
    fn from(e: kv_client::Error) -> Failure {
        match e {
            kv_client::Error::InvalidKey(_) | kv_client::Error::Endpoint(_) | kv_client::Error::Config(_) => {
                Failure::Usage(e.to_string())
            }
            other => Failure::Failed(other.into()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("kvctl: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Conflict(m)) => {
            eprintln!("kvctl: conflict: {m}");
            ExitCode::from(3)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("kvctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The client, with the token and CA the flags name.
fn client(cli: &Cli) -> Result<kv_client::Client, Failure> {
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| Failure::Usage(format!("cannot read the {what} file {}: {e}", p.display())))
    };
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(p)) => Some(String::from_utf8_lossy(&read(p, "token")?).trim().to_owned()),
        (None, None) => None,
    };
    if token.as_deref() == Some("") {
        return Err(Failure::Usage("the token is empty".into()));
    }
    let ca_pem = cli.ca.as_deref().map(|p| read(p, "CA")).transpose()?;
    let opts = kv_client::ClientOptions { token, ca_pem, request_timeout: cli.command_timeout };
    Ok(kv_client::Client::with_options(&cli.endpoints, &opts)?)
}

/// A `--command-timeout`: `500ms`, `5s`, `2m`, or plain (decimal) seconds;
/// more than 0 and at most an hour.
pub(crate) fn parse_timeout(v: &str) -> Result<std::time::Duration, String> {
    let v = v.trim();
    let (number, unit) = match v.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let seconds_per_unit = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(format!("{v:?} is not a duration: write it as 5s, 500ms, 2m or plain seconds")),
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a duration: write it as 5s, 500ms, 2m or plain seconds"))?;
    let secs = n * seconds_per_unit;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("{v:?} is out of range: more than 0 and at most 1h"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Completion { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "kvctl", &mut std::io::stdout());
        return Ok(());
    }
    let client = client(&cli)?;
    match cli.command {
        Command::Get(a) => data::get(&client, a).await,
        Command::Put(a) => data::put(&client, a, cli.output).await,
        Command::Del(a) => data::del(&client, a, cli.output).await,
        Command::Ls(a) => data::ls(&client, a, cli.output).await,
        Command::History(a) => history::run(&client, a, cli.output).await,
        Command::Diff(a) => rollback::diff(&client, a).await,
        Command::Rollback(a) => rollback::rollback(&client, a, cli.output).await,
        Command::Apply(a) => apply::apply(&client, a, cli.output).await,
        Command::Export(a) => apply::export(&client, a, cli.output).await,
        Command::Watch(a) => watch::run(&client, a, cli.output).await,
        Command::Member(m) => member::member(&client, m, cli.output).await,
        Command::Status => member::status(&client, cli.output).await,
        Command::Health => member::health(&client, cli.output).await,
        Command::Leader(l) => member::leader(&client, l, cli.output).await,
        Command::Snapshot(s) => snapshot::run(&client, s, cli.output).await,
        Command::Token(t) => token::run(&client, t, cli.output).await,
        Command::Bench(b) => bench::run(client, b, cli.output).await,
        Command::Completion { .. } => Ok(()),
    }
}

#[cfg(test)]
mod timeout {
    use std::time::Duration;

    use super::parse_timeout;

    #[test]
    fn durations_take_a_unit_or_are_seconds() {
        assert_eq!(parse_timeout("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_timeout("1h").map_err(|e| e.contains("not a duration")), Err(true));
        for bad in ["", "0", "0s", "-1", "5x", "s", "nan", "inf", "3601", "61m"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn the_documented_default_is_the_clients() {
        use clap::CommandFactory;
        let cmd = super::Cli::command();
        let arg = cmd.get_arguments().find(|a| a.get_id() == "command_timeout").expect("--command-timeout");
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let default = kv_client::DEFAULT_REQUEST_TIMEOUT.as_secs();
        assert!(help.contains(&format!("[default: {default}s]")), "{help}");
    }
}

#[cfg(test)]
mod man {
    const SECTIONS: kv_tests::man::Sections = kv_tests::man::Sections {
        exit_status: r#".TP
.B 0
Done.
.TP
.B 1
The request failed: no member answered, the cluster refused it (the message gives the reason and the
server's error code), the key does not exist (\fBget\fR), or a member is unhealthy (\fBstatus\fR,
\fBhealth\fR name it).
.TP
.B 2
A usage error: an unknown flag or bad value, a key kv does not accept, an endpoint that is not a URL,
a token, CA or input file that cannot be read. Nothing was sent.
.TP
.B 3
A conflict: a condition of the write failed (\fB\-\-if\-rev\fR, a concurrent change seen by
\fBapply\fR or \fBrollback\fR); nothing was written."#,
        environment: r#".TP
.B KVCTL_ENDPOINTS
Comma\-separated member URLs, as \fB\-\-endpoints\fR (default http://127.0.0.1:7379).
.TP
.BR KVCTL_TOKEN ", " KVCTL_TOKEN_FILE
The bearer token, or a file holding it, as \fB\-\-token\fR and \fB\-\-token\-file\fR.
.TP
.B KVCTL_CA
The CA certificate (PEM) that signs the members' certificates, as \fB\-\-ca\fR.
.TP
.B KVCTL_COMMAND_TIMEOUT
How long one command may take, as \fB\-\-command\-timeout\fR.
.TP
.B XDG_RUNTIME_DIR
Where the kvfs mounts' status files are (\fBmounted\fR, \fBwatch \-\-mount\fR); without it,
$HOME/.cache."#,
        signals: "",
        see_also: &["kvctl-watch(1)", "kvd(8)", "kvfs(8)", "kvd.toml(5)"],
    };

    const WATCH_EXIT_STATUS: &str = r#".TP
.B 0
The watch ended because the cluster closed it for good (never in normal use).
.TP
.B 1
The watch cannot go on: its start revision was compacted away, its token was refused, or, without
\fB\-\-wait\fR, CMD failed.
.TP
.B 2
A usage error (a bad flag, \fB\-\-mount\fR naming a directory that is not a kvfs mount of the
prefix); kv\-watch@.service does not restart on it."#;

    /// man/kvctl.1 is generated from the clap definitions; this fails when
    /// they drift. `UPDATE_MAN=1 cargo test -p kvctl man` rewrites it.
    #[test]
    fn man_page_matches_the_cli() {
        use clap::CommandFactory;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../man/kvctl.1");
        kv_tests::man::check_man_page(super::Cli::command(), "1", path, &SECTIONS);
    }

    /// man/kvctl-watch.1 too: `kvctl watch` has the most to say (the
    /// command's environment, kv-watch@.service).
    #[test]
    fn watch_man_page_matches_the_cli() {
        use clap::CommandFactory;
        let mut cli = super::Cli::command();
        cli.build();
        let watch = cli.find_subcommand("watch").expect("kvctl watch").clone().version(env!("CARGO_PKG_VERSION"));
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../man/kvctl-watch.1");
        let watch_sections = kv_tests::man::Sections {
            exit_status: WATCH_EXIT_STATUS,
            see_also: &["kvctl(1)", "kvfs(8)", "systemd.service(5)"],
            ..SECTIONS
        };
        kv_tests::man::check_man_page(watch, "1", path, &watch_sections);
    }
}
