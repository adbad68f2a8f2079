//! A small W3C WebDriver client: drives Debian's headless Chromium through
//! `chromedriver` for the tests of the web UI.
//!
//! Every method blocks (a private current-thread tokio runtime runs the
//! requests), so use it from a plain `#[test]`, not from inside a tokio
//! runtime. A WebDriver error panics with its message and the request, so a
//! failing test says why.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Where Debian's `chromium-driver` package puts the driver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long `find` and `wait_until` wait.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long chromedriver may take to answer `/status`.
const DRIVER_READY: Duration = Duration::from_secs(20);
/// How long one WebDriver request may take (a session start included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The key of an element reference in WebDriver's JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver error: its `error` code, `message`, and the request.
#[derive(Debug)]
struct WdError {
    code: String,
    message: String,
    request: String,
}

/// A headless Chromium session behind its own chromedriver. Dropping it
/// ends the session and kills chromedriver and anything it left running.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
    log: PathBuf,
    tmp: tempfile::TempDir,
}

/// An element of the current page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; `None` (after
    /// saying so) when Chromium or chromedriver is not installed.
    pub fn start() -> Option<Browser> {
        if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
            eprintln!("skipping: chromium/chromedriver not installed (tests/run.sh installs them as root)");
            return None;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = tmp.path().join("chromedriver.log");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            l.local_addr().expect("local addr").port()
        };
        let out = std::fs::File::create(&log).expect("chromedriver log");
        let err = out.try_clone().expect("chromedriver log");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            // Chromium's crash database and caches go to the temp dir, not
            // to the user's home.
            .env("XDG_CONFIG_HOME", tmp.path().join("config"))
            .env("XDG_CACHE_HOME", tmp.path().join("cache"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn chromedriver");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("http client");
        let mut b =
            Browser { driver, base: format!("http://127.0.0.1:{port}"), session: String::new(), http, rt, log, tmp };
        b.wait_driver();
        let profile = b.tmp.path().join("profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    // NOTE: without these Chromium keeps calling home,
                    // which floods a machine with no network.
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let v = b
            .request(reqwest::Method::POST, "/session".into(), Some(caps))
            .unwrap_or_else(|e| panic!("{}\nchromedriver log:\n{}", e, b.log_text()));
        b.session = v["sessionId"].as_str().expect("sessionId in the new session's answer").to_owned();
        Some(b)
    }

    /// Polls chromedriver's `/status` until it says it is ready.
    fn wait_driver(&mut self) {
        let deadline = Instant::now() + DRIVER_READY;
        let url = format!("{}/status", self.base);
        loop {
            if let Ok(Some(s)) = self.driver.try_wait() {
                panic!("chromedriver exited ({s}):\n{}", self.log_text());
            }
            let ready = self.rt.block_on(async {
                let r = self.http.get(&url).timeout(Duration::from_secs(2)).send().await.ok()?;
                let v: Value = r.json().await.ok()?;
                v["value"]["ready"].as_bool()
            });
            if ready == Some(true) {
                return;
            }
            assert!(Instant::now() < deadline, "chromedriver not ready in time:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pids of chromedriver and of everything it runs (Chromium's).
    pub fn pids(&self) -> Vec<u32> {
        let mut p = vec![self.driver.id()];
        p.extend(descendants(self.driver.id()));
        p
    }

    /// chromedriver's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One WebDriver request; its `value`, or the WebDriver error.
    fn request(&self, method: reqwest::Method, path: String, body: Option<Value>) -> Result<Value, WdError> {
        let request = match &body {
            Some(b) => format!("{method} {path} {b}"),
            None => format!("{method} {path}"),
        };
        let url = format!("{}{path}", self.base);
        let res: Result<(u16, Value), String> = self.rt.block_on(async {
            let mut rb = self.http.request(method.clone(), &url);
            if let Some(b) = &body {
                rb = rb.header("content-type", "application/json").body(b.to_string());
            }
            let r = rb.send().await.map_err(|e| format!("{e}"))?;
            let status = r.status().as_u16();
            let text = r.text().await.map_err(|e| format!("{e}"))?;
            let v = serde_json::from_str(&text).map_err(|e| format!("not JSON ({e}): {text}"))?;
            Ok((status, v))
        });
        let (status, mut v) =
            res.map_err(|message| WdError { code: "transport".into(), message, request: request.clone() })?;
        let value = v["value"].take();
        if status != 200 || value.get("error").is_some_and(|e| e.is_string()) {
            return Err(WdError {
                code: value["error"].as_str().unwrap_or("unknown error").to_owned(),
                message: value["message"].as_str().unwrap_or("").to_owned(),
                request: format!("{request} (HTTP {status})"),
            });
        }
        Ok(value)
    }

    /// A session command (`path` after `/session/ID`), panicking on error.
    fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.request(method, format!("/session/{}{path}", self.session), body).unwrap_or_else(|e| panic!("{e}"))
    }

    fn get(&self, path: &str) -> Value {
        self.cmd(reqwest::Method::GET, path, None)
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.cmd(reqwest::Method::POST, path, Some(body))
    }

    /// Navigates to `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }));
    }

    /// The current page's URL.
    pub fn current_url(&self) -> String {
        self.get("/url").as_str().expect("URL is a string").to_owned()
    }

    /// The current page's title.
    pub fn title(&self) -> String {
        self.get("/title").as_str().expect("title is a string").to_owned()
    }

    /// The first element matching the CSS selector, waiting up to [`WAIT`]
    /// for one to exist.
    pub fn find(&self, css: &str) -> Element<'_> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.try_find(css) {
                return e;
            }
            if Instant::now() > deadline {
                panic!("no element matches {css:?} after {WAIT:?}; the page says:\n{}", self.page_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first element matching the CSS selector now, if any.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        let body = json!({"using": "css selector", "value": css});
        match self.request(reqwest::Method::POST, format!("/session/{}/element", self.session), Some(body)) {
            Ok(v) => Some(self.element(&v)),
            Err(e) if e.code == "no such element" => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// Every element matching the CSS selector now (maybe none).
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let v = self.post("/elements", json!({"using": "css selector", "value": css}));
        v.as_array().expect("a list of elements").iter().map(|e| self.element(e)).collect()
    }

    fn element(&self, v: &Value) -> Element<'_> {
        let id = v[ELEMENT_KEY].as_str().unwrap_or_else(|| panic!("not an element reference: {v}"));
        Element { browser: self, id: id.to_owned() }
    }

    /// Polls `f` every 100 ms until it holds; past [`WAIT`] panics with
    /// `what` and the page's text.
    pub fn wait_until(&self, what: &str, mut f: impl FnMut(&Browser) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !f(self) {
            if Instant::now() > deadline {
                panic!(
                    "timed out after {WAIT:?} waiting for {what}; the page ({}) says:\n{}",
                    self.current_url(),
                    self.page_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `js` as a function body (`return ...` gives the result) in the
    /// page, with no arguments; its result.
    pub fn eval(&self, js: &str) -> Value {
        self.post("/execute/sync", json!({"script": js, "args": []}))
    }

    /// The page's visible text (`document.body.innerText`).
    pub fn page_text(&self) -> String {
        self.eval("return document.body ? document.body.innerText : ''").as_str().unwrap_or("").to_owned()
    }

    /// Saves a PNG screenshot of the window at `path` (making its parent
    /// directories).
    pub fn screenshot(&self, path: &Path) {
        let v = self.get("/screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("screenshot is a base64 string"))
            .expect("screenshot is valid base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

impl Element<'_> {
    fn path(&self, what: &str) -> String {
        format!("/element/{}/{what}", self.id)
    }

    /// Clicks the element (scrolled into view first).
    pub fn click(&self) {
        self.browser.post(&self.path("click"), json!({}));
    }

    /// The element's rendered text.
    pub fn text(&self) -> String {
        self.browser.get(&self.path("text")).as_str().unwrap_or("").to_owned()
    }

    /// The element's current `value` property (what is typed in an input),
    /// empty when it has none.
    pub fn value(&self) -> String {
        match self.browser.get(&self.path("property/value")) {
            Value::String(s) => s,
            Value::Null => String::new(),
            v => v.to_string(),
        }
    }

    /// An attribute as written in the page, `None` when absent.
    pub fn attr(&self, name: &str) -> Option<String> {
        self.browser.get(&self.path(&format!("attribute/{name}"))).as_str().map(str::to_owned)
    }

    /// Empties an input or textarea.
    pub fn clear(&self) {
        self.browser.post(&self.path("clear"), json!({}));
    }

    /// Types `text` into the element.
    pub fn send_keys(&self, text: &str) {
        self.browser.post(&self.path("value"), json!({ "text": text }));
    }

    /// Whether the element is enabled (not `disabled`).
    pub fn is_enabled(&self) -> bool {
        self.browser.get(&self.path("enabled")).as_bool().expect("enabled is a boolean")
    }

    /// Whether the element is displayed.
    pub fn is_displayed(&self) -> bool {
        self.browser.get(&self.path("displayed")).as_bool().expect("displayed is a boolean")
    }
}

impl std::fmt::Display for WdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebDriver error {:?}: {} (request: {})", self.code, self.message, self.request)
    }
}

/// The pids of `pid`'s descendants (children before grandchildren).
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let Ok(o) = Command::new("pgrep").arg("-P").arg(p.to_string()).output() else { break };
        for c in String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|s| s.parse::<u32>().ok()) {
            out.push(c);
            queue.push(c);
        }
    }
    out
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Ends Chromium; an error here must not hide the test's own.
            let _ = self.request(reqwest::Method::DELETE, format!("/session/{}", self.session), None);
        }
        // NOTE: collected before chromedriver dies, while they are still its
        // descendants (orphans would be reparented and lost).
        let left = descendants(self.driver.id());
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        for pid in left {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
}
