//! POSIX file kinds on a mount (FIFOs, unix sockets, devices) and files
//! unlinked while open: stored as entries of their kind, their I/O the
//! kernel's, travelling through the API, copies and other mounts.

use kv_tests::{Kvd, Mount};

use crate::http;
use crate::mount::eventually;

/// `stat` of `names` in the mount: name, kind, mode, device major:minor.
fn stat(m: &Mount, names: &str) -> String {
    m.sh_ok(&format!("stat -c '%n %F %a %t:%T' {names}"))
}

#[test]
fn fifos_sockets_and_devices_are_entries_of_their_kind_and_the_kernel_does_their_io() {
    let k = Kvd::bootstrap(&[]);
    let a = Mount::start(&format!("{}/app", k.url), &["allow_other,default_permissions"]);
    a.sh_ok("umask 022 && mkfifo -m 0640 pipe && mknod null c 1 3 && mknod -m 0600 disk b 259 70000 && mkdir d");
    // A unix socket is made by the server's bind, and reached through the
    // mount by its name.
    let talk = a.sh_ok(
        "python3 -c '
import socket, os
s = socket.socket(socket.AF_UNIX); s.bind(\"d/sock\"); os.chmod(\"d/sock\", 0o660); s.listen(1)
c = socket.socket(socket.AF_UNIX); c.connect(\"d/sock\")
conn, _ = s.accept(); c.sendall(b\"over the socket\"); print(conn.recv(100).decode())
'",
    );
    assert_eq!(talk.trim(), "over the socket");
    // A FIFO carries bytes between processes, both ends opened through the
    // mount.
    assert_eq!(a.sh_ok("(echo through the pipe > pipe &) ; cat pipe").trim(), "through the pipe");
    let want = "pipe fifo 640 0:0\nnull character special file 644 1:3\ndisk block special file 600 103:11170\n\
                d/sock socket 660 0:0\n";
    assert_eq!(stat(&a, "pipe null disk d/sock"), want);
    assert_eq!(a.sh_ok("stat -c '%s %h' pipe null disk d/sock"), "0 1\n0 1\n0 1\n0 1\n", "sizes and links");

    // The API shows their kinds, and a device's number as its value.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (key, kind, value) in [
        ("app/pipe", "fifo", ""),
        ("app/null", "char", "1:3"),
        ("app/disk", "block", "259:70000"),
        ("app/d/sock", "socket", ""),
    ] {
        let r = rt.block_on(http().get(format!("{}/v1/kv/{key}", k.url)).send()).expect("get");
        assert_eq!(r.headers().get("x-kv-kind").and_then(|v| v.to_str().ok()), Some(kind), "{key}");
        assert_eq!(rt.block_on(r.text()).expect("body"), value, "{key}");
    }

    // Another mount shows them, and they travel through cp -a and tar.
    let b = Mount::start(&format!("{}/app", k.url), &[]);
    eventually("the other mount shows them", || b.sh("stat d/sock").status.success());
    assert_eq!(stat(&b, "pipe null disk d/sock"), want);
    b.sh_ok("mkdir copy && cp -a pipe null disk copy/ && mkdir tarred && tar cf - pipe null disk | tar xf - -C tarred");
    let moved = |dir: &str| want.lines().take(3).map(|l| format!("{dir}/{l}\n")).collect::<String>();
    assert_eq!(stat(&b, "copy/pipe copy/null copy/disk"), moved("copy"));
    assert_eq!(stat(&b, "tarred/pipe tarred/null tarred/disk"), moved("tarred"));
    eventually("the first mount shows the copies", || a.sh("stat tarred/disk").status.success());
    assert_eq!(
        stat(&a, "copy/pipe copy/null copy/disk tarred/pipe tarred/null tarred/disk"),
        moved("copy") + &moved("tarred")
    );
    // Renamed, a FIFO stays one.
    a.sh_ok("mv pipe d/pipe2");
    eventually("the rename reaches the other mount", || b.sh("stat d/pipe2").status.success());
    assert_eq!(stat(&b, "d/pipe2"), "d/pipe2 fifo 640 0:0\n");
}

#[test]
fn a_bad_kind_or_device_number_through_the_api_is_refused_and_writes_nothing() {
    let k = Kvd::bootstrap(&[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let put = |key: &str, kind: &str, body: &str| {
        let r = rt
            .block_on(
                http().put(format!("{}/v1/kv/{key}", k.url)).header("x-kv-kind", kind).body(body.to_owned()).send(),
            )
            .expect("put");
        (r.status().as_u16(), rt.block_on(r.text()).expect("body"))
    };
    for (kind, body, want) in [
        ("pipe", "", "expected file, dir, symlink, fifo, socket, char or block"),
        ("fifo", "x", "a fifo entry has no value"),
        ("socket", "x", "a socket entry has no value"),
        ("char", "", "a char device needs its number as its value"),
        ("char", "1", "a char device needs its number as its value"),
        ("block", "4096:0", "major below 4096"),
        ("block", "8:1048576", "minor below 1048576"),
        ("char", "+1:3", "a char device needs its number"),
    ] {
        let (status, text) = put("bad/x", kind, body);
        assert_eq!(status, 400, "{kind} {body:?}: {text}");
        assert!(text.contains(want), "{kind} {body:?}: {text:?} lacks {want:?}");
    }
    for (op, want) in [
        (
            serde_json::json!({"op": "put", "key": "bad/y", "kind": "block", "value": "8"}),
            "a block device needs its number",
        ),
        (serde_json::json!({"op": "put", "key": "bad/y", "kind": "char"}), "a char device needs its number"),
        (serde_json::json!({"op": "put", "key": "bad/y", "kind": "symlink"}), "a symlink needs a target"),
    ] {
        let txn = serde_json::json!({ "success": [op] });
        let r = rt.block_on(http().post(format!("{}/v1/txn", k.url)).json(&txn).send()).expect("txn");
        assert_eq!(r.status().as_u16(), 400);
        let text = rt.block_on(r.text()).expect("body");
        assert!(text.contains(want), "{text:?} lacks {want:?}");
    }
    let list = rt.block_on(http().get(format!("{}/v1/list/bad/?recursive=true", k.url)).send()).expect("list");
    let list: serde_json::Value = rt.block_on(list.json()).expect("json");
    assert_eq!(list["entries"].as_array().map(Vec::len), Some(0), "something was written: {list}");
    // Good ones are taken; a value without a kind that a FIFO cannot hold
    // makes the entry a file.
    assert_eq!(put("good/dev", "char", "10:229").0, 200);
    assert_eq!(put("good/pipe", "fifo", "").0, 200);
    let r = rt.block_on(http().put(format!("{}/v1/kv/good/pipe", k.url)).body("content").send()).expect("put");
    assert_eq!(r.status().as_u16(), 200);
    let r = rt.block_on(http().get(format!("{}/v1/kv/good/pipe", k.url)).send()).expect("get");
    assert_eq!(r.headers().get("x-kv-kind").and_then(|v| v.to_str().ok()), Some("file"));
}

#[test]
fn a_file_unlinked_while_open_reads_on_through_its_descriptors_and_shows_no_links() {
    let k = Kvd::bootstrap(&[]);
    let m = Mount::start(&format!("{}/app", k.url), &[]);
    m.sh_ok("printf 'kept content' > f && printf 'old' > g && printf 'new' > g.tmp");
    let out = m.sh_ok(
        "python3 -c '
import os
r = os.open(\"f\", os.O_RDONLY); w = os.open(\"f\", os.O_RDWR)
print(os.fstat(r).st_nlink)
os.unlink(\"f\")
print(os.fstat(r).st_nlink, os.path.exists(\"f\"))
print(os.pread(r, 100, 0).decode())
os.pwrite(w, b\"KEPT\", 0)
print(os.pread(w, 100, 0).decode())
g = os.open(\"g\", os.O_RDONLY)
os.rename(\"g.tmp\", \"g\")
print(os.fstat(g).st_nlink, os.pread(g, 100, 0).decode())
'",
    );
    assert_eq!(out, "1\n0 False\nkept content\nKEPT content\n0 old\n");
    // Nothing of the unlinked file reached the cluster.
    assert_eq!(m.sh_ok("ls; cat g"), "g\nnew");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    assert!(rt.block_on(k.client().get("app/f")).expect("get").is_none());
    // A file deleted elsewhere (through the API) while open here reads on
    // too, and its descriptor shows no links once the mount has the delete.
    let out = m.sh_ok(&format!(
        "python3 -c '
import os, time, urllib.request
fd = os.open(\"g\", os.O_RDONLY)
urllib.request.urlopen(urllib.request.Request(\"{}/v1/kv/app/g\", method=\"DELETE\")).read()
deadline = time.monotonic() + 20
while os.path.exists(\"g\") and time.monotonic() < deadline:
    time.sleep(0.01)
print(os.path.exists(\"g\"), os.fstat(fd).st_nlink, os.pread(fd, 100, 0).decode())
'",
        k.url
    ));
    assert_eq!(out, "False 0 new\n");
}
