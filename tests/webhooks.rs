//! Webhooks through the public listener (SPEC B5): signature check, delivery to the addon from the
//! durable outbox with retries and across restarts, and the `addon:*` system events.

mod common;

use common::binary::Served;
use common::deploy::{Deployment, Proxy};
use serde_json::{json, Value};
use shoptet_proxy::shoptet::signature;

const ESHOP: u64 = 315185;

/// Installs `ESHOP` through the proxy's public listener and forgets the "installed" event.
async fn installed(h: &mut Deployment, p: &Proxy) {
    assert_eq!(h.install(p, ESHOP).await["installStatus"], 200);
    h.events.next().await;
}

/// The signature key the proxy obtained at installation.
async fn signature_key(h: &Deployment) -> String {
    let inst = h.installation(ESHOP).await;
    inst.signature_key.expect("key stored").expose().to_owned()
}

/// `ESHOP`'s installation status in the store.
async fn stored_status(h: &Deployment) -> String {
    let inst = h.store().await.get(ESHOP).await.unwrap().expect("kept");
    inst.status.as_str().to_owned()
}

/// Shoptet's own webhooks (`addon:*`) go to `p`'s public listener.
fn route_webhooks(h: &Deployment, p: &Proxy) {
    h.sim
        .set_config(|c| c.addon_webhook_url = Some(p.public_url("/webhooks")));
}

/// The simulator's `action` (suspend, approve, uninstall) on `ESHOP`, and its `addon:<action>`
/// webhook arriving at the addon.
async fn shoptet_does(h: &mut Deployment, action: &str) {
    let r = h
        .sim_post(&format!("/sim/eshops/{ESHOP}/{action}"), Value::Null)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        received_json(h).await["event"],
        format!("addon:{action}").as_str()
    );
}

fn event_body(eshop_id: u64, event: &str, instance: &str) -> String {
    json!({"eshopId": eshop_id, "event": event,
           "eventCreated": "2019-09-23T22:01:36+0200", "eventInstance": instance})
    .to_string()
}

async fn post_webhook(h: &Deployment, p: &Proxy, body: &str, sig: Option<&str>) -> u16 {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(s) = sig {
        headers.push(("shoptet-webhook-signature", s));
    }
    h.http
        .request(
            http::Method::POST,
            &p.public_url("/webhooks"),
            &headers,
            body.to_owned(),
        )
        .await
        .status
        .as_u16()
}

