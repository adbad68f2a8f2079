//! Deduplication of retried writes by request id, for a window of time.
//!
//! A write that carries a request id (`X-Kv-Request-Id`; kvd gives one to a
//! write sent without) is applied once: its response is recorded under the
//! id, and a later request with that id is answered from the record instead
//! of being applied again. A record is kept for the dedup window (default 10
//! minutes) of log time after the entry that applied it, whatever the write
//! rate, and then pruned.
//!
//! IMPORTANT: every decision here is a function of the log alone, so every
//! member decides alike. Time is the `now_ns` that the member which took the
//! write stamped into each request (an entry's time is the latest of its
//! requests'), never a member's clock at apply time; the window is the value
//! the last leader wrote into the log (`Op::SetDedupWindow`, proposed from its
//! `--dedup-window-ms`), never a member's own flag.
//!
//! After the window a record is gone, and a retry could apply a second time.
//! To make that a clear error instead, an id may carry the time of its first
//! use as a trailing `~MILLIS` (milliseconds since the Unix epoch), e.g.
//! `order-17~1718000000000`; the ids kvd gives do. A request whose id has no
//! record but whose time is older than the window less a tenth of it (the
//! margin covers clocks of members and clients that disagree by up to that)
//! is refused with `request_id_expired` and writes nothing: it may be the
//! retry of a write whose record was pruned. An id without a time is
//! deduplicated for the window only. kv-client's ids carry no time: it
//! resends a write within one call, seconds apart, and a client whose clock
//! lags must not have every write refused.
//!
//! Layout of the dedup keyspace:
//!
//! ```text
//! r{id}                    -> Record: the log time it was applied at and the response
//! t{at_ns u64 BE}{id}      -> empty: records in time order, for pruning
//! w                        -> u64 BE: the window in effect, ms
//! i{id}, x{index u64 BE}{id}  legacy records of kvds before the window was one of time:
//!                             read as before and pruned by count (DEDUP_LEGACY_ENTRIES)
//! ```

use std::io;

use serde::{Deserialize, Serialize};

use crate::store::Store;
use crate::types::{decode, encode, Response};

/// The window when no leader has written one into the log yet, ms.
pub const DEFAULT_WINDOW_MS: u64 = 10 * 60 * 1000;
/// The shortest window a node may be configured with, ms.
pub const MIN_WINDOW_MS: u64 = 1000;
/// The longest window a node may be configured with (30 days), ms.
pub const MAX_WINDOW_MS: u64 = 30 * 24 * 3600 * 1000;
/// How many log entries a legacy (count-pruned) record is kept for.
const DEDUP_LEGACY_ENTRIES: u64 = 100_000;

/// Key of the window in effect.
const WINDOW_KEY: &[u8] = b"w";

/// A remembered response to a request id, with the log time of the entry
/// that applied it.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    at_ns: i64,
    response: Response,
}

