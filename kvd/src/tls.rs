//! TLS (DESIGN.md §10): one certificate and key per node, signed by the
//! cluster CA, serve both listeners; on the peer port both sides must show a
//! certificate from that CA, so nothing else can join, vote or append.
//!
//! The certificate, its key and the CA are read again on SIGHUP
//! ([`Tls::reload`]): each new connection, accepted or made, uses what was
//! read last, and a reload that fails keeps what was read before.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::error::{invalid, Context};
use axum::Router;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a connection may take to say its first byte and finish the
/// handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS material of one node, read from its files and read again by
/// [`Tls::reload`].
#[derive(Debug)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    current: RwLock<Arc<Material>>,
}

/// What one reading of the files made.
#[derive(Debug)]
struct Material {
    /// The client listener: server certificate only (clients use tokens).
    client_listener: Arc<ServerConfig>,
    /// The peer listener: a client certificate from the CA is required.
    peer_listener: Arc<ServerConfig>,
    /// This node's certificate chain and key, shown to peers it calls.
    certified: Arc<CertifiedKey>,
    /// Checks the peers this node calls against the CA.
    peer_verifier: Arc<WebPkiServerVerifier>,
    /// What was read, for the log.
    summary: Summary,
    /// Why peers would refuse this node's own certificate (not from the
    /// CA, expired, not yet valid), if they would.
    chain_error: Option<String>,
}

/// What a reading of the TLS files found: logged on a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Serial number of this node's certificate, hex.
    pub serial: String,
    /// Its expiry, seconds since the epoch.
    pub not_after: i64,
    /// How many CA certificates the CA file holds.
    pub ca_certs: usize,
}

/// Which listener a server configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The client API: a server certificate only.
    Client,
    /// The peer API: peers must show a certificate from the CA.
    Peer,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Material {
    /// Reads the node's certificate chain, key and the cluster CA (PEM), and
    /// checks they make a working configuration.
    fn read(cert: &Path, key: &Path, ca: &Path) -> crate::error::Result<Material> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect::<Result<_, _>>())
            .with_context(|| format!("cannot read certificates from {}", cert.display()))?;
        let Some(leaf) = certs.first() else {
            invalid!("{} holds no certificate", cert.display());
        };
        let Some((serial, not_after)) = der::serial_and_not_after(leaf) else {
            invalid!("{}: its first certificate is not a well-formed X.509 certificate", cert.display());
        };
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("cannot read a private key from {}", key.display()))?;
        let mut roots = RootCertStore::empty();
        let ca_certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|i| i.collect::<Result<_, _>>())
            .with_context(|| format!("cannot read CA certificates from {}", ca.display()))?;
        for c in ca_certs {
            roots.add(c).with_context(|| format!("bad CA certificate in {}", ca.display()))?;
        }
        if roots.is_empty() {
            invalid!("{} holds no CA certificate", ca.display());
        }
        let ca_count = roots.len();
        let roots = Arc::new(roots);
        let chain_error = own_chain_error(&certs, &roots);
        let certified = Arc::new(
            CertifiedKey::from_der(certs, key, &provider()).context("the certificate does not match the key")?,
        );
        let server = || {
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .context("TLS setup failed")
        };
        let single = Arc::new(rustls::sign::SingleCertAndKey::from(certified.as_ref().clone()));
        let client_listener = server()?.with_no_client_auth().with_cert_resolver(single.clone());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .context("cannot check peers against the CA")?;
        let peer_listener = server()?.with_client_cert_verifier(verifier).with_cert_resolver(single);
        let peer_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .context("cannot check peers against the CA")?;
        Ok(Material {
            client_listener: Arc::new(client_listener),
            peer_listener: Arc::new(peer_listener),
            certified,
            peer_verifier,
            summary: Summary { serial, not_after, ca_certs: ca_count },
            chain_error,
        })
    }
}

