//! Unit tests of the client against fake members on loopback: broken
//! connections, members that never answer, refusals.

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
    let (other, seen_other, server_other) = dropping_member().await;
    let c = c.with_endpoints(&[c.endpoints()[0].clone(), other.endpoints()[0].clone()]).expect("client");
    let err = c.promote_member(2).await.expect_err("no answer ever comes");
    server.abort();
    server_other.abort();
    // The member may have taken it before its connection broke.
    assert!(matches!(err, Error::UnknownOutcome(_)), "{err:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 1, "sent once");
    assert_eq!(seen_other.load(Ordering::SeqCst), 0, "and not to another member");
}

/// A member that takes connections and requests and never answers, as a
/// frozen (SIGSTOP) one does; records the request ids it got.
async fn frozen_member() -> (String, Arc<std::sync::Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let ids: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let seen = ids.clone();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut s, _) = listener.accept().await.expect("accept");
            let id = read_request(&mut s).await;
            seen.lock().expect("lock").push(id);
            held.push(s);
        }
    });
    (format!("http://{addr}"), ids, server)
}

/// A member that answers every request with a put's answer; records the
/// request ids it saw.
async fn answering_member() -> (String, Arc<std::sync::Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    member_answering("200 OK", r#"{"succeeded":true,"revision":9,"results":[]}"#).await
}

/// A member that answers every request with `status` and `body`;
/// records the request ids it saw.
async fn member_answering(
    status: &'static str,
    body: &'static str,
) -> (String, Arc<std::sync::Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let ids: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let seen = ids.clone();
    let server = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.expect("accept");
            let id = read_request(&mut s).await;
            seen.lock().expect("lock").push(id);
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.expect("answer");
        }
    });
    (format!("http://{addr}"), ids, server)
}

fn quick(endpoints: &[&str]) -> Client {
    let opts = ClientOptions { request_timeout: Some(Duration::from_millis(300)), ..ClientOptions::default() };
    Client::with_options(endpoints, &opts).expect("client")
}

/// What a test waits for a call that must end within its bound.
const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_write_a_frozen_member_does_not_answer_goes_to_the_next_with_the_same_request_id() {
    let (frozen, held, s1) = frozen_member().await;
    let (good, answered, s2) = answering_member().await;
    let c = quick(&[&frozen, &good]);
    let put = tokio::time::timeout(PATIENCE, c.put("a/b", "v", &PutOptions::default())).await;
    let r = put.expect("the put waited for the frozen member").expect("the next member answers");
    assert_eq!(r.revision, 9);
    assert_eq!(c.current_endpoint(), good, "the next requests go to the member that answered");
    // txn and delete too, on fresh clients (that start with the frozen one).
    let c = quick(&[&frozen, &good]);
    tokio::time::timeout(PATIENCE, c.txn(&TxnRequest::default())).await.expect("bounded").expect("txn");
    let c = quick(&[&frozen, &good]);
    tokio::time::timeout(PATIENCE, c.delete("a/b", false, None)).await.expect("bounded").expect("delete");
    s1.abort();
    s2.abort();
    let (held, answered) = (held.lock().expect("lock").clone(), answered.lock().expect("lock").clone());
    assert_eq!(held.len(), 3, "{held:?}");
    assert!(held.iter().all(|id| !id.is_empty()), "every write carries a request id: {held:?}");
    assert_eq!(held, answered, "each write reached the next member with the id the frozen one got");
}

#[tokio::test]
async fn a_read_from_only_a_frozen_member_fails_within_the_timeout_naming_it() {
    let (frozen, _, server) = frozen_member().await;
    let c = quick(&[&frozen]);
    let err =
        tokio::time::timeout(PATIENCE, c.get("a/b")).await.expect("the read waited for ever").expect_err("no answer");
    server.abort();
    assert!(matches!(err, Error::Unreachable(_)), "{err:?}");
    assert!(err.to_string().contains(&format!("{frozen}: no answer within 0.3 s")), "{err}");
}

