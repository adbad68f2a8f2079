//! HTTP/1.1 for `http://` requests whose answer is read whole: written and
//! read here on kept-alive connections, without reqwest's connection tasks.
//! On a 2-core machine the client's own CPU was what held back a loaded
//! cluster's writes (BENCHMARKS.md, "kv-client's lean path"). TLS
//! endpoints, streamed answers (watches, snapshots) and clients behind an
//! HTTP proxy keep reqwest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest line of an answer's head (or a chunk size line).
const MAX_LINE: u64 = 16 << 10;
/// Largest answer head.
const MAX_HEAD: usize = 64 << 10;
/// Largest answer body (kvd's largest are pages of a listing).
const MAX_BODY: u64 = 1 << 30;
/// Idle connections kept per member.
const MAX_IDLE: usize = 256;

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) struct Fail {
    /// What happened, for the error.
    pub text: String,
    /// The request went out on a connection that was made: the member may
    /// have taken it.
    pub broke: bool,
}

impl From<reqwest::Error> for Fail {
    fn from(e: reqwest::Error) -> Fail {
        Fail { text: crate::error::error_chain(&e), broke: !e.is_connect() && !e.is_timeout() && !e.is_builder() }
    }
}

/// A kept-alive connection and when it went idle.
type Idle = (BufReader<TcpStream>, Instant);

/// Idle connections by the member's address as its endpoint names it
/// (`host[:port]`).
#[derive(Debug, Default)]
pub(crate) struct Pool {
    idle: Mutex<Idles>,
}

/// A pool's idle connections.
#[derive(Debug, Default)]
struct Idles {
    /// By member.
    by: HashMap<String, Vec<Idle>>,
    /// When `put` last looked at every member's.
    swept: Option<Instant>,
}

