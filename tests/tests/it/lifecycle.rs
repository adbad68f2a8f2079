//! kvd under a service manager: the notifications systemd reads (READY,
//! WATCHDOG, STATUS, STOPPING) and SIGHUP, which reads the certificate, its
//! key, the CA and the JWKS again without a restart.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use kv_client::{Error, ErrorCode};
use kv_tests::{Kvd, Pki};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How long a change may take to show after a signal.
const SETTLE: Duration = Duration::from_secs(20);

/// Polls `f` until it returns `Some`, for at most [`SETTLE`].
fn poll<T>(what: &str, k: &Kvd, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}:\n{}", k.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The end-entity certificate (DER) of a PEM file.
fn der(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem).expect("PEM certificate").to_vec()
}

/// The certificate a TLS listener at `url` serves to a client trusting
/// `ca` (and showing `identity`, a certificate and key, if given), or why
/// the handshake failed.
fn served(url: &str, ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> Result<Vec<u8>, String> {
    let host = url.trim_start_matches("https://");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA") {
        roots.add(c.expect("CA certificate")).expect("add CA");
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let cfg = match identity {
        Some((crt, key)) => {
            let certs = CertificateDer::pem_file_iter(crt).expect("cert").map(|c| c.expect("cert")).collect();
            b.with_client_auth_cert(certs, PrivateKeyDer::from_pem_file(key).expect("key")).expect("identity")
        }
        None => b.with_no_client_auth(),
    };
    let name = ServerName::try_from("localhost").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("connection");
    let mut sock = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    // NOTE: in TLS 1.3 the server checks the client's certificate after the
    // client's handshake is done; a refusal comes with the first read.
    if identity.is_some() {
        use std::io::{Read, Write};
        let mut s = rustls::Stream::new(&mut conn, &mut sock);
        s.write_all(b"GET /peer/v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut first = [0u8; 1];
        s.read_exact(&mut first).map_err(|e| e.to_string())?;
    }
    let cert = conn.peer_certificates().and_then(|c| c.first()).ok_or("no certificate")?;
    Ok(cert.to_vec())
}

/// Replaces `to` with a copy of `from` in one step, as a deployment tool
/// does (a reader sees the old file or the new one, never half of one).
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, to).expect("rename");
}

/// Replaces `to` with `bytes` in one step.
fn replace_with(bytes: &[u8], to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, to).expect("rename");
}

/// How many times `needle` occurs in the node's log.
fn logged(k: &Kvd, needle: &str) -> usize {
    k.log_text().matches(needle).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_serves_a_rotated_certificate_and_keeps_it_when_the_new_files_are_broken() {
    let pki = Pki::new("kv-test-ca");
    let (a, b, client) = (pki.node("a"), pki.node("b"), pki.node("client"));
    let dir = tempfile::tempdir().expect("tempdir");
    let (crt, key, ca) = (dir.path().join("node.crt"), dir.path().join("node.key"), dir.path().join("ca.crt"));
    replace(&a.0, &crt);
    replace(&a.1, &key);
    replace(&pki.ca, &ca);
    let s = |p: &Path| p.display().to_string();
    let args = ["--tls-cert", &s(&crt), "--tls-key", &s(&key), "--tls-ca", &s(&ca)];
    let k = Kvd::bootstrap(&args);
    let pid = k.pid();
    let (url, peer) = (k.url.clone(), k.peer_url.clone());
    assert_eq!(served(&url, &ca, None), Ok(der(&a.0)), "the client port serves A");
    assert_eq!(served(&peer, &ca, Some(&client)), Ok(der(&a.0)), "the peer port serves A");
    let metrics = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).expect("CA")).expect("CA"))
        .build()
        .expect("client")
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let now = kv_client::clock::now_s() as i64;
    for listener in ["client", "peer"] {
        let line = format!("kv_tls_cert_not_after_seconds{{listener=\"{listener}\"}} ");
        let t: i64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .unwrap_or_else(|| panic!("no {line}in\n{metrics}"))
            .parse()
            .expect("seconds");
        // NOTE: the test CA's certificates live two days.
        assert!((now + 86_400..=now + 3 * 86_400).contains(&t), "{listener}: {t}, now {now}");
    }

    // New files alone change nothing; SIGHUP does.
    replace(&b.0, &crt);
    replace(&b.1, &key);
    assert_eq!(served(&url, &ca, None), Ok(der(&a.0)), "A until SIGHUP");
    k.hangup();
    poll("B is not served after SIGHUP", &k, || (served(&url, &ca, None) == Ok(der(&b.0))).then_some(()));
    assert_eq!(served(&peer, &ca, Some(&client)), Ok(der(&b.0)), "the peer port serves B too");
    assert_eq!(logged(&k, "reloaded the TLS certificate"), 1);

    // Files that cannot be used are refused; B stays, and so does the node.
    let broken: [(&str, &dyn Fn()); 3] = [
        ("a malformed certificate", &|| replace_with(b"-----BEGIN CERTIFICATE-----\nnot base64\n", &crt)),
        ("a key that does not match", &|| replace(&a.0, &crt)),
        ("a missing key", &|| std::fs::remove_file(&key).expect("rm")),
    ];
    for (n, (why, break_it)) in broken.into_iter().enumerate() {
        replace(&b.0, &crt);
        replace(&b.1, &key);
        break_it();
        k.hangup();
        poll(&format!("{why}: no reload failure logged"), &k, || {
            (logged(&k, "TLS reload failed") == n + 1).then_some(())
        });
        assert_eq!(served(&url, &ca, None), Ok(der(&b.0)), "{why}: B is still served");
        assert_eq!(served(&peer, &ca, Some(&client)), Ok(der(&b.0)), "{why}: the peer port too");
    }
    assert_eq!(k.pid(), pid);
    k.client().put("app/x", "still up", &Default::default()).await.expect("the node still serves");

    // A new CA: the peer port refuses its certificates until the CA file
    // names it and SIGHUP reads it.
    let next = Pki::new("kv-test-ca-next");
    let next_client = next.node("client");
    replace(&b.0, &crt);
    replace(&b.1, &key);
    assert!(served(&peer, &ca, Some(&next_client)).is_err(), "a certificate of an unknown CA");
    let bundle = [std::fs::read(&pki.ca).expect("CA"), std::fs::read(&next.ca).expect("CA")].concat();
    replace_with(&bundle, &ca);
    k.hangup();
    poll("the new CA is not trusted after SIGHUP", &k, || served(&peer, &ca, Some(&next_client)).ok());
    assert_eq!(served(&peer, &ca, Some(&client)), Ok(der(&b.0)), "the old CA's certificates still pass");
}

