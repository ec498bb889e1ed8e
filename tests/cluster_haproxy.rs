//! Three replicas of the real binary on one PostgreSQL store behind HAProxy running the shipped
//! `systemd/haproxy.cfg` (SPEC B10): consistent hashing on the e-shop id keeps Shoptet's
//! per-e-shop limits across replicas, and a replica killed under load costs no GET, no token and
//! no duplicate POST. Needs `SHOPTET_PROXY_TEST_PG_URL` (tests/pg.sh) and `haproxy`; without them
//! the tests report "skipped", unless `SHOPTET_PROXY_REQUIRE_PG=1` / `SHOPTET_PROXY_REQUIRE_HAPROXY=1`
//! (tests/run.sh) make that a failure.
//!
//! `SHOPTET_PROXY_CLUSTER_SECS` sets the measured window of the drain-rate test and of the
//! ignored throughput benchmark (10 s by default; benches/cluster.sh runs both for 30 s in
//! release mode and prints the figures).

mod common;

use common::cluster::{server_name, Cluster, REPLICAS};
use common::load::{fire_at, Clients, Load, Target};
use serde_json::json;
use shoptet_proxy::sim::testing::TestClient;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ESHOP: u64 = 222651;
const CLIENTS: usize = 30;
/// The first burst fills the simulator's small bucket; the rate is measured after it.
const BURST: Duration = Duration::from_secs(1);
const DRAIN: u32 = 10;

