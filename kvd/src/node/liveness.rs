//! Whether a member may serve watches: one that has lost its leader (or,
//! leading, its quorum) or was removed from the cluster sees no new
//! changes, so it ends its watch streams and refuses new ones, and their
//! clients move to a healthy member instead of waiting on a silent one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{ClusterError, Node};

/// When this node last went without a known leader (fed by the leader
/// watcher in crate::node, and by every check).
#[derive(Debug)]
pub struct LeaderContact {
    lost_at: Mutex<Option<Instant>>,
}

impl Default for LeaderContact {
    /// A node starts without a leader.
    fn default() -> LeaderContact {
        LeaderContact { lost_at: Mutex::new(Some(Instant::now())) }
    }
}

impl LeaderContact {
    /// Records whether a leader is known now.
    pub fn observe(&self, has_leader: bool) {
        if let Ok(mut lost) = self.lost_at.lock() {
            match (has_leader, *lost) {
                (true, _) => *lost = None,
                (false, None) => *lost = Some(Instant::now()),
                (false, Some(_)) => {}
            }
        }
    }

    /// How long no leader has been known, if none is.
    fn leaderless_for(&self) -> Option<Duration> {
        self.lost_at.lock().ok().and_then(|l| *l).map(|t| t.elapsed())
    }
}

impl Node {
    /// How long this node may go without a leader (or, leading, without
    /// hearing from a quorum) and still serve watches: the longest election
    /// timeout, by which the rest of the cluster has elected a leader.
    pub fn leader_loss_bound(&self) -> Duration {
        Duration::from_millis(self.cfg.election_timeout_ms * 2)
    }

    /// Refuses watches on a member that was removed, has had no leader for
    /// longer than [`Node::leader_loss_bound`], or leads without a quorum
    /// for as long: its state no longer follows the cluster's.
    pub fn check_watchable(&self) -> Result<(), ClusterError> {
        self.check_member()?;
        let bound = self.leader_loss_bound();
        let (leader, voters, quorum_ack_ms) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.membership_config.membership().voter_ids().count(), m.millis_since_quorum_ack)
        };
        self.leader_contact.observe(leader.is_some());
        match leader {
            Some(l) if l == self.cfg.id => match quorum_ack_ms {
                Some(ms) if voters > 1 && ms > bound.as_millis() as u64 => Err(ClusterError::Unavailable(format!(
                    "node {} leads but has not heard from a quorum for {ms} ms; watch through another member",
                    self.cfg.id
                ))),
                _ => Ok(()),
            },
            Some(_) => Ok(()),
            None => match self.leader_contact.leaderless_for() {
                Some(d) if d > bound => Err(ClusterError::Unavailable(format!(
                    "node {} has had no leader for {} ms (cut off from the cluster?); watch through another member",
                    self.cfg.id,
                    d.as_millis()
                ))),
                _ => Ok(()),
            },
        }
    }
}
