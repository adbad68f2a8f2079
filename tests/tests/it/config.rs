//! kvd's configuration: flags, `--config` TOML (unknown keys refused) and
//! `KVD_*` environment variables.

use kv_tests::Kvd;

use crate::{http, status_and_code};

#[tokio::test]
async fn config_file_and_environment_are_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("kvd.toml");
    std::fs::write(&cfg, "max_value_size = 100\nhistory_revisions = 1000\n").expect("write");
    let k = Kvd::bootstrap(&["--config", cfg.to_str().expect("utf-8 path")]);
    let r = http().put(format!("{}/v1/kv/a", k.url)).body(vec![b'x'; 101]).send().await.expect("put");
    assert_eq!(status_and_code(r).await, (413, "too_large".into()));
    let r = http().put(format!("{}/v1/kv/a", k.url)).body(vec![b'x'; 100]).send().await.expect("put");
    assert_eq!(r.status(), 200);
}

/// Runs kvd on a data dir under `dir` with `args` and `env`, to its exit:
/// its exit code and what it said on stderr.
fn run_kvd(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = std::process::Command::new(kv_tests::bin("kvd"))
        .args(["--id", "1", "--client-addr", "127.0.0.1:0", "--peer-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run kvd");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn unknown_config_keys_and_bad_settings_stop_kvd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("kvd.toml");
    std::fs::write(&cfg, "max_value_size = 100\nmax_vaule_size = 5\n").expect("write");
    let run = |args: &[&str], env: &[(&str, &str)]| run_kvd(dir.path(), args, env);
    let (code, err) = run(&["--config", cfg.to_str().expect("utf-8")], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("max_vaule_size"), "{err}");
    let (code, err) = run(&[], &[("KVD_ELECTION_TIMEOUT_MS", "100"), ("KVD_HEARTBEAT_MS", "100")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("election timeout"), "{err}");
    let (code, err) = run(&[], &[("KVD_MAX_VALUE_SIZE", "lots")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(!dir.path().join("data/db").exists(), "a refused start must not create a database");

    // Security settings: incomplete or unreadable TLS files, a broken JWKS,
    // an unknown auth mode.
    let (code, err) = run(&["--tls-cert", "/nonexistent.crt"], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("all three"), "{err}");
    let missing = ["--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key", "--tls-ca", "/nonexistent.ca"];
    let (code, err) = run(&missing, &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot read certificates from /nonexistent.crt"), "{err}");
    let (code, err) = run(&["--auth", "some"], &[]);
    assert_eq!(code, Some(2), "{err}");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).expect("write");
    std::fs::write(&cfg, format!("[jwt]\njwks_file = {jwks:?}\nissuer = \"i\"\naudience = \"a\"\n")).expect("write");
    let (code, err) = run(&["--config", cfg.to_str().expect("utf-8")], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("unsupported key type oct"), "{err}");
    std::fs::write(&jwks, "not json").expect("write");
    let (code, err) = run(&["--config", cfg.to_str().expect("utf-8")], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not a JWKS document"), "{err}");
    assert!(!dir.path().join("data/db").exists(), "a refused start must not create a database");
}

#[test]
fn a_dedup_window_of_zero_negative_or_garbage_stops_kvd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("kvd.toml");
    let run = |args: &[&str], env: &[(&str, &str)]| run_kvd(dir.path(), args, env);
    let (code, err) = run(&["--dedup-window-ms", "0"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("dedup_window_ms must be from 1000 (1 s) to"), "{err}");
    for bad in ["-5", "ten minutes"] {
        let (code, err) = run(&[], &[("KVD_DEDUP_WINDOW_MS", bad)]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("--dedup-window-ms"), "{err}");
    }
    std::fs::write(&cfg, "dedup_window_ms = \"10m\"\n").expect("write");
    let (code, err) = run(&["--config", cfg.to_str().expect("utf-8")], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("dedup_window_ms"), "{err}");
    assert!(!dir.path().join("data/db").exists(), "a refused start must not create a database");
}

#[test]
fn listening_beyond_loopback_without_tls_is_warned_about() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(kv_tests::bin("kvd"))
        .args(["--id", "1", "--bootstrap", "--client-addr", "0.0.0.0:0", "--peer-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kvd");
    let stderr = child.stderr.take().expect("stderr");
    // NOTE: the process is killed below whatever the outcome; lines are read
    // until the node says it is serving (the warning comes before that).
    let mut warned = false;
    for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
        warned |= line.contains("without TLS");
        if line.contains("serving") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no warning about a non-loopback listener without TLS");
}
