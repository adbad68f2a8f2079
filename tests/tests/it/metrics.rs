//! `/metrics` as a Prometheus scrape reads it, on a real three-node cluster:
//! every family a dashboard or an alert uses is there, with its type and
//! labels, and its figures follow the traffic.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use kv_tests::Kvd;

use crate::disk::poll;

/// One sample line: its name, labels and value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A metric family: its `# TYPE` and samples.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: bool,
    samples: Vec<Sample>,
}

/// A scrape, parsed as the text format 0.0.4: families by name.
#[derive(Debug)]
struct Scrape(HashMap<String, Family>);

/// `{a="x",b="y\"z"}` after the name, and what follows it.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let Some(mut rest) = s.strip_prefix('{') else { return Ok((labels, s)) };
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find("=\"").ok_or_else(|| format!("no label value in {rest:?}"))?;
        let key = &rest[..eq];
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break eq + 2 + i + 1,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {s:?}")),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        rest = &rest[end..];
    }
}

/// The family a sample of `name` belongs to, among `families`.
fn family_of<'a>(families: &HashMap<String, Family>, name: &'a str) -> Option<&'a str> {
    if families.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|f| families.get(*f).is_some_and(|fam| fam.kind == "histogram"))
}

impl Scrape {
    fn parse(text: &str) -> Result<Scrape, String> {
        let mut families: HashMap<String, Family> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                families.entry(name.to_owned()).or_default().help = true;
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or_else(|| format!("bad TYPE line {line:?}"))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(format!("type {kind:?} is not of the text format 0.0.4"));
                }
                let f = families.entry(name.to_owned()).or_default();
                if !f.kind.is_empty() {
                    return Err(format!("{name} typed twice"));
                }
                f.kind = kind.to_owned();
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let end = line.find(['{', ' ']).ok_or_else(|| format!("bad sample {line:?}"))?;
            let name = &line[..end];
            let (labels, rest) = parse_labels(&line[end..])?;
            let value = match rest.trim() {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().map_err(|e| format!("bad value in {line:?}: {e}"))?,
            };
            let fam = family_of(&families, name).ok_or_else(|| format!("{name} has no TYPE line before it"))?;
            if !seen.insert((name.to_owned(), labels.clone())) {
                return Err(format!("series {name}{labels:?} twice"));
            }
            let f = families.get_mut(fam).ok_or("family")?;
            f.samples.push(Sample { name: name.to_owned(), labels, value });
        }
        for (name, f) in &families {
            if !f.help || f.kind.is_empty() {
                return Err(format!("{name} lacks its HELP or TYPE line"));
            }
            if f.kind == "counter" && !name.ends_with("_total") {
                return Err(format!("counter {name} does not end in _total"));
            }
        }
        Ok(Scrape(families))
    }

    fn family(&self, name: &str) -> &Family {
        self.0.get(name).unwrap_or_else(|| panic!("no family {name}; families: {:?}", self.names()))
    }

    fn names(&self) -> Vec<&String> {
        let mut n: Vec<_> = self.0.keys().collect();
        n.sort();
        n
    }

    /// The samples named `name` whose labels include `with`.
    fn find(&self, name: &str, with: &[(&str, &str)]) -> Vec<&Sample> {
        self.0
            .values()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name && with.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect()
    }

    /// The value of the one series `name` with labels including `with`.
    fn value(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        match self.find(name, with).as_slice() {
            [s] => s.value,
            other => panic!("{} series {name}{with:?}, not one: {other:?}", other.len()),
        }
    }

    /// Every histogram's buckets rise to `+Inf`, which equals its count.
    fn check_histograms(&self) {
        for (name, f) in self.0.iter().filter(|(_, f)| f.kind == "histogram") {
            let mut series: BTreeMap<Vec<(String, String)>, Vec<&Sample>> = BTreeMap::new();
            for s in f.samples.iter().filter(|s| s.name.ends_with("_bucket")) {
                let key = s.labels.iter().filter(|(k, _)| *k != "le").map(|(k, v)| (k.clone(), v.clone())).collect();
                series.entry(key).or_default().push(s);
            }
            assert!(!series.is_empty() || f.samples.is_empty(), "{name} has no buckets");
            for (labels, buckets) in series {
                let mut last = (f64::NEG_INFINITY, 0.0);
                for b in &buckets {
                    let le: f64 = match b.labels["le"].as_str() {
                        "+Inf" => f64::INFINITY,
                        v => v.parse().expect("le"),
                    };
                    assert!(le > last.0 && b.value >= last.1, "{name}{labels:?}: buckets out of order");
                    last = (le, b.value);
                }
                assert_eq!(last.0, f64::INFINITY, "{name}{labels:?} has no +Inf bucket");
                let with: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                assert_eq!(self.value(&format!("{name}_count"), &with), last.1, "{name}{labels:?}: count");
            }
        }
    }
}

