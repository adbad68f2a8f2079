//! Leadership transfer (also the first step of a leader removing itself):
//! once the target holds the whole log, the other voters hold their
//! elections, this leader holds proposals and stops its heartbeats, and the
//! target is asked to campaign. And [`Holds`], the switches it turns off,
//! which turn themselves back on when their guards are dropped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedRwLockWriteGuard;

use super::cluster::{unavailable, ClusterError, STATUS_TIMEOUT};
use super::Node;
use crate::rpc;
use crate::types::NodeId;

/// A switch of a running node (its heartbeats, its elections) that is on
/// unless held: off while any [`HoldGuard`] lives or a timed hold (asked by
/// a peer) has not run out.
pub struct Holds {
    state: Mutex<HoldState>,
    set: Box<dyn Fn(bool) + Send + Sync>,
}

#[derive(Debug, Default)]
struct HoldState {
    /// Live guards.
    guards: usize,
    /// The timed hold in force (its generation), if any.
    timed: Option<u64>,
    /// Generations handed out to timed holds.
    generation: u64,
}

impl std::fmt::Debug for Holds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holds").field("state", &*self.lock()).finish()
    }
}

/// Holds a [`Holds`] switch off until dropped.
#[derive(Debug)]
#[must_use = "the hold ends when the guard is dropped"]
pub struct HoldGuard(Arc<Holds>);

impl Holds {
    /// A switch that is on; `set` turns the real thing on (`true`) or off.
    pub fn new(set: impl Fn(bool) + Send + Sync + 'static) -> Arc<Holds> {
        Arc::new(Holds { state: Mutex::default(), set: Box::new(set) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HoldState> {
        // NOTE: the state is a few integers, consistent after every statement.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the real switch from `st`; called with the lock held, so the
    /// last value set is the one the state implies.
    fn apply(&self, st: &HoldState) {
        (self.set)(st.guards == 0 && st.timed.is_none());
    }

    /// Whether the switch is held off.
    pub fn held(&self) -> bool {
        let st = self.lock();
        st.guards > 0 || st.timed.is_some()
    }

    /// Holds the switch off until the guard is dropped.
    pub fn hold(self: &Arc<Self>) -> HoldGuard {
        let mut st = self.lock();
        st.guards += 1;
        self.apply(&st);
        HoldGuard(self.clone())
    }

    /// Holds the switch off for `d`, replacing the timed hold in force;
    /// zero ends it now. Guards are not affected. Needs a Tokio runtime.
    pub fn hold_for(self: &Arc<Self>, d: Duration) {
        let mut st = self.lock();
        st.generation += 1;
        let generation = st.generation;
        st.timed = (!d.is_zero()).then_some(generation);
        self.apply(&st);
        if d.is_zero() {
            return;
        }
        let holds = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let mut st = holds.lock();
            if st.timed == Some(generation) {
                st.timed = None;
                holds.apply(&st);
            }
        });
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.guards = st.guards.saturating_sub(1);
        self.0.apply(&st);
    }
}

/// Everything a transfer holds. Dropping it, however the transfer ends
/// (done, failed, out of time, panicked), gives everything back: heartbeats
/// and this node's elections at once, proposals at once, and the peers'
/// election holds by a task of its own (they also run out by themselves).
struct TransferHolds {
    node: Arc<Node>,
    /// Peers told to hold their elections, not yet told to stop: id, URL.
    peers: Vec<(NodeId, String)>,
    _heartbeats: HoldGuard,
    _elections: HoldGuard,
    _proposals: OwnedRwLockWriteGuard<()>,
}

impl TransferHolds {
    /// Tells the peers to stop holding their elections, and waits for their
    /// answers (each bounded), then drops the rest.
    async fn release(mut self) {
        let peers = std::mem::take(&mut self.peers);
        release_peers(&self.node, &peers).await;
    }
}

impl Drop for TransferHolds {
    fn drop(&mut self) {
        if self.peers.is_empty() {
            return;
        }
        let (node, peers) = (self.node.clone(), std::mem::take(&mut self.peers));
        // NOTE: no runtime means the process is going away; the peers'
        // holds run out by themselves.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { release_peers(&node, &peers).await });
        }
    }
}

/// Asks each peer at once to hold its elections for `ms` (0: stop holding).
async fn hold_peers(node: &Node, peers: &[(NodeId, String)], ms: u64) {
    let asks = peers.iter().map(|(id, url)| async move {
        if let Err(e) = node.net.call::<rpc::HoldElections>(*id, url, &ms, STATUS_TIMEOUT).await {
            tracing::warn!(peer = %url, hold_ms = ms, error = %e, "cannot set a peer's election hold");
        }
    });
    futures_util::future::join_all(asks).await;
}

async fn release_peers(node: &Node, peers: &[(NodeId, String)]) {
    hold_peers(node, peers, 0).await;
}

impl Node {
    /// The voter best placed to take over from this leader: the other voter
    /// whose log matches furthest.
    pub fn successor(&self) -> Option<NodeId> {
        let m = self.raft.metrics().borrow().clone();
        let repl = m.replication.clone().unwrap_or_default();
        m.membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != self.cfg.id)
            .max_by_key(|v| repl.get(v).cloned().flatten().map(|l| l.index))
    }

