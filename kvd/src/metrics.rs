//! Process-wide metrics, rendered as Prometheus text by `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// A Prometheus histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram { counts: [const { AtomicU64::new(0) }; BUCKETS.len() + 1], sum_ns: AtomicU64::new(0) }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS.iter().position(|b| s <= *b).unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {cum}");
    }
}

/// A counter of items per event (e.g. appends per fsync).
#[derive(Debug)]
pub struct Ratio {
    events: AtomicU64,
    items: AtomicU64,
}

impl Ratio {
    /// Records one event that covered `n` items.
    pub fn observe_count(&self, n: u64) {
        self.events.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(n, Ordering::Relaxed);
    }

    /// Records items whose event is counted apart ([`Ratio::observe_event`]).
    pub fn observe_items(&self, n: u64) {
        self.items.fetch_add(n, Ordering::Relaxed);
    }

    /// Records an event whose items were counted apart.
    pub fn observe_event(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    /// Journal fsync latency.
    pub fsync: Histogram,
    /// Appends completed per log fsync.
    pub group_commit: Ratio,
    /// Client writes per proposed Raft entry.
    pub proposals: Ratio,
    /// Client API request latency, reads.
    pub read_latency: Histogram,
    /// Client API request latency, writes.
    pub write_latency: Histogram,
    /// Requests answered with an error status.
    pub request_errors: AtomicU64,
    /// Leader changes seen.
    pub leader_changes: AtomicU64,
    /// A leader's own appends reported done before their fsync.
    pub early_appends: AtomicU64,
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics {
    fsync: Histogram::new(),
    group_commit: Ratio { events: AtomicU64::new(0), items: AtomicU64::new(0) },
    proposals: Ratio { events: AtomicU64::new(0), items: AtomicU64::new(0) },
    read_latency: Histogram::new(),
    write_latency: Histogram::new(),
    request_errors: AtomicU64::new(0),
    leader_changes: AtomicU64::new(0),
    early_appends: AtomicU64::new(0),
};

/// Expiry of the certificate both TLS listeners serve, seconds since the
/// epoch; `i64::MIN` without TLS. crate::tls sets it on each (re)load.
pub static TLS_CERT_NOT_AFTER: AtomicI64 = AtomicI64::new(i64::MIN);

/// Raft and store figures sampled when rendering.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Current term.
    pub term: u64,
    /// Highest log index known committed (leader) or appended.
    pub last_log_index: u64,
    /// Last applied log index.
    pub applied_index: u64,
    /// 1 when this node is leader.
    pub is_leader: bool,
    /// 1 when a leader is known.
    pub has_leader: bool,
    /// Current store revision.
    pub revision: u64,
    /// Disk space used by the database, bytes.
    pub db_bytes: u64,
    /// Bytes free on the data dir's filesystem.
    pub disk_free: u64,
    /// 1 while writes are refused for lack of space.
    pub disk_full: bool,
    /// Writes refused for lack of space.
    pub no_space_refusals: u64,
    /// 1 while a leadership transfer pauses this leader's heartbeats.
    pub heartbeats_paused: bool,
    /// 1 while this node holds back its elections (leadership transfer).
    pub elections_held: bool,
    /// 1 while a leadership transfer holds proposals.
    pub proposals_held: bool,
}

impl Metrics {
    /// Renders everything as Prometheus text.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(&mut out, "kv_raft_term", "Current Raft term.", g.term);
        gauge(&mut out, "kv_raft_last_log_index", "Last Raft log index on this node.", g.last_log_index);
        gauge(&mut out, "kv_raft_applied_index", "Last applied Raft log index.", g.applied_index);
        gauge(&mut out, "kv_raft_is_leader", "1 when this node is the leader.", g.is_leader as u64);
        gauge(&mut out, "kv_raft_has_leader", "1 when a leader is known.", g.has_leader as u64);
        gauge(&mut out, "kv_revision", "Current store revision.", g.revision);
        gauge(&mut out, "kv_db_size_bytes", "Disk space used by the database.", g.db_bytes);
        gauge(&mut out, "kv_disk_free_bytes", "Bytes free on the data dir's filesystem.", g.disk_free);
        gauge(&mut out, "kv_disk_full", "1 while writes are refused for lack of disk space.", g.disk_full as u64);
        gauge(
            &mut out,
            "kv_raft_heartbeats_paused",
            "1 while a leadership transfer pauses this leader's heartbeats.",
            g.heartbeats_paused as u64,
        );
        gauge(
            &mut out,
            "kv_raft_elections_held",
            "1 while this node holds back its elections for a leadership transfer.",
            g.elections_held as u64,
        );
        gauge(&mut out, "kv_proposals_held", "1 while a leadership transfer holds proposals.", g.proposals_held as u64);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut out,
            "kv_writes_refused_no_space_total",
            "Writes refused because the disk was nearly full.",
            g.no_space_refusals,
        );
        counter(
            &mut out,
            "kv_raft_leader_changes_total",
            "Leader changes seen by this node.",
            self.leader_changes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kv_http_request_errors_total",
            "Client API requests answered with an error.",
            self.request_errors.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kv_log_fsyncs_total",
            "fsyncs of the Raft log done for appends.",
            self.group_commit.events.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kv_log_fsynced_appends_total",
            "Appends made durable by those fsyncs (group commit).",
            self.group_commit.items.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kv_log_appends_before_fsync_total",
            "A leader's own appends passed on to followers while their fsync ran (they are applied after it).",
            self.early_appends.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kv_raft_proposals_total",
            "Raft entries proposed for client writes.",
            self.proposals.events.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kv_raft_proposed_writes_total",
            "Client writes carried by those entries (batching).",
            self.proposals.items.load(Ordering::Relaxed),
        );
        self.fsync.render(&mut out, "kv_fsync_seconds", "Journal fsync latency.", "");
        self.read_latency.render(&mut out, "kv_http_request_seconds", "Client API latency.", "kind=\"read\"");
        // The second series of the same family has no HELP/TYPE lines.
        let mut w = String::new();
        self.write_latency.render(&mut w, "kv_http_request_seconds", "", "kind=\"write\"");
        out.extend(w.lines().skip(2).map(|l| format!("{l}\n")));
        let not_after = TLS_CERT_NOT_AFTER.load(Ordering::Relaxed);
        if not_after != i64::MIN {
            let name = "kv_tls_cert_not_after_seconds";
            let _ =
                writeln!(out, "# HELP {name} Expiry of the certificate a listener serves, seconds since the epoch.");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for listener in ["client", "peer"] {
                let _ = writeln!(out, "{name}{{listener=\"{listener}\"}} {not_after}");
            }
        }
        out
    }
}
