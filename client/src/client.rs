//! The async HTTP client.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};

use crate::auth::{NewToken, TokenInfo, TokenSpec, WhoAmI};
use crate::error::{answered_ok, api_error, body_error, check, error_chain, Error, ErrorCode};
use crate::key::{normalize_prefix, validate_key};
use crate::lean::{self, Call, Fail, Whole};
use crate::pages::Cursor;
use crate::path::encode_key;
use crate::types::{
    header, AddMember, Attrs, ClusterInfo, HistoryResponse, Kind, ListResponse, Meta, TxnRequest, TxnResponse,
};
use crate::watch::{Resuming, Watch};

/// A value read with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// Entry metadata.
    pub meta: Meta,
    /// The value bytes.
    pub value: Bytes,
    /// The store revision the read reflects.
    pub revision: u64,
}

/// Options of a put.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Attributes to set.
    pub attrs: Attrs,
    /// Only write when the key's mod_revision is this (`If-Match`).
    pub if_match: Option<u64>,
    /// Only write when the key does not exist (`If-None-Match: *`).
    pub create_only: bool,
    /// The request id to send (`X-Kv-Request-Id`); a fresh one when `None`.
    /// Resending a write whose outcome is unknown (a timeout, a 504) with
    /// the id it was first sent with is answered with its first outcome,
    /// never applied twice.
    pub request_id: Option<String>,
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// The whole subtree instead of direct children.
    pub recursive: bool,
    /// Include values.
    pub values: bool,
    /// At most this many entries.
    pub limit: Option<usize>,
    /// Start after this key (recursive) or child name.
    pub after: Option<String>,
    /// Let the member answer from its own state.
    pub stale: bool,
    /// The listing as it was at this past revision (within the history;
    /// [`ErrorCode::Compacted`] beyond it).
    pub rev: Option<u64>,
}

/// How a client authenticates itself and checks the server.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Bearer token (or JWT) sent with every request.
    pub token: Option<String>,
    /// PEM CA certificates that sign the servers' certificates (`https://`
    /// endpoints). Without it the system's CA bundle is used.
    pub ca_pem: Option<Vec<u8>>,
    /// How long one member gets to answer one request (connect, answer
    /// and body) before the client gives up on it and tries the next
    /// endpoint; [`DEFAULT_REQUEST_TIMEOUT`] when `None`. A call waits at
    /// most this long per endpoint; a membership change, which kvd itself
    /// lets run longer, gets more (see [`Client::add_member`]).
    pub request_timeout: Option<Duration>,
}

/// How long one member gets to answer one request by default: longer than a
/// member's own bound on a request (5 s by default), so that a member that
/// is up but cannot serve says why (503 and the next endpoint) before the
/// client gives up on it.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// How long kvd lets a new member catch up before it gives up on adding it
/// (its `JOIN_TIMEOUT`); a client waits that long more for `member add`.
const JOIN_WAIT: Duration = Duration::from_secs(300);
/// How long making a connection may take (within the request timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Where Debian keeps the system's CA bundle.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// How long a member keeps a kept-alive connection idle before it closes it.
/// A client must drop its idle connections well before: one reused just as
/// the member closes it fails.
pub const MEMBER_IDLE_CLOSE: Duration = Duration::from_secs(10);
/// How long an idle connection is kept for the next request.
const POOL_IDLE: Duration = Duration::from_millis(MEMBER_IDLE_CLOSE.as_millis() as u64 * 2 / 5);
/// How long a member may take to answer a watch request before the next
/// endpoint is tried.
const WATCH_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// Keepalive intervals a watch stream may miss before it is given up.
const WATCH_MISSED_KEEPALIVES: u32 = 3;
/// Keepalive interval assumed of a server that does not announce one
/// (older kvd sent a comment every 15 s).
const WATCH_LEGACY_KEEPALIVE: Duration = Duration::from_secs(15);

/// A client of one cluster, given one or more member URLs. Requests go to the
/// member that last answered and fail over to the others when it cannot be
/// reached or gives no answer within the request timeout; writes carry a
/// request id so a retried write applies once.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    endpoints: Vec<String>,
    /// Index of the endpoint tried first; shared with this client's
    /// watches, which move it past a member whose stream failed.
    current: Arc<AtomicUsize>,
    id_prefix: String,
    id_counter: AtomicU64,
    opts: ClientOptions,
    timeout: Duration,
    /// Kept-alive connections of `http://` requests read whole (`None`:
    /// behind an HTTP proxy, everything goes through reqwest).
    lean: Option<lean::Pool>,
    /// Headers every request carries (the token).
    defaults: reqwest::header::HeaderMap,
}

/// Whether the request timeout bounds an answer's body too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Read whole before the call returns: bounded.
    Bounded,
    /// Streamed by the caller (watch, snapshot): only the head is bounded.
    Streamed,
}

