//! Watch streams: server-sent events after a revision, resumable by id.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use kv_client::{header as kvh, Access, EntryInfo, ErrorCode, EventType, Grants, WatchEvent};

use super::error::{ApiError, ApiResult};
use super::parse::{parse_watch, WatchRequest};
use crate::auth::{Caller, Validity};
use crate::metrics::METRICS;
use crate::node::Node;
use crate::sm::ReadError;
use crate::types::{Prev, StoredEntry};

/// Events read from the history per step of a watch stream.
pub(crate) const WATCH_BATCH: usize = 512;
/// Keepalive interval on idle watch streams. A keepalive carries the
/// stream's revision, and clients give a stream up after a few intervals
/// without one (kv-client), so a frozen or cut-off member is left within
/// seconds.
pub(crate) const WATCH_KEEPALIVE: Duration = Duration::from_secs(2);

/// State of one watch stream.
pub(crate) struct WatchState {
    node: Arc<Node>,
    /// Pages of events shared with this node's other streams.
    pages: Arc<WatchPages>,
    prefix: String,
    /// Events carry the entry before them.
    prev: bool,
    /// Rights of a caller who may read only parts of the prefix.
    partial: Option<Grants>,
    /// The stream ends when the caller's credential stops holding.
    valid_while: Validity,
    cursor: u64,
    rx: tokio::sync::watch::Receiver<u64>,
    out: VecDeque<Bytes>,
    done: bool,
    /// When the stream last sent something: a keepalive is due a keepalive
    /// interval after it, however many changes to other prefixes came.
    last_sent: tokio::time::Instant,
    /// Counts the stream in `kv_watch_streams` while it lives.
    _open: OpenStream,
}

/// One open watch stream in `kv_watch_streams`, from its making to its drop.
pub(crate) struct OpenStream(());

impl OpenStream {
    fn new() -> OpenStream {
        METRICS.watch_streams.inc();
        OpenStream(())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        METRICS.watch_streams.dec();
    }
}

/// Pages of watch events kept for other streams (see [`WatchPages`]).
pub(crate) const KEPT_WATCH_PAGES: usize = 8;
/// A page holding more value bytes than this is not kept.
pub(crate) const MAX_KEPT_PAGE_BYTES: usize = 1 << 20;

/// One event of a [`WatchPage`], already encoded.
pub(crate) struct PageEvent {
    revision: u64,
    key: String,
    put: bool,
    /// The event as JSON, the `data:` of its SSE message.
    data: String,
    /// The event with the entry before it, for streams that asked
    /// (`prev=true`): made by the first of them.
    with_prev: std::sync::OnceLock<String>,
    /// The entry before the event, when there was one and it was kept.
    prev: Option<StoredEntry>,
}

impl PageEvent {
    /// The `data:` of the event's SSE message, with the entry before it or not.
    fn data(&self, prev: bool) -> &str {
        let Some(before) = self.prev.as_ref().filter(|_| prev) else { return &self.data };
        self.with_prev.get_or_init(|| {
            // NOTE: `prev` is the wire event's last field: spliced in, the
            // rest of the event is not encoded again.
            let info = EntryInfo::new(self.key.clone(), before.meta(), Some(&before.value));
            let prev = serde_json::to_string(&info).unwrap_or_default();
            let head = self.data.strip_suffix('}').unwrap_or(&self.data);
            format!("{head},\"prev\":{prev}}}")
        })
    }
}

/// The events of every key after a revision, encoded, and the last
/// revision scanned.
pub(crate) struct WatchPage {
    events: Vec<PageEvent>,
    scanned: u64,
}

/// Recent pages of watch events, shared by the watch streams of this node.
///
/// NOTE: streams that keep up all ask for the events after the same
/// revision at about the same time; one scan of the history and one JSON
/// encoding then serve a thousand of them, each filtering by its prefix
/// and rights. A kept page may be older than the history: its events are
/// still a whole-revision prefix of what follows the revision, and the
/// stream asks again from where the page ends. Empty pages are never kept,
/// so a stream always moves on.
#[derive(Default)]
pub(crate) struct WatchPages {
    pages: std::sync::Mutex<VecDeque<(u64, Arc<WatchPage>)>>,
}

