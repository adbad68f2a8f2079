//! The node as a service: one member's Raft, state machine, proposer and
//! peer connections, and what the API handlers ask of them (writes, reads,
//! membership, leadership transfer, status). crate::boot builds it; the
//! client and peer APIs (crate::api, crate::peer) only call its methods.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

use crate::auth::{Auth, Caller, Denied};
use crate::config::Config;
use crate::identity::Identity;
use crate::metrics::Gauges;
use crate::network::Network;
use crate::proposer::Proposer;
use crate::rpc::ForwardError;
use crate::sm::SmReader;
use crate::store::{DirLock, Store};
use crate::token::TokenTable;
use crate::types::{NodeId, Raft, TypeConfig};

mod cluster;
mod liveness;
mod transfer;

pub use cluster::ClusterError;
pub(crate) use cluster::JOIN_TIMEOUT;
pub use transfer::Holds;

/// How long a stop waits for the memtables to be written out.
const SHUTDOWN_FLUSH_WAIT: Duration = Duration::from_secs(10);

/// What [`Node::new`] is built from (see crate::boot).
pub(crate) struct Parts {
    pub raft: Raft,
    pub sm: Arc<SmReader>,
    pub cfg: Config,
    pub proposer: Proposer,
    pub net: Network,
    pub peer_url: String,
    pub client_url: String,
    pub auth: Auth,
    pub stale_from: u64,
    /// The bootstrap admin token is written but its hash not yet committed.
    pub token_pending: bool,
    pub store: Store,
    pub lock: DirLock,
}

/// A running node.
pub struct Node {
    /// The Raft handle.
    raft: Raft,
    /// Read access to the state machine.
    sm: Arc<SmReader>,
    /// Resolved configuration.
    cfg: Config,
    /// Where writes go.
    proposer: Proposer,
    /// Connections to peers.
    net: Network,
    /// Advertised peer URL.
    peer_url: String,
    /// Advertised client URL.
    client_url: String,
    /// Start time, ns: part of server-made request ids.
    started_ns: u128,
    /// Counter of server-made request ids.
    seq: AtomicU64,
    /// This node's heartbeats as leader, paused by a leadership transfer.
    heartbeats: Arc<Holds>,
    /// This node's elections, held by a leadership transfer (its own, or a
    /// peer's for a while).
    elections: Arc<Holds>,
    /// Auth mode, JWT verification.
    auth: crate::auth::Auth,
    /// Free space of the data dir's filesystem.
    disk: Arc<crate::disk::Disk>,
    /// Leader side: one quorum check answers every read index asked meanwhile.
    read_index_rounds: crate::rounds::Rounds<Result<u64, ForwardError>>,
    /// One read index fetched for every linearizable read waiting meanwhile.
    linearize_rounds: crate::rounds::Rounds<Result<u64, cluster::ClusterError>>,
    /// Since when no leader is known (see [`liveness`]).
    leader_contact: liveness::LeaderContact,
    /// The last log index on disk at start: stale reads wait until the
    /// state machine reaches it (see [`Node::check_stale`]).
    stale_from: u64,
    /// Set once stale reads may be answered.
    stale_open: AtomicBool,
    /// Set until the bootstrap admin token's hash is committed.
    token_pending: AtomicBool,
    store: Store,
    _lock: DirLock,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.cfg.id).finish()
    }
}

impl Node {
    /// A node of `parts`; nothing runs until crate::boot starts it.
    pub(crate) fn new(p: Parts) -> Node {
        let raft = p.raft;
        Node {
            heartbeats: {
                let raft = raft.clone();
                Holds::new(move |on| raft.runtime_config().heartbeat(on))
            },
            elections: {
                let raft = raft.clone();
                Holds::new(move |on| raft.runtime_config().elect(on))
            },
            raft,
            sm: p.sm,
            disk: Arc::new(crate::disk::Disk::new(&p.cfg.data_dir, p.cfg.min_free_space)),
            cfg: p.cfg,
            proposer: p.proposer,
            net: p.net,
            peer_url: p.peer_url,
            client_url: p.client_url,
            started_ns: kv_client::clock::now_ns() as u128,
            seq: AtomicU64::new(0),
            auth: p.auth,
            read_index_rounds: Default::default(),
            linearize_rounds: Default::default(),
            leader_contact: Default::default(),
            stale_from: p.stale_from,
            stale_open: AtomicBool::new(false),
            token_pending: AtomicBool::new(p.token_pending),
            store: p.store,
            _lock: p.lock,
        }
    }