/// How often `put` closes the idle connections of members no longer asked.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Whether an idle connection can carry a request: the member has not
/// closed it (nor sent anything unasked).
fn alive(c: &BufReader<TcpStream>) -> bool {
    let mut b = [0u8; 1];
    c.buffer().is_empty()
        && matches!(c.get_ref().try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

impl Pool {
    fn take(&self, authority: &str, idle_for: Duration) -> Option<BufReader<TcpStream>> {
        let mut idle = self.idle.lock().ok()?;
        let conns = idle.by.get_mut(authority)?;
        // (expired ones are closed here, not only skipped)
        conns.retain(|(_, since)| since.elapsed() < idle_for);
        while let Some((c, _)) = conns.pop() {
            if alive(&c) {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, authority: &str, c: BufReader<TcpStream>) {
        let now = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            // (connections to a member no longer asked, one removed from
            // the cluster, are closed once it would have closed them: only
            // a `take` for the same member looked at them before)
            if idle.swept.is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY) {
                idle.swept = Some(now);
                idle.by.retain(|_, conns| {
                    conns.retain(|(_, since)| now.saturating_duration_since(*since) < crate::MEMBER_IDLE_CLOSE);
                    !conns.is_empty()
                });
            }
            let conns = idle.by.entry(authority.to_owned()).or_default();
            if conns.len() < MAX_IDLE {
                conns.push((c, now));
            }
        }
    }

    /// Drops `authority`'s idle connections (one broke: the member closed
    /// them, or restarted).
    fn clear(&self, authority: &str) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.by.remove(authority);
        }
    }

    /// Sends `req` (one [`eligible`]) and reads the whole answer, as
    /// reqwest would give it. `repeatable`: the request may be sent twice;
    /// one that may not goes on a new connection, never on one the member
    /// may have closed.
    pub(crate) async fn send_request(
        &self,
        req: &reqwest::Request,
        defaults: &HeaderMap,
        repeatable: bool,
        connect_timeout: Duration,
        idle_for: Duration,
    ) -> Result<reqwest::Response, Fail> {
        let url = req.url();
        let body: &[u8] = req.body().and_then(|b| b.as_bytes()).unwrap_or_default();
        let host = url.host_str().ok_or_else(|| Fail { text: format!("no host in {url}"), broke: false })?;
        // (the port only when the URL names one, as reqwest writes it)
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let call = Call { method: req.method(), path: &path, headers: req.headers(), body };
        Ok(self.send(&authority, &call, defaults, repeatable, connect_timeout, idle_for).await?.into_response())
    }

    /// Sends `call` to `authority` (`host[:port]`, as the endpoint names
    /// it) and reads the whole answer. `repeatable`: see
    /// [`Pool::send_request`].
    pub(crate) async fn send(
        &self,
        authority: &str,
        call: &Call<'_>,
        defaults: &HeaderMap,
        repeatable: bool,
        connect_timeout: Duration,
        idle_for: Duration,
    ) -> Result<Whole, Fail> {
        let mut out = Vec::with_capacity(256 + call.body.len());
        out.extend_from_slice(call.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(call.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(authority.as_bytes());
        out.extend_from_slice(b"\r\n");
        let ours =
            |k: &HeaderName| matches!(k.as_str(), "host" | "content-length" | "transfer-encoding" | "connection");
        let from_defaults = defaults.iter().filter(|(k, _)| !call.headers.contains_key(*k));
        for (k, v) in call.headers.iter().chain(from_defaults).filter(|(k, _)| !ours(k)) {
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(call.body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(call.body);
        let reuse = if repeatable { self.take(authority, idle_for) } else { None };
        let (mut conn, reused) = match reuse {
            Some(c) => (c, true),
            None => match tokio::time::timeout(connect_timeout, connect(authority)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    (BufReader::new(s), false)
                }
                Ok(Err(e)) => return Err(Fail { text: format!("error sending request: {e}"), broke: false }),
                Err(_) => return Err(Fail { text: "connect timed out".into(), broke: false }),
            },
        };
        match exchange(&mut conn, &out, call.method == Method::HEAD).await {
            Ok((whole, keep)) => {
                if keep {
                    self.put(authority, conn);
                }
                Ok(whole)
            }
            Err(e) => {
                if reused {
                    self.clear(authority);
                }
                Err(Fail { text: format!("connection broke: {e}"), broke: true })
            }
        }
    }
}

/// Whole-answer `http://` exchanges on kept-alive connections of their own,
/// for another program's requests built with reqwest: kvd's calls to its
/// peers. (What kv-client's own calls go through.)
#[derive(Debug, Default)]
pub struct LeanHttp {
    pool: Pool,
}

/// Why a [`LeanHttp`] exchange failed.
#[derive(Debug)]
pub struct LeanError {
    /// What happened.
    pub text: String,
    /// A connection was made and the request went out on it: the other end
    /// may have taken it.
    pub sent: bool,
}

impl LeanHttp {
    /// `None` when the environment names an HTTP proxy (which reqwest
    /// honours and this path does not).
    pub fn new() -> Option<LeanHttp> {
        (!proxied()).then(LeanHttp::default)
    }

    /// Whether `req` can go this way: `http://`, with a body of bytes or
    /// none.
    pub fn takes(req: &reqwest::Request) -> bool {
        eligible(req)
    }

    /// Sends `req` (one [`LeanHttp::takes`]) and reads the whole answer.
    /// `repeatable`: the request may be sent twice. It then goes on a
    /// kept-alive connection, and again on a new one if that one turns out
    /// to be closed (the other end closes idle ones); one that may not goes
    /// on a new connection. Connections idle for `idle_for` are not reused.
    /// No overall deadline: the caller bounds it.
    pub async fn send(
        &self,
        req: &reqwest::Request,
        repeatable: bool,
        connect_timeout: Duration,
        idle_for: Duration,
    ) -> Result<reqwest::Response, LeanError> {
        let none = HeaderMap::new();
        let mut sent = self.pool.send_request(req, &none, repeatable, connect_timeout, idle_for).await;
        if repeatable && sent.as_ref().is_err_and(|f| f.broke) {
            sent = self.pool.send_request(req, &none, false, connect_timeout, idle_for).await;
        }
        sent.map_err(|f| LeanError { text: f.text, sent: f.broke })
    }
}

/// Connects to `authority` (`host[:port]`).
async fn connect(authority: &str) -> std::io::Result<TcpStream> {
    TcpStream::connect(&*address(authority)).await
}

/// The address to connect to for `authority`: port 80 when it names none.
fn address(authority: &str) -> std::borrow::Cow<'_, str> {
    // (an IPv6 address is bracketed: a port comes after the bracket)
    let named = authority.rsplit_once(']').map_or(authority, |(_, rest)| rest).contains(':');
    if named {
        authority.into()
    } else {
        format!("{authority}:80").into()
    }
}

/// A request read whole by its answer: what goes on the wire but the host,
/// the length and the connection headers, which this path writes.
pub(crate) struct Call<'a> {
    /// The method.
    pub method: &'a Method,
    /// Path and query.
    pub path: &'a str,
    /// Headers (the client's defaults are added unless named here).
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

/// An answer read whole.
#[derive(Debug)]
pub(crate) struct Whole {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Whole {
    /// The answer as reqwest gives one.
    pub(crate) fn into_response(self) -> reqwest::Response {
        let mut resp = http::Response::new(self.body);
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        reqwest::Response::from(resp)
    }
}

/// Whether `req` goes this way: `http://`, with a body of bytes or none.
pub(crate) fn eligible(req: &reqwest::Request) -> bool {
    req.url().scheme() == "http" && req.body().is_none_or(|b| b.as_bytes().is_some())
}

/// Whether the environment names an HTTP proxy (reqwest honours it; this
/// path does not, so a client behind one keeps reqwest).
pub(crate) fn proxied() -> bool {
    ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Reads one line (at most [`MAX_LINE`] bytes) into `line`, without its
/// line end; an error at the end of the stream.
async fn read_line(conn: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> std::io::Result<()> {
    line.clear();
    let n = (&mut *conn).take(MAX_LINE).read_until(b'\n', line).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    if line.last() != Some(&b'\n') {
        return Err(bad(if n as u64 >= MAX_LINE { "answer line too long" } else { "answer cut short" }));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(())
}

/// Reads exactly `n` bytes onto `body` (as they come: a length announced
/// is not memory set aside).
async fn read_n(conn: &mut BufReader<TcpStream>, body: &mut Vec<u8>, n: u64) -> std::io::Result<()> {
    if body.len() as u64 + n > MAX_BODY {
        return Err(bad("answer body too large"));
    }
    let got = (&mut *conn).take(n).read_to_end(body).await?;
    if (got as u64) < n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Writes `out` and reads one answer (`head`: to a HEAD request): the
/// answer, and whether the connection may carry another request.
async fn exchange(conn: &mut BufReader<TcpStream>, out: &[u8], head: bool) -> std::io::Result<(Whole, bool)> {
    if let Err(e) = conn.get_mut().write_all(out).await {
        // The other end may have answered before it read the whole request
        // (a refusal: too large, another cluster's member) and closed: that
        // answer, if it can still be read, is the one.
        return match read_answer(conn, head).await {
            Ok((whole, _)) => Ok((whole, false)),
            Err(_) => Err(e),
        };
    }
    read_answer(conn, head).await
}

/// Reads one answer (after any interim ones) from `conn`: it, and whether
/// the connection can carry another request.
async fn read_answer(conn: &mut BufReader<TcpStream>, head: bool) -> std::io::Result<(Whole, bool)> {
    let mut line = Vec::new();
    // Interim answers (100 Continue, 103 Early Hints) come before the one.
    let (status, headers, len, chunked, mut keep) = loop {
        read_line(conn, &mut line).await?;
        let status: u16 = line
            .strip_prefix(b"HTTP/1.1 ")
            .or_else(|| line.strip_prefix(b"HTTP/1.0 "))
            .and_then(|r| r.get(..3))
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("not an HTTP/1.1 answer"))?;
        let mut headers = HeaderMap::new();
        let (mut len, mut chunked, mut keep, mut size) = (None, false, !line.starts_with(b"HTTP/1.0"), line.len());
        loop {
            read_line(conn, &mut line).await?;
            size += line.len() + 2;
            if size > MAX_HEAD {
                return Err(bad("answer head too large"));
            }
            if line.is_empty() {
                break;
            }
            let at = line.iter().position(|&b| b == b':').ok_or_else(|| bad("bad header line"))?;
            let name = HeaderName::from_bytes(line[..at].trim_ascii()).map_err(|_| bad("bad header name"))?;
            let value = HeaderValue::from_bytes(line[at + 1..].trim_ascii()).map_err(|_| bad("bad header value"))?;
            let v = value.as_bytes();
            match name.as_str() {
                "content-length" => {
                    let n = std::str::from_utf8(v).ok().and_then(|s| s.parse::<u64>().ok());
                    len = Some(n.ok_or_else(|| bad("bad content-length"))?);
                }
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case(b"chunked"),
                "connection" if v.eq_ignore_ascii_case(b"close") => keep = false,
                "connection" if v.eq_ignore_ascii_case(b"keep-alive") => keep = true,
                _ => {}
            }
            headers.append(name, value);
        }
        match status {
            101 => return Err(bad("the member switched protocols")),
            100..=199 => continue,
            _ => break (status, headers, len, chunked, keep),
        }
    };
    let mut body = Vec::new();
    if head || status == 204 || status == 304 {
        // (no body, whatever the head says)
    } else if chunked {
        loop {
            read_line(conn, &mut line).await?;
            let size = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
            let n = std::str::from_utf8(size)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| bad("bad chunk size"))?;
            if n == 0 {
                // trailers, then the blank line
                loop {
                    read_line(conn, &mut line).await?;
                    if line.is_empty() {
                        break;
                    }
                }
                break;
            }
            read_n(conn, &mut body, n).await?;
            read_line(conn, &mut line).await?;
            if !line.is_empty() {
                return Err(bad("bad chunk end"));
            }
        }
    } else if let Some(n) = len {
        read_n(conn, &mut body, n).await?;
    } else {
        // No length: the body ends with the connection.
        (&mut *conn).take(MAX_BODY + 1).read_to_end(&mut body).await?;
        if body.len() as u64 > MAX_BODY {
            return Err(bad("answer body too large"));
        }
        keep = false;
    }
    let status = http::StatusCode::from_u16(status).map_err(|_| bad("bad status"))?;
    Ok((Whole { status, headers, body: body.into() }, keep))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener on a free loopback port, and its address.
    async fn listen() -> (tokio::net::TcpListener, std::net::SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        (listener, addr)
    }

    /// The next connection to `listener`, read through a buffer.
    async fn accept(listener: &tokio::net::TcpListener) -> BufReader<TcpStream> {
        BufReader::new(listener.accept().await.expect("accept").0)
    }

    #[tokio::test]
    async fn connections_to_a_member_no_longer_asked_are_closed_once_it_would_have_closed_them() {
        let (listener, addr) = listen().await;
        let pool = Pool::default();
        let old = Instant::now().checked_sub(crate::MEMBER_IDLE_CLOSE + Duration::from_secs(1));
        let Some(old) = old else { return };
        let mut kept = Vec::new();
        for _ in 0..2 {
            let c = BufReader::new(TcpStream::connect(addr).await.expect("connect"));
            kept.push(accept(&listener).await);
            pool.idle.lock().expect("pool").by.entry("removed:1".into()).or_default().push((c, old));
        }
        let recent = BufReader::new(TcpStream::connect(addr).await.expect("connect"));
        let _member_end = accept(&listener).await;
        pool.put("recent:2", recent);
        let held: Vec<(String, usize)> =
            pool.idle.lock().expect("pool").by.iter().map(|(k, v)| (k.clone(), v.len())).collect();
        assert_eq!(held, vec![("recent:2".to_owned(), 1)], "the removed member's connections are still held");
        // (closed on this side: the member reads the end of the stream)
        for mut k in kept {
            let mut b = [0u8; 1];
            assert_eq!(k.read(&mut b).await.expect("read"), 0);
        }
    }

    /// Reads one request's head.
    async fn read_head(s: &mut BufReader<TcpStream>) -> String {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            s.read_line(&mut line).await.expect("read");
            if line == "\r\n" || line.is_empty() {
                return head;
            }
            head.push_str(&line);
        }
    }

    /// Reads one request's head and body (by its content-length).
    async fn read_request(s: &mut BufReader<TcpStream>) -> String {
        let head = read_head(s).await;
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        s.read_exact(&mut body).await.expect("body");
        head + &String::from_utf8_lossy(&body)
    }

    #[tokio::test]
    async fn an_answer_sent_before_the_request_was_read_whole_is_the_answer() {
        // A member refuses a large request at its head (another cluster's,
        // or over a limit) and closes without reading the body.
        let (listener, addr) = listen().await;
        let server = tokio::spawn(async move {
            let mut s = accept(&listener).await;
            read_head(&mut s).await;
            let no = b"HTTP/1.1 409 Conflict\r\nconnection: close\r\ncontent-length: 2\r\n\r\nno";
            s.get_mut().write_all(no).await.expect("answer");
        });
        let req = reqwest::Client::new()
            .post(format!("http://{addr}/p"))
            .body(vec![b'x'; 16 << 20])
            .build()
            .expect("request");
        let t = Duration::from_secs(5);
        let resp = LeanHttp::default().send(&req, false, t, t).await.expect("the refusal");
        assert_eq!(resp.status(), http::StatusCode::CONFLICT);
        assert_eq!(resp.bytes().await.expect("body").as_ref(), b"no");
        tokio::time::timeout(t, server).await.expect("in time").expect("server");
    }

    #[tokio::test]
    async fn a_repeatable_request_on_a_kept_connection_the_other_end_closes_is_sent_again_on_a_new_one() {
        let (listener, addr) = listen().await;
        let server = tokio::spawn(async move {
            // The first connection answers one request, then takes the next
            // and closes without an answer (an idle close at that moment).
            let mut s = accept(&listener).await;
            assert!(read_request(&mut s).await.contains("one"));
            s.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1").await.expect("answer");
            assert!(read_request(&mut s).await.contains("two"));
            drop(s);
            let mut s = accept(&listener).await;
            assert!(read_request(&mut s).await.contains("two"));
            s.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2").await.expect("answer");
        });
        let lean = LeanHttp::default();
        let http = reqwest::Client::new();
        let (t, idle) = (Duration::from_secs(5), Duration::from_secs(5));
        for (body, want) in [("one", "1"), ("two", "2")] {
            let req = http.post(format!("http://{addr}/p")).body(body).build().expect("request");
            assert!(LeanHttp::takes(&req));
            let resp = lean.send(&req, true, t, idle).await.unwrap_or_else(|e| panic!("{body}: {e:?}"));
            assert_eq!(resp.bytes().await.expect("body").as_ref(), want.as_bytes());
        }
        tokio::time::timeout(t, server).await.expect("in time").expect("server");
    }

    #[test]
    fn an_endpoint_without_a_port_is_reached_on_port_80() {
        for (authority, address) in [
            ("127.0.0.1:7379", "127.0.0.1:7379"),
            ("127.0.0.1", "127.0.0.1:80"),
            ("localhost:7379", "localhost:7379"),
            ("kv.example", "kv.example:80"),
            ("[::1]:7379", "[::1]:7379"),
            ("[::1]", "[::1]:80"),
        ] {
            assert_eq!(super::address(authority), address);
        }
    }
}
