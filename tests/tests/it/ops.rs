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

/// The repository's man pages.
fn man_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../man")
}

/// Pages of the system the kv pages may name: each comes with a package
/// kv's packages depend on or every Debian system has (manpages-dev,
/// coreutils, tar, util-linux, mount, systemd).
const SYSTEM_PAGES: &[&str] = &[
    "chgrp(1)",
    "chmod(1)",
    "chown(1)",
    "mkfifo(1)",
    "mknod(1)",
    "tar(1)",
    "bind(2)",
    "close(2)",
    "fstat(2)",
    "fsync(2)",
    "link(2)",
    "open(2)",
    "fallocate(2)",
    "ftruncate(2)",
    "posix_fallocate(3)",
    "read(2)",
    "write(2)",
    "fstab(5)",
    "systemd.mount(5)",
    "systemd.service(5)",
    "mount(8)",
    "umount(8)",
];

#[test]
fn man_pages_refer_only_to_pages_that_exist() {
    let refs = kv_tests::man::page_refs(&man_dir());
    assert!(refs.iter().any(|(_, n, s)| n == "kvctl-watch" && s == "1"), "the parser found no references: {refs:?}");
    let mut missing = Vec::new();
    for (page, name, sect) in refs {
        let ours = man_dir().join(format!("{name}.{sect}")).exists();
        if !ours && !SYSTEM_PAGES.contains(&format!("{name}({sect})").as_str()) {
            missing.push(format!("{page} names {name}({sect})"));
        }
    }
    assert!(missing.is_empty(), "references to pages that do not exist: {missing:#?}");
}

#[test]
fn command_pages_have_exit_status_and_environment() {
    for page in ["kvd.8", "kvctl.1", "kvctl-watch.1", "kvfs.8"] {
        let text = std::fs::read_to_string(man_dir().join(page)).expect("read page");
        for section in ["EXIT STATUS", "ENVIRONMENT", "SEE ALSO"] {
            let found = text.lines().any(|l| l == format!(".SH {section}") || l == format!(".SH \"{section}\""));
            assert!(found, "{page} has no {section} section");
        }
    }
}

/// The shipped monitoring files.
fn monitoring() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/monitoring")
}

fn promtool(args: &[&str], input: Option<&std::path::Path>) -> String {
    let mut cmd = Command::new("promtool");
    cmd.args(args).current_dir(monitoring());
    if let Some(f) = input {
        cmd.arg(f);
    }
    let out = cmd.output().expect("run promtool (Debian package prometheus; tests/run.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

/// `promtool check rules` accepts the alert rules, and their unit tests
/// (each alert fires on the series that should raise it, and only there)
/// pass.
#[test]
fn the_alert_rules_pass_promtool() {
    let out = promtool(&["check", "rules", "kv-alerts.yml"], None);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["test", "rules", "kv-alerts.test.yml"], None);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every query of the dashboard, its variables filled in.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(monitoring().join("kv-dashboard.json")).expect("read the dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel without targets: {panel}"));
        assert!(!targets.is_empty(), "panel without queries: {}", panel["title"]);
        for t in targets {
            let e = t["expr"].as_str().expect("expr").to_owned();
            exprs.push(e.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$mountpoint", ".*"));
        }
    }
    exprs
}

/// Each dashboard query is valid PromQL: promtool parses them as recording
/// rules.
#[test]
fn the_dashboard_queries_parse() {
    let exprs = dashboard_queries();
    assert!(exprs.len() >= 20, "{exprs:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(e).expect("json")
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).expect("write");
    let out = promtool(&["check", "rules"], Some(&file));
    assert!(out.contains(&format!("{} rules found", exprs.len())), "{out}");
}

/// Metric names a PromQL expression uses (identifiers of kv's, kvfs's and
/// the process's series).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    let mut in_string = false;
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if ["kv_", "kvfs_", "process_"].iter().any(|p| word.starts_with(p)) {
            let base = ["_bucket", "_sum", "_count"].iter().fold(word.as_str(), |w, s| w.strip_suffix(s).unwrap_or(w));
            names.push(base.to_owned());
        }
        word.clear();
    }
    names
}

/// Every series the alert rules and the dashboard use.
pub fn used_metric_names() -> std::collections::BTreeSet<String> {
    let rules = std::fs::read_to_string(monitoring().join("kv-alerts.yml")).expect("read the rules");
    let mut names: std::collections::BTreeSet<String> = rules.lines().flat_map(metric_names).collect();
    names.extend(dashboard_queries().iter().flat_map(|e| metric_names(e)));
    names
}

#[test]
fn metric_names_are_found_in_queries() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(kv_fsync_seconds_bucket{instance=~"kv_x"}[5m]))) > kvfs_y"#
        ),
        ["kv_fsync_seconds", "kvfs_y"]
    );
    let used = used_metric_names();
    for n in ["kv_raft_has_leader", "kv_tls_cert_not_after_seconds", "kvfs_staleness_seconds", "process_open_fds"] {
        assert!(used.contains(n), "{n} not in {used:?}");
    }
}

#[test]
fn a_mount_with_log_format_json_writes_one_object_per_line() {
    let k = Kvd::bootstrap(&[]);
    let mut m = kv_tests::Mount::start(&format!("{}/app", k.url), &["log_format=json"]);
    m.sh_ok("echo 1 > f && cat f");
    m.stop();
    assert_json_lines(&m.log_text());
}
