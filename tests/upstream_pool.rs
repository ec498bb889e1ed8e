//! The proxy's own connection pool to the API (`http::upstream`), against raw upstreams that
//! count the connections they accept: an answer read to its end gives its connection back, one
//! left unread closes it, a connection the server closed while idle is never used, and a TLS
//! upstream that chooses HTTP/2 is spoken to in HTTP/2.

mod common;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::BodyExt;
use shoptet_proxy::http::body::ReqBody;
use shoptet_proxy::http::client;
use shoptet_proxy::http::upstream::{Upstream, UpstreamBody};
use shoptet_proxy::sim::{SimConfig, Simulator};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

/// How the raw upstream treats a connection after each answer.
#[derive(Clone, Copy, PartialEq)]
enum After {
    /// Waits for the next request (keep-alive).
    KeepOpen,
    /// Closes the socket without saying so in the answer once `close_idle` is notified: what a
    /// server does when its idle timeout ends a kept-alive connection.
    CloseWhenTold,
}

struct RawUpstream {
    url: String,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// One message per connection the server closed.
    closed: mpsc::UnboundedReceiver<()>,
    close_idle: Arc<Notify>,
}

/// A raw HTTP/1.1 upstream answering every request head with a 200 carrying `body_len` bytes.
async fn raw_upstream(body_len: usize, after: After) -> RawUpstream {
    let listener = TcpListener::bind(common::LOOPBACK).await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let (closes, closed) = mpsc::unbounded_channel();
    let close_idle = Arc::new(Notify::new());
    let told = close_idle.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let closes = closes.clone();
            let told = told.clone();
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
                    buf.drain(..end + 4);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {body_len}\r\nX-RateLimit-Bucket-Filling: 1/200\r\n\r\n"
                    );
                    let mut answer = head.into_bytes();
                    answer.resize(answer.len() + body_len, b'x');
                    if s.write_all(&answer).await.is_err() {
                        return;
                    }
                    if after == After::CloseWhenTold {
                        told.notified().await;
                        drop(s);
                        let _ = closes.send(());
                        return;
                    }
                }
            });
        }
    });
    RawUpstream {
        url,
        accepted,
        closed,
        close_idle,
    }
}

fn pool(url: &str, ca_file: Option<&std::path::Path>) -> Upstream {
    client::install_crypto_provider();
    let connector = client::connector(ca_file, Duration::from_secs(2)).expect("connector");
    Upstream::new(&url.parse().expect("url"), connector).expect("pool")
}

async fn get(pool: &Upstream, path: &str) -> http::Response<UpstreamBody> {
    let req = Request::get(pool.target(path, None).expect("target"))
        .body(ReqBody::empty())
        .expect("request");
    pool.request(req).await.expect("answer")
}

async fn read(resp: http::Response<UpstreamBody>) -> Bytes {
    resp.into_body().collect().await.expect("body").to_bytes()
}

#[tokio::test]
async fn answers_read_to_their_end_give_the_connection_back() {
    let up = raw_upstream(3000, After::KeepOpen).await;
    let pool = pool(&up.url, None);
    for _ in 0..20 {
        let resp = get(&pool, "/api/eshop").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(read(resp).await.len(), 3000);
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "one connection for all"
    );
}

#[tokio::test]
async fn an_empty_answer_gives_its_connection_back_unpolled() {
    let up = raw_upstream(0, After::KeepOpen).await;
    let pool = pool(&up.url, None);
    for _ in 0..5 {
        // Dropped without a poll: an empty body is already at its end.
        let resp = get(&pool, "/api/eshop").await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_answer_left_unread_closes_its_connection() {
    let up = raw_upstream(1 << 20, After::KeepOpen).await;
    let pool = pool(&up.url, None);
    let resp = get(&pool, "/api/orders").await;
    assert_eq!(resp.status(), 200);
    drop(resp);
    // The next request cannot meet the rest of that body: it gets a connection of its own.
    let resp = get(&pool, "/api/orders").await;
    assert_eq!(read(resp).await.len(), 1 << 20);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

// Paused time: the one-millisecond sleep below only lets the runtime turn its I/O driver once
// (on loopback the server's FIN has arrived when its close returns), as an idle minute would.
#[tokio::test(start_paused = true)]
async fn a_connection_closed_while_idle_is_not_used_again() {
    let mut up = raw_upstream(10, After::CloseWhenTold).await;
    let pool = pool(&up.url, None);
    for _ in 0..3 {
        let resp = get(&pool, "/api/eshop").await;
        assert_eq!(read(resp).await.len(), 10);
        up.close_idle.notify_one();
        up.closed.recv().await.expect("the server closed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        3,
        "a new connection each time, no error"
    );
}

#[tokio::test]
async fn a_tls_upstream_choosing_http2_is_spoken_to_in_http2() {
    let cfg = SimConfig {
        tls: true,
        ..SimConfig::default()
    };
    let sim = Simulator::start(cfg, common::LOOPBACK.parse().expect("addr"))
        .await
        .expect("TLS simulator");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("sim-ca.pem");
    std::fs::write(&ca, sim.ca_cert_pem().expect("CA PEM")).expect("write CA");
    let pool = pool(&sim.base_url(), Some(&ca));
    let answers = futures_util::future::join_all((0..4).map(|_| get(&pool, "/api/eshop"))).await;
    for resp in answers {
        assert_eq!(resp.version(), Version::HTTP_2);
        // No token: the simulator's own 401 envelope, over HTTP/2.
        assert_eq!(resp.status(), 401);
        assert!(!read(resp).await.is_empty());
    }
}
