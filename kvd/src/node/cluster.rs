//! A node as a member of a cluster: writes and linearizable reads from any
//! member (forwarded to the leader over the peer API), membership changes,
//! leadership transfer, and status.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kv_client::{AddMember, ClusterInfo, MemberInfo, NodeStatus, ANONYMOUS, NODE_WRITER};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{ChangeMembers, ServerState};

use super::Node;
use crate::auth::{Authority, Denied, Mode};
use crate::network::CallError;
use crate::proposer::ProposeError;
use crate::rpc::{self, ForwardError, Forwarded, NodeIdentity, Rpc};
use crate::types::{Member, NodeId, Request, Response};

/// Pause between attempts while the leader changes.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long a member status query may take.
pub(crate) const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a new member may take to catch up before it is promoted.
pub(crate) const JOIN_TIMEOUT: Duration = Duration::from_secs(300);

impl From<ProposeError> for ForwardError {
    fn from(e: ProposeError) -> ForwardError {
        match e {
            ProposeError::NotLeader(l) => ForwardError::NotLeader(l),
            ProposeError::Failed(m) => ForwardError::Failed(m),
        }
    }
}

/// Why a cluster operation failed; the API maps each to its status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// No leader, no quorum, or not in time: retry later (503).
    #[error("{0}")]
    Unavailable(String),
    /// The request does not make sense (400).
    #[error("{0}")]
    Invalid(String),
    /// No such member (404).
    #[error("{0}")]
    NotFound(String),
    /// A disk is nearly full; writes are refused until space is freed (507).
    #[error("{0}")]
    NoSpace(String),
    /// The caller has no usable credential (401) or lacks a right (403).
    #[error("{0}")]
    Denied(Denied),
    /// The node to add cannot join this cluster as it is: it belongs to
    /// another cluster, holds data, or runs with another id (409). Nothing
    /// was proposed; the message says how to make it joinable.
    #[error("{0}")]
    NotJoinable(String),
    /// A write was not confirmed in time but may still apply (504): the
    /// caller must treat its outcome as unknown, or resend it with the same
    /// request id, which answers with the outcome once it is known.
    #[error("{0}")]
    UnknownOutcome(String),
}

type Result<T> = std::result::Result<T, ClusterError>;

pub(crate) fn unavailable(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Unavailable(e.to_string())
}

impl Node {
    /// The leader, waiting until `deadline` for one to be known.
    pub async fn wait_for_leader(&self, deadline: Instant) -> Result<NodeId> {
        let mut rx = self.raft.metrics();
        loop {
            if let Some(l) = rx.borrow_and_update().current_leader {
                return Ok(l);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, rx.changed()).await.map(|r| r.is_ok()) != Ok(true) {
                return Err(ClusterError::Unavailable(format!(
                    "no leader elected within {} ms; retry later",
                    self.cfg.request_timeout_ms
                )));
            }
        }
    }