/// Every family of DESIGN's metric list, with its type.
const FAMILIES: &[(&str, &str)] = &[
    ("kv_raft_term", "gauge"),
    ("kv_raft_last_log_index", "gauge"),
    ("kv_raft_applied_index", "gauge"),
    ("kv_raft_is_leader", "gauge"),
    ("kv_raft_has_leader", "gauge"),
    ("kv_revision", "gauge"),
    ("kv_db_size_bytes", "gauge"),
    ("kv_disk_free_bytes", "gauge"),
    ("kv_disk_size_bytes", "gauge"),
    ("kv_disk_reserve_bytes", "gauge"),
    ("kv_disk_full", "gauge"),
    ("kv_raft_heartbeats_paused", "gauge"),
    ("kv_raft_elections_held", "gauge"),
    ("kv_proposals_held", "gauge"),
    ("kv_writes_refused_no_space_total", "counter"),
    ("kv_raft_leader_changes_total", "counter"),
    ("kv_raft_elections_total", "counter"),
    ("kv_http_request_errors_total", "counter"),
    ("kv_log_fsyncs_total", "counter"),
    ("kv_log_fsynced_appends_total", "counter"),
    ("kv_log_appends_before_fsync_total", "counter"),
    ("kv_raft_proposals_total", "counter"),
    ("kv_raft_proposed_writes_total", "counter"),
    ("kv_raft_snapshots_sent_total", "counter"),
    ("kv_raft_snapshots_installed_total", "counter"),
    ("kv_raft_snapshots_built_total", "counter"),
    ("kv_fsync_seconds", "histogram"),
    ("kv_http_request_seconds", "histogram"),
    ("kv_http_requests_total", "counter"),
    ("kv_http_request_duration_seconds", "histogram"),
    ("kv_watch_streams", "gauge"),
    ("kv_watch_events_sent_total", "counter"),
    ("kv_raft_follower_lag_entries", "gauge"),
    ("kv_peer_rtt_seconds", "histogram"),
    ("kv_build_info", "gauge"),
    ("process_cpu_seconds_total", "counter"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_virtual_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_max_fds", "gauge"),
    ("process_start_time_seconds", "gauge"),
];

fn scrape(rt: &tokio::runtime::Runtime, k: &Kvd) -> (Scrape, String) {
    let r = rt.block_on(reqwest::get(format!("{}/metrics", k.url))).expect("metrics");
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().expect("ascii").to_owned();
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    let text = rt.block_on(r.text()).expect("text");
    (Scrape::parse(&text).unwrap_or_else(|e| panic!("{e}:\n{text}")), text)
}

#[test]
fn a_scrape_has_every_family_and_follows_requests_watches_and_peers() {
    let started = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64();
    let reserve = (8u64 << 20).to_string();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let a = Kvd::bootstrap(&["--min-free-space", &reserve]);
    let mut followers = [Kvd::empty(2, &[]), Kvd::empty(3, &[])];
    for n in &mut followers {
        rt.block_on(a.client().add_member(&n.add_request())).expect("add member");
        n.wait_ready();
    }
    let c = a.client();
    let mut watch = rt.block_on(c.watch("m", None)).expect("watch");
    let http = reqwest::Client::new();
    let send = |r: reqwest::RequestBuilder| rt.block_on(r.send()).expect("request").status().as_u16();
    for i in 0..5 {
        assert_eq!(send(http.put(format!("{}/v1/kv/m/{i}", a.url)).body("v")), 200);
        assert_eq!(send(http.get(format!("{}/v1/kv/m/{i}", a.url))), 200);
    }
    for i in 0..5 {
        let ev = rt.block_on(watch.next()).expect("event").expect("stream open");
        assert_eq!(ev.key, format!("m/{i}"));
    }
    // Failed requests: a missing key, a path no route matches, a method the route lacks.
    assert_eq!(send(http.get(format!("{}/v1/kv/m/none", a.url))), 404);
    assert_eq!(send(http.get(format!("{}/v2/nothing/at/all", a.url))), 404);
    assert_eq!(send(http.post(format!("{}/v1/kv/m/0", a.url))), 405);

    let (m, text) = scrape(&rt, &a);
    for (name, kind) in FAMILIES {
        assert_eq!(&m.family(name).kind, kind, "type of {name}");
        assert!(!m.family(name).samples.is_empty(), "{name} has no series");
    }
    m.check_histograms();
    assert!(!text.contains("m/0") && !text.contains("/v2/nothing"), "a raw path in a label:\n{text}");

    // Requests by route template, method and status.
    let kv = [("route", "/v1/kv/{*key}")];
    let req = |method: &str, status: &str| {
        m.value("kv_http_requests_total", &[kv[0], ("method", method), ("status", status)])
    };
    assert_eq!(req("PUT", "200"), 5.0);
    assert_eq!(req("GET", "200"), 5.0);
    assert_eq!(req("GET", "404"), 1.0);
    assert_eq!(req("POST", "405"), 1.0);
    let unmatched = [("route", "unmatched"), ("method", "GET"), ("status", "404")];
    assert_eq!(m.value("kv_http_requests_total", &unmatched), 1.0);
    assert_eq!(m.value("kv_http_requests_total", &[("route", "/v1/watch/{*prefix}"), ("status", "200")]), 1.0);
    for s in m.find("kv_http_requests_total", &[]) {
        assert_eq!(s.labels.keys().collect::<Vec<_>>(), ["method", "route", "status"], "{s:?}");
    }
    assert_eq!(m.value("kv_http_request_duration_seconds_count", &[kv[0], ("method", "PUT")]), 5.0);
    assert!(
        m.find("kv_http_request_duration_seconds_count", &[("route", "/v1/watch/{*prefix}")]).is_empty(),
        "watch streams are not timed"
    );
    assert!(m.value("kv_http_request_errors_total", &[]) >= 3.0);
    // The series of before stay as they were.
    assert!(m.value("kv_http_request_seconds_count", &[("kind", "write")]) >= 5.0);
    assert!(m.value("kv_http_request_seconds_count", &[("kind", "read")]) >= 5.0);

    // Watches.
    assert_eq!(m.value("kv_watch_streams", &[]), 1.0);
    assert!(m.value("kv_watch_events_sent_total", &[]) >= 5.0);

    // Replication, on the leader only: one lag series per follower.
    let lag = m.find("kv_raft_follower_lag_entries", &[]);
    let mut peers: Vec<&str> = lag.iter().map(|s| s.labels["peer"].as_str()).collect();
    peers.sort();
    assert_eq!(peers, ["2", "3"], "{lag:?}");
    for peer in ["2", "3"] {
        assert!(m.value("kv_peer_rtt_seconds_count", &[("peer", peer), ("rpc", "append")]) > 0.0, "rtt to {peer}");
    }
    assert_eq!(m.value("kv_raft_is_leader", &[]), 1.0);
    assert!(m.value("kv_raft_elections_total", &[]) >= 1.0);
    assert!(m.value("kv_raft_leader_changes_total", &[]) >= 1.0);
    let (f, _) = scrape(&rt, &followers[0]);
    assert!(f.find("kv_raft_follower_lag_entries", &[]).is_empty(), "lag on a follower");
    assert_eq!(f.value("kv_raft_is_leader", &[]), 0.0);

    // Disk, build and process.
    assert_eq!(m.value("kv_disk_reserve_bytes", &[]), (8u64 << 20) as f64);
    assert!(m.value("kv_disk_size_bytes", &[]) >= m.value("kv_disk_free_bytes", &[]));
    let build = m.find("kv_build_info", &[("version", env!("CARGO_PKG_VERSION"))]);
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0].value, 1.0);
    assert!(!build[0].labels["commit"].is_empty());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64();
    let start = m.value("process_start_time_seconds", &[]);
    assert!(start >= started - 2.0 && start <= now + 2.0, "started at {start}, the test ran from {started} to {now}");
    assert!(m.value("process_resident_memory_bytes", &[]) > 0.0);
    let fds = m.value("process_open_fds", &[]);
    assert!(fds > 0.0 && fds <= m.value("process_max_fds", &[]));
    assert!(m.value("process_cpu_seconds_total", &[]) >= 0.0);

    // A closed watch stream is no longer counted.
    drop(watch);
    poll("the closed watch to leave kv_watch_streams", || {
        (scrape(&rt, &a).0.value("kv_watch_streams", &[]) == 0.0).then_some(())
    });

    // A follower gone: the leader's RPCs to it fail and its lag grows.
    let [_, mut gone] = followers;
    gone.kill9();
    for i in 0..5 {
        assert_eq!(send(http.put(format!("{}/v1/kv/after/{i}", a.url)).body("v")), 200);
    }
    poll("failed RPCs to the stopped follower", || {
        let m = scrape(&rt, &a).0;
        let failed = m.find("kv_peer_request_failures_total", &[("peer", "3")]).iter().map(|s| s.value).sum::<f64>();
        let lag = m.value("kv_raft_follower_lag_entries", &[("peer", "3")]);
        (failed > 0.0 && lag >= 5.0).then_some(())
    });
    let m = scrape(&rt, &a).0;
    assert_eq!(m.family("kv_peer_request_failures_total").kind, "counter");
    poll("the live follower to keep up", || {
        (scrape(&rt, &a).0.value("kv_raft_follower_lag_entries", &[("peer", "2")]) == 0.0).then_some(())
    });
}

