//! Proxy overhead: the same keep-alive GET load sent straight to the simulator and through the
//! proxy, side by side in one run (SPEC B2, issue 3).
//!
//! The simulator runs with every limit off (no bucket, no concurrency caps, no token cap) and the
//! proxy with its concurrency limits opened to the load, so what is measured is forwarding cost,
//! not Shoptet's rules. Each criterion iteration is a batch of `CONCURRENCY` concurrent GETs
//! (`/api/eshop`) over pooled keep-alive connections; besides criterion's batch times, every
//! request's latency is recorded and a summary line per target gives req/s, p50 and p99.
//!
//! Run: `cargo bench --bench proxy`. The release profile's fat LTO makes that first build slow;
//! `CARGO_PROFILE_BENCH_LTO=off CARGO_PROFILE_BENCH_CODEGEN_UNITS=16` trades a little speed for a
//! much quicker build when comparing changes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::future::join_all;
use shoptet_proxy::app;
use shoptet_proxy::config::Config;
use shoptet_proxy::secret::Secret;
use shoptet_proxy::sim::testing::TestClient;
use shoptet_proxy::sim::{SimConfig, Simulator};
use shoptet_proxy::store::{Keyring, NewInstallation, Store};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ESHOP: u64 = 222651;
/// Concurrent requests per batch: a busy addon, within Shoptet's 50-per-IP limit.
const CONCURRENCY: usize = 32;

/// One load target: a URL and the headers that make a request to it valid.
struct Target {
    name: &'static str,
    url: String,
    headers: Vec<(&'static str, String)>,
    latencies: Mutex<Vec<Duration>>,
    busy: Mutex<Duration>,
}

impl Target {
    async fn batch(&self, client: &TestClient) -> Duration {
        let headers: Vec<(&str, &str)> =
            self.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let started = Instant::now();
        let times = join_all((0..CONCURRENCY).map(|_| async {
            let t = Instant::now();
            let r = client.get(&self.url, &headers).await;
            assert_eq!(r.status, 200, "{}: {}", self.name, r.text());
            t.elapsed()
        }))
        .await;
        let took = started.elapsed();
        if let Ok(mut l) = self.latencies.lock() {
            l.extend(times);
        }
        if let Ok(mut b) = self.busy.lock() {
            *b += took;
        }
        took
    }

    fn report(&self) {
        let mut l = self.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        let busy = self.busy.lock().map(|b| *b).unwrap_or_default();
        if l.is_empty() || busy.is_zero() {
            return;
        }
        l.sort();
        let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
        println!(
            "{:>7}: {:>8.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  ({} requests, {} concurrent)",
            self.name,
            l.len() as f64 / busy.as_secs_f64(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            l.len(),
            CONCURRENCY,
        );
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let sim_cfg = SimConfig {
        bucket: false,
        per_token_concurrency: 0,
        per_ip_concurrency: 0,
        token_cap: 0,
        ..SimConfig::default()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let (sim, running, client, targets) = rt.block_on(async {
        let sim = Simulator::start(sim_cfg.clone(), loopback)
            .await
            .expect("simulator");
        let inst = sim.create_eshop(ESHOP);
        let mut cfg = Config::load_from(None, &[]).expect("default config");
        let url: url::Url = sim.base_url().parse().expect("simulator URL");
        cfg.shoptet.api_url = url.clone();
        cfg.shoptet.partner_url = url;
        cfg.shoptet.client_id = sim_cfg.client_id.clone();
        cfg.shoptet.client_secret = Some(Secret::new(sim_cfg.client_secret.clone()));
        cfg.proxy.listen = loopback;
        cfg.admin.listen = loopback;
        cfg.proxy.max_in_flight_per_eshop = CONCURRENCY;
        cfg.proxy.max_in_flight = CONCURRENCY;
        cfg.proxy.bucket_pacing = false;
        cfg.store.url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let store = Store::open(&cfg.store.url, Keyring::generate())
            .await
            .expect("store");
        store
            .upsert_installation(
                &NewInstallation {
                    eshop_id: ESHOP,
                    eshop_url: None,
                    contact_email: None,
                    oauth_token: Secret::new(inst.oauth_token.clone()),
                },
                None,
            )
            .await
            .expect("install");
        let running = app::start(cfg, store).await.expect("proxy");
        let client = TestClient::new();
        let token = client.api_token(&sim.base_url(), &inst.oauth_token).await;
        let direct = Target {
            name: "direct",
            url: format!("{}/api/eshop", sim.base_url()),
            headers: vec![("shoptet-access-token", token)],
            latencies: Mutex::default(),
            busy: Mutex::default(),
        };
        let proxied = Target {
            name: "proxy",
            url: format!("http://{}/api/eshop", running.proxy_addr),
            headers: vec![("x-shoptet-eshop-id", ESHOP.to_string())],
            latencies: Mutex::default(),
            busy: Mutex::default(),
        };
        (sim, running, client, [Arc::new(direct), Arc::new(proxied)])
    });

    let mut group = c.benchmark_group("keep_alive_get");
    group.throughput(Throughput::Elements(CONCURRENCY as u64));
    for t in &targets {
        // Warm the pools (and the proxy's token) outside the measurement.
        rt.block_on(t.batch(&client));
        if let Ok(mut l) = t.latencies.lock() {
            l.clear();
        }
        if let Ok(mut b) = t.busy.lock() {
            *b = Duration::ZERO;
        }
        group.bench_function(t.name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let t = t.clone();
                let client = client.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += t.batch(&client).await;
                    }
                    total
                }
            })
        });
    }
    group.finish();
    println!("\nside by side ({CONCURRENCY} concurrent keep-alive GET /api/eshop):");
    for t in &targets {
        t.report();
    }
    rt.block_on(async {
        running.shutdown().await;
        sim.shutdown().await;
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
