//! Reads at past revisions and the versions of a key, from the history,
//! against the states the store went through.

use openraft::CommittedLeaderId;
use serde_bytes::ByteBuf;

use super::*;
use crate::types::{Op, PutAttrs, Request, Txn};

fn req(writer: Option<&str>, ops: Vec<Op>) -> Request {
    let mut success = ops;
    if let Some(w) = writer {
        success.insert(0, Op::Writer(w.to_owned()));
    }
    Request { id: String::new(), now_ns: 7, txn: Txn { compare: vec![], success, failure: vec![] } }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.to_owned(), value: Some(ByteBuf::from(value.as_bytes())), attrs: PutAttrs::default() }
}

fn del(key: &str, recursive: bool) -> Op {
    Op::Delete { key: key.to_owned(), recursive }
}

/// A state machine after one log entry per request: revision i + 1 is
/// made by the i-th request.
fn applied(history: u64, reqs: Vec<Request>) -> (tempfile::TempDir, StateMachine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = StateMachine::open(Store::open(dir.path()).expect("store"), history).expect("state machine");
    for (i, r) in reqs.into_iter().enumerate() {
        let e = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
            payload: EntryPayload::Normal(Batch(vec![r])),
        };
        sm.shared.apply_one(&mut sm.st, &e).expect("apply");
    }
    (dir, sm)
}

fn value(e: Option<StoredEntry>) -> Option<String> {
    e.map(|e| String::from_utf8_lossy(&e.value).into_owned())
}

/// Key and value of every entry of a recursive listing of everything.
fn state(r: &SmReader, rev: Option<u64>) -> Vec<(String, String)> {
    let l = r.list("", true, true, None, 1000, rev).expect("list");
    l.entries
        .into_iter()
        .map(|e| (e.key.clone(), String::from_utf8_lossy(&e.value_bytes().unwrap_or_default()).into_owned()))
        .collect()
}

fn history_of() -> Vec<Request> {
    vec![
        req(Some("alice"), vec![put("a", "1")]),
        req(Some("bob"), vec![put("b", "1"), put("d/x", "1")]),
        req(None, vec![put("a", "2")]),
        req(Some("alice"), vec![del("b", false), put("a", "3")]),
        req(Some("carol"), vec![del("d", true), put("b", "2")]),
    ]
}

#[test]
fn a_past_revision_reads_as_the_store_was_then() {
    // The requests one at a time, with the state after each.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = StateMachine::open(Store::open(dir.path()).expect("store"), 1000).expect("state machine");
    let mut states = vec![state(&sm.shared, None)];
    for (i, q) in history_of().into_iter().enumerate() {
        let e = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
            payload: EntryPayload::Normal(Batch(vec![q])),
        };
        sm.shared.apply_one(&mut sm.st, &e).expect("apply");
        states.push(state(&sm.shared, None));
    }
    let r = &sm.shared;
    for (rev, want) in states.iter().enumerate() {
        assert_eq!(&state(r, Some(rev as u64)), want, "listing at revision {rev}");
        for key in ["a", "b", "d/x", "missing"] {
            let then = want.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
            assert_eq!(value(r.get_at(key, rev as u64).expect("get")), then, "{key} at revision {rev}");
        }
    }
    let children = r.list("", false, false, None, 1000, Some(2)).expect("list");
    let names: Vec<&str> = children.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(names, ["a", "b", "d"], "a directory that existed then shows as one");
    assert!(matches!(r.get_at("a", 6), Err(ReadError::Ahead { rev: 6, revision: 5 })));
}

#[test]
fn reads_before_the_history_are_refused() {
    let (_dir, sm) = applied(2, history_of());
    let r = &sm.shared;
    assert_eq!(value(r.get_at("a", 3).expect("within")), Some("2".into()));
    assert!(matches!(r.get_at("a", 2), Err(ReadError::Compacted { rev: 2, compact: 3 })));
    assert!(matches!(r.list("", true, false, None, 10, Some(1)), Err(ReadError::Compacted { .. })));
}

#[test]
fn a_keys_versions_name_their_writers_newest_first() {
    let (_dir, sm) = applied(1000, history_of());
    let (versions, revision, compact) = sm.shared.history("a", 10).expect("history");
    assert_eq!((revision, compact), (5, 0));
    let seen: Vec<(u64, Option<String>, Option<String>)> =
        versions.into_iter().map(|v| (v.revision, v.record.and_then(|r| r.writer), value(v.entry))).collect();
    assert_eq!(
        seen,
        [
            (4, Some("alice".into()), Some("3".into())),
            (3, None, Some("2".into())),
            (1, Some("alice".into()), Some("1".into()))
        ]
    );
    let (b, ..) = sm.shared.history("b", 10).expect("history");
    let b: Vec<(u64, bool)> = b.iter().map(|v| (v.revision, v.entry.is_none())).collect();
    assert_eq!(b, [(5, false), (4, true), (2, false)], "a delete is a version");
    let (d, ..) = sm.shared.history("d/x", 1).expect("history");
    assert_eq!(
        d.iter().map(|v| (v.revision, v.record.clone().and_then(|r| r.writer))).collect::<Vec<_>>(),
        [(5, Some("carol".into()))],
        "a recursive delete names its writer; the limit holds"
    );
}

#[test]
fn events_of_kvd_0_1_in_either_of_its_layouts_still_read() {
    use crate::format::{bincode1, upgrade_value, Space};
    #[derive(serde::Serialize)]
    struct Old {
        key: String,
        entry: Option<StoredEntry>,
    }
    let upgraded = |b: &[u8]| {
        let v = upgrade_value(1, Space::Events, &[0; 12], b).expect("upgrade").expect("re-encoded");
        StoredEvent::decode(&v).expect("decode")
    };
    // Written before events kept previous entries.
    let old = bincode1::to_vec(&Old { key: "k".into(), entry: None }).expect("encode");
    assert_eq!(upgraded(&old), StoredEvent { key: "k".into(), entry: None, prev: crate::types::Prev::Unknown });
    // Written with them: a marker, then the event.
    let new = StoredEvent { key: "k".into(), entry: None, prev: crate::types::Prev::Absent };
    let marked = [[0xFF; 8].as_slice(), &bincode1::to_vec(&new).expect("encode")].concat();
    assert_eq!(upgraded(&marked), new);
    assert_eq!(StoredEvent::decode(&new.encode()).expect("decode"), new);
    assert_eq!(StoredEvent::decode_key(&new.encode()).expect("decode key"), "k");
}

#[test]
fn a_past_listing_pages_like_a_listing_and_takes_any_after() {
    let (_dir, sm) = applied(1000, history_of());
    let r = &sm.shared;
    for rev in 0..=5u64 {
        let whole = state(r, Some(rev));
        let mut paged = vec![];
        let mut after: Option<String> = None;
        loop {
            let page = r.list("", true, true, after.as_deref(), 1, Some(rev)).expect("page");
            paged.extend(
                page.entries.iter().map(|e| {
                    (e.key.clone(), String::from_utf8_lossy(&e.value_bytes().unwrap_or_default()).into_owned())
                }),
            );
            match page.next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
        assert_eq!(paged, whole, "one entry per page at revision {rev}");
        for after in ["zzz", "d0", "d/", "a"] {
            let page = r.list("d", true, false, Some(after), 10, Some(rev)).expect("any after");
            assert!(page.entries.iter().all(|e| e.key.as_str() > after), "{after:?} at {rev}");
        }
    }
}
