//! TLS (DESIGN.md §10): one certificate and key per node, signed by the
//! cluster CA, serve both listeners; on the peer port both sides must show a
//! certificate from that CA, so nothing else can join, vote or append.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{invalid, Context};
use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a connection may take to say its first byte and finish the
/// handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS configurations of one node.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The client listener: server certificate only (clients use tokens).
    pub client_listener: Arc<ServerConfig>,
    /// The peer listener: a client certificate from the CA is required.
    pub peer_listener: Arc<ServerConfig>,
    /// Talking to peers: their certificate checked against the CA, ours shown.
    pub peer_client: ClientConfig,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Loads the node's certificate chain, key and the cluster CA (PEM).
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> crate::error::Result<Tls> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect::<Result<_, _>>())
            .with_context(|| format!("cannot read certificates from {}", cert.display()))?;
        if certs.is_empty() {
            invalid!("{} holds no certificate", cert.display());
        }
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
        let roots = Arc::new(roots);
        let server = || {
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .context("TLS setup failed")
        };
        let client_listener = server()?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key.clone_key())
            .context("the certificate does not match the key")?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .context("cannot check peers against the CA")?;
        let peer_listener = server()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .context("the certificate does not match the key")?;
        let peer_client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS setup failed")?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .context("the certificate does not match the key")?;
        Ok(Tls { client_listener: Arc::new(client_listener), peer_listener: Arc::new(peer_listener), peer_client })
    }
}

/// How long a client may take to send a request's headers: a stalled or
/// trickling client (slowloris) loses its connection instead of holding it.
/// NOTE: it also closes a kept-alive connection idle this long, which is what
/// clients (kv-client, the peer network) count on to drop theirs before.
const HEADER_TIMEOUT: Duration = kv_client::MEMBER_IDLE_CLOSE;

/// Serves `app` on `listener`, over TLS when `tls` is given. A client that
/// speaks plain HTTP to a TLS port gets a 400 saying so, not a hang or a
/// reset.
pub async fn serve(listener: TcpListener, app: Router, tls: Option<Arc<ServerConfig>>, what: &'static str) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
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
        let acceptor = acceptor.clone();
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
