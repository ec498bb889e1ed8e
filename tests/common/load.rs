//! A load scenario for leaky-bucket pacing (issue 6), shared by `tests/pacing.rs` (short form)
//! and `benches/pacing.rs` (full size): the simulator with its bucket on, the in-process
//! [`Harness`] in front of it, and clients hammering e-shops through the proxy for a while.
//!
//! Test support: it panics with a clear message when setting up fails.

use super::Harness;
use shoptet_proxy::sim::testing::TestClient;
use shoptet_proxy::sim::SimConfig;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The simulator's bucket and whether the proxy paces.
pub struct Bucket {
    pub capacity: u32,
    pub drain_per_sec: u32,
    pub pacing: bool,
}

/// Clients firing GETs at one e-shop: each sends, waits for the answer, waits `gap`, and again,
/// until `duration` has passed. Request `n` asks for an answer of `sizes[n % len]` bytes (0 = the
/// plain answer).
pub struct Clients {
    pub eshop: u64,
    pub clients: usize,
    pub duration: Duration,
    pub gap: Duration,
    pub sizes: &'static [usize],
}

/// What the clients saw: per request answered within the run, when it finished (from the start)
/// and how long it took.
pub struct Load {
    duration: Duration,
    done: Vec<(Duration, Duration)>,
    failures: usize,
}

impl Load {
    /// Requests answered with anything but 200.
    pub fn failures(&self) -> usize {
        self.failures
    }

    /// Requests answered 200.
    pub fn ok(&self) -> usize {
        self.done.len()
    }

    /// Successful requests per second among those finished between `from` and the end of the run.
    pub fn rate(&self, from: Duration) -> f64 {
        let n = self.done.iter().filter(|(at, _)| *at >= from).count();
        n as f64 / (self.duration - from).as_secs_f64()
    }

    /// The latency at quantile `q` (0..=1) of the successful requests.
    pub fn latency(&self, q: f64) -> Duration {
        let mut l: Vec<Duration> = self.done.iter().map(|(_, l)| *l).collect();
        l.sort();
        let i = ((l.len() as f64 - 1.0) * q).round() as usize;
        l.get(i).copied().unwrap_or_default()
    }
}

impl Harness {
    /// A simulator with `bucket`, `eshops` installed, and a proxy (default configuration but for
    /// `bucket.pacing`) in front of it.
    pub async fn with_bucket(bucket: Bucket, eshops: &[u64]) -> Harness {
        let sim_cfg = SimConfig {
            bucket_capacity: bucket.capacity,
            bucket_drain_per_sec: bucket.drain_per_sec,
            ..SimConfig::default()
        };
        let h = Harness::with(sim_cfg, |cfg| cfg.proxy.bucket_pacing = bucket.pacing).await;
        for &eshop_id in eshops {
            h.install(eshop_id).await;
        }
        h
    }

    /// Runs `c` to its end and reports what its clients saw.
    pub async fn fire(&self, c: Clients) -> Load {
        let target = Target {
            url: self.eshop_url(c.eshop, "/api/eshop"),
            headers: Vec::new(),
        };
        fire_at(&self.client, &[target], c).await
    }

    /// 429 answers the simulator gave, in all.
    pub fn sim_429(&self) -> u64 {
        self.stats().status429
    }
}

/// One way of addressing the e-shop's `/api/eshop`: a URL and the headers sent with it (the
/// tag, when it is not in the path).
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

impl Target {
    /// The headers as a request takes them.
    pub fn header_refs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// Runs `c` against `targets` (request `n` goes to `targets[n % len]`; `c.eshop` is not used)
/// and reports what its clients saw.
pub async fn fire_at(client: &TestClient, targets: &[Target], c: Clients) -> Load {
    let targets: Arc<[Target]> = targets.into();
    let start = Instant::now();
    let end = start + c.duration;
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..c.clients {
        let (client, targets, sent) = (client.clone(), targets.clone(), sent.clone());
        let sizes = c.sizes;
        let gap = c.gap;
        tasks.spawn(async move {
            let mut done = Vec::new();
            let mut failures = 0;
            while Instant::now() < end {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                let target = &targets[n % targets.len()];
                let size = sizes[n % sizes.len()].to_string();
                let mut headers = target.header_refs();
                if size != "0" {
                    headers.push(("x-sim-response-size", &size));
                }
                let t = Instant::now();
                // A request still waiting at the end is not counted: the run is over.
                let answer = client.get(&target.url, &headers);
                let Ok(r) = tokio::time::timeout_at(end, answer).await else {
                    break;
                };
                let took = t.elapsed();
                if r.status == http::StatusCode::OK {
                    done.push((t - start + took, took));
                } else {
                    failures += 1;
                }
                if !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
            }
            (done, failures)
        });
    }
    let mut load = Load {
        duration: c.duration,
        done: Vec::new(),
        failures: 0,
    };
    while let Some(r) = tasks.join_next().await {
        let (done, failures) = r.expect("a client task finished");
        load.done.extend(done);
        load.failures += failures;
    }
    load
}
