//! When `kvctl watch --exec CMD --wait MIN[:MAX]` runs CMD: once a burst of
//! changes has been quiet for MIN, and at the latest MAX after the burst's
//! first change. Plain data: the caller passes the time in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kv_client::EventType;

/// `--wait MIN[:MAX]`: how long a burst must be quiet, and how long it may
/// last at most, before CMD runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// Quiet time after the last change.
    pub quiet: Duration,
    /// Longest wait after the burst's first change.
    pub max: Duration,
}

/// MAX when `--wait` gives MIN alone: a steady trickle of changes still
/// reloads at least this often.
pub const DEFAULT_MAX_FACTOR: u32 = 4;

/// Parses `MIN[:MAX]`, each a duration as `--command-timeout` takes it;
/// MAX defaults to [`DEFAULT_MAX_FACTOR`] × MIN and is at least MIN.
pub fn parse_wait(v: &str) -> Result<Wait, String> {
    let (quiet, max) = match v.split_once(':') {
        Some((q, m)) => (crate::parse_timeout(q)?, Some(crate::parse_timeout(m)?)),
        None => (crate::parse_timeout(v)?, None),
    };
    let max = max.unwrap_or(quiet * DEFAULT_MAX_FACTOR);
    if max < quiet {
        return Err(format!("{v:?}: MAX is shorter than MIN"));
    }
    Ok(Wait { quiet, max })
}

/// What one run of the command is told: the keys that changed and the
/// last revision among the changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Run {
    /// Each changed key, with its last change.
    pub keys: BTreeMap<String, EventType>,
    /// The last revision of the changes.
    pub revision: u64,
}

impl Run {
    /// A run for one change.
    pub fn of(key: &str, kind: EventType, revision: u64) -> Run {
        let mut r = Run::default();
        r.add(key, kind, revision);
        r
    }

    fn add(&mut self, key: &str, kind: EventType, revision: u64) {
        self.keys.insert(key.to_owned(), kind);
        self.revision = self.revision.max(revision);
    }
}

/// Changes gathered until the command is due.
#[derive(Debug)]
pub struct Debounce {
    wait: Wait,
    pending: Run,
    /// The first and the last change of the burst; `None` while no change
    /// came since the last run.
    burst: Option<(Instant, Instant)>,
    /// When a failed run is tried again if no change comes first, and how
    /// many failed in a row.
    retry: Option<Instant>,
    failures: u32,
}

/// The first pause before a failed run is tried again; it doubles with
/// each failure in a row, up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest pause before a failed run is tried again.
pub const MAX_RETRY: Duration = Duration::from_secs(60);

impl Debounce {
    /// Nothing pending.
    pub fn new(wait: Wait) -> Debounce {
        Debounce { wait, pending: Run::default(), burst: None, retry: None, failures: 0 }
    }

    /// A change came at `now`.
    pub fn change(&mut self, now: Instant, key: &str, kind: EventType, revision: u64) {
        self.pending.add(key, kind, revision);
        let first = self.burst.map_or(now, |(first, _)| first);
        self.burst = Some((first, now));
    }

    /// When the command is due: MIN after the last change, or MAX after the
    /// first, whichever comes first; `None` while no change is pending.
    pub fn due(&self) -> Option<Instant> {
        let burst = self.burst.map(|(first, last)| (last + self.wait.quiet).min(first + self.wait.max));
        match (burst, self.retry) {
            (Some(b), Some(r)) => Some(b.min(r)),
            (b, r) => b.or(r),
        }
    }

    /// The run that is due at `now`, if one is; what it holds is no longer
    /// pending.
    pub fn take(&mut self, now: Instant) -> Option<Run> {
        if self.due()? > now {
            return None;
        }
        self.burst = None;
        self.retry = None;
        Some(std::mem::take(&mut self.pending))
    }

