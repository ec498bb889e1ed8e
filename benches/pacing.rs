//! The full-size leaky-bucket scenario of issue 6 against the simulator: Shoptet's bucket (200
//! drops, draining 10 a second), one e-shop flooded by 20 concurrent clients with pacing on and
//! off, then a light e-shop alone and beside a flooded one. Prints 429 counts, the achieved rate
//! against the drain rate, and latencies.
//!
//! `CARGO_PROFILE_RELEASE_LTO=false cargo bench --bench pacing [-- --secs 60]`
//! (each of the four runs lasts `--secs`).

#[path = "../tests/common/mod.rs"]
mod common;

use common::load::{Bucket, Clients, Load};
use common::Harness;
use std::time::Duration;

const CAPACITY: u32 = 200;
const DRAIN: u32 = 10;
const FLOODED: u64 = 222651;
const LIGHT: u64 = 315185;
/// Long enough for the first burst (the bucket fills within a second); the rate counts after it.
const BURST: Duration = Duration::from_secs(5);

fn main() {
    // `cargo bench` passes `--bench`; only `--secs N` means something here.
    let args: Vec<String> = std::env::args().collect();
    let secs = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(Duration::from_secs(secs)));
}

fn bucket(pacing: bool) -> Bucket {
    Bucket {
        capacity: CAPACITY,
        drain_per_sec: DRAIN,
        pacing,
    }
}

fn flood(eshop: u64, duration: Duration) -> Clients {
    Clients {
        eshop,
        clients: 20,
        duration,
        gap: Duration::ZERO,
        sizes: &[0],
    }
}

fn light(duration: Duration) -> Clients {
    Clients {
        eshop: LIGHT,
        clients: 1,
        duration,
        gap: Duration::from_millis(250),
        sizes: &[0],
    }
}

fn latencies(name: &str, load: &Load) {
    println!(
        "  {name}: {} answered, {} failed, p50 {:.1} ms, p99 {:.1} ms",
        load.ok(),
        load.failures(),
        load.latency(0.5).as_secs_f64() * 1e3,
        load.latency(0.99).as_secs_f64() * 1e3,
    );
}

async fn run(duration: Duration) {
    let secs = duration.as_secs_f64();
    println!(
        "Shoptet bucket {CAPACITY} drops draining {DRAIN}/s; proxy defaults (3 in flight per \
         e-shop, bucket_reserve 10); each run {secs} s"
    );
    for pacing in [true, false] {
        let h = Harness::with_bucket(bucket(pacing), &[FLOODED]).await;
        let load = h.fire(flood(FLOODED, duration)).await;
        let m = h.metrics();
        println!(
            "one e-shop, 20 clients, bucket_pacing = {pacing}:\n  simulator 429s: {}, proxy: \
             bucket 429s {} / paced requests {}\n  {} answered 200 ({} failed): {:.2}/s after \
             the first {} s, ({} − capacity {CAPACITY}) / {secs} s = {:.2}/s, drain {DRAIN}/s",
            h.sim_429(),
            m.bucket_429.get(),
            m.paced.get(),
            load.ok(),
            load.failures(),
            load.rate(BURST),
            BURST.as_secs(),
            load.ok(),
            (load.ok() as f64 - f64::from(CAPACITY)) / secs,
        );
        h.stop().await;
    }
    let h = Harness::with_bucket(bucket(true), &[FLOODED, LIGHT]).await;
    let alone = h.fire(light(duration)).await;
    let (flooded, beside) = tokio::join!(h.fire(flood(FLOODED, duration)), h.fire(light(duration)));
    println!(
        "two e-shops, bucket_pacing = true (simulator 429s: {}):",
        h.sim_429()
    );
    latencies("light e-shop alone (4 req/s)", &alone);
    latencies("light e-shop beside the flood", &beside);
    latencies("flooded e-shop (20 clients)", &flooded);
    h.stop().await;
}
