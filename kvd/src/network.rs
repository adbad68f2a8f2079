//! Raft networking. A single-node cluster never calls it; the peer API that
//! carries Raft RPCs between members comes with clustering, so for now every
//! RPC reports the peer unreachable and openraft keeps retrying.

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

use crate::types::{Member, NodeId, TypeConfig};

/// Creates connections to peers.
#[derive(Debug, Clone, Default)]
pub struct Network;

/// A connection to one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
}

fn unavailable<E: std::error::Error>(target: NodeId) -> RPCError<NodeId, Member, E> {
    let e = std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!("no peer transport to node {target} in this build"),
    );
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> PeerClient {
        PeerClient { target }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        Err(unavailable(self.target))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>>
    {
        Err(unavailable(self.target))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        Err(unavailable(self.target))
    }
}
