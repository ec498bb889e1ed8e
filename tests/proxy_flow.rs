//! Flow control end to end (SPEC B2): the per-e-shop concurrency limit keeps Shoptet's 3-per-token
//! rule, the bounded FIFO queue answers `proxy-queue-full` / `proxy-queue-timeout`, and a 429 is
//! retried for GET/HEAD after its `Retry-After` but handed back for other methods.

mod common;

use bytes::Bytes;
use common::{assert_proxy_error, sim_config, wait_until, Harness, ESHOP};
use futures_util::future::join_all;
use http::{Method, StatusCode};
use shoptet_proxy::sim::testing::TestResponse;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn slow_get(h: &Harness, delay_ms: u64) -> shoptet_proxy::sim::testing::TestResponse {
    let delay = delay_ms.to_string();
    h.call(
        Method::GET,
        ESHOP,
        "/api/eshop",
        &[("x-sim-delay-ms", &delay)],
        Bytes::new(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_endpoint_keeps_three_per_token_and_no_429() {
    // Shoptet's defaults: 3 per token, the bucket on.
    let h = Arc::new(Harness::start(sim_config()).await);
    h.install(ESHOP).await;
    let results = join_all((0..30).map(|_| {
        let h = h.clone();
        tokio::spawn(async move { slow_get(&h, 50).await.status })
    }))
    .await;
    assert!(
        results.iter().all(|r| matches!(r, Ok(StatusCode::OK))),
        "{results:?}"
    );
    let stats = h.stats();
    assert_eq!(stats.status429, 0);
    assert_eq!(stats.eshops[&ESHOP].api_calls, 30);
    assert!(
        stats.peak_concurrency_per_token <= 3,
        "peak {}",
        stats.peak_concurrency_per_token
    );
    assert_eq!(
        stats.eshops[&ESHOP].peak_concurrency, 3,
        "the three slots were used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_overflow_is_429_queue_full() {
    let h = Arc::new(
        Harness::with(sim_config(), |c| {
            c.proxy.max_in_flight_per_eshop = 1;
            c.proxy.max_queue = 2;
        })
        .await,
    );
    h.install(ESHOP).await;
    let m = h.metrics();
    let first = tokio::spawn({
        let h = h.clone();
        async move { slow_get(&h, 1000).await.status }
    });
    wait_until("the first request holds the slot", || {
        m.in_flight.get() == 1
    })
    .await;
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.get(ESHOP, "/api/eshop").await.status })
        })
        .collect();
    wait_until("two requests wait", || m.queue_length.get() == 2).await;
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_proxy_error(&r, 429, "proxy-queue-full");
    let secs: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!(secs >= 1);
    assert_eq!(first.await.expect("task"), StatusCode::OK);
    for q in queued {
        assert_eq!(
            q.await.expect("task"),
            StatusCode::OK,
            "queued ones proceed"
        );
    }
    assert_eq!(
        h.stats().calls.api,
        3,
        "the refused one never went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_timeout_is_504() {
    let h = Arc::new(
        Harness::with(sim_config(), |c| {
            c.proxy.max_in_flight_per_eshop = 1;
            c.proxy.queue_timeout = Duration::from_millis(300);
        })
        .await,
    );
    h.install(ESHOP).await;
    let m = h.metrics();
    let first = tokio::spawn({
        let h = h.clone();
        async move { slow_get(&h, 1500).await.status }
    });
    wait_until("the first request holds the slot", || {
        m.in_flight.get() == 1
    })
    .await;
    let started = Instant::now();
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_proxy_error(&r, 504, "proxy-queue-timeout");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(first.await.expect("task"), StatusCode::OK);
    assert_eq!(h.stats().calls.api, 1);
}

/// A simulator whose bucket fills after 3 requests and drains one drop a second, with a proxy
/// that does not pace, so Shoptet's 429 is what the proxy meets.
async fn small_bucket() -> Harness {
    small_bucket_with(|_| {}).await
}

/// [`small_bucket`] with the proxy configuration changed by `tweak` as well.
async fn small_bucket_with(tweak: impl FnOnce(&mut shoptet_proxy::config::Config)) -> Harness {
    let mut s = sim_config();
    s.bucket_capacity = 3;
    s.bucket_drain_per_sec = 1;
    let h = Harness::with(s, |c| {
        c.proxy.bucket_pacing = false;
        tweak(c);
    })
    .await;
    h.install(ESHOP).await;
    for _ in 0..3 {
        let r = h.get(ESHOP, "/api/eshop").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    h
}

#[tokio::test]
async fn get_after_bucket_429_with_http_date_is_retried() {
    let h = small_bucket().await;
    let r = h.get(ESHOP, "/api/orders").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let log = h.sim_requests(Some(ESHOP)).await;
    let orders: Vec<_> = log
        .iter()
        .filter(|r| r["path"] == "/api/orders")
        .map(|r| r["status"].as_u64())
        .collect();
    assert_eq!(orders.first(), Some(&Some(429)), "{orders:?}");
    assert_eq!(orders.last(), Some(&Some(200)), "{orders:?}");
}

#[tokio::test]
async fn get_429_asking_for_more_than_max_retry_wait_comes_back_with_its_retry_after() {
    let h = small_bucket_with(|c| c.proxy.max_retry_wait = Duration::ZERO).await;
    let r = h.get(ESHOP, "/api/orders").await;
    assert_bucket_429_passed_back(&r);
    let tries = h
        .sim_requests(Some(ESHOP))
        .await
        .iter()
        .filter(|r| r["path"] == "/api/orders")
        .count();
    assert_eq!(tries, 1, "not retried");
}

#[tokio::test]
async fn post_after_bucket_429_gets_the_429() {
    let h = small_bucket().await;
    let r = h
        .post_json(
            ESHOP,
            "/api/orders",
            r#"{"data":{"email":"buyer@example.com"}}"#,
        )
        .await;
    assert_bucket_429_passed_back(&r);
    let posts = h
        .sim_requests(Some(ESHOP))
        .await
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .count();
    assert_eq!(posts, 1, "not retried");
    assert_eq!(h.stats().eshops[&ESHOP].orders_created, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pacing_keeps_the_bucket_from_overflowing() {
    // Capacity 30 with the proxy's 10-drop reserve leaves room for 20: the other 40 requests
    // must wait for the drain (10 drops/s) instead of meeting Shoptet's 429.
    let mut s = sim_config();
    s.bucket_capacity = 30;
    s.bucket_drain_per_sec = 10;
    let h = Arc::new(Harness::start(s).await);
    h.install(ESHOP).await;
    let started = Instant::now();
    let results = join_all((0..10).map(|_| {
        let h = h.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..6 {
                statuses.push(h.get(ESHOP, "/api/eshop").await.status);
            }
            statuses
        })
    }))
    .await;
    for r in results {
        assert!(r.expect("task").iter().all(|s| *s == StatusCode::OK));
    }
    assert_eq!(h.stats().status429, 0, "the bucket never overflowed");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "paced: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn slow_upstream_head_is_504_upstream_timeout() {
    let h = Harness::with(sim_config(), |c| {
        c.proxy.upstream_timeout = Duration::from_millis(200)
    })
    .await;
    h.install(ESHOP).await;
    let r = slow_get(&h, 1000).await;
    assert_proxy_error(&r, 504, "proxy-upstream-timeout");
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_eq!(r.status, 200, "the slot was released: {}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_in_flight_caps_upstream_requests_over_all_eshops() {
    // Shoptet's per-IP limit set to 2: a third request in flight from the proxy would be a 429.
    let mut s = sim_config();
    s.bucket = false;
    s.per_ip_concurrency = 2;
    let h = Arc::new(Harness::with(s, |c| c.proxy.max_in_flight = 2).await);
    let eshops = [ESHOP, ESHOP + 1, ESHOP + 2];
    for id in eshops {
        h.install(id).await;
    }
    let results = join_all(eshops.iter().flat_map(|&id| {
        (0..2).map(move |_| id).map(|id| {
            let h = h.clone();
            tokio::spawn(async move {
                h.call(
                    Method::GET,
                    id,
                    "/api/eshop",
                    &[("x-sim-delay-ms", "200")],
                    Bytes::new(),
                )
                .await
                .status
            })
        })
    }))
    .await;
    assert!(
        results.iter().all(|r| matches!(r, Ok(StatusCode::OK))),
        "{results:?}"
    );
    assert_eq!(
        h.stats().status429,
        0,
        "never more than 2 in flight upstream"
    );
}

/// An API that sends its answer head and first body chunk at once, and the rest only when
/// `rest` fires.
async fn api_with_a_held_body_tail(rest: tokio::sync::oneshot::Receiver<()>) -> url::Url {
    use futures_util::StreamExt as _;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let rest = Arc::new(std::sync::Mutex::new(Some(rest)));
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let svc = hyper::service::service_fn(move |_req| {
            let rest = rest.lock().expect("lock").take();
            async move {
                let tail = async move {
                    if let Some(rest) = rest {
                        let _ = rest.await;
                    }
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"tail")))
                };
                let head = futures_util::stream::once(async {
                    Ok(Frame::data(Bytes::from_static(b"head-")))
                });
                let body = StreamBody::new(head.chain(futures_util::stream::once(tail)));
                Ok::<_, std::convert::Infallible>(http::Response::new(body))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
            .await;
    });
    url.parse().expect("url")
}

#[tokio::test]
async fn upstream_timeout_bounds_the_head_only_and_a_slow_body_streams_past_it() {
    use futures_util::StreamExt as _;
    use http_body_util::BodyExt as _;
    let timeout = Duration::from_millis(200);
    let (release, rest) = tokio::sync::oneshot::channel();
    let api = api_with_a_held_body_tail(rest).await;
    let h = Harness::with(sim_config(), |c| {
        c.shoptet.api_url = api;
        c.proxy.upstream_timeout = timeout;
    })
    .await;
    h.install(ESHOP).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let req = http::Request::get(h.url("/api/eshop"))
        .header("x-shoptet-eshop-id", ESHOP.to_string())
        .body(http_body_util::Empty::new())
        .expect("request");
    let resp = client.request(req).await.expect("answer head");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    let first = body.next().await.expect("a first chunk").expect("data");
    assert_eq!(&first[..], b"head-", "streamed before the tail exists");
    // The tail comes well after upstream_timeout has run out, and still arrives.
    tokio::time::sleep(timeout * 3).await;
    release.send(()).expect("the API waits for the tail");
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.expect("body streams to the end"));
    }
    assert_eq!(rest, b"tail");
}

