//! The promises that must hold when clients give up, bodies grow and keys are wrong (SPEC B2,
//! B5): a token fetch outlives the client that started it, a store sealed with another key is
//! refused at start, streamed bodies are cut off at 64 MiB, a 429 that cannot be retried goes
//! back as the 429, and a retried 429 keeps its pooled connection.

mod common;

use bytes::Bytes;
use common::binary::{command, Served, Setup};
use common::{sim_config, Harness, ESHOP};
use futures_util::future::join_all;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use shoptet_proxy::store::{AccessToken, Keyring};
use std::convert::Infallible;
use std::io::Read as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GIVE_UP: Duration = Duration::from_millis(300);

/// Simulator without the bucket or concurrency limits: these tests are about tokens and bodies.
fn unlimited() -> shoptet_proxy::sim::SimConfig {
    let mut s = sim_config();
    s.bucket = false;
    s.per_token_concurrency = 0;
    s.per_ip_concurrency = 0;
    s
}

/// A client that sends `GET /api/eshop` for `eshop_id` and closes its connection after `after`
/// unless answered before.
async fn give_up(proxy: std::net::SocketAddr, eshop_id: u64, after: Duration) {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let head =
        format!("GET /api/eshop HTTP/1.1\r\nhost: proxy\r\nx-shoptet-eshop-id: {eshop_id}\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    let mut buf = [0u8; 1];
    let _ = tokio::time::timeout(after, s.read(&mut buf)).await;
}

/// Seven clients, one every 0.2 s, each giving up 0.3 s after it started: all of them during
/// one 1.5-s getAccessToken.
async fn seven_impatient_clients(h: &Harness) {
    let clients = (0..7u32).map(|i| {
        let addr = h.proxy_addr;
        async move {
            tokio::time::sleep(Duration::from_millis(200) * i).await;
            give_up(addr, ESHOP, GIVE_UP).await;
        }
    });
    join_all(clients).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_giving_up_during_a_slow_token_fetch_do_not_burn_tokens() {
    let h = Harness::start(unlimited()).await;
    h.install(ESHOP).await;
    h.sim
        .set_config(|c| c.token_delay = Duration::from_millis(1500));
    seven_impatient_clients(&h).await;
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        h.token_calls() <= 2,
        "getAccessToken calls: {}",
        h.token_calls()
    );
    assert!(h.minted(ESHOP) <= 2, "minted: {}", h.minted(ESHOP));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_giving_up_during_the_refresh_after_a_401_do_not_burn_tokens() {
    let h = Harness::start(unlimited()).await;
    h.install(ESHOP).await;
    assert_eq!(h.get(ESHOP, "/api/eshop").await.status, StatusCode::OK);
    h.sim
        .set_config(|c| c.token_delay = Duration::from_millis(1500));
    h.revoke_tokens(ESHOP).await;
    let before = h.token_calls();
    seven_impatient_clients(&h).await;
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let calls = h.token_calls() - before;
    assert!(
        calls <= 2,
        "getAccessToken calls since the revocation: {calls}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_all_giving_up_leave_one_token_behind() {
    // Every client reaches the token cache rather than a queue behind 3 slots.
    let h = Harness::with(unlimited(), |c| {
        c.proxy.max_in_flight_per_eshop = 200;
        c.proxy.max_in_flight = 200;
    })
    .await;
    h.install(ESHOP).await;
    h.sim
        .set_config(|c| c.token_delay = Duration::from_millis(1500));
    join_all((0..100).map(|_| give_up(h.proxy_addr, ESHOP, GIVE_UP))).await;
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        h.token_calls() <= 2,
        "getAccessToken calls: {}",
        h.token_calls()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_client_is_served_by_the_token_the_one_that_left_started() {
    let h = Harness::start(unlimited()).await;
    h.install(ESHOP).await;
    h.sim.set_config(|c| c.token_delay = Duration::from_secs(1));
    let started = Instant::now();
    give_up(h.proxy_addr, ESHOP, GIVE_UP).await;
    let r = h.get(ESHOP, "/api/eshop").await;
    let served_after = started.elapsed();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(h.minted(ESHOP), 1, "one token in all");
    // The second client waited for the remaining part of the first fetch, not a fetch of its own.
    assert!(
        served_after < Duration::from_millis(1900),
        "served after {served_after:?}"
    );
    h.stop().await;
}

/// `serve` with `config`, expected to exit on its own within `limit`: its status and output.
fn serve_until_exit(config: &std::path::Path, limit: Duration) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = command(config.parent().expect("dir"))
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve");
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let took = started.elapsed();
            let mut out = String::new();
            for pipe in [
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read>),
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read>),
            ]
            .into_iter()
            .flatten()
            {
                let mut p = pipe;
                let _ = p.read_to_string(&mut out);
            }
            return (status.code(), out, took);
        }
        if started.elapsed() > limit * 5 {
            let _ = child.kill();
            panic!("serve did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_store_sealed_with_another_key_and_accepts_it_as_a_previous_key() {
    let setup = Setup::new("http://127.0.0.1:9", "1s").await;
    let inst = setup.install(ESHOP).await;
    // A current token stored under the old key: served from the store, nothing minted.
    let token = shoptet_proxy::sim::testing::TestClient::new()
        .api_token(&setup.sim.base_url(), &inst.oauth_token)
        .await;
    setup
        .store()
        .await
        .save_access_token(
            ESHOP,
            &AccessToken {
                token: shoptet_proxy::secret::Secret::new(token),
                expires_at: SystemTime::now() + Duration::from_secs(1700),
            },
        )
        .await
        .expect("save token");
    let old_key = setup.dir.path().join("store.key");
    let old_id = Keyring::load(&old_key, &[]).expect("old key").key_ids()[0].clone();
    let new_key = setup.dir.path().join("new.key");
    std::fs::write(&new_key, shoptet_proxy::store::generate_key_base64()).expect("new key");
    let new_id = Keyring::load(&new_key, &[]).expect("new key").key_ids()[0].clone();
    let original = std::fs::read_to_string(&setup.config).expect("config");
    let key_line = format!("key_file = \"{}\"", old_key.display());
    assert!(original.contains(&key_line));
    let swapped = original.replace(&key_line, &format!("key_file = \"{}\"", new_key.display()));
    std::fs::write(&setup.config, &swapped).expect("config");

    let (code, out, took) = serve_until_exit(&setup.config, Duration::from_secs(1));
    assert_eq!(code, Some(2), "{out}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(out.contains(&old_id) && out.contains(&new_id), "{out}");

    let with_previous = swapped.replace(
        &format!("key_file = \"{}\"", new_key.display()),
        &format!(
            "key_file = \"{}\"\nprevious_key_files = [\"{}\"]",
            new_key.display(),
            old_key.display()
        ),
    );
    std::fs::write(&setup.config, with_previous).expect("config");
    let minted = common::minted(&setup.sim, ESHOP);
    let served = Served::start(&setup.config, "");
    let r = shoptet_proxy::sim::testing::TestClient::new()
        .get(
            &format!("http://{}/api/eshop", served.proxy),
            &[
                ("x-shoptet-eshop-id", &ESHOP.to_string()),
                ("proxy-authorization", &setup.client_auth()),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(common::minted(&setup.sim, ESHOP), minted, "nothing minted");
}

type Body = BoxBody<Bytes, Infallible>;

/// An upstream API on a loopback port that counts the connections it accepted.
async fn upstream<F, Fut>(handle: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let handle = handle.clone();
            let svc = hyper::service::service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    (url, connections)
}

fn full(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r
}

/// A proxy whose API is `api` and whose tokens come from the simulator.
async fn proxy_for(api: &str, tweak: impl FnOnce(&mut shoptet_proxy::config::Config)) -> Harness {
    let api: url::Url = api.parse().expect("url");
    let h = Harness::with(unlimited(), |c| {
        c.shoptet.api_url = api;
        tweak(c);
    })
    .await;
    h.install(ESHOP).await;
    h
}

/// Sends `size` bytes as a chunked body (1 MiB chunks) and returns the response's status and
/// body text, reading while writing so an early answer is not missed.
async fn chunked_upload(proxy: std::net::SocketAddr, size: usize) -> (u16, String) {
    let s = TcpStream::connect(proxy).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /api/products HTTP/1.1\r\nhost: proxy\r\nx-shoptet-eshop-id: {ESHOP}\r\n\
             content-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            wr.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            wr.write_all(&chunk[..n]).await?;
            wr.write_all(b"\r\n").await?;
            left -= n;
        }
        wr.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break None,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer"),
        }
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let status: u16 = text[9..12].parse().expect("status");
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().expect("length"))
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                break Some((status, text[end + 4..end + 4 + length].to_owned()));
            }
        }
    };
    let _ = writer.await;
    status.unwrap_or_else(|| panic!("connection closed before an answer: {got:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_over_64_mib_is_cut_off_with_413_and_10_mib_passes() {
    let (api, _) = upstream(|req: Request<Incoming>| async move {
        match req.into_body().collect().await {
            Ok(b) => full(200, b.to_bytes().len().to_string()),
            Err(_) => full(400, "aborted"),
        }
    })
    .await;
    let h = proxy_for(&api, |_| {}).await;
    let (status, body) = chunked_upload(h.proxy_addr, 65 << 20).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("proxy-body-too-large"), "{body}");
    let (status, body) = chunked_upload(h.proxy_addr, 10 << 20).await;
    assert_eq!((status, body.as_str()), (200, "10485760"));
    let (status, body) = chunked_upload(h.proxy_addr, 64 << 20).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "67108864"),
        "exactly 64 MiB passes"
    );
    // Still serving.
    assert_eq!(h.get(ESHOP, "/api/eshop").await.status, StatusCode::OK);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_to_a_get_whose_streamed_body_was_not_kept_goes_back_as_429() {
    let (api, _) = upstream(|req: Request<Incoming>| async move {
        let _ = req.into_body().collect().await;
        let mut r = full(429, r#"{"data":null,"errors":[]}"#);
        r.headers_mut()
            .insert("retry-after", http::HeaderValue::from_static("1"));
        r
    })
    .await;
    let h = proxy_for(&api, |c| c.proxy.max_replay_body = 1024).await;
    let r = h
        .call(
            http::Method::GET,
            ESHOP,
            "/api/eshop",
            &[],
            Bytes::from(vec![b'x'; 4096]),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_429_keeps_its_upstream_connection() {
    // The 429's body comes in two parts, 50 ms apart, as a slow Shoptet would send it: an
    // answer dropped unread would close the connection and the retry would open another.
    let calls = Arc::new(AtomicUsize::new(0));
    let (api, connections) = upstream(move |_req: Request<Incoming>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if n > 0 {
                return full(200, r#"{"data":{},"errors":null}"#);
            }
            let parts = futures_util::stream::unfold(0, |i| async move {
                if i == 2 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                let part = if i == 0 {
                    "{\"data\":null,"
                } else {
                    "\"errors\":[]}"
                };
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(part))), i + 1))
            });
            let mut r = Response::new(StreamBody::new(parts).boxed());
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            r
        }
    })
    .await;
    let h = proxy_for(&api, |_| {}).await;
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "the retry went over the connection of the 429"
    );
    h.stop().await;
}