/// A request as the walk over the members sends it.
enum Attempt<'a, F> {
    /// Built by reqwest for each endpoint (`build` adds what the request
    /// carries).
    Built { path_and_query: &'a str, build: &'a F, body: Body },
    /// Written by this client where the endpoint is `http://`, else built
    /// by reqwest from it.
    Call(&'a Call<'a>),
}

/// What one attempt on one member gave.
enum Sent<R> {
    /// An HTTP answer (any status).
    Answer(R),
    /// The member took the request but gave no answer in time.
    NoAnswer,
    /// Not reached, or the connection broke.
    Failed(Fail),
}

impl<R> Sent<R> {
    fn map<T>(self, f: impl FnOnce(R) -> T) -> Sent<T> {
        match self {
            Sent::Answer(r) => Sent::Answer(f(r)),
            Sent::NoAnswer => Sent::NoAnswer,
            Sent::Failed(e) => Sent::Failed(e),
        }
    }
}

impl Client {
    /// Makes a client for the given member URLs (`http://127.0.0.1:7379`).
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Result<Client, Error> {
        Client::with_options(endpoints, &ClientOptions::default())
    }

    /// Makes a client with a token and/or a CA for `https://` endpoints.
    pub fn with_options<S: AsRef<str>>(endpoints: &[S], opts: &ClientOptions) -> Result<Client, Error> {
        let mut eps = Vec::new();
        for e in endpoints {
            let e = e.as_ref().trim().trim_end_matches('/');
            let url = reqwest::Url::parse(e).map_err(|_| Error::Endpoint(e.to_owned()))?;
            if url.scheme() != "http" && url.scheme() != "https" || url.host().is_none() {
                return Err(Error::Endpoint(e.to_owned()));
            }
            // (kvd takes a token, never a password; and a password in the
            // URL would be in every error about the member)
            if !url.username().is_empty() || url.password().is_some() {
                return Err(Error::Config(format!(
                    "the endpoint {}://{}:… names a user: give a token instead",
                    url.scheme(),
                    url.host_str().unwrap_or_default()
                )));
            }
            eps.push(format!("{}://{}", url.scheme(), url.authority()));
        }
        if eps.is_empty() {
            return Err(Error::Endpoint(String::new()));
        }
        let timeout = opts.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        if timeout.is_zero() {
            return Err(Error::Config("the request timeout must be more than 0".into()));
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .pool_idle_timeout(POOL_IDLE)
            .use_rustls_tls();
        let mut defaults = reqwest::header::HeaderMap::new();
        if let Some(token) = &opts.token {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .map_err(|_| Error::Config("the token holds characters a header cannot carry".into()))?;
            v.set_sensitive(true);
            defaults.insert(reqwest::header::AUTHORIZATION, v);
            b = b.default_headers(defaults.clone());
        }
        if eps.iter().any(|e| e.starts_with("https://")) {
            let pem = match &opts.ca_pem {
                Some(p) => p.clone(),
                None => std::fs::read(SYSTEM_CA_BUNDLE).unwrap_or_default(),
            };
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Config(format!("the CA file holds no usable PEM certificate: {e}")))?;
            if certs.is_empty() {
                return Err(Error::Config("no CA certificate to check the server with; pass a CA file".into()));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b.build().map_err(|e| Error::Config(error_chain(&e)))?;
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| Error::Protocol(format!("no randomness: {e}")))?;
        Ok(Client {
            http,
            endpoints: eps,
            current: Arc::new(AtomicUsize::new(0)),
            id_prefix: seed.iter().map(|b| format!("{b:02x}")).collect(),
            id_counter: AtomicU64::new(0),
            opts: opts.clone(),
            timeout,
            lean: (!lean::proxied()).then(lean::Pool::default),
            defaults,
        })
    }

    /// A client of other member URLs with this one's token and CA.
    pub fn with_endpoints<S: AsRef<str>>(&self, endpoints: &[S]) -> Result<Client, Error> {
        Client::with_options(endpoints, &self.opts)
    }

    /// A client of the same members, token and CA, with connections of
    /// its own, that shares this one's choice of member: a watch of either
    /// that fails moves both past its member. A connection belongs to the
    /// runtime that made it, so a runtime of its own needs a client of its
    /// own.
    pub fn with_own_connections(&self) -> Result<Client, Error> {
        let mut c = Client::with_options(&self.endpoints, &self.opts)?;
        c.current = self.current.clone();
        Ok(c)
    }

    /// The member URLs this client uses.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The member URL the next request goes to first.
    pub fn current_endpoint(&self) -> &str {
        &self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()]
    }

