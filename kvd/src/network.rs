//! The client side of the peer API: Raft RPCs (and forwarded writes and
//! read-index requests) to other members over HTTP/1.1 with pooled
//! connections, each in the newest format the peer reads (see
//! crate::format::PeerFormat: format 1 until the peer's answer says it reads
//! format 2, so that kvd 0.1 members are still reached). Each RPC has its own timeout, and openraft replicates to each
//! peer in its own task, so a slow or dead peer never holds up the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;

use crate::format::{PeerFormat, PEER_FORMATS_HEADER, PEER_FORMAT_HEADER};
use crate::identity::{from_headers, Identity, Refusal, HEADER};
use crate::metrics::{rpc_name, METRICS};
use crate::rpc::{self, Rpc};
use crate::store::Durability;
use crate::types::{encoded_size, Entry, Member, NodeId, TypeConfig};

/// Longest a heartbeat or a commit notice waits for this node's fsync under
/// way before it goes with the commit index held back.
const COMMIT_WAIT: Duration = Duration::from_millis(50);

/// Most entries openraft puts in one AppendEntries (its
/// `max_payload_entries`), and most this module sends in one.
pub const MAX_APPEND_ENTRIES: usize = 64;

/// Most bytes of entries (encoded) sent in one AppendEntries; one entry goes
/// whole whatever its size.
///
/// NOTE: openraft 0.9 gives an AppendEntries one heartbeat interval. 64
/// entries of a bulk load (1,000 puts each) took longer to append on a new
/// member than that, and openraft sent the same 64 again, forever.
const APPEND_MAX_BYTES: u64 = 1 << 20;

/// How long a connection to a peer may take to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a connection to a peer is kept idle for reuse: a member closes
/// one idle for [`kv_client::MEMBER_IDLE_CLOSE`], and one reused at that
/// moment would fail.
const POOL_IDLE: Duration = Duration::from_secs(kv_client::MEMBER_IDLE_CLOSE.as_secs() / 2);

/// Why a peer call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing answered at the peer's address.
    #[error("peer {0} is unreachable: {1}")]
    Unreachable(String, String),
    /// The peer answered, but not in time or not in our encoding.
    #[error("peer {0}: {1}")]
    Failed(String, String),
    /// The peer belongs to another cluster and refused the message.
    #[error("peer {0} refused the message: {1}")]
    OtherCluster(String, String),
}

/// A failed send: unreachable when nothing accepted the connection.
fn send_error(base: &str, e: reqwest::Error) -> CallError {
    if e.is_connect() {
        CallError::Unreachable(base.to_owned(), e.to_string())
    } else {
        CallError::Failed(base.to_owned(), e.to_string())
    }
}

/// Talks to peers. Cheap to clone (one shared connection pool).
#[derive(Debug, Clone)]
pub struct Network {
    http: reqwest::Client,
    /// The same requests to `http://` peers, on kept-alive connections of
    /// their own: no connection task to hand each exchange to and back.
    lean: Option<Arc<kv_client::LeanHttp>>,
    /// How much of this node's log is on disk (see `append_entries`).
    durable: Arc<Durability>,
    /// This node's cluster id, sent with every message.
    identity: Arc<Identity>,
    /// The format each peer (by base URL) was last seen to read; format 1
    /// for one not heard from yet.
    formats: Arc<std::sync::Mutex<std::collections::HashMap<String, PeerFormat>>>,
}

