//! Configuration: defaults, then `--config FILE` (TOML), then `KVD_*`
//! environment variables, then flags; later ones win.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::error::{invalid, Context};
use serde::Deserialize;

use crate::auth::Mode;
use crate::dedup;
use crate::jwt::JwtConfig;

/// Settings a config file may hold; unknown keys are an error.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Node id (non-zero).
    pub id: Option<u64>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Client API listen address.
    pub client_addr: Option<String>,
    /// Peer API listen address.
    pub peer_addr: Option<String>,
    /// Client URL other members and clients should use.
    pub advertise_client: Option<String>,
    /// Peer URL other members should use.
    pub advertise_peer: Option<String>,
    /// Make a new single-voter cluster when the data dir is empty.
    pub bootstrap: Option<bool>,
    /// Largest value, bytes.
    pub max_value_size: Option<u64>,
    /// Largest transaction body, bytes.
    pub max_txn_size: Option<u64>,
    /// Revisions of watch history kept.
    pub history_revisions: Option<u64>,
    /// Log entries between snapshots.
    pub snapshot_logs: Option<u64>,
    /// How long a request id is remembered, ms (the leader's value holds).
    pub dedup_window_ms: Option<u64>,
    /// Writes are refused while the data dir's filesystem has less free, bytes.
    pub min_free_space: Option<u64>,
    /// How long a write or linearizable read waits for the cluster, ms.
    pub request_timeout_ms: Option<u64>,
    /// Raft heartbeat interval, ms.
    pub heartbeat_ms: Option<u64>,
    /// Raft election timeout (minimum; maximum is twice), ms.
    pub election_timeout_ms: Option<u64>,
    /// This node's certificate chain (PEM), signed by the cluster CA.
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM).
    pub tls_ca: Option<PathBuf>,
    /// Auth mode: none, writes or all.
    pub auth: Option<Mode>,
    /// `/metrics` answers without a token in mode all.
    pub open_metrics: Option<bool>,
    /// JWT verification.
    pub jwt: Option<JwtConfig>,
    /// Log lines as text or JSON.
    pub log_format: Option<LogFormat>,
    /// Serve the web UI at /ui/ (default true).
    pub ui: Option<bool>,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (journald's default view).
    #[default]
    Text,
    /// One JSON object per line, fields at the top level, for log shippers.
    Json,
}

