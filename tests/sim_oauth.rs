//! The simulator's partner OAuth server: code exchange in all three encodings, getAccessToken,
//! the 5-token cap, refusals, re-install and TLS.

use http::{Method, StatusCode};
use serde_json::json;
use shoptet_proxy::sim::testing::{start, TestClient, TestResponse};
use shoptet_proxy::sim::{SimConfig, SimHandle, SimInstallation};

fn token_url(sim: &SimHandle) -> String {
    format!("{}/action/ApiOAuthServer/token", sim.base_url())
}

fn gat_url(sim: &SimHandle) -> String {
    format!("{}/action/ApiOAuthServer/getAccessToken", sim.base_url())
}

fn form(inst: &SimInstallation, secret: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", "sim-client")
        .append_pair("client_secret", secret)
        .append_pair("code", &inst.code)
        .append_pair("grant_type", "authorization_code")
        .append_pair("redirect_uri", "http://addon.test/install")
        .append_pair("scope", "api")
        .finish()
}

/// Exchanges `inst`'s code with `secret` as the client secret, urlencoded as Shoptet documents.
async fn exchange(
    c: &TestClient,
    sim: &SimHandle,
    inst: &SimInstallation,
    secret: &str,
) -> TestResponse {
    c.request(
        Method::POST,
        &token_url(sim),
        &[("content-type", "application/x-www-form-urlencoded")],
        form(inst, secret),
    )
    .await
}

fn assert_exchange_ok(r: &TestResponse, inst: &SimInstallation) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["access_token"], inst.oauth_token.as_str());
    assert_eq!(v["access_token"].as_str().unwrap().len(), 255);
    assert_eq!(v["expires_in"], serde_json::Value::Null);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["scope"], "api");
    assert_eq!(v["eshopId"], inst.eshop_id);
    assert_eq!(
        v["eshopUrl"],
        format!("https://{}.myshoptet.com/", inst.eshop_id)
    );
    assert!(v["contactEmail"].as_str().unwrap().contains('@'));
    assert_eq!(v["trial"], false);
}

#[tokio::test]
async fn exchange_accepts_a_json_body() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    let inst = sim.create_eshop(222651);
    assert_eq!(inst.code.len(), 255);
    let body = json!({"client_id": "sim-client", "client_secret": "sim-secret", "code": inst.code,
                      "grant_type": "authorization_code", "redirect_uri": "http://a/install", "scope": "api"});
    let r = c.post_json(&token_url(&sim), &[], &body).await;
    assert_exchange_ok(&r, &inst);
    assert_eq!(sim.stats().calls.token, 1);
}

#[tokio::test]
async fn exchange_accepts_an_urlencoded_body() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    let inst = sim.create_eshop(1);
    let r = exchange(&c, &sim, &inst, "sim-secret").await;
    assert_exchange_ok(&r, &inst);
}

#[tokio::test]
async fn exchange_accepts_a_multipart_body() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    let inst = sim.create_eshop(2);
    let mut body = String::new();
    for (k, v) in [
        ("client_id", "sim-client"),
        ("client_secret", "sim-secret"),
        ("code", inst.code.as_str()),
        ("grant_type", "authorization_code"),
        ("redirect_uri", "http://a/install"),
        ("scope", "api"),
    ] {
        body.push_str(&format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str("--XyZ--\r\n");
    let r = c
        .request(
            Method::POST,
            &token_url(&sim),
            &[("content-type", "multipart/form-data; boundary=XyZ")],
            body,
        )
        .await;
    assert_exchange_ok(&r, &inst);
}

#[tokio::test]
async fn reused_code_is_rejected() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    let inst = sim.create_eshop(3);
    let first = exchange(&c, &sim, &inst, "sim-secret").await;
    assert_eq!(first.status, StatusCode::OK);
    let again = exchange(&c, &sim, &inst, "sim-secret").await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.json()["error"], "invalid_grant");
    assert!(again.json()["error_description"].is_string());
}

#[tokio::test]
async fn bad_client_credentials_are_rejected_without_burning_the_code() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    let inst = sim.create_eshop(4);
    let bad = exchange(&c, &sim, &inst, "wrong").await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bad.json()["error"], "invalid_client");
    assert!(!bad.text().contains("sim-secret"));
    let good = exchange(&c, &sim, &inst, "sim-secret").await;
    assert_exchange_ok(&good, &inst);
}

