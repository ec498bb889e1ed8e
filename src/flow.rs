//! Flow control: how many requests go upstream at once, who waits, and for how long (SPEC B2).
//!
//! Shoptet answers 429 beyond 3 concurrent requests per token and 50 per client IP, and meters a
//! leaky bucket per e-shop. Rather than pass those 429s to addons, the proxy keeps at most
//! `max_in_flight_per_eshop` requests per e-shop and `max_in_flight` in all upstream; the rest
//! wait in FIFO order (tokio's semaphores are fair) up to `max_queue` per e-shop and
//! `queue_timeout` each. An admitted request is then paced by its e-shop's [`Bucket`] model.
//! The [`Permit`] is the upstream slot: it lives in the response body until the answer is sent.

use crate::bucket::{self, Bucket};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use dashmap::DashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a full queue tells the client to wait before trying again.
const QUEUE_FULL_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct FlowConfig {
    pub max_in_flight_per_eshop: usize,
    pub max_in_flight: usize,
    pub max_queue: usize,
    pub queue_timeout: Duration,
    /// `None` turns pacing off; otherwise the drops kept free below the bucket's capacity.
    pub bucket_reserve: Option<f64>,
}

pub struct Flow {
    eshops: DashMap<u64, Arc<EshopFlow>>,
    global: Arc<Semaphore>,
    cfg: FlowConfig,
    metrics: Arc<Metrics>,
}

struct EshopFlow {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    bucket: Mutex<Bucket>,
}

/// An admitted request: its upstream slot and how long it waited for it.
pub struct Admission {
    pub permit: Permit,
    /// Time spent waiting for a slot, pacing included.
    pub queued: Duration,
    /// Part of `queued` spent waiting for the bucket to drain.
    pub paced: Duration,
}

/// One upstream slot of one e-shop. Dropping it frees the slot.
pub struct Permit {
    eshop: Arc<EshopFlow>,
    _slot: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
    /// Sent upstream and not yet answered (counts in the bucket model).
    awaiting_answer: bool,
}

/// Counts a waiting request for its lifetime, so cancellation (client gone) cannot leak a count.
struct Waiting<'a> {
    count: &'a AtomicUsize,
    metrics: &'a Metrics,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.metrics.queue_length.dec();
    }
}

impl Flow {
    pub fn new(cfg: FlowConfig, metrics: Arc<Metrics>) -> Flow {
        Flow {
            eshops: DashMap::new(),
            global: Arc::new(Semaphore::new(cfg.max_in_flight)),
            cfg,
            metrics,
        }
    }

    fn eshop(&self, eshop_id: u64) -> Arc<EshopFlow> {
        if let Some(e) = self.eshops.get(&eshop_id) {
            return e.clone();
        }
        self.eshops
            .entry(eshop_id)
            .or_insert_with(|| {
                Arc::new(EshopFlow {
                    slots: Arc::new(Semaphore::new(self.cfg.max_in_flight_per_eshop)),
                    waiting: AtomicUsize::new(0),
                    bucket: Mutex::new(Bucket::new(Instant::now())),
                })
            })
            .clone()
    }

    /// Waits for an upstream slot for `eshop_id`, at most until `arrived + queue_timeout`.
    pub async fn admit(&self, eshop_id: u64, arrived: Instant) -> Result<Admission, ProxyError> {
        let eshop = self.eshop(eshop_id);
        let deadline = tokio::time::Instant::from_std(arrived + self.cfg.queue_timeout);
        let slots = eshop.slots.clone();
        let slot = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if eshop.waiting.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_queue {
                    eshop.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Err(ProxyError::QueueFull {
                        retry_after: QUEUE_FULL_RETRY_AFTER,
                    });
                }
                self.metrics.queue_length.inc();
                let _waiting = Waiting {
                    count: &eshop.waiting,
                    metrics: &self.metrics,
                };
                tokio::time::timeout_at(deadline, slots.acquire_owned())
                    .await
                    .map_err(|_| ProxyError::QueueTimeout)?
                    .map_err(|_| ProxyError::QueueTimeout)?
            }
        };
        let global = match self.global.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::time::timeout_at(deadline, self.global.clone().acquire_owned())
                .await
                .map_err(|_| ProxyError::QueueTimeout)?
                .map_err(|_| ProxyError::QueueTimeout)?,
        };
        let paced = match self.cfg.bucket_reserve {
            Some(reserve) => self.pace(&eshop, reserve, deadline).await,
            None => Duration::ZERO,
        };
        let queued = arrived.elapsed();
        self.metrics.queue_wait.observe(queued.as_secs_f64());
        if !paced.is_zero() {
            self.metrics.paced.inc();
            self.metrics.pace_wait.observe(paced.as_secs_f64());
        }
        self.metrics.in_flight.inc();
        Ok(Admission {
            permit: Permit {
                eshop,
                _slot: slot,
                _global: global,
                metrics: self.metrics.clone(),
                awaiting_answer: false,
            },
            queued,
            paced,
        })
    }

    /// Sleeps until the e-shop's modelled bucket has room, but never past `deadline`: a request
    /// that has waited its whole `queue_timeout` goes out and meets Shoptet's verdict. Returns
    /// the time slept.
    async fn pace(
        &self,
        eshop: &EshopFlow,
        reserve: f64,
        deadline: tokio::time::Instant,
    ) -> Duration {
        let start = tokio::time::Instant::now();
        loop {
            let wait = lock(&eshop.bucket).wait(Instant::now(), reserve);
            if wait.is_zero() {
                return start.elapsed();
            }
            let until = (tokio::time::Instant::now() + wait).min(deadline);
            tokio::time::sleep_until(until).await;
            if until >= deadline {
                return start.elapsed();
            }
        }
    }
}

fn lock(m: &Mutex<Bucket>) -> std::sync::MutexGuard<'_, Bucket> {
    // The bucket holds plain numbers; a panic mid-update cannot leave it unusable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Permit {
    /// The request is about to be sent upstream.
    pub fn sending(&mut self) {
        if !self.awaiting_answer {
            lock(&self.eshop.bucket).sent();
            self.awaiting_answer = true;
        }
    }

    /// The upstream answer's head arrived: learn the bucket level from it.
    pub fn answered(&mut self, status: http::StatusCode, headers: &http::HeaderMap) {
        let filling = headers
            .get("x-ratelimit-bucket-filling")
            .and_then(|v| bucket::parse_filling(v.as_bytes()));
        let mut b = lock(&self.eshop.bucket);
        if self.awaiting_answer {
            b.answered(Instant::now(), filling);
            self.awaiting_answer = false;
        }
        if status == http::StatusCode::TOO_MANY_REQUESTS
            && headers.contains_key(http::header::RETRY_AFTER)
        {
            b.overflowed(Instant::now());
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        if self.awaiting_answer {
            lock(&self.eshop.bucket).answered(Instant::now(), None);
        }
    }
}