async fn received_json(h: &mut Deployment) -> Value {
    serde_json::from_slice(&h.hooks.next().await.body).expect("delivered body is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhook_from_shoptet_reaches_the_addon_as_sent() {
    let mut h = Deployment::new().await;
    let p = h.start().await;
    installed(&mut h, &p).await;
    let r = h
        .http
        .post_json(
            &p.api_url("/api/webhooks"),
            &[("x-shoptet-eshop-id", &ESHOP.to_string())],
            &json!({"data": [{"event": "order:create", "url": p.public_url("/webhooks")}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = h
        .sim_post(
            &format!("/sim/eshops/{ESHOP}/events"),
            json!({"event": "order:create", "eventInstance": "2019000057"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());

    let got = h.hooks.next().await;
    let sent = h
        .http
        .get(
            &format!(
                "{}/sim/webhook-deliveries?eshopId={ESHOP}",
                h.sim.base_url()
            ),
            &[],
        )
        .await
        .json();
    let sent = sent["deliveries"][0]["body"].as_str().expect("sim body");
    assert_eq!(got.body, sent.as_bytes());
    assert_eq!(got.method, http::Method::POST);
    assert_eq!(
        got.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_forged_and_unknown_webhooks_are_rejected() {
    let mut h = Deployment::new().await;
    let p = h.start().await;
    installed(&mut h, &p).await;
    let key = signature_key(&h).await;

    let body = event_body(ESHOP, "order:create", "rejected");
    assert_eq!(post_webhook(&h, &p, &body, None).await, 401);
    let wrong = signature::sign(b"not-the-key", body.as_bytes());
    assert_eq!(post_webhook(&h, &p, &body, Some(&wrong)).await, 401);
    assert_eq!(post_webhook(&h, &p, &body, Some("zz")).await, 401);
    let unknown = event_body(999, "order:create", "rejected");
    let sig = signature::sign(key.as_bytes(), unknown.as_bytes());
    assert_eq!(post_webhook(&h, &p, &unknown, Some(&sig)).await, 401);

    // The first delivery the addon sees is the first valid webhook: none of the above was queued.
    let body = event_body(ESHOP, "order:create", "accepted");
    let sig = signature::sign(key.as_bytes(), body.as_bytes());
    assert_eq!(post_webhook(&h, &p, &body, Some(&sig)).await, 200);
    assert_eq!(received_json(&mut h).await["eventInstance"], "accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_retried_until_the_addon_takes_them() {
    let mut h = Deployment::new().await;
    let p = h.start().await;
    installed(&mut h, &p).await;
    let key = signature_key(&h).await;
    h.hooks.respond_with(&[500, 503, 500]);
    let body = event_body(ESHOP, "order:create", "retried");
    let sig = signature::sign(key.as_bytes(), body.as_bytes());
    assert_eq!(post_webhook(&h, &p, &body, Some(&sig)).await, 200);
    for _ in 0..4 {
        assert_eq!(h.hooks.next().await.body, body.as_bytes());
    }
    // After the fourth (accepted) attempt the item leaves the outbox and is not sent again.
    let body2 = event_body(ESHOP, "order:create", "next");
    let sig2 = signature::sign(key.as_bytes(), body2.as_bytes());
    assert_eq!(post_webhook(&h, &p, &body2, Some(&sig2)).await, 200);
    assert_eq!(received_json(&mut h).await["eventInstance"], "next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_webhooks_survive_a_proxy_restart() {
    let mut h = Deployment::new().await;
    let p = h.start().await;
    installed(&mut h, &p).await;
    let key = signature_key(&h).await;
    h.hooks.respond_with(&[500]);
    let body = event_body(ESHOP, "order:create", "survivor");
    let sig = signature::sign(key.as_bytes(), body.as_bytes());
    assert_eq!(post_webhook(&h, &p, &body, Some(&sig)).await, 200);
    assert_eq!(h.hooks.next().await.body, body.as_bytes());
    p.stop().await;
    assert_eq!(h.store().await.outbox_depth().await.unwrap(), 1);

    let p = h.start().await;
    assert_eq!(h.hooks.next().await.body, body.as_bytes());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_refuses_calls_without_asking_shoptet_and_approve_restores() {
    let mut h = Deployment::new().await;
    let p = h.start().await;
    route_webhooks(&h, &p);
    installed(&mut h, &p).await;
    assert_eq!(p.api_get(&h.http, ESHOP).await.status, 200);

    shoptet_does(&mut h, "suspend").await;
    let calls = h.sim.stats().calls;
    let r = p.api_get(&h.http, ESHOP).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("proxy-eshop-suspended"));
    assert_eq!(stored_status(&h).await, "suspended");

    // A restarted proxy knows it from the store.
    p.stop().await;
    let p = h.start().await;
    let r = p.api_get(&h.http, ESHOP).await;
    assert_eq!(r.error_code().as_deref(), Some("proxy-eshop-suspended"));
    let after = h.sim.stats().calls;
    assert_eq!(after.get_access_token, calls.get_access_token);
    assert_eq!(after.api, calls.api);

    route_webhooks(&h, &p);
    shoptet_does(&mut h, "approve").await;
    let r = p.api_get(&h.http, ESHOP).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_takes_effect_once_shoptet_confirms_it() {
    let mut h = Deployment::new().await;
    let p = h.start().await;
    route_webhooks(&h, &p);
    installed(&mut h, &p).await;
    assert_eq!(p.api_get(&h.http, ESHOP).await.status, 200);

    shoptet_does(&mut h, "uninstall").await;
    assert_eq!(stored_status(&h).await, "uninstalled");
    let r = p.api_get(&h.http, ESHOP).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("proxy-eshop-not-installed"));

    // A late `addon:approve` does not revive it.
    let key = signature_key(&h).await;
    let body = event_body(ESHOP, "addon:approve", &ESHOP.to_string());
    let sig = signature::sign(key.as_bytes(), body.as_bytes());
    assert_eq!(post_webhook(&h, &p, &body, Some(&sig)).await, 200);
    assert_eq!(received_json(&mut h).await["event"], "addon:approve");
    assert_eq!(stored_status(&h).await, "uninstalled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_uninstall_leaves_a_live_installation_active() {
    let mut h = Deployment::new().await;
    let p = h.start().await;
    installed(&mut h, &p).await;
    let key = signature_key(&h).await;
    assert_eq!(p.api_get(&h.http, ESHOP).await.status, 200);

    for event in ["addon:uninstall", "addon:terminate"] {
        let body = event_body(ESHOP, event, &ESHOP.to_string());
        let sig = signature::sign(key.as_bytes(), body.as_bytes());
        assert_eq!(post_webhook(&h, &p, &body, Some(&sig)).await, 200);
        assert_eq!(received_json(&mut h).await["event"], event);
        assert_eq!(stored_status(&h).await, "active");
    }
    // The checks' tokens are kept as the current one: the next call mints nothing.
    let minted = h.minted(ESHOP);
    let r = p.api_get(&h.http, ESHOP).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.minted(ESHOP), minted);
}

/// `serve` on the harness's config; `addon_down`: webhooks go to a loopback port where nothing
/// listens.
fn start_serve(h: &Deployment, addon_down: bool) -> Served {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}/hooks", dead.local_addr().expect("addr"));
    let env: &[(&str, &str)] = if addon_down {
        &[("SHOPTET_PROXY_ADDON__WEBHOOKS_URL", &dead)]
    } else {
        &[]
    };
    h.serve("info", env)
}

/// SIGTERM, then the exit status.
fn sigterm(serve: Served) -> std::process::ExitStatus {
    serve.signal("TERM");
    serve.finish(std::time::Duration::from_secs(30)).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_proxy_still_delivers_and_restarts_mint_no_tokens() {
    let mut h = Deployment::new().await;
    let serve = start_serve(&h, true);
    let r = h
        .sim_post(
            "/sim/eshops",
            json!({"eshopId": ESHOP, "installUrl": format!("http://{}/install", serve.public)}),
        )
        .await;
    assert_eq!(r.json()["installStatus"], 200, "{}", r.text());
    h.events.next().await;
    let key = signature_key(&h).await;

    // The addon is down: the webhook waits in the outbox when the proxy is killed, most likely
    // in the middle of its first (failing) attempt, which is the worst case: the item stays
    // claimed for OUTBOX_LEASE (6 s) after the kill.
    let body = event_body(ESHOP, "order:create", "kill-9");
    let sig = signature::sign(key.as_bytes(), body.as_bytes());
    let r = h
        .http
        .request(
            http::Method::POST,
            &format!("http://{}/webhooks", serve.public),
            &[("shoptet-webhook-signature", &sig)],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 200);
    serve.signal("KILL");
    serve.finish(std::time::Duration::from_secs(30));

    // The restarted proxy delivers it, exactly as sent, once the claim has run out.
    let serve = start_serve(&h, false);
    assert_eq!(h.hooks.next().await.body, body.as_bytes());
    let api = format!("http://{}/api/eshop", serve.proxy);
    let id = ESHOP.to_string();
    let r = h.http.get(&api, &[("x-shoptet-eshop-id", &id)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        h.minted(ESHOP),
        1,
        "the installation's token survived kill -9"
    );
    assert!(sigterm(serve).success(), "SIGTERM exits 0");

    let serve = start_serve(&h, false);
    let api = format!("http://{}/api/eshop", serve.proxy);
    let r = h.http.get(&api, &[("x-shoptet-eshop-id", &id)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.minted(ESHOP), 1, "a restart after SIGTERM mints nothing");
    assert!(sigterm(serve).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_addon_renews_through_the_proxy_is_adopted_before_the_answer() {
    let mut h = Deployment::new().await;
    let p = h.start().await;
    installed(&mut h, &p).await;
    let old = signature_key(&h).await;
    let r = h
        .http
        .post_json(
            &p.api_url("/api/webhooks"),
            &[("x-shoptet-eshop-id", &ESHOP.to_string())],
            &json!({"data": [{"event": "order:create", "url": p.public_url("/webhooks")}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // The official SDK's generateWebhookSignatureKey(), through the proxy.
    let r = h
        .http
        .request(
            http::Method::POST,
            &p.api_url(&format!("/eshops/{ESHOP}/api/webhooks/renew-signature-key")),
            &[("content-type", "application/json")],
            String::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let renewed = r.json()["data"]["signatureKey"]
        .as_str()
        .expect("the addon gets Shoptet's answer")
        .to_owned();
    assert_ne!(renewed, old);
    // Adopted before the answer left: the store holds it the moment the addon has it.
    assert_eq!(signature_key(&h).await, renewed);

    // Shoptet signs its next webhook with the new key: delivered.
    let r = h
        .sim_post(
            &format!("/sim/eshops/{ESHOP}/events"),
            json!({"event": "order:create", "eventInstance": "after-renewal"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        received_json(&mut h).await["eventInstance"],
        "after-renewal"
    );

    // One signed with the key Shoptet invalidated: rejected, not delivered.
    let body = event_body(ESHOP, "order:create", "old-key");
    let sig = signature::sign(old.as_bytes(), body.as_bytes());
    assert_eq!(post_webhook(&h, &p, &body, Some(&sig)).await, 401);
    let sig = signature::sign(renewed.as_bytes(), body.as_bytes());
    assert_eq!(post_webhook(&h, &p, &body, Some(&sig)).await, 200);
    assert_eq!(received_json(&mut h).await["eventInstance"], "old-key");
}

/// The `Shoptet-Webhook-Signature` header of a delivery, if any.
fn delivery_signature(got: &shoptet_proxy::sim::testing::Received) -> Option<String> {
    got.headers
        .get("shoptet-webhook-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_with_the_addons_key_over_the_bytes_shoptet_signed() {
    let mut h = Deployment::new().await;
    let key_file = h.path("signing-key");
    std::fs::write(&key_file, "addon signing key 42\n").expect("write signing key");
    let env = [(
        "SHOPTET_PROXY_ADDON__SIGNING_KEY_FILE".to_owned(),
        key_file.display().to_string(),
    )];
    let cfg = shoptet_proxy::config::Config::load_from(Some(&h.write_config()), &env)
        .expect("config with a signing key loads");
    let p = h.start_with(cfg).await;
    // As the addon reads it: the file without its trailing newline.
    let addon_key = std::fs::read_to_string(&key_file).expect("read key");
    let addon_key = addon_key.trim_end_matches('\n').as_bytes();

    assert_eq!(h.install(&p, ESHOP).await["installStatus"], 200);
    let installed = h.events.next().await;
    let sig = delivery_signature(&installed).expect("the installed event is signed");
    assert_eq!(sig, signature::sign(addon_key, &installed.body));
    assert!(signature::verify(addon_key, &installed.body, &sig));
    assert!(sig
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));

    let r = h
        .http
        .post_json(
            &p.api_url("/api/webhooks"),
            &[("x-shoptet-eshop-id", &ESHOP.to_string())],
            &json!({"data": [{"event": "order:create", "url": p.public_url("/webhooks")}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = h
        .sim_post(
            &format!("/sim/eshops/{ESHOP}/events"),
            json!({"event": "order:create", "eventInstance": "signed-for-addon"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let got = h.hooks.next().await;
    let sent = h
        .http
        .get(
            &format!(
                "{}/sim/webhook-deliveries?eshopId={ESHOP}",
                h.sim.base_url()
            ),
            &[],
        )
        .await
        .json();
    let delivery = &sent["deliveries"][0];
    let shoptet_sig = delivery["attempts"][0]["signature"]
        .as_str()
        .expect("the simulator signed it");
    assert_eq!(
        got.body,
        delivery["body"].as_str().expect("body").as_bytes()
    );
    let sig = delivery_signature(&got).expect("the webhook is signed");
    assert!(signature::verify(addon_key, &got.body, &sig));
    assert_ne!(sig, shoptet_sig, "Shoptet's own signature is not passed on");
    // Keyed with the addon's key, not the e-shop's that Shoptet used.
    let shoptet_key = signature_key(&h).await;
    assert!(!signature::verify(shoptet_key.as_bytes(), &got.body, &sig));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_signing_key_deliveries_carry_no_signature() {
    let mut h = Deployment::new().await;
    let p = h.start().await;
    assert_eq!(h.install(&p, ESHOP).await["installStatus"], 200);
    let installed = h.events.next().await;
    assert_eq!(delivery_signature(&installed), None);
    let key = signature_key(&h).await;
    let body = event_body(ESHOP, "order:create", "unsigned-for-addon");
    let sig = signature::sign(key.as_bytes(), body.as_bytes());
    assert_eq!(post_webhook(&h, &p, &body, Some(&sig)).await, 200);
    let got = h.hooks.next().await;
    assert_eq!(got.body, body.as_bytes());
    assert_eq!(
        delivery_signature(&got),
        None,
        "Shoptet's signature is not passed on"
    );
}
