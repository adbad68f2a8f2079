//! systemd's service notifications (sd_notify(3)), spoken as the sd-notify
//! crate speaks them: one datagram per message to `$NOTIFY_SOCKET` (a path,
//! or an abstract socket after `@`), which stays set for the next message.
//! `READY=1` once the node is ready, `WATCHDOG=1` while it shows it is alive
//! (when the unit sets `WatchdogSec=`), `STATUS=` with its leader, term and
//! revision, `STOPPING=1` on the way out. Without `$NOTIFY_SOCKET` nothing
//! is sent.

use std::ffi::OsStr;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::node::Node;
use crate::types::NodeId;

/// Where notifications go.
#[derive(Debug)]
pub struct Notifier {
    target: Option<SocketAddr>,
}

/// The socket address `$NOTIFY_SOCKET` names.
fn address(socket: &OsStr) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    match socket.as_bytes() {
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name),
        [b'/', ..] => SocketAddr::from_pathname(socket),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET={socket:?} is neither an absolute path nor an abstract socket (@NAME)"),
        )),
    }
}

impl Notifier {
    /// Notifies the socket `$NOTIFY_SOCKET` names, if set (and usable).
    pub fn from_env() -> Notifier {
        let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        Notifier::to(&socket).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot notify systemd");
            Notifier { target: None }
        })
    }

    /// Notifies the socket at `socket` (`/path` or `@abstract`).
    pub fn to(socket: &OsStr) -> io::Result<Notifier> {
        Ok(Notifier { target: Some(address(socket)?) })
    }

    /// Whether anyone listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `message` (`NAME=VALUE` lines) in one datagram.
    pub fn send(&self, message: &str) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let sent = UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), target)?;
        if sent != message.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "the notification was cut short"));
        }
        Ok(())
    }

    /// [`Notifier::send`], logging a failure.
    pub fn notify(&self, message: &str) {
        if let Err(e) = self.send(message) {
            tracing::warn!(error = %e, message, "cannot notify systemd");
        }
    }
}

/// Half the watchdog timeout systemd asks for (`$WATCHDOG_USEC`, for this
/// process when `$WATCHDOG_PID` names one): how often to send `WATCHDOG=1`.
pub fn watchdog_period() -> Option<Duration> {
    let var = |name| std::env::var(name).ok();
    period(var("WATCHDOG_USEC").as_deref(), var("WATCHDOG_PID").as_deref(), std::process::id())
}

fn period(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if pid.is_some_and(|p| p.trim().parse() != Ok(me)) {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

/// The `STATUS=` line `systemctl status` shows.
pub fn status_line(me: NodeId, leader: Option<NodeId>, term: u64, revision: u64) -> String {
    match leader {
        Some(l) if l == me => format!("leader, term {term}, revision {revision}"),
        Some(l) => format!("follower of node {l}, term {term}, revision {revision}"),
        None => format!("no leader, term {term}, revision {revision}"),
    }
}

/// Keeps systemd's watchdog fed while the node shows it is alive. A task on
/// the runtime asks the Raft core a question several times a period and
/// records when it last answered; a thread of its own sends `WATCHDOG=1`
/// every `period` (half the unit's timeout) while that answer is at most a
/// period old. A busy node whose core answers late but within the period
/// keeps its keepalives; a core or a runtime stalled for longer (30 to 45 s
/// with the shipped `WatchdogSec=30s`) stops them, and systemd restarts
/// kvd. The thread stops when this task is dropped (shutdown).
pub(crate) async fn keep_alive(node: Arc<Node>, notifier: Arc<Notifier>, period: Duration) {
    let started = Instant::now();
    let answered_ms = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let feeder = {
        let (answered_ms, stop) = (answered_ms.clone(), stop.clone());
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || feed(&notifier, period, started, &answered_ms, &stop))
    };
    if let Err(e) = feeder {
        tracing::error!(error = %e, "cannot start the watchdog thread; no keepalives");
        return;
    }
    let mut tick = tokio::time::interval(probe_every(period));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tokio::time::timeout(period, node.core_answers()).await {
            Ok(Ok(())) => answered_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the Raft core stopped; no more watchdog keepalives");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    waited_ms = period.as_millis() as u64,
                    "the Raft core did not answer the watchdog's probe"
                )
            }
        }
    }
}

