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

/// Idle connections by `host:port`.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

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
        let conns = idle.get_mut(authority)?;
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
        if let Ok(mut idle) = self.idle.lock() {
            let conns = idle.entry(authority.to_owned()).or_default();
            if conns.len() < MAX_IDLE {
                conns.push((c, Instant::now()));
            }
        }
    }

    /// Drops `authority`'s idle connections (one broke: the member closed
    /// them, or restarted).
    fn clear(&self, authority: &str) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.remove(authority);
        }
    }

    /// Sends `req` (one [`eligible`]) and reads the whole answer.
    /// `repeatable`: the request may be sent twice; one that may not goes
    /// on a new connection, never on one the member may have closed.
    pub(crate) async fn send(
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
        let port = url.port_or_known_default().unwrap_or(80);
        let authority = format!("{host}:{port}");
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(req.method().as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(url.path().as_bytes());
        if let Some(q) = url.query() {
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        // (the port only when the URL names one, as reqwest writes it)
        out.extend_from_slice(host.as_bytes());
        if let Some(p) = url.port() {
            out.extend_from_slice(format!(":{p}").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        let ours =
            |k: &HeaderName| matches!(k.as_str(), "host" | "content-length" | "transfer-encoding" | "connection");
        let from_defaults = defaults.iter().filter(|(k, _)| !req.headers().contains_key(*k));
        for (k, v) in req.headers().iter().chain(from_defaults).filter(|(k, _)| !ours(k)) {
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        let reuse = if repeatable { self.take(&authority, idle_for) } else { None };
        let (mut conn, reused) = match reuse {
            Some(c) => (c, true),
            None => match tokio::time::timeout(connect_timeout, TcpStream::connect(&authority)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    (BufReader::new(s), false)
                }
                Ok(Err(e)) => return Err(Fail { text: format!("error sending request: {e}"), broke: false }),
                Err(_) => return Err(Fail { text: "connect timed out".into(), broke: false }),
            },
        };
        match exchange(&mut conn, &out, req.method() == Method::HEAD).await {
            Ok((resp, keep)) => {
                if keep {
                    self.put(&authority, conn);
                }
                Ok(resp)
            }
            Err(e) => {
                if reused {
                    self.clear(&authority);
                }
                Err(Fail { text: format!("connection broke: {e}"), broke: true })
            }
        }
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
async fn exchange(
    conn: &mut BufReader<TcpStream>,
    out: &[u8],
    head: bool,
) -> std::io::Result<(reqwest::Response, bool)> {
    conn.get_mut().write_all(out).await?;
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
    let mut resp = http::Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(status).map_err(|_| bad("bad status"))?;
    *resp.headers_mut() = headers;
    Ok((reqwest::Response::from(resp), keep))
}
