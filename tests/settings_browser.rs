//! The settings page in a real browser (SPEC A5, B9): headless Chromium, driven over WebDriver
//! (Debian's `chromium-driver`, spoken to directly over HTTP), opens the simulator's stand-in for
//! Shoptet's administration, which frames the addon's settings link from another origin. Inside
//! the frame it finds the admin's e-mail, follows a relative link and submits the form — all in
//! the session carried in the path, with no cookie.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver`: skipped without them, failed instead
//! when `SHOPTET_PROXY_REQUIRE_CHROMIUM` is set (tests/run.sh sets it).

mod common;

use common::deploy::Deployment;
use http::Method;
use serde_json::{json, Value};
use shoptet_proxy::sim::testing::TestClient;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ESHOP: u64 = 222651;
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process and one browser session; both end on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: TestClient,
}

impl Browser {
    async fn start(profile: &std::path::Path) -> Browser {
        let port = common::binary::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = TestClient::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http
                .try_request(Method::GET, &format!("{base}/status"), &[], "")
                .await
            {
                if r.json()["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         format!("--user-data-dir={}", profile.display())],
            },
        }}});
        let r = http.post_json(&format!("{base}/session"), &[], &caps).await;
        assert_eq!(r.status, 200, "new session: {}", r.text());
        let session = r.json()["value"]["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        Browser {
            driver,
            base,
            session,
            http,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        // Commands without parameters take no body (chromedriver refuses a JSON `null`).
        let r = if body.is_null() {
            self.http.request(method, &url, &[], "").await
        } else {
            self.http.send_json(method, &url, &[], &body).await
        };
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.json()["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(Method::POST, "/url", json!({ "url": url })).await;
    }

    /// The first element matching `css`, polled until it appears (pages load asynchronously).
    async fn find(&self, css: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = format!("{}/session/{}/element", self.base, self.session);
            let body = json!({"using": "css selector", "value": css});
            let r = self.http.post_json(&url, &[], &body).await;
            if r.status == 200 {
                return r.json()["value"].clone();
            }
            assert!(Instant::now() < deadline, "no element {css}: {}", r.text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        let id = element_id(&self.find(css).await);
        let v = self
            .call(Method::GET, &format!("/element/{id}/text"), json!(null))
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the element `css` shows `expected` (after a navigation inside the frame).
    async fn wait_text(&self, css: &str, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = format!("{}/session/{}/element", self.base, self.session);
            let body = json!({"using": "css selector", "value": css});
            let r = self.http.post_json(&url, &[], &body).await;
            if r.status == 200 {
                let id = element_id(&r.json()["value"]);
                let t = self
                    .call(Method::GET, &format!("/element/{id}/text"), json!(null))
                    .await;
                if t == expected {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{css} never showed {expected:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        let id = element_id(&self.find(css).await);
        self.call(Method::POST, &format!("/element/{id}/click"), json!({}))
            .await;
    }

    async fn script(&self, script: &str) -> Value {
        self.call(
            Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A WebDriver element reference's id (W3C's well-known key).
fn element_id(v: &Value) -> String {
    v["element-6066-11e4-a52e-4f735466cecf"]
        .as_str()
        .unwrap_or_else(|| panic!("not an element reference: {v}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_signs_in_inside_the_shoptet_frame_follows_a_link_and_saves_a_setting() {
    let present =
        std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if !present {
        assert!(
            std::env::var_os("SHOPTET_PROXY_REQUIRE_CHROMIUM").is_none(),
            "chromium and chromium-driver are required (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipped: chromium or chromedriver missing");
        return;
    }
    let h = Deployment::new().await;
    let page = shoptet_proxy::cli::demo_settings::start()
        .await
        .expect("settings page");
    let mut cfg = h.config();
    cfg.addon.settings_url = Some(page.parse().expect("url"));
    // The administration stand-in is the simulator's origin; it frames the proxy's page.
    cfg.addon.settings_frame_ancestors = vec![h.sim.base_url()];
    let redirect = cfg.shoptet.settings_redirect_uri.clone();
    let p = h.start_with(cfg).await;
    let link = p.public_url("/settings?eshopId=#SHOP_ID#&language=#LANGUAGE#&code=#OAUTH_CODE#");
    h.sim.set_config(|c| {
        c.settings_url = Some(link);
        c.settings_redirect_uri = Some(redirect);
    });
    assert_eq!(h.install(&p, ESHOP).await["installStatus"], 200);

    let profile = tempfile::tempdir().expect("profile dir");
    let b = Browser::start(profile.path()).await;
    b.go(&format!(
        "{}/eshops/{ESHOP}/admin/settings?language=cs",
        h.sim.base_url()
    ))
    .await;
    let frame = b.find("iframe").await;
    b.call(Method::POST, "/frame", json!({ "id": frame })).await;

    assert_eq!(b.text("#email").await, format!("owner{ESHOP}@example.com"));
    let path = b.script("return location.pathname").await;
    let path = path.as_str().unwrap_or_default().to_owned();
    assert!(path.starts_with("/settings/s/"), "{path}");
    let cookies = b.script("return document.cookie").await;
    assert_eq!(
        cookies, "",
        "the session lives in the path, not in a cookie"
    );

    b.click("#about").await;
    b.find("#about-text").await;
    let about = b.script("return location.pathname").await;
    let about = about.as_str().unwrap_or_default().to_owned();
    assert!(
        about.starts_with(&path) && about.ends_with("/about"),
        "{about} left the session {path}"
    );
    assert_eq!(b.text("#email").await, format!("owner{ESHOP}@example.com"));

    let input = element_id(&b.find("input[name=greeting]").await);
    b.call(Method::POST, &format!("/element/{input}/clear"), json!({}))
        .await;
    b.call(
        Method::POST,
        &format!("/element/{input}/value"),
        json!({"text": "Ahoj z prohlížeče"}),
    )
    .await;
    b.click("button").await;
    b.wait_text("#greeting", "Ahoj z prohlížeče").await;
    let after = b.script("return location.pathname").await;
    assert!(
        after.as_str().unwrap_or_default().starts_with(&path),
        "{after} left the session"
    );
    b.call(Method::DELETE, "", json!(null)).await;
}
