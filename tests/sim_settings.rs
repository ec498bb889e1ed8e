//! The simulator's part of the settings-page flow (SPEC A5, B8): each e-shop's own OAuth server
//! (authorize, token, getBasicEshop), its admins, the administration's one-time codes and the
//! simulated administration page that frames the addon's settings link.

use http::{Method, StatusCode};
use serde_json::{json, Value};
use shoptet_proxy::sim::testing::{start, TestClient, TestResponse};
use shoptet_proxy::sim::{SimConfig, SimHandle};

const REDIRECT: &str = "http://addon.test/settings/authorized";

fn oauth_base(sim: &SimHandle, eshop: u64) -> String {
    format!("{}/eshops/{eshop}/action/OAuthServer/", sim.base_url())
}

fn ctl(sim: &SimHandle, path: &str) -> String {
    format!("{}/sim/{path}", sim.base_url())
}

async fn patch_config(c: &TestClient, sim: &SimHandle, body: Value) -> Value {
    let r = c
        .send_json(Method::PATCH, &ctl(sim, "config"), &[], &body)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

/// A code from the control plane, as Shoptet's administration issues one for `email`.
async fn settings_code(c: &TestClient, sim: &SimHandle, eshop: u64, email: Option<&str>) -> String {
    let body = email.map_or(Value::Null, |e| json!({ "email": e }));
    let r = c
        .post_json(
            &ctl(sim, &format!("eshops/{eshop}/settings-code")),
            &[],
            &body,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["code"].as_str().expect("code").to_owned()
}

/// `POST <e-shop `at`'s OAuth server>token`, urlencoded as Shoptet documents.
async fn exchange(
    c: &TestClient,
    sim: &SimHandle,
    at: u64,
    code: &str,
    secret: &str,
    redirect_uri: Option<&str>,
) -> TestResponse {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("client_id", "sim-client")
        .append_pair("client_secret", secret)
        .append_pair("code", code)
        .append_pair("grant_type", "authorization_code")
        .append_pair("scope", "basic_eshop");
    if let Some(r) = redirect_uri {
        form.append_pair("redirect_uri", r);
    }
    c.request(
        Method::POST,
        &format!("{}token", oauth_base(sim, at)),
        &[("content-type", "application/x-www-form-urlencoded")],
        form.finish(),
    )
    .await
}

/// Exchanges and asserts success → the access token.
async fn access_token(c: &TestClient, sim: &SimHandle, at: u64, code: &str) -> String {
    let r = exchange(c, sim, at, code, "sim-secret", Some(REDIRECT)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["scope"], "basic_eshop");
    assert!(v["expires_in"].as_u64().is_some_and(|s| s > 0));
    v["access_token"].as_str().expect("access_token").to_owned()
}

/// getBasicEshop at e-shop `at`'s server with `method`.
async fn identity(
    c: &TestClient,
    sim: &SimHandle,
    at: u64,
    method: Method,
    token: &str,
) -> TestResponse {
    let auth = format!("Bearer {token}");
    c.request(
        method,
        &format!("{}resource?method=getBasicEshop", oauth_base(sim, at)),
        &[("authorization", &auth)],
        "",
    )
    .await
}

fn assert_invalid_grant(r: &TestResponse) {
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_grant");
}

/// The `Location` of a 302 from `authorize`, parsed.
fn location(r: &TestResponse) -> url::Url {
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.text());
    r.header("location")
        .expect("a Location header")
        .parse()
        .expect("Location is a URL")
}

fn param(u: &url::Url, name: &str) -> Option<String> {
    u.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn a_settings_code_exchanges_to_the_admins_identity() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    let inst = sim.create_eshop(222651);
    let code = settings_code(&c, &sim, 222651, None).await;
    let token = access_token(&c, &sim, 222651, &code).await;
    for method in [Method::GET, Method::POST] {
        let r = identity(&c, &sim, 222651, method, &token).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v = r.json();
        assert_eq!(v["success"], true);
        assert_eq!(
            v["data"]["user"],
            json!({"email": "owner222651@example.com", "name": "Owner 222651"})
        );
        assert_eq!(v["data"]["project"]["id"], 222651);
        // The project is the e-shop its /api/eshop describes.
        let api = c.api_token(&sim.base_url(), &inst.oauth_token).await;
        let info = c
            .get(
                &format!("{}/api/eshop", sim.base_url()),
                &[("shoptet-access-token", &api)],
            )
            .await
            .json();
        let contact = &info["data"]["contactInformation"];
        assert_eq!(v["data"]["project"]["url"], contact["url"]);
        assert_eq!(v["data"]["project"]["name"], contact["eshopName"]);
    }
    let s = sim.stats();
    assert_eq!(s.calls.settings_token, 1);
    assert_eq!(s.calls.settings_resource, 2);
    assert_eq!(s.calls.token, 0, "the partner OAuth server is not involved");
    let e = &s.eshops[&222651];
    assert_eq!(
        (
            e.settings_token_calls,
            e.settings_secrets_received,
            e.settings_tokens_issued
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn the_exchange_accepts_json_too() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    sim.create_eshop(1);
    let code = settings_code(&c, &sim, 1, None).await;
    let body = json!({"client_id": "sim-client", "client_secret": "sim-secret", "code": code,
                      "grant_type": "authorization_code", "redirect_uri": REDIRECT,
                      "scope": "basic_eshop"});
    let r = c
        .post_json(&format!("{}token", oauth_base(&sim, 1)), &[], &body)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["scope"], "basic_eshop");
}

#[tokio::test]
async fn a_code_exchanges_once() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    sim.create_eshop(2);
    let code = settings_code(&c, &sim, 2, None).await;
    access_token(&c, &sim, 2, &code).await;
    let again = exchange(&c, &sim, 2, &code, "sim-secret", Some(REDIRECT)).await;
    assert_invalid_grant(&again);
    let unknown = exchange(&c, &sim, 2, "nope", "sim-secret", Some(REDIRECT)).await;
    assert_invalid_grant(&unknown);
    assert_eq!(sim.stats().eshops[&2].settings_tokens_issued, 1);
}

#[tokio::test]
async fn an_expired_code_is_invalid_grant() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    sim.create_eshop(3);
    let fresh = settings_code(&c, &sim, 3, None).await;
    let v = patch_config(&c, &sim, json!({"settingsCodeLifetime": 0})).await;
    assert_eq!(v["settingsCodeLifetime"], "0s");
    // Issued with no lifetime: expired the moment it exists.
    let stale = settings_code(&c, &sim, 3, None).await;
    assert_invalid_grant(&exchange(&c, &sim, 3, &stale, "sim-secret", Some(REDIRECT)).await);
    // A code keeps the lifetime it was issued with.
    access_token(&c, &sim, 3, &fresh).await;
}

