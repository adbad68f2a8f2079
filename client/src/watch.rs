//! A watch stream: server-sent events parsed into changes and keepalives,
//! given up when its member goes silent; and a watch that outlives its
//! streams, resuming each from where the last one stopped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::client::Client;
use crate::error::{error_chain, Error, ErrorCode};
use crate::types::{ErrorBody, WatchEvent};

type ByteStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A stream of watch events (server-sent events).
pub struct Watch {
    stream: ByteStream,
    buf: BytesMut,
    pending: VecDeque<WatchMessage>,
    last_revision: Option<u64>,
    /// The server's keepalive interval, if it announced one.
    keepalive: Option<Duration>,
    /// How long the stream may send nothing before it is given up.
    silence: Duration,
    /// When the stream last sent anything.
    heard: Instant,
    endpoint: String,
    endpoint_index: usize,
    endpoints: usize,
    /// The client's first endpoint, moved on when this stream fails.
    current: Arc<AtomicUsize>,
    failed: bool,
}

/// One message of a watch stream.
// NOTE: events are nearly every message; boxing them would cost an
// allocation each for the rare keepalive's sake.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum WatchMessage {
    /// A change.
    Event(WatchEvent),
    /// A keepalive: every change under the prefix up to `revision` was
    /// sent before it (so it is a resume point), and the member is alive.
    Progress {
        /// The stream's revision.
        revision: u64,
    },
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("endpoint", &self.endpoint).field("last_revision", &self.last_revision).finish()
    }
}

impl Watch {
    /// A stream from `endpoint` (URL, index, count of the client's
    /// endpoints), resuming after `after`, given up after `silence`.
    pub(crate) fn new(
        stream: ByteStream,
        after: Option<u64>,
        keepalive: Option<Duration>,
        silence: Duration,
        endpoint: (String, usize, usize),
        current: Arc<AtomicUsize>,
    ) -> Watch {
        let (endpoint, endpoint_index, endpoints) = endpoint;
        Watch {
            stream,
            buf: BytesMut::new(),
            pending: VecDeque::new(),
            last_revision: after,
            keepalive,
            silence,
            heard: Instant::now(),
            endpoint,
            endpoint_index,
            endpoints,
            current,
            failed: false,
        }
    }

    /// The next event; `Ok(None)` when the server closed the stream.
    /// Keepalives are taken in passing (see [`Watch::next_message`]).
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, Error> {
        loop {
            match self.next_message().await? {
                Some(WatchMessage::Event(ev)) => return Ok(Some(ev)),
                Some(WatchMessage::Progress { .. }) => {}
                None => return Ok(None),
            }
        }
    }

    /// The next event or keepalive; `Ok(None)` when the server closed the
    /// stream. Fails with [`Error::Stalled`] when the member sent nothing
    /// for a few keepalive intervals. A stream that failed or ended moves
    /// its client's next requests to the next endpoint.
    ///
    /// NOTE: cancel-safe: what was read is kept in `self` before each await,
    /// so a caller may wrap this in a timeout and call again.
    pub async fn next_message(&mut self) -> Result<Option<WatchMessage>, Error> {
        let r = self.read_message().await;
        if !matches!(r, Ok(Some(_))) {
            self.leave_endpoint();
        }
        r
    }

    async fn read_message(&mut self) -> Result<Option<WatchMessage>, Error> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Ok(Some(m));
            }
            // Parse whole SSE messages (terminated by a blank line) from the buffer.
            if let Some(pos) = find_blank_line(&self.buf) {
                let msg = self.buf.split_to(pos + 2);
                self.handle_message(&msg)?;
                continue;
            }
            let left = self.silence.saturating_sub(self.heard.elapsed());
            match tokio::time::timeout(left, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    self.heard = Instant::now();
                    self.buf.extend_from_slice(&chunk);
                }
                Ok(Some(Err(e))) => return Err(Error::Unreachable(error_chain(&e))),
                Ok(None) => return Ok(None),
                Err(_) => return Err(Error::Stalled { endpoint: self.endpoint.clone(), silent: self.heard.elapsed() }),
            }
        }
    }

    /// The next requests of the client go past this stream's member.
    fn leave_endpoint(&mut self) {
        if std::mem::replace(&mut self.failed, true) {
            return;
        }
        let next = (self.endpoint_index + 1) % self.endpoints;
        let _ = self.current.compare_exchange(self.endpoint_index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Revision of the last complete revision received (what `Last-Event-ID`
    /// would resume from). A keepalive moves it too: every change up to its
    /// revision came before it.
    pub fn last_revision(&self) -> Option<u64> {
        self.last_revision
    }

    /// The member URL the stream comes from.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server's keepalive interval, if it announced one (older servers
    /// do not; their streams are given up after a longer silence).
    pub fn keepalive(&self) -> Option<Duration> {
        self.keepalive
    }

    fn handle_message(&mut self, msg: &[u8]) -> Result<(), Error> {
        let text = std::str::from_utf8(msg).map_err(|_| Error::Protocol("watch event is not UTF-8".into()))?;
        let (mut event, mut data, mut id) = ("message", String::new(), None);
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse::<u64>().ok();
            }
        }
        match event {
            "put" | "delete" => {
                let ev: WatchEvent =
                    serde_json::from_str(&data).map_err(|e| Error::Protocol(format!("bad watch event: {e}")))?;
                self.pending.push_back(WatchMessage::Event(ev));
            }
            "keepalive" => {
                // NOTE: the id is the revision; an id never moves a resume
                // point back.
                if let Some(revision) = id {
                    if self.last_revision.is_none_or(|l| revision >= l) {
                        self.pending.push_back(WatchMessage::Progress { revision });
                    }
                }
            }
            "error" => {
                let body: ErrorBody =
                    serde_json::from_str(&data).map_err(|e| Error::Protocol(format!("bad watch error: {e}")))?;
                return Err(Error::Api { status: body.error.status(), code: body.error, message: body.message });
            }
            _ => {}
        }
        if let Some(id) = id {
            self.last_revision = Some(self.last_revision.map_or(id, |l| l.max(id)));
        }
        Ok(())
    }
}

