//! Leaky-bucket pacing against the simulator (issue 6), in short form: a bucket of 30 drops
//! draining 10 a second for 6 s has the proportions of Shoptet's 200 drops at 10 a second for
//! 60 s, minus the wait. `cargo bench --bench pacing` runs the full-size scenario.

mod common;

use common::load::{Bucket, Clients};
use common::Harness;
use std::time::Duration;

const CAPACITY: u32 = 30;
const DRAIN: u32 = 10;
const RUN: Duration = Duration::from_secs(6);
/// The first burst fills the bucket within milliseconds; the rate is measured after it.
const BURST: Duration = Duration::from_secs(1);
const FLOODED: u64 = 222651;
const LIGHT: u64 = 315185;
/// A 50 KiB answer: 1 drop plus 4 per started 10 KiB beyond the first, about 5 drops.
const LARGE: usize = 50 * 1024;

fn short_bucket(pacing: bool) -> Bucket {
    Bucket {
        capacity: CAPACITY,
        drain_per_sec: DRAIN,
        pacing,
    }
}

fn flood(eshop: u64, sizes: &'static [usize]) -> Clients {
    Clients {
        eshop,
        clients: 20,
        duration: RUN,
        gap: Duration::ZERO,
        sizes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_eshop_runs_at_the_drain_rate_without_a_single_429() {
    let h = Harness::with_bucket(short_bucket(true), &[FLOODED]).await;
    let load = h.fire(flood(FLOODED, &[0])).await;
    assert_eq!(h.sim_429(), 0, "the simulator answered 429");
    assert_eq!(load.failures(), 0);
    assert_eq!(h.metrics().bucket_429.get(), 0);
    assert!(h.metrics().paced.get() > 0, "nothing was paced");
    let rate = load.rate(BURST);
    assert!(
        rate >= 0.9 * f64::from(DRAIN),
        "{rate:.2} requests/s after the burst, drain {DRAIN}/s ({} answered)",
        load.ok()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pacing_the_same_flood_meets_many_429s() {
    let h = Harness::with_bucket(short_bucket(false), &[FLOODED]).await;
    let load = h.fire(flood(FLOODED, &[0])).await;
    // Each 429 holds its slot for Shoptet's Retry-After (1–2 s) before the proxy retries the GET,
    // so the simulator counts them (clients see fewer): at least a few a second once full.
    let sim_429 = h.sim_429();
    assert!(
        sim_429 >= 5,
        "only {sim_429} 429s from the simulator ({} answered, {} failed)",
        load.ok(),
        load.failures()
    );
    // Every 429 the proxy met was the bucket's (with Retry-After) and counted as such. Compared
    // with the proxy's own count of upstream 429s, not the simulator's: a 429 still on its way
    // when its client gave up at the end of the flood is counted by the simulator only.
    let m = h.metrics();
    let met = m.upstream_429.with_label_values(&["retried"]).get()
        + m.upstream_429.with_label_values(&["returned"]).get();
    assert_eq!(m.bucket_429.get(), met);
    assert!(met >= 5 && met <= sim_429, "{met} met, {sim_429} sent");
    assert_eq!(h.metrics().paced.get(), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_eshop_is_not_slowed_by_a_flooded_one() {
    let h = Harness::with_bucket(short_bucket(true), &[FLOODED, LIGHT]).await;
    let (flooded, light) = tokio::join!(
        h.fire(flood(FLOODED, &[0])),
        h.fire(Clients {
            eshop: LIGHT,
            clients: 1,
            duration: RUN,
            gap: Duration::from_millis(250),
            sizes: &[0],
        })
    );
    assert_eq!(h.sim_429(), 0);
    assert_eq!(flooded.failures() + light.failures(), 0);
    // 20 clients sharing 10 requests a second queue about 2 s each.
    let flooded_p50 = flooded.latency(0.5);
    let light_p99 = light.latency(0.99);
    assert!(
        flooded_p50 >= Duration::from_millis(500),
        "the flood was not queued: p50 {flooded_p50:?}"
    );
    assert!(
        light_p99 * 5 < flooded_p50,
        "light p99 {light_p99:?} vs flooded p50 {flooded_p50:?} ({} light requests)",
        light.ok()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_small_and_large_answers_still_meet_no_429() {
    let h = Harness::with_bucket(short_bucket(true), &[FLOODED]).await;
    let load = h.fire(flood(FLOODED, &[0, LARGE, 0, LARGE, LARGE])).await;
    assert_eq!(h.sim_429(), 0, "the simulator answered 429");
    assert_eq!(load.failures(), 0);
    assert!(load.ok() > 20, "{} answered", load.ok());
    h.stop().await;
}