impl Network {
    /// A client for peers; with `tls` it checks their certificates against
    /// the cluster CA and shows this node's own. `durable` is this node's
    /// log's, `identity` its cluster id.
    pub fn new(
        tls: Option<rustls::ClientConfig>,
        durable: Arc<Durability>,
        identity: Arc<Identity>,
    ) -> crate::error::Result<Network> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // NOTE: a member closes a connection idle this long; one reused
            // at that moment would fail.
            .pool_idle_timeout(POOL_IDLE)
            .tcp_nodelay(true);
        if let Some(cfg) = tls {
            b = b.use_preconfigured_tls(cfg);
        }
        let http = b.build().map_err(|e| crate::error::Error::Failed {
            what: "cannot set up the peer client".into(),
            source: Box::new(e),
        })?;
        let lean = kv_client::LeanHttp::new().map(Arc::new);
        Ok(Network { http, lean, durable, identity, formats: Default::default() })
    }

    /// Sends `req` as RPC `R` to member `peer` at `base` and decodes its
    /// answer.
    pub async fn call<R: Rpc>(
        &self,
        peer: NodeId,
        base: &str,
        req: &R::Request,
        timeout: Duration,
    ) -> Result<R::Response, CallError> {
        timed::<R, _>(peer, async {
            if R::JSON_GET {
                self.get_json(base, R::PATH, timeout).await
            } else {
                self.post::<R>(base, peer_url(base, R::PATH), req, timeout).await
            }
        })
        .await
    }

    /// The format to send to the peer at `base` in.
    fn format_for(&self, base: &str) -> PeerFormat {
        let known = self.formats.lock().unwrap_or_else(|e| e.into_inner());
        known.get(base).copied().unwrap_or(PeerFormat::Bincode1)
    }

    /// Records the formats the peer at `base` reads, from its answer's
    /// headers (none: a kvd 0.1, or not a kvd).
    fn learn_format(&self, base: &str, headers: &reqwest::header::HeaderMap) {
        let best = PeerFormat::best_with(headers.get(PEER_FORMATS_HEADER));
        let mut known = self.formats.lock().unwrap_or_else(|e| e.into_inner());
        if known.get(base) != Some(&best) {
            tracing::debug!(peer = base, format = best as u8, "peer message format");
            known.insert(base.to_owned(), best);
        }
    }

    /// Forgets what the peer at `base` reads: the next message is format 1.
    fn forget_format(&self, base: &str) {
        self.formats.lock().unwrap_or_else(|e| e.into_inner()).remove(base);
    }

    /// POSTs `req` to `url`, RPC `R`'s URL at the peer at `base`, in the
    /// newest format the peer reads, and decodes the answer.
    async fn post<R: Rpc>(
        &self,
        base: &str,
        url: Result<reqwest::Url, String>,
        req: &R::Request,
        timeout: Duration,
    ) -> Result<R::Response, CallError> {
        let url = url.map_err(|e| CallError::Failed(base.to_owned(), e))?;
        let format = self.format_for(base);
        let req = self
            .with_id(self.http.post(url))
            .timeout(timeout)
            .header("content-type", "application/octet-stream")
            .header(PEER_FORMAT_HEADER, format.header())
            .body(format.encode(req))
            .build()
            .map_err(|e| send_error(base, e))?;
        let sent = match &self.lean {
            // NOTE: every peer message may be sent twice, so a kept-alive
            // connection is used: Raft's are idempotent, a forwarded write
            // carries a request id the leader deduplicates, and the others
            // set a state or start what a leader ignores.
            Some(lean) if kv_client::LeanHttp::takes(&req) => {
                match tokio::time::timeout(timeout, lean.send(&req, true, CONNECT_TIMEOUT, POOL_IDLE)).await {
                    Ok(Ok(resp)) => Ok(resp),
                    Ok(Err(e)) if e.sent => Err(CallError::Failed(base.to_owned(), e.text)),
                    Ok(Err(e)) => Err(CallError::Unreachable(base.to_owned(), e.text)),
                    Err(_) => Err(CallError::Failed(base.to_owned(), format!("no answer within {timeout:?}"))),
                }
            }
            _ => self.http.execute(req).await.map_err(|e| send_error(base, e)),
        };
        let resp = sent.inspect_err(|_| {
            // The member may come back as another kvd (reinstalled at the
            // same address): ask again, starting from format 1.
            self.forget_format(base);
        })?;
        let status = resp.status();
        let theirs = from_headers(resp.headers());
        self.learn_format(base, resp.headers());
        let answered_in = PeerFormat::of_message(resp.headers().get(PEER_FORMAT_HEADER));
        let body = resp.bytes().await.map_err(|e| CallError::Failed(base.to_owned(), e.to_string()))?;
        if status == reqwest::StatusCode::CONFLICT && theirs.is_some() {
            let text = String::from_utf8_lossy(&body).into_owned();
            if self.identity.loud(Refusal::ByPeer) {
                let ours = self.identity.get().map(|i| i.to_string()).unwrap_or_default();
                tracing::error!(
                    peer = base,
                    cluster_id = %ours,
                    peer_cluster_id = %theirs.map(|i| i.to_string()).unwrap_or_default(),
                    answer = %text,
                    "a peer of another cluster refused this node's message; remove it from this cluster's members"
                );
            }
            return Err(CallError::OtherCluster(base.to_owned(), text));
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(CallError::Failed(base.to_owned(), format!("HTTP {status}: {text}")));
        }
        let answered_in = answered_in.map_err(|e| CallError::Failed(base.to_owned(), format!("bad answer: {e}")))?;
        answered_in.decode(&body).map_err(|e| CallError::Failed(base.to_owned(), format!("bad answer: {e}")))
    }
}

