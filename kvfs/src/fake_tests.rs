//! The fake's own tests: the conformance suite, and its test controls.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use kv_client::{Attrs, EventType, Kind, PutOptions, TxnOp, TxnRequest};

use super::FakeCluster;
use crate::cluster::{Batch, Cluster, Events, Failure};
use crate::conformance;

const WAIT: Duration = Duration::from_secs(10);

fn put(c: &FakeCluster, key: &str, value: &str) -> Result<u64, Failure> {
    c.put(key, value.as_bytes().to_vec(), &PutOptions::default())
}

/// The next answer of a stream, read on a thread, with a deadline.
fn next_of(mut ev: Box<dyn Events>) -> (mpsc::Receiver<Result<Option<Batch>, Failure>>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(ev.next());
    });
    (rx, h)
}

#[test]
fn conformance_suite_passes_on_the_fake() {
    let c = FakeCluster::new();
    put(&c, "other/x", "data outside the suite's prefix").expect("put");
    conformance::run(&c, "suite");
    conformance::compaction(&c, "compaction", &|rev| c.compact(rev));
}

#[test]
fn fail_next_fails_that_many_calls_in_order_and_writes_nothing() {
    let c = FakeCluster::new();
    c.fail_next(1, Failure::NoSpace);
    c.fail_next(2, Failure::Denied);
    assert_eq!(put(&c, "a", "1"), Err(Failure::NoSpace));
    assert_eq!(c.probe(), Err(Failure::Denied));
    assert_eq!(c.list_page("", None, 10).map(|p| p.revision).err(), Some(Failure::Denied));
    assert_eq!((c.revision(), c.get("a")), (0, None), "a failed call changes nothing");
    assert_eq!(put(&c, "a", "1"), Ok(1), "the failures are used up");
}

#[test]
fn fail_after_apply_applies_the_write_and_answers_unavailable() {
    let c = FakeCluster::new();
    c.fail_after_apply(2);
    assert_eq!(put(&c, "a", "1"), Err(Failure::Unavailable));
    assert_eq!(c.get("a").and_then(|e| e.value_bytes()), Some(b"1".to_vec()), "the lost write was applied");
    let t = TxnRequest { success: vec![TxnOp::put("b", "2")], ..TxnRequest::default() };
    assert_eq!(c.txn(&t), Err(Failure::Unavailable));
    assert_eq!(c.revision(), 2, "both writes were applied");
    assert_eq!(c.delete("a"), Ok(3), "the third write is answered");
}

#[test]
fn a_lost_put_resent_with_its_request_id_answers_the_first_outcome_once() {
    let c = FakeCluster::new();
    let o = PutOptions { request_id: Some("id-1".into()), create_only: true, ..PutOptions::default() };
    c.fail_after_apply(1);
    assert_eq!(c.put("a", b"1".to_vec(), &o), Err(Failure::Unavailable));
    assert_eq!(c.put("a", b"1".to_vec(), &o), Ok(1), "the first outcome, not a conflict with itself");
    assert_eq!((c.revision(), c.get("a").map(|e| e.meta.version)), (1, Some(1)), "applied once");
    let fresh = PutOptions { request_id: Some("id-2".into()), ..o };
    assert_eq!(c.put("a", b"2".to_vec(), &fresh), Err(Failure::Conflict), "a new id is a new write");
}

#[test]
fn unavailable_fails_every_call_until_cleared() {
    let c = FakeCluster::new();
    c.set_unavailable(true);
    assert_eq!(c.probe(), Err(Failure::Unavailable));
    assert_eq!(put(&c, "a", "1"), Err(Failure::Unavailable));
    assert_eq!(c.watch("", 0).err(), Some(Failure::Unavailable));
    c.set_unavailable(false);
    assert_eq!(c.probe(), Ok(()));
    assert_eq!(put(&c, "a", "1"), Ok(1));
}

#[test]
fn a_delay_holds_each_call_at_least_that_long() {
    let c = FakeCluster::new();
    c.set_delay(Duration::from_millis(30));
    let t = Instant::now();
    c.probe().expect("probe");
    assert!(t.elapsed() >= Duration::from_millis(30), "the call took {:?}", t.elapsed());
}

#[test]
fn next_waits_for_a_write_from_elsewhere() {
    let c = FakeCluster::new();
    let ev = c.watch("dir", 0).expect("watch");
    let (rx, h) = next_of(ev);
    put(&c, "dirx", "not below dir").expect("put");
    let rev = put(&c, "dir/a", "1").expect("put");
    let b = rx.recv_timeout(WAIT).expect("a batch").expect("no failure").expect("not ended");
    h.join().expect("reader");
    assert_eq!(b.revision, rev, "the write outside the prefix is skipped");
    assert_eq!(b.events.len(), 1);
    assert_eq!((b.events[0].kind, b.events[0].key.as_str()), (EventType::Put, "dir/a"));
}

