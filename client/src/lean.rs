//! HTTP/1.1 for `http://` requests whose answer is read whole: written and
//! read here on kept-alive connections, without reqwest's connection tasks.
//! On a 2-core machine the client's own CPU was what held back a loaded
//! cluster's writes (BENCHMARKS.md, "What kv-client costs the put rows").
//! TLS endpoints and streamed answers (watches, snapshots) keep reqwest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest answer head kept (kvd's are a few hundred bytes).
const MAX_HEAD: usize = 64 << 10;

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

impl Pool {
    fn take(&self, authority: &str, idle_for: Duration) -> Option<BufReader<TcpStream>> {
        let mut idle = self.idle.lock().ok()?;
        let conns = idle.get_mut(authority)?;
        while let Some((c, since)) = conns.pop() {
            if since.elapsed() < idle_for {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, authority: &str, c: BufReader<TcpStream>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.entry(authority.to_owned()).or_default().push((c, Instant::now()));
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
    pub(crate) async fn send(
        &self,
        req: &reqwest::Request,
        defaults: &HeaderMap,
        connect_timeout: Duration,
        idle_for: Duration,
    ) -> Result<reqwest::Response, Fail> {
        let url = req.url();
        let body: &[u8] = req.body().and_then(|b| b.as_bytes()).unwrap_or_default();
        let host = url.host_str().ok_or_else(|| Fail { text: format!("no host in {url}"), broke: false })?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => format!("{host}:80"),
        };
        let mut head = format!("{} {}", req.method(), url.path());
        if let Some(q) = url.query() {
            head.push('?');
            head.push_str(q);
        }
        head.push_str(" HTTP/1.1\r\nhost: ");
        head.push_str(&authority);
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        for (k, v) in req.headers().iter().chain(defaults.iter().filter(|(k, _)| !req.headers().contains_key(*k))) {
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        let (mut conn, reused) = match self.take(&authority, idle_for) {
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
        match exchange(&mut conn, &out).await {
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

/// Reads one line into `line` (an error at the end of the stream).
async fn read_line(conn: &mut BufReader<TcpStream>, line: &mut String) -> std::io::Result<()> {
    line.clear();
    if conn.read_line(line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Whether `req` goes this way: `http://`, with a body of bytes or none.
pub(crate) fn eligible(req: &reqwest::Request) -> bool {
    req.url().scheme() == "http" && req.body().is_none_or(|b| b.as_bytes().is_some())
}

/// Writes `out` and reads one answer: the answer, and whether the
/// connection may carry another request.
async fn exchange(conn: &mut BufReader<TcpStream>, out: &[u8]) -> std::io::Result<(reqwest::Response, bool)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    conn.get_mut().write_all(out).await?;
    let mut line = String::new();
    read_line(conn, &mut line).await?;
    let status: u16 = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("not an HTTP/1.1 answer"))?;
    let mut headers = HeaderMap::new();
    let (mut len, mut chunked, mut keep, mut size) = (None, false, true, line.len());
    loop {
        read_line(conn, &mut line).await?;
        size += line.len();
        if size > MAX_HEAD {
            return Err(bad("answer head too large"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| bad("bad header line"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            len = Some(v.parse::<usize>().map_err(|_| bad("bad content-length"))?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.eq_ignore_ascii_case("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            keep &= !v.eq_ignore_ascii_case("close");
        }
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad("bad header name"))?;
        let value = HeaderValue::from_str(v).map_err(|_| bad("bad header value"))?;
        headers.append(name, value);
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            read_line(conn, &mut line).await?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if n == 0 {
                // trailers, then the blank line
                loop {
                    read_line(conn, &mut line).await?;
                    if line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let at = body.len();
            body.resize(at + n, 0);
            conn.read_exact(&mut body[at..]).await?;
            read_line(conn, &mut line).await?;
        }
    } else if let Some(n) = len {
        body.resize(n, 0);
        conn.read_exact(&mut body).await?;
    } else if status >= 200 && status != 204 && status != 304 {
        // No length: the body ends with the connection.
        conn.read_to_end(&mut body).await?;
        keep = false;
    }
    let mut resp = http::Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(status).map_err(|_| bad("bad status"))?;
    *resp.headers_mut() = headers;
    Ok((reqwest::Response::from(resp), keep))
}
