//! TLS on the proxy listener (SPEC B1): with `[proxy] tls_cert_file`/`tls_key_file` an HTTPS
//! client that trusts the proxy's CA gets Shoptet's answer, token injected, over HTTP/1.1 and over
//! HTTP/2 chosen by ALPN; client keys still apply; plain HTTP to that port gets a clean refusal
//! and the listener keeps serving.

mod common;

use bytes::Bytes;
use common::{Harness, ESHOP};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use shoptet_proxy::secret::Secret;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_KEY: &str = "addon-key-over-tls";

/// A proxy with TLS on its listener (a fresh self-signed certificate for 127.0.0.1) and a client
/// key; returns it with the certificate's PEM.
async fn tls_proxy() -> (Harness, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    let cert = dir.path().join("proxy.crt");
    let key = dir.path().join("proxy.key");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
    let h = Harness::with(common::sim_config(), |cfg| {
        cfg.proxy.tls_cert_file = Some(cert);
        cfg.proxy.tls_key_file = Some(key);
        cfg.proxy.client_keys = vec![Secret::new(CLIENT_KEY)];
    })
    .await;
    h.install(ESHOP).await;
    (h, ck.cert.pem(), dir)
}

/// An HTTPS client trusting `ca_pem` that offers only HTTP/2 (`h2`) or only HTTP/1.1 by ALPN.
fn https_client(
    ca_pem: &str,
    h2: bool,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.expect("PEM")).expect("CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let conn = if h2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    let mut client = Client::builder(TokioExecutor::new());
    client.http2_only(h2);
    client.build(conn)
}

async fn get(
    client: &Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    url: &str,
    key: Option<&str>,
) -> (http::Version, http::StatusCode, serde_json::Value) {
    let mut req = http::Request::get(url);
    if let Some(k) = key {
        req = req.header("proxy-authorization", format!("Bearer {k}"));
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("an answer over TLS");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&body).expect("JSON answer");
    (parts.version, parts.status, json)
}

#[tokio::test]
async fn https_clients_get_answers_with_the_token_over_http1_and_http2() {
    let (h, ca, _dir) = tls_proxy().await;
    let url = format!("https://{}/eshops/{ESHOP}/api/eshop", h.proxy_addr);
    for (h2, version) in [
        (false, http::Version::HTTP_11),
        (true, http::Version::HTTP_2),
    ] {
        let client = https_client(&ca, h2);
        let (got, status, body) = get(&client, &url, Some(CLIENT_KEY)).await;
        assert_eq!(got, version, "ALPN chose {got:?}");
        assert_eq!(status, 200, "{body}");
        assert!(body["data"].is_object(), "{body}");

        // Client keys still apply over TLS.
        let (_, status, body) = get(&client, &url, None).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["errors"][0]["errorCode"], "proxy-unauthorized");
    }
    // Shoptet got the token the proxy injected, on every forwarded call.
    let seen = h.sim_requests(Some(ESHOP)).await;
    let api: Vec<_> = seen
        .iter()
        .filter(|r| r["path"].as_str() == Some("/api/eshop"))
        .collect();
    assert_eq!(api.len(), 2, "{seen:?}");
    for r in api {
        assert_eq!(r["status"], 200, "{r}");
        assert!(
            r["tokenLabel"].as_str().is_some_and(|l| !l.is_empty()),
            "{r}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_is_refused_cleanly_and_the_port_keeps_serving() {
    let (h, ca, _dir) = tls_proxy().await;
    let mut s = tokio::net::TcpStream::connect(h.proxy_addr)
        .await
        .expect("connect");
    s.write_all(
        format!(
            "GET /eshops/{ESHOP}/api/eshop HTTP/1.1\r\nHost: proxy\r\n\
             Proxy-Authorization: Bearer {CLIENT_KEY}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("send");
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .await
        .expect("the proxy closes after answering");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
    assert!(got.contains("TLS"), "{got}");
    assert_eq!(h.sim.stats().calls.api, 0, "nothing reached Shoptet");

    // Garbage that is neither HTTP nor TLS: closed too, no panic.
    let mut s = tokio::net::TcpStream::connect(h.proxy_addr)
        .await
        .expect("connect");
    s.write_all(b"\x16\x03\x01\x00\x05hello")
        .await
        .expect("send");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;

    let client = https_client(&ca, false);
    let url = format!("https://{}/eshops/{ESHOP}/api/eshop", h.proxy_addr);
    let (_, status, body) = get(&client, &url, Some(CLIENT_KEY)).await;
    assert_eq!(status, 200, "{body}");
    h.stop().await;
}
