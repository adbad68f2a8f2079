//! The composition root: builds a node's parts (store, state machine, Raft,
//! proposer, peer network), wires them into a [`Node`], and serves the client
//! and peer APIs until a signal; also `kvd restore`. The only module that
//! knows every layer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::error::{invalid, Context, Result};
use crate::log_store::LogStore;
use crate::network::Network;
use crate::node::{Node, Parts};
use crate::proposer::Proposer;
use crate::sm::StateMachine;
use crate::store::{lock_dir, Store};
use crate::systemd::Notifier;
use crate::tls::{serve, Listener, Tls};
use crate::types::{Member, NodeId, Raft};

/// File `kvd restore` leaves in a data dir it built.
pub const RESTORED_MARKER: &str = "restored-bootstrap";
/// The first admin token, written at bootstrap (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Present until the admin token's hash is committed; holds its name.
const ADMIN_TOKEN_PENDING: &str = "admin-token.pending";

/// Builds a data dir from a snapshot file (offline, like `etcdutl snapshot
/// restore`); the node started on it forms a new one-member cluster holding
/// the snapshot's data. Returns the snapshot's revision.
pub fn restore(snapshot: &std::path::Path, data_dir: &std::path::Path) -> Result<u64> {
    let fresh = !data_dir.exists();
    if !fresh && std::fs::read_dir(data_dir)?.next().is_some() {
        invalid!("data dir {} is not empty; restore needs a new one", data_dir.display());
    }
    let result = (|| -> Result<u64> {
        let _lock = lock_dir(data_dir)?;
        let store = Store::open(data_dir)?;
        let rev =
            crate::sm::restore(&store, snapshot).with_context(|| format!("cannot restore {}", snapshot.display()))?;
        std::fs::write(data_dir.join(RESTORED_MARKER), b"")?;
        Ok(rev)
    })();
    if result.is_err() {
        // Nothing half-built is left behind.
        if fresh {
            let _ = std::fs::remove_dir_all(data_dir);
        } else if let Ok(entries) = std::fs::read_dir(data_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
    }
    result
}

/// Every client connection holds a file descriptor: take the hard limit
/// instead of the soft one (1024 under systemd), so thousands of clients fit.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    // NOTE: "unlimited" is not a valid descriptor count; the kernel caps it at nr_open.
    let want = lim.maximum.unwrap_or(1 << 20).min(1 << 20);
    match lim.current {
        Some(cur) if cur < want => {
            match setrlimit(Resource::Nofile, Rlimit { current: Some(want), maximum: lim.maximum }) {
                Ok(()) => tracing::info!(from = cur, to = want, "raised the open-file limit"),
                Err(e) => tracing::warn!(error = %e, limit = cur, "cannot raise the open-file limit"),
            }
        }
        _ => {}
    }
}

