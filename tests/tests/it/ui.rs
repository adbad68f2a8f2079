//! The web UI at /ui/ in headless Chromium (kv_tests::browser) against a
//! real three-member cluster: browsing, an edit that meets a concurrent
//! change, history with a diff and a restore, the recent changes, the
//! cluster page with live updates, and what a read-only token may do. The
//! screenshots of each page go to docs/ui/ (linked from the README).

use std::path::PathBuf;

use kv_client::{Client, PutOptions, TokenSpec};
use kv_tests::browser::Browser;
use kv_tests::Kvd;

/// Where the screenshots go.
fn shots() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ui")
}

fn put(rt: &tokio::runtime::Runtime, c: &Client, key: &str, value: &[u8]) -> u64 {
    rt.block_on(c.put(key, value.to_vec(), &PutOptions::default())).expect("put").revision
}

fn value(rt: &tokio::runtime::Runtime, c: &Client, key: &str) -> Option<String> {
    rt.block_on(c.get(key)).expect("get").map(|e| String::from_utf8_lossy(&e.value).into_owned())
}

/// The text of every element `css` matches, read in one step (the page
/// re-renders as answers come, so element handles go stale).
fn texts(b: &Browser, css: &str) -> Vec<String> {
    let css = serde_json::to_string(css).expect("json");
    let v = b.eval(&format!("return [...document.querySelectorAll({css})].map(e => e.textContent)"));
    serde_json::from_value(v).expect("strings")
}

/// Attribute `name` of every element `css` matches.
fn attrs(b: &Browser, css: &str, name: &str) -> Vec<String> {
    let (css, name) = (serde_json::to_string(css).expect("json"), serde_json::to_string(name).expect("json"));
    let v = b.eval(&format!("return [...document.querySelectorAll({css})].map(e => e.getAttribute({name}) || '')"));
    serde_json::from_value(v).expect("strings")
}

/// Whether `css` matches an element that is not disabled.
fn enabled(b: &Browser, css: &str) -> bool {
    let css = serde_json::to_string(css).expect("json");
    b.eval(&format!("const e = document.querySelector({css}); return !!e && !e.disabled")) == serde_json::json!(true)
}

/// Whether `css` matches an element.
fn exists(b: &Browser, css: &str) -> bool {
    !texts(b, css).is_empty()
}

/// The text of the first element `css` matches ("" when none).
fn text(b: &Browser, css: &str) -> String {
    texts(b, css).into_iter().next().unwrap_or_default()
}

const NGINX: &str = "# the web front\nworkers = 4\nlisten = \"0.0.0.0:80\"\n";

