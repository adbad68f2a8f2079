//! Process-wide metrics, rendered as Prometheus text (format 0.0.4) by
//! `GET /metrics` with the `prometheus-client` crate.
//!
//! Events are counted in [`METRICS`] where they happen (atomics; a family
//! of labelled series takes a read lock to find its series). Figures of the
//! node's state ([`Gauges`]) and of the process ([`process::Process`], from
//! /proc/self) are read when a scrape asks.

pub mod process;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::types::NodeId;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// The commit kvd was built from (see build.rs), or `unknown`.
pub const COMMIT: &str = env!("KV_COMMIT");

/// A latency histogram with fixed buckets, lock-free (unlike the crate's,
/// which takes a lock per observation). Clones share their counts.
#[derive(Debug, Clone, Default)]
pub struct Histogram(Arc<HistogramCounts>);

#[derive(Debug)]
struct HistogramCounts {
    /// Per bucket, not cumulative; the last is above every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for HistogramCounts {
    fn default() -> Self {
        HistogramCounts { counts: [const { AtomicU64::new(0) }; BUCKETS.len() + 1], sum_ns: AtomicU64::new(0) }
    }
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS.iter().position(|b| s <= *b).unwrap_or(BUCKETS.len());
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(f64::INFINITY, 0u64); BUCKETS.len() + 1];
        let mut count = 0;
        for (i, b) in buckets.iter_mut().enumerate() {
            // NOTE: the count is the buckets' sum, so the two agree even
            // while observations come in.
            let n = self.0.counts[i].load(Ordering::Relaxed);
            *b = (BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n);
            count += n;
        }
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Counters of events and of the items they carried (e.g. appends per
/// fsync): two series.
#[derive(Debug, Default)]
pub struct Ratio {
    events: Counter,
    items: Counter,
}

impl Ratio {
    /// Records one event that covered `n` items.
    pub fn observe_count(&self, n: u64) {
        self.events.inc();
        self.items.inc_by(n);
    }

    /// Records items whose event is counted apart ([`Ratio::observe_event`]).
    pub fn observe_items(&self, n: u64) {
        self.items.inc_by(n);
    }

    /// Records an event whose items were counted apart.
    pub fn observe_event(&self) {
        self.events.inc();
    }
}

/// `kv_http_request_seconds`: the old latency family, reads and writes
/// apart, without a lock to find the series.
#[derive(Debug, Default)]
struct ByKind {
    read: Histogram,
    write: Histogram,
}

impl TypedMetric for ByKind {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ByKind {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.read.encode(encoder.encode_family(&[("kind", "read")])?)?;
        self.write.encode(encoder.encode_family(&[("kind", "write")])?)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The route a request matched, as its template (`/v1/kv/{*key}`), or
/// `unmatched`. Cloning it clones an `Arc`.
#[derive(Debug, Clone)]
pub struct Route(Option<MatchedPath>);

impl Route {
    /// The route of a request with this matched path.
    pub fn new(p: Option<&MatchedPath>) -> Route {
        Route(p.cloned())
    }

    fn as_str(&self) -> &str {
        self.0.as_ref().map_or("unmatched", MatchedPath::as_str)
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Route {}

impl std::hash::Hash for Route {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// A request method as a label: the standard ones by name, any other as
/// `OTHER` (a client could otherwise make series without end).
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: Route,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: Route,
    method: &'static str,
}

/// The `rpc` label of a peer RPC: the last part of its path (`append`,
/// `vote`, `snapshot`, `read-index`...).
pub fn rpc_name(path: &'static str) -> &'static str {
    path.rsplit('/').next().unwrap_or(path)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PeerLabels {
    peer: NodeId,
    rpc: &'static str,
}

/// Every metric counted as it happens.
#[derive(Debug)]
pub struct Metrics {
    /// Journal fsync latency.
    pub fsync: Histogram,
    /// Appends completed per log fsync.
    pub group_commit: Ratio,
    /// Client writes per proposed Raft entry.
    pub proposals: Ratio,
    /// Client API request latency, reads and writes.
    latency: ByKind,
    /// Requests answered with an error status.
    pub request_errors: Counter,
    /// Leader changes seen.
    pub leader_changes: Counter,
    /// A leader's own appends reported done before their fsync.
    pub early_appends: Counter,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabels, Histogram>,
    /// Watch streams open now.
    pub watch_streams: Gauge,
    /// Events sent on watch streams.
    pub watch_events: Counter,
    peer_rtt: Family<PeerLabels, Histogram>,
    peer_failures: Family<PeerLabels, Counter>,
    /// Snapshots sent whole to a follower.
    pub snapshots_sent: Counter,
    /// Snapshots received and installed.
    pub snapshots_installed: Counter,
    /// Snapshots built from the state machine.
    pub snapshots_built: Counter,
    /// Elections this node started.
    pub elections: Counter,
    registry: Registry,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Expiry of the certificate both TLS listeners serve, seconds since the
/// epoch; `i64::MIN` without TLS. crate::tls sets it on each (re)load.
pub static TLS_CERT_NOT_AFTER: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            fsync: Default::default(),
            group_commit: Default::default(),
            proposals: Default::default(),
            latency: Default::default(),
            request_errors: Default::default(),
            leader_changes: Default::default(),
            early_appends: Default::default(),
            requests: Default::default(),
            request_duration: Default::default(),
            watch_streams: Default::default(),
            watch_events: Default::default(),
            peer_rtt: Default::default(),
            peer_failures: Default::default(),
            snapshots_sent: Default::default(),
            snapshots_installed: Default::default(),
            snapshots_built: Default::default(),
            elections: Default::default(),
            registry: Registry::default(),
        };
        let mut r = Registry::default();
        // NOTE: the crate adds `_total` to counters' names and a full stop
        // to every help text.
        r.register("kv_raft_leader_changes", "Leader changes seen by this node", m.leader_changes.clone());
        r.register("kv_raft_elections", "Elections this node started (it became a candidate)", m.elections.clone());
        r.register("kv_http_request_errors", "Client API requests answered with an error", m.request_errors.clone());
        r.register("kv_log_fsyncs", "fsyncs of the Raft log done for appends", m.group_commit.events.clone());
        r.register(
            "kv_log_fsynced_appends",
            "Appends made durable by those fsyncs (group commit)",
            m.group_commit.items.clone(),
        );
        r.register(
            "kv_log_appends_before_fsync",
            "A leader's own appends passed on to followers while their fsync ran (they are applied after it)",
            m.early_appends.clone(),
        );
        r.register("kv_raft_proposals", "Raft entries proposed for client writes", m.proposals.events.clone());
        r.register(
            "kv_raft_proposed_writes",
            "Client writes carried by those entries (batching)",
            m.proposals.items.clone(),
        );
        r.register("kv_raft_snapshots_sent", "Snapshots sent whole to a follower", m.snapshots_sent.clone());
        r.register(
            "kv_raft_snapshots_installed",
            "Snapshots received from the leader and installed",
            m.snapshots_installed.clone(),
        );
        r.register("kv_raft_snapshots_built", "Snapshots built from the state machine", m.snapshots_built.clone());
        r.register("kv_fsync_seconds", "Journal fsync latency", m.fsync.clone());
        r.register(
            "kv_http_request_seconds",
            "Client API latency until the response head, reads and writes (watch streams excluded)",
            ByKind { read: m.latency.read.clone(), write: m.latency.write.clone() },
        );
        r.register(
            "kv_http_requests",
            "Client API requests answered, by route template, method and status",
            m.requests.clone(),
        );
        r.register(
            "kv_http_request_duration_seconds",
            "Client API latency until the response head, by route template and method (watch streams excluded)",
            m.request_duration.clone(),
        );
        r.register("kv_watch_streams", "Watch streams open", m.watch_streams.clone());
        r.register("kv_watch_events_sent", "Events sent on watch streams", m.watch_events.clone());
        r.register("kv_peer_rtt_seconds", "Round trip of the peer RPCs answered, by peer and RPC", m.peer_rtt.clone());
        r.register(
            "kv_peer_request_failures",
            "Peer RPCs that got no answer or an unusable one, by peer and RPC",
            m.peer_failures.clone(),
        );
        r.register(
            "kv_build",
            "The version and commit kvd was built from",
            Info::new([("version", env!("CARGO_PKG_VERSION")), ("commit", COMMIT)]),
        );
        Metrics { registry: r, ..m }
    }

    /// Records a client API request (`method` from [`method_label`])
    /// answered with `status` after `took` (`timed`: in the latency
    /// histograms; not for watch streams).
    pub fn observe_request(&self, route: Route, method: &'static str, status: u16, took: Duration, timed: bool) {
        if timed {
            let h = if matches!(method, "GET" | "HEAD") { &self.latency.read } else { &self.latency.write };
            h.observe(took);
            self.request_duration.get_or_create(&RouteLabels { route: route.clone(), method }).observe(took);
        }
        self.requests.get_or_create(&RequestLabels { route, method, status }).inc();
    }

    /// Records a peer RPC `rpc` to member `peer`: its round trip when
    /// answered, else a failure.
    pub fn observe_peer_call(&self, peer: NodeId, rpc: &'static str, took: Option<Duration>) {
        let labels = PeerLabels { peer, rpc };
        match took {
            Some(t) => self.peer_rtt.get_or_create(&labels).observe(t),
            None => {
                self.peer_failures.get_or_create(&labels).inc();
            }
        }
    }

    /// Renders everything as Prometheus text: what was counted, `g` and the
    /// process's figures read now.
    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::with_capacity(16 << 10);
        let mut sampled = Registry::default();
        sampled.register_collector(Box::new(Sampled { g, process: process::Process::read() }));
        for r in [&self.registry, &sampled] {
            // NOTE: writing to a String cannot fail.
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, r);
        }
        out
    }
}

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
    /// Size of the data dir's filesystem, bytes.
    pub disk_size: u64,
    /// Writes are refused below this many free bytes.
    pub disk_reserve: u64,
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
    /// The leader's entries each other member lacks (leader only).
    pub follower_lag: Vec<(NodeId, u64)>,
}

/// What a scrape reads now.
#[derive(Debug)]
struct Sampled {
    g: Gauges,
    process: Option<process::Process>,
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn int_gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

impl Collector for Sampled {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (g, e) = (&self.g, &mut e);
        // NOTE: names without `_total`, help texts with their full stop:
        // the encoder takes them as they are (see Metrics::new).
        int_gauge(e, "kv_raft_term", "Current Raft term.", g.term)?;
        int_gauge(e, "kv_raft_last_log_index", "Last Raft log index on this node.", g.last_log_index)?;
        int_gauge(e, "kv_raft_applied_index", "Last applied Raft log index.", g.applied_index)?;
        int_gauge(e, "kv_raft_is_leader", "1 when this node is the leader.", g.is_leader.into())?;
        int_gauge(e, "kv_raft_has_leader", "1 when a leader is known.", g.has_leader.into())?;
        int_gauge(e, "kv_revision", "Current store revision.", g.revision)?;
        int_gauge(e, "kv_db_size_bytes", "Disk space used by the database.", g.db_bytes)?;
        int_gauge(e, "kv_disk_free_bytes", "Bytes free on the data dir's filesystem.", g.disk_free)?;
        int_gauge(e, "kv_disk_size_bytes", "Size of the data dir's filesystem.", g.disk_size)?;
        int_gauge(
            e,
            "kv_disk_reserve_bytes",
            "Free bytes below which writes are refused (--min-free-space).",
            g.disk_reserve,
        )?;
        int_gauge(e, "kv_disk_full", "1 while writes are refused for lack of disk space.", g.disk_full.into())?;
        int_gauge(
            e,
            "kv_raft_heartbeats_paused",
            "1 while a leadership transfer pauses this leader's heartbeats.",
            g.heartbeats_paused.into(),
        )?;
        int_gauge(
            e,
            "kv_raft_elections_held",
            "1 while this node holds back its elections for a leadership transfer.",
            g.elections_held.into(),
        )?;
        int_gauge(e, "kv_proposals_held", "1 while a leadership transfer holds proposals.", g.proposals_held.into())?;
        let c = ConstCounter::new(g.no_space_refusals);
        c.encode(e.encode_descriptor(
            "kv_writes_refused_no_space",
            "Writes refused because the disk was nearly full.",
            None,
            MetricType::Counter,
        )?)?;
        if !g.follower_lag.is_empty() {
            let mut m = e.encode_descriptor(
                "kv_raft_follower_lag_entries",
                "The leader's last log index less the index the member has matched (on the leader only).",
                None,
                MetricType::Gauge,
            )?;
            for (peer, lag) in &g.follower_lag {
                ConstGauge::new(*lag).encode(m.encode_family(&[("peer", *peer)])?)?;
            }
        }
        let not_after = TLS_CERT_NOT_AFTER.load(std::sync::atomic::Ordering::Relaxed);
        if not_after != i64::MIN {
            let mut m = e.encode_descriptor(
                "kv_tls_cert_not_after_seconds",
                "Expiry of the certificate a listener serves, seconds since the epoch.",
                None,
                MetricType::Gauge,
            )?;
            for listener in ["client", "peer"] {
                ConstGauge::new(not_after).encode(m.encode_family(&[("listener", listener)])?)?;
            }
        }
        if let Some(p) = &self.process {
            counter(e, "process_cpu_seconds", "Total user and system CPU time spent in seconds.", p.cpu_seconds)?;
            int_gauge(e, "process_resident_memory_bytes", "Resident memory size in bytes.", p.resident_bytes)?;
            int_gauge(e, "process_virtual_memory_bytes", "Virtual memory size in bytes.", p.virtual_bytes)?;
            int_gauge(e, "process_open_fds", "Number of open file descriptors.", p.open_fds)?;
            if let Some(max) = p.max_fds {
                int_gauge(e, "process_max_fds", "Maximum number of open file descriptors.", max)?;
            }
            gauge(
                e,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                p.start_time_seconds,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `text` that start with `prefix`.
    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn histograms_are_cumulative_with_the_bounds_of_before() {
        let m = Metrics::new();
        m.fsync.observe(Duration::from_micros(2000));
        m.fsync.observe(Duration::from_secs(9));
        let text = m.render(Gauges::default());
        let buckets = lines(&text, "kv_fsync_seconds_bucket");
        assert_eq!(buckets.len(), BUCKETS.len() + 1, "{text}");
        assert_eq!(buckets[0], "kv_fsync_seconds_bucket{le=\"0.0001\"} 0");
        assert_eq!(buckets[3], "kv_fsync_seconds_bucket{le=\"0.001\"} 0");
        assert_eq!(buckets[4], "kv_fsync_seconds_bucket{le=\"0.0025\"} 1");
        assert_eq!(buckets[13], "kv_fsync_seconds_bucket{le=\"5\"} 1");
        assert_eq!(buckets[14], "kv_fsync_seconds_bucket{le=\"+Inf\"} 2");
        assert_eq!(lines(&text, "kv_fsync_seconds_count"), ["kv_fsync_seconds_count 2"]);
        assert_eq!(lines(&text, "kv_fsync_seconds_sum"), ["kv_fsync_seconds_sum 9.002"]);
    }

    #[test]
    fn requests_are_labelled_by_route_template_method_and_status() {
        let m = Metrics::new();
        let ext = Method::from_bytes(b"BREW").expect("a method");
        m.observe_request(Route::new(None), method_label(&ext), 404, Duration::from_millis(1), true);
        m.observe_request(Route::new(None), method_label(&Method::GET), 404, Duration::from_millis(1), true);
        m.observe_request(Route::new(None), method_label(&Method::GET), 404, Duration::from_millis(1), false);
        let text = m.render(Gauges::default());
        let mut reqs = lines(&text, "kv_http_requests_total{");
        reqs.sort();
        assert_eq!(
            reqs,
            [
                "kv_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 2",
                "kv_http_requests_total{route=\"unmatched\",method=\"OTHER\",status=\"404\"} 1",
            ]
        );
        let timed = lines(&text, "kv_http_request_duration_seconds_count{route=\"unmatched\",method=\"GET\"}");
        assert_eq!(timed, ["kv_http_request_duration_seconds_count{route=\"unmatched\",method=\"GET\"} 1"]);
        assert_eq!(
            lines(&text, "kv_http_request_seconds_count"),
            ["kv_http_request_seconds_count{kind=\"read\"} 1", "kv_http_request_seconds_count{kind=\"write\"} 1"]
        );
    }

    #[test]
    fn peer_calls_and_follower_lag_have_a_series_per_peer() {
        let m = Metrics::new();
        let text = m.render(Gauges::default());
        assert!(!text.contains("kv_raft_follower_lag_entries"), "no lag off the leader:\n{text}");
        assert!(!text.contains("kv_peer_rtt_seconds"), "no series before a call:\n{text}");
        m.observe_peer_call(2, rpc_name("/peer/v1/append"), Some(Duration::from_micros(300)));
        m.observe_peer_call(4, rpc_name("/peer/v1/identity"), None);
        let text = m.render(Gauges { follower_lag: vec![(2, 0), (3, 17)], ..Default::default() });
        assert_eq!(
            lines(&text, "kv_peer_rtt_seconds_count"),
            ["kv_peer_rtt_seconds_count{peer=\"2\",rpc=\"append\"} 1"]
        );
        assert_eq!(
            lines(&text, "kv_peer_request_failures_total{"),
            ["kv_peer_request_failures_total{peer=\"4\",rpc=\"identity\"} 1"]
        );
        assert_eq!(
            lines(&text, "kv_raft_follower_lag_entries{"),
            ["kv_raft_follower_lag_entries{peer=\"2\"} 0", "kv_raft_follower_lag_entries{peer=\"3\"} 17"]
        );
    }
}