#[test]
fn the_parser_refuses_what_a_scrape_would() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"u\"} 3\n";
    assert_eq!(Scrape::parse(ok).expect("parses").value("a_total", &[("x", "q\"u")]), 3.0);
    for bad in [
        "a_total 3\n",
        "# HELP a A.\n# TYPE a counter\na 3\n",
        "# HELP a A.\n# TYPE a info\na 3\n",
        "# HELP a A.\n# TYPE a gauge\na{x=\"1\"} 3\na{x=\"1\"} 4\n",
        "# HELP a A.\n# TYPE a gauge\na{x=\"1} 3\n",
        "# HELP a A.\n# TYPE a gauge\na three\n",
    ] {
        assert!(Scrape::parse(bad).is_err(), "{bad:?} parsed");
    }
}

/// GET `url` (`https` checked against the CA file `ca`) as a scrape.
fn scrape_url(rt: &tokio::runtime::Runtime, url: &str, ca: Option<&std::path::Path>) -> Scrape {
    let mut b = reqwest::Client::builder();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).expect("read the CA");
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA certificate"));
    }
    let r = rt.block_on(b.build().expect("client").get(url).send()).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(r.status(), 200, "GET {url}");
    let text = rt.block_on(r.text()).expect("text");
    Scrape::parse(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
}