#[test]
fn the_ui_browses_edits_with_a_conflict_shows_history_and_the_cluster() {
    let Some(b) = Browser::start() else { return };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let nodes = rt.block_on(crate::cluster_of_three(&["--auth", "writes"]));
    let admin_token = nodes[0].admin_token();
    let admin = nodes[0].client_with(Some(&admin_token));
    put(&rt, &admin, "app/nginx.conf", NGINX.as_bytes());
    put(&rt, &admin, "app/db.toml", b"[db]\nhost = \"db1\"\nport = 5432\n");
    put(&rt, &admin, "app/logo.bin", &[0, 1, 2, 0xfe, 0xff, b'k', b'v']);
    put(&rt, &admin, "app/sub/deep.json", br#"{"a": 1, "b": [true, null]}"#);
    let ui = format!("{}/ui/", nodes[0].url);

    // Without a token (auth writes): everything is readable, nothing writable.
    b.goto(&ui);
    b.wait_until("the page says who it is", |b| text(b, "#whoami").contains("no token"));
    b.goto(&format!("{ui}#/browse/app/"));
    b.wait_until("the app/ listing", |b| exists(b, "tr.entry[data-key='app/nginx.conf']"));
    assert!(!enabled(&b, "#new-file"), "writable without a token");

    // With the admin token (kept in this tab's session storage).
    b.find("#token-input").send_keys(&admin_token);
    b.find("#token-save").click();
    b.wait_until("the token is used", |b| text(b, "#whoami").contains("token admin"));
    assert_eq!(b.eval("return sessionStorage.getItem('kv-token')"), serde_json::json!(admin_token));
    b.wait_until("new file allowed", |b| enabled(b, "#new-file"));
    let rows = attrs(&b, "tr.entry", "data-key");
    assert_eq!(rows, ["app/db.toml", "app/logo.bin", "app/nginx.conf", "app/sub"], "{}", b.page_text());
    b.find("#filter").send_keys("deep");
    b.wait_until("the filter finds the deep key", |b| attrs(b, "tr.entry", "data-key") == ["app/sub/deep.json"]);
    b.screenshot(&shots().join("browse.png"));

    // A text value, highlighted; a binary one as hex.
    b.goto(&format!("{ui}#/key/app/nginx.conf"));
    b.wait_until("the value", |b| text(b, "#value").contains("workers = 4"));
    assert!(exists(&b, "#value .hl-key"), "no highlighted keys");
    assert!(exists(&b, "#value .hl-com"), "no highlighted comment");
    b.screenshot(&shots().join("key.png"));
    b.goto(&format!("{ui}#/key/app/logo.bin"));
    b.wait_until("the hex dump", |b| text(b, "#hex").contains("00 01 02 fe ff 6b 76"));
    assert!(exists(&b, "#edit") && !enabled(&b, "#edit"), "a binary value is not edited as text");

    // An edit that meets a concurrent change: a conflict, nothing written.
    b.goto(&format!("{ui}#/key/app/nginx.conf"));
    b.wait_until("the editable value", |b| text(b, "#value").contains("workers = 4") && enabled(b, "#edit"));
    b.find("#edit").click();
    let editor = b.find("#editor");
    editor.clear();
    editor.send_keys("workers = 8\n");
    let theirs = "workers = 6\n";
    put(&rt, &admin, "app/nginx.conf", theirs.as_bytes());
    b.find("#save").click();
    b.wait_until("the conflict", |b| exists(b, "#conflict"));
    assert_eq!(text(&b, "#conflict-theirs").trim(), theirs.trim());
    assert!(text(&b, "#conflict-mine").contains("workers = 8"));
    assert_eq!(value(&rt, &admin, "app/nginx.conf").as_deref(), Some(theirs), "the conflict overwrote theirs");
    b.screenshot(&shots().join("conflict.png"));
    // Saving on top of theirs, knowingly.
    b.find("#conflict-keep-mine").click();
    b.find("#save").click();
    b.wait_until("saved", |b| text(b, "#message").contains("saved app/nginx.conf"));
    assert_eq!(value(&rt, &admin, "app/nginx.conf").as_deref(), Some("workers = 8\n"));

    // History: who wrote each version, a diff, and a restore.
    b.wait_until("three versions", |b| texts(b, "#history tr.version").len() >= 3);
    let writers = texts(&b, "#history td.writer");
    assert!(writers.iter().all(|w| w == "admin"), "{writers:?}");
    b.find("#compare").click();
    b.wait_until("the diff", |b| text(b, "#diff").contains("- workers = 6"));
    assert!(text(&b, "#diff").contains("+ workers = 8"), "{}", text(&b, "#diff"));
    b.screenshot(&shots().join("history.png"));
    let oldest = b.find_all("#history button.restore").pop().expect("a version to restore");
    oldest.click();
    b.wait_until("restored", |b| text(b, "#message").contains("restored app/nginx.conf"));
    assert_eq!(value(&rt, &admin, "app/nginx.conf").as_deref(), Some(NGINX));

    // Create and delete.
    b.goto(&format!("{ui}#/browse/app/"));
    b.find("#new-name").send_keys("fresh.ini");
    b.find("#new-file").click();
    b.wait_until("the new key's page", |b| b.current_url().ends_with("#/key/app/fresh.ini"));
    assert_eq!(value(&rt, &admin, "app/fresh.ini").as_deref(), Some(""));
    b.wait_until("the delete button", |b| enabled(b, "#delete"));
    b.find("#delete").click();
    b.find("#delete-confirm").click();
    b.wait_until("deleted", |b| text(b, "#message").contains("deleted app/fresh.ini"));
    assert_eq!(value(&rt, &admin, "app/fresh.ini"), None);

    // A link with dot segments reaches no other key: the browser would
    // resolve `app/../` to the root, and a delete there takes everything.
    b.goto(&format!("{ui}#/browse/app/%2E%2E/"));
    b.wait_until("the refusal", |b| exists(b, "#bad-key"));
    assert!(!exists(&b, "#delete-dir"), "{}", b.page_text());

    // A directory is deleted only if nothing in it changed after the
    // listing the user saw.
    b.goto(&format!("{ui}#/browse/app/sub/"));
    b.wait_until("the sub listing", |b| exists(b, "tr.entry[data-key='app/sub/deep.json']"));
    put(&rt, &admin, "app/sub/late.json", b"{}");
    b.find("#delete-dir").click();
    b.find("#delete-dir-confirm").click();
    b.wait_until("the refusal", |b| text(b, "#message").contains("nothing was deleted"));
    assert_eq!(value(&rt, &admin, "app/sub/late.json").as_deref(), Some("{}"), "a key written after the listing went");
    b.wait_until("the new listing", |b| exists(b, "tr.entry[data-key='app/sub/late.json']"));
    b.find("#delete-dir").click();
    b.find("#delete-dir-confirm").click();
    b.wait_until("deleted", |b| text(b, "#message").contains("deleted app/sub/"));
    assert_eq!(value(&rt, &admin, "app/sub/deep.json"), None);

    // Restoring a binary version puts back its bytes.
    let logo = [0u8, 1, 2, 0xfe, 0xff, b'k', b'v'];
    put(&rt, &admin, "app/logo.bin", b"now text");
    b.goto(&format!("{ui}#/key/app/logo.bin"));
    b.wait_until("a version to restore", |b| exists(b, "#history button.restore"));
    b.find("#history button.restore").click();
    b.wait_until("restored", |b| text(b, "#message").contains("restored app/logo.bin"));
    let got = rt.block_on(admin.get("app/logo.bin")).expect("get").expect("exists").value;
    assert_eq!(got.as_ref(), logo.as_slice(), "the binary version's bytes");

    // Recent changes, newest first, with their writers.
    b.goto(&format!("{ui}#/changes/app/"));
    b.wait_until("the timeline", |b| {
        attrs(b, "#changes tr.change", "data-key").first().map(String::as_str) == Some("app/logo.bin")
    });
    b.wait_until("writers in the timeline", |b| texts(b, "#changes td.writer").iter().any(|w| w == "admin"));
    b.screenshot(&shots().join("changes.png"));

    // The cluster, live.
    b.goto(&format!("{ui}#/cluster"));
    b.wait_until("three members", |b| texts(b, "#members tr.member").len() == 3);
    let roles = texts(&b, "#members td.role");
    assert_eq!(roles.iter().filter(|r| *r == "leader").count(), 1, "{roles:?}");
    let sizes = texts(&b, "#members td.size");
    assert!(sizes.len() == 3 && sizes.iter().all(|s| s.ends_with(" KiB")), "{sizes:?}");
    assert!(texts(&b, "#members td.health").iter().all(|h| h == "ok"));
    assert!(text(&b, "#talking-to").contains(&format!("member {}", nodes[0].id)));
    let rev = put(&rt, &admin, "app/live", b"1");
    b.wait_until("the live revision", |b| text(b, "#live-revision") == rev.to_string());
    b.screenshot(&shots().join("cluster.png"));

    // A token that may only read app/: the UI shows it and offers no writes.
    let reader = rt
        .block_on(admin.create_token(&TokenSpec {
            name: "reader".into(),
            read: vec!["app/".into()],
            ..Default::default()
        }))
        .expect("token")
        .token;
    b.find("#token-forget").click();
    b.find("#token-input").send_keys(&reader);
    b.find("#token-save").click();
    b.wait_until("the reader token", |b| text(b, "#whoami").contains("token reader"));
    b.goto(&format!("{ui}#/key/app/db.toml"));
    b.wait_until("the value", |b| text(b, "#value").contains("db1"));
    assert!(exists(&b, "#read-only") && !enabled(&b, "#edit") && !enabled(&b, "#delete"), "{}", b.page_text());
}

#[test]
fn with_auth_all_the_ui_asks_for_a_token_and_no_ui_turns_it_off() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let off = Kvd::bootstrap(&["--no-ui"]);
    let r = rt.block_on(reqwest::get(format!("{}/ui/", off.url))).expect("get");
    assert_eq!(r.status(), 404, "--no-ui still serves the UI");
    let on = Kvd::bootstrap(&["--auth", "all"]);
    let r = rt.block_on(reqwest::get(format!("{}/ui/app.js", on.url))).expect("get");
    assert_eq!(r.status(), 200, "the UI's files need no token");
    let csp = r.headers()["content-security-policy"].to_str().expect("ascii").to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");

    let Some(b) = Browser::start() else { return };
    put(&rt, &on.client_with(Some(&on.admin_token())), "app/secret", b"s3cret");
    b.goto(&format!("{}/ui/#/browse/app/", on.url));
    b.wait_until("the request for a token", |b| exists(b, "#need-token"));
    assert!(!b.page_text().contains("secret"), "{}", b.page_text());
    b.find("#token-input").send_keys(&on.admin_token());
    b.find("#token-save").click();
    b.wait_until("the keys", |b| exists(b, "tr.entry[data-key='app/secret']"));
}