fn window() -> Duration {
    let secs = std::env::var("SHOPTET_PROXY_CLUSTER_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(secs)
}

/// 30 clients on one e-shop through HAProxy, tagging by header and by path in turn, for `run`.
async fn flood(c: &Cluster, run: Duration) -> Load {
    let clients = Clients {
        eshop: ESHOP,
        clients: CLIENTS,
        duration: run,
        gap: Duration::ZERO,
        sizes: &[0],
    };
    fire_at(&c.h.http, &c.targets(ESHOP), clients).await
}

/// Both spellings of the e-shop reached one replica, which alone kept Shoptet's limits.
async fn assert_one_replica_one_token(c: &Cluster) {
    let stats = c.h.sim.stats();
    assert!(
        stats.peak_concurrency_per_token <= 3,
        "{} in flight on one token",
        stats.peak_concurrency_per_token
    );
    assert_eq!(stats.status429, 0, "the simulator answered 429");
    assert_eq!(stats.calls.get_access_token, 1);
    let by = c.owners(ESHOP).await;
    assert_eq!(by.len(), 1, "e-shop served by replicas {by:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_clients_of_one_eshop_stay_within_its_shoptet_limits() {
    let Some(c) = Cluster::start(|s| {
        s.bucket = false;
        s.latency = Duration::from_millis(10);
    })
    .await
    else {
        return;
    };
    c.install(&[ESHOP]).await;
    let load = flood(&c, Duration::from_secs(3)).await;
    assert_eq!(load.failures(), 0);
    assert!(load.ok() > 100, "only {} answered", load.ok());
    assert_one_replica_one_token(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_bucket_on_the_cluster_runs_at_the_drain_rate_without_a_429() {
    let Some(c) = Cluster::start(|s| {
        s.bucket_capacity = 30;
        s.bucket_drain_per_sec = DRAIN;
    })
    .await
    else {
        return;
    };
    c.install(&[ESHOP]).await;
    let window = window();
    let load = flood(&c, BURST + window).await;
    assert_eq!(load.failures(), 0);
    assert_one_replica_one_token(&c).await;
    assert_eq!(c.metric("shoptet_proxy_bucket_429_total").await, 0.0);
    let rate = load.rate(BURST);
    println!(
        "cluster drain: {rate:.2} requests/s over {window:?}, {:.0} % of the drain rate",
        rate * 100.0 / f64::from(DRAIN)
    );
    assert!(
        rate >= 0.9 * f64::from(DRAIN),
        "{rate:.2} requests/s after the burst, drain {DRAIN}/s ({} answered)",
        load.ok()
    );
}

const ESHOPS: [u64; 6] = [7101, 7102, 7103, 7104, 7105, 7106];
/// GET clients per e-shop; each e-shop also has one client creating orders.
const GETTERS: usize = 2;

#[derive(Default)]
struct Tally {
    gets: AtomicU64,
    get_failures: Mutex<Vec<String>>,
    /// Order emails whose POST was answered 201, per e-shop.
    created: Mutex<BTreeMap<u64, Vec<String>>>,
    posts: AtomicU64,
    post_failures: AtomicU64,
    stop: AtomicBool,
}

/// GETs for `eshop` through HAProxy until stopped, tagging by header and path in turn; every one
/// must be answered 200.
async fn getter(http: TestClient, targets: Vec<Target>, tally: Arc<Tally>) {
    let mut n = 0;
    while !tally.stop.load(Ordering::Relaxed) {
        n += 1;
        let t = &targets[n % targets.len()];
        let headers = t.header_refs();
        match http
            .try_request(http::Method::GET, &t.url, &headers, "")
            .await
        {
            Ok(r) if r.status == 200 => {
                tally.gets.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => tally.get_failures.lock().expect("failures").push(format!(
                "{}: {} {}",
                t.url,
                r.status,
                r.text()
            )),
            Err(e) => tally
                .get_failures
                .lock()
                .expect("failures")
                .push(format!("{}: {e}", t.url)),
        }
    }
}

/// Orders for `eshop`, each with a unique email; a POST may fail when its replica dies.
async fn poster(http: TestClient, lb_url: String, eshop: u64, tally: Arc<Tally>) {
    let url = format!("{lb_url}/eshops/{eshop}/api/orders");
    let mut n = 0;
    while !tally.stop.load(Ordering::Relaxed) {
        n += 1;
        let email = format!("cluster-{eshop}-{n}@example.com");
        let body = json!({"data": {"email": email}}).to_string();
        tally.posts.fetch_add(1, Ordering::Relaxed);
        let headers = [("content-type", "application/json")];
        match http
            .try_request(http::Method::POST, &url, &headers, body)
            .await
        {
            Ok(r) if r.status == 201 => tally
                .created
                .lock()
                .expect("created")
                .entry(eshop)
                .or_default()
                .push(email),
            _ => {
                tally.post_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Waits until the GET clients have had `n` more answers.
async fn more_gets(tally: &Tally, n: u64) {
    let target = tally.gets.load(Ordering::Relaxed) + n;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tally.gets.load(Ordering::Relaxed) < target {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the clients made no progress: {:?}",
            tally.get_failures.lock().expect("failures")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_costs_no_get_no_token_and_no_duplicate_post() {
    replica_leaves_under_load("KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_draining_on_sigterm_costs_no_get_no_token_and_no_duplicate_post() {
    replica_leaves_under_load("TERM").await;
}

/// Load over 6 e-shops through HAProxy; the replica holding the most of them gets `signal`.
async fn replica_leaves_under_load(signal: &str) {
    let Some(mut c) = Cluster::start(|s| {
        s.bucket_capacity = 30;
        s.latency = Duration::from_millis(5);
    })
    .await
    else {
        return;
    };
    c.install(&ESHOPS).await;
    for id in ESHOPS {
        let t = &c.targets(id)[0];
        let r = c.h.http.get(&t.url, &t.header_refs()).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(c.h.sim.stats().calls.get_access_token, ESHOPS.len() as u64);
    // The victim is the replica holding the most e-shops.
    let mut owner = BTreeMap::new();
    for id in ESHOPS {
        let by = c.owners(id).await;
        assert_eq!(by.len(), 1, "e-shop {id} served by {by:?}");
        owner.insert(id, by[0]);
    }
    let victim = (0..3)
        .max_by_key(|i| owner.values().filter(|o| *o == i).count())
        .expect("a replica");
    let moved: Vec<u64> = ESHOPS
        .into_iter()
        .filter(|id| owner[id] == victim)
        .collect();

    let tally = Arc::new(Tally::default());
    let mut tasks = tokio::task::JoinSet::new();
    for id in ESHOPS {
        for _ in 0..GETTERS {
            tasks.spawn(getter(c.h.http.clone(), c.targets(id), tally.clone()));
        }
        tasks.spawn(poster(
            c.h.http.clone(),
            c.lb_url.clone(),
            id,
            tally.clone(),
        ));
    }
    more_gets(&tally, 200).await;
    let exit = c.stop(victim, signal);
    if signal == "TERM" {
        assert!(exit.success(), "exit after SIGTERM: {exit}");
    }
    let name = server_name(victim);
    c.wait_until("victim DOWN", |s| {
        s.iter().any(|s| s.name == name && s.status == "DOWN")
    })
    .await;
    more_gets(&tally, 200).await;
    tally.stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let failures = tally.get_failures.lock().expect("failures").clone();
    assert!(failures.is_empty(), "GETs failed: {failures:?}");

    assert_eq!(
        c.h.sim.stats().calls.get_access_token,
        ESHOPS.len() as u64,
        "the failover minted a token"
    );
    for id in &moved {
        // Panics when no surviving replica took it over.
        c.owners(*id).await;
    }
    assert_eq!(c.metric("shoptet_proxy_bucket_429_total").await, 0.0);
    let created = tally.created.lock().expect("created").clone();
    for id in ESHOPS {
        let tag = id.to_string();
        let emails: Vec<String> =
            common::order_emails(&c.h.http, &c.lb_url, &[("x-shoptet-eshop-id", &tag)])
                .await
                .into_iter()
                .filter(|e| e.starts_with("cluster-"))
                .collect();
        let unique: HashSet<&String> = emails.iter().collect();
        assert_eq!(
            unique.len(),
            emails.len(),
            "e-shop {id}: an order was created twice"
        );
        for e in created.get(&id).into_iter().flatten() {
            assert!(
                unique.contains(e),
                "e-shop {id}: {e} answered 201 but not stored"
            );
        }
    }
    println!(
        "{signal} {}: {} GETs answered, {} POSTs ({} failed), e-shops moved {moved:?}, HAProxy {:?}",
        server_name(victim),
        tally.gets.load(Ordering::Relaxed),
        tally.posts.load(Ordering::Relaxed),
        tally.post_failures.load(Ordering::Relaxed),
        c.servers().await
    );
}

/// The simulator's counters of `eshop`: API calls and orders created.
fn eshop_counts(c: &Cluster, eshop: u64) -> (u64, u64) {
    let stats = c.h.sim.stats();
    let e = stats.eshops.get(&eshop).cloned().unwrap_or_default();
    (e.api_calls, e.orders_created)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_on_a_killed_replica_a_get_is_retried_a_post_is_not_resent() {
    let Some(mut c) = Cluster::start(|_| {}).await else {
        return;
    };
    c.install(&[ESHOP]).await;
    let get = c.targets(ESHOP).swap_remove(0);
    let warm = c.h.http.get(&get.url, &get.header_refs()).await;
    assert_eq!(warm.status, 200, "{}", warm.text());
    let owner = c.owners(ESHOP).await;
    assert_eq!(owner.len(), 1, "served by {owner:?}");

    // Both reach Shoptet (the order is created on arrival) and wait there for their answers.
    let slow = [
        ("x-sim-delay-ms", "3000"),
        ("content-type", "application/json"),
    ];
    let get_task = {
        let (http, url) = (c.h.http.clone(), get.url.clone());
        let mut headers = get.headers.clone();
        headers.extend(slow.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        tokio::spawn(async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            http.try_request(http::Method::GET, &url, &h, "").await
        })
    };
    let post_task = {
        let (http, url) = (
            c.h.http.clone(),
            c.lb_url(&format!("/eshops/{ESHOP}/api/orders")),
        );
        let body = json!({"data": {"email": "in-flight@example.com"}}).to_string();
        tokio::spawn(async move {
            http.try_request(http::Method::POST, &url, &slow, body)
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while eshop_counts(&c, ESHOP) != (3, 1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow requests did not arrive: {:?}",
            eshop_counts(&c, ESHOP)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.stop(owner[0], "KILL");

    let got = get_task.await.expect("GET task").expect("GET answered");
    assert_eq!(got.status, 200, "the GET was not retried: {}", got.text());
    let posted = post_task.await.expect("POST task");
    let status = posted.as_ref().map(|r| r.status.as_u16());
    assert!(
        matches!(status, Ok(500..=599) | Err(_)),
        "the POST's replica died before answering, so only a second send could answer {status:?}"
    );
    assert_eq!(
        eshop_counts(&c, ESHOP),
        (4, 1),
        "the GET was sent twice, the POST once"
    );
    assert_eq!(c.h.sim.stats().calls.get_access_token, 1);
}

/// E-shops and clients of the throughput benchmark: two clients per e-shop.
const BENCH_ESHOPS: u64 = 30;

/// Not a check but the figures benches/cluster.sh prints: requests a second through HAProxy
/// over many e-shops (the simulator's bucket off, its 3-per-token limit on), each replica's share,
/// getAccessToken calls and 429s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: benches/cluster.sh"]
async fn cluster_throughput_benchmark() {
    let Some(c) = Cluster::start(|s| s.bucket = false).await else {
        return;
    };
    let eshops: Vec<u64> = (0..BENCH_ESHOPS).map(|i| 9001 + i).collect();
    c.install(&eshops).await;
    let run = window();
    let loads = futures_util::future::join_all(eshops.iter().map(|&id| {
        let clients = Clients {
            eshop: id,
            clients: 2,
            duration: run,
            gap: Duration::ZERO,
            sizes: &[0],
        };
        let targets = c.targets(id);
        let http = c.h.http.clone();
        async move { fire_at(&http, &targets, clients).await }
    }))
    .await;
    let ok: usize = loads.iter().map(Load::ok).sum();
    let failed: usize = loads.iter().map(Load::failures).sum();
    let per_replica: Vec<usize> = (0..REPLICAS).map(|i| c.access(i, None).len()).collect();
    let total: usize = per_replica.iter().sum::<usize>().max(1);
    let shares: Vec<String> = per_replica
        .iter()
        .map(|n| format!("{:.0} %", *n as f64 * 100.0 / total as f64))
        .collect();
    let stats = c.h.sim.stats();
    println!(
        "cluster throughput: {:.0} requests/s over {run:?} ({ok} answered 200, {failed} not), \
         {BENCH_ESHOPS} e-shops, replica shares {shares:?}, getAccessToken {}, upstream 429s {}, \
         peak in flight per token {}",
        ok as f64 / run.as_secs_f64(),
        stats.calls.get_access_token,
        stats.status429,
        stats.peak_concurrency_per_token
    );
}