    /// A run ended well: the next failure waits the shortest pause again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// A run failed at `now`: its keys go into the next one, under any
    /// newer change of the same key; that run comes with the next change,
    /// or after a pause that doubles with each failure in a row.
    pub fn failed(&mut self, now: Instant, run: Run) {
        for (key, kind) in run.keys {
            self.pending.keys.entry(key).or_insert(kind);
        }
        self.pending.revision = self.pending.revision.max(run.revision);
        let pause = FIRST_RETRY.saturating_mul(1 << self.failures.min(16)).min(MAX_RETRY);
        self.failures = self.failures.saturating_add(1);
        self.retry = Some(now + pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUT: EventType = EventType::Put;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn wait(quiet: u64, max: u64) -> Wait {
        Wait { quiet: ms(quiet), max: ms(max) }
    }

    #[test]
    fn wait_takes_min_and_an_optional_max() {
        assert_eq!(parse_wait("500ms"), Ok(wait(500, 2000)));
        assert_eq!(parse_wait("500ms:2s"), Ok(wait(500, 2000)));
        assert_eq!(parse_wait("1s:1s"), Ok(wait(1000, 1000)));
        assert_eq!(parse_wait("0.2:3"), Ok(wait(200, 3000)));
        assert!(parse_wait("2s:1s").is_err_and(|e| e.contains("shorter")));
        for bad in ["", ":", "1s:", ":1s", "x", "1s:2s:3s", "0", "1s:0"] {
            assert!(parse_wait(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn a_burst_runs_once_after_it_is_quiet() {
        let t0 = Instant::now();
        let mut d = Debounce::new(wait(100, 1000));
        assert_eq!(d.due(), None);
        for i in 0..50u64 {
            d.change(t0 + ms(i), &format!("app/k{i:02}"), PUT, 10 + i);
            assert_eq!(d.take(t0 + ms(i)), None, "ran during the burst");
        }
        assert_eq!(d.due(), Some(t0 + ms(149)));
        assert_eq!(d.take(t0 + ms(148)), None);
        let run = d.take(t0 + ms(149)).expect("due");
        assert_eq!((run.keys.len(), run.revision), (50, 59));
        assert_eq!(run.keys.keys().next().map(String::as_str), Some("app/k00"));
        assert_eq!((d.due(), d.take(t0 + ms(10_000))), (None, None), "nothing left");
    }

    #[test]
    fn a_steady_trickle_runs_at_max_after_the_first_change() {
        let t0 = Instant::now();
        let mut d = Debounce::new(wait(100, 300));
        let mut runs = Vec::new();
        // A change every 50 ms, never quiet for 100 ms.
        for i in 0..20u64 {
            let now = t0 + ms(50 * i);
            if let Some(r) = d.take(now) {
                runs.push((now, r.revision));
            }
            d.change(now, "app/k", PUT, i + 1);
        }
        let at: Vec<u64> = runs.iter().map(|(t, _)| (*t - t0).as_millis() as u64).collect();
        // The first burst starts at 0 and is due at 300; the next starts
        // with the change at 300 and is due at 600; and so on.
        assert_eq!(at, [300, 600, 900]);
        assert_eq!(runs.iter().map(|r| r.1).collect::<Vec<_>>(), [6, 12, 18]);
    }

    #[test]
    fn a_key_changed_twice_is_one_key_with_its_last_change() {
        let t0 = Instant::now();
        let mut d = Debounce::new(wait(10, 40));
        d.change(t0, "app/a", PUT, 3);
        d.change(t0, "app/b", PUT, 4);
        d.change(t0, "app/a", EventType::Delete, 5);
        let run = d.take(t0 + ms(10)).expect("due");
        assert_eq!(
            run.keys.into_iter().collect::<Vec<_>>(),
            [("app/a".into(), EventType::Delete), ("app/b".into(), PUT)]
        );
        assert_eq!(run.revision, 5);
    }

    #[test]
    fn a_failed_run_is_carried_into_the_next_change() {
        let t0 = Instant::now();
        let mut d = Debounce::new(wait(10, 40));
        d.change(t0, "app/a", PUT, 3);
        d.change(t0, "app/b", PUT, 4);
        let failed = d.take(t0 + ms(10)).expect("due");
        // While it ran, app/b was deleted.
        d.change(t0 + ms(15), "app/b", EventType::Delete, 6);
        d.failed(t0 + ms(20), failed);
        assert_eq!(d.due(), Some(t0 + ms(25)), "the next change comes before the retry");
        let run = d.take(t0 + ms(25)).expect("due");
        assert_eq!(
            run.keys.into_iter().collect::<Vec<_>>(),
            [("app/a".into(), PUT), ("app/b".into(), EventType::Delete)]
        );
        assert_eq!(run.revision, 6);
        // That run went well; a failure with nothing new runs again after a
        // pause, which doubles with each failure in a row.
        d.succeeded();
        let t1 = t0 + ms(30);
        d.failed(t1, Run::of("app/c", PUT, 7));
        assert_eq!(d.due(), Some(t1 + FIRST_RETRY), "the first failure waits the first pause");
        let again = d.take(t1 + FIRST_RETRY).expect("retried without a change");
        assert_eq!(again.keys.keys().map(String::as_str).collect::<Vec<_>>(), ["app/c"]);
        d.failed(t1 + FIRST_RETRY, again);
        assert_eq!(d.due(), Some(t1 + FIRST_RETRY + FIRST_RETRY * 2), "the pause doubles");
        d.change(t1 + ms(1100), "app/d", PUT, 8);
        let run = d.take(t1 + ms(1110)).expect("a change comes first");
        assert_eq!(run.keys.keys().map(String::as_str).collect::<Vec<_>>(), ["app/c", "app/d"]);
        assert_eq!(run.revision, 8);
        d.succeeded();
        d.failed(t1 + ms(2000), Run::of("app/e", PUT, 9));
        assert_eq!(d.due(), Some(t1 + ms(2000) + FIRST_RETRY), "a success resets the pause");
    }
}