/// A JWT for `claims` signed by `key` (EdDSA, kid `kid`).
fn jwt(key: &ring::signature::Ed25519KeyPair, kid: &str, claims: serde_json::Value) -> String {
    let enc = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let msg = format!("{}.{}", enc(serde_json::json!({"alg": "EdDSA", "kid": kid, "typ": "JWT"})), enc(claims));
    format!("{msg}.{}", URL_SAFE_NO_PAD.encode(key.sign(msg.as_bytes()).as_ref()))
}

/// A JWKS holding the public keys given, by kid.
fn jwks(keys: &[(&str, &ring::signature::Ed25519KeyPair)]) -> String {
    use ring::signature::KeyPair;
    let keys: Vec<_> = keys
        .iter()
        .map(|(kid, k)| {
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(k.public_key().as_ref())})
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reads_a_rotated_jwks() {
    use ring::signature::Ed25519KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let new_key = || Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).expect("key").as_ref());
    let (old, new) = (new_key().expect("key"), new_key().expect("key"));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("jwks.json");
    replace_with(jwks(&[("k1", &old)]).as_bytes(), &file);
    let config = dir.path().join("kvd.toml");
    std::fs::write(
        &config,
        format!(
            "[jwt]\njwks_file = {file:?}\nissuer = \"https://idp.test\"\naudience = \"kv\"\n\
             [jwt.roles.readers]\nread = [\"app\"]\n"
        ),
    )
    .expect("config");
    let k = Kvd::bootstrap(&["--auth", "all", "--config", config.to_str().expect("utf-8")]);
    let admin = k.client_with(Some(&k.admin_token()));
    admin.put("app/x", "1", &Default::default()).await.expect("put");
    let now = kv_client::clock::now_s();
    let claims = serde_json::json!({"iss": "https://idp.test", "aud": "kv", "sub": "ann", "iat": now - 10,
        "exp": now + 600, "kv_roles": ["readers"]});
    let by_old = k.client_with(Some(&jwt(&old, "k1", claims.clone())));
    let by_new = k.client_with(Some(&jwt(&new, "k2", claims)));
    let code = |r: Result<Option<kv_client::Value>, Error>| r.map(|_| ()).map_err(|e| e.code().cloned());
    assert_eq!(code(by_old.get("app/x").await), Ok(()));
    assert_eq!(code(by_new.get("app/x").await), Err(Some(ErrorCode::Unauthorized)), "before the issuer rotates");

    // The issuer publishes the new key and retires the old one.
    replace_with(jwks(&[("k2", &new)]).as_bytes(), &file);
    assert_eq!(code(by_new.get("app/x").await), Err(Some(ErrorCode::Unauthorized)), "before SIGHUP");
    k.hangup();
    let deadline = Instant::now() + SETTLE;
    while code(by_new.get("app/x").await).is_err() {
        assert!(Instant::now() < deadline, "the new key is refused after SIGHUP:\n{}", k.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code(by_old.get("app/x").await), Err(Some(ErrorCode::Unauthorized)), "the retired key");
    assert!(k.log_text().contains("reloaded the JWKS"), "{}", k.log_text());

    // A broken JWKS is refused and the keys read before stay.
    replace_with(b"{\"keys\": [", &file);
    k.hangup();
    poll("no JWKS reload failure logged", &k, || k.log_text().contains("JWKS reload failed").then_some(()));
    assert_eq!(code(by_new.get("app/x").await), Ok(()), "the keys read before stay");
}