#[tokio::test]
async fn get_concurrency_429_without_retry_after_is_retried_a_bounded_number_of_times() {
    let mut s = sim_config();
    s.bucket = false;
    let h = Harness::start(s).await;
    h.install(ESHOP).await;
    // The simulator answers this request with the nginx 429 page (no Retry-After) every time.
    let r = h
        .call(
            Method::GET,
            ESHOP,
            "/api/eshop",
            &[("x-sim-fault", "429")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 429);
    assert!(
        r.text().contains("nginx"),
        "Shoptet's own answer: {}",
        r.text()
    );
    let tries = h.sim_requests(Some(ESHOP)).await.len();
    assert_eq!(tries, 4, "one request and three retries");
    let r = h
        .call(
            Method::DELETE,
            ESHOP,
            "/api/orders/2024000001",
            &[("x-sim-fault", "429")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(
        h.sim_requests(Some(ESHOP)).await.len(),
        5,
        "DELETE is not retried"
    );
}

/// Shoptet's bucket 429 reached the client unchanged, its HTTP-date `Retry-After` included.
fn assert_bucket_429_passed_back(r: &TestResponse) {
    assert_eq!(r.status, 429, "{}", r.text());
    let ra = r.header("retry-after").expect("Retry-After passed back");
    assert!(httpdate::parse_http_date(ra).is_ok(), "{ra}");
}
