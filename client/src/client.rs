//! The async HTTP client.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, RequestBuilder, Response, StatusCode};

use crate::auth::{NewToken, TokenInfo, TokenSpec, WhoAmI};
use crate::key::{normalize_prefix, validate_key, KeyError};
use crate::path::encode_key;
use crate::types::{
    header, AddMember, Attrs, ClusterInfo, ErrorBody, Kind, ListResponse, Meta, TxnRequest, TxnResponse,
};
use crate::watch::Watch;

/// What can go wrong talking to a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the request; `code` and `message` are its JSON
    /// error body (DESIGN.md §4). Fix the request, or retry on 503.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Machine-readable code.
        code: String,
        /// Human sentence.
        message: String,
    },
    /// No endpoint could be reached; check the addresses and that kvd runs.
    #[error("no endpoint could be reached: {0}")]
    Unreachable(String),
    /// The key (or prefix) is malformed; nothing was sent.
    #[error("invalid key: {0}")]
    InvalidKey(#[from] KeyError),
    /// An endpoint URL could not be used.
    #[error("invalid endpoint {0:?}: it must look like http://HOST:PORT")]
    Endpoint(String),
    /// The client could not be set up (token, CA file).
    #[error("{0}")]
    Config(String),
    /// The server answered something this client does not understand.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// A watch stream sent nothing, not even a keepalive, for longer than
    /// its bound: its member is frozen, cut off or overloaded. Watch again
    /// from [`Watch::last_revision`]; the next watch starts at another
    /// endpoint.
    #[error("the watch stream from {endpoint} sent nothing for {} ms; watch again through another member", .silent.as_millis())]
    Stalled {
        /// The member the stream came from.
        endpoint: String,
        /// How long it was silent.
        silent: Duration,
    },
}

impl Error {
    /// HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

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
}