/// How often the watchdog's task asks the core: a second, or a quarter of
/// a short period.
fn probe_every(period: Duration) -> Duration {
    (period / 4).min(Duration::from_secs(1)).max(Duration::from_millis(1))
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The watchdog thread: every `period`, `WATCHDOG=1` if the core answered
/// within the last period (`answered_ms` after `started`).
fn feed(notifier: &Notifier, period: Duration, started: Instant, answered_ms: &AtomicU64, stop: &AtomicBool) {
    loop {
        std::thread::sleep(period);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let answered = Duration::from_millis(answered_ms.load(Ordering::Relaxed));
        let silent = started.elapsed().saturating_sub(answered);
        if keepalive_due(silent, period) {
            notifier.notify("WATCHDOG=1");
        } else {
            tracing::error!(
                silent_ms = silent.as_millis() as u64,
                "the Raft core has not answered for over a watchdog period; no keepalive"
            );
        }
    }
}

/// Whether a core last heard `silent` ago still earns a keepalive.
fn keepalive_due(silent: Duration, period: Duration) -> bool {
    silent <= period
}

/// How often the status line may change.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Sends `STATUS=` when the leader, term or revision changed, once a
/// second at most.
pub(crate) async fn report_status(node: Arc<Node>, notifier: Arc<Notifier>) {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = String::new();
    loop {
        tick.tick().await;
        let (leader, term, revision) = node.headline();
        let line = status_line(node.id(), leader, term, revision);
        if line != last {
            notifier.notify(&format!("STATUS={line}"));
            last = line;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_need_an_answer_within_a_period_probed_several_times_in_it() {
        let p = Duration::from_secs(15);
        assert!(keepalive_due(Duration::ZERO, p));
        assert!(keepalive_due(Duration::from_secs(15), p));
        assert!(!keepalive_due(Duration::from_millis(15_001), p));
        assert_eq!(probe_every(p), Duration::from_secs(1));
        assert_eq!(probe_every(Duration::from_millis(200)), Duration::from_millis(50));
    }

    #[test]
    fn status_lines_say_who_leads() {
        assert_eq!(status_line(1, Some(1), 5, 1234), "leader, term 5, revision 1234");
        assert_eq!(status_line(1, Some(2), 5, 1234), "follower of node 2, term 5, revision 1234");
        assert_eq!(status_line(1, None, 6, 1234), "no leader, term 6, revision 1234");
    }

    #[test]
    fn the_watchdog_period_is_half_the_timeout_for_this_process_only() {
        assert_eq!(period(Some("30000000"), None, 7), Some(Duration::from_secs(15)));
        assert_eq!(period(Some("30000000"), Some("7"), 7), Some(Duration::from_secs(15)));
        assert_eq!(period(Some("30000000"), Some("8"), 7), None, "another process's watchdog");
        assert_eq!(period(None, Some("7"), 7), None);
        assert_eq!(period(Some("0"), None, 7), None);
        assert_eq!(period(Some("soon"), None, 7), None);
    }

    #[test]
    fn notifications_reach_a_socket_by_path_and_by_abstract_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::to(path.as_os_str()).expect("path");
        assert!(n.enabled());
        let mut buf = [0u8; 256];
        for msg in ["READY=1", "STATUS=leader, term 5, revision 1234", "WATCHDOG=1", "STOPPING=1"] {
            n.send(msg).expect("send");
            let got = listener.recv(&mut buf).expect("recv");
            assert_eq!(std::str::from_utf8(&buf[..got]).expect("utf-8"), msg);
        }

        use std::os::linux::net::SocketAddrExt;
        let name = format!("kvd-test-{}-{}", std::process::id(), kv_client::clock::now_ns());
        let abstract_listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).expect("name")).expect("bind");
        let n = Notifier::to(OsStr::new(&format!("@{name}"))).expect("abstract");
        n.send("READY=1").expect("send");
        let got = abstract_listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..got], b"READY=1");

        drop(listener);
        let n = Notifier::to(path.as_os_str()).expect("path");
        assert!(n.send("WATCHDOG=1").is_err(), "nobody listens any more");
        assert!(Notifier::to(OsStr::new("relative/notify")).is_err());
        let off = Notifier { target: None };
        assert!(!off.enabled() && off.send("READY=1").is_ok());
    }
}
