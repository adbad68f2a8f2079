//! The kvctl binary: data commands through the client crate, exit codes.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use kv_tests::{bin, Kvd};

fn kvctl(k: &Kvd, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(bin("kvctl"))
        .arg("--endpoints")
        .arg(&k.url)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kvctl");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or_default()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("kvctl output")
}

#[test]
fn data_commands_work_end_to_end() {
    let k = Kvd::bootstrap(&[]);
    let out = kvctl(&k, &["put", "app/name", "demo"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let blob: Vec<u8> = (0..=255u8).collect();
    let out = kvctl(&k, &["put", "app/blob", "-"], Some(&blob));
    assert!(out.status.success());
    let out = kvctl(&k, &["get", "app/blob"], None);
    assert_eq!(out.stdout, blob, "get writes the raw bytes");
    let out = kvctl(&k, &["get", "app/name"], None);
    assert_eq!(out.stdout, b"demo");

    let out = kvctl(&k, &["ls", "app"], None);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("KIND"), "{table}");
    assert!(table.contains("app/name") && table.contains("app/blob"), "{table}");
    let out = kvctl(&k, &["ls", "-o", "json", "-r"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(2));

    let out = kvctl(&k, &["del", "app", "--recursive"], None);
    assert!(out.status.success());
    let out = kvctl(&k, &["get", "app/name"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[test]
fn exit_codes_follow_the_contract() {
    let k = Kvd::bootstrap(&[]);
    assert_eq!(kvctl(&k, &["frobnicate"], None).status.code(), Some(2));
    assert_eq!(kvctl(&k, &["get"], None).status.code(), Some(2));
    let out = kvctl(&k, &["put", "a//b", "x"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty segment"));
    // Nothing listens on port 1: a one-line reason and exit 1.
    let out =
        Command::new(bin("kvctl")).args(["--endpoints", "http://127.0.0.1:1", "get", "a"]).output().expect("run kvctl");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no endpoint could be reached"), "{err}");
}