/// Notifications a fake systemd received on its socket.
struct Systemd {
    sock: UnixDatagram,
    seen: Vec<String>,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Systemd {
    fn new() -> Systemd {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        Systemd { sock, seen: Vec::new(), _dir: dir, path }
    }

    /// Reads notifications until all of them so far satisfy `f`, for at
    /// most [`SETTLE`].
    fn wait_until(&mut self, what: &str, k: &Kvd, f: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + SETTLE;
        let mut buf = [0u8; 4096];
        while !f(&self.seen) {
            assert!(Instant::now() < deadline, "{what}; got {:?}\n{}", self.seen, k.log_text());
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    /// How many keepalives it got.
    fn keepalives(seen: &[String]) -> usize {
        seen.iter().filter(|m| *m == "WATCHDOG=1").count()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_hears_ready_status_watchdog_keepalives_and_stopping() {
    let mut systemd = Systemd::new();
    let data = tempfile::tempdir().expect("tempdir");
    let socket = systemd.path.display().to_string();
    // NOTE: WATCHDOG_USEC without WATCHDOG_PID applies to whoever reads it.
    let env = [("NOTIFY_SOCKET", socket.as_str()), ("WATCHDOG_USEC", "400000")];
    let mut k = Kvd::bootstrap_on(data.path().join("data"), &env, &[]);
    systemd.wait_until("no READY=1", &k, |s| s.iter().any(|m| m == "READY=1"));
    systemd.wait_until("no leader status", &k, |s| s.iter().any(|m| m.starts_with("STATUS=leader, term ")));
    systemd.wait_until("no watchdog keepalives", &k, |s| Systemd::keepalives(s) >= 3);
    let rev = k.client().put("app/x", "1", &Default::default()).await.expect("put").revision;
    let want = format!(", revision {rev}");
    systemd.wait_until("the status line does not follow the revision", &k, |s| {
        s.iter().any(|m| m.starts_with("STATUS=leader, term ") && m.ends_with(&want))
    });

    // A stuck disk wedges the Raft core (its append waits for an fsync):
    // the process runs, but the keepalives stop.
    k.stall_fsync(true);
    let client = k.client();
    let stuck = tokio::spawn(async move { client.put("app/x", "2", &Default::default()).await });
    let before = systemd.seen.len();
    // NOTE: what is in flight when the core wedges may still be sent; then
    // a second of silence from the watchdog (2.5 of its periods).
    let deadline = Instant::now() + SETTLE;
    let mut silent_since = Instant::now();
    let mut buf = [0u8; 4096];
    while silent_since.elapsed() < Duration::from_secs(1) {
        let since = &systemd.seen[before..];
        let pings = Systemd::keepalives(since);
        assert!(Instant::now() < deadline, "{pings} keepalives with a wedged core, and more:\n{}", k.log_text());
        if let Ok(n) = systemd.sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg == "WATCHDOG=1" {
                silent_since = Instant::now();
            }
            systemd.seen.push(msg);
        }
    }
    assert_eq!(kv_tests::http_status(&format!("{}/health/live", k.url), None), Some(200), "the process runs");
    k.stall_fsync(false);
    let wedged = Systemd::keepalives(&systemd.seen);
    systemd.wait_until("no keepalive once the disk answers again", &k, |s| Systemd::keepalives(s) > wedged);
    stuck.await.expect("join").expect("the stalled put completes");

    assert_eq!(k.stop(), Some(0));
    systemd.wait_until("no STOPPING=1", &k, |s| s.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")));
}

/// A stop ends even where the memtables cannot be written out (the data
/// directory removed under the node; a full or failing disk): the journal
/// has every write, and the flush at a stop is bounded. Before, the node
/// waited inside the flush for ever, and `systemctl stop` until its kill.
#[test]
fn sigterm_stops_a_node_whose_data_dir_was_removed() {
    let mut k = Kvd::bootstrap(&[]);
    crate::put_sync(&k, "a", "1");
    std::fs::remove_dir_all(&k.data_dir).expect("remove the data dir");
    k.terminate();
    assert_eq!(k.wait_exit(Duration::from_secs(60)), Some(0), "kvd did not stop within a minute of SIGTERM");
}
