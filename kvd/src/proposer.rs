//! Batches concurrent client writes into one Raft entry.
//!
//! NOTE: openraft 0.9 appends each client write on its own before it takes
//! the next, and on a single voter the append includes the fsync (see
//! crate::log_store), so group commit happens here: one worker takes every
//! write queued while the previous entry was being committed and proposes
//! them as one [`Batch`]. One append and one fsync then serve them all; a
//! lone client still gets its write proposed at once.
//!
//! One entry in flight, not several: one worker makes fewer, larger entries
//! than several, and so less CPU per write (BENCHMARKS.md).
//!
//! The worker also puts this node's dedup window into the log (see
//! crate::dedup) at the front of the first entry it proposes while the
//! log's window differs from it.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, RwLock};

use crate::sm::SmReader;
use crate::types::{Batch, NodeId, Op, Raft, Request, Response, Txn};

/// Most requests in one entry.
const MAX_BATCH: usize = 512;
/// Stop adding requests to an entry once it holds this many value bytes.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Why a write was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; the leader is given when known.
    #[error("this node is not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// Raft failed or is shutting down.
    #[error("{0}")]
    Failed(String),
}

struct Pending {
    req: Request,
    size: usize,
    reply: oneshot::Sender<Result<Response, ProposeError>>,
}

/// The front door for writes.
#[derive(Debug, Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
    /// Held for writing while proposals must wait (leadership transfer).
    pub gate: Arc<RwLock<()>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("id", &self.req.id).finish()
    }
}

impl Proposer {
    /// Starts the worker; `dedup_window_ms` is the window this node writes
    /// into the log when it leads.
    pub fn start(raft: Raft, sm: Arc<SmReader>, dedup_window_ms: u64) -> Proposer {
        let (tx, rx) = mpsc::channel(8192);
        let gate = Arc::new(RwLock::new(()));
        tokio::spawn(worker(raft, rx, gate.clone(), sm, dedup_window_ms));
        Proposer { tx, gate }
    }

    /// Whether proposals are held (or about to be) by a leadership transfer.
    pub fn held(&self) -> bool {
        // NOTE: the lock is fair: readers wait behind a writer that waits.
        self.gate.try_read().is_err()
    }

    /// Proposes a write and waits until it is committed and applied.
    pub async fn propose(&self, req: Request) -> Result<Response, ProposeError> {
        let size = req
            .txn
            .success
            .iter()
            .chain(&req.txn.failure)
            .map(|op| match op {
                Op::Put { key, value, .. } => key.len() + value.as_ref().map_or(0, |v| v.len()),
                Op::Delete { key, .. } => key.len(),
                Op::CreateToken(t) => t.name.len() + t.hash.len() + 64,
                Op::RevokeToken(name) => name.len(),
                Op::SetDedupWindow(_) => 8,
                Op::SetRules(_) => 4,
                Op::Writer(w) => w.len(),
            })
            .sum();
        let (reply, rx) = oneshot::channel();
        let stopped = || ProposeError::Failed("the node is shutting down".into());
        self.tx.send(Pending { req, size, reply }).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn worker(raft: Raft, mut rx: mpsc::Receiver<Pending>, gate: Arc<RwLock<()>>, sm: Arc<SmReader>, window_ms: u64) {
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.size;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let (mut reqs, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.req, p.reply)).unzip();
        crate::metrics::METRICS.proposals.observe_count(reqs.len() as u64);
        // NOTE: stamped once the gate is open: a leadership transfer may hold
        // it for seconds.
        let open = gate.read().await;
        // IMPORTANT: one clock for the log: the leader stamps every request
        // of the entry with its own time when it proposes them, whichever
        // member took them. The entry's time (crate::dedup) then never mixes
        // clocks within an entry, and a member whose clock is off cannot
        // prune the cluster's request ids early unless it leads.
        let now_ns = kv_client::clock::now_ns();
        for r in &mut reqs {
            r.now_ns = now_ns;
        }
        // NOTE: the window goes first, so the writes of the same entry are
        // already kept for it; its answer is nobody's and is dropped below.
        let set_window = sm.dedup_window_ms() != window_ms;
        if set_window {
            tracing::info!(window_ms, "writing this node's dedup window into the log");
            let txn = Txn { compare: vec![], success: vec![Op::SetDedupWindow(window_ms)], failure: vec![] };
            reqs.insert(0, Request { id: String::new(), now_ns, txn });
        }
        // NOTE: the rules go first too: every write of the entry, and of
        // the log after it, is applied by them on every member.
        let set_rules = sm.rules() < crate::txn::RULES;
        if set_rules {
            tracing::info!(rules = crate::txn::RULES, "writing this node's rules of writes into the log");
            let txn = Txn { compare: vec![], success: vec![Op::SetRules(crate::txn::RULES)], failure: vec![] };
            reqs.insert(0, Request { id: String::new(), now_ns, txn });
        }
        let result = raft.client_write(Batch(reqs)).await;
        drop(open);
        match result {
            Ok(r) => {
                let ours = usize::from(set_window) + usize::from(set_rules);
                for (reply, resp) in replies.into_iter().zip(r.data.into_iter().skip(ours)) {
                    let _ = reply.send(Ok(resp));
                }
            }
            Err(e) => {
                let leader = match &e {
                    RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Some(f.leader_id),
                    _ => None,
                };
                for reply in replies {
                    let err = match leader {
                        Some(l) => ProposeError::NotLeader(l),
                        None => ProposeError::Failed(format!("write failed: {e}")),
                    };
                    let _ = reply.send(Err(err));
                }
            }
        }
    }
}
