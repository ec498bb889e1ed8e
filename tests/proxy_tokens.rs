//! The token cache and replay, end to end (SPEC B2): single-flight fetches, background refresh,
//! one refresh per revoked token, identical replays, terminal errors, getAccessToken failures,
//! and tokens that outlive a restart. Every count comes from the simulator's own stats.

mod common;

use bytes::Bytes;
use common::{assert_proxy_error, sim_config, Harness, ESHOP};
use futures_util::future::join_all;
use http::{Method, StatusCode};
use http_body_util::Full;
use serde_json::json;
use shoptet_proxy::secret::Secret;
use shoptet_proxy::sim::testing::{TestClient, TestResponse};
use shoptet_proxy::store::AccessToken;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Simulator without the leaky bucket or per-token/IP concurrency limits: these tests are about
/// tokens, and pacing or 429s would only slow them down.
fn unlimited() -> shoptet_proxy::sim::SimConfig {
    let mut s = sim_config();
    s.bucket = false;
    s.per_token_concurrency = 0;
    s.per_ip_concurrency = 0;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_eshop_single_flight() {
    // Every request reaches the token cache at once: the proxy's own concurrency limits are
    // opened wide so the 1,000 requests do not queue behind 3 slots before asking for a token.
    let h = Arc::new(
        Harness::with(unlimited(), |c| {
            c.proxy.max_in_flight_per_eshop = 1000;
            c.proxy.max_in_flight = 1000;
        })
        .await,
    );
    h.install(ESHOP).await;
    let results = join_all((0..1000).map(|_| {
        let h = h.clone();
        tokio::spawn(async move { h.get(ESHOP, "/api/eshop").await.status })
    }))
    .await;
    let ok = results
        .iter()
        .filter(|r| matches!(r, Ok(StatusCode::OK)))
        .count();
    assert_eq!(ok, 1000, "every request succeeds");
    assert_eq!(h.token_calls(), 1, "exactly one getAccessToken call");
    assert_eq!(h.minted(ESHOP), 1);
    assert_eq!(h.stats().eshops[&ESHOP].api_calls, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_tokens_never_leak_401() {
    const LIFETIME: Duration = Duration::from_secs(2);
    const MARGIN: Duration = Duration::from_secs(1);
    const RUN: Duration = Duration::from_secs(20);
    let mut s = sim_config();
    s.bucket = false;
    s.token_lifetime = LIFETIME;
    let h = Arc::new(Harness::with(s, |c| c.proxy.refresh_margin = MARGIN).await);
    h.install(ESHOP).await;
    let end = Instant::now() + RUN;
    let clients = join_all((0..50).map(|_| {
        let h = h.clone();
        tokio::spawn(async move {
            let (mut ok, mut other) = (0u64, Vec::new());
            while Instant::now() < end {
                let r = h.get(ESHOP, "/api/eshop").await;
                if r.status == StatusCode::OK {
                    ok += 1;
                } else {
                    other.push((r.status, r.text()));
                }
            }
            (ok, other)
        })
    }))
    .await;
    let mut total = 0;
    for c in clients {
        let (ok, other) = c.expect("client task");
        assert!(
            other.is_empty(),
            "non-200 answers reached a client: {other:?}"
        );
        total += ok;
    }
    assert!(total > 1000, "the clients kept the proxy busy ({total})");
    let stats = h.stats();
    let bound = RUN.as_secs() / (LIFETIME - MARGIN).as_secs() + 1;
    assert!(
        h.minted(ESHOP) <= bound,
        "{} tokens minted, at most {bound} allowed",
        h.minted(ESHOP)
    );
    assert!(h.minted(ESHOP) >= 10, "tokens were refreshed as they aged");
    assert_eq!(stats.status401, 0, "Shoptet never saw an expired token");
}

/// Warms the cache with one request, so the next one meets the cached token.
async fn warm(h: &Harness) {
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.minted(ESHOP), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_token_refreshes_once() {
    let h = Arc::new(Harness::with(unlimited(), |c| c.proxy.max_in_flight_per_eshop = 20).await);
    h.install(ESHOP).await;
    warm(&h).await;
    h.revoke_tokens(ESHOP).await;
    let results = join_all((0..20).map(|_| {
        let h = h.clone();
        tokio::spawn(async move { h.get(ESHOP, "/api/orders").await.status })
    }))
    .await;
    assert!(
        results.iter().all(|r| matches!(r, Ok(StatusCode::OK))),
        "{results:?}"
    );
    assert_eq!(h.minted(ESHOP), 2, "exactly one new token");
    assert!(h.stats().status401 >= 1, "the revoked token was rejected");
}

#[tokio::test]
async fn post_replay_is_identical_and_created_once() {
    let h = Harness::start(unlimited()).await;
    h.install(ESHOP).await;
    warm(&h).await;
    h.revoke_tokens(ESHOP).await;
    let body = json!({"data": {"email": "buyer@example.com", "note": "replay me"}}).to_string();
    let r = h
        .post_json(
            ESHOP,
            "/api/orders?suppressDocumentGeneration=true",
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let posts: Vec<_> = h
        .sim_requests(None)
        .await
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!(posts[0]["status"], 401);
    assert_eq!(posts[1]["status"], 201);
    for field in ["path", "bodyFnv1a", "bodyLen", "contentType"] {
        assert_eq!(posts[0][field], posts[1][field], "{field}");
    }
    assert_eq!(posts[1]["bodyLen"], body.len());
    assert_ne!(posts[0]["tokenLabel"], posts[1]["tokenLabel"]);
    assert_eq!(h.stats().eshops[&ESHOP].orders_created, 1);
    assert_eq!(h.minted(ESHOP), 2);
}

#[tokio::test]
async fn suspended_installation_401_passes_through_without_minting() {
    let h = Harness::start(unlimited()).await;
    h.install(ESHOP).await;
    warm(&h).await;
    h.sim_control(&format!("/sim/eshops/{ESHOP}/suspend")).await;
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["errors"][0]["message"],
        "Addon installation is not approved."
    );
    assert_eq!(h.minted(ESHOP), 1);
    assert_eq!(h.token_calls(), 1);
}

#[tokio::test]
async fn no_rights_403_passes_through_without_minting() {
    let h = Harness::start(unlimited()).await;
    h.install(ESHOP).await;
    warm(&h).await;
    let r = h
        .client
        .send_json(
            Method::PUT,
            &h.sim_url(&format!("/sim/eshops/{ESHOP}/denied-endpoints")),
            &[],
            &json!(["/api/products"]),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = h.get(ESHOP, "/api/products").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code().as_deref(), Some("invalid-token-no-rights"));
    assert_eq!(h.minted(ESHOP), 1);
    assert_eq!(h.token_calls(), 1);
}

#[tokio::test]
async fn body_over_replay_limit_streams_and_is_not_replayed() {
    let h = Harness::with(unlimited(), |c| c.proxy.max_replay_body = 1024).await;
    h.install(ESHOP).await;
    warm(&h).await;
    h.revoke_tokens(ESHOP).await;
    let big = json!({"data": {"email": "buyer@example.com", "note": "x".repeat(4096)}}).to_string();
    let r = h.post_json(ESHOP, "/api/orders", big.clone()).await;
    assert_eq!(r.status, 401, "the rejection goes back as is");
    assert_eq!(r.error_code().as_deref(), Some("invalid-token"));
    let posts: Vec<_> = h
        .sim_requests(None)
        .await
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "sent once: {posts:?}");
    assert_eq!(posts[0]["bodyLen"], big.len(), "the whole body streamed");
    assert_eq!(h.stats().eshops[&ESHOP].orders_created, 0);
}

#[tokio::test]
async fn maximum_tokens_reached_is_503_and_backs_off() {
    let h = Harness::start(unlimited()).await;
    let inst = h.install(ESHOP).await;
    let direct = TestClient::new();
    for _ in 0..5 {
        direct.api_token(&h.sim.base_url(), &inst.oauth_token).await;
    }
    let before = h.token_calls();
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_proxy_error(&r, 503, "proxy-token-limit-reached");
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert_eq!(h.token_calls(), before + 1);
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_proxy_error(&r, 503, "proxy-token-limit-reached");
    assert!(r.header("retry-after").is_some());
    assert_eq!(h.token_calls(), before + 1, "backing off: no second call");
    assert_eq!(h.stats().calls.api, 0, "nothing reached the API");
}

#[tokio::test]
async fn unknown_eshop_is_not_installed() {
    let h = Harness::start(unlimited()).await;
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_proxy_error(&r, 403, "proxy-eshop-not-installed");
    assert_eq!(h.token_calls(), 0);
}

#[tokio::test]
async fn suspended_eshop_without_cached_token_is_403_suspended() {
    let h = Harness::start(unlimited()).await;
    h.install(ESHOP).await;
    h.sim_control(&format!("/sim/eshops/{ESHOP}/suspend")).await;
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_proxy_error(&r, 403, "proxy-eshop-suspended");
    assert_eq!(h.stats().calls.api, 0);
}

#[tokio::test]
async fn reinstalled_eshop_rejects_old_oauth_token() {
    let h = Harness::start(unlimited()).await;
    h.install(ESHOP).await;
    // Installing again in the simulator revokes the OAuth token the proxy holds.
    h.sim.create_eshop(ESHOP);
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_proxy_error(&r, 403, "proxy-oauth-token-rejected");
    assert_eq!(h.minted(ESHOP), 0);
}

#[tokio::test]
async fn tokens_survive_restart() {
    let mut h = Harness::start(unlimited()).await;
    h.install(ESHOP).await;
    warm(&h).await;
    h.restart().await;
    let r = h
        .call(Method::GET, ESHOP, "/api/orders", &[], Bytes::new())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.minted(ESHOP), 1, "the stored token was reused");
    assert_eq!(h.token_calls(), 1);
}

#[tokio::test]
async fn expired_token_is_replayed_with_a_new_one() {
    let h = Harness::start(unlimited()).await;
    h.install(ESHOP).await;
    warm(&h).await;
    h.sim_control(&format!("/sim/eshops/{ESHOP}/expire-tokens"))
        .await;
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.minted(ESHOP), 2);
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_eq!(r.status, 200);
    assert_eq!(h.minted(ESHOP), 2, "the new token serves on");
}

#[tokio::test]
async fn large_401_body_is_passed_through() {
    let h = Harness::start(unlimited()).await;
    h.install(ESHOP).await;
    warm(&h).await;
    h.revoke_tokens(ESHOP).await;
    let r = h
        .call(
            Method::GET,
            ESHOP,
            "/api/eshop",
            &[("x-sim-response-size", "200000")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.body.len() >= 190_000, "whole body: {}", r.body.len());
    assert_eq!(r.error_code().as_deref(), Some("invalid-token"));
}

#[tokio::test]
async fn failed_refresh_on_replay_answers_the_refresh_error() {
    let h = Harness::start(unlimited()).await;
    h.install(ESHOP).await;
    warm(&h).await;
    // Re-installing in the simulator revokes both the API token and the OAuth token.
    h.sim.create_eshop(ESHOP);
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_proxy_error(&r, 403, "proxy-oauth-token-rejected");
    assert_eq!(h.token_calls(), 2, "one refresh attempt");
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_proxy_error(&r, 403, "proxy-oauth-token-rejected");
    assert_eq!(h.token_calls(), 2, "backing off");
}

/// Polls `GET /api/eshop` until its status is `want` (the status re-check runs every 10 s in the
/// background); panics after 25 s.
async fn eventually_status(h: &Harness, want: u16) -> TestResponse {
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let r = h.get(ESHOP, "/api/eshop").await;
        if r.status.as_u16() == want {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "still {} instead of {want}: {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn status_changes_made_elsewhere_reach_a_running_proxy() {
    // Another replica (or `eshops remove`) changes the store; this proxy never saw a webhook.
    let h = Harness::start(unlimited()).await;
    h.install(ESHOP).await;
    assert_eq!(h.get(ESHOP, "/api/eshop").await.status, StatusCode::OK);
    let store = h.store.clone();
    store
        .set_status(ESHOP, shoptet_proxy::store::Status::Suspended)
        .await
        .expect("store write");
    let r = eventually_status(&h, 403).await;
    assert_proxy_error(&r, 403, "proxy-eshop-suspended");
    store
        .set_status(ESHOP, shoptet_proxy::store::Status::Active)
        .await
        .expect("store write");
    eventually_status(&h, 200).await;
    assert!(store.remove(ESHOP).await.expect("store write"));
    let r = eventually_status(&h, 403).await;
    assert_proxy_error(&r, 403, "proxy-eshop-not-installed");
    // Suspension and approval were learned from the store, not by asking Shoptet.
    assert_eq!(h.minted(ESHOP), 1);
}

/// When each request reached a stand-in server.
#[derive(Clone, Default)]
struct Calls(Arc<std::sync::Mutex<Vec<Instant>>>);

impl Calls {
    fn record(&self) {
        self.0.lock().expect("calls").push(Instant::now());
    }

    fn count(&self) -> usize {
        self.0.lock().expect("calls").len()
    }

    /// The time between consecutive calls.
    fn gaps(&self) -> Vec<Duration> {
        let at = self.0.lock().expect("calls");
        at.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

/// How the stand-in OAuth server fails getAccessToken.
#[derive(Clone, Copy, Debug)]
enum OAuthFailure {
    ServerError,
    Garbage,
    Silent,
}

/// An OAuth server that fails every call as `how` says; returns its base URL and when each call
/// arrived.
async fn failing_oauth_server(how: OAuthFailure) -> (url::Url, Calls) {
    let calls = Calls::default();
    let counted = calls.clone();
    let url = common::stand_in(move |_req| {
        counted.record();
        async move {
            let (status, body) = match how {
                OAuthFailure::ServerError => (500, "<html>Internal Server Error</html>"),
                OAuthFailure::Garbage => (200, "not JSON at all"),
                OAuthFailure::Silent => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    (200, "{}")
                }
            };
            let mut r = http::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            *r.status_mut() = StatusCode::from_u16(status).expect("status");
            r
        }
    })
    .await;
    (url.parse().expect("url"), calls)
}

#[tokio::test]
async fn failed_refresh_after_a_401_is_503_token_unavailable_with_retry_after() {
    for how in [
        OAuthFailure::ServerError,
        OAuthFailure::Garbage,
        OAuthFailure::Silent,
    ] {
        let (oauth, calls) = failing_oauth_server(how).await;
        let h = Harness::with(unlimited(), |c| {
            c.shoptet.partner_url = oauth;
            c.proxy.upstream_timeout = Duration::from_millis(300);
        })
        .await;
        let inst = h.install(ESHOP).await;
        // A token stored by an earlier run: the first call needs no getAccessToken.
        let token = h
            .client
            .api_token(&h.sim.base_url(), &inst.oauth_token)
            .await;
        h.store
            .save_access_token(
                ESHOP,
                &AccessToken {
                    token: Secret::new(token),
                    expires_at: SystemTime::now() + Duration::from_secs(1800),
                },
            )
            .await
            .expect("save token");
        assert_eq!(h.get(ESHOP, "/api/eshop").await.status, 200, "{how:?}");
        h.revoke_tokens(ESHOP).await;
        for _ in 0..2 {
            let r = h.get(ESHOP, "/api/eshop").await;
            assert_proxy_error(&r, 503, "proxy-token-unavailable");
            let wait: u64 = r
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{how:?}: Retry-After in seconds: {:?}", r.headers));
            assert!(wait >= 1, "{how:?}");
        }
        assert_eq!(
            calls.count(),
            1,
            "{how:?}: one refresh, then the cached failure"
        );
        h.stop().await;
    }
}

#[tokio::test]
async fn uninstalled_eshop_is_403_not_installed() {
    let h = Harness::start(unlimited()).await;
    h.install(ESHOP).await;
    h.sim_control(&format!("/sim/eshops/{ESHOP}/uninstall"))
        .await;
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_proxy_error(&r, 403, "proxy-eshop-not-installed");
    assert_eq!(h.stats().calls.api, 0, "nothing reached the API");
}

/// An API that rejects every token with Shoptet's `invalid-token` 401; counts its requests.
async fn api_rejecting_every_token() -> (url::Url, Calls) {
    let calls = Calls::default();
    let counted = calls.clone();
    let url = common::stand_in(move |_req| {
        counted.record();
        async move {
            let body = json!({"data": null, "errors": [{"errorCode": "invalid-token",
                "message": "Invalid access token.", "instance": "api-test"}]});
            let mut r = http::Response::new(Full::new(Bytes::from(body.to_string())));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r.headers_mut().insert(
                "x-request-id",
                http::HeaderValue::from_static("rejected-twice"),
            );
            r
        }
    })
    .await;
    (url.parse().expect("url"), calls)
}

#[tokio::test]
async fn a_second_401_goes_back_to_the_client_as_is() {
    let (api, calls) = api_rejecting_every_token().await;
    let h = Harness::with(unlimited(), |c| c.shoptet.api_url = api).await;
    h.install(ESHOP).await;
    let r = h.get(ESHOP, "/api/eshop").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("invalid-token"));
    assert_eq!(
        r.json()["errors"][0]["instance"],
        "api-test",
        "Shoptet's body"
    );
    assert_eq!(r.header("x-request-id"), Some("rejected-twice"));
    assert_eq!(calls.count(), 2, "sent, then replayed once");
    assert_eq!(h.minted(ESHOP), 2, "one token, one refresh");
}

#[tokio::test]
async fn token_fetch_failures_back_off_from_half_a_second_doubling_up_to_the_cap() {
    let (oauth, calls) = failing_oauth_server(OAuthFailure::ServerError).await;
    let h = Harness::with(unlimited(), |c| {
        c.shoptet.partner_url = oauth;
        c.proxy.token_backoff_max = Duration::from_millis(1500);
    })
    .await;
    h.install(ESHOP).await;
    // Requests keep coming; only those after a backoff ran out reach the OAuth server.
    let mut retry_after = Vec::new();
    while calls.count() < 4 {
        let before = calls.count();
        let r = h.get(ESHOP, "/api/eshop").await;
        assert_proxy_error(&r, 503, "proxy-token-unavailable");
        if calls.count() > before {
            retry_after.push(r.header("retry-after").unwrap_or_default().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 0.5 s, 1 s, then 1.5 s (the cap instead of 2 s), each rounded up to whole seconds.
    assert_eq!(retry_after, ["1", "1", "2", "2"]);
    let gaps = calls.gaps();
    for (gap, (min, max)) in gaps.iter().zip([(500, 950), (1000, 1450), (1500, 1950)]) {
        let ms = gap.as_millis();
        assert!((min..max).contains(&ms), "gaps {gaps:?}");
    }
    assert_eq!(h.stats().calls.api, 0);
}
