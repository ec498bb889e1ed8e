//! The settings pages (SPEC B9) end to end: the simulator's administration and e-shop OAuth
//! servers, the proxy's public listener, and a stand-in addon that records what reaches it.

mod common;

use bytes::Bytes;
use common::deploy::{Deployment, Proxy};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;
use shoptet_proxy::listeners::settings::seal::{self, Sealer, Session};
use shoptet_proxy::sim::testing::{Received, TestResponse};
use shoptet_proxy::store::Status;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

const ESHOP: u64 = 222651;
const OTHER: u64 = 333777;
/// What the harness's `redirect_uri` becomes for the settings flow.
const SETTINGS_REDIRECT: &str = "http://127.0.0.1/settings/authorized";

/// The addon's settings backend: records every request, answers a page with a relative link and
/// a form, and an `X-Frame-Options` the proxy must remove.
struct Addon {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Addon {
    async fn start() -> Addon {
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = seen.clone();
        let url = common::stand_in(move |req: Request<hyper::body::Incoming>| {
            let log = log.clone();
            async move {
                let received = Received::read(req).await;
                log.lock().unwrap().push(received);
                let page = "<a href=\"other?x=1\">other</a><form method=post action=\"save\">\
                            <input name=greeting></form>";
                let mut r = Response::new(Full::new(Bytes::from(page)));
                r.headers_mut()
                    .insert("x-frame-options", http::HeaderValue::from_static("DENY"));
                r.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("text/html; charset=utf-8"),
                );
                r
            }
        })
        .await;
        Addon { url, seen }
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

struct Setup {
    h: Deployment,
    p: Proxy,
    addon: Addon,
}

impl Setup {
    /// A proxy with `/settings` on, the simulator's administration pointed at it, `ESHOP` and
    /// `OTHER` installed.
    async fn new() -> Setup {
        let h = Deployment::new().await;
        let addon = Addon::start().await;
        let mut cfg = h.config();
        cfg.addon.settings_url = Some(format!("{}/settings", addon.url).parse().unwrap());
        assert_eq!(cfg.shoptet.settings_redirect_uri, SETTINGS_REDIRECT);
        let p = h.start_with(cfg).await;
        let link =
            p.public_url("/settings?eshopId=#SHOP_ID#&language=#LANGUAGE#&code=#OAUTH_CODE#");
        h.sim.set_config(|c| {
            c.settings_url = Some(link);
            c.settings_redirect_uri = Some(SETTINGS_REDIRECT.to_owned());
        });
        for id in [ESHOP, OTHER] {
            assert_eq!(h.install(&p, id).await["installStatus"], 200);
        }
        Setup { h, p, addon }
    }

    async fn get(&self, path_or_url: &str, headers: &[(&str, &str)]) -> TestResponse {
        let url = if path_or_url.starts_with('/') {
            self.p.public_url(path_or_url)
        } else {
            path_or_url.to_owned()
        };
        self.h.http.get(&url, headers).await
    }

    /// A one-time code from the simulated administration for an admin of `eshop`.
    async fn code(&self, eshop: u64, email: Option<&str>) -> String {
        let body = email.map_or(json!(null), |e| json!({ "email": e }));
        let r = self
            .h
            .sim_post(&format!("/sim/eshops/{eshop}/settings-code"), body)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["code"].as_str().unwrap().to_owned()
    }

    /// `/settings` with a code → the session path from the 303.
    async fn login(&self, eshop: u64, code: &str) -> String {
        let r = self
            .get(
                &format!("/settings?eshopId={eshop}&language=cs&code={code}"),
                &[],
            )
            .await;
        session_path(&r)
    }

    fn secrets_received(&self, eshop: u64) -> u64 {
        self.h
            .sim
            .stats()
            .eshops
            .get(&eshop)
            .map_or(0, |s| s.settings_secrets_received)
    }