/// A record of a kvd before the window was one of time.
#[derive(Debug, Serialize, Deserialize)]
struct LegacyRecord {
    index: u64,
    response: Response,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn record_key(id: &str) -> Vec<u8> {
    [b"r".as_slice(), id.as_bytes()].concat()
}

fn time_key(at_ns: i64, id: &str) -> Vec<u8> {
    [b"t".as_slice(), &ns_u64(at_ns).to_be_bytes(), id.as_bytes()].concat()
}

fn legacy_id_key(id: &str) -> Vec<u8> {
    [b"i".as_slice(), id.as_bytes()].concat()
}

fn ns_u64(ns: i64) -> u64 {
    u64::try_from(ns).unwrap_or(0)
}

fn window_ns(window_ms: u64) -> i64 {
    i64::try_from(window_ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

/// The time of first use an id carries (a trailing `~MILLIS`), in ns.
pub fn id_time_ns(id: &str) -> Option<i64> {
    let (_, ms) = id.rsplit_once('~')?;
    if ms.is_empty() || ms.len() > 16 || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ms.parse::<i64>().ok()?.checked_mul(1_000_000)
}

/// An id of kvd's own, for a write sent without one: unique (node, start
/// time, sequence) and stamped with its time of first use.
pub fn new_id(node_id: u64, started_ns: u128, seq: u64, now_ns: i64) -> String {
    format!("kvd-{node_id}-{started_ns}-{seq}~{}", ns_u64(now_ns) / 1_000_000)
}

/// For a request whose id has no record, applied at log time `now_ns`: the
/// time its id was first used, when that is too long ago for the record to
/// be trusted to exist (see the module doc), so the request must be refused.
pub fn expired(id: &str, now_ns: i64, window_ms: u64) -> Option<i64> {
    let first = id_time_ns(id)?;
    let w = window_ns(window_ms);
    let limit = w - w / 10;
    (now_ns.saturating_sub(first) > limit).then_some(first)
}

/// The recorded response to `id`, if any. (A legacy record is looked for
/// only while `floor` does not know that none is left.)
pub fn lookup(store: &Store, floor: &Floor, id: &str) -> io::Result<Option<Response>> {
    if let Some(b) = store.dedup.get(record_key(id)).map_err(io_err)? {
        return Ok(Some(decode::<Record>(&b)?.response));
    }
    if floor.no_legacy {
        return Ok(None);
    }
    match store.dedup.get(legacy_id_key(id)).map_err(io_err)? {
        Some(b) => Ok(Some(decode::<LegacyRecord>(&b)?.response)),
        None => Ok(None),
    }
}

/// What the state machine knows of the dedup keyspace between applies, so
/// that an apply with nothing to prune reads nothing. In memory only: a
/// member that starts, or loads a snapshot, knows nothing and looks.
///
/// NOTE: it only spares scans that would find nothing, so what is pruned
/// stays a function of the log alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct Floor {
    /// No record is of an earlier log time than this (ns), when known.
    oldest: Option<u64>,
    /// No legacy record is left.
    no_legacy: bool,
}

impl Floor {
    /// What a member knows as it starts, or once it has loaded a snapshot:
    /// whether a legacy record (kvd 0.1's, by log index) is left, looked
    /// up once; the times of the others it learns at its first prune.
    pub fn load(store: &Store) -> Floor {
        let none = |kind: u8| store.dedup.range(vec![kind]..vec![kind + 1]).next().is_none();
        Floor { oldest: None, no_legacy: none(b'i') && none(b'x') }
    }
}

/// Records the response to `id`, applied at log time `at_ns`.
pub fn record(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    floor: &mut Floor,
    at_ns: i64,
    id: &str,
    response: Response,
) {
    if let Some(oldest) = &mut floor.oldest {
        *oldest = (*oldest).min(ns_u64(at_ns));
    }
    batch.insert(&store.dedup, time_key(at_ns, id), []);
    batch.insert(&store.dedup, record_key(id), encode(&Record { at_ns, response }));
}

/// Records `window_ms` as the window in effect.
pub fn set_window(store: &Store, batch: &mut fjall::OwnedWriteBatch, window_ms: u64) {
    batch.insert(&store.dedup, WINDOW_KEY, window_ms.to_be_bytes());
}

/// The window in effect (the default when none was written), ms.
pub fn window_ms(store: &Store) -> io::Result<u64> {
    let v = store.dedup.get(WINDOW_KEY).map_err(io_err)?;
    Ok(v.and_then(|b| b.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(DEFAULT_WINDOW_MS))
}

/// Drops the records applied more than the window before log time
/// `now_ns`, and legacy records more than their count of entries before
/// log `index`.
pub fn prune(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    floor: &mut Floor,
    now_ns: i64,
    window_ms: u64,
    index: u64,
) -> io::Result<()> {
    // NOTE: a record applied at `cutoff` or later stays: a retry applied at
    // most one window after its record is always answered from it.
    let cutoff = ns_u64(now_ns.saturating_sub(window_ns(window_ms)));
    if floor.oldest.is_none_or(|oldest| oldest < cutoff) {
        let left = drop_before(store, batch, b't', cutoff, record_key)?;
        // (this apply's own records, in the batch, are of its log time)
        floor.oldest = Some(left.unwrap_or(u64::MAX).min(ns_u64(now_ns)));
    }
    let Some(cutoff) = index.checked_sub(DEDUP_LEGACY_ENTRIES) else {
        return Ok(());
    };
    if !floor.no_legacy {
        floor.no_legacy = drop_before(store, batch, b'x', cutoff, legacy_id_key)?.is_none();
    }
    Ok(())
}

/// Removes the index entries `{kind}{n u64 BE}{id}` with `n` below `limit`,
/// and the records `record(id)` they index; the least `n` left, if any.
fn drop_before(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    kind: u8,
    limit: u64,
    record: fn(&str) -> Vec<u8>,
) -> io::Result<Option<u64>> {
    for item in store.dedup.range(vec![kind]..vec![kind + 1]) {
        let k = item.key().map_err(io_err)?;
        let n = k.get(1..9).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
        if n >= limit {
            return Ok(Some(n));
        }
        batch.remove(&store.dedup, k.clone());
        batch.remove(&store.dedup, record(&String::from_utf8_lossy(k.get(9..).unwrap_or_default())));
    }
    Ok(None)
}

/// Checks one dedup record of a snapshot the way the state machine reads it.
pub fn check_record(k: &[u8], v: &[u8]) -> Result<(), &'static str> {
    match k.first() {
        Some(b'r') => decode::<Record>(v).map(drop).map_err(|_| "request id record does not decode"),
        Some(b'i') => decode::<LegacyRecord>(v).map(drop).map_err(|_| "request id record does not decode"),
        Some(b't' | b'x') if k.len() >= 9 => Ok(()),
        Some(b'w') if k == WINDOW_KEY && v.len() == 8 => Ok(()),
        _ => Err("unknown dedup record"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000_000;

    #[test]
    fn ids_carry_a_time_only_as_a_trailing_tilde_and_digits() {
        assert_eq!(id_time_ns("order-17~1718000000000"), Some(1_718_000_000_000_000_000));
        assert_eq!(id_time_ns(&new_id(3, 9, 4, 1_718_000_000_123_456_789)), Some(1_718_000_000_123_000_000));
        for plain in ["client-7-42", "a~", "a~12x", "~-5", "a~99999999999999999"] {
            assert_eq!(id_time_ns(plain), None, "{plain}");
        }
    }

    #[test]
    fn an_id_is_expired_past_the_window_less_a_tenth() {
        let t0 = 1_718_000_000_000 * 1_000_000;
        let id = format!("w~{}", t0 / 1_000_000);
        let w = 10 * 60 * 1000;
        assert_eq!(expired(&id, t0 + 9 * MIN, w), None);
        assert_eq!(expired(&id, t0 + 9 * MIN + 1, w), Some(t0));
        assert_eq!(expired(&id, t0 - 60 * MIN, w), None, "a time ahead of the log is not expired");
        assert_eq!(expired("no-time", t0 + 1000 * MIN, w), None);
    }

    #[test]
    fn records_are_pruned_by_log_time_not_by_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let t0 = 1_718_000_000_000 * 1_000_000;
        let w = 10 * 60 * 1000;
        let resp = |rev| Response { succeeded: true, revision: rev, ..Response::default() };
        let floor = &mut Floor::default();
        let mut b = store.db.batch();
        record(&store, &mut b, floor, t0, "a", resp(1));
        record(&store, &mut b, floor, t0 + 5 * MIN, "b", resp(2));
        b.commit().expect("commit");
        // A million entries later, but within the window: both stay.
        let mut b = store.db.batch();
        prune(&store, &mut b, floor, t0 + 10 * MIN, w, 1_000_000).expect("prune");
        b.commit().expect("commit");
        assert_eq!(lookup(&store, floor, "a").expect("lookup"), Some(resp(1)));
        // One ns past a's window: a goes, b stays.
        let mut b = store.db.batch();
        prune(&store, &mut b, floor, t0 + 10 * MIN + 1, w, 1_000_001).expect("prune");
        b.commit().expect("commit");
        assert_eq!(lookup(&store, floor, "a").expect("lookup"), None);
        assert_eq!(lookup(&store, floor, "b").expect("lookup"), Some(resp(2)));
        assert_eq!(store.dedup.iter().count(), 2, "b's record and its time index only");
        // A log time behind (a member with a slow clock) prunes nothing more.
        let mut b = store.db.batch();
        prune(&store, &mut b, floor, t0, w, 1_000_002).expect("prune");
        b.commit().expect("commit");
        assert_eq!(lookup(&store, floor, "b").expect("lookup"), Some(resp(2)));
    }

    #[test]
    fn legacy_records_are_still_read_and_pruned_by_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let resp = Response { succeeded: true, revision: 7, ..Response::default() };
        let mut b = store.db.batch();
        b.insert(&store.dedup, [b"x".as_slice(), &5u64.to_be_bytes(), b"old"].concat(), []);
        b.insert(&store.dedup, legacy_id_key("old"), encode(&LegacyRecord { index: 5, response: resp.clone() }));
        b.commit().expect("commit");
        let floor = &mut Floor::load(&store);
        assert!(!floor.no_legacy, "a store with a legacy record knows it has one");
        assert_eq!(lookup(&store, floor, "old").expect("lookup"), Some(resp));
        let mut b = store.db.batch();
        prune(&store, &mut b, floor, 0, DEFAULT_WINDOW_MS, 5 + DEDUP_LEGACY_ENTRIES + 1).expect("prune");
        b.commit().expect("commit");
        assert_eq!(lookup(&store, floor, "old").expect("lookup"), None);
        assert!(Floor::load(&store).no_legacy, "none is left");
    }

    #[test]
    fn a_legacy_record_is_found_whatever_the_floor_loaded_with_it_says() {
        // Only a legacy record (its index entry gone), or only an index
        // entry: either way the store is not taken for one without them.
        for keys in [vec![legacy_id_key("old")], vec![[b"x".as_slice(), &5u64.to_be_bytes(), b"old"].concat()]] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(dir.path()).expect("store");
            let resp = Response { succeeded: true, revision: 7, ..Response::default() };
            let mut b = store.db.batch();
            for k in keys {
                b.insert(&store.dedup, k, encode(&LegacyRecord { index: 5, response: resp.clone() }));
            }
            b.commit().expect("commit");
            assert!(!Floor::load(&store).no_legacy);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let mut b = store.db.batch();
        record(&store, &mut b, &mut Floor::default(), 1, "new", Response::default());
        b.commit().expect("commit");
        let floor = Floor::load(&store);
        assert!(floor.no_legacy, "records of this version are not legacy ones");
        assert_eq!(lookup(&store, &floor, "new").expect("lookup"), Some(Response::default()));
    }

    #[test]
    fn what_the_floor_spares_is_only_scans_that_would_prune_nothing() {
        // Two stores fed the same records and prunes, one with a floor kept
        // across applies and one that always looks: the same records stay,
        // whatever the order of log times (a member's clock may go back).
        let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
        let stores = dirs.each_ref().map(|d| Store::open(d.path()).expect("store"));
        let t0 = 1_718_000_000_000 * 1_000_000;
        let w = 1000;
        let mut kept = Floor::default();
        let mut seed = 7u64;
        let mut next = |m: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        let mut now = t0;
        let mut scans_spared = 0;
        for step in 0..3000u64 {
            // mostly forward by up to 50 ms, sometimes back by up to 2 s
            now += if next(20) == 0 { -(next(2000) as i64) } else { next(50) as i64 } * 1_000_000;
            let resp = Response { succeeded: true, revision: step, ..Response::default() };
            let records = next(3);
            let before = kept;
            for (store, floor) in stores.iter().zip([&mut kept, &mut Floor::default()]) {
                let mut b = store.db.batch();
                for r in 0..records {
                    record(store, &mut b, floor, now, &format!("id-{step}-{r}"), resp.clone());
                }
                prune(store, &mut b, floor, now, w, step).expect("prune");
                b.commit().expect("commit");
            }
            if before.oldest.is_some() && before.oldest == kept.oldest {
                scans_spared += 1;
            }
            let contents =
                stores.each_ref().map(|s| s.dedup.iter().map(|kv| kv.key().expect("key").to_vec()).collect::<Vec<_>>());
            assert_eq!(contents[0], contents[1], "step {step}: the records left");
        }
        assert!(scans_spared > 1000, "the floor spared {scans_spared} scans of 3000");
    }
}
