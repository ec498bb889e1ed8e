//! The proxied request as HTTP (SPEC B2): where it may go (host safety), how it is tagged, which
//! headers pass, HTTPS upstreams, client keys and HTTP/2 from clients.

mod common;

use bytes::Bytes;
use common::{assert_proxy_error, sim_config, Harness, ESHOP};
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use shoptet_proxy::sim::{SimConfig, Simulator};
use shoptet_proxy::store::AccessToken;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn quiet() -> SimConfig {
    let mut s = sim_config();
    s.bucket = false;
    s
}

/// Sends `head` (a raw HTTP/1.1 request head, `Connection: close` added) and returns the status
/// code of the answer.
async fn raw_status(addr: SocketAddr, head: &str) -> u16 {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let req = format!("{head}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
    status_of_answer(&mut s, head).await
}

/// Reads the whole answer to `request` (sent with `Connection: close`) and returns its status.
async fn status_of_answer(s: &mut TcpStream, request: &str) -> u16 {
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read answer");
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in the answer to {request:?}: {text:?}"))
}

#[tokio::test]
async fn host_and_path_tricks_never_reach_another_host() {
    let h = Harness::start(quiet()).await;
    h.install(ESHOP).await;
    let evil = Simulator::start(quiet(), "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("evil simulator");
    evil.create_eshop(ESHOP);
    let e = evil.addr();
    let id = format!("X-Shoptet-Eshop-Id: {ESHOP}\r\n");
    let tricks = [
        format!("GET /api/eshop HTTP/1.1\r\nHost: {e}\r\n{id}"),
        format!("GET http://{e}/api/eshop HTTP/1.1\r\nHost: {e}\r\n{id}"),
        format!("GET http://{e}/eshops/{ESHOP}/api/eshop HTTP/1.1\r\nHost: {e}\r\n"),
        format!("GET //{e}/api/eshop HTTP/1.1\r\nHost: {e}\r\n{id}"),
        format!("GET /api//{e}/api/eshop HTTP/1.1\r\nHost: x\r\n{id}"),
        format!("GET /api/../sim/stats HTTP/1.1\r\nHost: x\r\n{id}"),
        format!("GET /api/%2e%2e/sim/stats HTTP/1.1\r\nHost: x\r\n{id}"),
        format!("GET /api/orders%2F..%2F..%2Fsim%2Fstats HTTP/1.1\r\nHost: x\r\n{id}"),
        format!("GET /eshops/{ESHOP}/api/../../sim/stats HTTP/1.1\r\nHost: x\r\n"),
        format!("GET /api/eshop@{e} HTTP/1.1\r\nHost: x\r\n{id}"),
        format!("GET @{e}/api/eshop HTTP/1.1\r\nHost: x\r\n{id}"),
        format!("CONNECT {e} HTTP/1.1\r\nHost: {e}\r\n{id}"),
        format!("GET /api/eshop HTTP/1.1\r\nHost: x\r\nX-Forwarded-Host: {e}\r\n{id}"),
    ];
    let mut forwarded = 0;
    for t in &tricks {
        let status = raw_status(h.proxy_addr, t).await;
        assert!(
            status == 200 || (400..500).contains(&status),
            "{status} for {t:?}"
        );
        if status == 200 {
            forwarded += 1;
        }
    }
    assert!(
        forwarded >= 3,
        "the harmless forms are forwarded ({forwarded})"
    );
    let evil_stats = evil.stats();
    assert_eq!(evil_stats.calls.api, 0, "{evil_stats:?}");
    assert_eq!(evil_stats.calls.get_access_token, 0);
    // What was forwarded went to the configured API, under /api/, with its own Host.
    let log = h.sim_requests(None).await;
    assert!(log.len() >= forwarded, "{log:?}");
    let sim_host = h.sim.addr().to_string();
    for r in &log {
        assert_eq!(r["host"], sim_host.as_str(), "{r}");
        assert!(
            r["path"].as_str().is_some_and(|p| p.starts_with("/api/")),
            "{r}"
        );
    }
    evil.shutdown().await;
}

/// URL, request headers, expected status and `errorCode`.
type Case = (String, Vec<(&'static str, &'static str)>, u16, &'static str);

#[tokio::test]
async fn tagging_errors_use_the_spec_codes_and_envelope() {
    let h = Harness::start(quiet()).await;
    let get = |url: String, headers: Vec<(&'static str, &'static str)>| {
        let c = h.client.clone();
        async move { c.get(&url, &headers).await }
    };
    let cases: [Case; 9] = [
        (h.url("/api/eshop"), vec![], 400, "proxy-missing-eshop-id"),
        (
            h.url("/api/eshop"),
            vec![("x-shoptet-eshop-id", "abc")],
            400,
            "proxy-invalid-eshop-id",
        ),
        (
            h.url("/api/eshop"),
            vec![("x-shoptet-eshop-id", "-5")],
            400,
            "proxy-invalid-eshop-id",
        ),
        (
            h.url("/eshops/x1/api/eshop"),
            vec![],
            400,
            "proxy-invalid-eshop-id",
        ),
        (
            h.eshop_url(5, "/api/eshop"),
            vec![("x-shoptet-eshop-id", "6")],
            400,
            "proxy-conflicting-eshop-id",
        ),
        (h.url("/"), vec![], 404, "proxy-not-found"),
        (
            h.url("/admin/eshops"),
            vec![("x-shoptet-eshop-id", "5")],
            404,
            "proxy-not-found",
        ),
        (h.eshop_url(5, "/metrics"), vec![], 404, "proxy-not-found"),
        (
            h.url("/api"),
            vec![("x-shoptet-eshop-id", "5")],
            404,
            "proxy-not-found",
        ),
    ];
    for (url, headers, status, code) in cases {
        let r = get(url, headers).await;
        assert_proxy_error(&r, status, code);
    }
    assert_eq!(h.stats().calls.api, 0);
    assert_eq!(h.token_calls(), 0);
}

#[tokio::test]
async fn both_tagging_styles_reach_the_same_eshop() {
    let h = Harness::start(quiet()).await;
    h.install(ESHOP).await;
    let by_header = h.get(ESHOP, "/api/orders?itemsPerPage=5").await;
    let by_path = h
        .client
        .get(&h.eshop_url(ESHOP, "/api/orders?itemsPerPage=5"), &[])
        .await;
    assert_eq!(by_header.status, 200, "{}", by_header.text());
    assert_eq!(by_path.status, 200, "{}", by_path.text());
    assert_eq!(by_header.json()["data"], by_path.json()["data"]);
    let log = h.sim_requests(Some(ESHOP)).await;
    assert_eq!(log.len(), 2);
    for r in &log {
        assert_eq!(r["path"], "/api/orders?itemsPerPage=5");
        assert!(r["headers"].get("x-shoptet-eshop-id").is_none(), "{r}");
    }
}

#[tokio::test]
async fn a_configured_eshop_header_tags_and_is_removed_before_forwarding() {
    let h = Harness::with(quiet(), |c| {
        c.proxy.eshop_header = http::HeaderName::from_static("x-shop")
    })
    .await;
    h.install(ESHOP).await;
    let id = ESHOP.to_string();
    let r = h.client.get(&h.url("/api/eshop"), &[("x-shop", &id)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let log = h.sim_requests(Some(ESHOP)).await;
    assert_eq!(log.len(), 1);
    assert!(log[0]["headers"].get("x-shop").is_none(), "{}", log[0]);
    // The default name is then an ordinary header, not a tag.
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_proxy_error(&r, 400, "proxy-missing-eshop-id");
}

#[tokio::test]
async fn hop_by_hop_dropped_token_replaced_and_shoptet_headers_returned() {
    let h = Harness::start(sim_config()).await;
    h.install(ESHOP).await;
    let r = h
        .call(
            Method::GET,
            ESHOP,
            "/api/eshop",
            &[
                ("connection", "x-hop-named"),
                ("x-hop-named", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("trailer", "x-checksum"),
                ("upgrade", "websocket"),
                ("shoptet-access-token", "client-sent-token"),
                ("shoptet-private-api-token", "client-sent-private"),
                ("x-custom", "kept"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let log = h.sim_requests(Some(ESHOP)).await;
    assert_eq!(log.len(), 1);
    let sent = log[0]["headers"].as_object().expect("headers").clone();
    for gone in [
        "x-hop-named",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "shoptet-private-api-token",
        "x-shoptet-eshop-id",
    ] {
        assert!(!sent.contains_key(gone), "{gone} was forwarded: {sent:?}");
    }
    assert_eq!(sent["x-custom"], "kept");
    assert_eq!(
        sent["shoptet-access-token"],
        format!("{ESHOP}-a-1"),
        "the proxy's token, not the client's"
    );
    let rid = r.header("x-request-id").expect("X-Request-ID passed back");
    assert!(!rid.is_empty());
    let filling = r
        .header("x-ratelimit-bucket-filling")
        .expect("bucket filling passed back");
    assert!(filling.ends_with("/200"), "{filling}");
}

#[tokio::test]
async fn https_upstream_trusted_through_ca_file() {
    let mut s = quiet();
    s.tls = true;
    let sim = Simulator::start(s.clone(), "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("TLS simulator");
    assert!(sim.base_url().starts_with("https://"));
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("sim-ca.pem");
    std::fs::write(&ca, sim.ca_cert_pem().expect("CA PEM")).expect("write CA");
    let h = Harness::around(sim, &s, &[], |c| c.shoptet.ca_file = Some(ca.clone())).await;
    h.install(ESHOP).await;
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.stats().eshops[&ESHOP].api_calls, 1);
    assert_eq!(h.minted(ESHOP), 1, "getAccessToken went over TLS too");
    // A replayed POST over the TLS connection (HTTP/2 by ALPN) is still sent whole, twice.
    h.revoke_tokens(ESHOP).await;
    let r = h
        .post_json(
            ESHOP,
            "/api/orders",
            r#"{"data":{"email":"tls@example.com"}}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(h.stats().eshops[&ESHOP].orders_created, 1);
}

#[tokio::test]
async fn client_keys_guard_the_proxy() {
    let keys_dir = tempfile::tempdir().expect("temp dir");
    let keys = keys_dir.path().join("client-keys");
    std::fs::write(&keys, "first-key-0123456789\nsecond-key-0123456789\n").expect("keys file");
    let keys_path = keys.display().to_string();
    let h = Harness::with_env(
        quiet(),
        &[("SHOPTET_PROXY_PROXY__CLIENT_KEYS_FILE", &keys_path)],
        |_| {},
    )
    .await;
    h.install(ESHOP).await;
    let url = h.url("/api/eshop");
    let id = ESHOP.to_string();
    for bad in [
        vec![],
        vec![("proxy-authorization", "Bearer wrong-key-0123456789")],
        vec![("proxy-authorization", "Bearer first-key-012345678")],
        vec![("proxy-authorization", "first-key-0123456789")],
    ] {
        let mut headers = vec![("x-shoptet-eshop-id", id.as_str())];
        headers.extend(bad);
        let r = h.client.get(&url, &headers).await;
        assert_proxy_error(&r, 401, "proxy-unauthorized");
    }
    assert_eq!(h.stats().calls.api, 0);
    for key in ["first-key-0123456789", "second-key-0123456789"] {
        let auth = format!("Bearer {key}");
        let r = h
            .client
            .get(
                &url,
                &[("x-shoptet-eshop-id", &id), ("proxy-authorization", &auth)],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let log = h.sim_requests(Some(ESHOP)).await;
    assert!(log
        .iter()
        .all(|r| r["headers"].get("proxy-authorization").is_none()));
}

#[tokio::test]
async fn http2_prior_knowledge_from_a_client() {
    let h = Harness::start(quiet()).await;
    h.install(ESHOP).await;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut handles = Vec::new();
    for _ in 0..10 {
        let req = Request::builder()
            .uri(h.url("/api/eshop"))
            .header("x-shoptet-eshop-id", ESHOP.to_string())
            .body(Empty::new())
            .expect("request");
        handles.push(client.request(req));
    }
    for f in handles {
        let resp = f.await.expect("HTTP/2 answer");
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert!(v["data"].is_object(), "{v}");
    }
    assert_eq!(h.stats().eshops[&ESHOP].api_calls, 10);
}

/// A token minted straight from the simulator, as if an earlier run had stored it.
async fn store_direct_token(h: &Harness, oauth_token: &str) {
    let token = h.client.api_token(&h.sim.base_url(), oauth_token).await;
    h.store
        .save_access_token(
            ESHOP,
            &AccessToken {
                token: shoptet_proxy::secret::Secret::new(token),
                expires_at: SystemTime::now() + Duration::from_secs(1800),
            },
        )
        .await
        .expect("save token");
}

#[tokio::test]
async fn untrusted_https_upstream_is_502_unreachable() {
    let mut s = quiet();
    s.tls = true;
    let h = Harness::start(s).await;
    let inst = h.install(ESHOP).await;
    // With a stored token the proxy goes straight to the API, whose certificate it cannot trust.
    store_direct_token(&h, &inst.oauth_token).await;
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_proxy_error(&r, 502, "proxy-upstream-unreachable");
    assert_eq!(h.stats().calls.api, 0);
}

/// A raw chunked POST of `body` in `parts` chunks; returns the answer's status.
async fn chunked_post(addr: SocketAddr, body: &str, parts: usize) -> u16 {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let head = format!(
        "POST /api/orders HTTP/1.1\r\nHost: x\r\nX-Shoptet-Eshop-Id: {ESHOP}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    let step = body.len().div_ceil(parts);
    for chunk in body.as_bytes().chunks(step) {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(chunk);
        frame.extend_from_slice(b"\r\n");
        s.write_all(&frame).await.expect("write chunk");
        s.flush().await.expect("flush");
    }
    s.write_all(b"0\r\n\r\n").await.expect("write last chunk");
    status_of_answer(&mut s, &head).await
}

#[tokio::test]
async fn chunked_bodies_replay_below_the_limit_and_stream_once_above_it() {
    let h = Harness::with(quiet(), |c| c.proxy.max_replay_body = 1024).await;
    h.install(ESHOP).await;
    let revoke = format!("/sim/eshops/{ESHOP}/revoke-tokens");
    assert_eq!(h.get(ESHOP, "/api/eshop").await.status, 200);
    h.sim_control(&revoke).await;
    let small = serde_json::json!({"data": {"email": "a@example.com", "note": "y".repeat(500)}})
        .to_string();
    assert_eq!(chunked_post(h.proxy_addr, &small, 4).await, 201);
    assert_eq!(h.get(ESHOP, "/api/eshop").await.status, 200);
    h.sim_control(&revoke).await;
    let big = serde_json::json!({"data": {"email": "b@example.com", "note": "z".repeat(5000)}})
        .to_string();
    assert_eq!(chunked_post(h.proxy_addr, &big, 8).await, 401);
    let posts: Vec<_> = h
        .sim_requests(None)
        .await
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    let summary: Vec<_> = posts
        .iter()
        .map(|r| (r["status"].as_u64(), r["bodyLen"].as_u64()))
        .collect();
    let (s, b) = (small.len() as u64, big.len() as u64);
    assert_eq!(
        summary,
        [
            (Some(401), Some(s)),
            (Some(201), Some(s)),
            (Some(401), Some(b))
        ],
        "small: replayed whole; big: streamed whole, once"
    );
    assert_eq!(posts[0]["bodyFnv1a"], posts[1]["bodyFnv1a"]);
}
