//! DESIGN.md §10: tokens with per-prefix rights, revocation, JWTs, TLS with
//! mutual authentication on the peer port.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use kv_client::{AddMember, Client, Compare, Error, ErrorCode, TokenSpec, TxnOp, TxnRequest};
use kv_tests::net::Net;
use kv_tests::{bin, Kvd, Mount, Pki};

use crate::{cluster_of_three, http, kvctl};

fn spec(name: &str, read: &[&str], write: &[&str]) -> TokenSpec {
    TokenSpec {
        name: name.into(),
        read: read.iter().map(|s| s.to_string()).collect(),
        write: write.iter().map(|s| s.to_string()).collect(),
        admin: false,
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> ErrorCode {
    r.expect_err("must be refused").code().cloned().expect("an HTTP refusal")
}

#[tokio::test]
async fn tokens_grant_reads_and_writes_by_prefix() {
    let k = Kvd::bootstrap(&["--auth", "all"]);
    let admin_token = k.admin_token();
    let meta = std::fs::metadata(k.data_dir.join("admin-token")).expect("admin-token");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
    let admin = k.client_with(Some(&admin_token));
    admin.put("app/x", "1", &Default::default()).await.expect("admin writes");
    admin.put("db/x", "secret", &Default::default()).await.expect("admin writes");

    // No token, or a wrong one: 401 everywhere but health.
    let anon = k.client();
    assert_eq!(code(anon.get("app/x").await), ErrorCode::Unauthorized);
    assert_eq!(code(k.client_with(Some("kv_wrong")).get("app/x").await), ErrorCode::Unauthorized);
    assert_eq!(code(anon.cluster().await), ErrorCode::Unauthorized);
    assert_eq!(http().get(format!("{}/metrics", k.url)).send().await.expect("metrics").status(), 401);
    assert_eq!(http().get(format!("{}/health/ready", k.url)).send().await.expect("ready").status(), 200);

    let reader_secret = admin.create_token(&spec("reader", &["app"], &[])).await.expect("create").token;
    let writer_secret = admin.create_token(&spec("app-writer", &[], &["app"])).await.expect("create").token;
    assert_eq!(code(admin.create_token(&spec("reader", &["x"], &[])).await), ErrorCode::Exists, "names are unique");
    assert_eq!(code(admin.create_token(&spec("bad name", &["x"], &[])).await), ErrorCode::BadRequest);
    assert_eq!(code(admin.create_token(&spec("nothing", &[], &[])).await), ErrorCode::BadRequest);
    assert_eq!(code(admin.create_token(&spec("dots", &["a/../b"], &[])).await), ErrorCode::InvalidKey);
    let reader = k.client_with(Some(&reader_secret));
    let writer = k.client_with(Some(&writer_secret));

    // The reader reads app/ and nothing else, and writes nothing.
    assert_eq!(reader.get("app/x").await.expect("read").expect("exists").value, "1");
    assert_eq!(code(reader.get("db/x").await), ErrorCode::Forbidden);
    assert_eq!(code(reader.put("app/x", "2", &Default::default()).await), ErrorCode::Forbidden);
    assert_eq!(code(reader.delete("app/x", false, None).await), ErrorCode::Forbidden);
    let all = kv_client::ListOptions { recursive: true, values: true, ..Default::default() };
    let root = reader.list("", &all).await.expect("filtered list");
    let keys: Vec<String> = root.entries.into_iter().map(|e| e.key).collect();
    assert_eq!(keys, vec!["app/x".to_owned()], "db/ stays hidden");
    let top = reader.list("", &Default::default()).await.expect("filtered list");
    assert_eq!(top.entries.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), vec!["app"]);
    assert_eq!(code(reader.list("db", &Default::default()).await), ErrorCode::Forbidden);
    assert_eq!(code(reader.watch("db", None).await), ErrorCode::Forbidden);
    reader.cluster().await.expect("any valid token sees the members");
    assert_eq!(code(reader.snapshot_probe().await), ErrorCode::Forbidden);
    admin.snapshot_probe().await.expect("admin takes snapshots");

    // A transaction touching a forbidden key is refused whole.
    let txn = TxnRequest {
        compare: vec![Compare::key_exists("db/x", true)],
        success: vec![TxnOp::put("app/y", "from-txn")],
        failure: vec![],
    };
    assert_eq!(code(writer.txn(&txn).await), ErrorCode::Forbidden);
    let txn = TxnRequest {
        compare: vec![],
        success: vec![TxnOp::put("app/y", "y"), TxnOp::put("db/y", "y")],
        failure: vec![],
    };
    assert_eq!(code(writer.txn(&txn).await), ErrorCode::Forbidden);
    assert!(admin.get("app/y").await.expect("get").is_none(), "nothing of a refused txn is written");
    assert!(admin.get("db/y").await.expect("get").is_none());
    writer.put("app/y", "ok", &Default::default()).await.expect("writer writes app/");
    assert_eq!(code(writer.put("db/y", "no", &Default::default()).await), ErrorCode::Forbidden);
    assert_eq!(code(writer.delete("", true, None).await), ErrorCode::Forbidden, "a recursive delete beyond the grant");

    // A watch on the whole keyspace never carries what the token cannot read.
    let mut w = reader.watch("", None).await.expect("partial watch");
    admin.put("db/z", "hidden", &Default::default()).await.expect("put");
    admin.put("app/w", "shown", &Default::default()).await.expect("put");
    let ev = tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("event").expect("ok").expect("some");
    assert_eq!(ev.key, "app/w");

    // Admin-only: membership, snapshots, tokens.
    let add = AddMember { id: 9, peer_url: "http://127.0.0.1:1".into(), client_url: None, learner: true };
    assert_eq!(code(writer.add_member(&add).await), ErrorCode::Forbidden);
    assert_eq!(code(writer.list_tokens().await), ErrorCode::Forbidden);
    assert_eq!(code(writer.create_token(&spec("mine", &[""], &[])).await), ErrorCode::Forbidden);
    let me = writer.whoami().await.expect("whoami");
    assert_eq!((me.mode.as_str(), me.name.as_deref()), ("all", Some("app-writer")));

    // Denials are logged with the token's name; secrets never are.
    let log = k.log_text();
    let denied = |who: &str| log.lines().any(|l| l.contains("request denied") && l.contains(&format!("who=\"{who}\"")));
    assert!(denied("reader") && denied("app-writer") && denied("anonymous"), "{log}");
    assert!(log.lines().any(|l| l.contains("token created") && l.contains("token=\"reader\"")), "{log}");
    for secret in [&admin_token, &reader_secret, &writer_secret] {
        assert!(!log.contains(secret.as_str()), "a token leaked into the log");
    }
}

trait SnapshotProbe {
    async fn snapshot_probe(&self) -> Result<(), Error>;
}

impl SnapshotProbe for Client {
    /// Status of `GET /v1/snapshot` as an error (admin only).
    async fn snapshot_probe(&self) -> Result<(), Error> {
        let r = self.send(kv_client::Method::GET, "/v1/snapshot", |r| r).await?;
        Error::check(r).await.map(|_| ())
    }
}

#[tokio::test]
async fn writes_mode_keeps_reads_open() {
    let k = Kvd::bootstrap(&["--auth", "writes"]);
    let admin = k.client_with(Some(&k.admin_token()));
    admin.put("app/x", "1", &Default::default()).await.expect("admin writes");
    let anon = k.client();
    assert_eq!(anon.get("app/x").await.expect("open read").expect("exists").value, "1");
    anon.cluster().await.expect("open status");
    assert_eq!(code(anon.put("app/x", "2", &Default::default()).await), ErrorCode::Unauthorized);
    assert_eq!(code(anon.snapshot_probe().await), ErrorCode::Unauthorized);
    let reader = admin.create_token(&spec("r", &["app"], &[])).await.expect("create").token;
    let reader = k.client_with(Some(&reader));
    assert_eq!(reader.get("db/none").await.expect("reads stay open"), None);
    assert_eq!(code(reader.put("app/x", "2", &Default::default()).await), ErrorCode::Forbidden);
    assert_eq!(admin.get("app/x").await.expect("get").expect("exists").value, "1", "nothing was written");
}

#[tokio::test]
async fn kvctl_manages_tokens_and_sends_them() {
    let k = Kvd::bootstrap(&["--auth", "all"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let admin_file = k.data_dir.join("admin-token");
    let admin_file = admin_file.to_str().expect("utf-8");
    let ep = ["--endpoints", k.url.as_str()];
    let (code, _, err) = kvctl(&[&ep[..], &["put", "app/x", "1"]].concat());
    assert_eq!(code, 1, "no token: refused");
    assert!(err.contains("needs a token"), "{err}");
    let (code, out, err) =
        kvctl(&[&ep[..], &["--token-file", admin_file, "token", "create", "deploy", "--write", "app"]].concat());
    assert_eq!(code, 0, "{err}");
    let secret = out.lines().last().expect("the secret on the last line").trim().to_owned();
    assert!(secret.starts_with("kv_") && !secret.contains(' '), "{out:?}");
    let token_file = dir.path().join("deploy.token");
    std::fs::write(&token_file, format!("{secret}\n")).expect("write token file");
    let tf = token_file.to_str().expect("utf-8");
    let (code, _, err) = kvctl(&[&ep[..], &["--token-file", tf, "put", "app/x", "1"]].concat());
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = kvctl(&[&ep[..], &["--token", &secret, "put", "db/x", "1"]].concat());
    assert_eq!(code, 1);
    assert!(err.contains("may not write"), "{err}");
    let (code, out, err) = kvctl(&[&ep[..], &["--token-file", admin_file, "token", "list"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deploy") && out.contains("admin") && !out.contains(&secret), "{out}");
    let (code, _, err) = kvctl(&[&ep[..], &["--token-file", admin_file, "token", "create", "x"]].concat());
    assert_eq!(code, 2, "a token without rights is a usage error: {err}");
    let (code, _, err) = kvctl(&[&ep[..], &["--token-file", admin_file, "token", "revoke", "deploy"]].concat());
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = kvctl(&[&ep[..], &["--token-file", tf, "get", "app/x"]].concat());
    assert_eq!(code, 1);
    assert!(err.contains("revoked"), "{err}");
    let (code, _, _) = kvctl(&[&ep[..], &["--token-file", admin_file, "token", "revoke", "deploy"]].concat());
    assert_eq!(code, 1, "revoking an unknown token fails");
}

#[tokio::test]
async fn a_revoked_token_fails_on_every_member_within_a_second() {
    let nodes = cluster_of_three(&["--auth", "all"]).await;
    let admin = nodes[0].client_with(Some(&nodes[0].admin_token()));
    let secret = admin.create_token(&spec("app", &["app"], &["app"])).await.expect("create").token;
    admin.put("app/x", "1", &Default::default()).await.expect("put");
    let clients: Vec<Client> = nodes.iter().map(|n| n.client_with(Some(&secret))).collect();
    for c in &clients {
        // Linearizable: every member has applied the token.
        assert_eq!(c.get("app/x").await.expect("token works").expect("exists").value, "1");
    }
    let mut watch = clients[2].watch("app", None).await.expect("watch with the token");
    admin.revoke_token("app").await.expect("revoke");
    let revoked = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(1), watch.next()).await.expect("the watch ends at once");
    assert_eq!(end.expect_err("ended by revocation").code(), Some(&ErrorCode::Unauthorized));
    for (i, c) in clients.iter().enumerate() {
        loop {
            match c.get_opts("app/x", true).await {
                Err(e) if e.is(&ErrorCode::Unauthorized) => break,
                _ => {
                    assert!(revoked.elapsed() < Duration::from_secs(1), "member {} still takes the token", i + 1);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// A JWT signed with `sign`, for the claims given.
fn jwt(alg: &str, claims: serde_json::Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let enc = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let msg = format!("{}.{}", enc(serde_json::json!({"alg": alg, "kid": "k1", "typ": "JWT"})), enc(claims));
    format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sign(msg.as_bytes())))
}

#[tokio::test]
async fn jwts_from_the_configured_issuer_map_to_grants() {
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).expect("key").as_ref()).expect("key");
    let ec_pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec_pkcs8.as_ref(), &rng).expect("key");
    let point = ec.public_key().as_ref();
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = serde_json::json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": URL_SAFE_NO_PAD.encode(ed.public_key().as_ref())},
        {"kty": "EC", "crv": "P-256", "kid": "k1", "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
         "y": URL_SAFE_NO_PAD.encode(&point[33..])},
    ]});
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).expect("jwks");
    let config = dir.path().join("kvd.toml");
    std::fs::write(
        &config,
        format!(
            "[jwt]\njwks_file = {:?}\nissuer = \"https://idp.test\"\naudience = \"kv\"\nclaim = \"groups\"\n\
             [jwt.roles.app-readers]\nread = [\"app\"]\n[jwt.roles.app-writers]\nwrite = [\"app\"]\n",
            dir.path().join("jwks.json")
        ),
    )
    .expect("config");
    let k = Kvd::bootstrap(&["--auth", "all", "--config", config.to_str().expect("utf-8")]);
    let admin = k.client_with(Some(&k.admin_token()));
    admin.put("app/x", "1", &Default::default()).await.expect("put");
    admin.put("db/x", "1", &Default::default()).await.expect("put");
    let now = kv_client::clock::now_s();
    let claims = |groups: &[&str], exp: u64, aud: &str| {
        serde_json::json!({"iss": "https://idp.test", "aud": aud, "sub": "ann", "iat": now - 10, "exp": exp,
            "groups": groups})
    };
    let ed_sign = |m: &[u8]| ed.sign(m).as_ref().to_vec();
    let ec_sign = |m: &[u8]| ec.sign(&rng, m).expect("sign").as_ref().to_vec();

    let reader = k.client_with(Some(&jwt("EdDSA", claims(&["app-readers"], now + 300, "kv"), ed_sign)));
    assert_eq!(reader.get("app/x").await.expect("valid JWT reads").expect("exists").value, "1");
    assert_eq!(code(reader.get("db/x").await), ErrorCode::Forbidden);
    assert_eq!(code(reader.put("app/x", "2", &Default::default()).await), ErrorCode::Forbidden);
    assert_eq!(reader.whoami().await.expect("whoami").name.as_deref(), Some("jwt:ann"));
    let writer = k.client_with(Some(&jwt("ES256", claims(&["app-writers"], now + 300, "kv"), ec_sign)));
    writer.put("app/x", "2", &Default::default()).await.expect("ES256 JWT writes");
    let h = admin.history("app/x", Some(1)).await.expect("history");
    assert_eq!(h.versions[0].writer.as_deref(), Some("jwt:ann"), "a JWT's write is recorded by its subject");

    let refused = [
        ("expired", jwt("EdDSA", claims(&["app-readers"], now - 120, "kv"), ed_sign)),
        ("wrong audience", jwt("EdDSA", claims(&["app-readers"], now + 300, "other"), ed_sign)),
        ("wrong key", {
            let other =
                Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).expect("key").as_ref()).expect("key");
            jwt("EdDSA", claims(&["app-readers"], now + 300, "kv"), |m| other.sign(m).as_ref().to_vec())
        }),
        ("alg none", jwt("none", claims(&["app-readers"], now + 300, "kv"), |_| vec![])),
    ];
    for (why, t) in refused {
        let r = k.client_with(Some(&t)).get("app/x").await;
        assert_eq!(code(r), ErrorCode::Unauthorized, "{why}");
    }
    let log = k.log_text();
    assert!(log.contains("JWT expired") && log.contains("bad JWT signature"), "{log}");
}