    /// How long the peers hold their elections for a transfer.
    fn transfer_hold(&self) -> Duration {
        Duration::from_millis(self.cfg.election_timeout_ms * 8)
    }

    /// The longest a leadership transfer takes, asked here, before it gives
    /// up (and gives back all it held).
    pub fn transfer_timeout(&self) -> Duration {
        self.request_timeout() * 2
            + self.transfer_hold()
            + Duration::from_millis(self.cfg.election_timeout_ms * 2)
            + STATUS_TIMEOUT * 2
    }

    /// Hands leadership to voter `target`: once it has caught up, the other
    /// voters hold their elections and this leader stops its heartbeats, so
    /// the target's election wins. Leader only.
    pub async fn transfer_leader(self: &Arc<Self>, target: NodeId) -> Result<(), ClusterError> {
        // IMPORTANT: the transfer runs in a task of its own, which the
        // request only awaits, and everything it holds is in guards
        // (TransferHolds). A request's future is dropped when its client goes
        // away (Ctrl-C, a proxy's timeout): run in it, a transfer cut off
        // after it stopped the heartbeats left them off for good (the next
        // time this node led, its followers' leases ran out and elections
        // churned). Guards alone would undo the holds, but a drop cannot wait
        // for the peers to hear of it, and a transfer cut off after the
        // target was asked to campaign could still move leadership with its
        // requester gone: in a task of its own it always ends the same way,
        // within transfer_timeout (every wait in it has a deadline, and the
        // whole is under one), and the guards give back what it held on any
        // way out, a panic or an out-of-time drop included.
        let node = self.clone();
        let limit = self.transfer_timeout();
        let task = tokio::spawn(async move {
            tokio::time::timeout(limit, node.run_transfer(target)).await.unwrap_or_else(|_| {
                Err(unavailable(format!("the transfer to node {target} did not end within {} s", limit.as_secs())))
            })
        });
        task.await.unwrap_or_else(|e| Err(unavailable(format!("the transfer to node {target} failed: {e}"))))
    }