/// How long a resuming watch waits before it opens another stream.
const RESUME_PAUSE: Duration = Duration::from_millis(500);

/// What a resuming watch calls with each error it gets past.
type OnInterrupt<'c> = Box<dyn FnMut(&Error) + Send + 'c>;

/// A watch that outlives its streams: made by [`Client::watch_from`].
pub struct Resuming<'c> {
    client: &'c Client,
    prefix: String,
    /// The last whole revision seen: where the next stream resumes.
    after: Option<u64>,
    watch: Option<Watch>,
    /// Whether a stream was ever opened: the next one waits a moment first.
    opened: bool,
    /// Events carry the entry before them.
    prev: bool,
    on_interrupt: Option<OnInterrupt<'c>>,
}

impl std::fmt::Debug for Resuming<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resuming").field("prefix", &self.prefix).field("after", &self.after).finish()
    }
}

impl<'c> Resuming<'c> {
    pub(crate) fn new(client: &'c Client, prefix: &str, after: Option<u64>) -> Resuming<'c> {
        Resuming {
            client,
            prefix: prefix.to_owned(),
            after,
            watch: None,
            opened: false,
            prev: false,
            on_interrupt: None,
        }
    }

    /// Asks for the entry before each event ([`crate::WatchEvent::prev`]).
    pub fn with_prev(mut self) -> Resuming<'c> {
        self.prev = true;
        self
    }

    /// Calls `f` with each error a new stream gets past (to tell a user
    /// the watch reconnects).
    pub fn on_interrupt(mut self, f: impl FnMut(&Error) + Send + 'c) -> Resuming<'c> {
        self.on_interrupt = Some(Box::new(f));
        self
    }

    /// The next event, across streams (see [`Client::watch_from`]).
    pub async fn next(&mut self) -> Result<WatchEvent, Error> {
        loop {
            if let WatchMessage::Event(ev) = self.next_message().await? {
                return Ok(ev);
            }
        }
    }

    /// The next event or keepalive, across streams (see
    /// [`Client::watch_from`]).
    ///
    /// NOTE: cancel-safe, as [`Watch::next_message`] is: the resume point
    /// is kept in `self` before each await.
    pub async fn next_message(&mut self) -> Result<WatchMessage, Error> {
        loop {
            let w = match &mut self.watch {
                Some(w) => w,
                None => {
                    if self.opened {
                        tokio::time::sleep(RESUME_PAUSE).await;
                    }
                    match self.client.watch_opts(&self.prefix, self.after, self.prev).await {
                        Ok(w) => {
                            self.opened = true;
                            self.after = w.last_revision().or(self.after);
                            self.watch.insert(w)
                        }
                        // NOTE: no member would open a stream; the caller
                        // decides whether to try again (`after` is kept).
                        Err(e) => return Err(e),
                    }
                }
            };
            let r = w.next_message().await;
            // IMPORTANT: also when the stream failed before any event: it
            // began at a revision (or a keepalive moved it), and a new one
            // "from now" would skip what came in between.
            self.after = w.last_revision().or(self.after);
            match r {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => self.watch = None,
                Err(e) => {
                    self.watch = None;
                    if !resumable(&e) {
                        return Err(e);
                    }
                    self.interrupted(&e);
                }
            }
        }
    }

    fn interrupted(&mut self, e: &Error) {
        if let Some(f) = &mut self.on_interrupt {
            f(e);
        }
    }

    /// The last whole revision seen (or the one the first stream began
    /// at): where the next stream resumes.
    pub fn last_revision(&self) -> Option<u64> {
        self.after
    }

    /// The member the current stream comes from, while one is open.
    pub fn endpoint(&self) -> Option<&str> {
        self.watch.as_ref().map(Watch::endpoint)
    }
}

/// Whether another stream may get past `e`: not when the server refused
/// the watch itself (compacted history, a token, a bad request), nor for
/// a mistake on this side.
fn resumable(e: &Error) -> bool {
    match e {
        Error::Api { code, .. } => matches!(
            code,
            ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::UnknownOutcome | ErrorCode::Other(_)
        ),
        Error::Unreachable(_) | Error::UnknownOutcome(_) | Error::Protocol(_) | Error::Stalled { .. } => true,
        Error::InvalidKey(_) | Error::Endpoint(_) | Error::Config(_) => false,
    }
}

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::client::tests::read_request;
    use crate::Client;

