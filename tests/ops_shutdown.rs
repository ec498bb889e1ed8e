//! Graceful shutdown of the real binary (SPEC B7): on SIGTERM it stops accepting, reports
//! not-ready, finishes every in-flight request and exits 0; SIGINT does the same.

mod ops_support;

use ops_support::{Secrets, Served};
use shoptet_proxy::secret::Secret;
use shoptet_proxy::sim::testing::{TestClient, WebhookReceiver};
use shoptet_proxy::sim::Simulator;
use shoptet_proxy::store::{Keyring, NewInstallation, Store};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const ESHOP: u64 = 777001;
const IN_FLIGHT: usize = 20;

/// Stores an installation of `ESHOP` with `oauth_token` before the proxy starts.
async fn install(dir: &Path, oauth_token: String) {
    let store = Store::open(
        &format!("sqlite://{}", dir.join("store.db").display()),
        Keyring::load(&dir.join("store.key"), &[]).expect("key"),
    )
    .await
    .expect("store");
    store
        .upsert_installation(
            &NewInstallation {
                eshop_id: ESHOP,
                eshop_url: None,
                contact_email: None,
                oauth_token: Secret::new(oauth_token),
            },
            None,
        )
        .await
        .expect("install");
}

/// Polls `check` until it holds, failing after 5 s: waiting for an observable event, not for time.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn refused(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_sigterm_all_complete_and_the_exit_is_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = Secrets::generate();
    let mut sim_cfg = ops_support::sim_config(&secrets);
    sim_cfg.per_token_concurrency = 0;
    let sim = Simulator::start(sim_cfg, ([127, 0, 0, 1], 0).into())
        .await
        .expect("simulator");
    let inst = sim.create_eshop(ESHOP);
    let addon = WebhookReceiver::start().await;
    let config =
        ops_support::write_config(dir.path(), &sim.base_url(), &addon.url(""), &secrets, "10s");
    install(dir.path(), inst.oauth_token.clone()).await;
    let served = Served::start_with(
        &config,
        "info",
        &[("SHOPTET_PROXY_PROXY__MAX_IN_FLIGHT_PER_ESHOP", "20")],
    );
    let http = TestClient::new();
    let url = format!("http://{}/api/eshop", served.proxy);
    let admin = format!("http://{}", served.admin);
    let auth = format!("Bearer {}", secrets.client_key);
    let eshop = ESHOP.to_string();

    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (http, url, auth, eshop) = (http.clone(), url.clone(), auth.clone(), eshop.clone());
            tokio::spawn(async move {
                http.try_request(
                    http::Method::GET,
                    &url,
                    &[
                        ("proxy-authorization", &auth),
                        ("x-shoptet-eshop-id", &eshop),
                        ("x-sim-delay-ms", "1000"),
                    ],
                    bytes::Bytes::new(),
                )
                .await
            })
        })
        .collect();
    until("every request to be in flight upstream", || async {
        let m = http.get(&format!("{admin}/metrics"), &[]).await.text();
        gauge(&m, "shoptet_proxy_upstream_in_flight") == Some(IN_FLIGHT as f64)
    })
    .await;
    let ready = http.get(&format!("{admin}/readyz"), &[]).await;
    assert_eq!(ready.status, 200, "ready before the signal");

    served.signal("TERM");
    until("/readyz to report draining", || async {
        http.get(&format!("{admin}/readyz"), &[]).await.status == 503
    })
    .await;
    until("the proxy listener to refuse connections", || {
        refused(served.proxy)
    })
    .await;
    let metrics = http.get(&format!("{admin}/metrics"), &[]).await.text();
    assert_eq!(
        gauge(&metrics, "shoptet_proxy_upstream_in_flight"),
        Some(IN_FLIGHT as f64),
        "refusing new connections while the old requests are still in flight"
    );

    for r in requests {
        let r = r.await.expect("request task");
        match r {
            Ok(r) => assert_eq!(r.status, 200, "{}", r.text()),
            Err(e) => served.fail(&format!("an in-flight request was cut: {e}")),
        }
    }
    let (status, out, _) = served.finish(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
    assert!(
        out.iter().any(|l| l.contains("shutting down")),
        "the drain is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_an_idle_proxy_with_status_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = Secrets::generate();
    let sim = Simulator::start(
        ops_support::sim_config(&secrets),
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .expect("simulator");
    let addon = WebhookReceiver::start().await;
    let config =
        ops_support::write_config(dir.path(), &sim.base_url(), &addon.url(""), &secrets, "10s");
    let served = Served::start(&config, "info");
    let proxy = served.proxy;
    served.signal("INT");
    let (status, _, err) = served.finish(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}: {err:?}");
    assert!(refused(proxy).await, "nothing listens after the exit");
}