/// Why the peers, checking against `roots` now, would refuse the chain
/// `certs` this node shows them; `None` when they would take it.
fn own_chain_error(certs: &[CertificateDer<'static>], roots: &Arc<RootCertStore>) -> Option<String> {
    let verifier = match rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build()
    {
        Ok(v) => v,
        Err(e) => return Some(e.to_string()),
    };
    let (leaf, intermediates) = certs.split_first()?;
    let now = rustls::pki_types::UnixTime::now();
    verifier.verify_client_cert(leaf, intermediates, now).err().map(|e| e.to_string())
}

impl Tls {
    /// Loads the node's certificate chain, key and the cluster CA (PEM).
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> crate::error::Result<Arc<Tls>> {
        let m = Material::read(cert, key, ca)?;
        if let Some(e) = &m.chain_error {
            tracing::warn!(cert = %cert.display(), error = %e, "peers will refuse this node's certificate");
        }
        crate::metrics::TLS_CERT_NOT_AFTER.store(m.summary.not_after, Ordering::Relaxed);
        Ok(Arc::new(Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            ca: ca.to_owned(),
            current: RwLock::new(Arc::new(m)),
        }))
    }

    /// Reads the files again. The connections accepted or made from now on
    /// use the new material; on an error (a file missing or malformed, a key
    /// that does not match the certificate) the old material stays.
    pub fn reload(&self) -> crate::error::Result<Summary> {
        let m = Material::read(&self.cert, &self.key, &self.ca)?;
        // NOTE: at start a node may have to come up with what it has; a
        // reload keeps what works rather than cut the node off its peers.
        if let Some(e) = &m.chain_error {
            invalid!("the peers would refuse the new certificate {}: {e}", self.cert.display());
        }
        let summary = m.summary.clone();
        crate::metrics::TLS_CERT_NOT_AFTER.store(summary.not_after, Ordering::Relaxed);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(m);
        Ok(summary)
    }

    fn current(&self) -> Arc<Material> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// What the last successful reading found.
    pub fn summary(&self) -> Summary {
        self.current().summary.clone()
    }

    /// The server configuration of a listener, as last read.
    pub fn server_config(&self, which: Listener) -> Arc<ServerConfig> {
        let m = self.current();
        match which {
            Listener::Client => m.client_listener.clone(),
            Listener::Peer => m.peer_listener.clone(),
        }
    }

    /// The configuration to call peers with: their certificate checked
    /// against the CA, this node's shown, both as last read (so a reload
    /// needs no new client, and its pooled connections stay).
    pub fn peer_client(self: &Arc<Self>) -> crate::error::Result<ClientConfig> {
        let current = Arc::new(Current(self.clone()));
        Ok(ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS setup failed")?
            .dangerous()
            .with_custom_certificate_verifier(current.clone())
            .with_client_cert_resolver(current))
    }
}

/// The peer client's view of [`Tls`]: whatever was read last.
#[derive(Debug)]
struct Current(Arc<Tls>);

// NOTE: "dangerous" only in rustls's sense of a custom verifier: every call
// goes to the WebPKI verifier of the CA as last read.
impl ServerCertVerifier for Current {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current().peer_verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().peer_verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().peer_verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().peer_verifier.supported_verify_schemes()
    }
}