impl WatchPages {
    /// The page after revision `after`, or `None` if that is compacted.
    fn after(&self, node: &Node, after: u64) -> Result<Option<Arc<WatchPage>>, ReadError> {
        if let Some(p) =
            self.pages.lock().ok().and_then(|p| p.iter().find(|(a, _)| *a == after).map(|(_, p)| p.clone()))
        {
            return Ok(Some(p));
        }
        let Some((events, scanned)) = node.state().events_after(after, "", WATCH_BATCH)? else { return Ok(None) };
        let mut bytes = 0;
        let events: Vec<PageEvent> = events
            .into_iter()
            .map(|(revision, ev)| {
                bytes += ev.entry.as_ref().map_or(0, |e| e.value.len());
                let wire = WatchEvent {
                    kind: if ev.entry.is_some() { EventType::Put } else { EventType::Delete },
                    key: ev.key.clone(),
                    revision,
                    entry: ev.entry.as_ref().map(|e| EntryInfo::new(ev.key.clone(), e.meta(), Some(&e.value))),
                    prev: None,
                };
                // NOTE: kept pages are bounded by the values they send to
                // every stream; previous entries, for the few that ask, are
                // not counted (at most as much again).
                let prev = match ev.prev {
                    Prev::Entry(e) => Some(e),
                    Prev::Absent | Prev::Unknown => None,
                };
                let data = serde_json::to_string(&wire).unwrap_or_default();
                let put = ev.entry.is_some();
                PageEvent { revision, key: ev.key, put, data, with_prev: Default::default(), prev }
            })
            .collect();
        let page = Arc::new(WatchPage { events, scanned });
        if !page.events.is_empty() && bytes <= MAX_KEPT_PAGE_BYTES {
            if let Ok(mut pages) = self.pages.lock() {
                pages.push_back((after, page.clone()));
                if pages.len() > KEPT_WATCH_PAGES {
                    pages.pop_front();
                }
            }
        }
        Ok(Some(page))
    }
}

pub(crate) fn sse(event: &str, id: Option<u64>, data: &str) -> Bytes {
    let id = id.map(|i| format!("id: {i}\n")).unwrap_or_default();
    Bytes::from(format!("event: {event}\n{id}data: {data}\n\n"))
}

impl WatchState {
    /// Fills `out` with the next messages; waits when there is nothing new.
    async fn fill(&mut self) {
        loop {
            // NOTE: a member without a leader, or removed, sends no more
            // changes: the stream ends so that its client moves elsewhere.
            if let Err(e) = self.node.check_watchable() {
                tracing::info!(reason = %e, prefix = %self.prefix, "ending a watch stream");
                self.out.push_back(ApiError::from(e).sse_event());
                self.done = true;
                return;
            }
            if !self.valid_while.holds(&self.node.tokens()) {
                let e = ApiError::new(ErrorCode::Unauthorized, "the token was revoked or has expired");
                self.out.push_back(e.sse_event());
                self.done = true;
                return;
            }
            let page = match self.pages.after(&self.node, self.cursor) {
                Ok(p) => p,
                // NOTE: a snapshot is loading; the install announces its
                // revision once done, and the stream goes on from there.
                Err(ReadError::Loading) => {
                    if self.wait_for_change().await {
                        continue;
                    }
                    return;
                }
                Err(e) => {
                    self.out.push_back(ApiError::new(ErrorCode::Internal, e.to_string()).sse_event());
                    self.done = true;
                    return;
                }
            };
            let Some(page) = page else {
                let e = ApiError::new(
                    ErrorCode::Compacted,
                    format!("revision {} is compacted; list again and watch from the list's revision", self.cursor),
                );
                self.out.push_back(e.sse_event());
                self.done = true;
                return;
            };
            self.cursor = self.cursor.max(page.scanned);
            // NOTE: filtered before ids are placed, so the last visible
            // event of a revision still carries the resume id.
            let events: Vec<&PageEvent> = page
                .events
                .iter()
                .filter(|e| kv_client::key_in_prefix(&e.key, &self.prefix))
                .filter(|e| self.partial.as_ref().is_none_or(|g| g.can_read(&e.key)))
                .collect();
            let n = events.len();
            for (i, ev) in events.iter().enumerate() {
                let last_of_rev = i + 1 == n || events[i + 1].revision != ev.revision;
                let name = if ev.put { "put" } else { "delete" };
                self.out.push_back(sse(name, last_of_rev.then_some(ev.revision), ev.data(self.prev)));
            }
            METRICS.watch_events.inc_by(n as u64);
            if !self.out.is_empty() {
                self.last_sent = tokio::time::Instant::now();
                return;
            }
            if *self.rx.borrow_and_update() > self.cursor {
                // Still behind: a keepalive that is due goes out between
                // pages, or a stream that never catches up sends nothing.
                if tokio::time::Instant::now() >= self.last_sent + WATCH_KEEPALIVE {
                    self.keepalive();
                    return;
                }
                continue;
            }
            if !self.wait_for_change().await {
                return;
            }
        }
    }

