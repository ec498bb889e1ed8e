//! Metrics, health and the monitoring files (SPEC B7), against a proxy started in-process with
//! real listeners: a live `/metrics` scrape passes `promtool check metrics`, every metric the
//! Grafana dashboard and the alert rules name is exported, the rules pass `promtool check rules`
//! and their unit tests, and `/healthz`/`/readyz` answer as documented.

mod common;

use common::binary::Setup;
use shoptet_proxy::app::{self, Running};
use shoptet_proxy::config::Config;
use shoptet_proxy::sim::testing::{TestClient, WebhookReceiver};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const REQUIRE: &str = "SHOPTET_PROXY_REQUIRE_PROMTOOL";
const ESHOP: u64 = 424242;

/// Families SPEC B7 and issue 5 require.
const REQUIRED: &[&str] = &[
    "shoptet_proxy_requests_total",
    "shoptet_proxy_request_duration_seconds",
    "shoptet_proxy_upstream_duration_seconds",
    "shoptet_proxy_token_fetches_total",
    "shoptet_proxy_token_fetch_duration_seconds",
    "shoptet_proxy_replays_total",
    "shoptet_proxy_upstream_429_total",
    "shoptet_proxy_queue_length",
    "shoptet_proxy_queue_wait_seconds",
    "shoptet_proxy_upstream_in_flight",
    "shoptet_proxy_installations",
    "shoptet_proxy_webhooks_total",
    "shoptet_proxy_outbox_depth",
    "shoptet_proxy_build_info",
];

struct Harness {
    setup: Setup,
    _addon: WebhookReceiver,
    running: Running,
    http: TestClient,
}

/// `ESHOP` installed and a proxy started in-process from the binary's config file.
async fn start() -> Harness {
    let addon = WebhookReceiver::start().await;
    let setup = Setup::new(&addon.url(""), "5s").await;
    setup.install(ESHOP).await;
    let cfg = Config::load_from(Some(&setup.config), &[]).expect("config");
    let running = app::start(cfg, setup.store().await).await.expect("start");
    Harness {
        setup,
        _addon: addon,
        running,
        http: TestClient::new(),
    }
}

impl Harness {
    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr)
    }

    /// Some traffic: a normal call, a replay after revoked tokens, a not-installed e-shop.
    async fn traffic(&self, sim: &str) {
        let auth = self.setup.client_auth();
        let proxy = self.running.proxy_addr;
        for eshop in [ESHOP, ESHOP, ESHOP + 1] {
            let r = self
                .http
                .get(
                    &format!("http://{proxy}/eshops/{eshop}/api/eshop"),
                    &[("proxy-authorization", &auth)],
                )
                .await;
            assert!(r.status == 200 || r.status == 403, "{}", r.text());
            if eshop == ESHOP {
                self.http
                    .post_json(
                        &format!("{sim}/sim/eshops/{ESHOP}/revoke-tokens"),
                        &[],
                        &serde_json::json!({}),
                    )
                    .await;
            }
        }
    }

    async fn scrape(&self) -> String {
        let r = self.http.get(&self.admin("/metrics"), &[]).await;
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")));
        r.text()
    }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Families in a scrape, from its `# TYPE` lines.
fn families(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Every `shoptet_proxy_*` name in `text`, with histogram series suffixes removed.
fn names_in(text: &str) -> BTreeSet<String> {
    text.match_indices("shoptet_proxy_")
        .map(|(i, _)| {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .map_or(name.clone(), str::to_owned)
        })
        .collect()
}

/// Every `expr` and `query` string in the dashboard JSON.
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

fn promtool(args: &[&str], stdin: Option<&str>) -> Option<(bool, String)> {
    let promtool = common::binary::tool("promtool", REQUIRE)?;
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(repo("systemd"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("write to promtool");
    drop(input);
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_scrape_has_every_required_family_and_passes_promtool() {
    let h = start().await;
    h.traffic(&h.setup.sim.base_url()).await;
    let scrape = h.scrape().await;
    let found = families(&scrape);
    for name in REQUIRED {
        assert!(found.contains(*name), "{name} missing from the scrape");
    }
    assert!(scrape.contains(r#"shoptet_proxy_installations{status="active"} 1"#));
    assert!(scrape.contains("shoptet_proxy_replays_total{result=\"ok\"} 1"));
    assert!(scrape.contains("shoptet_proxy_errors_total{code=\"proxy-eshop-not-installed\"} 1"));
    assert!(
        !scrape.contains(&ESHOP.to_string()),
        "no e-shop id in any label"
    );
    if let Some((ok, report)) = promtool(&["check", "metrics"], Some(&scrape)) {
        println!("promtool check metrics: {:?}", report.trim());
        assert!(ok && report.trim().is_empty(), "promtool: {report}");
    }
    h.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_rules_name_only_exported_metrics() {
    let h = start().await;
    h.traffic(&h.setup.sim.base_url()).await;
    let exported = families(&h.scrape().await);
    h.running.shutdown().await;

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("systemd/grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("the dashboard is valid JSON");
    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    let dashboard_names = names_in(&exprs.join("\n"));
    let rules = std::fs::read_to_string(repo("systemd/alerts.yml")).expect("alerts");
    let rule_names = names_in(&rules);
    for name in dashboard_names.iter().chain(&rule_names) {
        assert!(exported.contains(name), "{name} is not an exported metric");
    }
    // The dashboard covers traffic, errors, latency, tokens, replays, 429s and the queue.
    for name in [
        "shoptet_proxy_requests_total",
        "shoptet_proxy_errors_total",
        "shoptet_proxy_request_duration_seconds",
        "shoptet_proxy_upstream_duration_seconds",
        "shoptet_proxy_token_fetches_total",
        "shoptet_proxy_replays_total",
        "shoptet_proxy_upstream_429_total",
        "shoptet_proxy_queue_length",
        "shoptet_proxy_queue_wait_seconds",
    ] {
        assert!(dashboard_names.contains(name), "the dashboard lacks {name}");
    }
    for name in [
        "shoptet_proxy_token_fetches_total",
        "shoptet_proxy_outbox_depth",
        "shoptet_proxy_requests_total",
        "shoptet_proxy_store_up",
    ] {
        assert!(rule_names.contains(name), "no alert on {name}");
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some((ok, report)) = promtool(&["check", "rules", "alerts.yml"], None) else {
        return;
    };
    println!("promtool check rules: {}", report.trim());
    assert!(ok && report.contains("SUCCESS"), "{report}");
    let Some((ok, report)) = promtool(&["test", "rules", "alerts.test.yml"], None) else {
        return;
    };
    assert!(ok && report.contains("SUCCESS"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_draining_and_healthz_stays_ok() {
    let h = start().await;
    let health = h.http.get(&h.admin("/healthz"), &[]).await;
    assert_eq!(
        (health.status.as_u16(), health.text().as_str()),
        (200, "ok\n")
    );
    let ready = h.http.get(&h.admin("/readyz"), &[]).await;
    assert_eq!(
        (ready.status.as_u16(), ready.text().as_str()),
        (200, "ready\n")
    );

    // The drain has begun; the admin listener serves until the others are done.
    h.running.app.shutdown.trigger();
    let ready = h.http.get(&h.admin("/readyz"), &[]).await;
    assert_eq!(
        (ready.status.as_u16(), ready.text().as_str()),
        (503, "draining\n")
    );
    assert_eq!(h.http.get(&h.admin("/healthz"), &[]).await.status, 200);
    let admin = h.running.admin_addr;
    h.running.wait().await;
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin listener closes last"
    );
}
