//! The one pooled HTTP client that talks to Shoptet: the API and the partner OAuth server.
//!
//! hyper-util's legacy client over rustls (ring provider, webpki roots plus an optional extra CA
//! for the simulator or a corporate TLS proxy), HTTP/1.1 and HTTP/2 chosen by ALPN, keep-alive
//! connections with TCP_NODELAY. Plain `http://` is allowed because the simulator and tests use it.

use crate::http::body::ReqBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
pub type Client = LegacyClient<Connector, ReqBody>;

/// Idle upstream connections are kept this long; Shoptet's nginx closes idle ones after about
/// a minute, and a connection reused at the moment the server closes it costs a retry.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("CA file {path} holds no usable PEM certificate")]
    NoCertificate { path: String },
    #[error("CA file {path}: {source}")]
    Rustls { path: String, source: rustls::Error },
}

/// Installs the process-wide rustls crypto provider (ring). Idempotent: tests call it many times.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// TLS client configuration: webpki roots plus the certificates in `ca_file`.
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|source| TlsSetupError::Read {
                path: shown.clone(),
                source,
            })?;
            roots.add(cert).map_err(|source| TlsSetupError::Rustls {
                path: shown.clone(),
                source,
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsSetupError::NoCertificate { path: shown });
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsSetupError::Rustls {
            path: "(protocol versions)".into(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Builds the pooled client. `connect_timeout` bounds TCP connect; request deadlines are applied
/// by callers because they differ (API call vs token fetch).
pub fn client(ca_file: Option<&Path>, connect_timeout: Duration) -> Result<Client, TlsSetupError> {
    build(ca_file, connect_timeout, false)
}

/// The outbox's client for the addon: like [`client`], but its HTTP/1 header names go out
/// Title-Cased (`Shoptet-Webhook-Signature`, `Content-Type`), as Shoptet's deliveries spell
/// them, for receivers that look names up case-sensitively.
pub fn addon_client(connect_timeout: Duration) -> Result<Client, TlsSetupError> {
    build(None, connect_timeout, true)
}

fn build(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
    title_case: bool,
) -> Result<Client, TlsSetupError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(30)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(ca_file)?)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(LegacyClient::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(512)
        // Records the HTTP/1 answer's header-name spelling (Shoptet's `X-RateLimit-Bucket-Filling`)
        // in its extensions; the proxy hands them on with the answer (SPEC B2).
        .http1_preserve_header_case(true)
        .http1_title_case_headers(title_case)
        .build(https))
}