    /// A fresh request id for a write.
    pub fn new_request_id(&self) -> String {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.id_prefix)
    }

    /// After a write a follower forwarded (the server names the leader only
    /// then): go on with the leader, if it is one of this client's
    /// endpoints (a client never strays from its list).
    fn follow_leader(&self, headers: &HeaderMap) {
        let Some(url) = headers.get(header::LEADER).and_then(|v| v.to_str().ok()) else { return };
        let Ok(url) = reqwest::Url::parse(url) else { return };
        let url = format!("{}://{}", url.scheme(), url.authority());
        if let Some(i) = self.endpoints.iter().position(|e| *e == url) {
            self.current.store(i, Ordering::Relaxed);
        }
    }

    /// Sends a request built by `build` for a path, trying each endpoint in
    /// turn (starting with the one that last answered) while they cannot be
    /// reached, give no answer within the request timeout, or answer 503 (no
    /// leader, removed member). A read, or a write with a request id, whose
    /// connection breaks after it was made is sent once more on a new one
    /// before the next endpoint. Any other HTTP answer, error statuses
    /// included, is returned; one that names the leader moves the next
    /// requests there.
    ///
    /// The request timeout bounds each endpoint's turn, the answer's body
    /// included: read a large body with [`Client::send_stream`].
    pub async fn send<F>(&self, method: Method, path_and_query: &str, build: F) -> Result<Response, Error>
    where
        F: Fn(RequestBuilder) -> RequestBuilder,
    {
        self.send_within(method, path_and_query, build, self.timeout, Body::Bounded).await
    }

    /// [`Client::send`] for an answer that streams (a watch, a snapshot): the
    /// request timeout bounds each endpoint's turn until the answer's head
    /// arrives; reading the body is the caller's to bound.
    pub async fn send_stream<F>(&self, method: Method, path_and_query: &str, build: F) -> Result<Response, Error>
    where
        F: Fn(RequestBuilder) -> RequestBuilder,
    {
        self.send_within(method, path_and_query, build, self.timeout, Body::Streamed).await
    }

    /// How long one member gets to answer one request.
    pub fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// How long the lean path waits for a connection to a member.
    fn connect_timeout(&self) -> Duration {
        CONNECT_TIMEOUT.min(self.timeout)
    }

    async fn send_within<F>(
        &self,
        method: Method,
        path_and_query: &str,
        build: F,
        turn: Duration,
        body: Body,
    ) -> Result<Response, Error>
    where
        F: Fn(RequestBuilder) -> RequestBuilder,
    {
        let built = Attempt::Built { path_and_query, build: &build, body };
        match self.over_members(&method, turn, &built).await? {
            Reply::Full(r) => Ok(r),
            Reply::Whole(w) => Ok(w.into_response()),
        }
    }

    /// [`Client::send`] of a request whose answer is read whole, without
    /// reqwest's request (and URL) on the way where the endpoint is
    /// `http://`: the calls the hot paths make (get, put, delete, txn).
    async fn call(&self, call: &Call<'_>) -> Result<Reply, Error> {
        let attempt: Attempt<'_, fn(RequestBuilder) -> RequestBuilder> = Attempt::Call(call);
        self.over_members(call.method, self.timeout, &attempt).await
    }

    /// Tries each endpoint in turn with `attempt` (see [`Client::send`]).
    async fn over_members<F>(&self, method: &Method, turn: Duration, attempt: &Attempt<'_, F>) -> Result<Reply, Error>
    where
        F: Fn(RequestBuilder) -> RequestBuilder,
    {
        let start = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        // Whether a member took this write and gave no answer: it may still
        // apply it.
        let mut maybe_written = false;
        for i in 0..self.endpoints.len() {
            let idx = (start + i) % self.endpoints.len();
            let endpoint = &self.endpoints[idx];
            // IMPORTANT: one deadline per endpoint, the repeat below
            // included, so a call waits at most `turn` per endpoint.
            let deadline = tokio::time::Instant::now() + turn;
            // A connection that broke after it was made (the member closed a
            // kept-alive one as it was reused, or restarted) is tried once
            // more, on a new connection, if the request may be sent twice.
            let (mut sent, repeatable) = self.attempt(method, attempt, endpoint, deadline).await;
            if repeatable && matches!(&sent, Sent::Failed(f) if f.broke) {
                maybe_written |= *method != Method::GET;
                sent = self.attempt(method, attempt, endpoint, deadline).await.0;
            }
            match sent {
                // IMPORTANT: a 503 says nothing was written, but only by the
                // member that sent it; one that took the write unanswered
                // may still apply it, so the outcome is unknown.
                Sent::Answer(resp) if resp.refused() && maybe_written && i + 1 == self.endpoints.len() => {
                    failures.push(format!("{endpoint}: HTTP 503"));
                    return Err(Error::Unreachable(failures.join("; ")));
                }
                // NOTE: writes carry a request id, so trying another member
                // (or the same one again) is safe: a repeat is answered, not
                // applied twice.
                Sent::Answer(resp) if resp.refused() && i + 1 < self.endpoints.len() => {
                    failures.push(format!("{endpoint}: HTTP 503"));
                }
                Sent::Answer(resp) => {
                    self.current.store(idx, Ordering::Relaxed);
                    self.follow_leader(resp.headers());
                    return Ok(resp);
                }
                // IMPORTANT: a request without a request id that a member
                // took may still take effect there; sent elsewhere it could
                // act twice.
                Sent::NoAnswer if !repeatable => {
                    return Err(Error::UnknownOutcome(format!(
                        "{endpoint}: no answer within {} s; the change may still take effect: list the members \
                         before trying it again",
                        turn.as_secs_f64()
                    )));
                }
                Sent::NoAnswer => {
                    maybe_written |= *method != Method::GET;
                    failures.push(format!("{endpoint}: no answer within {} s", turn.as_secs_f64()));
                }
                // IMPORTANT: the same for one whose connection broke after it
                // went out: the member may have taken it.
                Sent::Failed(f) if !repeatable && f.broke => {
                    return Err(Error::UnknownOutcome(format!(
                        "{endpoint}: {}; the change may still take effect: list the members before trying it again",
                        f.text
                    )));
                }
                Sent::Failed(f) => {
                    let why = f.text;
                    failures.push(format!("{endpoint}: {why}{}", tls_hint(&why)));
                }
            }
        }
        Err(Error::Unreachable(failures.join("; ")))
    }

    /// One attempt on `endpoint`, waiting until `deadline` at most; also
    /// whether it may be sent twice.
    async fn attempt<F>(
        &self,
        method: &Method,
        attempt: &Attempt<'_, F>,
        endpoint: &str,
        deadline: tokio::time::Instant,
    ) -> (Sent<Reply>, bool)
    where
        F: Fn(RequestBuilder) -> RequestBuilder,
    {
        match attempt {
            Attempt::Built { path_and_query, build, body } => {
                let url = format!("{endpoint}{path_and_query}");
                let (sent, repeatable) = self.send_once(method, &url, *build, deadline, *body).await;
                (sent.map(Reply::Full), repeatable)
            }
            Attempt::Call(call) => self.call_once(endpoint, call, deadline).await,
        }
    }

    /// Sends `call` to `endpoint`, waiting until `deadline` at most: on the
    /// lean path for `http://`, else through reqwest (its body is read by
    /// the caller, bounded by the same deadline); also whether it may be
    /// sent twice.
    async fn call_once(&self, endpoint: &str, call: &Call<'_>, deadline: tokio::time::Instant) -> (Sent<Reply>, bool) {
        let repeatable = repeatable(call.method, call.headers);
        if let (Some(pool), Some(authority)) = (&self.lean, endpoint.strip_prefix("http://")) {
            let exchange = pool.send(authority, call, &self.defaults, repeatable, self.connect_timeout(), POOL_IDLE);
            return (lean_within(deadline, exchange).await.map(Reply::Whole), repeatable);
        }
        let url = format!("{endpoint}{}", call.path);
        let build = |r: RequestBuilder| r.headers(call.headers.clone()).body(Bytes::copy_from_slice(call.body));
        let (sent, repeatable) = self.send_once(call.method, &url, &build, deadline, Body::Bounded).await;
        (sent.map(Reply::Full), repeatable)
    }

    /// Sends one request to `url`, waiting until `deadline` at most; also
    /// whether it may be sent twice: only a read, or a write with a request
    /// id.
    async fn send_once<F>(
        &self,
        method: &Method,
        url: &str,
        build: &F,
        deadline: tokio::time::Instant,
        body: Body,
    ) -> (Sent<Response>, bool)
    where
        F: Fn(RequestBuilder) -> RequestBuilder,
    {
        let mut r = match build(self.http.request(method.clone(), url)).build() {
            Ok(r) => r,
            Err(e) => return (Sent::Failed(e.into()), false),
        };
        let repeatable = repeatable(r.method(), r.headers());
        if let (Body::Bounded, Some(pool), true) = (body, &self.lean, lean::eligible(&r)) {
            let exchange = pool.send_request(&r, &self.defaults, repeatable, self.connect_timeout(), POOL_IDLE);
            return (lean_within(deadline, exchange).await, repeatable);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if body == Body::Bounded {
            // reqwest's own timeout runs on through the body.
            *r.timeout_mut() = Some(left);
        }
        let sent = match tokio::time::timeout_at(deadline, self.http.execute(r)).await {
            Err(_) => Sent::NoAnswer,
            Ok(Ok(resp)) => Sent::Answer(resp),
            // A connect timeout is a member not reached: nothing was sent.
            Ok(Err(e)) if e.is_timeout() && !e.is_connect() => Sent::NoAnswer,
            Ok(Err(e)) => Sent::Failed(e.into()),
        };
        (sent, repeatable)
    }

    /// Reads a key (linearizable). `Ok(None)` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Value>, Error> {
        self.get_opts(key, false).await
    }

    /// Reads a key; with `stale` the member answers from its own state.
    pub async fn get_opts(&self, key: &str, stale: bool) -> Result<Option<Value>, Error> {
        self.get_query(key, if stale { "?stale=true" } else { "" }).await
    }

    /// Reads a key as it was at a past revision (within the history;
    /// [`ErrorCode::Compacted`] beyond it). The value's `revision` is `rev`.
    pub async fn get_at(&self, key: &str, rev: u64) -> Result<Option<Value>, Error> {
        let v = self.get_query(key, &format!("?rev={rev}")).await?;
        match v {
            Some(v) if v.revision != rev => Err(past_unsupported()),
            v => Ok(v),
        }
    }

    /// The versions of a key the history holds, newest first (at most
    /// `limit`, or the server's default).
    pub async fn history(&self, key: &str, limit: Option<usize>) -> Result<HistoryResponse, Error> {
        validate_key(key)?;
        let q = limit.map(|l| format!("?limit={l}")).unwrap_or_default();
        let resp = self.send(Method::GET, &format!("/v1/history/{}{q}", encode_key(key)), |r| r).await?;
        json(check(resp).await?).await
    }

    async fn get_query(&self, key: &str, q: &str) -> Result<Option<Value>, Error> {
        validate_key(key)?;
        let path = format!("/v1/kv/{}{q}", encode_key(key));
        let call = Call { method: &Method::GET, path: &path, headers: &HeaderMap::new(), body: &[] };
        let w = match self.call(&call).await?.checked().await {
            Err(e) if e.is(&ErrorCode::NotFound) => return Ok(None),
            r => r?,
        };
        let meta = meta_from_headers(&w.headers)?;
        let revision = header_u64(&w.headers, header::REVISION)?;
        Ok(Some(Value { meta, value: w.body, revision }))
    }

    /// Writes a key.
    pub async fn put(&self, key: &str, value: impl Into<Bytes>, opts: &PutOptions) -> Result<TxnResponse, Error> {
        validate_key(key)?;
        let value: Bytes = value.into();
        let mut h = HeaderMap::with_capacity(8);
        h.insert(
            header::REQUEST_ID,
            match &opts.request_id {
                Some(id) => id_header(id)?,
                None => id_header(&self.new_request_id())?,
            },
        );
        if let Some(rev) = opts.if_match {
            h.insert(reqwest::header::IF_MATCH, number(format!("\"{rev}\"")));
        }
        if opts.create_only {
            h.insert(reqwest::header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        }
        let a = &opts.attrs;
        if let Some(k) = a.kind {
            h.insert(header::KIND, HeaderValue::from_static(k.as_str()));
        }
        if let Some(m) = a.mode {
            h.insert(header::MODE, number(format!("{m:o}")));
        }
        if let Some(u) = a.uid {
            h.insert(header::UID, HeaderValue::from(u));
        }
        if let Some(g) = a.gid {
            h.insert(header::GID, HeaderValue::from(g));
        }
        if let Some(t) = a.mtime_ns {
            h.insert(header::MTIME, HeaderValue::from(t));
        }
        if let Some(t) = a.atime_ns {
            h.insert(header::ATIME, HeaderValue::from(t));
        }
        let path = format!("/v1/kv/{}", encode_key(key));
        self.call(&Call { method: &Method::PUT, path: &path, headers: &h, body: &value }).await?.json().await
    }

    /// Deletes a key, or with `recursive` the key and everything below it.
    pub async fn delete(&self, key: &str, recursive: bool, if_match: Option<u64>) -> Result<TxnResponse, Error> {
        let key = if recursive { normalize_prefix(key)? } else { validate_key(key).map(|_| key)? };
        let mut h = HeaderMap::with_capacity(2);
        h.insert(header::REQUEST_ID, id_header(&self.new_request_id())?);
        if let Some(rev) = if_match {
            h.insert(reqwest::header::IF_MATCH, number(format!("\"{rev}\"")));
        }
        let q = if recursive { "?recursive=true" } else { "" };
        let path = format!("/v1/kv/{}{q}", encode_key(key));
        self.call(&Call { method: &Method::DELETE, path: &path, headers: &h, body: &[] }).await?.json().await
    }

    /// Lists entries below a prefix (`""` for the whole keyspace).
    pub async fn list(&self, prefix: &str, opts: &ListOptions) -> Result<ListResponse, Error> {
        let prefix = normalize_prefix(prefix)?;
        let mut q = vec![];
        if opts.recursive {
            q.push("recursive=true".to_owned());
        }
        if opts.values {
            q.push("values=true".to_owned());
        }
        if opts.stale {
            q.push("stale=true".to_owned());
        }
        if let Some(l) = opts.limit {
            q.push(format!("limit={l}"));
        }
        if let Some(a) = &opts.after {
            q.push(format!("after={}", encode_key(a).replace('/', "%2F")));
        }
        if let Some(r) = opts.rev {
            q.push(format!("rev={r}"));
        }
        let qs = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
        let resp = self.send(Method::GET, &format!("/v1/list/{}{qs}", encode_key(prefix)), |r| r).await?;
        let l: ListResponse = json(check(resp).await?).await?;
        match opts.rev {
            Some(rev) if l.revision != rev => Err(past_unsupported()),
            _ => Ok(l),
        }
    }

    /// Lists every entry below a prefix, page by page (pages of
    /// `opts.limit` entries, or the server's default) from `opts.after`.
    /// The answer's `revision` is the lowest of its pages' (the first
    /// page's): watching from it replays every change made while the pages
    /// were read.
    pub async fn list_all(&self, prefix: &str, opts: &ListOptions) -> Result<ListResponse, Error> {
        let mut opts = opts.clone();
        let mut cursor = Cursor::new(opts.after.take());
        let mut all = ListResponse { revision: 0, entries: Vec::new(), more: false, next_after: None };
        let mut revision = None::<u64>;
        while cursor.pending() {
            opts.after = cursor.after().map(str::to_owned);
            let page = self.list(prefix, &opts).await?;
            cursor.advance(&page);
            revision = Some(revision.map_or(page.revision, |r| r.min(page.revision)));
            all.entries.extend(page.entries);
        }
        all.revision = revision.unwrap_or(0);
        Ok(all)
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: &TxnRequest) -> Result<TxnResponse, Error> {
        let body = serde_json::to_vec(txn).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut h = HeaderMap::with_capacity(2);
        h.insert(header::REQUEST_ID, id_header(&self.new_request_id())?);
        h.insert(reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.call(&Call { method: &Method::POST, path: "/v1/txn", headers: &h, body: &body }).await?.json().await
    }

    /// Watches a prefix for changes after revision `after` (from now when
    /// `None`).
    ///
    /// Each endpoint in turn (from the one that last answered) gets a
    /// bounded wait for its answer, and one that refuses (503: no leader,
    /// removed) is passed over. The stream then proves it is alive: it
    /// fails with [`Error::Stalled`] when its member sends nothing for a
    /// few keepalive intervals, and a stream that fails or ends moves this
    /// client's next requests past its member.
    pub async fn watch(&self, prefix: &str, after: Option<u64>) -> Result<Watch, Error> {
        self.watch_opts(prefix, after, false).await
    }

    /// [`Client::watch`]; with `prev`, each event also carries the entry
    /// before it ([`crate::WatchEvent::prev`]).
    pub async fn watch_opts(&self, prefix: &str, after: Option<u64>, prev: bool) -> Result<Watch, Error> {
        let prefix = normalize_prefix(prefix)?;
        let mut q: Vec<String> = after.map(|r| format!("rev={r}")).into_iter().collect();
        if prev {
            q.push("prev=true".to_owned());
        }
        let q = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
        let path = format!("/v1/watch/{}{q}", encode_key(prefix));
        let start = self.current.load(Ordering::Relaxed);
        let mut last_err = String::new();
        for i in 0..self.endpoints.len() {
            let idx = (start + i) % self.endpoints.len();
            let url = format!("{}{path}", self.endpoints[idx]);
            // NOTE: a frozen member accepts connections (the kernel does)
            // and never answers: only a bound moves on from it.
            // The client's own bound when it is shorter (`--command-timeout`).
            let bound = WATCH_ANSWER_TIMEOUT.min(self.request_timeout());
            let deadline = tokio::time::Instant::now() + bound;
            let resp = match self.send_once(&Method::GET, &url, &|r| r, deadline, Body::Streamed).await.0 {
                Sent::Answer(resp) => resp,
                Sent::Failed(f) => {
                    let why = f.text;
                    last_err = format!("{}: {why}{}", self.endpoints[idx], tls_hint(&why));
                    continue;
                }
                Sent::NoAnswer => {
                    last_err = format!("{}: no answer within {} s", self.endpoints[idx], bound.as_secs_f64());
                    continue;
                }
            };
            if refused(resp.status()) && i + 1 < self.endpoints.len() {
                last_err = format!("{}: HTTP 503", self.endpoints[idx]);
                continue;
            }
            let resp = check(resp).await?;
            self.current.store(idx, Ordering::Relaxed);
            let keepalive = resp
                .headers()
                .get(header::KEEPALIVE_MS)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis);
            // A watch "from now" resumes from the revision the member
            // started it at, should it fail before any event.
            let from = after.or_else(|| {
                resp.headers().get(header::REVISION).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
            });
            return Ok(Watch::new(
                Box::pin(resp.bytes_stream()),
                from,
                keepalive,
                keepalive.unwrap_or(WATCH_LEGACY_KEEPALIVE) * WATCH_MISSED_KEEPALIVES,
                (self.endpoints[idx].clone(), idx, self.endpoints.len()),
                self.current.clone(),
            ));
        }
        Err(Error::Unreachable(last_err))
    }

    /// Watches a prefix for changes after revision `after` (from now when
    /// `None`) across streams: when one fails or ends, the next resumes
    /// after the last whole revision seen (or the revision the first began
    /// at, should it fail before any event), from the endpoint after the
    /// failing one ([`Client::watch`] moves past it), after a short pause.
    ///
    /// Errors another stream would meet again are returned, not retried:
    /// a compacted start revision ([`ErrorCode::Compacted`]: list again),
    /// a refused token, a bad request. So is a stream that cannot be opened
    /// on any member; calling `next` again tries once more from the same
    /// revision.
    pub fn watch_from(&self, prefix: &str, after: Option<u64>) -> Resuming<'_> {
        Resuming::new(self, prefix, after)
    }

    /// The members of the cluster with their status (`GET /v1/cluster`).
    pub async fn cluster(&self) -> Result<ClusterInfo, Error> {
        let resp = self.send(Method::GET, "/v1/cluster", |r| r).await?;
        json(check(resp).await?).await
    }

    /// How long a member gets to answer a membership change: kvd itself
    /// lets one run for several of its own request timeouts (a removal of
    /// the leader moves leadership first, then changes the membership).
    fn change_timeout(&self) -> Duration {
        self.timeout * 10
    }

    /// Sends a JSON membership request and returns the cluster after it. It
    /// carries no request id (kvd does not deduplicate membership changes),
    /// so it is never sent again once a member took it and gave no answer in
    /// time.
    async fn membership(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        turn: Duration,
    ) -> Result<ClusterInfo, Error> {
        let build = |r: RequestBuilder| match &body {
            Some(b) => r.header("content-type", "application/json").body(b.to_string()),
            None => r,
        };
        let resp = self.send_within(method, path, build, turn, Body::Bounded).await?;
        json(check(resp).await?).await
    }

    /// Adds a member; unless `req.learner`, waits until it caught up and
    /// promotes it. A member gets five minutes (kvd's own bound on the
    /// catch-up) more than other membership changes to answer; those get
    /// ten request timeouts.
    pub async fn add_member(&self, req: &AddMember) -> Result<ClusterInfo, Error> {
        let body = serde_json::to_value(req).map_err(|e| Error::Protocol(e.to_string()))?;
        self.membership(Method::POST, "/v1/cluster/members", Some(body), JOIN_WAIT + self.change_timeout()).await
    }

    /// Makes a learner a voter.
    pub async fn promote_member(&self, id: u64) -> Result<ClusterInfo, Error> {
        self.membership(Method::POST, &format!("/v1/cluster/members/{id}/promote"), None, self.change_timeout()).await
    }

    /// Removes a member (the leader too).
    pub async fn remove_member(&self, id: u64) -> Result<ClusterInfo, Error> {
        self.membership(Method::DELETE, &format!("/v1/cluster/members/{id}"), None, self.change_timeout()).await
    }

    /// Moves leadership to voter `id`.
    pub async fn transfer_leader(&self, id: u64) -> Result<ClusterInfo, Error> {
        let body = Some(serde_json::json!({ "id": id }));
        self.membership(Method::POST, "/v1/cluster/leader", body, self.change_timeout()).await
    }

    /// The answering member's own status (`GET /v1/status`), with the
    /// limits it holds requests to.
    pub async fn node_status(&self) -> Result<crate::types::NodeStatus, Error> {
        self.get_typed("/v1/status").await
    }

    /// Who the server takes this client for, and what it may do.
    pub async fn whoami(&self) -> Result<WhoAmI, Error> {
        self.get_typed("/v1/auth/whoami").await
    }

    /// Creates a token; the answer holds its secret, shown only here.
    pub async fn create_token(&self, spec: &TokenSpec) -> Result<NewToken, Error> {
        let body = serde_json::to_vec(spec).map_err(|e| Error::Protocol(e.to_string()))?;
        let id = self.new_request_id();
        let resp = self
            .send(Method::POST, "/v1/auth/tokens", |r| {
                r.header(header::REQUEST_ID, &id).header("content-type", "application/json").body(body.clone())
            })
            .await?;
        json(check(resp).await?).await
    }

    /// Every token (names and rights, never secrets).
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, Error> {
        self.get_typed("/v1/auth/tokens").await
    }

    /// Revokes a token by name, on every member at once.
    pub async fn revoke_token(&self, name: &str) -> Result<(), Error> {
        let id = self.new_request_id();
        let resp = self
            .send(Method::DELETE, &format!("/v1/auth/tokens/{}", encode_key(name)), |r| {
                r.header(header::REQUEST_ID, &id)
            })
            .await?;
        check(resp).await.map(|_| ())
    }

    async fn get_typed<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let resp = self.send(Method::GET, path, |r| r).await?;
        json(check(resp).await?).await
    }

    /// GETs a path and decodes its JSON answer (status, cluster, ...).
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, Error> {
        let resp = self.send(Method::GET, path, |r| r).await?;
        json(check(resp).await?).await
    }
}

