//! kvfs's view of the cluster (`kvfs::Remote`) against a real kvd: the same
//! conformance suite its in-memory fake passes, so the fake the mount's
//! unit tests run on stays what it stands for.

use std::time::Duration;

use kv_tests::Kvd;
use kvfs::{Cluster, Remote};

fn remote(k: &Kvd) -> Remote {
    Remote { client: k.client(), timeout: Duration::from_secs(10) }
}

#[test]
fn the_real_cluster_passes_the_suite_the_fake_passes() {
    let k = Kvd::bootstrap(&[]);
    kvfs::conformance::run(&remote(&k), "conformance");
}

#[test]
fn the_real_cluster_refuses_a_watch_behind_its_compacted_history_like_the_fake() {
    const HISTORY: u64 = 5;
    let k = Kvd::bootstrap(&["--history-revisions", &HISTORY.to_string()]);
    let r = remote(&k);
    let writer = remote(&k);
    // kvd keeps the last HISTORY revisions: writing enough elsewhere below
    // the prefix compacts everything up to `rev`.
    let compact = |rev: u64| {
        let mut i = 0;
        loop {
            let now = writer.txn(&kv_client::TxnRequest::default()).map(|t| t.revision).unwrap_or(0);
            if now > rev + HISTORY {
                break;
            }
            writer.put(&format!("filler/{i}"), b"x".to_vec(), &kv_client::PutOptions::default()).expect("filler write");
            i += 1;
        }
    };
    kvfs::conformance::compaction(&r, "compaction", &compact);
}
