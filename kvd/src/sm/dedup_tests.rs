//! The state machine's request ids: kept by log time, refused once
//! expired, and carried by snapshots with their times.

use openraft::CommittedLeaderId;
use serde_bytes::ByteBuf;

use super::*;
use crate::types::{Op, PutAttrs, Request, Txn};

const T0: i64 = 1_718_000_000_000 * 1_000_000;
const SEC: i64 = 1_000_000_000;

fn entry(index: u64, reqs: Vec<Request>) -> Entry {
    Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(Batch(reqs)) }
}

fn req(id: &str, now_ns: i64, op: Op) -> Request {
    Request { id: id.to_owned(), now_ns, txn: Txn { compare: vec![], success: vec![op], failure: vec![] } }
}

fn put(id: &str, key: &str, value: &str, now_ns: i64) -> Request {
    let op = Op::Put { key: key.to_owned(), value: Some(ByteBuf::from(value.as_bytes())), attrs: PutAttrs::default() };
    req(id, now_ns, op)
}

fn open() -> (tempfile::TempDir, StateMachine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let sm = StateMachine::open(store, 1000).expect("state machine");
    (dir, sm)
}

fn apply(sm: &mut StateMachine, e: Entry) -> Vec<Response> {
    sm.shared.apply_one(&mut sm.st, &e).expect("apply")
}

#[test]
fn retries_are_answered_for_the_window_of_log_time_then_refused() {
    let (_dir, mut sm) = open();
    let timed = format!("a~{}", T0 / 1_000_000);
    let first = apply(
        &mut sm,
        entry(1, vec![req("", T0, Op::SetDedupWindow(60_000)), put(&timed, "k", "1", T0), put("plain", "p", "1", T0)]),
    );
    assert_eq!(sm.shared.dedup_window_ms(), 60_000, "the window comes from the log");
    assert_eq!((first[1].revision, first[2].revision), (1, 2));
    // 200,000 entries on, within the window: answered, not applied.
    let again = apply(&mut sm, entry(200_001, vec![put(&timed, "k", "2", T0 + 59 * SEC)]));
    assert_eq!(first[1].time_ns, Some(T0), "the time it wrote with");
    assert_eq!(again[0], first[1], "the first answer, its time included");
    assert_eq!(sm.st.txn.revision, 2);
    // An entry past the window prunes both records...
    apply(&mut sm, entry(200_002, vec![put("", "other", "x", T0 + 61 * SEC)]));
    assert_eq!(dedup::lookup(&sm.shared.store, &dedup::Floor::default(), &timed).expect("lookup"), None);
    // ...so an id with a time is refused and writes nothing, and an id
    // without one applies again (it is remembered for the window only).
    let late = apply(&mut sm, entry(200_003, vec![put(&timed, "k", "3", T0 + 62 * SEC)]));
    assert_eq!(late[0].outcomes, vec![Outcome::RequestIdExpired(T0)]);
    assert!(!late[0].succeeded);
    assert_eq!(sm.shared.get("k").expect("get").0.map(|e| e.value.into_vec()), Some(b"1".to_vec()));
    let plain = apply(&mut sm, entry(200_004, vec![put("plain", "p", "2", T0 + 62 * SEC)]));
    assert!(plain[0].succeeded && plain[0].revision > 3);
}

#[test]
fn a_member_with_another_flag_keeps_the_window_of_the_log() {
    let (dir, mut sm) = open();
    apply(&mut sm, entry(1, vec![req("", T0, Op::SetDedupWindow(5_000)), put("x", "k", "1", T0)]));
    // Reopened, the window is the log's, not a default.
    drop(sm);
    let store = Store::open(dir.path()).expect("store");
    let sm = StateMachine::open(store, 1000).expect("state machine");
    assert_eq!((sm.st.txn.dedup_window_ms, sm.shared.dedup_window_ms()), (5_000, 5_000));
}

#[test]
fn snapshots_carry_request_ids_with_their_times() {
    let (_dir, mut sm) = open();
    apply(&mut sm, entry(1, vec![req("", T0, Op::SetDedupWindow(60_000)), put("old", "a", "1", T0)]));
    let first = apply(&mut sm, entry(2, vec![put("new", "b", "1", T0 + 30 * SEC)]));
    let snap = sm.shared.temp_snapshot_path();
    sm.shared.write_snapshot(&snap).expect("snapshot");
    let dir2 = tempfile::tempdir().expect("tempdir");
    let store2 = Store::open(dir2.path()).expect("store");
    restore(&store2, &snap).expect("restore");
    let mut sm2 = StateMachine::open(store2, 1000).expect("state machine");
    assert_eq!(sm2.st.txn.dedup_window_ms, 60_000, "the window travels with the snapshot");
    // At T0 + 61 s "old" is past its window and "new" is not: the times
    // came along.
    let out = apply(&mut sm2, entry(3, vec![put("new", "b", "2", T0 + 61 * SEC)]));
    assert_eq!(out[0], first[0]);
    assert_eq!(dedup::lookup(&sm2.shared.store, &dedup::Floor::default(), "old").expect("lookup"), None);
}

#[tokio::test]
async fn a_member_that_installs_a_snapshot_keeps_the_window_of_the_log() {
    // The window's record comes last in a snapshot; it used to be read before
    // the last batch of records was in, and the member went on with the
    // default window while the others kept the log's.
    use tokio::io::AsyncWriteExt;
    let (_dir, mut sm) = open();
    apply(&mut sm, entry(1, vec![req("", T0, Op::SetDedupWindow(1_800_000)), put("a", "k", "1", T0)]));
    let mut snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
    let (_dir2, mut other) = open();
    let mut recv = other.begin_receiving_snapshot().await.expect("begin receiving");
    tokio::io::copy(&mut *snap.snapshot, &mut *recv).await.expect("copy the snapshot");
    recv.flush().await.expect("flush");
    other.install_snapshot(&snap.meta, recv).await.expect("install");
    assert_eq!((other.st.txn.dedup_window_ms, other.shared.dedup_window_ms()), (1_800_000, 1_800_000));
}

#[test]
fn a_window_out_of_bounds_in_the_log_is_held_to_the_bounds() {
    let (_dir, mut sm) = open();
    apply(&mut sm, entry(1, vec![req("", T0, Op::SetDedupWindow(0))]));
    assert_eq!(sm.st.txn.dedup_window_ms, dedup::MIN_WINDOW_MS);
    apply(&mut sm, entry(2, vec![req("", T0, Op::SetDedupWindow(u64::MAX))]));
    assert_eq!(sm.st.txn.dedup_window_ms, dedup::MAX_WINDOW_MS);
}