/// Runs a node until SIGINT or SIGTERM; SIGHUP reads the TLS and JWKS
/// files again.
pub async fn run(cfg: Config) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // IMPORTANT: SIGHUP kills a process that does not handle it; handled
    // from the start, one sent while the node starts is a reload.
    let hangups = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    raise_fd_limit();
    let notifier = Arc::new(Notifier::from_env());
    // Bad certificates or JWT settings stop the node before it touches its data dir.
    let tls = match &cfg.tls {
        Some(f) => Some(Tls::load(&f.cert, &f.key, &f.ca)?),
        None => None,
    };
    let auth = crate::auth::Auth {
        mode: cfg.auth,
        jwt: cfg.jwt.clone().map(crate::jwt::Verifier::load).transpose()?,
        open_metrics: cfg.open_metrics,
    };
    let lock = lock_dir(&cfg.data_dir)?;
    let store = Store::open(&cfg.data_dir)?;
    let log = LogStore::new(store.clone(), cfg.id)?;
    // NOTE: `LogStore::new` has made the whole log durable.
    let stale_from = store.durable.synced().map_or(0, |l| l.index);
    let sm = StateMachine::open(store.clone(), cfg.history_revisions)
        .with_context(|| format!("cannot open the state machine in {}", cfg.data_dir.display()))?;
    let shared = sm.shared();

    let listener = TcpListener::bind(&cfg.client_addr)
        .await
        .with_context(|| format!("cannot listen on client address {}", cfg.client_addr))?;
    let client_local = listener.local_addr()?;
    let peer_listener = TcpListener::bind(&cfg.peer_addr)
        .await
        .with_context(|| format!("cannot listen on peer address {}", cfg.peer_addr))?;
    let peer_local = peer_listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client_url = cfg.advertise_client.clone().unwrap_or(format!("{scheme}://{client_local}"));
    let peer_url = cfg.advertise_peer.clone().unwrap_or(format!("{scheme}://{peer_local}"));
    if tls.is_none() && !(client_local.ip().is_loopback() && peer_local.ip().is_loopback()) {
        tracing::warn!("listening beyond loopback without TLS: anyone who can reach the peer port can join the cluster and tokens travel in clear text; see --tls-cert");
    }
    let identity = Arc::new(
        crate::identity::Identity::load(store.clone())
            .with_context(|| format!("cannot read the cluster id in {}", cfg.data_dir.display()))?,
    );
    let peer_client = tls.as_ref().map(Tls::peer_client).transpose()?;
    let net = Network::new(peer_client, store.durable.clone(), identity.clone())?;

    let raft_config = openraft::Config {
        cluster_name: "kv".into(),
        heartbeat_interval: cfg.heartbeat_ms,
        election_timeout_min: cfg.election_timeout_ms,
        election_timeout_max: cfg.election_timeout_ms * 2,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
        max_in_snapshot_log_to_keep: cfg.snapshot_logs.min(1000),
        max_payload_entries: crate::network::MAX_APPEND_ENTRIES as u64,
        snapshot_max_chunk_size: 1 << 20,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    }
    .validate()
    .context("invalid raft settings")?;
    let raft = Raft::new(cfg.id, Arc::new(raft_config), net.clone(), log, sm).await.context("cannot start raft")?;

    // NOTE: `kvd restore` leaves this marker: the restored data dir starts a
    // new one-member cluster on its first start.
    let restored = cfg.data_dir.join(RESTORED_MARKER);
    if cfg.bootstrap || restored.exists() {
        if raft.is_initialized().await? {
            tracing::info!("data dir already holds a cluster; --bootstrap ignored");
        } else {
            let name = if restored.exists() {
                format!("admin-restored-{}", kv_client::clock::now_s())
            } else {
                "admin".to_owned()
            };
            write_admin_token(&cfg.data_dir, &name)?;
            // IMPORTANT: a new cluster gets a new id, on disk before the
            // node serves; a restored data dir is a new cluster too (any id
            // an interrupted bootstrap left is replaced).
            let cluster_id = identity.create()?;
            let members =
                BTreeMap::from([(cfg.id, Member { peer_url: peer_url.clone(), client_url: client_url.clone() })]);
            raft.initialize(members).await.context("bootstrap failed")?;
            tracing::info!(node_id = cfg.id, cluster_id = %cluster_id, "bootstrapped a new single-voter cluster");
        }
        let _ = std::fs::remove_file(&restored);
    }
    // NOTE: a node that led restarts as a follower (crate::log_store,
    // `step_down_at_start`). The only voter has nobody to wait for and no
    // entry anyone else holds, so it takes its leadership back at once (a
    // new term) instead of after an election timeout.
    tokio::spawn(elect_if_sole_voter(raft.clone(), cfg.id));

    write_addr_file(&cfg, "client.addr", client_local)?;
    write_addr_file(&cfg, "peer.addr", peer_local)?;
    let proposer = Proposer::start(raft.clone(), shared.clone(), cfg.dedup_window_ms);
    let node = Arc::new(Node::new(Parts {
        raft: raft.clone(),
        sm: shared,
        cfg: cfg.clone(),
        proposer,
        net,
        peer_url,
        client_url,
        auth,
        stale_from,
        token_pending: cfg.data_dir.join(ADMIN_TOKEN_PENDING).exists(),
        store: store.clone(),
        lock,
    }));
    node.watch_disk();
    let ready = notifier.clone();
    tokio::spawn(node.clone().watch_leader(move || ready.notify("READY=1")));
    let mut systemd_tasks = Vec::new();
    if notifier.enabled() {
        systemd_tasks.push(tokio::spawn(crate::systemd::report_status(node.clone(), notifier.clone())));
        if let Some(period) = crate::systemd::watchdog_period() {
            tracing::info!(every_ms = period.as_millis() as u64, "sending watchdog keepalives to systemd");
            systemd_tasks.push(tokio::spawn(crate::systemd::keep_alive(node.clone(), notifier.clone(), period)));
        }
    }
    tokio::spawn(reload_on_hangup(hangups, tls.clone(), node.clone()));
    if cfg.data_dir.join(ADMIN_TOKEN_PENDING).exists() {
        tokio::spawn(store_admin_token(node.clone()));
    }
    let cluster = identity.get().map_or_else(|| "none yet".to_owned(), |i| i.to_string());
    tracing::info!(node_id = cfg.id, cluster, client = %client_local, peer = %peer_local, data_dir = %cfg.data_dir.display(), "serving");

    let server =
        serve(listener, crate::api::router(node.clone()), tls.clone().map(|t| (t, Listener::Client)), "client API");
    let peer_server =
        serve(peer_listener, crate::peer::router(node.clone()), tls.clone().map(|t| (t, Listener::Peer)), "peer API");
    tokio::select! {
        () = server => invalid!("the client API server stopped"),
        () = peer_server => invalid!("the peer API server stopped"),
        s = shutdown_signal() => tracing::info!(signal = s, "shutting down"),
    }
    for t in systemd_tasks {
        t.abort();
    }
    notifier.notify("STOPPING=1\nSTATUS=shutting down");
    node.shutdown().await;
    if cfg.ephemeral {
        // NOTE: --dev data is throwaway by design.
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
    }
    Ok(())
}