/// Flags (and their `KVD_*` environment variables) of `kvd`.
#[derive(Debug, Default, clap::Args)]
pub struct Flags {
    /// Node id, a non-zero integer unique in the cluster.
    #[arg(long, env = "KVD_ID")]
    pub id: Option<u64>,
    /// Data directory (created if missing).
    #[arg(long, env = "KVD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Client API listen address [default: 127.0.0.1:7379].
    #[arg(long, env = "KVD_CLIENT_ADDR")]
    pub client_addr: Option<String>,
    /// Peer API listen address [default: 127.0.0.1:7380].
    #[arg(long, env = "KVD_PEER_ADDR")]
    pub peer_addr: Option<String>,
    /// Client URL to advertise [default: http://CLIENT_ADDR].
    #[arg(long, env = "KVD_ADVERTISE_CLIENT")]
    pub advertise_client: Option<String>,
    /// Peer URL to advertise [default: http://PEER_ADDR].
    #[arg(long, env = "KVD_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// Make a new single-voter cluster if the data dir is empty; ignored otherwise.
    #[arg(long, env = "KVD_BOOTSTRAP")]
    pub bootstrap: bool,
    /// Development mode: id 1, bootstrapped, data in a fresh temp dir that is
    /// removed on exit (unless --data-dir is given).
    #[arg(long)]
    pub dev: bool,
    /// TOML config file; flags and KVD_* variables override it.
    #[arg(long, env = "KVD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Largest value in bytes [default: 1048576].
    #[arg(long, env = "KVD_MAX_VALUE_SIZE")]
    pub max_value_size: Option<u64>,
    /// Largest transaction body in bytes [default: 16 × max value size].
    #[arg(long, env = "KVD_MAX_TXN_SIZE")]
    pub max_txn_size: Option<u64>,
    /// Revisions of watch history kept for resuming watches [default: 100000].
    #[arg(long, env = "KVD_HISTORY_REVISIONS")]
    pub history_revisions: Option<u64>,
    /// Log entries between snapshots [default: 20000].
    #[arg(long, env = "KVD_SNAPSHOT_LOGS")]
    pub snapshot_logs: Option<u64>,
    /// How long a write's X-Kv-Request-Id is remembered, ms: a retry within
    /// it is answered, not applied again; a retry of an id that carries its
    /// time (`~MILLIS`) after it is refused. Cluster-wide: the leader writes
    /// its value into the log, so give every member the same [default:
    /// 600000, 1000 to 2592000000].
    #[arg(long, env = "KVD_DEDUP_WINDOW_MS")]
    pub dedup_window_ms: Option<u64>,
    /// Refuse writes (reads go on) while the data dir's filesystem has fewer
    /// free bytes than this [default: 67108864].
    #[arg(long, env = "KVD_MIN_FREE_SPACE")]
    pub min_free_space: Option<u64>,
    /// How long writes and linearizable reads wait for the cluster, ms [default: 5000].
    #[arg(long, env = "KVD_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Raft heartbeat interval, ms [default: 100].
    #[arg(long, env = "KVD_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Raft election timeout, ms [default: 1000].
    #[arg(long, env = "KVD_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Certificate chain (PEM) of this node, signed by the cluster CA; with
    /// --tls-key and --tls-ca both listeners speak TLS and peers must show a
    /// certificate from the CA.
    #[arg(long, env = "KVD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "KVD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) of the cluster.
    #[arg(long, env = "KVD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Who needs a token: none, writes (reads stay open) or all [default: none].
    #[arg(long, env = "KVD_AUTH", value_enum)]
    pub auth: Option<Mode>,
    /// Serve /metrics without a token even with --auth all.
    #[arg(long, env = "KVD_OPEN_METRICS")]
    pub open_metrics: bool,
    /// Log lines as text or one JSON object per line [default: text].
    #[arg(long, env = "KVD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Do not serve the web UI at /ui/ on the client address.
    #[arg(long, env = "KVD_NO_UI")]
    pub no_ui: bool,
}

/// The resolved configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Node id.
    pub id: u64,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Client API listen address.
    pub client_addr: String,
    /// Peer API listen address.
    pub peer_addr: String,
    /// Advertised client URL (None: derive from the bound address).
    pub advertise_client: Option<String>,
    /// Advertised peer URL (None: derive from the bound address).
    pub advertise_peer: Option<String>,
    /// Bootstrap a new cluster when empty.
    pub bootstrap: bool,
    /// Remove the data dir on exit (`--dev` without `--data-dir`).
    pub ephemeral: bool,
    /// Largest value, bytes.
    pub max_value_size: u64,
    /// Largest transaction body, bytes.
    pub max_txn_size: u64,
    /// Revisions of watch history kept.
    pub history_revisions: u64,
    /// Log entries between snapshots.
    pub snapshot_logs: u64,
    /// How long a request id is remembered, ms (crate::dedup).
    pub dedup_window_ms: u64,
    /// Writes are refused below this many free bytes on the data dir's filesystem.
    pub min_free_space: u64,
    /// Request timeout, ms.
    pub request_timeout_ms: u64,
    /// Heartbeat, ms.
    pub heartbeat_ms: u64,
    /// Election timeout, ms.
    pub election_timeout_ms: u64,
    /// Certificate, key and CA files, when TLS is on.
    pub tls: Option<TlsFiles>,
    /// Auth mode.
    pub auth: Mode,
    /// `/metrics` without a token.
    pub open_metrics: bool,
    /// JWT verification.
    pub jwt: Option<JwtConfig>,
    /// Log lines as text or JSON.
    pub log_format: LogFormat,
    /// Serve the web UI at /ui/.
    pub ui: bool,
}

/// Where the TLS material is.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// Cluster CA.
    pub ca: PathBuf,
}

