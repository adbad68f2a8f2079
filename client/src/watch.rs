//! A watch stream: server-sent events parsed into changes and keepalives,
//! given up when its member goes silent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::error::{error_chain, Error};
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

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n")
}

#[cfg(test)]
mod tests {
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
}