    /// This node's `--id`.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// Its resolved configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Its auth mode and JWT verifier.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Read access to the state machine.
    pub fn state(&self) -> &Arc<SmReader> {
        &self.sm
    }

    /// The tokens as this node has applied them.
    pub fn tokens(&self) -> Arc<TokenTable> {
        self.sm.tokens()
    }

    /// The caller of a request with this `Authorization` header.
    pub fn caller(&self, headers: &axum::http::HeaderMap) -> Result<Caller, Denied> {
        self.auth.caller(headers, &self.sm.tokens())
    }

    /// The leader this node knows of, if any.
    pub fn known_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// This node's cluster id.
    pub fn identity(&self) -> &Arc<Identity> {
        self.net.identity()
    }

    /// The HTTP client members talk to each other with (TLS as configured),
    /// for client requests sent on to the leader.
    pub fn member_http(&self) -> &reqwest::Client {
        self.net.http()
    }

    /// Refuses entries while the data dir's disk is nearly full.
    pub fn check_disk(&self) -> Result<(), String> {
        self.disk.check(self.cfg.id)
    }

    /// Holds back this node's elections for `d` (zero: allow them again).
    pub fn hold_elections(&self, d: Duration) {
        self.elections.hold_for(d);
    }

    /// Raft AppendEntries from the leader.
    pub async fn raft_append(
        &self,
        req: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        self.raft.append_entries(req).await
    }