/// `base + path` as a URL, or why it is not one.
fn peer_url(base: &str, path: &str) -> Result<reqwest::Url, String> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    reqwest::Url::parse(&url).map_err(|e| format!("bad peer URL {url}: {e}"))
}

impl Network {
    /// `req` with this node's cluster id, when it has one.
    fn with_id(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.identity.get() {
            Some(id) => req.header(HEADER, id.to_string()),
            None => req,
        }
    }

    /// This node's cluster id.
    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// The shared HTTP client (for forwarding client API requests).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// GETs JSON from another member.
    async fn get_json<T: DeserializeOwned>(&self, base: &str, path: &str, timeout: Duration) -> Result<T, CallError> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let resp = self.with_id(self.http.get(&url)).timeout(timeout).send().await.map_err(|e| send_error(base, e))?;
        let body = resp.bytes().await.map_err(|e| CallError::Failed(base.to_owned(), e.to_string()))?;
        serde_json::from_slice(&body).map_err(|e| CallError::Failed(base.to_owned(), format!("bad answer: {e}")))
    }
}

/// A connection to one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    url: String,
    /// The URL of each [`Rpc`], parsed once.
    rpc_urls: [Result<reqwest::Url, String>; 3],
    net: Network,
    /// How many entries the next AppendEntries may carry.
    append_cap: AppendCap,
}

/// How many entries an AppendEntries to one peer may carry: half as many as
/// the last one after it failed or was dropped unfinished (openraft's
/// timeout), twice as many after it succeeded, at most
/// [`MAX_APPEND_ENTRIES`].
#[derive(Debug)]
struct AppendCap {
    entries: usize,
    /// An AppendEntries is under way, or was dropped before it finished.
    unfinished: bool,
}

impl AppendCap {
    fn new() -> AppendCap {
        AppendCap { entries: MAX_APPEND_ENTRIES, unfinished: false }
    }

    /// An AppendEntries starts: how many entries it may carry.
    fn start(&mut self) -> usize {
        if std::mem::replace(&mut self.unfinished, true) {
            self.entries = (self.entries / 2).max(1);
        }
        self.entries
    }

    /// It finished, successfully or not.
    fn finish(&mut self, ok: bool) {
        self.unfinished = false;
        self.entries = if ok { (self.entries * 2).min(MAX_APPEND_ENTRIES) } else { (self.entries / 2).max(1) };
    }
}

/// The Raft RPCs, in the order of `PeerClient::rpc_urls`.
#[derive(Debug, Clone, Copy)]
enum RaftRpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        let url = node.peer_url.clone();
        let rpc_urls = rpc::RAFT_PATHS.map(|p| peer_url(&url, p));
        PeerClient { target, url, rpc_urls, net: self.clone(), append_cap: AppendCap::new() }
    }
}

/// Runs peer call `R` to member `peer`, counting its round trip (when it
/// was answered) or its failure in the peer metrics.
async fn timed<R: Rpc, T>(
    peer: NodeId,
    call: impl std::future::Future<Output = Result<T, CallError>>,
) -> Result<T, CallError> {
    let start = Instant::now();
    let r = call.await;
    METRICS.observe_peer_call(peer, rpc_name(R::PATH), r.is_ok().then(|| start.elapsed()));
    r
}