    /// Refuses service on a node that was removed from its cluster: its state
    /// no longer advances, so nothing it says can be trusted as current.
    pub fn check_member(&self) -> Result<()> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let nodes: Vec<NodeId> = m.membership().nodes().map(|(id, _)| *id).collect();
        if !nodes.is_empty() && !nodes.contains(&self.cfg.id) {
            return Err(ClusterError::Unavailable(format!(
                "node {} was removed from the cluster; use another member",
                self.cfg.id
            )));
        }
        Ok(())
    }

    /// Whether this member may answer a stale read from its own state.
    ///
    /// IMPORTANT: a stale read never goes back in revision on a member, not
    /// even across its crash. The state machine's writes are not fsync'd on
    /// their own (they ride along with the next log fsync, crate::sm), so
    /// after a crash the state may be behind what was served, and openraft
    /// re-applies only up to the commit index it last saved, which is not
    /// fsync'd either. What is durable is the log: everything ever applied
    /// here was on disk in it first. So until the state machine reaches the
    /// last log index found on disk at start (`stale_from`), or a read index
    /// from the leader (which covers everything ever committed) has been
    /// applied, stale reads get 503. Once open, the gate costs one atomic
    /// load per read, and no read ever waits for an fsync.
    pub fn check_stale(&self) -> Result<()> {
        if self.stale_open.load(Ordering::Acquire) {
            return Ok(());
        }
        let applied = self.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        if applied >= self.stale_from {
            self.stale_open.store(true, Ordering::Release);
            return Ok(());
        }
        Err(ClusterError::Unavailable(format!(
            "node {} restarted and has applied index {applied} of the {} it had before; \
             it answers stale reads once caught up (retry, or read from another member)",
            self.cfg.id, self.stale_from
        )))
    }

    /// How to reach a member, from the current membership.
    pub fn member(&self, id: NodeId) -> Option<Member> {
        self.raft.metrics().borrow().membership_config.membership().get_node(&id).cloned()
    }

    /// A request id of this node's own for a write sent without one, stamped
    /// with `now_ns` as its time of first use (see crate::dedup).
    pub fn new_request_id(&self, now_ns: i64) -> String {
        crate::dedup::new_id(self.cfg.id, self.started_ns, self.seq.fetch_add(1, Ordering::Relaxed), now_ns)
    }

    /// Writes through the leader, wherever it is, on behalf of `authority`
    /// (checked there); waits at most the request timeout, across leader
    /// changes.
    pub async fn write(&self, mut req: Request, authority: Authority) -> Result<Response> {
        self.check_member()?;
        self.disk.check(self.cfg.id).map_err(ClusterError::NoSpace)?;
        let deadline = Instant::now() + self.request_timeout();
        if req.id.is_empty() {
            // NOTE: an id makes resending after a lost answer or a leader
            // change safe: the state machine applies an id once.
            req.id = self.new_request_id(req.now_ns);
        }
        let ms = self.cfg.request_timeout_ms;
        let forwarded = Forwarded { authorization: authority.forwarded(), req };
        self.on_leader::<rpc::Propose, _, _, _>(
            deadline,
            &forwarded,
            |left| self.propose_local(forwarded.req.clone(), &authority, left),
            |e, maybe| {
                if maybe {
                    ClusterError::UnknownOutcome(format!(
                        "the write was not committed within {ms} ms ({e}); it may still apply: \
                     resend it with the same X-Kv-Request-Id (this answer carries it) to learn its outcome"
                    ))
                } else {
                    ClusterError::Unavailable(format!(
                        "the write was not taken within {ms} ms ({e}); nothing was written"
                    ))
                }
            },
        )
        .await
    }

    /// Returns once this node's state machine holds everything committed
    /// before the call (read index, confirmed by the leader with a quorum).
    pub async fn linearize(&self) -> Result<()> {
        self.check_member()?;
        let timeout = self.request_timeout();
        let deadline = Instant::now() + timeout;
        // NOTE: concurrent reads share one read index fetched after all of
        // them began, as etcd does: one round trip to the leader, and one
        // quorum check there, for a burst of reads instead of one each.
        let fetch = || async move {
            self.on_leader::<rpc::ReadIndex, _, _, _>(
                Instant::now() + timeout,
                &(),
                |left| self.read_index_local(left),
                |e, _| ClusterError::Unavailable(format!("cannot confirm a read index with the leader: {e}")),
            )
            .await
        };
        let index = tokio::time::timeout(timeout, self.linearize_rounds.run(fetch))
            .await
            .map_err(|_| unavailable(format!("no read index confirmed within {} ms", self.cfg.request_timeout_ms)))??;
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|_| unavailable("this member is too far behind the leader to answer in time"))?;
        // NOTE: caught up with everything ever committed (see `check_stale`).
        self.stale_open.store(true, Ordering::Release);
        Ok(())
    }

    /// Proposes a write here, if this node leads (also for forwarded
    /// writes), once `authority` may make it.
    pub async fn propose_local(
        &self,
        mut req: Request,
        authority: &Authority,
        left: Duration,
    ) -> std::result::Result<Response, ForwardError> {
        // NOTE: one deadline for every wait below, so the member that
        // forwarded the write hears back within its own wait.
        let deadline = Instant::now() + left;
        let left = || deadline.saturating_duration_since(Instant::now());
        {
            let m = self.raft.metrics();
            let m = m.borrow();
            match m.current_leader {
                Some(l) if l == self.cfg.id => {}
                other => return Err(ForwardError::NotLeader(other)),
            }
            // NOTE: a leader cut off from its quorum would append the write
            // and might commit it after the client gave up. Refusing it here
            // makes the error definite: nothing was written.
            let voters = m.membership_config.membership().voter_ids().count();
            if let Some(ms) = m.millis_since_quorum_ack.filter(|ms| voters > 1 && *ms > self.cfg.election_timeout_ms) {
                return Err(ForwardError::NoQuorum(format!(
                    "the leader (node {}) has not heard from a quorum for {ms} ms; nothing was written",
                    self.cfg.id
                )));
            }
        }
        self.disk.check(self.cfg.id).map_err(ForwardError::NoSpace)?;
        // IMPORTANT: the write is authorized here, on the member that
        // decides it, against this leader's token table, whatever the member
        // that took it from the client checked: that member may not have
        // applied a revocation yet.
        // IMPORTANT: only a leader's own proposer writes the dedup window and
        // the rules of writes; no client may, in any auth mode, not even
        // through the peer port.
        let ops = || req.txn.success.iter().chain(&req.txn.failure);
        if ops().any(|op| matches!(op, crate::types::Op::SetDedupWindow(_))) && !matches!(authority, Authority::Node) {
            return Err(ForwardError::Denied(Denied::forbidden("the request-id window is set by the leader only")));
        }
        if ops().any(|op| matches!(op, crate::types::Op::SetRules(_))) && !matches!(authority, Authority::Node) {
            return Err(ForwardError::Denied(Denied::forbidden("the rules of writes are set by the leader only")));
        }
        if ops().any(|op| matches!(op, crate::types::Op::Writer(_))) {
            return Err(ForwardError::Denied(Denied::forbidden(
                "the writer of a request is recorded by the leader only",
            )));
        }
        let writer = if self.auth.mode != Mode::None && !matches!(authority, Authority::Node) {
            self.await_own_term_applied(left()).await.map_err(|e| ForwardError::NotReady(e.to_string()))?;
            let tokens = self.sm.tokens();
            match authority {
                // NOTE: this member worked the caller out and checked its
                // rights; whether its credential still holds, now that the
                // table holds every revocation before this term, is all
                // that is left (a token's rights change only with its hash).
                Authority::Checked { caller, .. } => caller.need_valid(&tokens).map(|()| caller.who().to_owned()),
                Authority::Client(a) => self
                    .auth
                    .caller_from(a.as_deref(), &tokens)
                    .and_then(|caller| caller.need_txn(&req.txn).map(|()| caller.who().to_owned())),
                Authority::Node => Ok(NODE_WRITER.to_owned()),
            }
            .map_err(ForwardError::Denied)?
        } else {
            match authority {
                Authority::Node => NODE_WRITER.to_owned(),
                Authority::Checked { caller, .. } => caller.who().to_owned(),
                Authority::Client(_) => ANONYMOUS.to_owned(),
            }
        };
        // NOTE: the writer as this leader authorized it, recorded with the
        // revision the request makes (crate::txn); first, so that it holds
        // whichever branch runs.
        for ops in [&mut req.txn.success, &mut req.txn.failure] {
            if !ops.is_empty() {
                ops.insert(0, crate::types::Op::Writer(writer.clone()));
            }
        }
        match tokio::time::timeout(left(), self.proposer.propose(req)).await {
            Ok(r) => r.map_err(ForwardError::from),
            Err(_) => Err(ForwardError::Failed("not committed in time".into())),
        }
    }

    /// Returns once this leader has applied an entry of its own term (the
    /// blank one it appends when elected): every entry committed before its
    /// term, every revocation a client saw answered among them, is then in
    /// its state machine. At once in the steady state.
    pub async fn await_own_term_applied(&self, left: Duration) -> Result<()> {
        let own_term_applied = |m: &openraft::RaftMetrics<NodeId, Member>| {
            m.last_applied.is_some_and(|l| l.leader_id.term >= m.current_term)
        };
        if own_term_applied(&self.raft.metrics().borrow()) {
            return Ok(());
        }
        self.raft
            .wait(Some(left))
            .metrics(own_term_applied, "leader applied its own term")
            .await
            .map(|_| ())
            .map_err(|_| unavailable("the new leader has not applied the entries of earlier terms yet; retry"))
    }

    /// The read index, if this node leads (also for followers' requests).
    /// Requests that arrive together share one quorum check.
    pub async fn read_index_local(&self, left: Duration) -> std::result::Result<u64, ForwardError> {
        let timeout = self.request_timeout();
        let check = || async move {
            match tokio::time::timeout(timeout, self.raft.get_read_log_id()).await {
                Ok(Ok((read, _))) => Ok(read.map(|l| l.index).unwrap_or(0)),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    Err(ForwardError::NotLeader(f.leader_id))
                }
                Ok(Err(e)) => Err(ForwardError::Failed(e.to_string())),
                Err(_) => Err(ForwardError::Failed("timeout".into())),
            }
        };
        tokio::time::timeout(left, self.read_index_rounds.run(check))
            .await
            .unwrap_or_else(|_| Err(ForwardError::Failed("timeout".into())))
    }

    /// Runs `local` if this node leads, else sends `req` to the leader as
    /// RPC `R`; tries again across leader changes until
    /// `deadline`, then reports the last failure through `fail`, with
    /// whether a leader may have taken the request (an attempt failed other
    /// than by "not the leader").
    async fn on_leader<R, T, L, Fut>(
        &self,
        deadline: Instant,
        req: &R::Request,
        local: L,
        fail: impl FnOnce(ForwardError, bool) -> ClusterError,
    ) -> Result<T>
    where
        R: Rpc<Response = std::result::Result<T, ForwardError>>,
        L: Fn(Duration) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, ForwardError>>,
    {
        let mut maybe_taken = false;
        loop {
            let leader = match self.wait_for_leader(deadline).await {
                Ok(l) => l,
                Err(e) if maybe_taken => return Err(fail(ForwardError::Failed(e.to_string()), true)),
                Err(e) => return Err(e),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = if leader == self.cfg.id {
                local(left).await
            } else {
                match self.member(leader) {
                    Some(m) => self
                        .net
                        .call::<R>(leader, &m.peer_url, req, left)
                        .await
                        .unwrap_or_else(|e| Err(ForwardError::Failed(e.to_string()))),
                    None => Err(ForwardError::NotLeader(None)),
                }
            };
            match attempt {
                Ok(v) => return Ok(v),
                Err(ForwardError::NoSpace(m)) => return Err(ClusterError::NoSpace(m)),
                Err(ForwardError::Denied(d)) => return Err(ClusterError::Denied(d)),
                Err(e) => {
                    maybe_taken |= !matches!(
                        e,
                        ForwardError::NotLeader(_) | ForwardError::NoQuorum(_) | ForwardError::NotReady(_)
                    );
                    if Instant::now() + RETRY_PAUSE >= deadline {
                        return Err(fail(e, maybe_taken));
                    }
                    tracing::debug!(error = %e, leader, path = R::PATH, "attempt through the leader failed; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// This node's own status.
    pub async fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let committed = self.raft.with_raft_state(|st| st.committed).await.ok().flatten();
        let voter = m.membership_config.membership().voter_ids().any(|v| v == self.cfg.id);
        let removed = self.check_member().is_err();
        let role = match m.state {
            _ if removed => "removed",
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Follower if voter => "follower",
            ServerState::Follower | ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        NodeStatus {
            id: self.cfg.id,
            role: role.into(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: committed.map(|l| l.index).unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            revision: *self.sm.subscribe().borrow(),
            db_size_bytes: self.db_size(),
            peer_url: self.peer_url.clone(),
            client_url: self.client_url.clone(),
            limits: None,
        }
    }

    /// Every member with its own status (asked in parallel, briefly).
    pub async fn cluster_info(&self) -> ClusterInfo {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let me = self.status().await;
        let asks = membership.nodes().map(|(id, member)| {
            let (id, member) = (*id, member.clone());
            let me = me.clone();
            async move {
                let status = if id == me.id {
                    Ok(me)
                } else {
                    self.net
                        .call::<rpc::Status>(id, &member.peer_url, &(), STATUS_TIMEOUT)
                        .await
                        .map_err(|e| e.to_string())
                };
                (id, member, status)
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        let head = answers.iter().filter_map(|(_, _, s)| s.as_ref().ok()).map(|s| s.last_log_index).max();
        let members = answers
            .into_iter()
            .map(|(id, member, status)| {
                let (status, error) = match status {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(e)),
                };
                MemberInfo {
                    id,
                    peer_url: member.peer_url,
                    client_url: member.client_url,
                    voter: voters.contains(&id),
                    lag: status.as_ref().zip(head).map(|(s, h)| h.saturating_sub(s.applied_index)),
                    status,
                    error,
                }
            })
            .collect();
        ClusterInfo { leader: m.current_leader, term: m.current_term, members }
    }

    /// Adds a member as a learner; unless it should stay one, waits until it
    /// has caught up and promotes it to voter. Leader only.
    pub async fn add_member(&self, req: AddMember) -> Result<()> {
        if req.id == 0 {
            return Err(ClusterError::Invalid("member id must be non-zero".into()));
        }
        check_url(&req.peer_url, "peer_url")?;
        if let Some(u) = &req.client_url {
            check_url(u, "client_url")?;
        }
        if self.member(req.id).is_some() {
            return Err(ClusterError::Invalid(format!("node {} is already a member", req.id)));
        }
        // IMPORTANT: the new node is asked who it is before anything is
        // proposed. A node of another cluster once answered this leader's
        // AppendEntries as a member (both logs began with the same log ids),
        // was promoted, and the joint configuration then waited for a vote
        // that never came: the cluster had no leader from then on.
        self.check_joinable(&req).await?;
        let member = Member { peer_url: req.peer_url.clone(), client_url: req.client_url.clone().unwrap_or_default() };
        tracing::info!(node_id = req.id, peer_url = %req.peer_url, learner = req.learner, "adding member");
        let add = self.raft.add_learner(req.id, member, !req.learner);
        match tokio::time::timeout(JOIN_TIMEOUT, add).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unavailable(format!("adding node {} failed: {e}", req.id))),
            Err(_) => {
                return Err(unavailable(format!(
                    "node {} was added as a learner but did not catch up within {} s; is it running at {}?",
                    req.id,
                    JOIN_TIMEOUT.as_secs(),
                    req.peer_url
                )))
            }
        }
        if !req.learner {
            self.promote(req.id).await?;
        }
        Ok(())
    }

    /// Asks the node `req` adds who it is: it must answer, run with the
    /// id it is added as, and be empty (or hold this cluster's data).
    async fn check_joinable(&self, req: &AddMember) -> Result<()> {
        let url = &req.peer_url;
        let theirs: NodeIdentity = match self.net.call::<rpc::Identity>(req.id, url, &(), STATUS_TIMEOUT).await {
            Ok(i) => i,
            Err(e @ CallError::Unreachable(..)) => {
                return Err(unavailable(format!(
                "cannot reach node {} at {url} ({e}); start it (empty, without --bootstrap) first; nothing was changed",
                req.id
            )))
            }
            Err(e) => {
                return Err(ClusterError::NotJoinable(format!(
                    "node {} at {url} did not say who it is ({e}); is it a kvd of this version? nothing was changed",
                    req.id
                )))
            }
        };
        let ours = self.net.identity().get().map(|i| i.to_string());
        let how = "To join it to this cluster, stop it, wipe or reset its data dir (or give it a new one), start it \
                   without --bootstrap (bootstrap = false in kvd.toml) and add it again; nothing was changed";
        let this = ours.as_deref().unwrap_or("(no id yet)");
        let refuse = |why: String| {
            tracing::warn!(node_id = req.id, peer_url = %url, reason = %why, "member add refused");
            Err(ClusterError::NotJoinable(format!("{why}. {how}")))
        };
        match &theirs.cluster_id {
            Some(c) if Some(c) != ours.as_ref() => {
                return refuse(format!("node at {url} belongs to another cluster, {c} (this is cluster {this})"))
            }
            None if theirs.holds_data => {
                return refuse(format!("node at {url} holds data of another cluster (this is cluster {this})"))
            }
            _ => {}
        }
        if theirs.node_id != req.id {
            return Err(ClusterError::NotJoinable(format!(
                "node at {url} runs with --id {}, not {}: add it as {} or restart it with --id {}; nothing was changed",
                theirs.node_id, req.id, theirs.node_id, req.id
            )));
        }
        Ok(())
    }

    /// Who this node is (see [`NodeIdentity`]).
    pub async fn identity_info(&self) -> NodeIdentity {
        let m = self.raft.metrics().borrow().clone();
        let holds_data = m.last_log_index.is_some()
            || m.snapshot.is_some()
            || m.membership_config.membership().nodes().next().is_some()
            || self.raft.is_initialized().await.unwrap_or(true);
        NodeIdentity { node_id: self.cfg.id, cluster_id: self.net.identity().get().map(|i| i.to_string()), holds_data }
    }

    /// Makes a learner a voter. Leader only.
    pub async fn promote(&self, id: NodeId) -> Result<()> {
        if self.member(id).is_none() {
            return Err(ClusterError::NotFound(format!("node {id} is not a member")));
        }
        tracing::info!(node_id = id, "promoting member to voter");
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await
    }

    /// Removes a member (voter or learner). Leader only; a leader removing
    /// itself hands leadership to another voter first (the caller then
    /// forwards the removal to it).
    pub async fn remove_member(&self, id: NodeId) -> Result<()> {
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        if membership.get_node(&id).is_none() {
            return Err(ClusterError::NotFound(format!("node {id} is not a member")));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        tracing::info!(node_id = id, "removing member");
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(ClusterError::Invalid(format!("node {id} is the only voter; add another first")));
            }
            self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id]))).await
        } else {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await
        }
    }

    /// How long a membership change may take to commit.
    pub fn change_timeout(&self) -> Duration {
        self.request_timeout() * 4
    }

    async fn change(&self, c: ChangeMembers<NodeId, Member>) -> Result<()> {
        match tokio::time::timeout(self.change_timeout(), self.raft.change_membership(c, false)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(format!("membership change failed: {e}"))),
            Err(_) => Err(unavailable("membership change did not commit in time; it may still complete")),
        }
    }
}

fn check_url(u: &str, what: &str) -> Result<()> {
    let ok = (u.starts_with("http://") || u.starts_with("https://"))
        && u.split("://").nth(1).is_some_and(|rest| rest.contains(':') && !rest.trim_end_matches('/').is_empty());
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Invalid(format!("{what} {u:?} must look like http://HOST:PORT")))
    }
}