/// A member answered a read at a past revision with another revision: it
/// predates reads at past revisions and ignored the request's `rev`.
fn past_unsupported() -> Error {
    Error::Protocol("the member does not read past revisions (a kvd older than this client?)".into())
}

/// An answer to a [`Call`]: read whole on the lean path, or coming through
/// reqwest.
enum Reply {
    Whole(Whole),
    Full(Response),
}

impl Reply {
    fn headers(&self) -> &HeaderMap {
        match self {
            Reply::Whole(w) => &w.headers,
            Reply::Full(r) => r.headers(),
        }
    }

    /// Whether the member refused to serve (`unavailable`: no leader, no
    /// quorum, removed), which says it wrote nothing and another member
    /// may serve.
    ///
    /// NOTE: told from the status alone, so the body stays for the caller.
    fn refused(&self) -> bool {
        let status = match self {
            Reply::Whole(w) => w.status,
            Reply::Full(r) => r.status(),
        };
        refused(status)
    }

    /// The answer read whole; an error status as [`Error::Api`].
    async fn checked(self) -> Result<Whole, Error> {
        let w = match self {
            Reply::Whole(w) => w,
            Reply::Full(r) => {
                let (status, headers) = (r.status(), r.headers().clone());
                let body = r.bytes().await.map_err(|e| body_error(&e));
                match body {
                    Ok(body) => Whole { status, headers, body },
                    // (an error answer whose body broke is still its error)
                    Err(_) if !answered_ok(status) => Whole { status, headers, body: Bytes::new() },
                    Err(e) => return Err(e),
                }
            }
        };
        if answered_ok(w.status) {
            Ok(w)
        } else {
            Err(api_error(w.status, &w.body))
        }
    }