    /// Waits for a new revision, at most a keepalive interval: whether one
    /// came. Otherwise `out` holds a keepalive, or the stream is done (the
    /// node is shutting down).
    async fn wait_for_change(&mut self) -> bool {
        // IMPORTANT: the keepalive is due a keepalive interval after the
        // last thing sent, not after the last change: a stream of a quiet
        // prefix in a busy cluster wakes for every change elsewhere, and
        // would otherwise send nothing until its client gives it up.
        let due = self.last_sent + WATCH_KEEPALIVE;
        if tokio::time::Instant::now() < due {
            match tokio::time::timeout_at(due, self.rx.changed()).await {
                Ok(Ok(())) => return true,
                Ok(Err(_)) => {
                    self.done = true;
                    return false;
                }
                Err(_) => {}
            }
        }
        self.keepalive();
        false
    }

    /// Queues a keepalive carrying the cursor.
    fn keepalive(&mut self) {
        // IMPORTANT: every event of this prefix up to the cursor is already
        // out (a keepalive follows only an empty `out`), so its revision is
        // a resume point, and carries the SSE id.
        let body = serde_json::json!({ "revision": self.cursor });
        self.out.push_back(sse("keepalive", Some(self.cursor), &body.to_string()));
        self.last_sent = tokio::time::Instant::now();
    }
}

/// GET /v1/watch/{prefix}?rev=N — events after revision N as server-sent events.
pub(crate) async fn watch(
    State(node): State<Arc<Node>>,
    Extension(pages): Extension<Arc<WatchPages>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<HttpResponse> {
    let WatchRequest { prefix, from, prev } = parse_watch(&uri, &headers)?;
    let partial = (caller.need_some_read(&prefix)? == Access::Partial).then(|| caller.grants.clone());
    node.check_watchable()?;
    let rx = node.state().subscribe();
    let current = *rx.borrow();
    let cursor = from.unwrap_or(current);
    let compact = node.state().compact_revision().map_err(ApiError::internal)?;
    if cursor < compact {
        return Err(ApiError::new(ErrorCode::Compacted,
            format!("revision {cursor} is compacted (history starts after {compact}); list again and watch from the list's revision"),
        ));
    }
    let valid_while = caller.valid_while.clone();
    let state = WatchState {
        node,
        pages,
        prefix,
        prev,
        partial,
        valid_while,
        cursor,
        rx,
        out: VecDeque::new(),
        done: false,
        last_sent: tokio::time::Instant::now(),
        _open: OpenStream::new(),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(b) = st.out.pop_front() {
                return Some((Ok::<Bytes, std::io::Error>(b), st));
            }
            if st.done {
                return None;
            }
            st.fill().await;
        }
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(kvh::REVISION, current.into());
    h.insert(kvh::KEEPALIVE_MS, (WATCH_KEEPALIVE.as_millis() as u64).into());
    Ok(resp)
}