#[tokio::test]
async fn bad_client_credentials_are_invalid_client_and_spend_no_code() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    sim.create_eshop(4);
    let code = settings_code(&c, &sim, 4, None).await;
    let bad = exchange(&c, &sim, 4, &code, "wrong-secret", Some(REDIRECT)).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED, "{}", bad.text());
    assert_eq!(bad.json()["error"], "invalid_client");
    assert!(!bad.text().contains("wrong-secret") && !bad.text().contains("sim-secret"));
    let e = &sim.stats().eshops[&4];
    assert_eq!(
        (e.settings_token_calls, e.settings_secrets_received),
        (1, 0)
    );
    access_token(&c, &sim, 4, &code).await;
    let e = &sim.stats().eshops[&4];
    assert_eq!(
        (e.settings_token_calls, e.settings_secrets_received),
        (2, 1)
    );
}

#[tokio::test]
async fn malformed_exchanges_are_refused_oauth_style() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    sim.create_eshop(5);
    let url = format!("{}token", oauth_base(&sim, 5));
    let missing = c
        .post_json(&url, &[], &json!({"client_id": "sim-client"}))
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.json()["error"], "invalid_request");
    let code = settings_code(&c, &sim, 5, None).await;
    let api_scope = json!({"client_id": "sim-client", "client_secret": "sim-secret", "code": code,
                           "grant_type": "authorization_code", "scope": "api"});
    let r = c.post_json(&url, &[], &api_scope).await;
    assert_eq!(r.json()["error"], "invalid_scope");
    let get = c.get(&url, &[]).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    let unknown_eshop = c
        .post_json(&format!("{}token", oauth_base(&sim, 999)), &[], &api_scope)
        .await;
    assert_eq!(unknown_eshop.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn redirect_uri_must_be_the_registered_one_when_set() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    sim.create_eshop(6);
    // Not registered: any redirect_uri, or none, is accepted for an administration code.
    let code = settings_code(&c, &sim, 6, None).await;
    let r = exchange(&c, &sim, 6, &code, "sim-secret", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    patch_config(&c, &sim, json!({"settingsRedirectUri": REDIRECT})).await;
    for wrong in [Some("http://evil.test/settings/authorized"), None] {
        let code = settings_code(&c, &sim, 6, None).await;
        assert_invalid_grant(&exchange(&c, &sim, 6, &code, "sim-secret", wrong).await);
    }
    let code = settings_code(&c, &sim, 6, None).await;
    access_token(&c, &sim, 6, &code).await;
}

#[tokio::test]
async fn authorize_sends_the_admin_straight_back_with_a_code_and_the_state() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    sim.create_eshop(7);
    let back = "http://addon.test/settings/authorized?keep=1";
    let authorize = |extra: &[(&str, &str)]| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("client_id", "sim-client"),
            ("scope", "basic_eshop"),
            ("response_type", "code"),
            ("redirect_uri", back),
            ("state", "s t&a=te"),
        ] {
            if !extra.iter().any(|(ek, _)| *ek == k) {
                q.append_pair(k, v);
            }
        }
        for (k, v) in extra {
            q.append_pair(k, v);
        }
        format!("{}authorize?{}", oauth_base(&sim, 7), q.finish())
    };
    let to = location(&c.get(&authorize(&[]), &[]).await);
    assert_eq!(to.host_str(), Some("addon.test"));
    assert_eq!(to.path(), "/settings/authorized");
    assert_eq!(param(&to, "keep").as_deref(), Some("1"));
    assert_eq!(param(&to, "state").as_deref(), Some("s t&a=te"));
    let code = param(&to, "code").expect("a code");
    // The code is bound to the redirect_uri it was issued for.
    let elsewhere = exchange(&c, &sim, 7, &code, "sim-secret", Some(REDIRECT)).await;
    assert_invalid_grant(&elsewhere);
    let to = location(&c.get(&authorize(&[]), &[]).await);
    let code = param(&to, "code").expect("a code");
    let r = exchange(&c, &sim, 7, &code, "sim-secret", Some(back)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let v = identity(&c, &sim, 7, Method::GET, &token).await.json();
    assert_eq!(v["data"]["user"]["email"], "owner7@example.com");

    // Acting as another admin.
    c.post_json(
        &ctl(&sim, "eshops/7/admins"),
        &[],
        &json!({"email": "jana@example.com", "name": "Jana"}),
    )
    .await;
    let to = location(
        &c.get(&authorize(&[("user", "jana@example.com")]), &[])
            .await,
    );
    let code = param(&to, "code").expect("a code");
    let r = exchange(&c, &sim, 7, &code, "sim-secret", Some(back)).await;
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let v = identity(&c, &sim, 7, Method::GET, &token).await.json();
    assert_eq!(v["data"]["user"]["name"], "Jana");

    // Errors about the request itself go back to the client with the state.
    let to = location(&c.get(&authorize(&[("scope", "api")]), &[]).await);
    assert_eq!(param(&to, "error").as_deref(), Some("invalid_scope"));
    assert_eq!(param(&to, "state").as_deref(), Some("s t&a=te"));
    assert_eq!(param(&to, "code"), None);
    let to = location(&c.get(&authorize(&[("response_type", "token")]), &[]).await);
    assert_eq!(
        param(&to, "error").as_deref(),
        Some("unsupported_response_type")
    );

    // A bad client, redirect_uri or user is never redirected.
    for extra in [
        [("client_id", "someone-else")],
        [("redirect_uri", "not a url")],
        [("user", "nobody@example.com")],
    ] {
        let r = c.get(&authorize(&extra), &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{extra:?}: {}", r.text());
        assert!(r.header("location").is_none());
    }
    patch_config(&c, &sim, json!({"settingsRedirectUri": REDIRECT})).await;
    let r = c.get(&authorize(&[]), &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let to = location(&c.get(&authorize(&[("redirect_uri", REDIRECT)]), &[]).await);
    assert!(param(&to, "code").is_some());
    assert_eq!(sim.stats().calls.settings_authorize, 10);
}

#[tokio::test]
async fn admins_are_listed_added_and_named_in_their_codes() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    sim.create_eshop(8);
    let list = c.get(&ctl(&sim, "eshops/8/admins"), &[]).await.json();
    assert_eq!(
        list,
        json!({"admins": [{"email": "owner8@example.com", "name": "Owner 8"}]})
    );
    let added = c
        .post_json(
            &ctl(&sim, "eshops/8/admins"),
            &[],
            &json!({"email": "jana@example.com", "name": "Jana Nováková"}),
        )
        .await;
    assert_eq!(added.status, StatusCode::OK);
    assert_eq!(added.json()["admins"].as_array().unwrap().len(), 2);
    let code = settings_code(&c, &sim, 8, Some("JANA@example.com")).await;
    let token = access_token(&c, &sim, 8, &code).await;
    let v = identity(&c, &sim, 8, Method::GET, &token).await.json();
    assert_eq!(
        v["data"]["user"],
        json!({"email": "jana@example.com", "name": "Jana Nováková"})
    );
    let unknown = c
        .post_json(
            &ctl(&sim, "eshops/8/settings-code"),
            &[],
            &json!({"email": "nobody@example.com"}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let bad = c
        .post_json(&ctl(&sim, "eshops/8/admins"), &[], &json!({"name": "x"}))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let no_eshop = c
        .post_json(&ctl(&sim, "eshops/404/settings-code"), &[], &json!({}))
        .await;
    assert_eq!(no_eshop.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_code_of_another_eshop_names_that_eshop_wherever_it_is_exchanged() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    sim.create_eshop(10);
    sim.create_eshop(20);
    let code = settings_code(&c, &sim, 20, None).await;
    let token = access_token(&c, &sim, 10, &code).await;
    let v = identity(&c, &sim, 10, Method::GET, &token).await.json();
    assert_eq!(v["data"]["project"]["id"], 20);
    assert_eq!(v["data"]["user"]["email"], "owner20@example.com");
    let s = sim.stats();
    assert_eq!(s.eshops[&10].settings_secrets_received, 1);
    assert_eq!(s.eshops[&20].settings_secrets_received, 0);
}

#[tokio::test]
async fn get_basic_eshop_refuses_bad_tokens_and_unknown_methods() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    sim.create_eshop(11);
    let r = identity(&c, &sim, 11, Method::GET, "nope").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "invalid_token");
    assert!(r.header("www-authenticate").is_some());
    let r = c
        .get(
            &format!("{}resource?method=getBasicEshop", oauth_base(&sim, 11)),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let code = settings_code(&c, &sim, 11, None).await;
    let token = access_token(&c, &sim, 11, &code).await;
    let auth = format!("Bearer {token}");
    let r = c
        .get(
            &format!("{}resource?method=getEverything", oauth_base(&sim, 11)),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_request");
}

/// The iframe's `src` in the administration page, HTML-unescaped.
fn iframe_src(page: &str) -> String {
    let start = page.find("<iframe").expect("an iframe");
    let rest = &page[start..];
    let at = rest.find("src=\"").expect("a src attribute") + 5;
    let end = rest[at..].find('"').expect("a closing quote");
    rest[at..at + end]
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[tokio::test]
async fn the_administration_frames_the_settings_link_with_placeholders_replaced() {
    let sim = start(SimConfig::default()).await;
    let c = TestClient::new();
    sim.create_eshop(12);
    let page = |query: &str| {
        let url = format!("{}/eshops/12/admin/settings{query}", sim.base_url());
        let c = c.clone();
        async move { c.get(&url, &[]).await }
    };
    let off = page("").await;
    assert_eq!(off.status, StatusCode::NOT_FOUND);
    assert!(off.text().contains("settingsUrl"), "{}", off.text());

    let link = "http://addon.test/settings?eshopId=#SHOP_ID#&language=#LANGUAGE#&code=#OAUTH_CODE#";
    patch_config(&c, &sim, json!({"settingsUrl": link})).await;
    // Without the URL for user authorization, Shoptet leaves #OAUTH_CODE# as it is.
    let src = iframe_src(&page("").await.text());
    assert_eq!(
        src,
        "http://addon.test/settings?eshopId=12&language=cs&code=#OAUTH_CODE#"
    );

    patch_config(&c, &sim, json!({"settingsRedirectUri": REDIRECT})).await;
    c.post_json(
        &ctl(&sim, "eshops/12/admins"),
        &[],
        &json!({"email": "eva@example.com", "name": "Eva <b>&\""}),
    )
    .await;
    let r = page("?user=eva%40example.com&language=sk").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let html = r.text();
    assert!(html.contains("Eva &lt;b&gt;&amp;&quot;"), "{html}");
    assert!(!html.contains("<b>"));
    assert!(
        html.contains("&amp;language=sk"),
        "src is HTML-escaped: {html}"
    );
    let src: url::Url = iframe_src(&html).parse().expect("src is a URL");
    assert_eq!(src.host_str(), Some("addon.test"));
    assert_eq!(param(&src, "eshopId").as_deref(), Some("12"));
    assert_eq!(param(&src, "language").as_deref(), Some("sk"));
    let code = param(&src, "code").expect("a code");
    assert_ne!(code, "#OAUTH_CODE#");
    let token = access_token(&c, &sim, 12, &code).await;
    let v = identity(&c, &sim, 12, Method::GET, &token).await.json();
    assert_eq!(v["data"]["user"]["email"], "eva@example.com");
    assert_eq!(v["data"]["project"]["id"], 12);

    // Every render is a fresh code.
    let again = iframe_src(&page("?user=eva%40example.com&language=sk").await.text());
    assert_ne!(param(&again.parse().unwrap(), "code"), Some(code));

    assert_eq!(page("?language=de").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        page("?user=nobody%40example.com").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn config_shows_and_patches_the_settings_knobs() {
    let sim = start(SimConfig {
        client_secret: "hunter2".into(),
        ..SimConfig::default()
    })
    .await;
    let c = TestClient::new();
    let v = c.get(&ctl(&sim, "config"), &[]).await.json();
    assert_eq!(v["settingsUrl"], Value::Null);
    assert_eq!(v["settingsRedirectUri"], Value::Null);
    assert_eq!(v["settingsCodeLifetime"], "5m");
    let v = patch_config(
        &c,
        &sim,
        json!({"settingsUrl": "http://a.test/s?e=#SHOP_ID#", "settingsRedirectUri": REDIRECT,
               "settingsCodeLifetime": "30s"}),
    )
    .await;
    assert_eq!(v["settingsUrl"], "http://a.test/s?e=#SHOP_ID#");
    assert_eq!(v["settingsRedirectUri"], REDIRECT);
    assert_eq!(v["settingsCodeLifetime"], "30s");
    assert_eq!(v["clientSecret"], "<redacted>");
    assert!(!v.to_string().contains("hunter2"));
    let v = patch_config(
        &c,
        &sim,
        json!({"settingsUrl": null, "settingsRedirectUri": ""}),
    )
    .await;
    assert_eq!(v["settingsUrl"], Value::Null);
    assert_eq!(v["settingsRedirectUri"], Value::Null);
    let bad = c
        .send_json(
            Method::PATCH,
            &ctl(&sim, "config"),
            &[],
            &json!({"settingsUrl": 5}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}
