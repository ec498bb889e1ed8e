//! Helpers for tests that talk to the simulator (and later to the proxy) over real loopback HTTP:
//! a small client returning whole responses, a getAccessToken shortcut and a webhook receiver.
//!
//! These are test support: they panic with a clear message when the transport itself fails,
//! which is the test failure one wants.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A whole response.
#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    /// The body as JSON (panics with the body text when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `errors[0].errorCode` of a Shoptet envelope.
    pub fn error_code(&self) -> Option<String> {
        self.json()["errors"][0]["errorCode"]
            .as_str()
            .map(str::to_owned)
    }
}

/// HTTP/1.1 keep-alive client for http:// and https:// (trusting an optional extra CA).
#[derive(Clone)]
pub struct TestClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for TestClient {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClient {
    pub fn new() -> Self {
        Self::build(rustls::RootCertStore::empty())
    }

    /// A client that also trusts `pem` (e.g. `SimHandle::ca_cert_pem()`).
    pub fn with_ca_pem(pem: &str) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            let cert = cert.expect("CA PEM parses");
            roots.add(cert).expect("CA certificate is acceptable");
        }
        Self::build(roots)
    }

    fn build(roots: rustls::RootCertStore) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        TestClient {
            inner: Client::builder(TokioExecutor::new()).build(conn),
        }
    }

    /// Sends a request; Err when the connection failed or was dropped.
    pub async fn try_request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<TestResponse, String> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).map_err(|e| e.to_string())?;
        let resp = self.inner.request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends a request; panics if there is no response.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        match self.try_request(method.clone(), url, headers, body).await {
            Ok(r) => r,
            Err(e) => panic!("{method} {url}: no response: {e}"),
        }
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> TestResponse {
        self.request(Method::GET, url, headers, Bytes::new()).await
    }

    /// Sends `body` as `application/json` with `method`.
    pub async fn send_json(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> TestResponse {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        self.request(method, url, &h, body.to_string()).await
    }

    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> TestResponse {
        self.send_json(Method::POST, url, headers, body).await
    }

    /// getAccessToken with the installation's OAuth token; panics unless it answers 200.
    pub async fn api_token(&self, base_url: &str, oauth_token: &str) -> String {
        let auth = format!("Bearer {oauth_token}");
        let r = self
            .get(
                &format!("{base_url}/action/ApiOAuthServer/getAccessToken"),
                &[("authorization", &auth)],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "getAccessToken: {}", r.text());
        r.json()["access_token"]
            .as_str()
            .expect("access_token is a string")
            .to_owned()
    }
}

/// One request the [`WebhookReceiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    /// Reads a whole request (its body collected; an unreadable body counts as empty).
    pub async fn read(req: Request<Incoming>) -> Received {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Received {
            method: parts.method,
            path_and_query: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: parts.headers,
            body,
        }
    }
}

/// A local HTTP server that records every request and answers from a script of statuses
/// (then 200). Use it as a webhook URL, an install URL, or an addon endpoint.
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Received>,
    script: Arc<Mutex<VecDeque<u16>>>,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = mpsc::unbounded_channel();
        let script: Arc<Mutex<VecDeque<u16>>> = Arc::default();
        let s = script.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let s = s.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    let s = s.clone();
                    async move {
                        let _ = tx.send(Received::read(req).await);
                        let status = s.lock().ok().and_then(|mut q| q.pop_front()).unwrap_or(200);
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        WebhookReceiver { addr, rx, script }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next requests are answered with these statuses, in order (then 200 again).
    pub fn respond_with(&self, statuses: &[u16]) {
        if let Ok(mut q) = self.script.lock() {
            q.extend(statuses.iter().copied());
        }
    }

    /// The next request received; panics after 10 s without one.
    pub async fn next(&mut self) -> Received {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.recv()).await {
            Ok(Some(r)) => r,
            _ => panic!("no request reached the receiver within 10 s"),
        }
    }

    /// A request received so far, without waiting.
    pub fn try_next(&mut self) -> Option<Received> {
        self.rx.try_recv().ok()
    }
}

/// Starts a simulator with `cfg` on an OS-assigned loopback port.
pub async fn start(cfg: super::SimConfig) -> super::SimHandle {
    match super::Simulator::start(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await {
        Ok(h) => h,
        Err(e) => panic!("simulator did not start: {e}"),
    }
}