impl ResolvesClientCert for Current {
    fn resolve(&self, _root_hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// How long a client may take to send a request's headers: a stalled or
/// trickling client (slowloris) loses its connection instead of holding it.
/// NOTE: it also closes a kept-alive connection idle this long, which is what
/// clients (kv-client, the peer network) count on to drop theirs before.
const HEADER_TIMEOUT: Duration = kv_client::MEMBER_IDLE_CLOSE;

/// Serves `app` on `listener`, over TLS when `tls` is given (the material
/// and which listener's configuration to take from it). A client that
/// speaks plain HTTP to a TLS port gets a 400 saying so, not a hang or a
/// reset.
pub async fn serve(listener: TcpListener, app: Router, tls: Option<(Arc<Tls>, Listener)>, what: &'static str) {
    let mut failures = 0u64;
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // NOTE: out of file descriptors and the like; keep serving
                // the connections we have, and log once a second at most.
                if failures.is_multiple_of(20) {
                    tracing::warn!(error = %e, what, failures = failures + 1, "accept failed");
                }
                failures += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        failures = 0;
        // NOTE: each connection takes the configuration as last read, so a
        // reload reaches every handshake after it.
        let acceptor = tls.as_ref().map(|(t, which)| tokio_rustls::TlsAcceptor::from(t.server_config(*which)));
        let app = app.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Some(acceptor) = acceptor else {
                return serve_connection(stream, app, from, what).await;
            };
            let mut first = [0u8; 1];
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
                Ok(Ok(1)) if first[0] == 0x16 => {}
                Ok(Ok(1)) => return refuse_plain(stream).await,
                _ => return,
            }
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => serve_connection(s, app, from, what).await,
                Ok(Err(e)) => tracing::warn!(%from, error = %e, what, "TLS handshake refused"),
                Err(_) => tracing::info!(%from, what, "TLS handshake timed out"),
            }
        });
    }
}

/// HTTP/1.1 on one connection, with a bound on reading each request's headers.
async fn serve_connection<I>(io: I, app: Router, from: std::net::SocketAddr, what: &'static str)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%from, error = %e, what, "connection ended");
    }
}

/// Answers a plain-HTTP request on a TLS port with a clear 400.
async fn refuse_plain(mut stream: TcpStream) {
    let mut buf = [0u8; 8192];
    // NOTE: read the request first; closing with unread data would reset the
    // connection before the client sees the answer.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
    let body = kv_client::ErrorBody {
        error: kv_client::ErrorCode::TlsRequired,
        message: "this port speaks HTTPS (TLS); use an https:// URL".into(),
    };
    let body = serde_json::to_string(&body).unwrap_or_default();
    let resp = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
}

/// Just enough DER to read a certificate's serial number and expiry
/// (RFC 5280 §4.1): Certificate ::= SEQUENCE { tbsCertificate SEQUENCE {
/// [0] version OPTIONAL, serialNumber INTEGER, signature SEQUENCE, issuer
/// SEQUENCE, validity SEQUENCE { notBefore Time, notAfter Time }, ... }, ... }.
mod der {
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const VERSION: u8 = 0xa0;
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;

    /// The first element of `input`: its tag, its contents and what follows.
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            (rest[..n].iter().fold(0usize, |a, b| a << 8 | *b as usize), &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    /// The element of `input` with tag `want`, and what follows.
    fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
        let (tag, body, rest) = element(input)?;
        (tag == want).then_some((body, rest))
    }

    /// A certificate's serial number (hex) and its notAfter, in seconds
    /// since the epoch.
    pub fn serial_and_not_after(cert: &[u8]) -> Option<(String, i64)> {
        let (cert, _) = expect(cert, SEQUENCE)?;
        let (tbs, _) = expect(cert, SEQUENCE)?;
        let tbs = match element(tbs)? {
            (VERSION, _, rest) => rest,
            _ => tbs,
        };
        let (serial, rest) = expect(tbs, INTEGER)?;
        let (_signature, rest) = expect(rest, SEQUENCE)?;
        let (_issuer, rest) = expect(rest, SEQUENCE)?;
        let (validity, _) = expect(rest, SEQUENCE)?;
        let (_, _not_before, rest) = element(validity)?;
        let (tag, not_after, _) = element(rest)?;
        let hex = serial.iter().map(|b| format!("{b:02x}")).collect();
        Some((hex, time(tag, not_after)?))
    }

