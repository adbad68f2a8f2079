//! A linearizability checker for histories of one key (Wing & Gong's search
//! with Lowe's memoization, as in Knossos/Porcupine): is there an order of
//! the operations, each taking effect at one instant between its invocation
//! and its completion, in which a single register explains every result?
//!
//! Operations whose outcome is unknown (a timeout, a connection cut) may
//! take effect at any time after their invocation, or never.

use std::collections::HashSet;

/// What a client asked and what it saw.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// A read that returned this value (`None`: the key was absent).
    Read(Option<String>),
    /// A write of a value.
    Write(String),
    /// Compare-and-set: write `new` only if the value is `expected`
    /// (values are unique, so this is the same as comparing revisions);
    /// `ok` is whether it wrote.
    Cas {
        /// Value required.
        expected: Option<String>,
        /// Value written.
        new: String,
        /// Whether the server said it wrote.
        ok: bool,
    },
    /// A delete.
    Delete,
}

/// One operation of a history, with its real-time bounds (any clock that
/// only goes forward, e.g. ns since the test started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The operation and its result.
    pub op: Op,
    /// When it was invoked.
    pub invoked: u64,
    /// When it completed; `None` when the outcome is unknown.
    pub completed: Option<u64>,
}

/// Applies `op` to the register `state`; `None` when the result the client
/// saw is impossible from this state.
fn step(state: &Option<String>, op: &Op) -> Option<Option<String>> {
    match op {
        Op::Read(v) => (v == state).then(|| state.clone()),
        Op::Write(v) => Some(Some(v.clone())),
        Op::Delete => Some(None),
        Op::Cas { expected, new, ok } => {
            let holds = expected == state;
            match (holds, ok) {
                (true, true) => Some(Some(new.clone())),
                (false, false) => Some(state.clone()),
                _ => None,
            }
        }
    }
}

/// Whether the history of one key, starting from `initial`, is
/// linearizable. Unknown outcomes may be left out; known ones may not.
pub fn check(initial: Option<String>, history: &[Event]) -> bool {
    // NOTE: the search recurses once per operation taken: a soak's history
    // of thousands needs more stack than a test thread has.
    let stack = (16 << 20) + history.len() * (16 << 10);
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("linearizability".into())
            .stack_size(stack)
            .spawn_scoped(s, || {
                let mut done = vec![false; history.len()];
                let mut seen: HashSet<(Vec<bool>, Option<String>)> = HashSet::new();
                search(history, &mut done, initial, &mut seen)
            })
            .expect("checker thread")
            .join()
            .expect("checker")
    })
}

fn search(
    h: &[Event],
    done: &mut Vec<bool>,
    state: Option<String>,
    seen: &mut HashSet<(Vec<bool>, Option<String>)>,
) -> bool {
    // Finished when every operation with a known outcome is placed.
    if h.iter().zip(done.iter()).all(|(e, d)| *d || e.completed.is_none()) {
        return true;
    }
    if !seen.insert((done.clone(), state.clone())) {
        return false;
    }
    // Only an operation invoked before every pending one completed can go next.
    let horizon = h.iter().zip(done.iter()).filter(|(_, d)| !**d).filter_map(|(e, _)| e.completed).min();
    for i in 0..h.len() {
        if done[i] || horizon.is_some_and(|t| h[i].invoked > t) {
            continue;
        }
        if let Some(next) = step(&state, &h[i].op) {
            done[i] = true;
            if search(h, done, next, seen) {
                return true;
            }
            done[i] = false;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: Op, invoked: u64, completed: u64) -> Event {
        Event { op, invoked, completed: Some(completed) }
    }
    fn w(v: &str) -> Op {
        Op::Write(v.into())
    }
    fn r(v: Option<&str>) -> Op {
        Op::Read(v.map(str::to_owned))
    }

    #[test]
    fn sequential_histories() {
        assert!(check(None, &[ev(w("a"), 0, 1), ev(r(Some("a")), 2, 3), ev(Op::Delete, 4, 5), ev(r(None), 6, 7)]));
        assert!(!check(None, &[ev(w("a"), 0, 1), ev(r(None), 2, 3)]), "a read after a write must see it");
    }

    #[test]
    fn concurrent_operations_may_go_either_way() {
        // The read overlaps the write: old or new value are both fine.
        assert!(check(Some("x".into()), &[ev(w("a"), 0, 10), ev(r(Some("x")), 1, 2)]));
        assert!(check(Some("x".into()), &[ev(w("a"), 0, 10), ev(r(Some("a")), 1, 2)]));
        // But two reads may not see new then old (no going back).
        let h = [ev(w("a"), 0, 10), ev(r(Some("a")), 1, 2), ev(r(Some("x")), 3, 4)];
        assert!(!check(Some("x".into()), &h));
    }

    #[test]
    fn compare_and_set() {
        let ok = |e: Option<&str>, n: &str, ok: bool| Op::Cas { expected: e.map(str::to_owned), new: n.into(), ok };
        assert!(check(None, &[ev(w("a"), 0, 1), ev(ok(Some("a"), "b", true), 2, 3), ev(r(Some("b")), 4, 5)]));
        assert!(!check(None, &[ev(w("a"), 0, 1), ev(ok(Some("a"), "b", false), 2, 3)]), "it should have held");
        // Two concurrent CAS from the same value: only one may win.
        let h = [ev(w("a"), 0, 1), ev(ok(Some("a"), "b", true), 2, 5), ev(ok(Some("a"), "c", true), 2, 5)];
        assert!(!check(None, &h));
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_happen() {
        let lost = Event { op: w("a"), invoked: 0, completed: None };
        assert!(check(None, &[lost.clone(), ev(r(None), 5, 6)]));
        assert!(check(None, &[lost.clone(), ev(r(Some("a")), 5, 6)]));
        // Once seen, it stays.
        assert!(!check(None, &[lost, ev(r(Some("a")), 5, 6), ev(r(None), 7, 8)]));
    }

    #[test]
    fn an_acknowledged_write_cannot_vanish() {
        assert!(!check(None, &[ev(w("a"), 0, 1), ev(w("b"), 0, 1), ev(r(None), 2, 3)]));
    }
}