    /// The answer's JSON, or the error it is.
    async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, Error> {
        let w = self.checked().await?;
        serde_json::from_slice(&w.body).map_err(|e| Error::Protocol(format!("bad JSON from server: {e}")))
    }
}

/// Whether a request may be sent twice: a read, or a write with a request
/// id (a repeat is answered, not applied again).
fn repeatable(method: &Method, headers: &HeaderMap) -> bool {
    *method == Method::GET || headers.contains_key(header::REQUEST_ID)
}

/// A lean-path exchange, given until `deadline`.
async fn lean_within<R>(
    deadline: tokio::time::Instant,
    exchange: impl std::future::Future<Output = Result<R, Fail>>,
) -> Sent<R> {
    match tokio::time::timeout_at(deadline, exchange).await {
        Err(_) => Sent::NoAnswer,
        Ok(Ok(r)) => Sent::Answer(r),
        Ok(Err(f)) => Sent::Failed(f),
    }
}

/// Whether `status` is a refusal to serve (see [`Reply::refused`]).
fn refused(status: StatusCode) -> bool {
    status.as_u16() == ErrorCode::Unavailable.status()
}

/// A header value of ASCII this client formatted itself.
fn number(s: String) -> HeaderValue {
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A request id as a header value; one that cannot be is refused.
fn id_header(id: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(id)
        .map_err(|_| Error::Config(format!("the request id {id:?} holds characters a header cannot carry")))
}

/// A hint for the usual TLS mistakes, from the error's text.
fn tls_hint(text: &str) -> &'static str {
    if text.contains("InvalidContentType") || text.contains("corrupt message") || text.contains("wrong version") {
        " (the server does not speak TLS here: use http://)"
    } else if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
        " (the server's certificate is not signed by the given CA: check --ca)"
    } else {
        ""
    }
}

