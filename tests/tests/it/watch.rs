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
    assert!(err.is(&kv_client::ErrorCode::Compacted), "{err}");
    let mut w = k.client().watch("c", Some(now - 3)).await.expect("recent history is kept");
    assert_eq!(w.next().await.expect("event").expect("open").revision, now - 2);
}

#[tokio::test]
async fn many_watchers_share_pages_and_each_sees_exactly_its_prefix() {
    // Streams on one node read the same pages of history (one scan and one
    // encoding for all): each must still get exactly its own prefix's
    // events, in order, across more events than fit in one page, whether it
    // started before the writes, mid-way, or from old history.
    let k = Kvd::bootstrap(&[]);
    let start = revision(&k.url).await;
    let c = k.client();
    let prefixes = ["w0", "w1", "w2", "w3", ""];
    let mut streams = Vec::new();
    for p in prefixes.iter().cycle().take(25) {
        streams.push((p.to_string(), c.watch(p, Some(start)).await.expect("watch")));
    }
    let mut written = Vec::new();
    for i in 0..700 {
        let key = format!("w{}/k{i:03}", i % 4);
        written.push((key.clone(), put(&k.url, &key, &i.to_string()).await));
        if i == 350 {
            // Late starters: one from the beginning, one from this write on.
            streams.push(("w1".into(), c.watch("w1", Some(start)).await.expect("watch")));
            let now = written[350].1;
            streams.push(("w2 after 350".into(), c.watch("w2", Some(now)).await.expect("watch")));
        }
    }
    for (name, mut w) in streams {
        let (prefix, from) = match name.strip_suffix(" after 350") {
            Some(p) => (p.to_owned(), written[350].1),
            None => (name.clone(), start),
        };
        let want: Vec<(String, u64)> = written
            .iter()
            .filter(|(key, rev)| *rev > from && kv_client::key_in_prefix(key, &prefix))
            .cloned()
            .collect();
        let mut got = Vec::new();
        while got.len() < want.len() {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(20), w.next())
                .await
                .unwrap_or_else(|_| panic!("stream {name:?} stalled after {} events", got.len()))
                .expect("event")
                .expect("stream open");
            let value = ev.entry.as_ref().and_then(|e| e.value.clone()).expect("value");
            assert!(ev.key.ends_with(&format!("k{value:0>3}")), "{name:?}: {} carries {value}", ev.key);
            got.push((ev.key, ev.revision));
        }
        assert_eq!(got, want, "stream {name:?}");
        assert_eq!(w.last_revision(), want.last().map(|w| w.1), "resume id of stream {name:?}");
    }
}

#[tokio::test]
async fn a_watch_of_a_quiet_prefix_gets_keepalives_while_other_prefixes_change() {
    // Regression: the keepalive was due only after a quiet spell of the
    // whole cluster, so a stream of a quiet prefix sent nothing while other
    // prefixes changed, and its client gave it up as stalled.
    let k = Kvd::bootstrap(&[]);
    let mut w = k.client().watch("quiet", None).await.expect("watch");
    let url = k.url.clone();
    let writer = tokio::spawn(async move {
        for i in 0.. {
            put(&url, "busy/x", &i.to_string()).await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    // Three keepalive intervals and more: what the client allows in silence.
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(8);
    let mut keepalives = 0;
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout_at(until, w.next_message()).await {
            Err(_) => break,
            Ok(Ok(Some(kv_client::WatchMessage::Progress { .. }))) => keepalives += 1,
            Ok(Ok(Some(kv_client::WatchMessage::Event(e)))) => panic!("an event outside the prefix: {e:?}"),
            Ok(Ok(None)) => panic!("the stream ended"),
            Ok(Err(e)) => panic!("the watch of a quiet prefix failed while others changed: {e}"),
        }
    }
    writer.abort();
    assert!(keepalives >= 2, "{keepalives} keepalives in 8 s while other prefixes changed");
}