    /// Raft RequestVote from a candidate.
    pub async fn raft_vote(&self, req: VoteRequest<NodeId>) -> Result<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.raft.vote(req).await
    }

    /// One chunk of a snapshot from the leader.
    pub async fn raft_install_snapshot(
        &self,
        req: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.raft.install_snapshot(req).await
    }

    /// Starts an election here now (the last step of a leadership transfer).
    pub async fn elect_now(&self) -> Result<(), String> {
        self.raft.trigger().elect().await.map_err(|e| e.to_string())
    }

    /// The leader this node knows of, the term and the revision, for the
    /// status line systemd shows (crate::systemd).
    pub(crate) fn headline(&self) -> (Option<NodeId>, u64, u64) {
        let (leader, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term)
        };
        (leader, term, *self.sm.subscribe().borrow())
    }

    /// Asks the Raft core a question through its queue: it answers while
    /// its loop runs (the watchdog's liveness check, crate::systemd).
    pub(crate) async fn core_answers(&self) -> Result<(), openraft::error::Fatal<NodeId>> {
        self.raft.with_raft_state(|_| ()).await
    }

    /// The gauges of `/metrics`, read now.
    pub fn gauges(&self) -> Gauges {
        let m = self.raft.metrics().borrow().clone();
        Gauges {
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            is_leader: m.current_leader == Some(self.cfg.id),
            has_leader: m.current_leader.is_some(),
            revision: *self.sm.subscribe().borrow(),
            db_bytes: self.db_size(),
            disk_free: self.disk.free(),
            disk_size: self.disk.size(),
            disk_reserve: self.disk.reserve,
            disk_full: self.disk.is_low(),
            no_space_refusals: self.disk.refused.load(std::sync::atomic::Ordering::Relaxed),
            heartbeats_paused: self.heartbeats.held(),
            elections_held: self.elections.held(),
            proposals_held: self.proposer.held(),
            follower_lag: follower_lag(self.cfg.id, &m),
        }
    }

    /// Watches the disk's free space, in the background.
    pub(crate) fn watch_disk(&self) {
        self.disk.watch();
    }

    /// Stops Raft, then makes everything durable: the journal synced, and
    /// the memtables written out if that ends within SHUTDOWN_FLUSH_WAIT.
    pub(crate) async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        self.store.sync();
        // IMPORTANT: bounded: a flush that cannot write its tables (the data
        // directory removed, a full or failing disk) waits for ever inside
        // fjall, and the stop with it. The journal has everything: the next
        // start replays it.
        let store = self.store.clone();
        let (done, flushed) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            store.flush_memtables();
            let _ = done.send(());
        });
        if tokio::time::timeout(SHUTDOWN_FLUSH_WAIT, flushed).await.is_err() {
            tracing::warn!(
                waited_ms = SHUTDOWN_FLUSH_WAIT.as_millis() as u64,
                "flushing the memtables at shutdown did not end; stopping without it (the next start replays the journal)"
            );
        }
    }

    /// How long a request waits for the cluster.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.request_timeout_ms)
    }

    /// Disk space used by the database.
    pub fn db_size(&self) -> u64 {
        self.store.db.disk_space().unwrap_or(0)
    }

    /// The bootstrap admin token's hash is committed: the token works.
    pub(crate) fn token_stored(&self) {
        self.token_pending.store(false, std::sync::atomic::Ordering::Release);
    }

    /// Whether the node is ready, and why (not): it has a leader, it has
    /// applied everything the leader had committed when asked, and the
    /// admin token it wrote at bootstrap works.
    pub async fn readiness(&self) -> (bool, String) {
        // NOTE: whoever waits for readiness after a bootstrap then uses the
        // admin token; it must not be refused meanwhile.
        if self.token_pending.load(std::sync::atomic::Ordering::Acquire) {
            return (false, "storing the bootstrap admin token".into());
        }
        if let Err(e) = self.check_member() {
            return (false, e.to_string());
        }
        let Some(leader) = self.raft.metrics().borrow().current_leader else {
            return (false, "no leader known".into());
        };
        // NOTE: what the leader has committed, not what this node has heard
        // of: a member that is catching up (new, or re-added after a wipe)
        // has applied all it has heard of long before it holds the latest
        // membership and data, and would answer 503 a moment later.
        let wait = Duration::from_millis(self.cfg.election_timeout_ms);
        match tokio::time::timeout(wait, self.linearize()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return (false, format!("not caught up with the leader: {e}")),
            Err(_) => {
                return (false, format!("not caught up with the leader's commit index within {} ms", wait.as_millis()))
            }
        }
        if let Err(e) = self.check_member() {
            return (false, e.to_string());
        }
        let applied = self.raft.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0);
        (true, format!("leader {leader}, applied index {applied}"))
    }

    /// Counts leader changes, and calls `on_ready` once the node is ready.
    pub(crate) async fn watch_leader(self: Arc<Self>, on_ready: impl FnOnce()) {
        let node = self;
        let mut on_ready = Some(on_ready);
        let mut rx = node.raft.metrics();
        let mut leader = None;
        let mut notified = false;
        loop {
            let (now, voters) = {
                let m = rx.borrow_and_update();
                (m.current_leader, m.membership_config.membership().voter_ids().count())
            };
            node.store.durable.set_replicated(voters > 1);
            node.leader_contact.observe(now.is_some());
            if now != leader {
                // NOTE: a data dir from a kvd that predates cluster ids stays
                // without one (its messages carry none, and are taken): an id
                // made by whichever member leads first is not replicated, and
                // two members could make two, each then refusing the other.
                if now.is_some() {
                    crate::metrics::METRICS.leader_changes.inc();
                }
                tracing::info!(leader = ?now, "leader changed");
                leader = now;
            }
            if !notified && node.readiness().await.0 {
                notified = true;
                if let Some(f) = on_ready.take() {
                    f();
                }
            }
            // NOTE: openraft publishes its metrics after every write; a
            // wake-up here for each would cost every write a thread wake-up
            // (BENCHMARKS.md). Leader changes are an election timeout apart
            // at least, so looking every 50 ms while settled misses none.
            if notified && leader.is_some() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// On the leader, how many of its entries each other member lacks: its last
/// log index less the index the member has matched (its whole log when none).
fn follower_lag(me: NodeId, m: &openraft::RaftMetrics<NodeId, crate::types::Member>) -> Vec<(NodeId, u64)> {
    let last = m.last_log_index.unwrap_or(0);
    let Some(replication) = &m.replication else { return Vec::new() };
    replication
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, matched)| (*id, last.saturating_sub(matched.map_or(0, |l| l.index))))
        .collect()
}