    async fn run_transfer(self: &Arc<Self>, target: NodeId) -> Result<(), ClusterError> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(target) {
            return Ok(());
        }
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        if !voters.contains(&target) {
            return Err(ClusterError::Invalid(format!("node {target} is not a voter")));
        }
        let Some(target_url) = self.member(target).map(|mb| mb.peer_url) else {
            return Err(ClusterError::Invalid(format!("node {target} is not a voter")));
        };
        let others: Vec<(NodeId, String)> = voters
            .iter()
            .filter(|v| **v != target && **v != self.cfg.id)
            .filter_map(|v| self.member(*v).map(|mb| (*v, mb.peer_url)))
            .collect();
        tracing::info!(target, "transferring leadership");
        let deadline = Instant::now() + self.request_timeout() * 2;
        let left = || deadline.saturating_duration_since(Instant::now());
        // 1. The target must hold the whole log.
        let last = m.last_log_index;
        self.raft
            .wait(Some(left()))
            .metrics(
                |m| {
                    let matched = m.replication.as_ref().and_then(|r| r.get(&target).cloned().flatten());
                    matched.map(|l| l.index) >= last
                },
                "transfer target caught up",
            )
            .await
            .map_err(|_| unavailable(format!("node {target} did not catch up in time")))?;
        // 2. No new entries (they would renew the followers' leases), nobody
        // but the target may campaign for a while, and no heartbeats. The
        // proposer lets go of the gate between entries; one that does not
        // commit in time fails the transfer.
        let proposals = tokio::time::timeout(left(), self.proposer.gate.clone().write_owned())
            .await
            .map_err(|_| unavailable("writes under way did not finish in time for the transfer"))?;
        let hold = self.transfer_hold();
        let holds = TransferHolds {
            node: self.clone(),
            peers: others.clone(),
            _heartbeats: self.heartbeats.hold(),
            _elections: self.elections.hold(),
            _proposals: proposals,
        };
        hold_peers(self, &others, hold.as_millis() as u64).await;
        // 3. Once the followers' leader leases have run out, the target campaigns.
        let result = async {
            // NOTE: openraft's leader lease is the maximum election timeout.
            let lease = self.cfg.election_timeout_ms * 2 + self.cfg.heartbeat_ms * 2;
            tokio::time::sleep(Duration::from_millis(lease)).await;
            loop {
                let _ = self.net.call::<rpc::Elect>(target, &target_url, &(), STATUS_TIMEOUT).await;
                let wait = self.raft.wait(Some(Duration::from_millis(self.cfg.election_timeout_ms * 2)));
                if wait.metrics(|m| m.current_leader == Some(target), "new leader").await.is_ok() {
                    return Ok(());
                }
                if Instant::now() >= deadline + hold {
                    return Err(unavailable(format!("node {target} did not take over in time")));
                }
            }
        }
        .await;
        holds.release().await;
        match &result {
            Ok(()) => tracing::info!(target, "leadership transferred"),
            Err(e) => tracing::warn!(target, error = %e, "leadership transfer failed"),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn switch() -> (Arc<Holds>, Arc<AtomicBool>) {
        let on = Arc::new(AtomicBool::new(true));
        let seen = on.clone();
        (Holds::new(move |v| seen.store(v, Ordering::SeqCst)), on)
    }

    #[test]
    fn a_hold_is_off_until_its_last_guard_is_dropped() {
        let (holds, on) = switch();
        let a = holds.hold();
        let b = holds.hold();
        assert!(!on.load(Ordering::SeqCst) && holds.held());
        drop(a);
        assert!(!on.load(Ordering::SeqCst), "one guard still holds it");
        drop(b);
        assert!(on.load(Ordering::SeqCst) && !holds.held());
    }

    #[test]
    fn a_guard_dropped_by_a_panic_turns_the_switch_back_on() {
        let (holds, on) = switch();
        let h = holds.clone();
        let _ = std::thread::spawn(move || {
            let _g = h.hold();
            panic!("the transfer failed");
        })
        .join();
        assert!(on.load(Ordering::SeqCst) && !holds.held());
    }

    #[tokio::test]
    async fn a_future_holding_a_guard_gives_it_back_when_dropped_mid_way() {
        let (holds, on) = switch();
        let h = holds.clone();
        let (started, mut wait) = tokio::sync::oneshot::channel();
        let cut = tokio::spawn(async move {
            let _g = h.hold();
            let _ = started.send(());
            std::future::pending::<()>().await;
        });
        (&mut wait).await.expect("started");
        assert!(!on.load(Ordering::SeqCst));
        cut.abort();
        assert!(cut.await.is_err_and(|e| e.is_cancelled()));
        assert!(on.load(Ordering::SeqCst) && !holds.held());
    }

    #[tokio::test]
    async fn a_timed_hold_runs_out_or_ends_at_zero_and_leaves_guards_alone() {
        let (holds, on) = switch();
        holds.hold_for(Duration::from_millis(20));
        assert!(!on.load(Ordering::SeqCst));
        let deadline = Instant::now() + Duration::from_secs(10);
        while holds.held() {
            assert!(Instant::now() < deadline, "the timed hold never ran out");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(on.load(Ordering::SeqCst));

        holds.hold_for(Duration::from_secs(3600));
        let g = holds.hold();
        holds.hold_for(Duration::ZERO);
        assert!(!on.load(Ordering::SeqCst), "zero ends the timed hold, not a guard's");
        drop(g);
        assert!(on.load(Ordering::SeqCst) && !holds.held());
    }

    #[tokio::test]
    async fn an_older_timed_hold_running_out_does_not_end_a_newer_one() {
        let (holds, on) = switch();
        holds.hold_for(Duration::from_millis(10));
        holds.hold_for(Duration::from_secs(3600));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!on.load(Ordering::SeqCst) && holds.held());
    }
}
