//! The state machine's snapshots: a build and an install at once, and
//! reads while a snapshot loads. Interleavings are forced with the test
//! hook at each [`Step`], never by timing.

use std::sync::mpsc;

use openraft::CommittedLeaderId;
use serde_bytes::ByteBuf;

use super::*;
use crate::types::{Op, Request, Txn};

fn open() -> (tempfile::TempDir, StateMachine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open store");
    let sm = StateMachine::open(store, 1000).expect("open state machine");
    (dir, sm)
}

/// Log entry `index` putting `key` (one revision per entry).
fn put(index: u64, key: &str) -> Entry {
    let op = Op::Put { key: key.to_owned(), value: Some(ByteBuf::from(key.as_bytes())), attrs: Default::default() };
    let req =
        Request { id: String::new(), now_ns: 0, txn: Txn { compare: vec![], success: vec![op], failure: vec![] } };
    Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(Batch(vec![req])) }
}

/// The key entry `index` writes: `old/1..=3` on both machines, then `new/…`.
fn key_of(index: u64) -> String {
    if index <= 3 {
        format!("old/{index}")
    } else {
        format!("new/{index}")
    }
}

async fn apply_upto(sm: &mut StateMachine, last: u64) {
    let entries: Vec<Entry> = (1..=last).map(|i| put(i, &key_of(i))).collect();
    sm.apply(entries).await.expect("apply");
}

/// A snapshot of another machine that applied entries 1..=10.
async fn newer_snapshot() -> (tempfile::TempDir, Snapshot) {
    let (dir, mut other) = open();
    apply_upto(&mut other, 10).await;
    let snap = other.get_snapshot_builder().await.build_snapshot().await.expect("build the newer snapshot");
    (dir, snap)
}

async fn install(sm: &mut StateMachine, mut snap: Snapshot) {
    use tokio::io::AsyncWriteExt;
    let mut recv = sm.begin_receiving_snapshot().await.expect("begin receiving");
    tokio::io::copy(&mut *snap.snapshot, &mut *recv).await.expect("copy the snapshot");
    recv.flush().await.expect("flush");
    sm.install_snapshot(&snap.meta, recv).await.expect("install");
}

/// The keys that existed at revision `rev` (entry `i` made revision `i`).
fn keys_at(rev: u64) -> Vec<String> {
    let mut keys: Vec<String> = (1..=rev.min(10)).map(key_of).collect();
    keys.sort();
    keys
}

fn set_hook(sm: &StateMachine, hook: impl Fn(Step) + Send + Sync + 'static) {
    *sm.shared.hook.lock().expect("hook lock") = Some(Arc::new(hook));
}

fn clear_hook(sm: &StateMachine) {
    *sm.shared.hook.lock().expect("hook lock") = None;
}

#[tokio::test]
async fn a_build_that_finishes_during_an_install_does_not_replace_the_installed_snapshot() {
    let (_dir, mut sm) = open();
    apply_upto(&mut sm, 3).await;
    let (_other, newer) = newer_snapshot().await;
    let newer_id = newer.meta.last_log_id;

    // The build writes its file (of index 3), then waits for `go`.
    let (built_tx, built_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    set_hook(&sm, move |step| {
        if step == Step::Built {
            let _ = built_tx.send(());
            let _ = go_rx.lock().expect("go lock").recv();
        }
    });
    let mut builder = sm.get_snapshot_builder().await;
    let build = tokio::spawn(async move { builder.build_snapshot().await });
    tokio::task::spawn_blocking(move || built_rx.recv()).await.expect("join").expect("the build reached its hook");

    // Meanwhile the newer snapshot (index 10) is installed.
    install(&mut sm, newer).await;
    go_tx.send(()).expect("release the build");
    let built = build.await.expect("join").expect("the build itself succeeds");
    clear_hook(&sm);
    assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(3));

    let cur = sm.get_current_snapshot().await.expect("current snapshot").expect("there is one");
    assert_eq!(cur.meta.last_log_id, newer_id, "the older build replaced the installed snapshot");
    let on_disk = snapfile::read_header(&sm.shared.current_snapshot_path()).expect("header");
    assert_eq!(on_disk.meta.last_log_id, newer_id, "current.snap is not the installed snapshot");
    let file = cur.snapshot.into_std().await;
    let header = snapfile::read(file, |_, _, _| Ok(())).expect("the current snapshot reads whole");
    assert_eq!(header.meta, cur.meta, "the current snapshot's file and metadata differ");
    let (e, rev) = sm.shared.get("new/10").expect("get");
    assert!(e.is_some() && rev == 10, "the state is not the installed snapshot's: revision {rev}");
}

#[tokio::test]
async fn reads_while_a_snapshot_loads_never_see_a_state_that_never_existed() {
    let (_dir, mut sm) = open();
    apply_upto(&mut sm, 3).await;
    let (_other, newer) = newer_snapshot().await;

    // Read (as the API does) at the moment the load has cleared the old state.
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let (shared, out) = (sm.shared(), seen.clone());
    set_hook(&sm, move |step| {
        if step != Step::Cleared {
            return;
        }
        let mut out = out.lock().expect("seen lock");
        match shared.get("old/1") {
            Ok((e, rev)) if e.is_some() != (rev >= 1) => {
                out.push(format!("get old/1: present={} at revision {rev}", e.is_some()))
            }
            Ok(_) => out.push("ok".into()),
            Err(_) => out.push("refused".into()),
        }
        match shared.list("", true, false, None, 100, None) {
            Ok(l) => {
                let keys: Vec<String> = l.entries.iter().map(|e| e.key.clone()).collect();
                if keys != keys_at(l.revision) {
                    out.push(format!("list: {keys:?} at revision {}", l.revision));
                } else {
                    out.push("ok".into());
                }
            }
            Err(_) => out.push("refused".into()),
        }
    });
    install(&mut sm, newer).await;
    clear_hook(&sm);
    let seen = seen.lock().expect("seen lock").clone();
    assert_eq!(seen.len(), 2, "the hook did not run during the load: {seen:?}");
    for s in &seen {
        assert!(s == "ok" || s == "refused", "a read during the load saw a state that never existed: {s}");
    }
    // Once loaded, reads answer the new state whole.
    let l = sm.shared.list("", true, false, None, 100, None).expect("list after the load");
    assert_eq!((l.entries.len(), l.revision), (10, 10));
}

#[tokio::test]
async fn a_damaged_snapshot_is_reported_as_damaged_wherever_the_damage_lies() {
    // A flipped bit inside a record used to be reported as a record that
    // does not decode, or as corruption, depending on where it fell.
    let (_dir, mut sm) = open();
    apply_upto(&mut sm, 10).await;
    let path = sm.shared.temp_snapshot_path();
    sm.shared.write_snapshot(&path).expect("write a snapshot");
    let bytes = std::fs::read(&path).expect("read it");
    verify_snapshot(bytes.as_slice()).expect("the snapshot as written is sound");
    for at in (0..bytes.len()).step_by(3) {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x10;
        let err = verify_snapshot(damaged.as_slice()).expect_err("a damaged snapshot must be refused");
        assert!(err.to_string().contains("corrupt or truncated"), "byte {at} of {}: {err}", bytes.len());
    }
}
