//! Header-name case through the proxy on HTTP/1.1 (SPEC A3, B2): the client reads Shoptet's
//! spellings (`X-RateLimit-Bucket-Filling`, ...) byte for byte, as the official PHP SDK looks
//! them up case-sensitively, and Shoptet sees the client's own spellings — also on a replay after
//! a 401 and on a retry after a 429. Both ends are raw sockets so nothing normalises the bytes.

mod common;

use common::{Harness, ESHOP};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sends `head` (a complete HTTP/1.1 request without body, `Connection: close`) to `addr` and
/// returns every byte of the answer.
async fn raw_exchange(addr: std::net::SocketAddr, head: &str) -> String {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    s.write_all(head.as_bytes()).await.expect("send request");
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.expect("read answer");
    String::from_utf8(got).expect("utf-8 answer")
}

/// Header names of an answer or request head, as they appear on the wire.
fn names(head: &str) -> Vec<&str> {
    head.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n))
        .collect()
}

/// A raw HTTP/1.1 upstream standing in for Shoptet: records every request head it receives and
/// answers the n-th request with `answers[n]` (the last one repeats), keeping connections alive.
async fn raw_upstream(answers: Vec<String>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind(common::LOOPBACK).await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head: Vec<u8> = buf.drain(..end + 4).collect();
                    let n = {
                        let mut heads = seen.lock().expect("lock");
                        heads.push(String::from_utf8_lossy(&head).into_owned());
                        heads.len() - 1
                    };
                    let answer = &answers[n.min(answers.len() - 1)];
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, heads)
}

fn answer(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn shoptet_spellings_reach_the_client_and_the_clients_reach_shoptet() {
    let expired = r#"{"data":null,"errors":[{"errorCode":"expired-token","message":"Token is expired. Please ask for new one.","instance":"x"}]}"#;
    let ok = r#"{"data":{"ok":true},"errors":null}"#;
    let (api, heads) = raw_upstream(vec![
        // A 401 the proxy replays with a new token ...
        answer("401 Unauthorized", "X-Request-ID: r1\r\n", expired),
        // ... a bucket 429 it retries at once (GET, Retry-After 0) ...
        answer(
            "429 Too Many Requests",
            "Retry-After: 0\r\nX-RateLimit-Bucket-Filling: 200/200\r\n",
            "{}",
        ),
        // ... and the answer the client gets, with every spelling Shoptet uses.
        answer(
            "200 OK",
            "X-Request-ID: r3\r\nX-RateLimit-Bucket-Filling: 3/200\r\nRetry-After: 120\r\n\
             X-Shoptet-Deprecated: This endpoint is deprecated\r\nSunset: Wed, 01 Sep 2027 00:00:00 GMT\r\n",
            ok,
        ),
    ])
    .await;
    let h = Harness::with(common::sim_config(), |cfg| {
        cfg.shoptet.api_url = api.parse().expect("stand-in URL");
        cfg.proxy.bucket_pacing = false;
    })
    .await;
    h.install(ESHOP).await;

    let got = raw_exchange(
        h.proxy_addr,
        &format!(
            "GET /api/eshop HTTP/1.1\r\nHost: proxy\r\nX-Shoptet-Eshop-Id: {ESHOP}\r\n\
             X-Custom-Header: kept\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let answered = names(&got);
    for name in [
        "X-Request-ID",
        "X-RateLimit-Bucket-Filling",
        "Retry-After",
        "X-Shoptet-Deprecated",
        "Sunset",
        "Content-Type",
    ] {
        assert!(answered.contains(&name), "{name} not spelled so: {got}");
    }
    assert!(got.ends_with(ok), "{got}");

    let heads = heads.lock().expect("lock").clone();
    assert_eq!(heads.len(), 3, "401, 429 and 200: {heads:?}");
    for head in &heads {
        let sent = names(head);
        assert!(sent.contains(&"X-Custom-Header"), "{head}");
        assert!(sent.contains(&"Accept"), "{head}");
        // The proxy's own headers: the token and its routing tag gone.
        assert!(!head.contains("X-Shoptet-Eshop-Id"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("shoptet-access-token"),
            "{head}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn the_simulators_spellings_reach_the_client() {
    let h = Harness::start(common::sim_config()).await;
    h.install(ESHOP).await;
    let got = raw_exchange(
        h.proxy_addr,
        &format!(
            "GET /api/eshop HTTP/1.1\r\nHost: proxy\r\nX-Shoptet-Eshop-Id: {ESHOP}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let answered = names(&got);
    assert!(answered.contains(&"X-Request-ID"), "{got}");
    assert!(answered.contains(&"X-RateLimit-Bucket-Filling"), "{got}");
    h.stop().await;
}

#[tokio::test]
async fn http2_answers_stay_lower_case() {
    let h = Harness::start(common::sim_config()).await;
    h.install(ESHOP).await;
    let tcp = TcpStream::connect(h.proxy_addr).await.expect("connect");
    let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://proxy/eshops/{ESHOP}/api/eshop"))
        .body(())
        .expect("request");
    let (resp, _) = client.send_request(req, true).expect("send");
    let resp = resp.await.expect("answer");
    assert_eq!(resp.status(), 200);
    // HTTP/2 names are lower-case by definition; the proxy must still pass the headers on.
    assert!(resp.headers().contains_key("x-ratelimit-bucket-filling"));
    assert!(resp.headers().contains_key("x-request-id"));
    h.stop().await;
}
