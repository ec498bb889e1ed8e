//! The install callback (SPEC B5) end to end against the simulator: code exchange, encrypted
//! storage, the signature key, the "installed" event, the 5 s budget, allowlists and TLS.

mod common;

use bytes::Bytes;
use common::deploy::Deployment;
use http::Response;
use http_body_util::Full;
use shoptet_proxy::sim::testing::TestClient;
use std::time::{Duration, Instant};

const ESHOP: u64 = 222651;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_stores_the_installation_and_tells_the_addon() {
    let mut h = Deployment::new().await;
    let p = h.start().await;
    let sim = h.install(&p, ESHOP).await;
    assert_eq!(sim["installStatus"], 200, "{sim}");
    let oauth_token = sim["oauthToken"].as_str().expect("oauth token").to_owned();

    let event = h.events.next().await;
    let event: serde_json::Value = serde_json::from_slice(&event.body).expect("event is JSON");
    assert_eq!(event["event"], "installed");
    assert_eq!(event["eshopId"], ESHOP);
    assert!(event["eshopUrl"].is_string(), "{event}");
    assert!(event["contactEmail"].is_string(), "{event}");

    let inst = h.store().await.get(ESHOP).await.unwrap().expect("stored");
    assert_eq!(inst.oauth_token.expose(), oauth_token);
    assert_eq!(inst.status.as_str(), "active");
    let key = inst.signature_key.expect("signature key stored");
    let sim_view = h
        .http
        .get(&format!("{}/sim/eshops/{ESHOP}", h.sim.base_url()), &[])
        .await
        .json();
    assert_eq!(sim_view["hasSignatureKey"], true);

    // The token minted for renew-signature-key serves the first API call.
    assert_eq!(h.minted(ESHOP), 1);
    let r = p.api_get(&h.http, ESHOP).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.minted(ESHOP), 1);

    // ...and survives a restart of the proxy.
    p.stop().await;
    let p = h.start().await;
    assert_eq!(p.api_get(&h.http, ESHOP).await.status, 200);
    assert_eq!(h.minted(ESHOP), 1);
    p.stop().await;

    // No secret reaches the database file in clear.
    let mut raw = Vec::new();
    for name in ["proxy.db", "proxy.db-wal"] {
        raw.extend(std::fs::read(h.path(name)).unwrap_or_default());
    }
    let inst = h.store().await.get(ESHOP).await.unwrap().expect("stored");
    let api_token = inst.access_token.expect("API token stored").token;
    for secret in [&oauth_token, key.expose(), api_token.expose()] {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret is stored in clear"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_code_is_rejected_and_changes_nothing() {
    let h = Deployment::new().await;
    let p = h.start().await;
    let sim = h.install(&p, ESHOP).await;
    assert_eq!(sim["installStatus"], 200, "{sim}");
    let code = sim["code"].as_str().expect("code");
    let store = h.store().await;
    let before = store.get(ESHOP).await.unwrap().expect("stored");

    let r = h
        .http
        .get(&p.public_url(&format!("/install?code={code}")), &[])
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("proxy-install-failed"));
    let r = h
        .http
        .get(&p.public_url("/install?code=never-issued"), &[])
        .await;
    assert_eq!(r.status, 502);

    let after = store.get(ESHOP).await.unwrap().expect("still stored");
    assert_eq!(after.oauth_token.expose(), before.oauth_token.expose());
    assert_eq!(after.installed_at, before.installed_at);
    assert_eq!(
        after.signature_key.map(|k| k.expose().to_owned()),
        before.signature_key.map(|k| k.expose().to_owned())
    );
    assert_eq!(store.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn missing_code_is_a_bad_request() {
    let h = Deployment::new().await;
    let p = h.start().await;
    for path in ["/install", "/install?code=", "/install?other=1"] {
        let r = h.http.get(&p.public_url(path), &[]).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
    }
    assert!(h.store().await.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinstall_with_a_new_code_replaces_the_oauth_token() {
    let h = Deployment::new().await;
    let p = h.start().await;
    let first = h.install(&p, ESHOP).await;
    assert_eq!(p.api_get(&h.http, ESHOP).await.status, 200);
    let second = h.install(&p, ESHOP).await;
    assert_eq!(second["installStatus"], 200, "{second}");
    assert_ne!(first["oauthToken"], second["oauthToken"]);
    let inst = h.store().await.get(ESHOP).await.unwrap().expect("stored");
    assert_eq!(
        inst.oauth_token.expose(),
        second["oauthToken"].as_str().expect("token")
    );
    // The old OAuth token and its API tokens are revoked; the proxy works with the new ones,
    // starting with the token minted for the new signature key.
    assert_eq!(h.minted(ESHOP), 2);
    let r = p.api_get(&h.http, ESHOP).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.minted(ESHOP), 2, "the re-installation's token serves");
}

/// An OAuth server that accepts the connection and answers only after 10 s.
async fn slow_oauth_server() -> String {
    common::stand_in(|_req| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let grant = r#"{"access_token":"late","eshopId":1,"eshopUrl":"https://late/"}"#;
        Response::new(Full::new(Bytes::from(grant)))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_oauth_server_fails_the_install_within_five_seconds() {
    let h = Deployment::new().await;
    let mut cfg = h.config();
    cfg.shoptet.partner_url = slow_oauth_server().await.parse().expect("url");
    let p = h.start_with(cfg).await;
    let started = Instant::now();
    let r = h.http.get(&p.public_url("/install?code=abc"), &[]).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("proxy-install-failed"));
    assert!(h.store().await.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_allowlist_admits_listed_networks_only() {
    let h = Deployment::new().await;
    let nets = |s: &[&str]| {
        s.iter()
            .map(|n| n.parse().expect("cidr"))
            .collect::<Vec<_>>()
    };

    let mut cfg = h.config();
    cfg.public.install_allow = nets(&["127.0.0.0/8"]);
    let p = h.start_with(cfg).await;
    assert_eq!(h.install(&p, 1).await["installStatus"], 200);
    p.stop().await;

    let mut cfg = h.config();
    cfg.public.install_allow = nets(&["10.0.0.0/8"]);
    cfg.public.webhook_allow = nets(&["10.0.0.0/8"]);
    let p = h.start_with(cfg).await;
    let sim = h.install(&p, 2).await;
    assert!(
        sim["installError"].is_string() || sim["installStatus"] == 403,
        "{sim}"
    );
    let r = h.http.get(&p.public_url("/install?code=x"), &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code().as_deref(), Some("proxy-forbidden"));
    let r = h
        .http
        .post_json(&p.public_url("/webhooks"), &[], &serde_json::json!({}))
        .await;
    assert_eq!(r.status, 403);
    // X-Forwarded-For from an untrusted peer does not count.
    let xff = [("x-forwarded-for", "10.1.2.3")];
    let r = h.http.get(&p.public_url("/install?code=x"), &xff).await;
    assert_eq!(r.status, 403);
    p.stop().await;
    assert!(h.store().await.get(2).await.unwrap().is_none());

    // From a trusted proxy it does: the request passes the allowlist (and fails on the code).
    let mut cfg = h.config();
    cfg.public.install_allow = nets(&["10.0.0.0/8"]);
    cfg.public.trusted_proxies = nets(&["127.0.0.0/8"]);
    let p = h.start_with(cfg).await;
    let r = h.http.get(&p.public_url("/install?code=x"), &xff).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let r = h.http.get(&p.public_url("/install?code=x"), &[]).await;
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_works_over_tls() {
    let h = Deployment::new().await;
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    std::fs::write(h.path("tls.crt"), ck.cert.pem()).expect("write cert");
    std::fs::write(h.path("tls.key"), ck.key_pair.serialize_pem()).expect("write key");
    let mut cfg = h.config();
    cfg.public.tls_cert_file = Some(h.path("tls.crt"));
    cfg.public.tls_key_file = Some(h.path("tls.key"));
    let p = h.start_with(cfg).await;
    let addr = p.running.public_addr.expect("public listener");

    let inst = h.sim.create_eshop(ESHOP);
    let https = TestClient::with_ca_pem(&ck.cert.pem());
    let r = https
        .get(&format!("https://{addr}/install?code={}", inst.code), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let stored = h.store().await.get(ESHOP).await.unwrap().expect("stored");
    assert_eq!(stored.oauth_token.expose(), inst.oauth_token);
    // Plain HTTP on the TLS port gets no answer.
    assert!(h
        .http
        .try_request(
            http::Method::GET,
            &format!("http://{addr}/install?code=x"),
            &[],
            Bytes::new()
        )
        .await
        .map_or(true, |r| r.status != 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_api_does_not_delay_the_install_answer() {
    let h = Deployment::new().await;
    let p = h.start().await;
    // renew-signature-key answers after 6 s; the installation answers within Shoptet's 5 s anyway.
    h.sim.set_config(|c| c.latency = Duration::from_secs(6));
    let inst = h.sim.create_eshop(ESHOP);
    let started = Instant::now();
    let r = h
        .http
        .get(&p.public_url(&format!("/install?code={}", inst.code)), &[])
        .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert_eq!(r.status, 200, "{}", r.text());
    let stored = h.store().await.get(ESHOP).await.unwrap().expect("stored");
    assert_eq!(stored.oauth_token.expose(), inst.oauth_token);
    assert_eq!(stored.status.as_str(), "active");
}
