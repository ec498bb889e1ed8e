//! The simulator's webhooks (registration, signature key, signed deliveries, retries, system
//! events, async jobs) and its control plane.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use shoptet_proxy::shoptet::signature;
use shoptet_proxy::sim::testing::{start, TestClient, TestResponse, WebhookReceiver};
use shoptet_proxy::sim::{SimConfig, SimHandle, SimStats};

struct Env {
    sim: SimHandle,
    c: TestClient,
    token: String,
}

async fn env_with(cfg: SimConfig) -> Env {
    let sim = start(cfg).await;
    let c = TestClient::new();
    let inst = sim.create_eshop(222651);
    let token = c.api_token(&sim.base_url(), &inst.oauth_token).await;
    Env { sim, c, token }
}

impl Env {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn api(&self, m: Method, path: &str, body: &Value) -> TestResponse {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        self.c
            .request(
                m,
                &self.url(path),
                &[
                    ("shoptet-access-token", &self.token),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
    }

    async fn register(&self, event: &str, url: &str, send_payload: Value) -> TestResponse {
        let body = json!({"data": [{"event": event, "url": url, "sendPayload": send_payload}]});
        self.api(Method::POST, "/api/webhooks", &body).await
    }

    async fn renew_key(&self) -> String {
        let r = self
            .api(
                Method::POST,
                "/api/webhooks/renew-signature-key",
                &Value::Null,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        r.json()["data"]["signatureKey"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn control(&self, m: Method, path: &str, body: &Value) -> TestResponse {
        self.c.send_json(m, &self.url(path), &[], body).await
    }
}

#[tokio::test]
async fn webhooks_register_list_delete_and_duplicates_are_422() {
    let e = env_with(SimConfig::default()).await;
    let r = e
        .register("order:create", "http://127.0.0.1:9/hook", Value::Null)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let hook = &r.json()["data"]["webhooks"][0];
    assert_eq!(hook["event"], "order:create");
    assert!(hook["created"].is_string());
    let id = hook["id"].as_u64().unwrap();
    let dup = e
        .register("order:create", "http://127.0.0.1:9/other", Value::Null)
        .await;
    assert_eq!(dup.status, StatusCode::UNPROCESSABLE_ENTITY);
    let system = e
        .register("addon:uninstall", "http://127.0.0.1:9/x", Value::Null)
        .await;
    assert_eq!(system.status, StatusCode::UNPROCESSABLE_ENTITY);
    let list = e.api(Method::GET, "/api/webhooks", &Value::Null).await;
    assert_eq!(list.json()["data"]["paginator"]["totalCount"], 1);
    let del = e
        .api(Method::DELETE, &format!("/api/webhooks/{id}"), &Value::Null)
        .await;
    assert_eq!(del.status, StatusCode::OK);
    let again = e
        .register("order:create", "http://127.0.0.1:9/hook", Value::Null)
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
}

#[tokio::test]
async fn renew_signature_key_issues_a_new_key_every_call() {
    let e = env_with(SimConfig::default()).await;
    let k1 = e.renew_key().await;
    let k2 = e.renew_key().await;
    assert_eq!(k1.len(), 32);
    assert!(k1.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(k1, k2);
}

#[tokio::test]
async fn delivery_is_signed_with_the_current_key() {
    let e = env_with(SimConfig::default()).await;
    let mut rx = WebhookReceiver::start().await;
    e.register("order:create", &rx.url("/hook"), Value::Null)
        .await;
    let old = e.renew_key().await;
    let key = e.renew_key().await;
    let r = e
        .control(
            Method::POST,
            "/sim/eshops/222651/events",
            &json!({"event": "order:create", "eventInstance": "2024000001"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let got = rx.next().await;
    assert_eq!(got.method, Method::POST);
    assert_eq!(got.path_and_query, "/hook");
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["eshopId"], 222651);
    assert_eq!(body["event"], "order:create");
    assert_eq!(body["eventInstance"], "2024000001");
    assert!(body["eventCreated"].as_str().unwrap().ends_with("+0000"));
    let sig = got.headers["shoptet-webhook-signature"].to_str().unwrap();
    assert!(signature::verify(key.as_bytes(), &got.body, sig));
    assert!(!signature::verify(old.as_bytes(), &got.body, sig));
    assert_eq!(sig, signature::sign(key.as_bytes(), &got.body));
}

#[tokio::test]
async fn delivery_before_any_key_is_unsigned_and_carries_payload_when_asked() {
    let e = env_with(SimConfig::default()).await;
    let mut rx = WebhookReceiver::start().await;
    e.register("order:update", &rx.url("/h"), json!("full"))
        .await;
    e.control(
        Method::POST,
        "/sim/eshops/222651/events",
        &json!({"event": "order:update", "eventInstance": "2024000002"}),
    )
    .await;
    let got = rx.next().await;
    assert!(got.headers.get("shoptet-webhook-signature").is_none());
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["payload"]["data"]["order"]["code"], "2024000002");
}

#[tokio::test]
async fn failed_delivery_is_retried_three_attempts_in_all() {
    let e = env_with(SimConfig {
        webhook_retry_delay: Duration::from_millis(20),
        ..SimConfig::default()
    })
    .await;
    let mut rx = WebhookReceiver::start().await;
    rx.respond_with(&[500, 201, 500]);
    e.register("order:create", &rx.url("/h"), Value::Null).await;
    e.control(
        Method::POST,
        "/sim/eshops/222651/events",
        &json!({"event": "order:create", "eventInstance": "1"}),
    )
    .await;
    let bodies: Vec<_> = [rx.next().await, rx.next().await, rx.next().await]
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "same body each time"
    );
    // Wait for the third attempt's outcome to be recorded.
    let deliveries = loop {
        let d = e
            .control(
                Method::GET,
                "/sim/webhook-deliveries?eshopId=222651",
                &Value::Null,
            )
            .await
            .json();
        if d["deliveries"][0]["state"] != "pending" {
            break d;
        }
        tokio::task::yield_now().await;
    };
    let d = &deliveries["deliveries"][0];
    assert_eq!(d["state"], "failed");
    let statuses: Vec<_> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].clone())
        .collect();
    assert_eq!(statuses, vec![json!(500), json!(201), json!(500)]);
    assert!(rx.try_next().is_none(), "no fourth attempt");
}

#[tokio::test]
async fn suspend_and_uninstall_send_signed_addon_webhooks() {
    let mut rx = WebhookReceiver::start().await;
    let e = env_with(SimConfig {
        addon_webhook_url: Some(rx.url("/addon")),
        ..SimConfig::default()
    })
    .await;
    let key = e.renew_key().await;
    let r = e
        .control(Method::POST, "/sim/eshops/222651/suspend", &Value::Null)
        .await;
    assert_eq!(r.json()["status"], "suspended");
    let got = rx.next().await;
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["event"], "addon:suspend");
    assert_eq!(body["eventInstance"], "222651");
    let sig = got.headers["shoptet-webhook-signature"].to_str().unwrap();
    assert!(signature::verify(key.as_bytes(), &got.body, sig));
    for (action, event) in [
        ("approve", "addon:approve"),
        ("uninstall", "addon:uninstall"),
        ("terminate", "addon:terminate"),
    ] {
        e.control(
            Method::POST,
            &format!("/sim/eshops/222651/{action}"),
            &Value::Null,
        )
        .await;
        let got = rx.next().await;
        let body: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(body["event"], event);
    }
    let info = e
        .control(Method::GET, "/sim/eshops/222651", &Value::Null)
        .await;
    assert_eq!(info.json()["status"], "uninstalled");
}

#[tokio::test]
async fn async_job_needs_job_finished_webhook_then_completes_and_notifies() {
    let e = env_with(SimConfig {
        job_duration: Duration::from_millis(50),
        ..SimConfig::default()
    })
    .await;
    let refused = e
        .api(Method::GET, "/api/products/snapshot", &Value::Null)
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let mut rx = WebhookReceiver::start().await;
    e.register("job:finished", &rx.url("/jobs"), Value::Null)
        .await;
    let r = e
        .api(Method::GET, "/api/products/snapshot", &Value::Null)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let job_id = r.json()["data"]["jobId"].as_str().unwrap().to_owned();
    let got = rx.next().await;
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["event"], "job:finished");
    assert_eq!(body["eventInstance"], job_id.as_str());
    let status = e
        .api(
            Method::GET,
            &format!("/api/system/jobs/{job_id}"),
            &Value::Null,
        )
        .await;
    let job = &status.json()["data"]["job"];
    assert_eq!(job["status"], "completed");
    let result = e.c.get(job["resultUrl"].as_str().unwrap(), &[]).await;
    // The result file is gzipped JSON Lines, as Shoptet serves it.
    let mut lines = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&result.body[..]),
        &mut lines,
    )
    .expect("gzipped result");
    assert_eq!(lines.lines().count(), 30);
    let unknown = e
        .api(Method::GET, "/api/system/jobs/nope", &Value::Null)
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn control_plane_creates_eshops_and_calls_the_install_url() {
    let e = env_with(SimConfig::default()).await;
    let mut rx = WebhookReceiver::start().await;
    let r = e
        .control(
            Method::POST,
            "/sim/eshops",
            &json!({"eshopId": 777, "installUrl": rx.url("/install?x=1")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["eshopId"], 777);
    assert_eq!(v["installStatus"], 200);
    let code = v["code"].as_str().unwrap();
    let got = rx.next().await;
    assert_eq!(got.method, Method::GET);
    assert_eq!(got.path_and_query, format!("/install?x=1&code={code}"));
    let auto = e.control(Method::POST, "/sim/eshops", &Value::Null).await;
    assert!(auto.json()["eshopId"].as_u64().unwrap() > 0);
    assert_eq!(auto.json()["oauthToken"].as_str().unwrap().len(), 255);
}

#[tokio::test]
async fn bulk_eshops_answer_with_their_derived_oauth_tokens_and_seed_orders_on_use() {
    let e = env_with(SimConfig::default()).await;
    let body = json!({"from": 5000, "count": 3, "oauthTokenPrefix": "bulk"});
    let r = e.control(Method::POST, "/sim/eshops/bulk", &body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"from": 5000, "count": 3}));
    let token = e.c.api_token(&e.sim.base_url(), "bulk5002").await;
    let orders =
        e.c.get(
            &e.url("/api/orders"),
            &[("shoptet-access-token", token.as_str())],
        )
        .await;
    assert_eq!(orders.status, StatusCode::OK);
    assert_eq!(orders.json()["data"]["paginator"]["totalCount"], 25);
    let beyond = e
        .control(Method::GET, "/sim/eshops/5003", &Value::Null)
        .await;
    assert_eq!(beyond.status, StatusCode::NOT_FOUND);
    for bad in [
        json!({"from": 0, "count": 1, "oauthTokenPrefix": "p"}),
        json!({"from": 1, "count": 2_000_000, "oauthTokenPrefix": "p"}),
        json!({"from": 1, "count": 1, "oauthTokenPrefix": ""}),
        json!({"from": u64::MAX, "count": 2, "oauthTokenPrefix": "p"}),
    ] {
        let r = e.control(Method::POST, "/sim/eshops/bulk", &bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn control_plane_rejects_bad_input_without_panicking() {
    let e = env_with(SimConfig::default()).await;
    let cases = [
        (
            Method::POST,
            "/sim/eshops",
            "{broken",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/sim/eshops",
            r#"{"eshopId":"x"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/sim/eshops/abc/suspend",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/sim/eshops/999/suspend",
            "",
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/sim/eshops/222651/events",
            r#"{"event":"order:create"}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PUT,
            "/sim/eshops/222651/denied-endpoints",
            r#"{"a":1}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PATCH,
            "/sim/config",
            r#"{"nope":1}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PATCH,
            "/sim/config",
            r#"{"latency":"soon"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/sim/requests?eshopId=x",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (Method::GET, "/sim/nothing", "", StatusCode::NOT_FOUND),
        (
            Method::DELETE,
            "/sim/stats",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (m, path, body, status) in cases {
        let r = e.c.request(m.clone(), &e.url(path), &[], body).await;
        assert_eq!(r.status, status, "{m} {path} {body}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }
}

#[tokio::test]
async fn config_can_be_read_and_patched_at_runtime() {
    let e = env_with(SimConfig::default()).await;
    let r = e.control(Method::GET, "/sim/config", &Value::Null).await;
    let v = r.json();
    assert_eq!(v["tokenLifetime"], "30m");
    assert_eq!(v["clientSecret"], "<redacted>");
    let r = e
        .control(
            Method::PATCH,
            "/sim/config",
            &json!({"tokenLifetime": "2s", "tokenCap": 1, "latency": 0}),
        )
        .await;
    assert_eq!(r.json()["tokenLifetime"], "2s");
    let inst = e.sim.create_eshop(5);
    let auth = format!("Bearer {}", inst.oauth_token);
    let gat = e.url("/action/ApiOAuthServer/getAccessToken");
    let first = e.c.get(&gat, &[("authorization", &auth)]).await;
    assert_eq!(first.json()["expires_in"], 2);
    let second = e.c.get(&gat, &[("authorization", &auth)]).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn stats_endpoint_matches_the_library_view_and_resets() {
    let e = env_with(SimConfig::default()).await;
    e.api(Method::GET, "/api/eshop", &Value::Null).await;
    let r = e.control(Method::GET, "/sim/stats", &Value::Null).await;
    let over_http: SimStats = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(over_http, e.sim.stats());
    let v = r.json();
    assert_eq!(v["tokensMinted"]["222651"], 1);
    assert_eq!(v["calls"]["getAccessToken"], 1);
    assert_eq!(v["eshops"]["222651"]["apiCalls"], 1);
    assert_eq!(v["peakConcurrencyPerToken"], 1);
    // The counters SPEC B8 names: tokens minted per e-shop, API calls, 401s, 429s, peak
    // concurrency per token.
    assert_eq!(v["calls"]["api"], 1);
    assert_eq!(v["status401"], 0);
    assert_eq!(v["status429"], 0);
    let reset = e
        .control(Method::POST, "/sim/stats/reset", &Value::Null)
        .await;
    assert_eq!(reset.json()["calls"]["api"], 0);
    assert_eq!(e.sim.stats().tokens_minted[&222651], 0);
}

#[tokio::test]
async fn order_writes_through_the_api_fire_order_webhooks() {
    let e = env_with(SimConfig::default()).await;
    let mut rx = WebhookReceiver::start().await;
    let key = e.renew_key().await;
    for event in ["order:create", "order:update", "order:delete"] {
        let r = e.register(event, &rx.url("/hook"), Value::Null).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
    let created = e
        .api(
            Method::POST,
            "/api/orders",
            &json!({"data": {"email": "a@example.com"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let code = created.json()["data"]["order"]["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/orders/{code}");
    let patched = e
        .api(Method::PATCH, &path, &json!({"data": {"paid": true}}))
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    let deleted = e.api(Method::DELETE, &path, &Value::Null).await;
    assert_eq!(deleted.status, StatusCode::OK);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let got = rx.next().await;
        let sig = got.headers["shoptet-webhook-signature"].to_str().unwrap();
        assert!(signature::verify(key.as_bytes(), &got.body, sig));
        let body: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(body["eventInstance"], code.as_str());
        seen.push(body["event"].as_str().unwrap().to_owned());
    }
    seen.sort();
    assert_eq!(seen, ["order:create", "order:delete", "order:update"]);
}