impl Config {
    /// Resolves flags over the config file over defaults.
    pub fn resolve(flags: &Flags) -> crate::error::Result<Config> {
        let file = match &flags.config {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).with_context(|| format!("cannot read config file {}", p.display()))?;
                toml::from_str::<FileConfig>(&text).with_context(|| format!("invalid config file {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let dev_id = flags.dev.then_some(1);
        let Some(id) = flags.id.or(file.id).or(dev_id) else {
            invalid!("--id is required (a non-zero integer unique in the cluster)");
        };
        if id == 0 {
            invalid!("--id must be non-zero");
        }
        let dev_dir = flags.dev.then(|| std::env::temp_dir().join(format!("kvd-dev-{}", std::process::id())));
        let configured_dir = flags.data_dir.clone().or(file.data_dir);
        let ephemeral = configured_dir.is_none() && dev_dir.is_some();
        let Some(data_dir) = configured_dir.or(dev_dir) else {
            invalid!("--data-dir is required");
        };
        let client_addr = flags.client_addr.clone().or(file.client_addr).unwrap_or("127.0.0.1:7379".into());
        let peer_addr = flags.peer_addr.clone().or(file.peer_addr).unwrap_or("127.0.0.1:7380".into());
        for (name, a) in [("client", &client_addr), ("peer", &peer_addr)] {
            a.parse::<SocketAddr>()
                .with_context(|| format!("--{name}-addr {a:?} is not HOST:PORT with a numeric IP"))?;
        }
        let max_value_size = flags.max_value_size.or(file.max_value_size).unwrap_or(1 << 20);
        if max_value_size == 0 {
            invalid!("max_value_size must be positive");
        }
        let dedup_window_ms = flags.dedup_window_ms.or(file.dedup_window_ms).unwrap_or(dedup::DEFAULT_WINDOW_MS);
        if !(dedup::MIN_WINDOW_MS..=dedup::MAX_WINDOW_MS).contains(&dedup_window_ms) {
            invalid!(
                "dedup_window_ms must be from {} (1 s) to {} (30 days), not {dedup_window_ms}",
                dedup::MIN_WINDOW_MS,
                dedup::MAX_WINDOW_MS
            );
        }
        let tls = match (
            flags.tls_cert.clone().or(file.tls_cert),
            flags.tls_key.clone().or(file.tls_key),
            flags.tls_ca.clone().or(file.tls_ca),
        ) {
            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert, key, ca }),
            (None, None, None) => None,
            _ => invalid!("TLS needs all three of --tls-cert, --tls-key and --tls-ca"),
        };
        let cfg = Config {
            id,
            data_dir,
            client_addr,
            peer_addr,
            advertise_client: flags.advertise_client.clone().or(file.advertise_client),
            advertise_peer: flags.advertise_peer.clone().or(file.advertise_peer),
            bootstrap: flags.bootstrap || flags.dev || file.bootstrap.unwrap_or(false),
            ephemeral,
            max_value_size,
            max_txn_size: flags.max_txn_size.or(file.max_txn_size).unwrap_or(16 * max_value_size),
            history_revisions: flags.history_revisions.or(file.history_revisions).unwrap_or(100_000),
            snapshot_logs: flags.snapshot_logs.or(file.snapshot_logs).unwrap_or(20_000),
            dedup_window_ms,
            min_free_space: flags.min_free_space.or(file.min_free_space).unwrap_or(64 << 20),
            request_timeout_ms: flags.request_timeout_ms.or(file.request_timeout_ms).unwrap_or(5000),
            heartbeat_ms: flags.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(100),
            election_timeout_ms: flags.election_timeout_ms.or(file.election_timeout_ms).unwrap_or(1000),
            tls,
            auth: flags.auth.or(file.auth).unwrap_or_default(),
            open_metrics: flags.open_metrics || file.open_metrics.unwrap_or(false),
            jwt: file.jwt,
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            ui: !flags.no_ui && file.ui.unwrap_or(true),
        };
        if cfg.election_timeout_ms <= 2 * cfg.heartbeat_ms {
            invalid!("election timeout must be more than twice the heartbeat interval");
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_config_keys_are_refused() {
        let err = toml::from_str::<FileConfig>("id = 1\nbogus = 2\n").expect_err("must refuse");
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("kvd.toml");
        std::fs::write(&p, "id = 3\ndata_dir = \"/x\"\nmax_value_size = 10\n").expect("write");
        let flags = Flags { config: Some(p), max_value_size: Some(20), ..Flags::default() };
        let c = Config::resolve(&flags).expect("resolve");
        assert_eq!((c.id, c.max_value_size, c.max_txn_size), (3, 20, 320));
        assert_eq!(c.data_dir, PathBuf::from("/x"));
    }

    /// Every setting of packaging/kvd.toml, commented out or not.
    fn shipped_settings() -> FileConfig {
        let all: String = include_str!("../../packaging/kvd.toml")
            .lines()
            .filter_map(|l| l.strip_prefix("# ").or(Some(l).filter(|l| !l.starts_with('#'))))
            .filter(|l| l.contains(" = ") || l.starts_with('['))
            .map(|l| format!("{l}\n"))
            .collect();
        toml::from_str(&all).expect("every commented setting parses")
    }

    #[test]
    fn the_shipped_config_names_every_setting() {
        let text = include_str!("../../packaging/kvd.toml");
        let shown = format!("{:?}", shipped_settings());
        assert!(!shown.contains(": None"), "a setting is missing from packaging/kvd.toml: {shown}");
        let active = FileConfig {
            id: Some(1),
            data_dir: Some("/var/lib/kvd".into()),
            bootstrap: Some(true),
            auth: Some(Mode::Writes),
            ..FileConfig::default()
        };
        assert_eq!(toml::from_str::<FileConfig>(text).expect("parses"), active, "only these are set as shipped");
    }

    #[test]
    fn the_man_page_names_every_setting() {
        let man = include_str!("../../man/kvd.toml.5");
        let shown = format!("{:?}", shipped_settings());
        let names = shown.split([' ', '{', '(']).filter_map(|w| w.strip_suffix(':'));
        for name in names.filter(|n| n.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')) {
            assert!(man.contains(name), "man/kvd.toml.5 does not describe {name}");
        }
    }

    #[test]
    fn dev_mode_fills_in_a_throwaway_node() {
        let c = Config::resolve(&Flags { dev: true, ..Flags::default() }).expect("resolve");
        assert_eq!((c.id, c.bootstrap, c.ephemeral), (1, true, true));
        let c =
            Config::resolve(&Flags { dev: true, data_dir: Some("/x".into()), ..Flags::default() }).expect("resolve");
        assert!(!c.ephemeral);
    }

    #[test]
    fn missing_or_bad_settings_are_explained() {
        let e = Config::resolve(&Flags::default()).expect_err("no id");
        assert!(e.to_string().contains("--id"));
        let flags = Flags {
            id: Some(1),
            data_dir: Some("/x".into()),
            client_addr: Some("localhost".into()),
            ..Flags::default()
        };
        assert!(Config::resolve(&flags).is_err());
    }

    #[test]
    fn a_dedup_window_out_of_range_is_refused() {
        let flags = |ms| Flags { id: Some(1), data_dir: Some("/x".into()), dedup_window_ms: ms, ..Flags::default() };
        assert_eq!(Config::resolve(&flags(None)).expect("default").dedup_window_ms, 600_000);
        assert_eq!(Config::resolve(&flags(Some(1500))).expect("short").dedup_window_ms, 1500);
        for bad in [0, 999, 30 * 24 * 3600 * 1000 + 1] {
            let e = Config::resolve(&flags(Some(bad))).expect_err("out of range");
            assert!(e.to_string().contains("dedup_window_ms must be from 1000"), "{e}");
        }
        for text in ["dedup_window_ms = -1", "dedup_window_ms = \"10m\""] {
            let e = toml::from_str::<FileConfig>(text).expect_err("not a count of ms");
            assert!(e.to_string().contains("dedup_window_ms"), "{e}");
        }
    }
}
