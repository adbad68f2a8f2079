//! kvfs: a key prefix of a kv cluster as a directory tree.
//!
//! What it is: the mount's semantics ([`Core`], over a [`Cluster`]), its
//! FUSE adapter ([`KvFs`]), the real cluster ([`Remote`]) and an in-memory
//! one ([`FakeCluster`]) that [`conformance`] keeps alike. What it is not:
//! a cache of anything outside the mounted prefix, or a store of its own
//! (the last-known-good copy only bridges a cluster that cannot be reached
//! at start).

mod cluster;
#[doc(hidden)]
pub mod conformance;
mod core;
mod fake;
mod fs;
mod handles;
mod inodes;
pub mod metrics;
mod passthrough;
mod remote;
mod sync;
mod tree;

pub use crate::cluster::{Batch, Cluster, Events, Failure, Page};
pub use crate::core::{
    loaded, node_of, path_in, AttrMap, Core, Inval, InvalSink, Invalidate, Options, RenameMode, SetAttr, State,
};
pub use crate::fake::FakeCluster;
pub use crate::fs::{invalidator, is_root, kernel, Invalidator, KvFs};
pub use crate::handles::Caller;
pub use crate::remote::Remote;
pub use crate::sync::{lkg_gap, load, load_lkg, MountWatch, Status};