#[tokio::test]
async fn a_membership_change_a_frozen_member_does_not_answer_is_not_sent_elsewhere() {
    // It has no request id: sent again, one that took effect would act
    // twice or fail ("not a member").
    let (frozen, held, s1) = frozen_member().await;
    let (good, ids, s2) = answering_member().await;
    let c = quick(&[&frozen, &good]);
    let err = tokio::time::timeout(PATIENCE, c.promote_member(2)).await.expect("bounded").expect_err("no answer");
    s1.abort();
    s2.abort();
    assert!(matches!(err, Error::UnknownOutcome(_)), "{err:?}");
    assert!(err.to_string().contains("may still take effect"), "{err}");
    assert_eq!(held.lock().expect("lock").len(), 1);
    assert!(ids.lock().expect("lock").is_empty(), "sent to another member too");
}

#[tokio::test]
async fn a_refusal_after_a_member_took_the_write_unanswered_is_no_proof_nothing_was_written() {
    // The frozen member may apply the write once it thaws: the next
    // member's 503 says only that it wrote nothing itself.
    let (frozen, held, s1) = frozen_member().await;
    let no_leader = r#"{"error":"unavailable","message":"no leader elected"}"#;
    let (refusing, refused, s2) = member_answering("503 Service Unavailable", no_leader).await;
    let c = quick(&[&frozen, &refusing]);
    let err = tokio::time::timeout(PATIENCE, c.put("a/b", "v", &PutOptions::default()))
        .await
        .expect("bounded")
        .expect_err("nobody wrote it");
    assert_eq!(held.lock().expect("lock").len(), 1);
    assert_eq!(refused.lock().expect("lock").len(), 1);
    assert!(matches!(err, Error::Unreachable(_)), "a refusal that says nothing was written: {err:?}");
    assert!(err.to_string().contains("no answer within") && err.to_string().contains("HTTP 503"), "{err}");
    // A read refused the same way is a plain refusal.
    let c = quick(&[&frozen, &refusing]);
    let err = tokio::time::timeout(PATIENCE, c.get("a/b")).await.expect("bounded").expect_err("refused");
    s1.abort();
    s2.abort();
    assert!(err.is(&ErrorCode::Unavailable), "{err:?}");
}

/// A fake member on loopback that `serve` runs, and a client of it.
async fn member<F, Fut>(serve: F) -> (Client, tokio::task::JoinHandle<()>)
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = tokio::spawn(serve(listener));
    (Client::new(&[format!("http://{addr}")]).expect("client"), server)
}

/// Waits (5 s at most) for a fake member to have done all it was to do.
async fn done(server: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("the member did all").expect("server");
}

/// Answers `body` to one request on `s`, with `extra` header lines.
async fn answer(s: &mut TcpStream, extra: &str, body: &str) {
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-kv-revision: 3\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await.expect("answer");
}

#[tokio::test]
async fn a_kept_alive_connection_is_reused_and_one_the_member_closed_is_replaced() {
    let body = r#"{"revision":3,"entries":[],"more":false}"#;
    let (c, server) = member(|listener| async move {
        // Two requests on the first connection, then it is closed, as a
        // member closes an idle one; the third comes on a new connection.
        let (mut s, _) = listener.accept().await.expect("accept");
        for _ in 0..2 {
            read_request(&mut s).await;
            answer(&mut s, "", body).await;
        }
        drop(s);
        let (mut s, _) = listener.accept().await.expect("accept the third");
        read_request(&mut s).await;
        answer(&mut s, "", body).await;
    })
    .await;
    for i in 0..2 {
        c.list("a", &ListOptions::default()).await.unwrap_or_else(|e| panic!("list {i}: {e}"));
    }
    c.list("a", &ListOptions::default()).await.expect("the third list, on a new connection");
    done(server).await;
}