/// Writes a new admin token to `<data-dir>/admin-token` (0600, fsync'd)
/// and marks it pending until its hash is committed.
fn write_admin_token(dir: &std::path::Path, name: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let token = crate::token::new_token().context("cannot make the admin token")?;
    let path = dir.join(ADMIN_TOKEN_FILE);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    std::fs::write(dir.join(ADMIN_TOKEN_PENDING), name)?;
    tracing::info!(path = %path.display(), name, "wrote the first admin token");
    Ok(())
}

/// Starts an election at once when this node is its cluster's only voter
/// and leads nobody yet: the state openraft loaded shows in its metrics
/// after a moment, looked for for at most a second.
async fn elect_if_sole_voter(raft: Raft, id: NodeId) {
    let sole = |m: &openraft::RaftMetrics<NodeId, Member>| {
        m.membership_config.membership().voter_ids().eq([id]) && m.current_leader.is_none()
    };
    let loaded = raft
        .wait(Some(Duration::from_secs(1)))
        .metrics(|m| m.membership_config.membership().voter_ids().next().is_some(), "membership loaded")
        .await;
    if loaded.is_ok_and(|m| sole(&m)) {
        if let Err(e) = raft.trigger().elect().await {
            tracing::warn!(error = %e, "could not start an election at once; one follows the election timeout");
        }
    }
}

/// Commits the bootstrap admin token's hash (retrying until there is a
/// leader), then drops the pending marker.
async fn store_admin_token(node: Arc<Node>) {
    let dir = &node.config().data_dir;
    let (Ok(token), Ok(name)) =
        (std::fs::read_to_string(dir.join(ADMIN_TOKEN_FILE)), std::fs::read_to_string(dir.join(ADMIN_TOKEN_PENDING)))
    else {
        node.token_stored();
        return tracing::error!("cannot read the bootstrap admin token; create one with kvctl token create");
    };
    let now_ns = (kv_client::clock::now_s() * 1_000_000_000) as i64;
    let rec = crate::types::TokenRecord::new(name.trim(), kv_client::Grants::all(), token.trim(), now_ns);
    let req = crate::types::Request {
        id: format!("bootstrap-admin-{}", &rec.hash[..16]),
        now_ns: rec.created_ns,
        txn: crate::types::Txn { compare: vec![], success: vec![crate::types::Op::CreateToken(rec)], failure: vec![] },
    };
    loop {
        match node.write(req.clone(), crate::auth::Authority::Node).await {
            Ok(_) => break,
            Err(e) => {
                tracing::info!(error = %e, "waiting to store the admin token");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    node.token_stored();
    let _ = std::fs::remove_file(dir.join(ADMIN_TOKEN_PENDING));
}

/// Writes `<data-dir>/{client,peer}.addr` with a bound address, so tools and
/// tests that asked for port 0 learn the real one.
fn write_addr_file(cfg: &Config, name: &str, addr: SocketAddr) -> Result<()> {
    let tmp = cfg.data_dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, cfg.data_dir.join(name))?;
    Ok(())
}

/// Reads the TLS files and the JWKS file again on each SIGHUP (see
/// [`reload`]).
async fn reload_on_hangup(mut hangups: tokio::signal::unix::Signal, tls: Option<Arc<Tls>>, node: Arc<Node>) {
    while hangups.recv().await.is_some() {
        reload(tls.as_deref(), node.auth().jwt.as_ref());
    }
}

/// Reads the node's certificate, key and CA and the JWKS file again, and
/// logs what it took; a file that cannot be used is logged as an error and
/// what was read before stays in use.
fn reload(tls: Option<&Tls>, jwt: Option<&crate::jwt::Verifier>) {
    if tls.is_none() && jwt.is_none() {
        tracing::info!("SIGHUP: nothing to reload (no TLS, no JWKS)");
    }
    if let Some(tls) = tls {
        let days_left = |not_after: i64| (not_after - kv_client::clock::now_s() as i64).div_euclid(86_400);
        match tls.reload() {
            Ok(s) => tracing::info!(
                serial = %s.serial,
                not_after = s.not_after,
                days_left = days_left(s.not_after),
                ca_certs = s.ca_certs,
                "SIGHUP: reloaded the TLS certificate, key and CA"
            ),
            Err(e) => {
                let s = tls.summary();
                tracing::error!(
                    error = %e,
                    serial = %s.serial,
                    days_left = days_left(s.not_after),
                    "SIGHUP: TLS reload failed; still serving the certificate read before"
                )
            }
        }
    }
    if let Some(jwt) = jwt {
        match jwt.reload() {
            Ok(keys) => tracing::info!(file = %jwt.jwks_file().display(), keys, "SIGHUP: reloaded the JWKS"),
            Err(e) => tracing::error!(error = %e, "SIGHUP: JWKS reload failed; still using the keys read before"),
        }
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