    /// A member that answers one watch with a keepalive interval of 100
    /// ms, sends `first` and then nothing, holding the connection open as
    /// a frozen process's kernel does.
    async fn silent_watch_member(first: &'static str) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            read_request(&mut s).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-kv-revision: 5\r\n\
                        x-kv-keepalive-ms: 100\r\ntransfer-encoding: chunked\r\n\r\n";
            s.write_all(head.as_bytes()).await.expect("answer");
            s.write_all(format!("{:x}\r\n{first}\r\n", first.len()).as_bytes()).await.expect("first message");
            std::future::pending::<()>().await;
            drop(s);
        });
        (format!("http://{addr}"), server)
    }

    #[tokio::test]
    async fn a_watch_whose_member_goes_silent_fails_within_its_bound_and_moves_on() {
        let keepalive = "event: keepalive\nid: 9\ndata: {\"revision\":9}\n\n";
        let (url, server) = silent_watch_member(keepalive).await;
        let c = Client::new(&[url.clone(), "http://127.0.0.1:9".into()]).expect("client");
        let mut w = c.watch("app", Some(5)).await.expect("watch");
        assert_eq!(w.endpoint(), url);
        let first = w.next_message().await.expect("a keepalive");
        assert_eq!(first, Some(WatchMessage::Progress { revision: 9 }));
        assert_eq!(w.last_revision(), Some(9), "a keepalive is a resume point");
        // Three missed intervals are 300 ms; the deadline only keeps a
        // broken client from hanging the test.
        let r = tokio::time::timeout(Duration::from_secs(10), w.next()).await;
        server.abort();
        let err = r.expect("the watch of a silent member never gave up").expect_err("a silent stream fails");
        assert!(matches!(err, Error::Stalled { .. }), "{err:?}");
        assert_eq!(w.last_revision(), Some(9), "the resume point stays");
        assert_eq!(c.current_endpoint(), "http://127.0.0.1:9", "the next watch goes to another member");
    }

    /// A member that answers each watch with `body` (a revision of 5, then
    /// the stream ends) and records each request line.
    async fn member_sending(
        body: &'static str,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let lines: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let seen = lines.clone();
        let server = tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if s.read(&mut b).await.expect("read") == 0 {
                        break;
                    }
                    head.push(b[0]);
                }
                let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
                seen.lock().expect("lock").push(line);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-kv-revision: 5\r\n\
                     x-kv-keepalive-ms: 1000\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.expect("answer");
            }
        });
        (format!("http://{addr}"), lines, server)
    }

    #[tokio::test]
    async fn a_resuming_watch_goes_on_from_where_a_stream_began_on_the_next_member() {
        // The first member's stream ends before any event; the second has one.
        let (a, asked_a, sa) = member_sending("").await;
        let ev = "event: put\nid: 6\ndata: {\"type\":\"put\",\"key\":\"app/k\",\"revision\":6}\n\n";
        let (b, asked_b, sb) = member_sending(ev).await;
        let c = Client::new(&[a.clone(), b.clone()]).expect("client");
        let mut w = c.watch_from("app", None);
        let got = tokio::time::timeout(Duration::from_secs(10), w.next()).await;
        sa.abort();
        sb.abort();
        let got = got.expect("the watch never resumed").expect("an event");
        assert_eq!((got.key.as_str(), got.revision), ("app/k", 6));
        assert_eq!(w.last_revision(), Some(6));
        let (asked_a, asked_b) = (asked_a.lock().expect("lock").clone(), asked_b.lock().expect("lock").clone());
        assert_eq!(asked_a, ["GET /v1/watch/app HTTP/1.1"], "the first stream starts from now");
        assert_eq!(asked_b.first().map(String::as_str), Some("GET /v1/watch/app?rev=5 HTTP/1.1"), "{asked_b:?}");
    }

    #[tokio::test]
    async fn a_resuming_watch_returns_a_compacted_history_instead_of_retrying() {
        let compacted = "event: error\ndata: {\"error\":\"compacted\",\"message\":\"list again\"}\n\n";
        let (a, asked, server) = member_sending(compacted).await;
        let c = Client::new(&[a]).expect("client");
        let mut interrupted = 0;
        let mut w = c.watch_from("app", Some(2)).on_interrupt(|_| interrupted += 1);
        let r = tokio::time::timeout(Duration::from_secs(10), w.next()).await;
        server.abort();
        let err = r.expect("bounded").expect_err("compacted");
        assert!(err.is(&ErrorCode::Compacted), "{err:?}");
        assert_eq!(err.status(), Some(410));
        drop(w);
        assert_eq!((interrupted, asked.lock().expect("lock").len()), (0, 1));
    }
}
