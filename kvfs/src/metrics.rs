//! A mount's numbers: the commits it sent to the cluster and how they
//! failed, and the Prometheus text of its status (`-o metrics_addr=`),
//! served by a small blocking listener of its own.
//!
//! NOTE: no HTTP server stack: one thread answers `GET /metrics` (and 404
//! otherwise), one connection at a time, each bounded in time; it reads
//! only atomics and the status, never a lock a FUSE callback holds across
//! a cluster call.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use fuser::Errno;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::sync::Status;

/// The commits a mount sent to the cluster (a file's content at close or
/// fsync, a create, mkdir, symlink, delete, rename, chmod, chown, ...),
/// and the errno each failed one reported.
#[derive(Debug, Default)]
pub struct Commits {
    total: AtomicU64,
    failed: Mutex<BTreeMap<&'static str, u64>>,
}

impl Commits {
    /// Counts one commit and its outcome; gives the outcome back.
    pub fn count<T>(&self, r: Result<T, Errno>) -> Result<T, Errno> {
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &r {
            if let Ok(mut f) = self.failed.lock() {
                *f.entry(errno_name(*e)).or_default() += 1;
            }
        }
        r
    }

    /// Commits so far, failed ones included.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Failed commits by errno name.
    pub fn failed(&self) -> BTreeMap<String, u64> {
        self.failed.lock().map(|f| f.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()).unwrap_or_default()
    }
}

/// The name of an errno a mount reports (`EIO`).
pub fn errno_name(e: Errno) -> &'static str {
    const NAMES: &[(Errno, &str)] = &[
        (Errno::EIO, "EIO"),
        (Errno::EACCES, "EACCES"),
        (Errno::EPERM, "EPERM"),
        (Errno::EEXIST, "EEXIST"),
        (Errno::ENOENT, "ENOENT"),
        (Errno::EFBIG, "EFBIG"),
        (Errno::ENOSPC, "ENOSPC"),
        (Errno::EINVAL, "EINVAL"),
        (Errno::ENAMETOOLONG, "ENAMETOOLONG"),
        (Errno::EXDEV, "EXDEV"),
        (Errno::EROFS, "EROFS"),
        (Errno::ENOTEMPTY, "ENOTEMPTY"),
        (Errno::ENOTDIR, "ENOTDIR"),
        (Errno::EISDIR, "EISDIR"),
        (Errno::EBADF, "EBADF"),
        (Errno::EBUSY, "EBUSY"),
    ];
    NAMES.iter().find(|(n, _)| *n == e).map_or("EOTHER", |(_, name)| name)
}

/// The Prometheus text (format 0.0.4) of a mount whose status is `s`.
/// Every series carries the labels `mountpoint` and `prefix`.
pub fn render(s: &Status, mountpoint: &str) -> String {
    let labels = [("mountpoint", mountpoint.to_owned()), ("prefix", s.prefix.clone())];
    let mut registry = Registry::with_labels(labels.into_iter().map(|(k, v)| (k.into(), v.into())));
    registry.register_collector(Box::new(Snapshot(s.clone())));
    let mut out = String::new();
    // NOTE: writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// One scrape's view of a mount.
#[derive(Debug)]
struct Snapshot(Status);

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let gauges: [(&str, &str, Option<Unit>, i64); 4] = [
            ("kvfs_revision", "Cluster revision the mount serves", None, s.revision as i64),
            (
                "kvfs_staleness",
                "Seconds since the mount last knew it was current with the cluster (0 while it is)",
                Some(Unit::Seconds),
                s.staleness_seconds as i64,
            ),
            ("kvfs_connected", "Whether the mount's watch stream is up (1) or not (0)", None, i64::from(s.connected)),
            (
                "kvfs_invalidations_queued",
                "Kernel cache invalidations waiting for a notifier thread",
                None,
                s.invalidations_queued as i64,
            ),
        ];
        for (name, help, unit, v) in &gauges {
            let g = ConstGauge::new(*v);
            g.encode(enc.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?)?;
        }
        let counters = [
            ("kvfs_reconnects", "Watch streams opened again after one ended or failed", s.reconnects),
            ("kvfs_commits", "Changes the mount sent to the cluster, failed ones included", s.commits),
        ];
        for (name, help, v) in counters {
            ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        let mut failures = enc.encode_descriptor(
            "kvfs_commit_failures",
            "Failed changes, by the errno the mount reported",
            None,
            MetricType::Counter,
        )?;
        // NOTE: EIO (the cluster did not answer) is always there, so that
        // the first failure is an increase.
        let mut by_errno = s.commit_failures.clone();
        by_errno.entry("EIO".into()).or_default();
        for (errno, n) in &by_errno {
            let labels = [("errno", errno.as_str())];
            ConstCounter::new(*n).encode(failures.encode_family(&labels)?)?;
        }
        let mut info = enc.encode_descriptor("kvfs_build_info", "kvfs's version", None, MetricType::Gauge)?;
        let labels = [("version", env!("CARGO_PKG_VERSION"))];
        ConstGauge::new(1i64).encode(info.encode_family(&labels)?)?;
        Ok(())
    }
}

