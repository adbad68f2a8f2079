//! Hostile clients on the client API: idle connections by the thousand, a
//! client that trickles its headers and stalls, huge headers. The node must
//! answer everyone else, and each bad request gets its error.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kv_tests::Kvd;

fn addr(k: &Kvd) -> String {
    k.url.trim_start_matches("http://").to_owned()
}

/// The status line of a raw request's answer (empty if the server closed).
fn raw(k: &Kvd, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr(k)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).lines().next().unwrap_or("").to_owned()
}

/// Idle connections held open at once: more than the soft open-file limit
/// kvd is started with below (systemd's default).
const IDLE: usize = 3000;

/// Raises this process's soft open-file limit to its hard limit (it holds
/// the client ends of the idle connections) and returns the hard limit.
#[allow(unsafe_code)]
fn raise_own_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_max
}

/// (soft, hard) "Max open files" of a process.
fn fd_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files").to_owned();
    let mut f = line.trim_start_matches("Max open files").split_whitespace().map(str::to_owned);
    (f.next().expect("soft"), f.next().expect("hard"))
}

#[tokio::test]
async fn the_node_serves_others_while_clients_misbehave() {
    let hard = raise_own_fd_limit();
    assert!(hard > IDLE as u64 + 500, "the hard open-file limit ({hard}) is too low for this test");
    // Started the way systemd starts a service: a soft limit of 1024.
    let k = Kvd::bootstrap_under(&["prlimit", &format!("--nofile=1024:{hard}")], &[]);
    let (soft, hard_seen) = fd_limits(k.pid().expect("pid"));
    assert_eq!(soft, hard_seen, "kvd did not raise its open-file limit");
    // Thousands of connections that never say anything.
    let idle: Vec<TcpStream> = (0..IDLE).map(|_| TcpStream::connect(addr(&k)).expect("idle connection")).collect();
    // One that starts a request and stalls mid-headers.
    let mut slow = TcpStream::connect(addr(&k)).expect("connect");
    slow.write_all(b"GET /v1/kv/x HTTP/1.1\r\nHost: x\r\nX-Slow: 1").expect("write");

    // Everyone else is served at once.
    let c = k.client();
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), c.put("hostile/x", "1", &Default::default()))
        .await
        .expect("a put while thousands of connections idle")
        .expect("put");
    let v = tokio::time::timeout(Duration::from_secs(5), c.get("hostile/x")).await.expect("get").expect("get");
    assert_eq!(v.expect("exists").value, "1");
    println!("put + get with {IDLE} idle connections: {:?}", t.elapsed());

    // Bad requests get their errors.
    let huge = format!("GET /v1/kv/x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    assert!(raw(&k, huge.as_bytes()).starts_with("HTTP/1.1 431"), "a 1 MiB header");
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let status = raw(&k, format!("GET /v1/kv/x HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes());
    assert!(status.starts_with("HTTP/1.1 431"), "500 headers: {status}");
    assert!(raw(&k, b"GET /v1/kv/%FF%FE HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(raw(&k, b"GARBAGE\r\n\r\n").starts_with("HTTP/1.1 400"));

    // The stalled client loses its connection after the header timeout.
    slow.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(t.elapsed() < Duration::from_secs(25), "a stalled request kept its connection");
    drop(idle);
}
