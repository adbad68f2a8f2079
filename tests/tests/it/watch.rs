//! Watch streams: every change in order, resume by revision or
//! Last-Event-ID, 410 for compacted history, prefix filtering.

use kv_tests::Kvd;

use crate::{http, put, revision, status_and_code};

#[tokio::test]
async fn watch_delivers_every_change_in_order() {
    let k = Kvd::bootstrap(&[]);
    put(&k.url, "other/x", "1").await;
    let start = revision(&k.url).await;
    let c = k.client();
    let mut w = c.watch("app", None).await.expect("watch");
    for i in 0..50 {
        put(&k.url, &format!("app/k{i:02}"), &i.to_string()).await;
        put(&k.url, "apple", "not in the prefix").await;
    }
    let del = c.delete("app", true, None).await.expect("delete");
    let mut seen = Vec::new();
    while seen.len() < 100 {
        let ev = w.next().await.expect("event").expect("stream open");
        seen.push(ev);
    }
    for (i, ev) in seen.iter().take(50).enumerate() {
        assert_eq!(ev.kind, kv_client::EventType::Put);
        assert_eq!(ev.key, format!("app/k{i:02}"));
        assert_eq!(ev.revision, start + 1 + 2 * i as u64);
        let entry = ev.entry.as_ref().expect("entry");
        assert_eq!(entry.value.as_deref(), Some(i.to_string().as_str()));
    }
    for ev in &seen[50..] {
        assert_eq!((ev.kind, ev.revision), (kv_client::EventType::Delete, del.revision));
    }
    assert_eq!(w.last_revision(), Some(del.revision));
}

#[tokio::test]
async fn watch_resumes_by_revision_and_last_event_id() {
    let k = Kvd::bootstrap(&[]);
    let revs: Vec<u64> = {
        let mut v = Vec::new();
        for i in 0..10 {
            v.push(put(&k.url, &format!("r/{i}"), "v").await);
        }
        v
    };
    let mut w = k.client().watch("r", Some(revs[4])).await.expect("watch");
    for want in &revs[5..] {
        assert_eq!(w.next().await.expect("event").expect("open").revision, *want);
    }
    // Raw SSE resume with Last-Event-ID, as a browser EventSource does.
    let mut r = http()
        .get(format!("{}/v1/watch/r", k.url))
        .header("last-event-id", revs[7].to_string())
        .send()
        .await
        .expect("watch");
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    while text.matches("\n\n").count() < 2 {
        let chunk = r.chunk().await.expect("chunk").expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains(&format!("id: {}\n", revs[8])), "{text}");
    assert!(text.contains(&format!("id: {}\n", revs[9])), "{text}");
    assert!(!text.contains(&format!("id: {}\n", revs[7])), "{text}");
}

#[tokio::test]
async fn compacted_revisions_are_refused_with_410() {
    let k = Kvd::bootstrap(&["--history-revisions", "5"]);
    for i in 0..20 {
        put(&k.url, &format!("c/{i}"), "v").await;
    }
    let now = revision(&k.url).await;
    let r = http().get(format!("{}/v1/watch/c?rev=2", k.url)).send().await.expect("watch");
    assert_eq!(status_and_code(r).await, (410, "compacted".into()));
    let err = k.client().watch("c", Some(2)).await.expect_err("compacted");
    assert_eq!(err.status(), Some(410));
    let mut w = k.client().watch("c", Some(now - 3)).await.expect("recent history is kept");
    assert_eq!(w.next().await.expect("event").expect("open").revision, now - 2);
}