#[test]
fn end_streams_ends_each_open_stream_once_then_it_goes_on() {
    let c = FakeCluster::new();
    let mut ev = c.watch("", 0).expect("watch");
    let r1 = put(&c, "a", "1").expect("put");
    c.end_streams();
    let later = c.watch("", r1).expect("a watch opened after end_streams");
    assert_eq!(ev.next(), Ok(None), "the open stream ends");
    assert_eq!(ev.next().map(|b| b.map(|b| b.revision)), Ok(Some(r1)), "then goes on from where it was");
    let r2 = put(&c, "a", "2").expect("put");
    let (rx, h) = next_of(later);
    let got = rx.recv_timeout(WAIT).expect("an answer");
    h.join().expect("reader");
    assert_eq!(got.map(|b| b.map(|b| b.revision)), Ok(Some(r2)), "a stream opened after it is not ended");
}

#[test]
fn a_watch_or_stream_behind_a_compaction_fails_with_compacted() {
    let c = FakeCluster::new();
    let mut behind = c.watch("", 0).expect("watch");
    let mut current = c.watch("", 0).expect("watch");
    let r1 = put(&c, "a", "1").expect("put");
    assert_eq!(current.next().map(|b| b.map(|b| b.revision)), Ok(Some(r1)));
    let r2 = put(&c, "b", "1").expect("put");
    c.compact(r1);
    assert_eq!(behind.next(), Err(Failure::Compacted), "a stream that had not read r1");
    assert_eq!(c.watch("", 0).err(), Some(Failure::Compacted));
    assert_eq!(current.next().map(|b| b.map(|b| b.revision)), Ok(Some(r2)), "a stream past r1 goes on");
    let mut from = c.watch("", r1).expect("a watch from the compacted revision itself");
    assert_eq!(from.next().map(|b| b.map(|b| b.revision)), Ok(Some(r2)));
    c.compact(u64::MAX);
    assert_eq!(c.watch("", r2).err(), None, "compaction stops at the current revision");
}

#[test]
fn bad_input_is_refused_like_kvd_refuses_it() {
    let c = FakeCluster::new();
    c.set_max_value(4);
    assert_eq!(put(&c, "a", "12345"), Err(Failure::TooLarge));
    let big = TxnRequest { success: vec![TxnOp::put("a", "12345")], ..TxnRequest::default() };
    assert_eq!(c.txn(&big), Err(Failure::TooLarge));
    c.set_max_value(1 << 20);
    let long = "k".repeat(kv_client::MAX_KEY_BYTES + 1);
    assert_eq!(put(&c, &long, "1"), Err(Failure::Invalid { too_long: true }));
    assert_eq!(c.delete("a/../b"), Err(Failure::Invalid { too_long: false }));
    assert_eq!(c.list_page("", None, 0).err(), Some(Failure::Invalid { too_long: false }));
    assert_eq!(c.watch("a//b", 0).err(), Some(Failure::Invalid { too_long: false }));
    let both = TxnRequest {
        compare: vec![kv_client::Compare { exists: Some(false), ..kv_client::Compare::key_at("a", 0) }],
        ..TxnRequest::default()
    };
    assert_eq!(c.txn(&both), Err(Failure::Invalid { too_long: false }), "a compare needs exactly one test");
    assert_eq!(c.revision(), 0, "nothing was written");
}

#[test]
fn an_attributes_only_txn_put_keeps_the_value_and_a_dir_has_none() {
    let c = FakeCluster::new();
    put(&c, "f", "content").expect("put");
    let chmod = TxnOp::Put {
        key: "f".into(),
        value: None,
        value_base64: None,
        kind: None,
        mode: Some(0o600),
        uid: None,
        gid: None,
        mtime_ns: None,
        atime_ns: None,
    };
    c.txn(&TxnRequest { success: vec![chmod], ..TxnRequest::default() }).expect("txn");
    let e = c.get("f").expect("f");
    assert_eq!((e.meta.mode, e.value_bytes()), (0o600, Some(b"content".to_vec())));
    let mkdir = TxnOp::Put {
        key: "f".into(),
        value: None,
        value_base64: None,
        kind: Some(Kind::Dir),
        mode: None,
        uid: None,
        gid: None,
        mtime_ns: None,
        atime_ns: None,
    };
    c.txn(&TxnRequest { success: vec![mkdir], ..TxnRequest::default() }).expect("txn");
    let e = c.get("f").expect("f");
    assert_eq!((e.meta.kind, e.meta.size, e.meta.mode), (Kind::Dir, 0, 0o600));
    let attrs = Attrs { kind: Some(Kind::Dir), ..Attrs::default() };
    assert_eq!(c.put("g", Vec::new(), &PutOptions { attrs, ..PutOptions::default() }), Ok(4));
}
