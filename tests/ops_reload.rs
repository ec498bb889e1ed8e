//! SIGHUP reloads the configuration of the real binary (SPEC B7 "Reload"): limits, client keys,
//! allowlists, the log level and TLS certificates apply to what comes afterwards; changes that
//! need a restart are named in the log and keep their running value; an invalid file (or a
//! certificate that does not load) changes nothing and counts a reload error. The process is
//! never restarted: every test checks the PID still answers.

mod common;

use common::binary::{Served, Setup};
use shoptet_proxy::sim::testing::{TestClient, WebhookReceiver};
use std::path::Path;
use std::time::Duration;

/// `config.toml` with its `[log] level` replaced.
fn with_level(config: &str, level: &str) -> String {
    config.replace(r#"level = "info""#, &format!("level = {level:?}"))
}

/// `config` with `key = value` added at the top of `[section]`.
fn with_key(config: &str, section: &str, key: &str, value: &str) -> String {
    let header = format!("[{section}]\n");
    assert!(config.contains(&header), "no [{section}] in the config");
    config.replacen(&header, &format!("{header}{key} = {value}\n"), 1)
}

/// Sends SIGHUP and waits for the reload's outcome line; true when it applied.
fn reload(served: &Served) -> bool {
    served.signal("HUP");
    let outcome = tokio::task::block_in_place(|| {
        served.wait_for("about the reload's outcome", |v| {
            v["message"] == "reload: done" || v["message"] == "reload: nothing changed"
        })
    });
    outcome["message"] == "reload: done"
}

/// `shoptet_proxy_config_reloads_total{result}` as scraped from the admin listener.
async fn reloads(http: &TestClient, served: &Served, result: &str) -> u64 {
    let text = http
        .get(&format!("http://{}/metrics", served.admin), &[])
        .await
        .text();
    let series = format!("shoptet_proxy_config_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// The process is the one started (not restarted) and still running.
fn still_running(served: &Served, pid: u32) {
    assert_eq!(served.pid(), pid);
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} is gone"
    );
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_the_log_level_and_names_what_needs_a_restart() {
    let addon = WebhookReceiver::start().await;
    let setup = Setup::new(&addon.url(""), "5s").await;
    let path = &setup.config;
    let original = std::fs::read_to_string(path).expect("config");
    // Quiet: only the startup line, no access lines.
    write(path, &with_level(&original, "warn,shoptet_proxy::app=info"));
    let served = Served::start(path, "");
    let pid = served.pid();
    let http = TestClient::new();
    let auth = setup.client_auth();
    let call = || {
        let url = format!("http://{}/eshops/1/api/eshop", served.proxy);
        let (http, auth) = (http.clone(), auth.clone());
        async move {
            let r = http.get(&url, &[("proxy-authorization", &auth)]).await;
            assert_eq!(r.error_code().as_deref(), Some("proxy-eshop-not-installed"));
        }
    };
    call().await;

    // Louder, a limit (applies) and a listen address (needs a restart).
    let louder = with_key(&with_level(&original, "info"), "proxy", "max_queue", "7").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:1\"",
    );
    write(path, &louder);
    served.signal("HUP");
    let restart = tokio::task::block_in_place(|| {
        served.wait_for("naming the restart", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("after a restart"))
        })
    });
    assert_eq!(restart["key"], "admin.listen");
    let changed = tokio::task::block_in_place(|| {
        served.wait_for("about the new level", |v| {
            v["message"] == "reload: log level changed"
        })
    });
    assert_eq!(
        (&changed["filter"], &changed["level"]),
        (&"info".into(), &"INFO".into())
    );
    tokio::task::block_in_place(|| served.wait_for("done", |v| v["message"] == "reload: done"));
    call().await;
    let access = tokio::task::block_in_place(|| {
        served.wait_for("the access line", |v| v["target"] == "access")
    });
    assert_eq!(access["status"], 403);
    // The admin listener still answers on its old port.
    assert_eq!(reloads(&http, &served, "ok").await, 1);

    // A broken file is refused and counted; the proxy keeps serving.
    write(path, "[proxy]\nno_such_key = 1\n");
    assert!(!reload(&served), "an invalid file must change nothing");
    call().await;
    assert_eq!(reloads(&http, &served, "error").await, 1);
    assert_eq!(reloads(&http, &served, "ok").await, 1);
    still_running(&served, pid);

    served.signal("TERM");
    let (status, out, _) = served.finish(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    let access_lines = out
        .iter()
        .filter(|l| l.contains(r#""target":"access""#))
        .count();
    assert_eq!(
        access_lines, 2,
        "none before the reload, one per call after it"
    );
}

/// Sends `n` concurrent calls for `eshop` and checks each succeeded.
async fn burst(http: &TestClient, served: &Served, auth: &str, eshop: u64, n: usize) {
    let calls = (0..n).map(|_| {
        let url = format!("http://{}/eshops/{eshop}/api/eshop", served.proxy);
        async move { http.get(&url, &[("proxy-authorization", auth)]).await }
    });
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_lowers_max_in_flight_per_eshop_for_existing_and_new_eshops() {
    let addon = WebhookReceiver::start().await;
    let setup = Setup::with_sim(&addon.url(""), "5s", |c| {
        c.latency = Duration::from_millis(150);
    })
    .await;
    setup.install(1).await;
    setup.install(2).await;
    let path = &setup.config;
    let original = std::fs::read_to_string(path).expect("config");
    write(
        path,
        &with_key(&original, "proxy", "max_in_flight_per_eshop", "3"),
    );
    let served = Served::start(path, "");
    let pid = served.pid();
    let http = TestClient::new();
    let auth = setup.client_auth();
    let peak = |eshop: u64| {
        setup
            .sim
            .stats()
            .eshops
            .get(&eshop)
            .map_or(0, |e| e.peak_concurrency)
    };

    burst(&http, &served, &auth, 1, 9).await;
    assert_eq!(peak(1), 3, "three at once before the reload");

    write(
        path,
        &with_key(&original, "proxy", "max_in_flight_per_eshop", "1"),
    );
    assert!(reload(&served));
    let reset = http
        .post_json(
            &format!("{}/sim/stats/reset", setup.sim.base_url()),
            &[],
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(reset.status, 200, "{}", reset.text());
    // E-shop 1's lane existed before the reload, e-shop 2's is new.
    tokio::join!(
        burst(&http, &served, &auth, 1, 6),
        burst(&http, &served, &auth, 2, 6)
    );
    assert_eq!((peak(1), peak(2)), (1, 1), "one at a time after the reload");
    still_running(&served, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_requires_the_new_client_key_and_applies_the_new_allowlist() {
    let addon = WebhookReceiver::start().await;
    let setup = Setup::new(&addon.url(""), "5s").await;
    let served = Served::start(&setup.config, "");
    let pid = served.pid();
    let http = TestClient::new();
    let old_auth = setup.client_auth();
    let proxied = |auth: String| {
        let url = format!("http://{}/eshops/1/api/eshop", served.proxy);
        let http = http.clone();
        async move {
            http.get(&url, &[("proxy-authorization", &auth)])
                .await
                .error_code()
        }
    };
    let webhook = || {
        let url = format!("http://{}/webhooks", served.public);
        let http = http.clone();
        async move {
            http.post_json(&url, &[], &serde_json::json!({"eshopId": 1, "event": "x"}))
                .await
                .error_code()
        }
    };
    assert_eq!(
        proxied(old_auth.clone()).await.as_deref(),
        Some("proxy-eshop-not-installed")
    );
    // `webhook_allow = []` lets every address in; the unsigned body is refused past the check.
    assert_ne!(webhook().await.as_deref(), Some("proxy-forbidden"));

    let new_key = "client-key-after-the-reload-0123456789";
    std::fs::write(setup.dir.path().join("client-keys"), format!("{new_key}\n")).expect("keys");
    let config = std::fs::read_to_string(&setup.config).expect("config");
    write(
        &setup.config,
        &config.replace("webhook_allow = []", r#"webhook_allow = ["192.0.2.0/24"]"#),
    );
    assert!(reload(&served));

    assert_eq!(
        proxied(old_auth).await.as_deref(),
        Some("proxy-unauthorized"),
        "the removed key no longer works"
    );
    assert_eq!(
        proxied(format!("Bearer {new_key}")).await.as_deref(),
        Some("proxy-eshop-not-installed")
    );
    assert_eq!(
        webhook().await.as_deref(),
        Some("proxy-forbidden"),
        "127.0.0.1 is outside the new allowlist"
    );
    still_running(&served, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_rotated_certificate_to_new_connections_only() {
    let addon = WebhookReceiver::start().await;
    let setup = Setup::new(&addon.url(""), "5s").await;
    let dir = setup.dir.path();
    let generate =
        || rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    let (first, second) = (generate(), generate());
    let install = |ck: &rcgen::CertifiedKey| {
        std::fs::write(dir.join("tls.crt"), ck.cert.pem()).expect("cert");
        std::fs::write(dir.join("tls.key"), ck.key_pair.serialize_pem()).expect("key");
    };
    install(&first);
    let config = std::fs::read_to_string(&setup.config).expect("config");
    let tls = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display()
    );
    write(
        &setup.config,
        &config.replace("[public]\n", &format!("[public]\n{tls}")),
    );
    let served = Served::start(&setup.config, "");
    let pid = served.pid();
    let http = TestClient::new();
    let url = format!("https://{}/install?code=nope", served.public);
    let answered = |client: TestClient| {
        let url = url.clone();
        async move {
            client
                .try_request(http::Method::GET, &url, &[], bytes::Bytes::new())
                .await
                .map(|r| r.status)
        }
    };
    // Kept open across the reload: its connection keeps the first certificate.
    let open = TestClient::with_ca_pem(&first.cert.pem());
    assert!(answered(open.clone()).await.is_ok());

    install(&second);
    assert!(reload(&served));
    assert!(
        answered(TestClient::with_ca_pem(&second.cert.pem()))
            .await
            .is_ok(),
        "a new connection gets the new certificate"
    );
    let refused = answered(TestClient::with_ca_pem(&first.cert.pem())).await;
    assert!(
        refused.is_err(),
        "a new connection no longer gets the old one"
    );
    assert!(
        answered(open).await.is_ok(),
        "the open connection keeps its certificate"
    );

    // A key that does not belong to the certificate: nothing changes, an error is counted.
    std::fs::write(dir.join("tls.crt"), first.cert.pem()).expect("cert");
    assert!(!reload(&served));
    assert!(answered(TestClient::with_ca_pem(&second.cert.pem()))
        .await
        .is_ok());
    assert_eq!(reloads(&http, &served, "error").await, 1);
    still_running(&served, pid);
}

/// The settings pages' keys apply too (SPEC B7 lists the addon URLs): `/settings` is off without
/// a `settings_url` and verifies logins once a reload sets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_turns_the_settings_pages_on_with_a_new_settings_url() {
    let addon = WebhookReceiver::start().await;
    let setup = Setup::new(&addon.url(""), "5s").await;
    let served = Served::start(&setup.config, "");
    let pid = served.pid();
    let http = TestClient::new();
    let page = format!("http://{}/settings?eshopId=1&language=cs", served.public);
    let r = http.get(&page, &[]).await;
    assert_eq!(r.status, 404, "off without settings_url: {}", r.text());
    assert!(r.text().contains("proxy-not-found"));

    let config = std::fs::read_to_string(&setup.config).expect("config");
    write(
        &setup.config,
        &with_key(
            &config,
            "addon",
            "settings_url",
            r#""http://127.0.0.1:9/settings""#,
        ),
    );
    assert!(reload(&served));
    let r = http.get(&page, &[]).await;
    // E-shop 1 is not installed: the pages are on, and refuse it.
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("proxy-settings-denied"), "{}", r.text());
    still_running(&served, pid);
}
