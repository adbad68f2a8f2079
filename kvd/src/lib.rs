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

// Map of the crate, outside in (each layer only uses the ones below it):
//
// - boot: the composition root; builds every part, wires them into a Node,
//   serves both APIs until a signal; `kvd restore`.
// - api/: the client API over HTTP (DESIGN.md §4), one file per audience;
//   api/parse.rs turns requests into domain values, api/error.rs is the one
//   map from domain errors to codes and statuses.
// - peer: the peer API's server; network: its client (and openraft's
//   RaftNetwork); rpc: the peer protocol both declare their RPCs from.
// - node/: the Node service: writes and linearizable reads through the
//   leader (cluster.rs), leadership transfer, watch liveness, status.
// - proposer: batches writes into log entries; rounds: shared waits.
// - auth, jwt, token: callers, rights, tokens.
// - sm: the state machine over fjall; txn: transaction semantics over a
//   read view; dedup: request-id records; snapfile: the snapshot format.
// - log_store, store, identity, disk: the Raft log, the fjall database,
//   the cluster id, free space; format: the layouts of the data dir,
//   snapshot files and peer messages, their versions, and the reader (and
//   writer) of kvd 0.1's layout.
// - types: the Raft type config and what travels through the log;
//   config, tls, metrics, error: settings, certificates, counters, errors.
// - systemd: notifications to systemd (ready, watchdog, status, stopping).

mod api;
mod auth;
mod boot;
mod config;
mod dedup;
mod disk;
mod error;
mod format;
mod identity;
mod jwt;
mod log_store;
mod metrics;
mod network;
mod node;
mod peer;
mod proposer;
mod rounds;
mod rpc;
mod sm;
mod snapfile;
mod store;
mod systemd;
mod tls;
mod token;
mod txn;
mod types;

pub use boot::{restore, run};
pub use config::{Config, FileConfig, Flags, LogFormat};
pub use error::Error;
pub use log_store::LogStore;
pub use sm::StateMachine;
pub use store::{lock_dir, OpenError, Store};
pub use types::{Member, Request, Response, TypeConfig};

/// Entry points for the fuzz targets under `fuzz/` (not an API); built only
/// for tests and for cargo-fuzz, which sets `--cfg fuzzing`.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz {
    pub use crate::api::fuzz_request as request;
    pub use crate::rpc::decode_all as peer;
    pub use crate::sm::fuzz_snapshot as snapshot;

    #[cfg(test)]
    mod tests {
        /// Every seed of the fuzz targets, and every input that once made
        /// one fail (`fuzz/regressions/TARGET/`), replayed without libFuzzer.
        #[test]
        fn fuzz_seeds_and_regressions_replay_clean() {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
            type Target = (&'static str, fn(&[u8]));
            let targets: [Target; 4] = [
                ("key", kv_client::fuzz::key),
                ("request", super::request),
                ("peer", super::peer),
                ("snapshot", super::snapshot),
            ];
            for (target, run) in targets {
                let mut replayed = 0;
                for kind in ["seeds", "regressions"] {
                    let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else { continue };
                    for entry in dir.filter_map(Result::ok) {
                        let name = entry.file_name();
                        if name.to_string_lossy().starts_with('.') || name == "README.md" {
                            continue;
                        }
                        run(&std::fs::read(entry.path()).expect("read input"));
                        replayed += 1;
                    }
                }
                assert!(replayed > 0, "no seeds for fuzz target {target} under {}", root.display());
            }
        }
    }
}

#[cfg(test)]
mod layers;
#[cfg(test)]
mod suite;
