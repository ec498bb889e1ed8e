//! The real binary's log output at `RUST_LOG=trace` (SPEC B7): every stdout line is one JSON
//! object, each proxied request gets one access line with the documented fields, and no secret
//! (OAuth token, API token, client secret, webhook signature key, store key, admin token, client
//! key) appears anywhere in stdout or stderr, error paths included.

mod common;

use common::binary::{Secrets, Served, Setup};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use shoptet_proxy::sim::testing::{TestClient, WebhookReceiver};
use std::time::Duration;

const ESHOP: u64 = 314159;
/// An e-shop imported with an OAuth token Shoptet does not know: every token fetch fails.
const BAD_ESHOP: u64 = 271828;

/// Whether `text` holds something shaped like a simulator API token: `<id>-a-<n>-<32 alnum>`.
fn holds_api_token(text: &str) -> bool {
    text.match_indices("-a-").any(|(i, _)| {
        let rest = &text[i + 3..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0
            && rest[digits..].starts_with('-')
            && rest[digits + 1..]
                .bytes()
                .take(32)
                .filter(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                .count()
                == 32
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_are_json_with_access_lines_and_never_hold_a_secret() {
    let mut addon = WebhookReceiver::start().await;
    let setup = Setup::new(&addon.url(""), "5s").await;
    let secrets = &setup.secrets;
    let served = Served::start(&setup.config, "trace");
    let http = TestClient::new();
    let sim_url = setup.sim.base_url();
    let proxy = format!("http://{}", served.proxy);
    let admin = format!("http://{}", served.admin);
    let auth = setup.client_auth();
    let eshop = ESHOP.to_string();
    let as_addon = [
        ("proxy-authorization", auth.as_str()),
        ("x-shoptet-eshop-id", eshop.as_str()),
    ];

    // An installation through the public listener, as Shoptet does it.
    let installed = http
        .post_json(
            &format!("{sim_url}/sim/eshops"),
            &[],
            &json!({"eshopId": ESHOP, "installUrl": format!("http://{}/install", served.public)}),
        )
        .await
        .json();
    if installed["installStatus"] != 200 {
        served.fail(&format!("install: {installed}"));
    }
    let code = installed["code"].as_str().expect("code").to_owned();
    let event = addon.next().await;
    assert_eq!(event.path_and_query, "/events");

    // A normal call, then one that is replayed after its token was revoked.
    let r = http
        .get(&format!("{proxy}/api/eshop?include=x"), &as_addon)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    http.post_json(
        &format!("{sim_url}/sim/eshops/{ESHOP}/revoke-tokens"),
        &[],
        &json!({}),
    )
    .await;
    let r = http
        .get(
            &format!("{proxy}/eshops/{ESHOP}/api/orders?page=1&itemsPerPage=5"),
            &as_addon[..1],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Error paths: a wrong client key, and an imported e-shop whose token fetches fail.
    let r = http
        .get(
            &format!("{proxy}/api/eshop"),
            &[
                ("proxy-authorization", "Bearer wrong-key"),
                ("x-shoptet-eshop-id", &eshop),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let bogus_oauth = format!("bogus-oauth-token-{}", secrets.client_key);
    let admin_auth = format!("Bearer {}", secrets.admin_token);
    let r = http
        .send_json(
            Method::PUT,
            &format!("{admin}/admin/eshops/{BAD_ESHOP}"),
            &[("authorization", &admin_auth)],
            &json!({"access_token": bogus_oauth}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "import: {}", r.text());
    let r = http
        .get(
            &format!("{proxy}/eshops/{BAD_ESHOP}/api/eshop"),
            &as_addon[..1],
        )
        .await;
    assert_eq!(
        r.error_code().as_deref(),
        Some("proxy-oauth-token-rejected")
    );

    // A signed webhook (addon:suspend) verified and delivered to the addon.
    setup
        .sim
        .set_config(|c| c.addon_webhook_url = Some(format!("http://{}/webhooks", served.public)));
    let r = http
        .post_json(
            &format!("{sim_url}/sim/eshops/{ESHOP}/suspend"),
            &[],
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "suspend: {}", r.text());
    let hook = addon.next().await;
    assert_eq!(hook.path_and_query, "/webhooks");
    let r = http.get(&format!("{proxy}/api/eshop"), &as_addon).await;
    assert_eq!(r.error_code().as_deref(), Some("proxy-eshop-suspended"));

    served.signal("TERM");
    let (status, out, err) = served.finish(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}; stderr: {err:?}");

    // Every secret the proxy held: read back from its store after it stopped.
    let inst = setup
        .store()
        .await
        .get(ESHOP)
        .await
        .expect("get")
        .expect("installed");
    let mut forbidden = secrets.all();
    forbidden.push(inst.oauth_token.expose().to_owned());
    forbidden.push(installed["oauthToken"].as_str().expect("oauth").to_owned());
    forbidden.push(code);
    forbidden.push(bogus_oauth);
    forbidden.push(
        inst.signature_key
            .as_ref()
            .expect("signature key obtained at installation")
            .expose()
            .to_owned(),
    );
    forbidden.push(
        inst.access_token
            .as_ref()
            .expect("API token stored")
            .token
            .expose()
            .to_owned(),
    );

    let everything = out.iter().chain(err.iter());
    for line in everything {
        for secret in &forbidden {
            assert!(!line.contains(secret.as_str()), "a secret leaked: {line}");
        }
        assert!(!holds_api_token(line), "an API token leaked: {line}");
    }
    let parsed = json_lines(&out, "stdout");
    json_lines(&err, "stderr");
    for message in [
        "listening",
        "shutting down: draining in-flight requests",
        "stopped",
    ] {
        assert!(
            parsed.iter().any(|v| v["message"] == message),
            "start-up and shutdown are logged as JSON too: {message}"
        );
    }
    assert!(
        parsed.len() > 10,
        "trace level logs a lot: {}",
        parsed.len()
    );
    assert!(
        parsed.iter().any(|v| v["level"] == "TRACE"),
        "RUST_LOG=trace reached the subscriber"
    );

    let access: Vec<&Value> = parsed.iter().filter(|v| v["target"] == "access").collect();
    assert_eq!(access.len(), 5, "one access line per proxied request");
    for line in &access {
        for field in [
            "method",
            "path",
            "status",
            "total_ms",
            "upstream_ms",
            "queued_ms",
            "replayed",
        ] {
            assert!(!line[field].is_null(), "access line lacks {field}: {line}");
        }
    }
    let replayed = access
        .iter()
        .find(|l| l["replayed"] == true)
        .expect("the replayed request's access line");
    let path = replayed["path"].as_str().expect("path");
    assert!(
        path.ends_with("/api/orders") && !path.contains('?'),
        "path without query: {path}"
    );
    assert_eq!(replayed["eshop_id"], ESHOP);
    assert_eq!(replayed["status"], 200);
    assert!(replayed["request_id"].is_string(), "upstream X-Request-ID");
    let first = access[0];
    assert_eq!(first["path"], "/api/eshop");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["replayed"], false);
}

/// Every line parsed as one JSON object; panics naming the stream and the line otherwise.
fn json_lines(lines: &[String], stream: &str) -> Vec<Value> {
    lines
        .iter()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(v) if v.is_object() => v,
            _ => panic!("{stream} line is not a JSON object: {l}"),
        })
        .collect()
}

/// Runs `serve` with `config` (in its directory, no inherited overrides) until it exits, as it
/// must when it cannot start; returns the status and the stdout and stderr lines.
fn serve_until_exit(
    config: &std::path::Path,
) -> (std::process::ExitStatus, Vec<String>, Vec<String>) {
    let mut cmd = common::binary::command(config.parent().expect("config dir"));
    cmd.arg("serve").arg("--config").arg(config);
    let out = cmd.output().expect("run serve");
    let lines = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    (out.status, lines(&out.stdout), lines(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_json_logs_even_a_failed_start_prints_only_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = Secrets::generate();
    let config = common::binary::write_config(
        dir.path(),
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        &secrets,
        "5s",
    );
    let valid = std::fs::read_to_string(&config).expect("config");

    // The proxy port is taken: the configuration is valid, binding fails.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let busy = valid.replacen(
        "[proxy]\nlisten = \"127.0.0.1:0\"",
        &format!("[proxy]\nlisten = \"127.0.0.1:{port}\""),
        1,
    );
    assert_ne!(busy, valid);
    std::fs::write(&config, busy).expect("write config");
    let (status, out, err) = serve_until_exit(&config);
    assert_eq!(status.code(), Some(1), "stderr: {err:?}");
    json_lines(&out, "stdout");
    let errors = json_lines(&err, "stderr");
    assert!(
        errors.iter().any(|v| v["level"] == "ERROR"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains(&port.to_string()))),
        "the bind failure is reported: {err:?}"
    );

    // An unknown key: the configuration is invalid, yet it asked for JSON and gets it.
    std::fs::write(&config, format!("{valid}\n[proxy_typo]\nx = 1\n")).expect("write config");
    let (status, out, err) = serve_until_exit(&config);
    assert_eq!(status.code(), Some(2), "stderr: {err:?}");
    assert!(out.is_empty(), "{out:?}");
    let errors = json_lines(&err, "stderr");
    assert!(
        errors.iter().any(|v| v["message"]
            .as_str()
            .is_some_and(|m| m.contains("proxy_typo"))),
        "the unknown key is named: {err:?}"
    );
    for line in out.iter().chain(&err) {
        for secret in secrets.all() {
            assert!(!line.contains(&secret), "a secret leaked: {line}");
        }
    }
    drop(taken);
}

#[test]
fn the_api_token_detector_finds_tokens_and_nothing_else() {
    assert!(holds_api_token(
        "x 314159-a-12-abcdefghijklmnopqrstuvwxyz012345 y"
    ));
    assert!(!holds_api_token("314159-a-12"));
    assert!(!holds_api_token("x-a-b-abcdefghijklmnopqrstuvwxyz012345"));
}
