//! kvfs: a key prefix of a kv cluster as a directory tree.
//!
//! What it is: the mount's semantics (a core over a [`Cluster`]), its FUSE
//! adapter and its cluster adapters. What it is not: a cache of anything
//! outside the mounted prefix, or a store of its own (the last-known-good
//! copy only bridges a cluster that cannot be reached at start).

pub mod cluster;
#[doc(hidden)]
pub mod conformance;
pub mod fake;

pub use cluster::{Batch, Cluster, Events, Failure, Page};
pub use fake::FakeCluster;