#[tokio::test]
async fn malformed_exchanges_are_invalid_request() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    let url = token_url(&sim);
    let missing = c
        .post_json(&url, &[], &json!({"client_id": "sim-client"}))
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.json()["error"], "invalid_request");
    let broken = c
        .request(
            Method::POST,
            &url,
            &[("content-type", "application/json")],
            "{not json",
        )
        .await;
    assert_eq!(broken.json()["error"], "invalid_request");
    let wrong_type = c
        .request(Method::POST, &url, &[("content-type", "text/plain")], "x")
        .await;
    assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong_type.json()["error"], "invalid_request");
    let bad_multipart = c
        .request(
            Method::POST,
            &url,
            &[("content-type", "multipart/form-data; boundary=Q")],
            "--Q\r\ngarbage",
        )
        .await;
    assert_eq!(bad_multipart.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn get_access_token_mints_labelled_tokens_by_get_and_post() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    let inst = sim.create_eshop(222651);
    let auth = format!("Bearer {}", inst.oauth_token);
    let r = c.get(&gat_url(&sim), &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["expires_in"], 1800);
    let token = v["access_token"].as_str().unwrap();
    let (prefix, random) = token.rsplit_once('-').unwrap();
    assert_eq!(prefix, "222651-a-1");
    assert_eq!(random.len(), 32);
    let r = c
        .request(
            Method::POST,
            &gat_url(&sim),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert!(r.json()["access_token"]
        .as_str()
        .unwrap()
        .starts_with("222651-a-2-"));
    assert_eq!(sim.stats().tokens_minted[&222651], 2);
    assert_eq!(sim.stats().calls.get_access_token, 2);
}

#[tokio::test]
async fn sixth_valid_token_is_refused_with_maximum_tokens_reached() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    let inst = sim.create_eshop(5);
    for _ in 0..5 {
        c.api_token(&sim.base_url(), &inst.oauth_token).await;
    }
    let auth = format!("Bearer {}", inst.oauth_token);
    let r = c.get(&gat_url(&sim), &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json(), json!({"error": "maximum_tokens_reached"}));
    // Tokens that are no longer valid free their places.
    let cp = c
        .request(
            Method::POST,
            &format!("{}/sim/eshops/5/expire-tokens", sim.base_url()),
            &[],
            "",
        )
        .await;
    assert_eq!(cp.json()["tokens"], 5);
    c.api_token(&sim.base_url(), &inst.oauth_token).await;
    assert_eq!(sim.stats().status429, 1);
}

#[tokio::test]
async fn token_cap_zero_means_unlimited() {
    let sim = start(SimConfig {
        token_cap: 0,
        ..SimConfig::default()
    })
    .await;
    let c = TestClient::new();
    let inst = sim.create_eshop(6);
    for _ in 0..8 {
        c.api_token(&sim.base_url(), &inst.oauth_token).await;
    }
    assert_eq!(sim.stats().eshops[&6].tokens_minted, 8);
}

#[tokio::test]
async fn unknown_or_missing_oauth_token_is_unauthorized() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    let r = c
        .get(&gat_url(&sim), &[("authorization", "Bearer nope")])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json(), json!({"error": "Unauthorized"}));
    let r = c.get(&gat_url(&sim), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(sim.stats().status401, 2);
}

#[tokio::test]
async fn suspended_and_uninstalled_installations_get_no_tokens() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    let inst = sim.create_eshop(7);
    let auth = format!("Bearer {}", inst.oauth_token);
    let ctl = |action: &str| format!("{}/sim/eshops/7/{action}", sim.base_url());
    c.request(Method::POST, &ctl("suspend"), &[], "").await;
    let r = c.get(&gat_url(&sim), &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json(), json!({"error": "addon_suspended"}));
    c.request(Method::POST, &ctl("approve"), &[], "").await;
    c.api_token(&sim.base_url(), &inst.oauth_token).await;
    c.request(Method::POST, &ctl("uninstall"), &[], "").await;
    let r = c.get(&gat_url(&sim), &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json(), json!({"error": "addon_not_installed"}));
}