impl PeerClient {
    async fn rpc<R, Resp, E>(
        &self,
        which: RaftRpc,
        req: &R::Request,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        R: Rpc<Response = Result<Resp, RaftError<NodeId, E>>>,
        E: std::error::Error,
    {
        debug_assert_eq!(rpc::RAFT_PATHS[which as usize], R::PATH);
        let url = self.rpc_urls[which as usize].clone();
        let sent = timed::<R, _>(self.target, self.net.post::<R>(&self.url, url, req, option.hard_ttl())).await;
        match sent {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            // NOTE: a peer of another cluster is as good as unreachable:
            // openraft backs off instead of resending at every heartbeat.
            Err(e @ (CallError::Unreachable(..) | CallError::OtherCluster(..))) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        // IMPORTANT: a follower must not apply an entry before it is on this
        // leader's disk (see crate::store::Durability): the commit index sent
        // goes no further than that. A message without entries (a heartbeat,
        // or news of a commit) first waits a little for the fsync under way,
        // so that followers hear of the commit without waiting for the next
        // heartbeat; one with entries goes at once.
        let durable = &self.net.durable;
        if let Some(commit) = rpc.leader_commit {
            if durable.synced() < Some(commit) && rpc.entries.is_empty() {
                let _ = tokio::time::timeout(COMMIT_WAIT, durable.wait(commit.index)).await;
            }
            rpc.leader_commit = rpc.leader_commit.min(durable.synced());
        }
        if rpc.entries.is_empty() {
            return self.rpc::<rpc::Append, _, _>(RaftRpc::Append, &rpc, &option).await;
        }
        // Entries go in parts that fit the RPC's time (see AppendCap and
        // APPEND_MAX_BYTES). openraft hears of a part as a partial success
        // and sends the rest next.
        let keep = fitting(&rpc.entries, self.append_cap.start(), APPEND_MAX_BYTES);
        let part = (keep < rpc.entries.len()).then(|| rpc.entries[keep - 1].log_id);
        rpc.entries.truncate(keep);
        let sent = self.rpc::<rpc::Append, _, _>(RaftRpc::Append, &rpc, &option).await;
        self.append_cap.finish(sent.is_ok());
        match (sent, part) {
            (Ok(AppendEntriesResponse::Success), Some(last)) => Ok(AppendEntriesResponse::PartialSuccess(Some(last))),
            (sent, _) => sent,
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>>
    {
        let sent = self.rpc::<rpc::Snapshot, _, _>(RaftRpc::Snapshot, &rpc, &option).await;
        if rpc.done && sent.is_ok() {
            METRICS.snapshots_sent.inc();
        }
        sent
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.rpc::<rpc::Vote, _, _>(RaftRpc::Vote, &rpc, &option).await
    }
}

/// How many of `entries`, from the first, fit in `max_entries` and
/// `max_bytes` (encoded); at least one.
fn fitting(entries: &[Entry], max_entries: usize, max_bytes: u64) -> usize {
    let most = entries.len().min(max_entries);
    if most <= 1 {
        return most;
    }
    let mut bytes = 0u64;
    let over = entries[..most].iter().position(|e| {
        bytes += encoded_size(e) as u64;
        bytes > max_bytes
    });
    over.map_or(most, |i| i.max(1))
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;
    use crate::types::{Batch, Request};

    /// An entry of about `size` bytes, encoded.
    fn entry(index: u64, size: usize) -> Entry {
        let req = Request { id: "x".repeat(size), now_ns: 0, txn: Default::default() };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch(vec![req])),
        }
    }

    #[test]
    fn an_append_carries_what_fits_in_its_bytes_and_entries_and_at_least_one() {
        let small: Vec<Entry> = (1..=10).map(|i| entry(i, 100)).collect();
        assert_eq!(fitting(&small, 64, 1 << 20), 10);
        assert_eq!(fitting(&small, 4, 1 << 20), 4, "the entry cap");
        let one = encoded_size(&small[0]) as u64;
        assert_eq!(fitting(&small, 64, 3 * one), 3, "the byte cap");
        assert_eq!(fitting(&small, 64, 4 * one - 1), 3, "the byte cap");
        let big: Vec<Entry> = (1..=3).map(|i| entry(i, 2 << 20)).collect();
        assert_eq!(fitting(&big, 64, 1 << 20), 1, "one entry goes whole whatever its size");
        assert_eq!(fitting(&[], 64, 1 << 20), 0);
    }

    #[test]
    fn an_append_cap_halves_after_a_failed_or_dropped_append_and_grows_back() {
        let mut cap = AppendCap::new();
        assert_eq!(cap.start(), MAX_APPEND_ENTRIES);
        cap.finish(true);
        assert_eq!(cap.start(), MAX_APPEND_ENTRIES, "never above the most");
        // Dropped unfinished twice (no finish), then failed.
        assert_eq!(cap.start(), MAX_APPEND_ENTRIES / 2);
        assert_eq!(cap.start(), MAX_APPEND_ENTRIES / 4);
        cap.finish(false);
        assert_eq!(cap.start(), MAX_APPEND_ENTRIES / 8);
        for _ in 0..10 {
            cap.finish(false);
            cap.start();
        }
        assert_eq!(cap.start(), 1, "never below one");
        cap.finish(true);
        assert_eq!(cap.start(), 2);
    }

    #[test]
    fn peer_urls_join_base_and_path_and_say_what_is_wrong() {
        let u = peer_url("http://127.0.0.1:7380/", rpc::Append::PATH).expect("a good URL");
        assert_eq!(u.as_str(), "http://127.0.0.1:7380/peer/v1/append");
        let e = peer_url("127.0.0.1:7380", rpc::Vote::PATH).expect_err("no scheme");
        assert!(e.contains("bad peer URL 127.0.0.1:7380/peer/v1/vote"), "{e}");
    }
}
