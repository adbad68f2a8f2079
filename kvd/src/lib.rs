//! kvd: one node of a kv cluster.
//!
//! Raft (openraft 0.9, storage-v2) over an fjall LSM store, serving the HTTP
//! client API of DESIGN.md §4. The Raft log, vote and state machine share one
//! fjall database, so one journal fsync makes all of them durable; appends
//! from concurrent writers share fsyncs (group commit).
//!
//! It is not a client library: programs talk to kvd with `kv-client`, which
//! compiles neither openraft nor fjall.

// NOTE: openraft's storage traits return its large `StorageError` by value.
#![allow(clippy::result_large_err)]

mod api;
mod auth;
mod cluster;
mod config;
mod disk;
mod jwt;
mod log_store;
mod metrics;
mod network;
mod node;
mod peer;
mod proposer;
mod sm;
mod snapfile;
mod store;
mod tls;
mod types;

pub use config::{Config, FileConfig, Flags};
pub use log_store::LogStore;
pub use node::{restore, run, Node};
pub use sm::StateMachine;
pub use store::{lock_dir, OpenError, Store};
pub use types::{Member, Request, Response, TypeConfig};

#[cfg(test)]
mod suite;