#[tokio::test]
async fn reinstall_issues_a_new_oauth_token_and_revokes_the_old_one() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    let old = sim.create_eshop(8);
    let old_api = c.api_token(&sim.base_url(), &old.oauth_token).await;
    let r = c
        .request(
            Method::POST,
            &format!("{}/sim/eshops/8/code", sim.base_url()),
            &[],
            "",
        )
        .await;
    let v = r.json();
    let new_oauth = v["oauthToken"].as_str().unwrap();
    assert_ne!(new_oauth, old.oauth_token);
    let old_auth = format!("Bearer {}", old.oauth_token);
    let refused = c.get(&gat_url(&sim), &[("authorization", &old_auth)]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let api = c
        .get(
            &format!("{}/api/eshop", sim.base_url()),
            &[("shoptet-access-token", &old_api)],
        )
        .await;
    assert_eq!(api.error_code().as_deref(), Some("invalid-token"));
    // The old, never exchanged code is dead too; the new one exchanges to the new token.
    let stale = exchange(&c, &sim, &old, "sim-secret").await;
    assert_eq!(stale.json()["error"], "invalid_grant");
    let new = SimInstallation {
        eshop_id: 8,
        code: v["code"].as_str().unwrap().to_owned(),
        oauth_token: new_oauth.to_owned(),
    };
    let ok = exchange(&c, &sim, &new, "sim-secret").await;
    assert_exchange_ok(&ok, &new);
}

#[tokio::test]
async fn tls_mode_serves_https_trusted_through_the_generated_certificate() {
    let sim = start(SimConfig {
        tls: true,
        ..SimConfig::default()
    })
    .await;
    assert!(sim.base_url().starts_with("https://127.0.0.1:"));
    let pem = sim.ca_cert_pem().expect("a certificate in TLS mode");
    let c = TestClient::with_ca_pem(&pem);
    let inst = sim.create_eshop(9);
    let token = c.api_token(&sim.base_url(), &inst.oauth_token).await;
    let r = c
        .get(
            &format!("{}/api/eshop", sim.base_url()),
            &[("shoptet-access-token", &token)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let untrusting = TestClient::new()
        .try_request(
            Method::GET,
            &format!("{}/sim/stats", sim.base_url()),
            &[],
            "",
        )
        .await;
    assert!(
        untrusting.is_err(),
        "an unknown certificate must not be trusted"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn token_delay_answers_late_and_the_token_counts_even_if_the_caller_gives_up() {
    let sim = start(SimConfig {
        token_cap: 1,
        ..SimConfig::default()
    })
    .await;
    let c = TestClient::new();
    let inst = sim.create_eshop(7);
    let patched = c
        .request(
            Method::PATCH,
            &format!("{}/sim/config", sim.base_url()),
            &[("content-type", "application/json")],
            r#"{"tokenDelay":"30s"}"#,
        )
        .await;
    assert_eq!(patched.json()["tokenDelay"], "30s");
    let auth = format!("Bearer {}", inst.oauth_token);
    let pending = tokio::spawn({
        let (c, url, auth) = (c.clone(), gat_url(&sim), auth.clone());
        async move { c.get(&url, &[("authorization", &auth)]).await }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sim.stats().tokens_minted.get(&7) != Some(&1) {
        assert!(std::time::Instant::now() < deadline, "never minted");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(!pending.is_finished(), "the answer waits for tokenDelay");
    // The caller gives up: its connection goes away before the answer.
    pending.abort();
    let _ = pending.await;
    // The token it never saw still holds the only place under the cap.
    let r = c.get(&gat_url(&sim), &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json(), json!({"error": "maximum_tokens_reached"}));
    let info = c
        .get(&format!("{}/sim/eshops/7", sim.base_url()), &[])
        .await;
    assert_eq!(info.json()["validTokens"], 1);
    assert_eq!(sim.stats().eshops[&7].tokens_minted, 1);
    // A caller that waits gets its token after the delay, and it works.
    sim.set_config(|cfg| {
        cfg.token_cap = 0;
        cfg.token_delay = std::time::Duration::from_millis(200);
    });
    let t = std::time::Instant::now();
    let token = c.api_token(&sim.base_url(), &inst.oauth_token).await;
    assert!(t.elapsed() >= std::time::Duration::from_millis(200));
    let api = c
        .get(
            &format!("{}/api/eshop", sim.base_url()),
            &[("shoptet-access-token", &token)],
        )
        .await;
    assert_eq!(api.status, StatusCode::OK);
    assert_eq!(sim.stats().eshops[&7].tokens_minted, 2);
}
