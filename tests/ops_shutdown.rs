//! Graceful shutdown of the real binary (SPEC B7): on SIGTERM it stops accepting, reports
//! not-ready, finishes every in-flight request and outbox delivery (or leaves it in the durable
//! outbox for the next start) and exits 0; SIGINT does the same.

mod common;

use common::binary::{Served, Setup};
use shoptet_proxy::sim::testing::{TestClient, WebhookReceiver};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const ESHOP: u64 = 777001;
const IN_FLIGHT: usize = 20;

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
    let addon = WebhookReceiver::start().await;
    let setup = Setup::with_sim(&addon.url(""), "10s", |c| c.per_token_concurrency = 0).await;
    setup.install(ESHOP).await;
    let served = Served::start_with(
        &setup.config,
        "info",
        &[("SHOPTET_PROXY_PROXY__MAX_IN_FLIGHT_PER_ESHOP", "20")],
    );
    let http = TestClient::new();
    let url = format!("http://{}/api/eshop", served.proxy);
    let admin = format!("http://{}", served.admin);
    let auth = setup.client_auth();
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

    terminate_and_await_draining(&served, &http, &admin).await;
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
async fn a_request_outlasting_shutdown_timeout_is_cut_and_the_exit_is_still_zero() {
    let addon = WebhookReceiver::start().await;
    let setup = Setup::new(&addon.url(""), "500ms").await;
    setup.install(ESHOP).await;
    let served = Served::start(&setup.config, "info");
    let http = TestClient::new();
    let admin = format!("http://{}", served.admin);
    let request = {
        let (http, url) = (http.clone(), format!("http://{}/api/eshop", served.proxy));
        let auth = setup.client_auth();
        tokio::spawn(async move {
            http.try_request(
                http::Method::GET,
                &url,
                &[
                    ("proxy-authorization", &auth),
                    ("x-shoptet-eshop-id", &ESHOP.to_string()),
                    ("x-sim-delay-ms", "30000"),
                ],
                bytes::Bytes::new(),
            )
            .await
        })
    };
    until("the request to be in flight upstream", || async {
        let m = http.get(&format!("{admin}/metrics"), &[]).await.text();
        gauge(&m, "shoptet_proxy_upstream_in_flight") == Some(1.0)
    })
    .await;
    let signalled = Instant::now();
    served.signal("TERM");
    let (status, _, err) = served.finish(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}: {err:?}");
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "exited after {took:?}, not after the request"
    );
    let cut = request.await.expect("request task");
    assert!(
        cut.as_ref().map_or(true, |r| r.status != 200),
        "the request was cut, not answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_once_listening_and_stopping_at_sigterm() {
    let addon = WebhookReceiver::start().await;
    let setup = Setup::new(&addon.url(""), "10s").await;
    let socket_path = setup.dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let served = Served::start_with(
        &setup.config,
        "info",
        &[("NOTIFY_SOCKET", socket_path.to_str().expect("utf-8 path"))],
    );
    let mut heard = Vec::new();
    let next = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    heard.push(next());
    assert!(heard[0].lines().any(|l| l == "READY=1"), "{heard:?}");
    // Ready means serving: the admin listener answers.
    let ready = TestClient::new()
        .get(&format!("http://{}/readyz", served.admin), &[])
        .await;
    assert_eq!(ready.status, 200);
    served.signal("TERM");
    while !heard
        .last()
        .is_some_and(|m| m.lines().any(|l| l == "STOPPING=1"))
    {
        heard.push(next());
    }
    let (status, _, err) = served.finish(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}: {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_an_idle_proxy_with_status_zero() {
    let addon = WebhookReceiver::start().await;
    let setup = Setup::new(&addon.url(""), "10s").await;
    let served = Served::start(&setup.config, "info");
    let proxy = served.proxy;
    served.signal("INT");
    let (status, _, err) = served.finish(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}: {err:?}");
    assert!(refused(proxy).await, "nothing listens after the exit");
}

/// The addon's endpoint: reports each request's body as it arrives and answers 200 only when
/// the test releases it (one permit per answer).
struct HeldAddon {
    url: String,
    arrived: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    release: std::sync::Arc<tokio::sync::Semaphore>,
}

impl HeldAddon {
    async fn start() -> HeldAddon {
        use http_body_util::BodyExt as _;
        let (tx, arrived) = tokio::sync::mpsc::unbounded_channel();
        let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let permits = release.clone();
        let url = common::stand_in(move |req: http::Request<hyper::body::Incoming>| {
            let (tx, permits) = (tx.clone(), permits.clone());
            async move {
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                let _ = tx.send(body.unwrap_or_default());
                if let Ok(p) = permits.acquire().await {
                    p.forget();
                }
                http::Response::new(http_body_util::Full::new(bytes::Bytes::new()))
            }
        })
        .await;
        HeldAddon {
            url,
            arrived,
            release,
        }
    }

    async fn next(&mut self) -> serde_json::Value {
        let body = tokio::time::timeout(Duration::from_secs(10), self.arrived.recv())
            .await
            .expect("a delivery within 10 s")
            .expect("the addon server runs");
        serde_json::from_slice(&body).expect("a JSON delivery")
    }
}

/// A proxy (`serve`) with `ESHOP` installed through its public listener, the "installed" event
/// taken, and a signed `addon:approve` webhook from the simulator arriving at the addon and held
/// there unanswered.
async fn webhook_held_at_the_addon() -> (Served, HeldAddon, Setup) {
    let mut addon = HeldAddon::start().await;
    let setup = Setup::new(&addon.url, "10s").await;
    let sim = &setup.sim;
    let served = Served::start(&setup.config, "info");
    let http = TestClient::new();
    let public = format!("http://{}", served.public);
    let r = http
        .post_json(
            &format!("{}/sim/eshops", sim.base_url()),
            &[],
            &serde_json::json!({"eshopId": ESHOP, "installUrl": format!("{public}/install")}),
        )
        .await;
    assert_eq!(r.json()["installStatus"], 200, "{}", r.text());
    assert_eq!(addon.next().await["event"], "installed");
    addon.release.add_permits(1);
    sim.set_config(|c| c.addon_webhook_url = Some(format!("{public}/webhooks")));
    let r = http
        .post_json(
            &format!("{}/sim/eshops/{ESHOP}/approve", sim.base_url()),
            &[],
            &serde_json::json!({}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    assert_eq!(addon.next().await["event"], "addon:approve");
    (served, addon, setup)
}

async fn outbox_depth(setup: &Setup) -> u64 {
    setup
        .store()
        .await
        .outbox_depth()
        .await
        .expect("outbox depth")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_delivery_in_flight_at_sigterm_completes_before_the_exit() {
    let (served, mut addon, setup) = webhook_held_at_the_addon().await;
    let http = TestClient::new();
    let admin = format!("http://{}", served.admin);

    terminate_and_await_draining(&served, &http, &admin).await;
    // Draining, with the delivery still unanswered: now the addon takes it.
    addon.release.add_permits(1);
    let (status, _, err) = served.finish(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}: {err:?}");
    assert_eq!(outbox_depth(&setup).await, 0, "delivered and recorded");
    assert!(addon.arrived.try_recv().is_err(), "delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_the_addon_never_answers_at_sigterm_is_delivered_after_the_restart() {
    let (served, mut addon, setup) = webhook_held_at_the_addon().await;
    served.signal("TERM");
    // The addon never answers this attempt; the proxy gives up on it (4 s) and exits anyway.
    let (status, _, err) = served.finish(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}: {err:?}");
    assert_eq!(outbox_depth(&setup).await, 1, "kept in the durable outbox");

    addon.release.add_permits(2);
    let served = Served::start(&setup.config, "info");
    assert_eq!(addon.next().await["event"], "addon:approve");
    until("the delivery to be recorded", || async {
        outbox_depth(&setup).await == 0
    })
    .await;
    served.signal("TERM");
    let (status, _, err) = served.finish(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}: {err:?}");
}

/// Sends SIGTERM and waits until the proxy is draining: `/readyz` says 503 and the proxy
/// listener refuses new connections.
async fn terminate_and_await_draining(served: &Served, http: &TestClient, admin: &str) {
    served.signal("TERM");
    until("/readyz to report draining", || async {
        http.get(&format!("{admin}/readyz"), &[]).await.status == 503
    })
    .await;
    until("the proxy listener to refuse connections", || {
        refused(served.proxy)
    })
    .await;
}
