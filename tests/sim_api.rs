//! The simulator's API: token checks, limits, the bucket, data endpoints, faults, test hooks.

use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use serde_json::json;
use shoptet_proxy::sim::testing::{start, TestClient, TestResponse};
use shoptet_proxy::sim::{SimConfig, SimHandle};

struct Env {
    sim: SimHandle,
    c: TestClient,
    token: String,
}

async fn env_with(cfg: SimConfig, eshop: u64) -> Env {
    let sim = start(cfg).await;
    let c = TestClient::new();
    let inst = sim.create_eshop(eshop);
    let token = c.api_token(&sim.base_url(), &inst.oauth_token).await;
    Env { sim, c, token }
}

async fn env() -> Env {
    env_with(SimConfig::default(), 222651).await
}

impl Env {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn get(&self, path: &str) -> TestResponse {
        self.c
            .get(&self.url(path), &[("shoptet-access-token", &self.token)])
            .await
    }

    async fn get_with(&self, path: &str, extra: &[(&str, &str)]) -> TestResponse {
        let mut h = vec![("shoptet-access-token", self.token.as_str())];
        h.extend_from_slice(extra);
        self.c.get(&self.url(path), &h).await
    }

    async fn send(&self, m: Method, path: &str, ct: &str, body: &str) -> TestResponse {
        self.c
            .request(
                m,
                &self.url(path),
                &[("shoptet-access-token", &self.token), ("content-type", ct)],
                body.to_owned(),
            )
            .await
    }

    async fn control(&self, m: Method, path: &str, body: &str) -> TestResponse {
        self.c
            .request(m, &self.url(path), &[], body.to_owned())
            .await
    }
}

fn assert_envelope_headers(r: &TestResponse) {
    let rid = r.header("x-request-id").expect("X-Request-ID");
    assert_eq!(r.json()["metadata"]["requestId"], rid);
    let filling = r
        .header("x-ratelimit-bucket-filling")
        .expect("bucket header");
    let (cur, max) = filling.split_once('/').unwrap();
    assert!(cur.parse::<u32>().is_ok() && max.parse::<u32>().is_ok());
}

#[tokio::test]
async fn valid_token_gets_the_eshop_in_an_envelope() {
    let e = env().await;
    let r = e.get("/api/eshop").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_envelope_headers(&r);
    assert_eq!(r.header("x-ratelimit-bucket-filling"), Some("1/200"));
    let v = r.json();
    assert_eq!(v["errors"], serde_json::Value::Null);
    assert_eq!(
        v["data"]["contactInformation"]["url"],
        "https://222651.myshoptet.com/"
    );
    let stats = e.sim.stats();
    assert_eq!(stats.calls.api, 1);
    assert_eq!(stats.eshops[&222651].api_calls, 1);
}

#[tokio::test]
async fn missing_token_header_is_missing_access_token() {
    let e = env().await;
    let r = e.c.get(&e.url("/api/eshop"), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code().as_deref(), Some("missing-access-token"));
    assert_envelope_headers(&r);
}

#[tokio::test]
async fn unknown_and_revoked_tokens_are_invalid_token() {
    let e = env().await;
    let r =
        e.c.get(
            &e.url("/api/eshop"),
            &[("shoptet-access-token", "222651-a-9-x")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code().as_deref(), Some("invalid-token"));
    assert_eq!(r.json()["errors"][0]["message"], "Invalid access token.");
    let revoked = e
        .control(Method::POST, "/sim/eshops/222651/revoke-tokens", "")
        .await;
    assert_eq!(revoked.json()["tokens"], 1);
    let r = e.get("/api/eshop").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code().as_deref(), Some("invalid-token"));
    assert_eq!(e.sim.stats().status401, 2);
}

#[tokio::test]
async fn expire_tokens_makes_every_token_expired() {
    let e = env().await;
    e.control(Method::POST, "/sim/eshops/222651/expire-tokens", "")
        .await;
    let r = e.get("/api/orders").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code().as_deref(), Some("expired-token"));
    assert_eq!(
        r.json()["errors"][0]["message"],
        "Token is expired. Please ask for new one."
    );
    assert_eq!(e.sim.stats().eshops[&222651].status401, 1);
}