#[tokio::test]
async fn chunked_answers_are_read_whole_and_connection_close_is_honoured() {
    let (c, server) = member(|listener| async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        read_request(&mut s).await;
        let (a, b) = r#"{"revision":3,"entries":[],"more":false}"#.split_at(17);
        let chunked = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
             {:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        s.write_all(chunked.as_bytes()).await.expect("answer");
        read_request(&mut s).await;
        answer(&mut s, "connection: close\r\n", r#"{"revision":4,"entries":[],"more":false}"#).await;
        // After `connection: close`, the next request needs a new connection.
        let (mut s2, _) = listener.accept().await.expect("accept a new connection");
        read_request(&mut s2).await;
        answer(&mut s2, "", r#"{"revision":5,"entries":[],"more":false}"#).await;
        drop(s);
    })
    .await;
    let revs: Vec<u64> = [
        c.list("a", &ListOptions::default()).await.expect("chunked").revision,
        c.list("a", &ListOptions::default()).await.expect("close").revision,
        c.list("a", &ListOptions::default()).await.expect("new connection").revision,
    ]
    .into();
    assert_eq!(revs, [3, 4, 5]);
    done(server).await;
}

#[tokio::test]
async fn an_answer_that_is_not_http_is_an_error_not_a_hang() {
    let (c, server) = member(|listener| async move {
        loop {
            let (mut s, _) = listener.accept().await.expect("accept");
            read_request(&mut s).await;
            s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await.expect("answer");
        }
    })
    .await;
    let err = tokio::time::timeout(Duration::from_secs(5), c.get("a/b")).await.expect("no hang").expect_err("not HTTP");
    server.abort();
    assert!(matches!(err, Error::Unreachable(_)), "{err:?}");
    assert!(err.to_string().contains("not an HTTP/1.1 answer"), "{err}");
}

#[tokio::test]
async fn a_hostile_answer_head_or_length_is_an_error_without_a_crash() {
    let (c, server) = member(|listener| async move {
        // A length far beyond what comes, then an endless header line.
        let (mut s, _) = listener.accept().await.expect("accept");
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999\r\n\r\n{}").await.expect("answer");
        drop(s);
        let (mut s, _) = listener.accept().await.expect("accept the repeat");
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\nx-long: ").await.expect("answer");
        let junk = vec![b'a'; 64 << 10];
        let _ = s.write_all(&junk).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let err = tokio::time::timeout(Duration::from_secs(5), c.get("a/b")).await.expect("no hang").expect_err("bad");
    server.abort();
    assert!(matches!(err, Error::Unreachable(_)), "{err:?}");
    assert!(err.to_string().contains("answer line too long"), "{err}");
}

#[tokio::test]
async fn a_request_that_may_not_be_sent_twice_never_rides_a_kept_alive_connection() {
    let (c, server) = member(|listener| async move {
        // A read answered on a kept-alive connection that the member then
        // closes; the membership change after it comes on a new one, with
        // an interim answer before its own.
        let (mut s, _) = listener.accept().await.expect("accept");
        read_request(&mut s).await;
        answer(&mut s, "", r#"{"revision":3,"entries":[],"more":false}"#).await;
        let (mut s2, _) = listener.accept().await.expect("accept a new connection");
        drop(s);
        read_request(&mut s2).await;
        s2.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.expect("interim");
        answer(&mut s2, "", "{}").await;
    })
    .await;
    c.list("a", &ListOptions::default()).await.expect("list");
    let resp = c.send(Method::POST, "/v1/cluster/members", |r| r.body("{}")).await.expect("the POST is answered");
    assert_eq!(resp.status().as_u16(), 200);
    done(server).await;
}

/// Reads one request's head (its body, if any, is left unread).
async fn read_head(s: &mut TcpStream) -> String {
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
    loop {
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed mid-request");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return String::from_utf8_lossy(&buf[..end]).into_owned();
        }
    }
}

#[tokio::test]
async fn a_put_s_options_go_out_as_headers_and_a_request_id_no_header_can_carry_sends_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        // One connection, one request: a refused put never reaches here.
        let (mut s, _) = listener.accept().await.expect("accept");
        let head = read_head(&mut s).await;
        answer(&mut s, "", r#"{"succeeded":true,"revision":9,"results":[]}"#).await;
        head
    });
    let mut c = Client::new(&[format!("http://{addr}")]).expect("client");
    // (the lean path even where the environment names a proxy)
    c.lean = Some(crate::lean::Pool::default());
    let bad = PutOptions { request_id: Some("a\r\nx-evil: 1".into()), ..PutOptions::default() };
    let err = c.put("a/b", "v", &bad).await.expect_err("a request id with a line break");
    assert!(matches!(&err, Error::Config(m) if m.contains("request id")), "{err:?}");
    let attrs = Attrs {
        kind: Some(Kind::File),
        mode: Some(0o640),
        uid: Some(1001),
        gid: Some(1002),
        mtime_ns: Some(-5),
        atime_ns: Some(-6),
    };
    let opts = PutOptions { attrs, if_match: Some(5), create_only: true, request_id: Some("order-17".into()) };
    assert_eq!(c.put("a/b", "v", &opts).await.expect("put").revision, 9);
    let head = tokio::time::timeout(Duration::from_secs(5), server).await.expect("in time").expect("server");
    let mut lines: Vec<&str> = head.lines().skip(1).collect();
    lines.sort_unstable();
    assert_eq!(head.lines().next(), Some("PUT /v1/kv/a/b HTTP/1.1"));
    assert_eq!(
        lines,
        [
            "content-length: 1",
            format!("host: {addr}").as_str(),
            "if-match: \"5\"",
            "if-none-match: *",
            "x-kv-atime: -6",
            "x-kv-gid: 1002",
            "x-kv-kind: file",
            "x-kv-mode: 640",
            "x-kv-mtime: -5",
            "x-kv-request-id: order-17",
            "x-kv-uid: 1001",
        ]
    );
}

#[test]
fn an_endpoint_with_a_user_or_password_is_refused_without_echoing_it() {
    for e in ["http://u:secret@127.0.0.1:7379", "http://u@127.0.0.1:7379", "https://:secret@kv.example"] {
        let err = Client::new(&[e]).expect_err(e);
        assert!(matches!(&err, Error::Config(m) if m.contains("token")), "{e}: {err:?}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}

#[tokio::test]
async fn without_the_lean_path_the_hot_calls_send_the_same_request_through_reqwest() {
    // (as behind an HTTP proxy, or on https://)
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let mut heads = Vec::new();
        for body in [r#"{"succeeded":true,"revision":4,"results":[]}"#, r#"{"error":"not_found","message":"no"}"#] {
            let (mut s, _) = listener.accept().await.expect("accept");
            heads.push(read_head(&mut s).await.to_lowercase());
            let status = if body.contains("not_found") { "404 Not Found" } else { "200 OK" };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.expect("answer");
        }
        heads
    });
    let opts = ClientOptions { token: Some("t0ken".into()), ..ClientOptions::default() };
    let mut c = Client::with_options(&[format!("http://{addr}")], &opts).expect("client");
    c.lean = None;
    let put = PutOptions { if_match: Some(3), ..PutOptions::default() };
    assert_eq!(c.put("a/b", "v", &put).await.expect("put").revision, 4);
    assert_eq!(c.get("a/c").await.expect("a 404 is no value"), None);
    let heads = tokio::time::timeout(Duration::from_secs(5), server).await.expect("in time").expect("server");
    assert!(heads[0].starts_with("put /v1/kv/a/b http/1.1"), "{}", heads[0]);
    assert!(heads[1].starts_with("get /v1/kv/a/c http/1.1"), "{}", heads[1]);
    for h in &heads {
        assert_eq!(h.matches("authorization: bearer t0ken").count(), 1, "{h}");
    }
    assert!(heads[0].contains("if-match: \"3\"") && heads[0].contains("x-kv-request-id: "), "{}", heads[0]);
    assert!(!heads[1].contains("x-kv-request-id"), "a read carries no request id: {}", heads[1]);
}