    async fn login_metric(&self, result: &str) -> u64 {
        let text = self
            .h
            .http
            .get(&self.p.admin_url("/metrics"), &[])
            .await
            .text();
        let line = format!("shoptet_proxy_settings_logins_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line} in the metrics"))
    }
}

fn session_path(r: &TestResponse) -> String {
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let loc = r.header("location").expect("Location").to_owned();
    assert!(
        loc.starts_with("/settings/s/") && loc.ends_with('/'),
        "{loc}"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    loc
}

/// Asserts a B9 HTML error page.
fn assert_page(r: &TestResponse, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{code}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r.text().contains(code), "{}", r.text());
}

/// `src` of the administration page's iframe, unescaped.
fn iframe_src(html: &str) -> String {
    let start = html.find("src=\"").expect("iframe src") + 5;
    let end = start + html[start..].find('"').expect("closing quote");
    html[start..end].replace("&amp;", "&")
}

fn header<'a>(s: &'a Received, name: &str) -> &'a str {
    s.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{name} missing: {:?}", s.headers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simplified_flow_reaches_the_addon_with_the_verified_identity() {
    let s = Setup::new().await;
    s.h.sim_post(
        &format!("/sim/eshops/{ESHOP}/admins"),
        json!({"email": "jana@example.com", "name": "Jana Nováková"}),
    )
    .await;
    // The administration frames the link with the code filled in.
    let admin =
        s.h.http
            .get(
                &format!(
                    "{}/eshops/{ESHOP}/admin/settings?user=jana@example.com&language=sk",
                    s.h.sim.base_url()
                ),
                &[],
            )
            .await;
    assert_eq!(admin.status, 200, "{}", admin.text());
    let src = iframe_src(&admin.text());
    assert!(!src.contains("#OAUTH_CODE#"), "{src}");
    let base = session_path(&s.get(&src, &[]).await);

    // The client tries to claim another identity: its headers never reach the addon.
    let r = s
        .get(
            &base,
            &[
                ("x-shoptet-eshop-id", "1"),
                ("x-shoptet-user-email", "evil@example.com"),
                ("X-Shoptet-User-Name", "Mallory"),
                ("x-shoptet-language", "en"),
                ("x-shoptet-settings-base", "/elsewhere/"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("href=\"other?x=1\""));
    assert_eq!(r.header("x-frame-options"), None);
    let csp = r.header("content-security-policy").expect("CSP");
    assert!(csp.starts_with("frame-ancestors "), "{csp}");
    assert!(csp.contains("https://*.myshoptet.com"), "{csp}");
    let inst = s.h.installation(ESHOP).await;
    let shop = url::Url::parse(inst.eshop_url.as_deref().expect("eshop url")).unwrap();
    assert!(csp.contains(&shop.origin().ascii_serialization()), "{csp}");
    assert_eq!(r.header("referrer-policy"), Some("same-origin"));

    let seen = s.addon.seen();
    assert_eq!(seen.len(), 1);
    let first = &seen[0];
    assert_eq!(first.path_and_query, "/settings/");
    assert_eq!(header(first, "x-shoptet-eshop-id"), ESHOP.to_string());
    assert_eq!(header(first, "x-shoptet-user-email"), "jana@example.com");
    assert_eq!(
        header(first, "x-shoptet-user-name"),
        "Jana Nov%C3%A1kov%C3%A1"
    );
    assert_eq!(header(first, "x-shoptet-language"), "sk");
    assert_eq!(header(first, "x-shoptet-settings-base"), base);
    for name in [
        "x-shoptet-user-email",
        "x-shoptet-user-name",
        "x-shoptet-eshop-id",
    ] {
        assert_eq!(first.headers.get_all(name).iter().count(), 1, "{name}");
    }

    // A relative link and a form POST resolve inside the session.
    let page = url::Url::parse(&s.p.public_url(&base)).unwrap();
    let link = page.join("other?x=1").unwrap();
    assert_eq!(s.get(link.as_str(), &[]).await.status, 200);
    let action = page.join("save").unwrap();
    let r =
        s.h.http
            .request(
                http::Method::POST,
                action.as_str(),
                &[("content-type", "application/x-www-form-urlencoded")],
                "greeting=Ahoj+sv%C4%9Bte",
            )
            .await;
    assert_eq!(r.status, 200);
    let seen = s.addon.seen();
    assert_eq!(seen[1].path_and_query, "/settings/other?x=1");
    assert_eq!(header(&seen[1], "x-shoptet-user-email"), "jana@example.com");
    assert_eq!(
        (seen[2].method.as_str(), seen[2].path_and_query.as_str()),
        ("POST", "/settings/save")
    );
    assert_eq!(seen[2].body, "greeting=Ahoj+sv%C4%9Bte");
    assert_eq!(header(&seen[2], "x-shoptet-eshop-id"), ESHOP.to_string());

    // The client secret went to this e-shop's OAuth server only.
    assert_eq!(s.secrets_received(ESHOP), 1);
    assert_eq!(s.secrets_received(OTHER), 0);
    assert_eq!(s.login_metric("ok").await, 1);

    // Without the trailing slash the session redirects to it (relative links need it).
    let bare = base.trim_end_matches('/');
    let r = s.get(bare, &[]).await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some(base.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_code_flow_completes_and_its_state_works_once() {
    let s = Setup::new().await;
    // Shoptet left the placeholder: the proxy starts the flow at the e-shop's OAuth server.
    let r = s
        .get(
            &format!("/settings?eshopId={ESHOP}&language=en&code=%23OAUTH_CODE%23"),
            &[],
        )
        .await;
    assert_eq!(r.status, 302, "{}", r.text());
    let authorize = url::Url::parse(r.header("location").unwrap()).unwrap();
    assert!(
        authorize.as_str().starts_with(&format!(
            "{}/eshops/{ESHOP}/action/OAuthServer/authorize?",
            s.h.sim.base_url()
        )),
        "{authorize}"
    );
    let q: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(q["scope"], "basic_eshop");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["redirect_uri"], SETTINGS_REDIRECT);
    assert_eq!(q["client_id"], "sim-client");
    assert!(!q.contains_key("client_secret"));
    assert_eq!(s.login_metric("redirected").await, 1);

    // The admin's browser follows; Shoptet sends it back to the URL for user authorization.
    let back = s.get(authorize.as_str(), &[]).await;
    assert_eq!(back.status, 302, "{}", back.text());
    let back = url::Url::parse(back.header("location").unwrap()).unwrap();
    assert_eq!(back.path(), "/settings/authorized");
    let query = back.query().unwrap().to_owned();
    let state = back
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();

    // A tampered state is refused before any code is spent.
    let mut bad = state.clone().into_bytes();
    let i = bad.len() / 2;
    bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let r = s
        .get(
            &format!("/settings/authorized?code={code}&state={bad}"),
            &[],
        )
        .await;
    assert_page(&r, 403, "proxy-settings-denied");

    let base = session_path(&s.get(&format!("/settings/authorized?{query}"), &[]).await);
    assert_eq!(s.get(&base, &[]).await.status, 200);
    let seen = s.addon.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(header(&seen[0], "x-shoptet-language"), "en");
    assert_eq!(
        header(&seen[0], "x-shoptet-user-email"),
        format!("owner{ESHOP}@example.com")
    );

    // The same state again, even with a fresh code: refused.
    let fresh = s.code(ESHOP, None).await;
    let r = s
        .get(
            &format!("/settings/authorized?code={fresh}&state={state}"),
            &[],
        )
        .await;
    assert_page(&r, 403, "proxy-settings-denied");
    assert_eq!(s.addon.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_and_sessions_never_reach_the_addon() {
    let s = Setup::new().await;
    // A code issued for another e-shop (its server accepts it, the identity names that e-shop).
    let foreign = s.code(OTHER, None).await;
    let r = s
        .get(
            &format!("/settings?eshopId={ESHOP}&language=cs&code={foreign}"),
            &[],
        )
        .await;
    assert_page(&r, 403, "proxy-settings-denied");
    assert_eq!(
        s.secrets_received(OTHER),
        0,
        "the secret went to ESHOP's server"
    );

    // A reused code.
    let code = s.code(ESHOP, None).await;
    let base = s.login(ESHOP, &code).await;
    let r = s
        .get(
            &format!("/settings?eshopId={ESHOP}&language=cs&code={code}"),
            &[],
        )
        .await;
    assert_page(&r, 403, "proxy-settings-denied");

    // An unknown e-shop; no or a non-numeric id.
    let r = s
        .get("/settings?eshopId=999999&language=cs&code=x", &[])
        .await;
    assert_page(&r, 403, "proxy-settings-denied");
    for q in ["language=cs&code=x", "eshopId=abc&code=x", "eshopId=-1"] {
        assert_page(
            &s.get(&format!("/settings?{q}"), &[]).await,
            400,
            "proxy-bad-request",
        );
    }

    // A tampered session, an expired one, a state posing as a session, junk.
    let token = base
        .trim_start_matches("/settings/s/")
        .trim_end_matches('/');
    let mut t = token.to_owned().into_bytes();
    let i = t.len() / 2;
    t[i] = if t[i] == b'A' { b'B' } else { b'A' };
    let tampered = format!("/settings/s/{}/", String::from_utf8(t).unwrap());
    let keys = s.h.store().await.derived_keys(seal::SESSION_LABEL);
    let expired = Sealer::new(seal::SESSION_LABEL, &keys).seal(&Session {
        eshop_id: ESHOP,
        email: "owner@example.com".into(),
        name: "Owner".into(),
        language: "cs".into(),
        project_url: String::new(),
        expires: seal::unix(SystemTime::now()) - 1,
    });
    let states = s.h.store().await.derived_keys(seal::STATE_LABEL);
    let as_state = Sealer::new(seal::SESSION_LABEL, &states).seal(&Session {
        eshop_id: ESHOP,
        email: "owner@example.com".into(),
        name: "Owner".into(),
        language: "cs".into(),
        project_url: String::new(),
        expires: seal::unix(SystemTime::now()) + 600,
    });
    for path in [
        tampered,
        format!("/settings/s/{expired}/"),
        format!("/settings/s/{as_state}/"),
        "/settings/s/not-a-session/".to_owned(),
    ] {
        assert_page(
            &s.get(&path, &[]).await,
            401,
            "proxy-settings-session-invalid",
        );
    }

    // A path climbing out of settings_url.
    let r = s.get(&format!("{base}..%2F..%2Fhooks"), &[]).await;
    assert_page(&r, 400, "proxy-bad-request");

    assert!(s.addon.seen().is_empty(), "{:?}", s.addon.seen());

    // The session works until the e-shop is suspended; then neither it nor a login does.
    assert_eq!(s.get(&base, &[]).await.status, 200);
    // (as a signed addon:suspend webhook leaves it; the webhook path has tests of its own)
    let store = s.h.store().await;
    assert!(store.set_status(ESHOP, Status::Suspended).await.unwrap());
    assert_page(&s.get(&base, &[]).await, 403, "proxy-settings-denied");
    let code = s.code(ESHOP, None).await;
    let r = s
        .get(
            &format!("/settings?eshopId={ESHOP}&language=cs&code={code}"),
            &[],
        )
        .await;
    assert_page(&r, 403, "proxy-settings-denied");
    assert_eq!(s.addon.seen().len(), 1);
    assert!(s.login_metric("denied").await >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_off_without_a_settings_url_and_502_when_the_addon_is_down() {
    let h = Deployment::new().await;
    let p = h.start().await;
    let r = h
        .http
        .get(&p.public_url("/settings?eshopId=1&code=x"), &[])
        .await;
    assert_page(&r, 404, "proxy-not-found");
    p.stop().await;

    // An addon that is not listening.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/settings", dead.local_addr().unwrap());
    drop(dead);
    let mut cfg = h.config();
    cfg.addon.settings_url = Some(dead_url.parse().unwrap());
    let p = h.start_with(cfg).await;
    assert_eq!(h.install(&p, ESHOP).await["installStatus"], 200);
    let code = {
        let r = h
            .sim_post(&format!("/sim/eshops/{ESHOP}/settings-code"), json!(null))
            .await;
        r.json()["code"].as_str().unwrap().to_owned()
    };
    let r = h
        .http
        .get(
            &p.public_url(&format!("/settings?eshopId={ESHOP}&code={code}")),
            &[],
        )
        .await;
    let base = session_path(&r);
    let r = h.http.get(&p.public_url(&base), &[]).await;
    assert_page(&r, 502, "proxy-upstream-unreachable");
}

/// The real binary at debug level: no code, state, session, secret or bearer token in its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_code_state_or_session_in_the_logs_at_debug_level() {
    let h = Deployment::new().await;
    let addon = Addon::start().await;
    // The binary's store gets the installation from an in-process proxy on the same files.
    let p = h.start().await;
    assert_eq!(h.install(&p, ESHOP).await["installStatus"], 200);
    p.stop().await;
    let settings_url = format!("{}/settings", addon.url);
    let served = h.serve(
        "debug",
        &[("SHOPTET_PROXY_ADDON__SETTINGS_URL", settings_url.as_str())],
    );
    let public = |path: &str| format!("http://{}{path}", served.public);
    let code = h
        .sim_post(&format!("/sim/eshops/{ESHOP}/settings-code"), json!(null))
        .await
        .json()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = h
        .http
        .get(
            &public(&format!(
                "/settings?eshopId={ESHOP}&language=cs&code={code}"
            )),
            &[],
        )
        .await;
    let base = session_path(&r);
    assert_eq!(
        h.http
            .get(&public(&format!("{base}page")), &[])
            .await
            .status,
        200
    );
    // The authorization-code flow's state, too.
    let r = h
        .http
        .get(
            &public(&format!("/settings?eshopId={ESHOP}&language=cs")),
            &[],
        )
        .await;
    assert_eq!(r.status, 302);
    let state = url::Url::parse(r.header("location").unwrap())
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    served.wait_for("the settings access line", |v| {
        v["target"] == "access" && v["path"] == "/settings/s/…/page"
    });
    served.signal("TERM");
    let (_, out, err) = served.finish(std::time::Duration::from_secs(20));
    let all = format!("{}\n{}", out.join("\n"), err.join("\n"));
    let session = base
        .trim_start_matches("/settings/s/")
        .trim_end_matches('/');
    for (what, secret) in [
        ("code", code.as_str()),
        ("session", session),
        ("state", state.as_str()),
        ("client secret", "sim-secret"),
        ("bearer", "Bearer "),
    ] {
        assert!(!all.contains(secret), "the {what} appears in the logs");
    }
    assert!(
        all.contains("/settings/s/…/page"),
        "the access line is logged"
    );
}