/// A page on another site can make a browser POST a plain-text body
/// without asking first; on a cluster without tokens that would be a
/// write. Such writes are refused, and programs (no Origin) are not.
#[test]
fn writes_a_browser_sends_from_another_site_are_refused() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let k = Kvd::bootstrap(&[]);
    let c = k.client();
    let txn = r#"{"success":[{"op":"put","key":"app/x","value":"from elsewhere"}]}"#;
    let host = k.url.trim_start_matches("http://").to_owned();
    let post = |extra: &[(&str, &str)]| {
        let mut r = reqwest::Client::new().post(format!("{}/v1/txn", k.url)).header("content-type", "text/plain");
        for (name, v) in extra {
            r = r.header(*name, *v);
        }
        rt.block_on(async { r.body(txn).send().await.expect("post").status().as_u16() })
    };
    assert_eq!(post(&[("origin", "http://evil.example")]), 403);
    assert_eq!(post(&[("sec-fetch-site", "cross-site"), ("origin", "http://evil.example")]), 403);
    let del = rt
        .block_on(
            reqwest::Client::new()
                .delete(format!("{}/v1/kv/app?recursive=true", k.url))
                .header("origin", "null")
                .send(),
        )
        .expect("delete");
    assert_eq!(del.status(), 403);
    assert_eq!(value(&rt, &c, "app/x"), None, "a refused write wrote");
    // The UI's own requests (same origin) and programs (no Origin) write.
    assert_eq!(post(&[("origin", &format!("http://{host}")), ("sec-fetch-site", "same-origin")]), 200);
    assert_eq!(value(&rt, &c, "app/x").as_deref(), Some("from elsewhere"));
    put(&rt, &c, "app/y", b"kvctl");
    assert_eq!(post(&[]), 200);
}
