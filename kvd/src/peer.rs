//! The server side of the peer API (on `--peer-addr`): the RPCs of
//! crate::rpc, each decoded and answered in one place, in the format the
//! request came in (crate::format::PeerFormat); a format this kvd does not
//! read is refused (415) with the formats it reads. Every request and
//! answer carries the cluster id (crate::identity); a request from another
//! cluster is refused (409) before any handler sees it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::Router;

use crate::auth::Authority;
use crate::format::{PeerFormat, PEER_FORMATS, PEER_FORMATS_HEADER, PEER_FORMAT_HEADER};
use crate::identity::{from_headers, Mismatch, Refusal, HEADER};
use crate::node::Node;
use crate::rpc::{self, Rpc};

/// Largest peer request: a batch of log entries or one snapshot chunk.
const MAX_PEER_BODY: usize = 512 << 20;

/// Builds the router of the peer API.
pub fn router(node: Arc<Node>) -> Router {
    let r = Router::new();
    let r = serve::<rpc::Append, _, _>(r, |node, req| async move {
        // A follower out of disk space takes heartbeats but no entries; the
        // leader retries them once space is freed (see crate::disk).
        if !req.entries.is_empty() {
            if let Err(m) = node.check_disk() {
                return Err((StatusCode::INSUFFICIENT_STORAGE, m).into_response());
            }
        }
        Ok(node.raft_append(req).await)
    });
    let r = serve::<rpc::Vote, _, _>(r, |node, req| async move { Ok(node.raft_vote(req).await) });
    let r = serve::<rpc::Snapshot, _, _>(r, |node, req| async move { Ok(node.raft_install_snapshot(req).await) });
    // A follower's client write, authorized and run through this node's
    // proposer if it leads.
    let r = serve::<rpc::Propose, _, _>(r, |node, f| async move {
        Ok(node.propose_local(f.req, &Authority::Client(f.authorization), node.request_timeout()).await)
    });
    let r =
        serve::<rpc::ReadIndex, _, _>(
            r,
            |node, ()| async move { Ok(node.read_index_local(node.request_timeout()).await) },
        );
    let r = serve::<rpc::HoldElections, _, _>(r, |node, ms| async move {
        node.hold_elections(Duration::from_millis(ms));
        Ok(())
    });
    let r = serve::<rpc::Elect, _, _>(r, |node, ()| async move { Ok(node.elect_now().await) });
    let r = serve::<rpc::Status, _, _>(r, |node, ()| async move { Ok(node.status().await) });
    let r = serve::<rpc::Identity, _, _>(r, |node, ()| async move { Ok(node.identity_info().await) });
    r.layer(axum::middleware::from_fn_with_state(node.clone(), same_cluster))
        .layer(axum::middleware::map_response(formats_read))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY))
        .with_state(node)
}

/// Tells the sender of every answer which message formats this kvd reads.
async fn formats_read(mut resp: HttpResponse) -> HttpResponse {
    resp.headers_mut().insert(PEER_FORMATS_HEADER, HeaderValue::from_static(PEER_FORMATS));
    resp
}

/// Routes RPC `R` to `handle`: decodes its request in the format it names
/// (415 for a format this kvd does not read, 400 if it does not decode),
/// encodes the answer in the same format, or sends the refusal `handle`
/// gives.
fn serve<R, F, Fut>(router: Router<Arc<Node>>, handle: F) -> Router<Arc<Node>>
where
    R: Rpc,
    F: Fn(Arc<Node>, R::Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R::Response, HttpResponse>> + Send,
{
    let h = move |State(node): State<Arc<Node>>, headers: axum::http::HeaderMap, body: Bytes| async move {
        let format = match PeerFormat::of_message(headers.get(PEER_FORMAT_HEADER)) {
            Ok(f) => f,
            Err(text) => {
                return (StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("node {}: {text}", node.id())).into_response()
            }
        };
        // NOTE: a GET has no body, and the unit request decodes from none.
        let req: R::Request = match format.decode(&body) {
            Ok(r) => r,
            Err(e) => return (StatusCode::BAD_REQUEST, format!("undecodable peer request: {e}")).into_response(),
        };
        match handle(node, req).await {
            Ok(v) if R::JSON_GET => axum::Json(v).into_response(),
            Ok(v) => (
                [
                    ("content-type", HeaderValue::from_static("application/octet-stream")),
                    (PEER_FORMAT_HEADER, format.header()),
                ],
                format.encode(&v),
            )
                .into_response(),
            Err(refused) => refused,
        }
    };
    router.route(R::PATH, if R::JSON_GET { get(h) } else { post(h) })
}

/// Refuses a request from another cluster (409, naming both ids, logged
/// here and by the sender); a node without an id yet learns it from the
/// first Raft message of its leader. Every answer carries this node's id.
async fn same_cluster(State(node): State<Arc<Node>>, req: Request, next: Next) -> HttpResponse {
    let path = req.uri().path().to_owned();
    // NOTE: anyone may ask who a node is: `member add` does, before it
    // proposes anything (crate::cluster).
    if path == rpc::Identity::PATH {
        return next.run(req).await;
    }
    let ident = node.identity().clone();
    let theirs = from_headers(req.headers());
    if let Some(theirs) = theirs.filter(|_| ident.get().is_none()) {
        if rpc::RAFT_PATHS.contains(&path.as_str()) {
            let i = ident.clone();
            if tokio::task::spawn_blocking(move || i.adopt(theirs)).await.is_err() {
                return (StatusCode::INTERNAL_SERVER_ERROR, "cannot store the cluster id").into_response();
            }
        }
    }
    if let Err(m) = ident.check(theirs) {
        return refuse(&node, &path, m);
    }
    let mut resp = next.run(req).await;
    if let Some(v) = ident.get().and_then(|id| HeaderValue::from_str(&id.to_string()).ok()) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}

/// The answer to a message from another cluster.
fn refuse(node: &Node, path: &str, m: Mismatch) -> HttpResponse {
    if node.identity().loud(Refusal::Here) {
        tracing::error!(
            cluster_id = %m.ours,
            peer_cluster_id = %m.theirs,
            path,
            "refused a peer message from another cluster"
        );
    }
    let text = format!(
        "node {}: {m}. To move this node to the other cluster, wipe or reset its data dir, start it \
         without --bootstrap and add it there with `kvctl member add`",
        node.id()
    );
    (StatusCode::CONFLICT, [(HEADER, m.ours.to_string())], text).into_response()
}