/// Every series the shipped alert rules and dashboard
/// (packaging/monitoring) query is exported: by the leader of a TLS
/// cluster after traffic and the loss of a member, or by a mount with
/// `metrics_addr`. A panel or an alert on a series nobody exports would
/// stay empty, and an alert on it would never fire.
#[test]
fn every_series_the_alerts_and_the_dashboard_use_is_exported() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pki = kv_tests::Pki::new("kv-metrics-ca");
    let args = pki.kvd_args("node");
    let flags: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut nodes = rt.block_on(crate::cluster_of_three(&flags));
    let admin = nodes[0].client_with(Some(&nodes[0].admin_token()));
    let leader = rt.block_on(admin.cluster()).expect("cluster").leader.expect("a leader");
    let li = nodes.iter().position(|n| n.id == leader).expect("the leader is one of the nodes");
    rt.block_on(admin.put("app/x", "1", &Default::default())).expect("put");

    let ca = pki.ca.display().to_string();
    let mount = kv_tests::Mount::start(
        &format!("{}/app", nodes[li].url),
        &[&format!("ca_file={ca}"), "metrics_addr=127.0.0.1:0"],
    );
    mount.sh_ok("echo 2 > y");
    let addr = mount.status()["metrics_addr"].as_str().expect("metrics_addr in the status file").to_owned();
    let mounted = scrape_url(&rt, &format!("http://{addr}/metrics"), None);

    // A follower goes away: the leader counts failed peer requests.
    let gone = (li + 1) % nodes.len();
    nodes[gone].kill9();
    let url = format!("{}/metrics", nodes[li].url);
    let member = poll("failed peer requests counted on the leader", || {
        let s = scrape_url(&rt, &url, Some(&pki.ca));
        s.0.contains_key("kv_peer_request_failures_total").then_some(s)
    });

    let used = crate::ops::used_metric_names();
    assert!(used.len() >= 30, "too few names found in the rules and the dashboard: {used:?}");
    let missing: Vec<_> =
        used.iter().filter(|n| !member.0.contains_key(n.as_str()) && !mounted.0.contains_key(n.as_str())).collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\nmember: {:?}\nmount: {:?}",
        member.names(),
        mounted.names()
    );
}