    /// A UTCTime (`YYMMDDHHMMSSZ`, years 1950 to 2049) or GeneralizedTime
    /// (`YYYYMMDDHHMMSSZ`), in seconds since the epoch.
    pub fn time(tag: u8, text: &[u8]) -> Option<i64> {
        let digits = text.strip_suffix(b"Z")?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let num = |s: &[u8]| s.iter().fold(0i64, |a, d| a * 10 + i64::from(d - b'0'));
        let (year, rest) = match (tag, digits.len()) {
            (UTC_TIME, 12) => {
                let yy = num(&digits[..2]);
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
            }
            (GENERALIZED_TIME, 14) => (num(&digits[..4]), &digits[4..]),
            _ => return None,
        };
        let [month, day, hour, minute, second] = [0, 2, 4, 6, 8].map(|i| num(&rest[i..i + 2]));
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
    }

    /// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
    fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let year_of_era = y - era * 400;
        let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        era * 146_097 + day_of_era - 719_468
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn times_of_both_kinds_convert() {
            assert_eq!(time(UTC_TIME, b"700101000000Z"), Some(0));
            assert_eq!(time(UTC_TIME, b"000229235959Z"), Some(951_868_799));
            assert_eq!(time(UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
            assert_eq!(time(UTC_TIME, b"500101000000Z"), Some(-631_152_000));
            assert_eq!(time(GENERALIZED_TIME, b"20500101000000Z"), Some(2_524_608_000));
            for bad in [&b"700101000000"[..], b"7001010000Z", b"701301000000Z", b"70010100000+Z"] {
                assert_eq!(time(UTC_TIME, bad), None, "{bad:?}");
            }
            assert_eq!(time(GENERALIZED_TIME, b"700101000000Z"), None);
        }

        /// notAfter of the PEM certificate at `path` as `openssl` and GNU
        /// `date` read it, seconds since the epoch.
        fn openssl_not_after(path: &std::path::Path) -> i64 {
            let out = std::process::Command::new("openssl")
                .args(["x509", "-noout", "-enddate", "-in"])
                .arg(path)
                .output()
                .expect("run openssl");
            let text = String::from_utf8(out.stdout).expect("utf-8");
            let date = text.trim().strip_prefix("notAfter=").expect("notAfter=");
            let out = std::process::Command::new("date").args(["-u", "-d", date, "+%s"]).output().expect("run date");
            String::from_utf8(out.stdout).expect("utf-8").trim().parse().expect("seconds")
        }

        #[test]
        fn expiry_and_serial_match_what_openssl_reads() {
            use rustls::pki_types::pem::PemObject;
            let dir = tempfile::tempdir().expect("tempdir");
            // NOTE: certificates ending before 2050 carry a UTCTime, later
            // ones a GeneralizedTime.
            for (days, serial) in [("2", "0x0102"), ("10000", "0x7f3a11")] {
                let crt = dir.path().join(format!("{days}.crt"));
                let out = std::process::Command::new("openssl")
                    .current_dir(dir.path())
                    .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
                    .args(["-keyout", "k.pem", "-subj", "/CN=t", "-days", days, "-set_serial", serial, "-out"])
                    .arg(&crt)
                    .output()
                    .expect("run openssl");
                assert!(out.status.success(), "{out:?}");
                let der = rustls::pki_types::CertificateDer::from_pem_file(&crt).expect("PEM");
                let (hex, not_after) = serial_and_not_after(&der).expect("parses");
                assert_eq!(hex, serial.trim_start_matches("0x"));
                assert_eq!(not_after, openssl_not_after(&crt), "{days} days");
                assert!(serial_and_not_after(&der[..der.len() / 2]).is_none(), "a truncated certificate");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_takes_new_files_and_keeps_the_old_ones_on_any_error() {
        let pki = kv_tests::Pki::new("reload-ca");
        let (a, b) = (pki.node("a"), pki.node("b"));
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("node.crt"), dir.path().join("node.key"));
        let install = |(crt, k): &(PathBuf, PathBuf)| {
            std::fs::copy(crt, &cert).expect("cert");
            std::fs::copy(k, &key).expect("key");
        };
        let serial = |crt: &Path| {
            let der = CertificateDer::from_pem_file(crt).expect("PEM");
            der::serial_and_not_after(&der).expect("parses").0
        };
        install(&a);
        let tls = Tls::load(&cert, &key, &pki.ca).expect("load");
        assert_eq!(tls.summary().serial, serial(&a.0));
        install(&b);
        assert_eq!(tls.reload().expect("reload").serial, serial(&b.0));
        assert_eq!(tls.summary().serial, serial(&b.0));

        let garbage = || std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
        let other_ca = kv_tests::Pki::new("another-ca");
        let stranger = other_ca.node("a");
        let cases: [(&str, &dyn Fn()); 5] = [
            ("cannot read certificates", &garbage),
            ("does not match the key", &|| std::fs::copy(&a.0, &cert).map(drop).expect("copy")),
            ("cannot read a private key", &|| std::fs::remove_file(&key).expect("rm")),
            ("the peers would refuse the new certificate", &|| install(&stranger)),
            ("holds no CA certificate", &|| std::fs::write(&pki.ca, "").expect("write")),
        ];
        for (why, break_it) in cases {
            install(&b);
            break_it();
            let e = tls.reload().expect_err(why).to_string();
            assert!(e.contains(why), "{why}: {e}");
            assert_eq!(tls.summary().serial, serial(&b.0), "{why}: the old material stays");
        }
    }

    /// A TLS handshake in memory from `client` to `server`: the end-entity
    /// certificate the server saw, or why it failed.
    fn handshake(client: ClientConfig, server: Arc<ServerConfig>) -> Result<Vec<u8>, rustls::Error> {
        let name = ServerName::try_from("localhost").expect("name");
        let mut c = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut s = rustls::ServerConnection::new(server)?;
        let mut buf = Vec::new();
        while c.is_handshaking() || s.is_handshaking() {
            buf.clear();
            c.write_tls(&mut buf).expect("write");
            s.read_tls(&mut buf.as_slice()).expect("read");
            s.process_new_packets()?;
            buf.clear();
            s.write_tls(&mut buf).expect("write");
            c.read_tls(&mut buf.as_slice()).expect("read");
            c.process_new_packets()?;
        }
        let seen = s.peer_certificates().and_then(|c| c.first()).ok_or(rustls::Error::NoCertificatesPresented)?;
        Ok(seen.to_vec())
    }

    #[test]
    fn the_peer_client_trusts_and_shows_what_was_read_last() {
        let (one, two) = (kv_tests::Pki::new("ca-one"), kv_tests::Pki::new("ca-two"));
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str| dir.path().join(name);
        let bundle = [std::fs::read(&one.ca).expect("ca"), std::fs::read(&two.ca).expect("ca")].concat();
        // A peer with a certificate from the second CA, trusting both.
        let (crt, key) = two.node("peer");
        std::fs::write(file("bundle.crt"), &bundle).expect("bundle");
        let peer = Tls::load(&crt, &key, &file("bundle.crt")).expect("peer");
        // This node: a certificate from the first CA, trusting only it.
        let (a, b) = (one.node("a"), one.node("b"));
        std::fs::copy(&a.0, file("node.crt")).expect("cert");
        std::fs::copy(&a.1, file("node.key")).expect("key");
        std::fs::copy(&one.ca, file("ca.crt")).expect("ca");
        let tls = Tls::load(&file("node.crt"), &file("node.key"), &file("ca.crt")).expect("node");
        let client = tls.peer_client().expect("client config");
        let e = handshake(client.clone(), peer.server_config(Listener::Peer)).expect_err("an unknown CA");
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e}");

        std::fs::write(file("ca.crt"), &bundle).expect("bundle");
        std::fs::copy(&b.0, file("node.crt")).expect("cert");
        std::fs::copy(&b.1, file("node.key")).expect("key");
        tls.reload().expect("reload");
        let seen = handshake(client, peer.server_config(Listener::Peer)).expect("the new CA is trusted");
        assert_eq!(seen, CertificateDer::from_pem_file(&b.0).expect("PEM").to_vec(), "the new certificate is shown");
    }
}
