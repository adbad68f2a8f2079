//! Operations: log formats, shell completions, the shipped alert rules and
//! dashboard, and the man pages.

use std::process::Command;

use kv_tests::{bin, Kvd};

use crate::{kvctl, put_sync};

/// Every line kvd wrote parses as one JSON object with the fields a log
/// shipper indexes, and the node's own events are among them.
fn assert_json_lines(log: &str) {
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        for field in ["timestamp", "level", "target"] {
            assert!(v[field].is_string(), "no {field} in {line}");
        }
        assert!(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap_or("")), "{line}");
        // Fields are at the top level, not under "fields".
        assert!(v.get("fields").is_none(), "fields not flattened: {line}");
        if let Some(m) = v["message"].as_str() {
            messages.push(m.to_owned());
        }
    }
    assert!(messages.len() >= 2, "too few log lines with a message: {log}");
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let mut k = Kvd::bootstrap(&["--log-format", "json"]);
    put_sync(&k, "app/x", "1");
    k.stop();
    assert_json_lines(&k.log_text());
}

#[test]
fn log_format_json_from_the_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("kvd.toml");
    std::fs::write(&conf, "log_format = \"json\"\n").expect("write config");
    let mut k = Kvd::bootstrap(&["--config", conf.to_str().expect("utf-8")]);
    put_sync(&k, "app/x", "1");
    k.stop();
    assert_json_lines(&k.log_text());
}

#[test]
fn text_stays_the_default() {
    let mut k = Kvd::bootstrap(&[]);
    k.stop();
    let log = k.log_text();
    assert!(log.lines().any(|l| l.contains(" INFO ")), "{log}");
    assert!(log.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_err()), "{log}");
}

#[test]
fn a_bad_log_format_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = Command::new(bin("kvd"))
        .args(["--id", "1", "--bootstrap", "--log-format", "yaml", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run kvd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--log-format") && err.contains("json"), "{err}");
    assert!(!data.exists(), "kvd wrote its data dir");

    let conf = dir.path().join("kvd.toml");
    std::fs::write(&conf, "log_format = \"xml\"\n").expect("write config");
    let out = Command::new(bin("kvd"))
        .args(["--id", "1", "--bootstrap", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&conf)
        .output()
        .expect("run kvd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("log_format") && err.contains("xml"), "{err}");
    assert!(!data.exists(), "kvd wrote its data dir");
}

/// `kvctl completion bash`, sourced by bash, completes subcommands and
/// options (what the package installs is the same script).
#[test]
fn bash_completion_loads_and_completes() {
    let (code, script, err) = kvctl(&["completion", "bash"]);
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("kvctl.bash");
    std::fs::write(&file, script).expect("write completion");
    let complete = |line: &str| -> Vec<String> {
        let words: Vec<&str> = line.split(' ').collect();
        let script = format!(
            "set -e; source {}; complete -p kvctl >/dev/null; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; _kvctl kvctl '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display(),
            words.join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out = Command::new("bash").arg("-c").arg(&script).output().expect("run bash");
        assert!(out.status.success(), "bash: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    };
    let subs = complete("kvctl ge");
    assert!(subs.contains(&"get".to_owned()), "{subs:?}");
    let opts = complete("kvctl watch --");
    assert!(opts.contains(&"--prefix".to_owned()) || opts.contains(&"--wait".to_owned()), "{opts:?}");
}