#[tokio::test]
async fn token_expires_after_its_lifetime() {
    let e = env_with(
        SimConfig {
            token_lifetime: Duration::from_millis(300),
            ..SimConfig::default()
        },
        11,
    )
    .await;
    let minted = tokio::time::Instant::now();
    assert_eq!(e.get("/api/eshop").await.status, StatusCode::OK);
    // The lifetime itself is the subject here, so waiting it out is the test.
    tokio::time::sleep_until(minted + Duration::from_millis(350)).await;
    let r = e.get("/api/eshop").await;
    assert_eq!(r.error_code().as_deref(), Some("expired-token"));
}

#[tokio::test]
async fn suspended_installation_is_not_approved_until_approved_again() {
    let e = env().await;
    e.control(Method::POST, "/sim/eshops/222651/suspend", "")
        .await;
    let r = e.get("/api/eshop").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code().as_deref(), Some("invalid-token"));
    assert_eq!(
        r.json()["errors"][0]["message"],
        "Addon installation is not approved."
    );
    e.control(Method::POST, "/sim/eshops/222651/approve", "")
        .await;
    assert_eq!(e.get("/api/eshop").await.status, StatusCode::OK);
    e.control(Method::POST, "/sim/eshops/222651/uninstall", "")
        .await;
    let r = e.get("/api/eshop").await;
    assert_eq!(r.json()["errors"][0]["message"], "Invalid access token.");
}

#[tokio::test]
async fn denied_endpoint_is_invalid_token_no_rights() {
    let e = env().await;
    let r = e
        .control(
            Method::PUT,
            "/sim/eshops/222651/denied-endpoints",
            r#"["/api/products"]"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let denied = e.get("/api/products").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(
        denied.error_code().as_deref(),
        Some("invalid-token-no-rights")
    );
    assert!(!denied.text().contains(&e.token), "the token is not echoed");
    assert_eq!(e.get("/api/orders").await.status, StatusCode::OK);
}

fn is_nginx_429(r: &TestResponse) -> bool {
    r.status == StatusCode::TOO_MANY_REQUESTS
        && r.header("content-type") == Some("text/html")
        && r.header("retry-after").is_none()
        && r.text().contains("429 Too Many Requests")
}

#[tokio::test]
async fn fourth_concurrent_request_on_one_token_gets_429() {
    let e = env().await;
    let started = std::time::Instant::now();
    let reqs = (0..4).map(|_| e.get_with("/api/eshop", &[("x-sim-delay-ms", "400")]));
    let results = futures_util::future::join_all(reqs).await;
    let limited = results.iter().filter(|r| is_nginx_429(r)).count();
    let ok = results
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!((ok, limited), (3, 1));
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "delay hook"
    );
    let stats = e.sim.stats();
    assert_eq!(stats.peak_concurrency_per_token, 3);
    assert_eq!(stats.status429, 1);
}

#[tokio::test]
async fn per_ip_limit_counts_requests_of_all_tokens() {
    let sim = start(SimConfig {
        per_ip_concurrency: 2,
        ..SimConfig::default()
    })
    .await;
    let c = TestClient::new();
    let mut tokens = Vec::new();
    for id in [1, 2, 3] {
        let inst = sim.create_eshop(id);
        tokens.push(c.api_token(&sim.base_url(), &inst.oauth_token).await);
    }
    let url = format!("{}/api/eshop", sim.base_url());
    let reqs = tokens.iter().map(|t| {
        let (c, url) = (&c, &url);
        async move {
            c.get(
                url,
                &[
                    ("shoptet-access-token", t.as_str()),
                    ("x-sim-delay-ms", "400"),
                ],
            )
            .await
        }
    });
    let results = futures_util::future::join_all(reqs).await;
    assert_eq!(results.iter().filter(|r| is_nginx_429(r)).count(), 1);
}

#[tokio::test]
async fn full_bucket_answers_429_with_an_http_date_retry_after() {
    let e = env_with(
        SimConfig {
            bucket_capacity: 3,
            bucket_drain_per_sec: 1,
            ..SimConfig::default()
        },
        12,
    )
    .await;
    for expected in ["1/3", "2/3", "3/3"] {
        let r = e.get("/api/eshop").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-ratelimit-bucket-filling"), Some(expected));
    }
    let r = e.get("/api/eshop").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.error_code().as_deref(), Some("too-many-requests"));
    assert_eq!(r.header("x-ratelimit-bucket-filling"), Some("3/3"));
    let when = httpdate::parse_http_date(r.header("retry-after").expect("Retry-After"))
        .expect("Retry-After is an HTTP-date");
    let ahead = when.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(ahead <= Duration::from_secs(2), "{ahead:?}");
    assert_eq!(e.sim.stats().eshops[&12].status429, 1);
}

