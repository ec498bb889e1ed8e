//! A store outage costs nothing (SPEC B7 `/readyz`, B10): the test's own PostgreSQL is stopped
//! for 5 s under load and started again, while one proxy keeps running (no restart).
//! Needs PostgreSQL tests on (`SHOPTET_PROXY_TEST_PG_URL`, see tests/pg.sh); otherwise "skipped".

mod common;

use common::assert_proxy_error;
use common::deploy::{Deployment, Proxy, ADMIN_TOKEN};
use common::pg::PrivatePg;
use http::Method;
use shoptet_proxy::secret::Secret;
use shoptet_proxy::sim::testing::{TestClient, TestResponse};
use shoptet_proxy::store::NewInstallation;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Served from cached tokens through the outage.
const WARM: [u64; 3] = [3001, 3002, 3003];
/// Installed, never requested before the outage: needs the store for its token.
const COLD: u64 = 3004;
/// Installed through the install callback (so it has a signature key): sends the webhook.
const HOOKED: u64 = 3005;
/// Installed by Shoptet during the outage.
const LATE: u64 = 3006;
const OUTAGE: Duration = Duration::from_secs(5);

/// `shoptet_proxy_store_up` as the admin listener reports it now.
async fn store_up(http: &TestClient, p: &Proxy) -> Option<i64> {
    let text = http.get(&p.admin_url("/metrics"), &[]).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix("shoptet_proxy_store_up "))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `probe` until it returns `want`; panics after 10 s. Returns how long it took.
