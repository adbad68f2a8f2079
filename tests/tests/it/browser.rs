//! Issue 26: the WebDriver client the web UI's tests drive headless Chromium
//! with, against a tiny page served from this process.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_tests::browser::Browser;

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>browser test</title></head>
<body>
<h1>Echo</h1>
<input id="in" name="in" placeholder="type here">
<button id="go" onclick="go()">Go</button>
<button id="off" disabled>Off</button>
<span id="hidden" style="display:none">hidden</span>
<p id="out"></p>
<ul><li class="item">a</li><li class="item">b</li><li class="item">c</li></ul>
<script>
function go() {
  const v = document.getElementById('in').value;
  // Later, as a page that answers a request would.
  setTimeout(() => {
    document.getElementById('out').textContent = 'echo: ' + v;
    sessionStorage.setItem('last', v);
  }, 200);
}
</script>
</body></html>"#;

/// Serves `PAGE` at `/` (and 404 elsewhere) on loopback until dropped.
struct Site {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Site {
    fn start() -> Site {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(c) = conn {
                    serve(c);
                }
            }
        });
        Site { url, stop, thread: Some(thread) }
    }
}

fn serve(mut c: TcpStream) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&req).lines().next().unwrap_or("").to_owned();
    let (status, body) = if line.starts_with("GET / ") { ("200 OK", PAGE) } else { ("404 Not Found", "not found") };
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether `pid` is gone (or a zombie waiting for its reaper).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn drives_a_page_in_headless_chromium() {
    let Some(b) = Browser::start() else { return };
    let site = Site::start();
    b.goto(&format!("{}/", site.url));
    assert_eq!(b.title(), "browser test");
    assert_eq!(b.current_url(), format!("{}/", site.url));

    let input = b.find("#in");
    assert_eq!(input.attr("placeholder").as_deref(), Some("type here"));
    assert_eq!(input.attr("nonesuch"), None);
    input.send_keys("hello");
    assert_eq!(input.value(), "hello");
    input.clear();
    assert_eq!(input.value(), "");
    input.send_keys("héllo wörld");
    assert!(b.find("#go").is_enabled());
    assert!(!b.find("#off").is_enabled(), "a disabled button reads as disabled");
    assert!(!b.find("#hidden").is_displayed());
    assert!(b.find("#go").is_displayed());
    assert!(b.try_find("#nonesuch").is_none());
    let items: Vec<String> = b.find_all("li.item").iter().map(|e| e.text()).collect();
    assert_eq!(items, ["a", "b", "c"]);
    assert!(b.find_all("li.nonesuch").is_empty());

    b.find("#go").click();
    b.wait_until("the echo", |b| b.find("#out").text() == "echo: héllo wörld");
    assert!(b.page_text().contains("echo: héllo wörld"), "{}", b.page_text());

    // sessionStorage: what the page stored, and a round trip of our own.
    assert_eq!(b.eval("return sessionStorage.getItem('last')"), "héllo wörld");
    b.eval("sessionStorage.setItem('token', 'secret-1')");
    assert_eq!(b.eval("return sessionStorage.getItem('token')"), "secret-1");
    assert_eq!(b.eval("return 6 * 7"), 42);
    b.goto(&format!("{}/", site.url));
    assert_eq!(b.eval("return sessionStorage.getItem('token')"), "secret-1", "session storage outlives a reload");

    // A WebDriver error says what went wrong and what was asked.
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.eval("throw new Error('boom')")))
        .expect_err("a script that throws fails the call");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("boom") && msg.contains("execute/sync"), "{msg}");

    let dir = tempfile::tempdir().expect("tempdir");
    let shot = dir.path().join("shots/page.png");
    b.screenshot(&shot);
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG: {:?}", &png[..png.len().min(16)]);

    // Dropping the browser leaves nothing running.
    let pids = b.pids();
    assert!(pids.len() > 1, "chromedriver runs Chromium: {pids:?}");
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids.iter().all(|p| gone(*p)) {
        let left: Vec<_> = pids.iter().filter(|p| !gone(**p)).collect();
        assert!(Instant::now() < deadline, "still running after the browser was dropped: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
