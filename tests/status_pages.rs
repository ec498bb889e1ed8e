//! Live state (SPEC B7): `GET /admin/eshops/{id}` with `runtime`, and the status pages `GET /`
//! and `GET /eshops/{id}` on the admin listener — over plain HTTP and in headless Chromium.

mod common;

use common::deploy::{Deployment, Proxy, ADMIN_TOKEN};
use serde_json::{json, Value};
use shoptet_proxy::sim::testing::TestResponse;
use std::time::{Duration, Instant};

const ESHOP: u64 = 222651;
const HOSTILE: u64 = 333444;
const HOSTILE_EMAIL: &str = "<script>alert(1)</script>";
/// Would mark the page if its `onerror` ever ran.
const HOSTILE_URL: &str =
    "https://x.example/\"><img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">";
const REQUIRE_CHROMIUM: &str = "SHOPTET_PROXY_REQUIRE_CHROMIUM";

async fn get(h: &Deployment, p: &Proxy, path: &str) -> TestResponse {
    h.http.get(&p.admin_url(path), &[]).await
}

async fn live(h: &Deployment, p: &Proxy, id: u64) -> Value {
    let r = get(h, p, &format!("/admin/eshops/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Polls `id`'s live state until `done` accepts it (panics after 10 s).
async fn live_until(h: &Deployment, p: &Proxy, id: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = live(h, p, id).await;
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "state never reached: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `PUT /admin/eshops/{id}` with `body`, as the operator imports an installation.
async fn import(h: &Deployment, p: &Proxy, id: u64, body: Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = h
        .http
        .request(
            http::Method::PUT,
            &p.admin_url(&format!("/admin/eshops/{id}")),
            &[
                ("content-type", "application/json"),
                ("authorization", &auth),
            ],
            body.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Imports `HOSTILE` with a contact email and URL that are markup.
async fn import_hostile(h: &Deployment, p: &Proxy) {
    let inst = h.sim.create_eshop(HOSTILE);
    let body = json!({"access_token": inst.oauth_token, "eshopId": HOSTILE,
                      "eshopUrl": HOSTILE_URL, "contactEmail": HOSTILE_EMAIL});
    import(h, p, HOSTILE, body).await;
}

/// A proxy with `ESHOP` installed (`n` requests proxied), `HOSTILE` imported (one request) and
/// one request for an e-shop never installed (one proxy error).
async fn with_traffic(n: usize) -> (Deployment, Proxy) {
    let h = Deployment::new().await;
    let p = h.start().await;
    assert_eq!(h.install(&p, ESHOP).await["installStatus"], 200);
    import_hostile(&h, &p).await;
    for _ in 0..n {
        assert_eq!(p.api_get(&h.http, ESHOP).await.status, 200);
    }
    assert_eq!(p.api_get(&h.http, HOSTILE).await.status, 200);
    assert_eq!(p.api_get(&h.http, 999).await.status, 403);
    (h, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_state_reports_counts_slots_queue_token_and_bucket() {
    let h = Deployment::new().await;
    let p = h.start().await;
    assert_eq!(h.install(&p, ESHOP).await["installStatus"], 200);

    // Installed, nothing proxied yet: the list item and an idle runtime.
    let before = live(&h, &p, ESHOP).await;
    assert_eq!(before["runtime"]["requestsTotal"], 0);
    assert_eq!(before["runtime"]["lastUpstreamStatus"], Value::Null);

    for _ in 0..5 {
        assert_eq!(p.api_get(&h.http, ESHOP).await.status, 200);
    }
    let v = live(&h, &p, ESHOP).await;
    let list = get(&h, &p, "/admin/eshops").await.json();
    let mut item = v.clone();
    let runtime = item
        .as_object_mut()
        .expect("object")
        .remove("runtime")
        .expect("runtime");
    assert_eq!(item, list["eshops"][0], "the list item, field for field");
    let mut keys: Vec<&str> = runtime
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "backoffUntil",
            "bucket",
            "inFlight",
            "lastTokenError",
            "lastUpstreamStatus",
            "queued",
            "requestsTotal",
            "tokenExpiresInSeconds",
            "tokenRefreshing"
        ]
    );
    assert_eq!(runtime["requestsTotal"], 5);
    assert_eq!(runtime["lastUpstreamStatus"], 200);
    assert_eq!(runtime["inFlight"], 0);
    assert_eq!(runtime["queued"], 0);
    assert_eq!(runtime["tokenRefreshing"], false);
    assert_eq!(runtime["backoffUntil"], Value::Null);
    assert_eq!(runtime["lastTokenError"], Value::Null);
    let left = runtime["tokenExpiresInSeconds"].as_u64().expect("a token");
    assert!(left > 1700 && left <= 1800, "{left}");
    let bucket = &runtime["bucket"];
    assert_eq!(bucket["capacity"], 200);
    assert_eq!(bucket["pacedTotal"], 0);
    let level = bucket["level"].as_f64().expect("level");
    assert!((0.0..=200.0).contains(&level), "{level}");
    assert!(!v
        .to_string()
        .contains(&h.installation(ESHOP).await.oauth_token.expose().to_owned()));

    // Five slow requests at once: three in flight (max_in_flight_per_eshop), two queued.
    h.sim
        .set_config(|c| c.latency = Duration::from_millis(1500));
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let http = h.http.clone();
            let url = p.api_url("/api/eshop");
            tokio::spawn(async move {
                http.get(&url, &[("x-shoptet-eshop-id", &ESHOP.to_string())])
                    .await
                    .status
            })
        })
        .collect();
    let busy = live_until(&h, &p, ESHOP, |v| {
        v["runtime"]["inFlight"] == 3 && v["runtime"]["queued"] == 2
    })
    .await;
    assert_eq!(busy["runtime"]["requestsTotal"], 10);
    // The overview lists it as the busiest e-shop now.
    let page = get(&h, &p, "/").await.text();
    assert!(page.contains(&format!("<a href=\"/eshops/{ESHOP}\">{ESHOP}</a>")));
    for r in requests {
        assert_eq!(r.await.expect("joined"), 200);
    }
    let after = live(&h, &p, ESHOP).await;
    assert_eq!(after["runtime"]["inFlight"], 0);
    assert_eq!(after["runtime"]["queued"], 0);

    // Never installed, then removed: 404 proxy-not-found.
    let r = get(&h, &p, "/admin/eshops/999").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["errors"][0]["errorCode"], "proxy-not-found");
    let r = h
        .http
        .request(
            http::Method::DELETE,
            &p.admin_url(&format!("/admin/eshops/{ESHOP}")),
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            String::new(),
        )
        .await;
    assert_eq!(r.status, 204);
    let r = get(&h, &p, &format!("/admin/eshops/{ESHOP}")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["errors"][0]["errorCode"], "proxy-not-found");
    assert_eq!(get(&h, &p, &format!("/eshops/{ESHOP}")).await.status, 404);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_shows_its_error_and_backoff_and_uninstalled_shows_its_status() {
    let h = Deployment::new().await;
    let p = h.start().await;
    h.sim
        .set_config(|c| c.addon_webhook_url = Some(p.public_url("/webhooks")));
    assert_eq!(h.install(&p, ESHOP).await["installStatus"], 200);
    // Shoptet uninstalls the addon: its signed webhook reaches the proxy.
    let r = h
        .sim_post(&format!("/sim/eshops/{ESHOP}/uninstall"), Value::Null)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = live_until(&h, &p, ESHOP, |v| v["status"] == "uninstalled").await;
    assert_eq!(v["eshopId"], ESHOP);
    assert!(v["runtime"].is_object());
    let page = get(&h, &p, &format!("/eshops/{ESHOP}")).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains(">uninstalled<"));

    // An installation whose OAuth token Shoptet no longer knows: the fetch fails and backs off.
    let dead = 4_242;
    h.sim.create_eshop(dead);
    // Stored even though no signature key could be fetched with it.
    import(
        &h,
        &p,
        dead,
        json!({"access_token": "not-a-token-shoptet-knows"}),
    )
    .await;
    let resp = p.api_get(&h.http, dead).await;
    assert_eq!(
        resp.json()["errors"][0]["errorCode"],
        "proxy-oauth-token-rejected"
    );
    let v = live(&h, &p, dead).await;
    let rt = &v["runtime"];
    assert_eq!(rt["lastTokenError"], "proxy-oauth-token-rejected", "{v}");
    let until = rt["backoffUntil"].as_str().expect("in backoff");
    let until = time::OffsetDateTime::parse(until, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    assert!(until > time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
    assert_eq!(rt["tokenExpiresInSeconds"], Value::Null);
    assert_eq!(rt["requestsTotal"], 1);
    assert_eq!(rt["lastUpstreamStatus"], Value::Null);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_pages_show_traffic_and_escape_what_came_from_outside() {
    let (h, p) = with_traffic(3).await;

    let r = get(&h, &p, "/").await;
    assert_eq!(r.status, 200);
    let ct = r.headers.get("content-type").expect("content type");
    assert_eq!(ct, "text/html; charset=utf-8");
    let csp = r.headers.get("content-security-policy").expect("csp");
    assert!(csp.to_str().unwrap().starts_with("default-src 'none'"));
    let page = r.text();
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    assert!(
        page.contains("<td>active</td><td class=\"n\">2</td>"),
        "{page}"
    );
    assert!(
        page.contains("<td>proxy-eshop-not-installed</td>"),
        "{page}"
    );
    assert!(page.contains("<td>ok</td><td class=\"n\">"), "{page}");
    for id in [ESHOP, HOSTILE, 999] {
        assert!(page.contains(&format!("href=\"/eshops/{id}\"")), "{id}");
    }
    // No external asset: nothing is loaded from anywhere.
    for tag in ["<script", "<link", "src=", "@import", "url("] {
        assert!(!page.contains(tag), "{tag}");
    }

    let r = get(&h, &p, &format!("/eshops/{HOSTILE}")).await;
    assert_eq!(r.status, 200);
    let page = r.text();
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(page.contains("&quot;&gt;&lt;img src=x onerror="), "{page}");
    assert!(
        !page.contains("<script") && !page.contains("<img"),
        "{page}"
    );
    assert!(
        page.contains("<th>requests since start</th><td>1</td>"),
        "{page}"
    );

    let r = get(&h, &p, "/eshops/999").await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("not installed"));
    p.stop().await;
}

/// Runs headless Chromium on `args` and returns its standard output.
async fn chromium(args: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .kill_on_drop(true)
    .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("chromium finishes within a minute")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("DOM is UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_both_pages_and_runs_no_injected_script() {
    if common::binary::tool("chromium", REQUIRE_CHROMIUM).is_none() {
        return;
    }
    let (_h, p) = with_traffic(4).await;

    // The DOM after load, as the browser built it: markup that ran would show here as elements
    // or as the attribute its handler sets.
    let overview = chromium(&["--dump-dom".into(), p.admin_url("/")]).await;
    assert!(overview.contains("<title>status</title>"), "{overview}");
    assert!(overview.contains("Busiest e-shops now"));
    assert!(overview.contains(&format!("<a href=\"/eshops/{ESHOP}\">{ESHOP}</a>")));
    assert!(overview.contains("proxy-eshop-not-installed"));
    // ESHOP (4 requests) ranks above HOSTILE (1) when nothing is in flight or queued... unless
    // its bucket is fuller; either way both are listed.
    assert!(overview.contains(&format!("href=\"/eshops/{HOSTILE}\"")));

    let eshop = chromium(&[
        "--dump-dom".into(),
        p.admin_url(&format!("/eshops/{HOSTILE}")),
    ])
    .await;
    assert!(eshop.contains("<title>e-shop 333444</title>"), "{eshop}");
    // Shown as text (the serializer escapes text nodes again), never parsed as markup.
    assert!(
        eshop.contains("<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>"),
        "{eshop}"
    );
    assert!(eshop.contains("onerror="), "the URL is shown as text");
    assert!(!eshop.contains("<script"), "no script element: {eshop}");
    assert!(!eshop.contains("<img"), "no injected element: {eshop}");
    // The handler would have set an attribute on <body>; the text naming it is just text.
    assert!(eshop.contains("<body><header>"), "no handler ran: {eshop}");
    assert!(eshop.contains("<th>requests since start</th><td>1</td>"));
    assert!(eshop.contains("<th>last upstream status</th><td>200</td>"));

    let mine = chromium(&[
        "--dump-dom".into(),
        p.admin_url(&format!("/eshops/{ESHOP}")),
    ])
    .await;
    assert!(
        mine.contains("<th>requests since start</th><td>4</td>"),
        "{mine}"
    );
    assert!(mine.contains("<span class=\"ok\">active</span>"));

    // For the operator's note: `SHOPTET_PROXY_STATUS_SCREENSHOT=<dir>` keeps pictures of both.
    if let Some(dir) = std::env::var_os("SHOPTET_PROXY_STATUS_SCREENSHOT") {
        let dir = std::path::PathBuf::from(dir);
        for (name, path) in [
            ("overview.png", "/".to_owned()),
            ("eshop.png", format!("/eshops/{HOSTILE}")),
        ] {
            chromium(&[
                format!("--screenshot={}", dir.join(name).display()),
                "--window-size=1280,800".into(),
                p.admin_url(&path),
            ])
            .await;
        }
    }
    p.stop().await;
}
