//! The admin API (SPEC B7) and the `eshops`/`store` commands of the binary, on one store.

mod common;

use common::deploy::{Deployment, Proxy, ADMIN_TOKEN};
use serde_json::{json, Value};
use shoptet_proxy::sim::testing::TestResponse;
use shoptet_proxy::store::Keyring;
use std::path::Path;
use std::process::Output;

const ESHOP: u64 = 222651;
const BEARER: &str = "Bearer admin-token-for-tests";

async fn admin(
    h: &Deployment,
    p: &Proxy,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &Value,
) -> TestResponse {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    h.http
        .request(
            method.parse().expect("method"),
            &p.admin_url(path),
            &headers,
            body,
        )
        .await
}

/// Installs e-shop 7 through Shoptet and checks that its "installed" event is the first the addon
/// sees (imports announce nothing).
async fn assert_first_event_is_a_real_installation(h: &mut Deployment, p: &Proxy) {
    h.install(p, 7).await;
    let event: Value = serde_json::from_slice(&h.events.next().await.body).unwrap();
    assert_eq!(event["eshopId"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eshop_list_has_exactly_the_documented_fields_and_no_secret() {
    let h = Deployment::new().await;
    let p = h.start().await;
    let sim = h.install(&p, ESHOP).await;
    assert_eq!(sim["installStatus"], 200);
    let r = h.http.get(&p.admin_url("/admin/eshops"), &[]).await;
    assert_eq!(r.status, 200);
    let list = r.json();
    let eshops = list["eshops"].as_array().expect("eshops array");
    assert_eq!(list.as_object().expect("object").len(), 1);
    assert_eq!(eshops.len(), 1);
    let e = eshops[0].as_object().expect("object");
    let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "contactEmail",
            "eshopId",
            "eshopUrl",
            "installedAt",
            "status",
            "tokenExpiresAt"
        ]
    );
    assert_eq!(e["eshopId"], ESHOP);
    assert_eq!(e["status"], "active");
    assert_eq!(e["eshopUrl"], format!("https://{ESHOP}.myshoptet.com/"));
    for field in ["installedAt", "tokenExpiresAt"] {
        let t = e[field].as_str().expect("timestamp");
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| panic!("{field} {t} is not RFC 3339"));
    }
    let store = h.store().await;
    let inst = store.get(ESHOP).await.unwrap().expect("stored");
    let text = r.text();
    assert!(!text.contains(inst.oauth_token.expose()));
    assert!(!text.contains(inst.signature_key.expect("key").expose()));
    assert!(!text.contains(inst.access_token.expect("token").token.expose()));

    // An installation without an API token yet: its expiry is null.
    store
        .upsert_installation(
            &shoptet_proxy::store::NewInstallation {
                eshop_id: 5,
                eshop_url: None,
                contact_email: None,
                oauth_token: shoptet_proxy::secret::Secret::new("not-used".to_owned()),
            },
            None,
        )
        .await
        .unwrap();
    let list = h.http.get(&p.admin_url("/admin/eshops"), &[]).await.json();
    let five = list["eshops"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["eshopId"] == 5))
        .expect("listed");
    assert!(five["tokenExpiresAt"].is_null(), "{five}");
    assert!(five["installedAt"].is_string(), "{five}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_replaces_the_oauth_token_without_an_installed_event() {
    let mut h = Deployment::new().await;
    let p = h.start().await;
    let first = h.sim.create_eshop(ESHOP);
    let body = json!({"access_token": first.oauth_token, "expires_in": null, "token_type": "Bearer",
        "scope": "api", "eshopId": ESHOP, "eshopUrl": "https://shop.example/",
        "contactEmail": "owner@shop.example", "trial": false});
    let r = admin(
        &h,
        &p,
        "PUT",
        &format!("/admin/eshops/{ESHOP}"),
        Some(BEARER),
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let store = h.store().await;
    let inst = store.get(ESHOP).await.unwrap().expect("imported");
    assert_eq!(inst.oauth_token.expose(), first.oauth_token);
    assert_eq!(inst.eshop_url.as_deref(), Some("https://shop.example/"));
    assert!(inst.signature_key.is_some());
    assert_eq!(p.api_get(&h.http, ESHOP).await.status, 200);
    assert_eq!(h.minted(ESHOP), 1);

    // The e-shop re-installs elsewhere; importing the new token replaces the old one and makes a
    // suspended installation active again.
    store
        .set_status(ESHOP, shoptet_proxy::store::Status::Suspended)
        .await
        .unwrap();
    let second = h.sim.create_eshop(ESHOP);
    let r = admin(
        &h,
        &p,
        "PUT",
        &format!("/admin/eshops/{ESHOP}"),
        Some(BEARER),
        &json!({"access_token": second.oauth_token}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let inst = store.get(ESHOP).await.unwrap().expect("imported");
    assert_eq!(inst.oauth_token.expose(), second.oauth_token);
    assert_eq!(inst.status.as_str(), "active");
    assert_eq!(inst.eshop_url.as_deref(), Some("https://shop.example/"));
    assert_eq!(p.api_get(&h.http, ESHOP).await.status, 200);

    // A mismatched id changes nothing.
    let r = admin(
        &h,
        &p,
        "PUT",
        &format!("/admin/eshops/{ESHOP}"),
        Some(BEARER),
        &json!({"access_token": "other", "eshopId": 1}),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = admin(
        &h,
        &p,
        "PUT",
        &format!("/admin/eshops/{ESHOP}"),
        Some(BEARER),
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 400);
    let inst = store.get(ESHOP).await.unwrap().expect("imported");
    assert_eq!(inst.oauth_token.expose(), second.oauth_token);

    // No "installed" event for imports.
    assert_first_event_is_a_real_installation(&mut h, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_mints_a_new_token_and_delete_removes_the_installation() {
    let h = Deployment::new().await;
    let p = h.start().await;
    h.install(&p, ESHOP).await;
    assert_eq!(h.minted(ESHOP), 1);
    let path = format!("/admin/eshops/{ESHOP}/refresh");
    let r = admin(&h, &p, "POST", &path, Some(BEARER), &Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["tokenExpiresAt"].is_string(), "{}", r.text());
    assert_eq!(h.minted(ESHOP), 2);
    assert_eq!(p.api_get(&h.http, ESHOP).await.status, 200);
    assert_eq!(h.minted(ESHOP), 2);

    // Cold (a restarted proxy, no token stored): one mint, not two.
    let store = h.store().await;
    let token = h.sim.create_eshop(8).oauth_token;
    common::import(&store, 8, &token).await;
    let r = admin(
        &h,
        &p,
        "POST",
        "/admin/eshops/8/refresh",
        Some(BEARER),
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.minted(8), 1);

    let r = admin(
        &h,
        &p,
        "DELETE",
        &format!("/admin/eshops/{ESHOP}"),
        Some(BEARER),
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(store.get(ESHOP).await.unwrap().is_none());
    let r = p.api_get(&h.http, ESHOP).await;
    assert_eq!(r.error_code().as_deref(), Some("proxy-eshop-not-installed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_need_the_admin_token() {
    let h = Deployment::new().await;
    let p = h.start().await;
    h.install(&p, ESHOP).await;
    let import = json!({"access_token": "x"});
    let put = format!("/admin/eshops/{ESHOP}");
    let refresh = format!("/admin/eshops/{ESHOP}/refresh");
    let writes = [
        ("PUT", &put, &import),
        ("DELETE", &put, &Value::Null),
        ("POST", &refresh, &Value::Null),
    ];
    for (method, path, body) in writes {
        for auth in [None, Some("Bearer wrong"), Some(ADMIN_TOKEN)] {
            let r = admin(&h, &p, method, path, auth, body).await;
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}");
        }
    }
    assert_eq!(h.minted(ESHOP), 1);
    // Credentials are checked before anything else, even a malformed id.
    for (method, path) in [
        ("PUT", "/admin/eshops/abc"),
        ("DELETE", "/admin/eshops/abc"),
    ] {
        let r = admin(&h, &p, method, path, None, &import).await;
        assert_eq!(r.status, 401, "{method} {path}");
        let r = admin(&h, &p, method, path, Some(BEARER), &import).await;
        assert_eq!(r.status, 400, "{method} {path} with the admin token");
    }
    p.stop().await;

    // No admin token configured: writes are off, reads work.
    let mut cfg = h.config();
    cfg.admin.token = None;
    let p = h.start_with(cfg).await;
    for (method, path, body) in writes {
        let r = admin(&h, &p, method, path, Some(BEARER), body).await;
        assert_eq!(r.status, 404, "{method} {path}");
    }
    assert_eq!(
        h.http.get(&p.admin_url("/admin/eshops"), &[]).await.status,
        200
    );
    let inst = h.installation(ESHOP).await;
    assert_ne!(inst.oauth_token.expose(), "x");
}

/// Runs the binary with `config` in `dir` and a clean environment; panics unless it succeeds.
fn run_with(config: &Path, dir: &Path, args: &[&str]) -> Output {
    let mut cmd = common::binary::command(dir);
    cmd.arg("--config").arg(config).args(args);
    let out = cmd.output().expect("run shoptet-proxy");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run(h: &Deployment, args: &[&str]) -> Output {
    run_with(&h.write_config(), h.dir.path(), args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eshops_commands_work_on_the_store() {
    let h = Deployment::new().await;
    let p = h.start().await;
    h.install(&p, ESHOP).await;
    let token = h.sim.create_eshop(9).oauth_token;
    std::fs::write(h.path("oauth-token"), format!("{token}\n")).unwrap();
    let token_file = h.path("oauth-token").display().to_string();
    run(
        &h,
        &[
            "eshops",
            "import",
            "9",
            "--oauth-token-file",
            &token_file,
            "--eshop-url",
            "https://nine.example/",
            "--contact-email",
            "nine@example.com",
        ],
    );
    let inst = h.store().await.get(9).await.unwrap().expect("imported");
    assert_eq!(inst.oauth_token.expose(), token);
    assert_eq!(p.api_get(&h.http, 9).await.status, 200);

    let out = run(&h, &["eshops", "list", "--json"]);
    let cli: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let api = h.http.get(&p.admin_url("/admin/eshops"), &[]).await.json();
    assert_eq!(cli, api);
    assert_eq!(cli["eshops"].as_array().map(Vec::len), Some(2));
    let table = String::from_utf8_lossy(&run(&h, &["eshops", "list"]).stdout).into_owned();
    assert!(table.contains("nine@example.com"), "{table}");
    assert!(!table.contains(&token));

    run(&h, &["eshops", "remove", "9"]);
    assert!(h.store().await.get(9).await.unwrap().is_none());
    // A running proxy serves the cached token until it expires; a started one refuses.
    p.stop().await;
    let p = h.start().await;
    let r = p.api_get(&h.http, 9).await;
    assert_eq!(r.error_code().as_deref(), Some("proxy-eshop-not-installed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_import_obtains_a_signature_key_like_the_admin_import() {
    let mut h = Deployment::new().await;
    let p = h.start().await;
    let token = h.sim.create_eshop(9).oauth_token;
    std::fs::write(h.path("oauth-token"), &token).unwrap();
    let token_file = h.path("oauth-token").display().to_string();
    let out = run(
        &h,
        &["eshops", "import", "9", "--oauth-token-file", &token_file],
    );
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(printed.contains("signature key: renewed"), "{printed}");
    assert!(!printed.contains(&token), "{printed}");

    let store = h.store().await;
    let inst = store.get(9).await.unwrap().expect("imported");
    assert!(
        inst.signature_key.is_some(),
        "a fresh signature key is stored"
    );
    let sim_view = h
        .http
        .get(&format!("{}/sim/eshops/9", h.sim.base_url()), &[])
        .await
        .json();
    assert_eq!(sim_view["hasSignatureKey"], true, "{sim_view}");
    // The token minted for the key is the e-shop's current token: the first call mints nothing.
    assert_eq!(h.minted(9), 1);
    assert_eq!(p.api_get(&h.http, 9).await.status, 200);
    assert_eq!(h.minted(9), 1);
    assert_eq!(store.outbox_depth().await.unwrap(), 0, "no installed event");

    // Shoptet's next signed webhook verifies with that key and reaches the addon.
    h.sim
        .set_config(|c| c.addon_webhook_url = Some(p.public_url("/webhooks")));
    let r = h.sim_post("/sim/eshops/9/approve", Value::Null).await;
    assert!(r.status.is_success(), "{}", r.text());
    let hook: Value = serde_json::from_slice(&h.hooks.next().await.body).unwrap();
    assert_eq!(hook["event"], "addon:approve");
    assert_eq!(hook["eshopId"], 9);

    assert_first_event_is_a_real_installation(&mut h, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_rekey_lets_the_new_key_alone_read_everything() {
    let h = Deployment::new().await;
    let p = h.start().await;
    h.install(&p, ESHOP).await;
    p.stop().await;
    let before = h.store().await.get(ESHOP).await.unwrap().expect("stored");

    std::fs::rename(h.path("store.key"), h.path("old.key")).unwrap();
    let new_key = shoptet_proxy::store::generate_key_base64();
    std::fs::write(h.path("store.key"), &new_key).unwrap();
    let mut toml = h.config_toml();
    toml.push_str(&format!(
        "previous_key_files = [\"{}\"]\n",
        h.path("old.key").display()
    ));
    std::fs::write(h.path("rotated.toml"), toml).unwrap();
    run_with(&h.path("rotated.toml"), h.dir.path(), &["store", "rekey"]);

    let only_new = Keyring::load(&h.path("store.key"), &[]).unwrap();
    let store = shoptet_proxy::store::Store::open(&h.store_url, only_new)
        .await
        .unwrap();
    let after = store
        .get(ESHOP)
        .await
        .unwrap()
        .expect("readable under the new key");
    assert_eq!(after.oauth_token.expose(), before.oauth_token.expose());
    assert_eq!(
        after.signature_key.map(|k| k.expose().to_owned()),
        before.signature_key.map(|k| k.expose().to_owned())
    );
    assert!(after.access_token.is_some());
}