/// How long one scrape may take to send its request and read the answer.
const CONN_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers scrapes on `listener`, on a thread of its own, until the
/// process exits: `GET /metrics` gets `text()`, any other path 404.
pub fn serve(listener: TcpListener, text: impl Fn() -> String + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new().name("kvfs-metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(c) => {
                    if let Err(e) = answer(c, &text) {
                        tracing::debug!(error = %e, "metrics request failed");
                    }
                }
                // (a connection reset before it was accepted, or no fds
                // left for a moment)
                Err(e) => {
                    tracing::debug!(error = %e, "cannot accept a metrics connection");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })?;
    Ok(())
}

/// Answers one HTTP/1 request on `c` and closes it.
fn answer(mut c: TcpStream, text: &dyn Fn() -> String) -> std::io::Result<()> {
    c.set_read_timeout(Some(CONN_TIMEOUT))?;
    c.set_write_timeout(Some(CONN_TIMEOUT))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    // NOTE: a bound on the whole request too: a client that sends a byte
    // now and then must not hold the listener.
    let deadline = std::time::Instant::now() + CONN_TIMEOUT;
    // The request head; a body, if any, is not read.
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && !req.windows(2).any(|w| w == b"\n\n") {
        if std::time::Instant::now() > deadline {
            return respond(&mut c, "408 Request Timeout", "text/plain", b"request too slow\n", true);
        }
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
        if req.len() > 16 * 1024 {
            return respond(&mut c, "431 Request Header Fields Too Large", "text/plain", b"request too large\n", true);
        }
    }
    let head = String::from_utf8_lossy(&req);
    let mut line = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (line.next().unwrap_or_default(), line.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let body_too = method != "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => respond(
            &mut c,
            "200 OK",
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            text().as_bytes(),
            body_too,
        ),
        ("GET" | "HEAD", _) => respond(&mut c, "404 Not Found", "text/plain", b"not found: try /metrics\n", body_too),
        _ => respond(&mut c, "405 Method Not Allowed", "text/plain", b"only GET\n", true),
    }
}

fn respond(c: &mut TcpStream, status: &str, content_type: &str, body: &[u8], with_body: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes())?;
    if with_body {
        c.write_all(body)?;
    }
    c.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        let mut failed = BTreeMap::new();
        failed.insert("EFBIG".to_owned(), 2);
        Status {
            prefix: "app".into(),
            revision: 42,
            connected: true,
            staleness_seconds: 3,
            reconnects: 1,
            commits: 7,
            commit_failures: failed,
            invalidations_queued: 5,
            ..Status::default()
        }
    }

    #[test]
    fn every_series_has_its_name_value_and_the_mount_s_labels() {
        let text = render(&status(), "/etc/app");
        let l = r#"mountpoint="/etc/app",prefix="app""#;
        for want in [
            format!("kvfs_revision{{{l}}} 42"),
            format!("kvfs_staleness_seconds{{{l}}} 3"),
            format!("kvfs_connected{{{l}}} 1"),
            format!("kvfs_invalidations_queued{{{l}}} 5"),
            format!("kvfs_reconnects_total{{{l}}} 1"),
            format!("kvfs_commits_total{{{l}}} 7"),
            format!("kvfs_commit_failures_total{{{l},errno=\"EFBIG\"}} 2"),
            format!("kvfs_commit_failures_total{{{l},errno=\"EIO\"}} 0"),
            format!("kvfs_build_info{{{l},version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
            "# TYPE kvfs_commits_total counter".to_owned(),
            "# TYPE kvfs_revision gauge".to_owned(),
        ] {
            assert!(text.lines().any(|x| x == want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn commits_count_failures_by_errno() {
        let c = Commits::default();
        assert_eq!(c.count(Ok::<_, Errno>(1)), Ok(1));
        assert_eq!(c.count(Err::<(), _>(Errno::EFBIG)), Err(Errno::EFBIG));
        let _ = c.count(Err::<(), _>(Errno::EFBIG));
        let _ = c.count(Err::<(), _>(Errno::EIO));
        assert_eq!(c.total(), 4);
        let f = c.failed();
        assert_eq!((f.get("EFBIG"), f.get("EIO"), f.len()), (Some(&2), Some(&1), 2));
    }

    fn get(addr: std::net::SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(req.as_bytes()).expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    #[test]
    fn the_listener_answers_metrics_and_nothing_else() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        serve(l, || "kvfs_revision 1\n".to_owned()).expect("serve");
        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nkvfs_revision 1\n"), "{ok}");
        assert!(get(addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200 "));
        assert!(get(addr, "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        let head = get(addr, "HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 ") && head.ends_with("\r\n\r\n"), "{head}");
    }
}