#[test]
fn a_mount_shows_eacces_outside_its_token() {
    let k = Kvd::bootstrap(&["--auth", "all"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let admin = k.client_with(Some(&k.admin_token()));
    let tokens = tempfile::tempdir().expect("tempdir");
    let (app_file, ro_file) = (tokens.path().join("app"), tokens.path().join("ro"));
    rt.block_on(async {
        admin.put("app/x", "app-value", &Default::default()).await.expect("put");
        admin.put("db/x", "secret", &Default::default()).await.expect("put");
        let t = admin.create_token(&spec("app-rw", &[], &["app"])).await.expect("create").token;
        std::fs::write(&app_file, t).expect("token file");
        let t = admin.create_token(&spec("app-ro", &["app"], &[])).await.expect("create").token;
        std::fs::write(&ro_file, t).expect("token file");
    });
    let opt = |f: &std::path::Path| format!("token_file={}", f.display());

    let m = Mount::start(&k.url, &[&opt(&app_file)]);
    assert_eq!(m.sh_ok("cat app/x"), "app-value");
    assert_eq!(m.sh_ok("ls"), "app\n", "db is not listed");
    let out = m.sh("cat db/x");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "never a partial value");
    let out = m.sh("mkdir -p db && echo x > db/new");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    m.sh_ok("echo written > app/new");
    // Revoked while mounted: the mount stops showing what it showed.
    rt.block_on(admin.revoke_token("app-rw")).expect("revoke");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = m.sh("cat app/x");
        if String::from_utf8_lossy(&out.stderr).contains("Permission denied") {
            break;
        }
        assert!(Instant::now() < deadline, "a revoked mount still serves: {out:?}\n{}", m.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(m);

    let m = Mount::start(&format!("{}/app", k.url), &[&opt(&ro_file)]);
    assert_eq!(m.sh_ok("cat x"), "app-value");
    let out = m.sh("echo changed > x");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    drop(m);
    rt.block_on(async {
        assert_eq!(admin.get("app/new").await.expect("get").expect("exists").value, "written\n");
        assert_eq!(admin.get("app/x").await.expect("get").expect("exists").value, "app-value");
        assert!(admin.get("db/new").await.expect("get").is_none());
    });

    // A mount of a prefix the token cannot read at all is refused, loudly.
    let mnt = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new("timeout")
        .args(["-s", "KILL", "30"])
        .arg(bin("kvfs"))
        .args(["-f", "-o", &opt(&ro_file), &format!("{}/db", k.url)])
        .arg(mnt.path())
        .output()
        .expect("run kvfs");
    assert!(!out.status.success() && out.status.code().is_some(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not read"), "{out:?}");
}

/// A raw peer client trusting `ca`, showing `identity` (cert, key) if given.
fn peer_client(ca: &std::path::Path, identity: Option<(std::path::PathBuf, std::path::PathBuf)>) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA") {
        roots.add(c.expect("CA cert")).expect("add CA");
    }
    let b = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let cfg = match identity {
        Some((crt, key)) => {
            let certs: Vec<_> = CertificateDer::pem_file_iter(&crt).expect("cert").map(|c| c.expect("cert")).collect();
            b.with_client_auth_cert(certs, PrivateKeyDer::from_pem_file(&key).expect("key")).expect("identity")
        }
        None => b.with_no_client_auth(),
    };
    reqwest::Client::builder().use_preconfigured_tls(cfg).build().expect("client")
}

/// A bincode AppendEntries from a "leader" 99 at `term` (committed vote, no
/// previous log id, no entries, no commit): what a rogue process would send
/// to depose the leader. In the bincode 1 layout: peer message format 1,
/// which kvd 0.1 sent and kvd still reads from a request without an
/// `x-kv-peer-format` header.
fn forged_append(term: u64) -> Vec<u8> {
    [term.to_le_bytes().as_slice(), &99u64.to_le_bytes(), &[1u8, 0u8], &0u64.to_le_bytes(), &[0u8]].concat()
}

async fn own_status(k: &Kvd, token: Option<&str>) -> kv_client::NodeStatus {
    let v = k.client_with(token).get_json("/v1/status").await.expect("status");
    serde_json::from_value(v).expect("status JSON")
}

#[tokio::test]
async fn a_tls_cluster_refuses_peers_without_a_ca_certificate() {
    // Control: the same forged message does depose a node without TLS, so
    // the refusal below is the certificates' doing.
    let plain = Kvd::bootstrap(&[]);
    let r = http().post(format!("{}/peer/v1/append", plain.peer_url)).body(forged_append(1000)).send().await;
    assert_eq!(r.expect("append").status(), 200);
    assert_eq!(own_status(&plain, None).await.term, 1000, "the forged append reached a plain node");
    drop(plain);

    let pki = Pki::new("kv-test-ca");
    let args = pki.kvd_args("node");
    let mut flags: Vec<&str> = args.iter().map(String::as_str).collect();
    flags.extend(["--auth", "all"]);
    let nodes = cluster_of_three(&flags).await;
    assert!(nodes[0].url.starts_with("https://"));
    let token = nodes[0].admin_token();
    let admin = nodes[0].client_with(Some(&token));
    admin.put("app/x", "kept", &Default::default()).await.expect("put over TLS");
    let before = admin.cluster().await.expect("cluster");
    let leader = before.leader.expect("leader");

    // Forged appends: without a certificate, with one from another CA, in plain HTTP.
    let rogue = Pki::new("rogue-ca");
    for n in &nodes {
        let url = format!("{}/peer/v1/append", n.peer_url);
        for (who, c) in
            [("no certificate", peer_client(&pki.ca, None)), ("rogue", peer_client(&pki.ca, Some(rogue.node("rogue"))))]
        {
            let r = c.post(&url).body(forged_append(1000)).send().await;
            assert!(r.is_err(), "{who}: the peer port answered {r:?}");
        }
        let r = http().post(url.replace("https://", "http://")).body(forged_append(1000)).send().await.expect("plain");
        assert_eq!(crate::status_and_code(r).await, (400, "tls_required".to_owned()));
    }

    // A node with a rogue certificate added by mistake is refused before
    // anything is proposed (member add asks it who it is first) and never
    // receives anything.
    let rogue_args = rogue.kvd_args("rogue");
    let rogue_node = Kvd::empty(4, &rogue_args.iter().map(String::as_str).collect::<Vec<_>>());
    let add = AddMember {
        id: 4,
        peer_url: rogue_node.peer_url.clone(),
        client_url: Some(rogue_node.url.clone()),
        learner: true,
    };
    let e = admin.add_member(&add).await.expect_err("a node the cluster cannot verify is not added");
    assert!(e.to_string().contains("cannot reach node 4"), "{e}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rogue_node.log_text().contains("TLS handshake refused") {
        assert!(Instant::now() < deadline, "no TLS refusal seen:\n{}", rogue_node.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = admin.cluster().await.expect("cluster");
    assert!(info.members.iter().all(|m| m.id != 4), "member 4 listed: {info:?}");
    let s = own_status(&rogue_node, None).await;
    assert_eq!((s.applied_index, s.revision), (0, 0), "the rogue node got data");

    // The cluster kept its leader, term and data, and still takes writes.
    let after = admin.cluster().await.expect("cluster");
    assert_eq!((after.leader, after.term), (Some(leader), before.term));
    for n in &nodes {
        let v = n.client_with(Some(&token)).get("app/x").await.expect("get").expect("kept");
        assert_eq!(v.value, "kept");
    }
    admin.put("app/y", "still writable", &Default::default()).await.expect("put");
}

#[tokio::test]
async fn plain_http_and_unknown_certificates_get_clear_errors() {
    let pki = Pki::new("kv-test-ca");
    let args = pki.kvd_args("node");
    let k = Kvd::bootstrap(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let plain_url = k.url.replace("https://", "http://");
    let ca = pki.ca.to_str().expect("utf-8");

    // Raw plain HTTP on the TLS port: a 400 that says what to do, at once.
    let addr = k.url.trim_start_matches("https://").to_owned();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"GET /v1/kv/x HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    })
    .await
    .expect("an answer, not a hang");
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("https://"), "{answer}");

    let (code, _, err) = kvctl(&["--endpoints", &plain_url, "get", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("tls_required") && err.contains("https://"), "{err}");
    let (code, _, err) = kvctl(&["--endpoints", &k.url, "get", "x"]);
    assert_eq!(code, 1, "the system CAs do not know the test CA");
    assert!(err.contains("--ca"), "{err}");
    let (code, _, err) = kvctl(&["--endpoints", &k.url, "--ca", ca, "put", "app/x", "over-tls"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = kvctl(&["--endpoints", &k.url, "--ca", ca, "health"]);
    assert_eq!(code, 0, "every member is checked over TLS too: {out}{err}");
    let plain = Kvd::bootstrap(&[]);
    let (code, _, err) = kvctl(&["--endpoints", &plain.url.replace("http://", "https://"), "--ca", ca, "get", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("does not speak TLS"), "{err}");

    // kvfs checks the server against ca_file too.
    let m = Mount::start(&format!("{}/app", k.url), &[&format!("ca_file={ca}")]);
    assert_eq!(m.sh_ok("cat x"), "over-tls");
}

#[tokio::test]
async fn tokens_travel_in_snapshots() {
    let extra = ["--auth", "all", "--snapshot-logs", "20"];
    let first = Kvd::bootstrap(&extra);
    let admin = first.client_with(Some(&first.admin_token()));
    let secret = admin.create_token(&spec("app", &["app"], &[])).await.expect("create").token;
    admin.create_token(&spec("gone", &["app"], &[])).await.expect("create");
    admin.revoke_token("gone").await.expect("revoke");
    for i in 0..100 {
        admin.put(&format!("app/{i}"), "v", &Default::default()).await.expect("put");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while own_status(&first, Some(&secret)).await.purged_index == 0 {
        assert!(Instant::now() < deadline, "log never purged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut second = Kvd::empty(2, &extra);
    let add =
        AddMember { id: 2, peer_url: second.peer_url.clone(), client_url: Some(second.url.clone()), learner: false };
    admin.add_member(&add).await.expect("add");
    second.wait_ready();
    let s = own_status(&second, Some(&secret)).await;
    assert!(s.snapshot_index > 0, "the new member did not get a snapshot: {s:?}");
    let tokens = second.client_with(Some(&first.admin_token())).list_tokens().await.expect("list");
    let names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["admin", "app"]);
    let v = second.client_with(Some(&secret)).get_opts("app/1", true).await.expect("token works there");
    assert_eq!(v.expect("exists").value, "v");
}

/// The port of a URL such as `http://10.1.2.3:4567`.
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).expect("a port in the URL")
}

/// A member that has not applied a revocation (the leader cannot reach its
/// peer port, so it gets no entries, while it still reaches the leader) used
/// to check the revoked token itself and forward the write as authorized.
#[tokio::test]
async fn a_revoked_token_is_refused_through_a_lagging_member() {
    let mut net = Net::new(3);
    let flags = |election_ms| {
        ["--auth", "all", "--heartbeat-ms", "50", "--request-timeout-ms", "5000", "--election-timeout-ms", election_ms]
    };
    let extra = flags("300");
    // NOTE: the lagging member hears no heartbeats while it is cut off; a
    // long election timeout keeps it from campaigning meanwhile.
    let patient = flags("60000");
    let leader = Kvd::bootstrap_in(&net, 0, &extra);
    let admin = leader.client_with(Some(&leader.admin_token()));
    let mut nodes = vec![leader];
    for (i, flags) in [(1, &extra), (2, &patient)] {
        let mut n = Kvd::empty_in(&net, i, i as u64 + 1, flags);
        admin.add_member(&n.add_request()).await.expect("add member");
        n.wait_ready();
        nodes.push(n);
    }
    let doomed_spec = TokenSpec { admin: true, ..spec("doomed", &[""], &[""]) };
    let doomed = admin.create_token(&doomed_spec).await.expect("create").token;
    let keeper = admin.create_token(&spec("keeper", &["app"], &["app"])).await.expect("create").token;
    let lagging = &nodes[2];
    let (via_doomed, via_keeper) = (lagging.client_with(Some(&doomed)), lagging.client_with(Some(&keeper)));
    // NOTE: a member checks a token before the read's barrier: wait until
    // it has applied both creations (they were acknowledged by the leader
    // and one follower, maybe not yet by this one).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (d, k) = (via_doomed.get("app/x").await, via_keeper.get("app/x").await);
        if matches!((&d, &k), (Ok(None), Ok(None))) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the member never took the tokens: {d:?} {k:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    net.cut_port(0, 2, port_of(&lagging.peer_url));
    admin.revoke_token("doomed").await.expect("revoke on the leader");
    // The premise: the member still holds the token (a stale read takes it).
    assert_eq!(via_doomed.get_opts("app/x", true).await.expect("the member has not applied the revocation"), None);

    let put = via_doomed.put("app/revoked", "x", &Default::default()).await;
    assert_eq!(code(put), ErrorCode::Unauthorized, "a put with the revoked token, through the lagging member");
    assert_eq!(code(via_doomed.delete("app", true, None).await), ErrorCode::Unauthorized, "a delete");
    let txn = TxnRequest { success: vec![TxnOp::put("app/txn", "x")], ..Default::default() };
    assert_eq!(code(via_doomed.txn(&txn).await), ErrorCode::Unauthorized, "a transaction");
    assert_eq!(
        code(via_doomed.create_token(&spec("sneaky", &[""], &[""])).await),
        ErrorCode::Unauthorized,
        "a token created"
    );
    assert_eq!(code(via_doomed.revoke_token("keeper").await), ErrorCode::Unauthorized, "a token revoked");
    assert_eq!(code(via_doomed.transfer_leader(2).await), ErrorCode::Unauthorized, "a leader transfer");
    for key in ["app/revoked", "app/txn"] {
        assert_eq!(admin.get(key).await.expect("read on the leader"), None, "{key} was written");
    }
    let names: Vec<String> = admin.list_tokens().await.expect("list").into_iter().map(|t| t.name).collect();
    assert_eq!(names, vec!["admin", "keeper"]);

    // A valid token still works through the member; no token does not.
    via_keeper.put("app/kept", "k", &Default::default()).await.expect("a valid token writes through the member");
    assert_eq!(admin.get("app/kept").await.expect("read").expect("written").value, "k");
    assert_eq!(code(lagging.client().put("app/anon", "x", &Default::default()).await), ErrorCode::Unauthorized);
    assert_eq!(admin.get("app/anon").await.expect("read"), None);

    // A linearizable read with the revoked token waits for the member to
    // apply up to the read index, which holds the revocation: it is refused
    // once the member has caught up, not answered.
    let read = tokio::spawn(async move { via_doomed.get("app/kept").await });
    // NOTE: gives the read time to pass the member's own token check (the
    // member still holds the token) and wait for the read index; if it had
    // not, the check refuses it just the same.
    tokio::time::sleep(Duration::from_millis(300)).await;
    net.heal();
    assert_eq!(
        code(read.await.expect("read task")),
        ErrorCode::Unauthorized,
        "a linearizable read with the revoked token"
    );
}

/// A bincode string.
fn bincode_string(s: &str) -> Vec<u8> {
    [(s.len() as u64).to_le_bytes().as_slice(), s.as_bytes()].concat()
}

/// A write as a member forwards it to the leader's peer port (bincode of
/// kvd's `Forwarded`): request `id` with the one operation `op` (bincode of
/// kvd's `Op`), with `authorization` as the client's `Authorization` header.
fn forged_request(id: &str, op: &[u8], authorization: Option<&str>) -> Vec<u8> {
    let mut b = bincode_string(id);
    b.extend(0i64.to_le_bytes()); // now_ns
    b.extend(0u64.to_le_bytes()); // no compares
    b.extend(1u64.to_le_bytes()); // one operation on success
    b.extend(op);
    b.extend(0u64.to_le_bytes()); // nothing on failure
    match authorization {
        Some(a) => b.extend([[1u8].as_slice(), &bincode_string(a)].concat()),
        None => b.push(0),
    }
    b
}

/// [`forged_request`] of a put of `key` = `value`.
fn forged_forward(key: &str, value: &str, authorization: Option<&str>) -> Vec<u8> {
    let mut op = 0u32.to_le_bytes().to_vec(); // a put
    op.extend(bincode_string(key));
    op.push(1); // with a value
    op.extend(bincode_string(value));
    op.extend([0u8; 5]); // and no attributes
    forged_request("forged-put", &op, authorization)
}

#[tokio::test]
async fn the_peer_port_takes_no_write_its_credential_does_not_allow() {
    let k = Kvd::bootstrap(&["--auth", "writes"]);
    let propose = |body: Vec<u8>| async {
        let r = http().post(format!("{}/peer/v1/propose", k.peer_url)).body(body).send().await.expect("peer call");
        assert_eq!(r.status(), 200, "the leader decodes the forwarded write");
        // The answer is a bincode `Result`: 0 for Ok, 1 for Err.
        r.bytes().await.expect("answer")[..4].to_vec()
    };
    let admin = format!("Bearer {}", k.admin_token());
    assert_eq!(propose(forged_forward("a", "admin", Some(&admin))).await, 0u32.to_le_bytes(), "the admin writes");
    assert_eq!(k.client().get("a").await.expect("read").expect("written").value, "admin");
    for (key, authorization) in [("b", None), ("c", Some("Bearer kv_wrong")), ("d", Some("Basic eA=="))] {
        assert_eq!(propose(forged_forward(key, "x", authorization)).await, 1u32.to_le_bytes(), "{authorization:?}");
        assert_eq!(k.client().get(key).await.expect("read"), None, "written with {authorization:?}");
    }
}

#[tokio::test]
async fn no_client_sets_the_request_id_window_through_the_peer_port() {
    // Only a leader's proposer writes the window. A window of 1 s set by a
    // forged forward used to prune, in its own entry, every record older
    // than that: a retry then applied a second time.
    let k = Kvd::bootstrap(&["--auth", "writes"]);
    let admin = format!("Bearer {}", k.admin_token());
    let put = || {
        http()
            .put(format!("{}/v1/kv/once", k.url))
            .header("authorization", &admin)
            .header("x-kv-request-id", "once-1")
            .body("v")
            .send()
    };
    let first: serde_json::Value = put().await.expect("put").json().await.expect("json");
    // NOTE: the record must be older than the forged window.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut op = 4u32.to_le_bytes().to_vec(); // SetDedupWindow
    op.extend(1000u64.to_le_bytes());
    let r = http()
        .post(format!("{}/peer/v1/propose", k.peer_url))
        .body(forged_request("", &op, Some(&admin)))
        .send()
        .await
        .expect("peer call");
    assert_eq!(r.bytes().await.expect("answer")[..4], 1u32.to_le_bytes(), "the forged window was taken");
    let again: serde_json::Value = put().await.expect("put again").json().await.expect("json");
    assert_eq!(again["revision"], first["revision"], "the retry applied a second time");
}

#[tokio::test]
async fn a_token_create_resent_with_its_request_id_never_hands_out_a_secret_that_was_not_stored() {
    // kv-client resends a create whose connection broke, with the same
    // request id, and a 504 asks the caller to do the same. The resend is
    // answered from the first attempt's record; the secret made for it was
    // never stored, and it used to come back with 200 as if it worked.
    let k = Kvd::bootstrap(&["--auth", "all"]);
    let admin = format!("Bearer {}", k.admin_token());
    let create = || {
        http()
            .post(format!("{}/v1/auth/tokens", k.url))
            .header("authorization", &admin)
            .header("x-kv-request-id", "create-reader-1")
            .json(&spec("reader", &["app"], &[]))
            .send()
    };
    let first = create().await.expect("create");
    assert_eq!(first.status(), 200);
    let secret = first.json::<kv_client::NewToken>().await.expect("new token").token;
    let again = create().await.expect("create again");
    let (code, error) = crate::status_and_code(again).await;
    assert_eq!((code, error.as_str()), (409, "token_created_earlier"));
    // The first secret is the one that works, and there is one token.
    k.client_with(Some(&secret)).get("app/x").await.expect("the first secret reads");
    let tokens = k.client_with(Some(&k.admin_token())).list_tokens().await.expect("list");
    assert_eq!(tokens.iter().filter(|t| t.name == "reader").count(), 1);
}

/// The bootstrap admin token works as soon as the node says it is ready:
/// readiness waits until the token's hash is committed.
#[tokio::test]
async fn the_admin_token_works_as_soon_as_the_node_is_ready() {
    for _ in 0..10 {
        let k = Kvd::bootstrap(&["--auth", "all"]);
        let admin = k.client_with(Some(&k.admin_token()));
        admin.put("app/x", "1", &Default::default()).await.expect("the admin token works once ready");
    }
}