async fn json<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T, Error> {
    let body = resp.bytes().await.map_err(|e| body_error(&e))?;
    serde_json::from_slice(&body).map_err(|e| Error::Protocol(format!("bad JSON from server: {e}")))
}

fn header_str<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> Result<&'a str, Error> {
    h.get(name).and_then(|v| v.to_str().ok()).ok_or_else(|| Error::Protocol(format!("missing header {name}")))
}

fn header_u64(h: &reqwest::header::HeaderMap, name: &str) -> Result<u64, Error> {
    header_str(h, name)?.parse().map_err(|_| Error::Protocol(format!("bad header {name}")))
}

fn meta_from_headers(h: &reqwest::header::HeaderMap) -> Result<Meta, Error> {
    let bad = |n: &str| Error::Protocol(format!("bad header {n}"));
    Ok(Meta {
        kind: Kind::parse(header_str(h, header::KIND)?).ok_or_else(|| bad(header::KIND))?,
        mode: u32::from_str_radix(header_str(h, header::MODE)?, 8).map_err(|_| bad(header::MODE))?,
        uid: header_u64(h, header::UID)? as u32,
        gid: header_u64(h, header::GID)? as u32,
        mtime_ns: header_str(h, header::MTIME)?.parse().map_err(|_| bad(header::MTIME))?,
        create_revision: header_u64(h, header::CREATE_REVISION)?,
        mod_revision: header_u64(h, header::MOD_REVISION)?,
        version: header_u64(h, header::VERSION)?,
        size: header_u64(h, "content-length")?,
        atime_ns: time_header(h, header::ATIME)?,
        ctime_ns: time_header(h, header::CTIME)?,
    })
}

/// A time header an older server does not send.
fn time_header(h: &reqwest::header::HeaderMap, name: &str) -> Result<Option<i64>, Error> {
    h.get(name)
        .map(|v| {
            v.to_str().ok().and_then(|t| t.parse().ok()).ok_or_else(|| Error::Protocol(format!("bad header {name}")))
        })
        .transpose()
}

#[cfg(test)]
#[path = "client_tests.rs"]
pub(crate) mod tests;
