//! Hostile input against the real proxy listener (issue 7, part 4): slowloris, idle connections,
//! oversized heads and bodies, request smuggling, odd bytes, path tricks, other hosts, CONNECT and
//! HTTP/2 rapid reset. Each case must end in a clear 4xx or a closed connection, must never reach
//! anything but the configured API, and must leave the proxy serving: every test finishes with a
//! normal request that gets 200.
//!
//! The proxy runs in-process (`app::start_with_limits` on 127.0.0.1:0) in front of the simulator.
//! Malformed HTTP/1 is written with raw `TcpStream`s, since a real client library refuses to
//! send it.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Harness, ESHOP};
use http::{Request, StatusCode};
use shoptet_proxy::listeners::server::Limits;
use shoptet_proxy::sim::testing::{self, TestClient};
use shoptet_proxy::sim::{SimConfig, SimHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for anything the proxy should answer (or close) promptly.
const PROMPT: Duration = Duration::from_secs(10);

/// The simulator with `ESHOP` installed and a proxy in front of it whose listeners have `limits`.
async fn start_with_limits(limits: Limits) -> Harness {
    let h = Harness::with_limits(SimConfig::default(), limits).await;
    h.install(ESHOP).await;
    h
}

async fn start() -> Harness {
    start_with_limits(Limits::default()).await
}

/// A well-formed tagged request gets Shoptet's 200 through the proxy.
async fn assert_still_serving(h: &Harness) {
    let r = tokio::time::timeout(PROMPT, h.get(ESHOP, "/api/eshop"))
        .await
        .expect("a normal request is answered in time");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// Paths (with query) of every /api request `sim` has seen.
async fn sim_paths(client: &TestClient, sim: &SimHandle) -> Vec<String> {
    let r = client
        .get(&format!("{}/sim/requests", sim.base_url()), &[])
        .await;
    r.json()["requests"]
        .as_array()
        .expect("requests list")
        .iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Writes `request` on a fresh connection and reads until the proxy closes it. Returns what was
/// read; panics if the connection is still open after [`PROMPT`].
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    // The proxy may answer and close before it has read everything (e.g. an oversized head);
    // the answer is what matters, not whether the rest of the write got through.
    let _ = conn.write_all(request).await;
    read_until_closed(&mut conn).await
}

async fn read_until_closed(conn: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(PROMPT, async {
        let mut buf = [0u8; 8192];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "connection still open after {PROMPT:?}; got {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// Status codes of every HTTP/1 response in `raw`, in order.
fn statuses(raw: &str) -> Vec<u16> {
    raw.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| raw.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: proxy\r\nX-Shoptet-Eshop-Id: {ESHOP}\r\n{extra}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn slowloris_trickling_headers_is_cut_off_after_the_header_read_timeout() {
    let timeout = Duration::from_millis(300);
    let h = start_with_limits(Limits {
        header_read_timeout: timeout,
        ..Limits::default()
    })
    .await;
    let mut conn = TcpStream::connect(h.proxy_addr).await.expect("connect");
    let started = Instant::now();
    conn.write_all(b"GET /api/eshop HTTP/1.1\r\nHost: proxy\r\n")
        .await
        .expect("request line");
    // One header line every 50 ms never completes the head; the proxy must give up on it.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut buf = [0u8; 1024];
    let closed_after = loop {
        tokio::select! {
            _ = tick.tick() => {
                if conn.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    break started.elapsed();
                }
            }
            r = conn.read(&mut buf) => match r {
                // EOF, a reset or a 408: either way the head was refused.
                Ok(0) | Err(_) => break started.elapsed(),
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
                }
            },
        }
        assert!(started.elapsed() < PROMPT, "slowloris connection never cut");
    };
    assert!(
        closed_after >= timeout,
        "cut before the timeout: {closed_after:?}"
    );
    assert_still_serving(&h).await;
}

#[tokio::test]
async fn idle_and_half_open_connections_do_not_block_a_normal_request() {
    // Few slots and a short head timeout: the idle connections fill every slot many times over,
    // so a normal request is served only because idle connections are cut, not because there
    // is room to spare.
    let h = start_with_limits(Limits {
        header_read_timeout: Duration::from_millis(300),
        max_connections: 8,
    })
    .await;
    let mut idle = Vec::new();
    for i in 0..32 {
        let mut c = TcpStream::connect(h.proxy_addr).await.expect("connect");
        if i % 2 == 1 {
            // Half a request line, then silence.
            c.write_all(b"GET /api/ord").await.expect("partial write");
        }
        idle.push(c);
    }
    assert_still_serving(&h).await;
    for mut c in idle {
        // Every idle connection is eventually closed by the proxy (read_until_closed bounds it).
        let got = read_until_closed(&mut c).await;
        assert!(
            got.is_empty() || got.starts_with("HTTP/1.1 408"),
            "idle connection got {got:?}"
        );
    }
    assert_still_serving(&h).await;
}

#[tokio::test]
async fn oversized_headers_get_431_or_a_closed_connection() {
    let h = start().await;
    let huge = format!("X-Big: {}\r\n", "a".repeat(100 * 1024));
    let got = raw_exchange(h.proxy_addr, &get("/api/eshop", &huge)).await;
    let s = statuses(&got);
    assert!(s.is_empty() || s == [431], "{got}");
    let many: String = (0..2000).map(|i| format!("X-H{i}: {i:040}\r\n")).collect();
    let got = raw_exchange(h.proxy_addr, &get("/api/eshop", &many)).await;
    let s = statuses(&got);
    assert!(s.is_empty() || s == [431], "{got}");
    assert!(sim_paths(&h.client, &h.sim).await.is_empty());
    assert_still_serving(&h).await;
}

#[tokio::test]
async fn oversized_body_is_refused_with_413_before_it_is_read() {
    let h = start().await;
    let req = format!(
        "POST /api/orders HTTP/1.1\r\nHost: proxy\r\nX-Shoptet-Eshop-Id: {ESHOP}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{",
        64 * 1024 * 1024 + 1
    );
    let got = raw_exchange(h.proxy_addr, req.as_bytes()).await;
    assert_eq!(statuses(&got), [413], "{got}");
    assert!(got.contains("proxy-body-too-large"), "{got}");
    assert!(sim_paths(&h.client, &h.sim).await.is_empty());
    assert_still_serving(&h).await;
}

#[tokio::test]
async fn conflicting_framing_cannot_smuggle_a_second_request() {
    let h = start().await;
    let smuggled =
        format!("GET /api/smuggled HTTP/1.1\r\nHost: proxy\r\nX-Shoptet-Eshop-Id: {ESHOP}\r\n\r\n");
    // CL.TE and TE.CL: whichever framing a parser picks, the rest must not become a request.
    let cl_te = format!(
        "GET /api/eshop HTTP/1.1\r\nHost: proxy\r\nX-Shoptet-Eshop-Id: {ESHOP}\r\n\
         Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    let te_cl = format!(
        "GET /api/eshop HTTP/1.1\r\nHost: proxy\r\nX-Shoptet-Eshop-Id: {ESHOP}\r\n\
         Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    let two_lengths = format!(
        "POST /api/orders HTTP/1.1\r\nHost: proxy\r\nX-Shoptet-Eshop-Id: {ESHOP}\r\n\
         Content-Length: 2\r\nContent-Length: {}\r\n\r\n{{}}{smuggled}",
        2 + smuggled.len()
    );
    let obs_fold = format!(
        "GET /api/eshop HTTP/1.1\r\nHost: proxy\r\nX-Shoptet-Eshop-Id: {ESHOP}\r\n\
         X-Folded: a\r\n b\r\n\r\n{smuggled}"
    );
    let te_not_chunked = format!(
        "POST /api/orders HTTP/1.1\r\nHost: proxy\r\nX-Shoptet-Eshop-Id: {ESHOP}\r\n\
         Transfer-Encoding: gzip\r\n\r\n{smuggled}"
    );
    for (name, req) in [
        ("CL.TE", &cl_te),
        ("TE.CL", &te_cl),
        ("two Content-Lengths", &two_lengths),
        ("obs-fold", &obs_fold),
        ("Transfer-Encoding without chunked", &te_not_chunked),
    ] {
        let got = raw_exchange(h.proxy_addr, req.as_bytes()).await;
        let s = statuses(&got);
        // At most the first request is answered, never the smuggled one, and only
        // a complete, unambiguous request may get more than a 400.
        assert!(s.len() <= 1, "{name}: {got}");
        assert!(s.iter().all(|c| *c < 500), "{name}: {got}");
        let paths = sim_paths(&h.client, &h.sim).await;
        assert!(
            !paths.iter().any(|p| p.contains("smuggled")),
            "{name}: the simulator saw {paths:?}"
        );
    }
    for (name, req) in [
        ("two Content-Lengths", &two_lengths),
        ("obs-fold", &obs_fold),
        ("Transfer-Encoding without chunked", &te_not_chunked),
    ] {
        let got = raw_exchange(h.proxy_addr, req.as_bytes()).await;
        let s = statuses(&got);
        assert!(s.is_empty() || s == [400], "{name}: {got}");
    }
    assert_still_serving(&h).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_header_is_forwarded_or_refused_but_never_a_5xx() {
    let h = start().await;
    let mut req = get("/api/eshop", "");
    let at = req.len() - 2;
    req.splice(at..at, b"X-Note: caf\xe9 \xff\xfe\r\n".iter().copied());
    let got = raw_exchange(h.proxy_addr, &req).await;
    let s = statuses(&got);
    assert!(s == [200] || s == [400] || s.is_empty(), "{got}");
    // Invalid UTF-8 in the e-shop tag itself is a bad tag, not a server error.
    let got = raw_exchange(
        h.proxy_addr,
        b"GET /api/eshop HTTP/1.1\r\nHost: proxy\r\nX-Shoptet-Eshop-Id: 22\xff\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), [400], "{got}");
    assert!(got.contains("proxy-invalid-eshop-id"), "{got}");
    assert_still_serving(&h).await;
}

#[tokio::test]
async fn path_traversal_and_encoded_slashes_are_404() {
    let h = start().await;
    for path in [
        "/api/../sim/requests",
        "/api/%2e%2e/sim/config",
        "/api/orders%2F..%2F..%2Fsim%2Fconfig",
        "/api/orders%2f1",
        "/eshops/222651/api/..%2f..%2fsim/config",
        "/eshops/222651/api/../../sim/config",
        "/api//eshop",
        "/api/./eshop",
        "/api/a%5cb",
        "/api/a\\..\\b",
        "/sim/config",
        "/admin/eshops",
    ] {
        let got = raw_exchange(h.proxy_addr, &get(path, "")).await;
        assert_eq!(statuses(&got), [404], "{path}: {got}");
        assert!(got.contains("proxy-not-found"), "{path}: {got}");
    }
    assert!(sim_paths(&h.client, &h.sim).await.is_empty());
    assert_still_serving(&h).await;
}

#[tokio::test]
async fn absolute_form_uri_and_host_header_cannot_reach_another_host() {
    let h = start().await;
    let other = testing::start(SimConfig::default()).await;
    other.create_eshop(ESHOP);
    let o = other.addr();
    let requests = [
        format!(
            "GET http://{o}/api/eshop HTTP/1.1\r\nHost: {o}\r\nX-Shoptet-Eshop-Id: {ESHOP}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET https://{o}/api/eshop HTTP/1.1\r\nHost: {o}\r\nX-Shoptet-Eshop-Id: {ESHOP}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET /api/eshop HTTP/1.1\r\nHost: {o}\r\nX-Shoptet-Eshop-Id: {ESHOP}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET /eshops/{ESHOP}/api/eshop HTTP/1.1\r\nHost: {o}\r\nX-Forwarded-Host: {o}\r\nConnection: close\r\n\r\n"
        ),
    ];
    for req in &requests {
        let got = raw_exchange(h.proxy_addr, req.as_bytes()).await;
        let s = statuses(&got);
        assert!(
            s == [200] || (s.len() == 1 && (400..500).contains(&s[0])),
            "{got}"
        );
    }
    assert_eq!(other.stats().calls.api, 0, "the other host was reached");
    assert!(sim_paths(&h.client, &other).await.is_empty());
    assert!(
        !sim_paths(&h.client, &h.sim).await.is_empty(),
        "nothing reached the API"
    );
    assert_still_serving(&h).await;
}

#[tokio::test]
async fn connect_is_refused_with_a_4xx() {
    let h = start().await;
    let other = testing::start(SimConfig::default()).await;
    let o = other.addr();
    let req = format!(
        "CONNECT {o} HTTP/1.1\r\nHost: {o}\r\nX-Shoptet-Eshop-Id: {ESHOP}\r\nConnection: close\r\n\r\n"
    );
    let got = raw_exchange(h.proxy_addr, req.as_bytes()).await;
    let s = statuses(&got);
    assert!(s.len() == 1 && (400..500).contains(&s[0]), "{got}");
    assert_eq!(other.stats().calls.api, 0);
    assert!(sim_paths(&h.client, &h.sim).await.is_empty());
    assert_still_serving(&h).await;
}

#[tokio::test]
async fn http2_rapid_reset_does_not_stop_other_clients() {
    let h = start().await;
    let addr = h.proxy_addr;
    let attack = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let conn = tokio::spawn(conn);
        let sent = open_and_reset(client, addr, 5_000).await;
        // The proxy either drops this connection (GOAWAY) or it ends now that the client is gone.
        let _ = tokio::time::timeout(PROMPT, conn).await;
        sent
    });
    // Served while the attack runs, and after it.
    assert_still_serving(&h).await;
    let sent = attack.await.expect("attack task");
    assert!(sent > 0, "no stream was opened");
    assert_still_serving(&h).await;
    // The proxy's HTTP/2 side still works for a well-behaved client.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    let req = Request::get(format!("http://{addr}/api/eshop"))
        .header("x-shoptet-eshop-id", ESHOP.to_string())
        .body(())
        .expect("request");
    let (resp, _) = client.send_request(req, true).expect("send");
    let resp = tokio::time::timeout(PROMPT, resp)
        .await
        .expect("answered in time")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Opens up to `n` streams on `client`, resetting each at once; returns how many were opened
/// before the proxy stopped accepting them.
async fn open_and_reset(
    mut client: h2::client::SendRequest<bytes::Bytes>,
    addr: SocketAddr,
    n: u32,
) -> u32 {
    let mut sent = 0;
    for _ in 0..n {
        let req = Request::get(format!("http://{addr}/api/eshop"))
            .header("x-shoptet-eshop-id", ESHOP.to_string())
            .body(())
            .expect("request");
        client = match client.ready().await {
            Ok(c) => c,
            Err(_) => break,
        };
        let Ok((_resp, mut stream)) = client.send_request(req, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    sent
}
