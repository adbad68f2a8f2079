//! Network namespaces the tests make themselves, so a test can cut the
//! network between members (a partition) while the test process still
//! reaches every member.
//!
//! Layout: a bridge in the test's own namespace holds `10.R.S.254/24`;
//! host `i` is a namespace with one end of a veth pair on the bridge and
//! `10.R.S.(i+1)` on the other end. A partition is a set of blackhole routes
//! inside the hosts' namespaces, so packets between the sides are dropped
//! (open connections stall, new ones fail) and packets to the test process
//! are not. A one-way cut of one port is a blackhole rule (`ip rule ...
//! dport`) in the sending host's namespace. Everything is deleted on drop;
//! names carry the test process's pid, and leftovers of dead test processes
//! are swept at the next start.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs `ip ARGS`, panicking with its error output on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Runs `ip ARGS` and ignores failures (cleanup).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// A set of hosts on one bridge.
pub struct Net {
    tag: String,
    subnet: String,
    hosts: usize,
    /// Blackhole routes in place: (host, address).
    cut: Vec<(usize, String)>,
    /// Blackhole rules in place: (host, `ip rule` selector).
    rules: Vec<(usize, Vec<String>)>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Removes namespaces and bridges left by test processes that are gone.
fn sweep() {
    let out = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    let links = Command::new("ip").args(["-o", "link", "show"]).output().map(|o| o.stdout).unwrap_or_default();
    let alive = |pid: &str| std::path::Path::new(&format!("/proc/{pid}")).exists();
    let pid_of = |name: &str| name.strip_prefix("kvt").and_then(|r| r.split(['n', 'b', 'h']).next()).map(str::to_owned);
    for line in String::from_utf8_lossy(&out).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if pid_of(name).is_some_and(|p| !p.is_empty() && !alive(&p)) {
            ip_quiet(&["netns", "del", name]);
        }
    }
    for line in String::from_utf8_lossy(&links).lines() {
        let Some(name) = line.split(':').nth(1).map(|s| s.trim().split('@').next().unwrap_or("").to_owned()) else {
            continue;
        };
        if pid_of(&name).is_some_and(|p| !p.is_empty() && !alive(&p)) {
            ip_quiet(&["link", "del", &name]);
        }
    }
}

impl Net {
    /// Makes `hosts` namespaces on a fresh bridge.
    pub fn new(hosts: usize) -> Net {
        assert!(hosts < 250);
        sweep();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("kvt{pid}n{n}");
        // A subnet of 10.0.0.0/8 unlikely to be in use: from the pid and the count.
        let subnet = format!("10.{}.{}", 100 + (pid % 100), (pid / 100 % 200 + n * 7) % 250);
        let net = Net { tag, subnet, hosts, cut: Vec::new(), rules: Vec::new() };
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}.254/24", net.subnet), "dev", &br]);
        ip(&["link", "set", &br, "up"]);
        for i in 0..hosts {
            let ns = net.ns(i);
            let host_end = format!("{}h{i}", net.tag);
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["link", "set", &host_end, "master", &br, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", net.addr(i)), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn bridge(&self) -> String {
        format!("{}b", self.tag)
    }

    /// Name of host `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    /// Address of host `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// Cuts every host in `side` off from every host not in it (both ways).
    pub fn partition(&mut self, side: &[usize]) {
        for a in 0..self.hosts {
            for b in 0..self.hosts {
                if side.contains(&a) != side.contains(&b) {
                    let to = format!("{}/32", self.addr(b));
                    ip(&["-n", &self.ns(a), "route", "add", "blackhole", &to]);
                    self.cut.push((a, to));
                }
            }
        }
    }

    /// Drops packets from `from` to `to` only (a one-way fault).
    pub fn cut_one_way(&mut self, from: usize, to: usize) {
        let dst = format!("{}/32", self.addr(to));
        ip(&["-n", &self.ns(from), "route", "add", "blackhole", &dst]);
        self.cut.push((from, dst));
    }

    /// Drops TCP packets from `from` to port `port` of `to` only: `from`
    /// can no longer call that port (new connections fail, open ones
    /// stall), while `to` still calls `from`, and `from` still answers.
    pub fn cut_port(&mut self, from: usize, to: usize, port: u16) {
        let selector: Vec<String> =
            ["to", &format!("{}/32", self.addr(to)), "ipproto", "tcp", "dport", &port.to_string()]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let mut args = vec!["-n".to_owned(), self.ns(from), "rule".into(), "add".into()];
        args.extend(selector.iter().cloned());
        args.push("blackhole".into());
        ip(&args.iter().map(String::as_str).collect::<Vec<_>>());
        self.rules.push((from, selector));
    }

    /// Restores every path.
    pub fn heal(&mut self) {
        for (a, to) in std::mem::take(&mut self.cut) {
            ip(&["-n", &self.ns(a), "route", "del", "blackhole", &to]);
        }
        for (a, selector) in std::mem::take(&mut self.rules) {
            let mut args = vec!["-n".to_owned(), self.ns(a), "rule".into(), "del".into()];
            args.extend(selector);
            args.push("blackhole".into());
            ip(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            // Deleting one end of a veth pair deletes both at once; the
            // namespace's own teardown would take its time.
            ip_quiet(&["link", "del", &format!("{}h{i}", self.tag)]);
            ip_quiet(&["netns", "del", &self.ns(i)]);
        }
        ip_quiet(&["link", "del", &self.bridge()]);
    }
}