async fn wait_for<F, Fut, T>(what: &str, want: T, probe: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T>,
    T: PartialEq + std::fmt::Debug,
{
    let started = Instant::now();
    loop {
        let got = probe().await;
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: still {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send_webhook(h: &Deployment, p: &Proxy, key: &str, body: &str) -> TestResponse {
    let sig = shoptet_proxy::shoptet::signature::sign(key.as_bytes(), body.as_bytes());
    h.http
        .request(
            Method::POST,
            &p.public_url("/webhooks"),
            &[("shoptet-webhook-signature", &sig)],
            body.to_owned(),
        )
        .await
}

/// `POST /admin/eshops/{id}/refresh` with the admin token.
async fn admin_refresh(h: &Deployment, p: &Proxy, eshop_id: u64) -> TestResponse {
    h.http
        .request(
            Method::POST,
            &p.admin_url(&format!("/admin/eshops/{eshop_id}/refresh")),
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            "",
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_database_costs_warmed_eshops_nothing() {
    let Some(pg) = PrivatePg::start() else { return };
    let mut h = Deployment::with_store(Some(pg.url.clone())).await;
    let p = h.start().await;
    let store = h.store().await;
    for id in WARM.into_iter().chain([COLD]) {
        let sim = h.sim.create_eshop(id);
        let new = NewInstallation {
            eshop_id: id,
            eshop_url: None,
            contact_email: None,
            oauth_token: Secret::new(sim.oauth_token),
        };
        store.upsert_installation(&new, None).await.expect("upsert");
    }
    let installed = h.install(&p, HOOKED).await;
    assert_eq!(installed["installStatus"], 200, "{installed}");
    h.events.next().await; // the "installed" event
    let key = h
        .installation(HOOKED)
        .await
        .signature_key
        .expect("signature key");
    let key = key.expose().to_owned();
    for id in WARM {
        assert_eq!(p.api_get(&h.http, id).await.status, 200);
    }
    assert_eq!(store_up(&h.http, &p).await, Some(1));

    // Load on the warmed e-shops and a /readyz watcher, both until the end of the outage.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut load = Vec::new();
    for (i, id) in WARM.into_iter().enumerate() {
        let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
        let url = p.api_url("/api/eshop");
        load.push(tokio::spawn(async move {
            let http = TestClient::new();
            let id = id.to_string();
            while !stop.load(Ordering::Relaxed) {
                let r = http.get(&url, &[("x-shoptet-eshop-id", &id)]).await;
                if r.status == 200 {
                    served.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.lock().expect("failures").push(format!(
                        "client {i}: {} {}",
                        r.status,
                        r.text()
                    ));
                }
            }
        }));
    }
    let readyz_seen: Arc<Mutex<Vec<u16>>> = Arc::default();
    {
        let (stop, seen, url) = (stop.clone(), readyz_seen.clone(), p.admin_url("/readyz"));
        load.push(tokio::spawn(async move {
            let http = TestClient::new();
            while !stop.load(Ordering::Relaxed) {
                let status = http.get(&url, &[]).await.status.as_u16();
                seen.lock().expect("readyz").push(status);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }

    let before = h.sim.stats();
    let down_at = Instant::now();
    pg.pause();
    let noticed = wait_for("store_up during the outage", Some(0), || {
        store_up(&h.http, &p)
    })
    .await;
    let served_at_down = served.load(Ordering::Relaxed);

    // What needs the store answers 503 proxy-store-unavailable, with a Retry-After.
    let cold = p.api_get(&h.http, COLD).await;
    assert_proxy_error(&cold, 503, "proxy-store-unavailable");
    assert!(cold.header("retry-after").is_some(), "{:?}", cold.headers);
    let body = format!(r#"{{"eshopId":{HOOKED},"event":"order:create","eventInstance":"77"}}"#);
    let hook = send_webhook(&h, &p, &key, &body).await;
    assert_proxy_error(&hook, 503, "proxy-store-unavailable");
    let refresh = admin_refresh(&h, &p, WARM[0]).await;
    assert_proxy_error(&refresh, 503, "proxy-store-unavailable");
    // Shoptet installs the addon meanwhile: refused before the one-time code is exchanged.
    let late = h
        .sim_post(
            "/sim/eshops",
            serde_json::json!({"eshopId": LATE, "installUrl": p.public_url("/install")}),
        )
        .await
        .json();
    assert_eq!(late["installStatus"], 503, "{late}");
    let code = late["code"]
        .as_str()
        .expect("the simulator's code")
        .to_owned();
    assert_eq!(
        h.sim.stats().calls.token,
        before.calls.token,
        "no code exchange while the store is down"
    );

    // Hold the outage for its full length while the load runs on.
    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
    let served_in_outage = served.load(Ordering::Relaxed) - served_at_down;
    pg.resume();
    let recovered = wait_for("store_up after the outage", Some(1), || {
        store_up(&h.http, &p)
    })
    .await;

    // Everything resumes without a restart.
    let cold_after = wait_for("the cold e-shop served", 200, || async {
        p.api_get(&h.http, COLD).await.status.as_u16()
    })
    .await;
    let hook = send_webhook(&h, &p, &key, &body).await;
    assert_eq!(hook.status, 200, "{}", hook.text());
    assert_eq!(h.hooks.next().await.body, body.as_bytes());
    let install = h
        .http
        .get(&p.public_url(&format!("/install?code={code}")), &[])
        .await;
    assert_eq!(install.status, 200, "{}", install.text());
    assert_eq!(h.installation(LATE).await.eshop_id, LATE);
    let refresh = admin_refresh(&h, &p, WARM[0]).await;
    assert_eq!(refresh.status, 200, "{}", refresh.text());

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    let failures = failures.lock().expect("failures").clone();
    assert!(failures.is_empty(), "warmed e-shops failed: {failures:?}");
    assert!(
        served_in_outage > 0,
        "requests were served during the outage"
    );
    let readyz = readyz_seen.lock().expect("readyz").clone();
    assert!(
        !readyz.is_empty() && readyz.iter().all(|&s| s == 200),
        "/readyz: {readyz:?}"
    );
    // The webhook refused during the outage was not queued: delivered once, from the resend.
    wait_for("the outbox drained", 0, || async {
        store.outbox_depth().await.expect("outbox depth")
    })
    .await;
    assert!(h.hooks.try_next().is_none(), "a webhook delivered twice");
    println!(
        "outage {:.1} s: {served_in_outage} warm requests served, 0 failed; store_up 0 after \
         {} ms, 1 after {} ms; cold e-shop served {} ms after the store was back; /readyz \
         200 x {}",
        OUTAGE.as_secs_f64(),
        noticed.as_millis(),
        recovered.as_millis(),
        (cold_after + recovered).as_millis(),
        readyz.len()
    );
    p.stop().await;
}
