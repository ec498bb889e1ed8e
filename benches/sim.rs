//! Simulator throughput: keep-alive `GET /api/eshop` with a valid token, limits off.
//!
//! The simulator runs on its own single-threaded runtime (one core); the load comes from a
//! separate runtime. Each iteration sends `CONCURRENCY` requests at once over pooled keep-alive
//! connections, so criterion's "thrpt" line is requests per second.
//!
//! Run: `cargo bench --bench sim` (add `CARGO_PROFILE_BENCH_LTO=false
//! CARGO_PROFILE_BENCH_CODEGEN_UNITS=16` for a quicker build). With wrk instead: start
//! `shoptet-proxy sim --no-limits --eshop 1`, mint a token with the printed curl line, then
//! `wrk -t1 -c64 -d10s -H 'Shoptet-Access-Token: TOKEN' http://127.0.0.1:8090/api/eshop`.

use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use shoptet_proxy::sim::testing::TestClient;
use shoptet_proxy::sim::{SimConfig, SimHandle, Simulator};

const CONCURRENCY: usize = 64;

fn start_sim_on_one_core() -> SimHandle {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("simulator runtime");
        rt.block_on(async move {
            let cfg = SimConfig {
                per_token_concurrency: 0,
                per_ip_concurrency: 0,
                bucket: false,
                ..SimConfig::default()
            };
            let sim = Simulator::start(cfg, SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .expect("simulator starts");
            tx.send(sim).expect("bench waits for the handle");
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("simulator handle")
}

fn bench(c: &mut Criterion) {
    let sim = start_sim_on_one_core();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    let inst = sim.create_eshop(222651);
    let token = rt.block_on(TestClient::new().api_token(&sim.base_url(), &inst.oauth_token));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY)
        .build_http();
    let url = format!("{}/api/eshop", sim.base_url());

    let mut group = c.benchmark_group("sim");
    group.throughput(Throughput::Elements(CONCURRENCY as u64));
    group.bench_function("get_eshop_x64_keepalive", |b| {
        b.to_async(&rt).iter(|| {
            let reqs = (0..CONCURRENCY).map(|_| {
                let req = Request::get(&url)
                    .header("shoptet-access-token", &token)
                    .body(Full::new(Bytes::new()))
                    .expect("valid request");
                let client = client.clone();
                async move {
                    let resp = client.request(req).await.expect("answer");
                    assert!(resp.status().is_success());
                    resp.into_body().collect().await.expect("body");
                }
            });
            futures_util::future::join_all(reqs)
        })
    });
    group.finish();
    let calls = sim.stats().calls.api;
    println!("simulator answered {calls} API calls");
}

criterion_group!(benches, bench);
criterion_main!(benches);
