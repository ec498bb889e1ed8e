//! Webhooks through the public listener (SPEC B5): signature check, delivery to the addon from the
//! durable outbox with retries and across restarts, and the `addon:*` system events.

mod install_common;

use install_common::{Harness, Proxy};
use serde_json::{json, Value};
use shoptet_proxy::signature;

const ESHOP: u64 = 315185;

/// Installs `ESHOP` through the proxy's public listener and forgets the "installed" event.
async fn installed(h: &mut Harness, p: &Proxy) {
    assert_eq!(h.install(p, ESHOP).await["installStatus"], 200);
    h.events.next().await;
}

/// The signature key the proxy obtained at installation.
async fn signature_key(h: &Harness) -> String {
    let inst = h
        .store()
        .await
        .get(ESHOP)
        .await
        .unwrap()
        .expect("installed");
    inst.signature_key.expect("key stored").expose().to_owned()
}

fn event_body(eshop_id: u64, event: &str, instance: &str) -> String {
    json!({"eshopId": eshop_id, "event": event,
           "eventCreated": "2019-09-23T22:01:36+0200", "eventInstance": instance})
    .to_string()
}

async fn post_webhook(h: &Harness, p: &Proxy, body: &str, sig: Option<&str>) -> u16 {
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

async fn received_json(h: &mut Harness) -> Value {
    serde_json::from_slice(&h.hooks.next().await.body).expect("delivered body is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhook_from_shoptet_reaches_the_addon_as_sent() {
    let mut h = Harness::new().await;
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
    let mut h = Harness::new().await;
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
    let mut h = Harness::new().await;
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
    let mut h = Harness::new().await;
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
    let mut h = Harness::new().await;
    let p = h.start().await;
    h.sim
        .set_config(|c| c.addon_webhook_url = Some(p.public_url("/webhooks")));
    installed(&mut h, &p).await;
    assert_eq!(p.api_get(&h.http, ESHOP).await.status, 200);

    let r = h
        .sim_post(&format!("/sim/eshops/{ESHOP}/suspend"), Value::Null)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(received_json(&mut h).await["event"], "addon:suspend");
    let calls = h.sim.stats().calls;
    let r = p.api_get(&h.http, ESHOP).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("proxy-eshop-suspended"));
    let status = h
        .store()
        .await
        .get(ESHOP)
        .await
        .unwrap()
        .expect("stored")
        .status;
    assert_eq!(status.as_str(), "suspended");

    // A restarted proxy knows it from the store.
    p.stop().await;
    let p = h.start().await;
    let r = p.api_get(&h.http, ESHOP).await;
    assert_eq!(r.error_code().as_deref(), Some("proxy-eshop-suspended"));
    let after = h.sim.stats().calls;
    assert_eq!(after.get_access_token, calls.get_access_token);
    assert_eq!(after.api, calls.api);

    h.sim
        .set_config(|c| c.addon_webhook_url = Some(p.public_url("/webhooks")));
    let r = h
        .sim_post(&format!("/sim/eshops/{ESHOP}/approve"), Value::Null)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(received_json(&mut h).await["event"], "addon:approve");
    let r = p.api_get(&h.http, ESHOP).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_takes_effect_once_shoptet_confirms_it() {
    let mut h = Harness::new().await;
    let p = h.start().await;
    h.sim
        .set_config(|c| c.addon_webhook_url = Some(p.public_url("/webhooks")));
    installed(&mut h, &p).await;
    assert_eq!(p.api_get(&h.http, ESHOP).await.status, 200);

    let r = h
        .sim_post(&format!("/sim/eshops/{ESHOP}/uninstall"), Value::Null)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(received_json(&mut h).await["event"], "addon:uninstall");
    let status = h
        .store()
        .await
        .get(ESHOP)
        .await
        .unwrap()
        .expect("kept")
        .status;
    assert_eq!(status.as_str(), "uninstalled");
    let r = p.api_get(&h.http, ESHOP).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("proxy-eshop-not-installed"));

    // A late `addon:approve` does not revive it.
    let key = signature_key(&h).await;
    let body = event_body(ESHOP, "addon:approve", &ESHOP.to_string());
    let sig = signature::sign(key.as_bytes(), body.as_bytes());
    assert_eq!(post_webhook(&h, &p, &body, Some(&sig)).await, 200);
    assert_eq!(received_json(&mut h).await["event"], "addon:approve");
    let status = h
        .store()
        .await
        .get(ESHOP)
        .await
        .unwrap()
        .expect("kept")
        .status;
    assert_eq!(status.as_str(), "uninstalled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_uninstall_leaves_a_live_installation_active() {
    let mut h = Harness::new().await;
    let p = h.start().await;
    installed(&mut h, &p).await;
    let key = signature_key(&h).await;
    assert_eq!(p.api_get(&h.http, ESHOP).await.status, 200);

    for event in ["addon:uninstall", "addon:terminate"] {
        let body = event_body(ESHOP, event, &ESHOP.to_string());
        let sig = signature::sign(key.as_bytes(), body.as_bytes());
        assert_eq!(post_webhook(&h, &p, &body, Some(&sig)).await, 200);
        assert_eq!(received_json(&mut h).await["event"], event);
        let status = h
            .store()
            .await
            .get(ESHOP)
            .await
            .unwrap()
            .expect("kept")
            .status;
        assert_eq!(status.as_str(), "active");
    }
    // The checks' tokens are kept as the current one: the next call mints nothing.
    let minted = h.minted(ESHOP);
    let r = p.api_get(&h.http, ESHOP).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.minted(ESHOP), minted);
}

/// A `shoptet-proxy serve` process on the harness's config (JSON logs on stdout).
struct ServeProcess {
    child: std::process::Child,
    public: String,
    proxy: String,
}

impl ServeProcess {
    /// `addon_down`: deliver webhooks to a loopback port where nothing listens.
    fn start(h: &Harness, addon_down: bool) -> ServeProcess {
        use std::io::BufRead;
        let mut toml = h.config_toml();
        if addon_down {
            let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let dead = format!("http://{}/hooks", dead.local_addr().expect("addr"));
            toml = toml.replace(&h.hooks.url("/hooks"), &dead);
        }
        toml.push_str("[log]\nformat = \"json\"\nlevel = \"info\"\n");
        std::fs::write(h.path("serve.toml"), toml).expect("write config");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_shoptet-proxy"));
        cmd.arg("--config")
            .arg(h.path("serve.toml"))
            .arg("serve")
            .current_dir(h.dir.path())
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped());
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("SHOPTET_PROXY_") {
                cmd.env_remove(name.as_ref());
            }
        }
        let mut child = cmd.spawn().expect("spawn serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let listening: Value = loop {
            let line = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("serve logs `listening` within 10 s");
            let v: Value = serde_json::from_str(&line).expect("JSON log line");
            if v["message"] == "listening" {
                break v;
            }
        };
        let public = listening["public_addr"].as_str().expect("public_addr");
        let public = public.trim_start_matches("Some(").trim_end_matches(')');
        ServeProcess {
            child,
            public: format!("http://{public}"),
            proxy: format!("http://{}", listening["proxy_addr"].as_str().expect("addr")),
        }
    }

    fn sigterm(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success());
        self.child.wait().expect("wait for serve")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_proxy_still_delivers_and_restarts_mint_no_tokens() {
    let mut h = Harness::new().await;
    let serve = ServeProcess::start(&h, true);
    let r = h
        .sim_post(
            "/sim/eshops",
            json!({"eshopId": ESHOP, "installUrl": format!("{}/install", serve.public)}),
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
            &format!("{}/webhooks", serve.public),
            &[("shoptet-webhook-signature", &sig)],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 200);
    let mut killed = serve.child;
    killed.kill().expect("SIGKILL");
    killed.wait().expect("reap");

    // The restarted proxy delivers it, exactly as sent, once the claim has run out.
    let serve = ServeProcess::start(&h, false);
    assert_eq!(h.hooks.next().await.body, body.as_bytes());
    let api = format!("{}/api/eshop", serve.proxy);
    let id = ESHOP.to_string();
    let r = h.http.get(&api, &[("x-shoptet-eshop-id", &id)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        h.minted(ESHOP),
        1,
        "the installation's token survived kill -9"
    );
    assert!(serve.sigterm().success(), "SIGTERM exits 0");

    let serve = ServeProcess::start(&h, false);
    let api = format!("{}/api/eshop", serve.proxy);
    let r = h.http.get(&api, &[("x-shoptet-eshop-id", &id)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.minted(ESHOP), 1, "a restart after SIGTERM mints nothing");
    assert!(serve.sigterm().success());
}