#[tokio::test]
async fn bucket_off_never_rejects() {
    let e = env_with(
        SimConfig {
            bucket: false,
            bucket_capacity: 1,
            ..SimConfig::default()
        },
        13,
    )
    .await;
    for _ in 0..3 {
        let r = e.get("/api/eshop").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-ratelimit-bucket-filling"), Some("0/1"));
    }
}

#[tokio::test]
async fn padded_answers_cost_one_drop_per_started_10_kib_beyond_the_first() {
    let e = env().await;
    let r = e
        .get_with("/api/eshop", &[("x-sim-response-size", "25000")])
        .await;
    assert_eq!(r.body.len(), 25000);
    assert_eq!(r.json()["data"]["urls"][0]["ident"], "oauth");
    assert_eq!(r.header("x-ratelimit-bucket-filling"), Some("3/200"));
}

#[tokio::test]
async fn orders_and_products_are_paginated() {
    let e = env().await;
    let r = e.get("/api/orders?page=3&itemsPerPage=10").await;
    let p = &r.json()["data"]["paginator"];
    assert_eq!(
        *p,
        json!({"totalCount": 25, "page": 3, "pageCount": 3, "itemsOnPage": 5, "itemsPerPage": 10})
    );
    assert_eq!(r.json()["data"]["orders"].as_array().unwrap().len(), 5);
    let past = e.get("/api/orders?page=4&itemsPerPage=10").await;
    assert_eq!(past.status, StatusCode::NOT_FOUND);
    assert_eq!(past.error_code().as_deref(), Some("page-not-found"));
    assert!(past.text().contains("max page is 3"));
    let clamped = e.get("/api/products?itemsPerPage=1000").await;
    assert_eq!(clamped.json()["data"]["paginator"]["itemsPerPage"], 100);
    assert_eq!(
        clamped.json()["data"]["products"].as_array().unwrap().len(),
        30
    );
    let bad = e.get("/api/products?page=zero").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn orders_can_be_created_patched_and_deleted() {
    let e = env().await;
    let created = e
        .send(
            Method::POST,
            "/api/orders",
            "application/vnd.shoptet.v1.0",
            r#"{"data":{"email":"buyer@example.com"}}"#,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let code = created.json()["data"]["order"]["code"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        created.json()["data"]["order"]["email"],
        "buyer@example.com"
    );
    let path = format!("/api/orders/{code}");
    let patched = e
        .send(
            Method::PATCH,
            &path,
            "application/json",
            r#"{"data":{"paid":true}}"#,
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    assert_eq!(e.get(&path).await.json()["data"]["order"]["paid"], true);
    let total = e.get("/api/orders").await.json()["data"]["paginator"]["totalCount"].clone();
    assert_eq!(total, 26);
    let deleted = e.send(Method::DELETE, &path, "application/json", "").await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(e.get(&path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(e.sim.stats().eshops[&222651].orders_created, 1);
}

#[tokio::test]
async fn bad_write_bodies_get_shoptet_errors() {
    let e = env().await;
    let bad_json = e
        .send(Method::POST, "/api/orders", "application/json", "{oops")
        .await;
    assert_eq!(bad_json.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        bad_json.error_code().as_deref(),
        Some("invalid-request-data")
    );
    let wrong_type = e
        .send(Method::POST, "/api/orders", "text/plain", r#"{"data":{}}"#)
        .await;
    assert_eq!(wrong_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let unknown = e.get("/api/nothing/here").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.error_code().as_deref(), Some("not-found"));
    assert_envelope_headers(&unknown);
}

#[tokio::test]
async fn forced_faults_answer_as_asked() {
    let e = env().await;
    let r = e.get_with("/api/eshop", &[("x-sim-fault", "500")]).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.error_code().as_deref(), Some("unknown-error"));
    let r = e.get_with("/api/eshop", &[("x-sim-fault", "503")]).await;
    assert_eq!(r.error_code().as_deref(), Some("system-maintenance"));
    let r = e.get_with("/api/eshop", &[("x-sim-fault", "429")]).await;
    assert!(is_nginx_429(&r));
    let r = e
        .get_with("/api/eshop", &[("x-sim-fault", "429-bucket")])
        .await;
    assert!(httpdate::parse_http_date(r.header("retry-after").unwrap()).is_ok());
    assert_eq!(
        r.header("x-ratelimit-bucket-filling"),
        Some("200/200"),
        "a forced bucket 429 reports the bucket full"
    );
    let dropped =
        e.c.try_request(
            Method::GET,
            &e.url("/api/eshop"),
            &[("shoptet-access-token", &e.token), ("x-sim-fault", "drop")],
            "",
        )
        .await;
    assert!(
        dropped.is_err(),
        "the connection is dropped without an answer"
    );
    let s = e.sim.stats();
    assert_eq!((s.status5xx, s.status429, s.drops), (2, 2, 1));
}

#[tokio::test]
async fn configured_fault_rates_apply_to_api_calls() {
    let e = env().await;
    e.sim.set_config(|c| c.fault_5xx = 1.0);
    let r = e.get("/api/eshop").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    e.sim.set_config(|c| {
        c.fault_5xx = 0.0;
        c.latency = Duration::from_millis(100);
    });
    let t = std::time::Instant::now();
    assert_eq!(e.get("/api/eshop").await.status, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn request_log_shows_what_arrived_without_secrets() {
    let e = env().await;
    e.c.request(
        Method::POST,
        &e.url("/api/orders?x=1"),
        &[
            ("shoptet-access-token", &e.token),
            ("content-type", "application/vnd.shoptet.v1.0"),
            ("host", "api.myshoptet.com"),
        ],
        r#"{"data":{}}"#,
    )
    .await;
    let log = e
        .control(Method::GET, "/sim/requests?eshopId=222651", "")
        .await;
    let text = log.text();
    assert!(!text.contains(&e.token), "the token itself is never logged");
    let rec = &log.json()["requests"][0];
    assert_eq!(rec["method"], "POST");
    assert_eq!(rec["path"], "/api/orders?x=1");
    assert_eq!(rec["host"], "api.myshoptet.com");
    assert_eq!(rec["contentType"], "application/vnd.shoptet.v1.0");
    assert_eq!(rec["tokenLabel"], "222651-a-1");
    assert_eq!(rec["bodyLen"], 11);
    assert_eq!(rec["status"], 201);
    let other = e.control(Method::GET, "/sim/requests?eshopId=1", "").await;
    assert_eq!(other.json()["requests"], json!([]));
}

/// The raw HTTP/1.1 head of one GET to the simulator, as it comes off the socket.
async fn raw_head(e: &Env, path: &str, extra: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(e.sim.addr()).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: api.myshoptet.com\r\nShoptet-Access-Token: {}\r\n{extra}Connection: close\r\n\r\n",
        e.token
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    text.split("\r\n\r\n").next().unwrap().to_owned()
}

fn header_names(head: &str) -> Vec<&str> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n))
        .collect()
}

#[tokio::test]
async fn http1_answers_spell_headers_as_shoptet_does() {
    let e = env().await;
    let ok = raw_head(&e, "/api/eshop", "").await;
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    let names = header_names(&ok);
    assert!(names.contains(&"X-Request-ID"), "{ok}");
    assert!(names.contains(&"X-RateLimit-Bucket-Filling"), "{ok}");
    let full = raw_head(&e, "/api/eshop", "X-Sim-Fault: 429-bucket\r\n").await;
    assert!(
        full.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{full}"
    );
    let names = header_names(&full);
    for want in ["X-Request-ID", "X-RateLimit-Bucket-Filling", "Retry-After"] {
        assert!(names.contains(&want), "{want} in {full}");
    }
    assert!(
        full.contains("\r\nX-RateLimit-Bucket-Filling: 200/200\r\n"),
        "{full}"
    );
    let unauthorized = raw_head(&e, "/api/eshop", "Shoptet-Access-Token: nope\r\n").await;
    assert!(header_names(&unauthorized).contains(&"X-Request-ID"));
}