/// How a client authenticates itself and checks the server.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Bearer token (or JWT) sent with every request.
    pub token: Option<String>,
    /// PEM CA certificates that sign the servers' certificates (`https://`
    /// endpoints). Without it the system's CA bundle is used.
    pub ca_pem: Option<Vec<u8>>,
}

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
/// reached; writes carry a request id so a retried write applies once.
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
            eps.push(format!("{}://{}", url.scheme(), url.authority()));
        }
        if eps.is_empty() {
            return Err(Error::Endpoint(String::new()));
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(POOL_IDLE)
            .use_rustls_tls();
        if let Some(token) = &opts.token {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .map_err(|_| Error::Config("the token holds characters a header cannot carry".into()))?;
            v.set_sensitive(true);
            b = b.default_headers(reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, v)]));
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
        })
    }

    /// A client of other member URLs with this one's token and CA.
    pub fn with_endpoints<S: AsRef<str>>(&self, endpoints: &[S]) -> Result<Client, Error> {
        Client::with_options(endpoints, &self.opts)
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
    fn follow_leader(&self, resp: &Response) {
        let Some(url) = resp.headers().get(header::LEADER).and_then(|v| v.to_str().ok()) else { return };
        let Ok(url) = reqwest::Url::parse(url) else { return };
        let url = format!("{}://{}", url.scheme(), url.authority());
        if let Some(i) = self.endpoints.iter().position(|e| *e == url) {
            self.current.store(i, Ordering::Relaxed);
        }
    }

    /// Sends a request built by `build` for a path, trying each endpoint in
    /// turn (starting with the one that last answered) while they cannot be
    /// reached or answer 503 (no leader, removed member). A read, or a write
    /// with a request id, whose connection breaks after it was made is sent
    /// once more on a new one before the next endpoint. Any other HTTP
    /// answer, error statuses included, is returned; one that names the
    /// leader moves the next requests there.
    pub async fn send<F>(&self, method: Method, path_and_query: &str, build: F) -> Result<Response, Error>
    where
        F: Fn(RequestBuilder) -> RequestBuilder,
    {
        let start = self.current.load(Ordering::Relaxed);
        let mut last_err = String::new();
        for i in 0..self.endpoints.len() {
            let idx = (start + i) % self.endpoints.len();
            let url = format!("{}{}", self.endpoints[idx], path_and_query);
            // A connection that broke after it was made (the member closed a
            // kept-alive one as it was reused, or restarted) is tried once
            // more, on a new connection, if the request may be sent twice.
            let (mut sent, repeatable) = self.send_once(&method, &url, &build).await;
            if repeatable && sent.as_ref().is_err_and(broke_after_connect) {
                sent = self.send_once(&method, &url, &build).await.0;
            }
            match sent {
                // NOTE: writes carry a request id, so trying another member
                // (or the same one again) is safe: a repeat is answered, not
                // applied twice.
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE && i + 1 < self.endpoints.len() => {
                    last_err = format!("{}: HTTP 503", self.endpoints[idx]);
                }
                Ok(resp) => {
                    self.current.store(idx, Ordering::Relaxed);
                    self.follow_leader(&resp);
                    return Ok(resp);
                }
                Err(e) => {
                    let why = error_chain(&e);
                    last_err = format!("{}: {why}{}", self.endpoints[idx], tls_hint(&why));
                }
            }
        }
        Err(Error::Unreachable(last_err))
    }

    /// Sends one request to `url`; also whether it may be sent twice: only a
    /// read, or a write with a request id.
    async fn send_once<F>(&self, method: &Method, url: &str, build: &F) -> (reqwest::Result<Response>, bool)
    where
        F: Fn(RequestBuilder) -> RequestBuilder,
    {
        match build(self.http.request(method.clone(), url)).build() {
            Ok(r) => {
                let repeatable = r.method() == Method::GET || r.headers().contains_key(header::REQUEST_ID);
                (self.http.execute(r).await, repeatable)
            }
            Err(e) => (Err(e), false),
        }
    }

    /// Reads a key (linearizable). `Ok(None)` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Value>, Error> {
        self.get_opts(key, false).await
    }

    /// Reads a key; with `stale` the member answers from its own state.
    pub async fn get_opts(&self, key: &str, stale: bool) -> Result<Option<Value>, Error> {
        validate_key(key)?;
        let q = if stale { "?stale=true" } else { "" };
        let resp = self.send(Method::GET, &format!("/v1/kv/{}{q}", encode_key(key)), |r| r).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check(resp).await?;
        let meta = meta_from_headers(resp.headers())?;
        let revision = header_u64(resp.headers(), header::REVISION)?;
        let value = resp.bytes().await.map_err(|e| Error::Protocol(error_chain(&e)))?;
        Ok(Some(Value { meta, value, revision }))
    }

    /// Writes a key.
    pub async fn put(&self, key: &str, value: impl Into<Bytes>, opts: &PutOptions) -> Result<TxnResponse, Error> {
        validate_key(key)?;
        let value: Bytes = value.into();
        let id = opts.request_id.clone().unwrap_or_else(|| self.new_request_id());
        let resp = self
            .send(Method::PUT, &format!("/v1/kv/{}", encode_key(key)), |mut r| {
                r = r.header(header::REQUEST_ID, &id).body(value.clone());
                if let Some(rev) = opts.if_match {
                    r = r.header("if-match", format!("\"{rev}\""));
                }
                if opts.create_only {
                    r = r.header("if-none-match", "*");
                }
                let a = &opts.attrs;
                if let Some(k) = a.kind {
                    r = r.header(header::KIND, k.as_str());
                }
                if let Some(m) = a.mode {
                    r = r.header(header::MODE, format!("{m:o}"));
                }
                if let Some(u) = a.uid {
                    r = r.header(header::UID, u.to_string());
                }
                if let Some(g) = a.gid {
                    r = r.header(header::GID, g.to_string());
                }
                if let Some(t) = a.mtime_ns {
                    r = r.header(header::MTIME, t.to_string());
                }
                r
            })
            .await?;
        json(check(resp).await?).await
    }

    /// Deletes a key, or with `recursive` the key and everything below it.
    pub async fn delete(&self, key: &str, recursive: bool, if_match: Option<u64>) -> Result<TxnResponse, Error> {
        let key = if recursive { normalize_prefix(key)? } else { validate_key(key).map(|_| key)? };
        let id = self.new_request_id();
        let q = if recursive { "?recursive=true" } else { "" };
        let resp = self
            .send(Method::DELETE, &format!("/v1/kv/{}{q}", encode_key(key)), |mut r| {
                r = r.header(header::REQUEST_ID, &id);
                if let Some(rev) = if_match {
                    r = r.header("if-match", format!("\"{rev}\""));
                }
                r
            })
            .await?;
        json(check(resp).await?).await
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
        let qs = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
        let resp = self.send(Method::GET, &format!("/v1/list/{}{qs}", encode_key(prefix)), |r| r).await?;
        json(check(resp).await?).await
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: &TxnRequest) -> Result<TxnResponse, Error> {
        let body = serde_json::to_vec(txn).map_err(|e| Error::Protocol(e.to_string()))?;
        let id = self.new_request_id();
        let resp = self
            .send(Method::POST, "/v1/txn", |r| {
                r.header(header::REQUEST_ID, &id).header("content-type", "application/json").body(body.clone())
            })
            .await?;
        json(check(resp).await?).await
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
        let prefix = normalize_prefix(prefix)?;
        let q = after.map(|r| format!("?rev={r}")).unwrap_or_default();
        let path = format!("/v1/watch/{}{q}", encode_key(prefix));
        let start = self.current.load(Ordering::Relaxed);
        let mut last_err = String::new();
        for i in 0..self.endpoints.len() {
            let idx = (start + i) % self.endpoints.len();
            let url = format!("{}{path}", self.endpoints[idx]);
            // NOTE: a frozen member accepts connections (the kernel does)
            // and never answers: only a bound moves on from it.
            let sent = tokio::time::timeout(WATCH_ANSWER_TIMEOUT, self.send_once(&Method::GET, &url, &|r| r)).await;
            let resp = match sent {
                Ok((Ok(resp), _)) => resp,
                Ok((Err(e), _)) => {
                    let why = error_chain(&e);
                    last_err = format!("{}: {why}{}", self.endpoints[idx], tls_hint(&why));
                    continue;
                }
                Err(_) => {
                    last_err =
                        format!("{}: no answer within {} ms", self.endpoints[idx], WATCH_ANSWER_TIMEOUT.as_millis());
                    continue;
                }
            };
            if resp.status() == StatusCode::SERVICE_UNAVAILABLE && i + 1 < self.endpoints.len() {
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
            return Ok(Watch::new(
                Box::pin(resp.bytes_stream()),
                after,
                keepalive,
                keepalive.unwrap_or(WATCH_LEGACY_KEEPALIVE) * WATCH_MISSED_KEEPALIVES,
                (self.endpoints[idx].clone(), idx, self.endpoints.len()),
                self.current.clone(),
            ));
        }
        Err(Error::Unreachable(last_err))
    }

    /// The members of the cluster with their status (`GET /v1/cluster`).
    pub async fn cluster(&self) -> Result<ClusterInfo, Error> {
        let resp = self.send(Method::GET, "/v1/cluster", |r| r).await?;
        json(check(resp).await?).await
    }

    /// Sends a JSON membership request and returns the cluster after it.
    async fn membership(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<ClusterInfo, Error> {
        let resp = self
            .send(method, path, |r| match &body {
                Some(b) => r.header("content-type", "application/json").body(b.to_string()),
                None => r,
            })
            .await?;
        json(check(resp).await?).await
    }

    /// Adds a member; unless `req.learner`, waits until it caught up and
    /// promotes it.
    pub async fn add_member(&self, req: &AddMember) -> Result<ClusterInfo, Error> {
        let body = serde_json::to_value(req).map_err(|e| Error::Protocol(e.to_string()))?;
        self.membership(Method::POST, "/v1/cluster/members", Some(body)).await
    }

    /// Makes a learner a voter.
    pub async fn promote_member(&self, id: u64) -> Result<ClusterInfo, Error> {
        self.membership(Method::POST, &format!("/v1/cluster/members/{id}/promote"), None).await
    }

    /// Removes a member (the leader too).
    pub async fn remove_member(&self, id: u64) -> Result<ClusterInfo, Error> {
        self.membership(Method::DELETE, &format!("/v1/cluster/members/{id}"), None).await
    }

    /// Moves leadership to voter `id`.
    pub async fn transfer_leader(&self, id: u64) -> Result<ClusterInfo, Error> {
        self.membership(Method::POST, "/v1/cluster/leader", Some(serde_json::json!({ "id": id }))).await
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

/// Whether a request failed on a connection that was made, rather than
/// by not reaching the member, timing out or being malformed.
fn broke_after_connect(e: &reqwest::Error) -> bool {
    !e.is_connect() && !e.is_timeout() && !e.is_builder()
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Turns an error status into [`Error::Api`].
async fn check(resp: Response) -> Result<Response, Error> {
    let status = resp.status();
    if status.is_success() || status == StatusCode::NOT_MODIFIED {
        return Ok(resp);
    }
    let body = resp.bytes().await.unwrap_or_default();
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(b) => (b.error, b.message),
        Err(_) => ("http".to_owned(), String::from_utf8_lossy(&body).trim().to_owned()),
    };
    Err(Error::Api { status: status.as_u16(), code, message })
}

async fn json<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T, Error> {
    let body = resp.bytes().await.map_err(|e| Error::Protocol(error_chain(&e)))?;
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
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Reads one request (head and Content-Length body); returns its request id.
    pub(crate) async fn read_request(s: &mut TcpStream) -> String {
        let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
        loop {
            let n = s.read(&mut chunk).await.expect("read a request");
            assert!(n > 0, "the client closed the connection mid-request");
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let field = |name: &str| head.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned());
            let len: usize = field("content-length:").map_or(0, |v| v.parse().expect("a length"));
            if buf.len() >= end + 4 + len {
                return field("x-kv-request-id:").unwrap_or_default();
            }
        }
    }

    #[tokio::test]
    async fn a_write_whose_connection_breaks_is_sent_again_with_the_same_request_id() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            // The first connection takes the request and closes unanswered,
            // as a member does with a kept-alive connection it times out.
            let (mut s, _) = listener.accept().await.expect("accept");
            let first = read_request(&mut s).await;
            drop(s);
            let (mut s, _) = listener.accept().await.expect("accept the retry");
            let second = read_request(&mut s).await;
            let body = r#"{"succeeded":true,"revision":7,"results":[]}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.expect("answer");
            (first, second)
        });
        let c = Client::new(&[format!("http://{addr}")]).expect("client");
        let r = c.put("a/b", "v", &PutOptions::default()).await.expect("the put goes through on a new connection");
        assert_eq!(r.revision, 7);
        let (first, second) = server.await.expect("server");
        assert!(!first.is_empty(), "a write carries a request id");
        assert_eq!(first, second, "the repeat carries the same request id, so it cannot apply twice");
    }

    /// A member that takes every request and closes the connection
    /// unanswered; counts the requests.
    async fn dropping_member() -> (Client, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(AtomicUsize::new(0));
        let n = seen.clone();
        let server = tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.expect("accept");
                read_request(&mut s).await;
                n.fetch_add(1, Ordering::SeqCst);
            }
        });
        (Client::new(&[format!("http://{addr}")]).expect("client"), seen, server)
    }

    #[tokio::test]
    async fn a_member_that_breaks_every_connection_is_tried_twice_then_reported() {
        let (c, seen, server) = dropping_member().await;
        let err = c.get("a/b").await.expect_err("no answer ever comes");
        server.abort();
        assert!(matches!(err, Error::Unreachable(_)), "{err:?}");
        assert_eq!(seen.load(Ordering::SeqCst), 2, "one request, one repeat");
    }

    #[tokio::test]
    async fn a_request_without_a_request_id_is_never_sent_twice() {
        // A membership change has no request id: a repeat of one that took
        // effect would fail ("already a member") or act twice.
        let (c, seen, server) = dropping_member().await;
        let err = c.promote_member(2).await.expect_err("no answer ever comes");
        server.abort();
        assert!(matches!(err, Error::Unreachable(_)), "{err:?}");
        assert_eq!(seen.load(Ordering::SeqCst), 1, "sent once");
    }
}
