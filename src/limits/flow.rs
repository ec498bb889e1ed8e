//! Flow control: how many requests go upstream at once, who waits, and for how long (SPEC B2).
//!
//! Shoptet answers 429 beyond 3 concurrent requests per token and 50 per client IP, and meters a
//! leaky bucket per e-shop. Rather than pass those 429s to addons, the proxy keeps at most
//! `max_in_flight_per_eshop` requests per e-shop and `max_in_flight` in all upstream; the rest
//! wait in FIFO order (tokio's semaphores are fair) up to `max_queue` per e-shop and
//! `queue_timeout` each. An admitted request is then paced by its e-shop's [`Bucket`] model: it
//! holds its slot while it waits for the drain, so pacing an e-shop never delays another one.
//! The [`Permit`] is the upstream slot: it lives in the response body until the answer is sent.
//!
//! A reload may change every limit here ([`Flow::reconfigure`]); requests admitted afterwards
//! meet the new values, requests already in flight keep their slots. Slot counts change through
//! [`Slots::resize`], lazily per e-shop at its next admission.

use crate::error::ProxyError;
use crate::limits::bucket::{self, Bucket};
use crate::telemetry::metrics::Metrics;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

static BUCKET_FILLING: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-bucket-filling");

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
    global: Arc<Slots>,
    /// Read once per admission, replaced by a reload: `ArcSwap` because a lock here would be
    /// taken by every request on every core, while reloads are rare.
    cfg: ArcSwap<FlowConfig>,
    metrics: Arc<Metrics>,
}

/// A semaphore whose size can change while permits are out. Lowering it forgets free permits
/// and, for permits that are in use, records a debt that their return pays off instead of going
/// back to the pool; raising it cancels debt first, then adds permits.
pub struct Slots {
    sem: Semaphore,
    /// The size the pool is heading for (permits out + free − debt).
    size: AtomicUsize,
    debt: AtomicUsize,
}

impl Slots {
    pub fn new(size: usize) -> Slots {
        Slots {
            sem: Semaphore::new(size),
            size: AtomicUsize::new(size),
            debt: AtomicUsize::new(0),
        }
    }

    /// Makes the pool `size` permits large. Cheap when it already is (one atomic load).
    pub fn resize(&self, size: usize) {
        let mut old = self.size.load(Ordering::Acquire);
        loop {
            if old == size {
                return;
            }
            // Whoever moves `size` applies exactly that difference, so concurrent resizes add up.
            match self
                .size
                .compare_exchange(old, size, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => old = now,
            }
        }
        if size > old {
            let mut add = size - old;
            while add > 0 && take_one(&self.debt) {
                add -= 1;
            }
            self.sem.add_permits(add);
        } else {
            self.debt.fetch_add(old - size, Ordering::AcqRel);
            // Forget free permits while debt remains; a unit claimed with none free goes back to
            // the debt, which the next returned permit then pays.
            while take_one(&self.debt) {
                if self.sem.forget_permits(1) == 0 {
                    self.debt.fetch_add(1, Ordering::AcqRel);
                    break;
                }
            }
        }
    }

    /// Gives back one permit taken with `forget`: pays off debt first.
    fn release(&self) {
        if !take_one(&self.debt) {
            self.sem.add_permits(1);
        }
    }
}

/// Decrements `n` unless it is zero; true when it did.
fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
        .is_ok()
}

/// A global slot held by a [`Permit`].
struct GlobalSlot(Arc<Slots>);

impl Drop for GlobalSlot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// One e-shop's part of flow control, kept inline in that e-shop's runtime record
/// ([`crate::state::eshops`]); flow control reaches it through [`AsRef`] so it does not depend on
/// the record's other parts.
pub struct Lane {
    /// Upstream slots. A slot taken is `forget`-ed and given back by [`Permit`]'s drop, so the
    /// semaphore lives inline in the record instead of in an `Arc` of its own.
    slots: Slots,
    waiting: AtomicUsize,
    bucket: Mutex<Bucket>,
    /// Wakes paced requests when an answer corrects the model, often freeing room early.
    answers: Notify,
    /// Requests waiting in [`Flow::pace`]. `notify_waiters` takes a lock inside tokio; an answer
    /// skips it when this is zero, which is almost always (issue 19). SeqCst on both sides: a
    /// pacer that registers after an answer read zero checks the bucket after that answer's update.
    pacers: AtomicUsize,
    /// Requests this lane delayed for the bucket since start (the status pages show it).
    paced_total: AtomicU64,
}

/// What one e-shop's lane holds now, for the live state (SPEC B7 `runtime`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaneSnapshot {
    /// Sent upstream (or admitted to be) and not answered yet.
    pub in_flight: u32,
    /// Waiting for a slot.
    pub queued: usize,
    pub paced_total: u64,
    /// `None` until an answer reported the bucket's level.
    pub bucket: Option<bucket::Level>,
}

impl Lane {
    pub fn new(slots: usize) -> Lane {
        Lane {
            slots: Slots::new(slots),
            waiting: AtomicUsize::new(0),
            bucket: Mutex::new(Bucket::new(Instant::now())),
            answers: Notify::new(),
            pacers: AtomicUsize::new(0),
            paced_total: AtomicU64::new(0),
        }
    }

    /// A copy of the lane's state; holds its bucket lock for a few field reads.
    pub fn snapshot(&self) -> LaneSnapshot {
        let b = lock(&self.bucket);
        LaneSnapshot {
            in_flight: b.in_flight(),
            queued: self.waiting.load(Ordering::Relaxed),
            paced_total: self.paced_total.load(Ordering::Relaxed),
            bucket: b.level(tokio::time::Instant::now()),
        }
    }

    /// Wakes the paced requests, if any, after an answer changed the model.
    fn answer_changed_the_model(&self) {
        if self.pacers.load(Ordering::SeqCst) > 0 {
            self.answers.notify_waiters();
        }
    }
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
    /// The record that holds the lane, kept alive while the request is in flight.
    owner: Arc<dyn AsRef<Lane> + Send + Sync>,
    _global: GlobalSlot,
    metrics: Arc<Metrics>,
    /// Counted in flight by the bucket model until its answer (or its drop) settles it.
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
            global: Arc::new(Slots::new(cfg.max_in_flight)),
            cfg: ArcSwap::from_pointee(cfg),
            metrics,
        }
    }

    /// Applies new limits to requests admitted from now on.
    pub fn reconfigure(&self, cfg: FlowConfig) {
        self.global.resize(cfg.max_in_flight);
        self.cfg.store(Arc::new(cfg));
    }

    /// Waits for an upstream slot for `eshop`, at most `queue_timeout` from now: the time spent
    /// before (reading a slow upload, say) is not queueing.
    pub async fn admit<R: AsRef<Lane> + Send + Sync + 'static>(
        &self,
        owner: &Arc<R>,
    ) -> Result<Admission, ProxyError> {
        let lane = owner.as_ref().as_ref();
        // Copied out (a few numbers): an arc-swap guard should not be held across the waits below.
        let cfg = FlowConfig::clone(&self.cfg.load());
        lane.slots.resize(cfg.max_in_flight_per_eshop);
        let entered = Instant::now();
        let deadline = entered + cfg.queue_timeout;
        // When this request started waiting for a slot, if it had to: the common case reads no
        // clock here, and a slow request body read before admission never counts as queueing.
        let mut waiting_since: Option<Instant> = None;
        let slot = match lane.slots.sem.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                waiting_since = Some(Instant::now());
                if lane.waiting.fetch_add(1, Ordering::Relaxed) >= cfg.max_queue {
                    lane.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Err(ProxyError::QueueFull {
                        retry_after: QUEUE_FULL_RETRY_AFTER,
                    });
                }
                self.metrics.queue_length.inc();
                let _waiting = Waiting {
                    count: &lane.waiting,
                    metrics: &self.metrics,
                };
                tokio::time::timeout_at(deadline, lane.slots.sem.acquire())
                    .await
                    .map_err(|_| ProxyError::QueueTimeout)?
                    .map_err(|_| ProxyError::QueueTimeout)?
            }
        };
        // The slot now belongs to a `HeldSlot` guard: a request that times out or is cancelled while
        // waiting for the global slot or the bucket gives it back; the Permit takes it over.
        slot.forget();
        let slot = HeldSlot(lane);
        let global = match self.global.sem.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                waiting_since.get_or_insert_with(Instant::now);
                tokio::time::timeout_at(deadline, self.global.sem.acquire())
                    .await
                    .map_err(|_| ProxyError::QueueTimeout)?
                    .map_err(|_| ProxyError::QueueTimeout)?
            }
        };
        // From here on the global slot is returned through `GlobalSlot`, which honours a
        // lowered `max_in_flight`.
        global.forget();
        let global = GlobalSlot(self.global.clone());
        let paced = match cfg.bucket_reserve {
            Some(reserve) => {
                // The clock is read again only if the request waited for a slot: the model
                // must not go back in time, and without a wait no time has passed.
                let start = waiting_since.map_or(entered, |_| Instant::now());
                Self::pace(lane, reserve, start, deadline).await
            }
            None => {
                lock(&lane.bucket).reserve_anyway();
                Duration::ZERO
            }
        };
        let queued = waiting_since.map_or(paced, |since| since.elapsed());
        self.metrics.queue_wait.observe(queued.as_secs_f64());
        if !paced.is_zero() {
            lane.paced_total.fetch_add(1, Ordering::Relaxed);
            self.metrics.paced.inc();
            self.metrics.pace_wait.observe(paced.as_secs_f64());
        }
        self.metrics.in_flight.inc();
        std::mem::forget(slot);
        Ok(Admission {
            permit: Permit {
                owner: owner.clone(),
                _global: global,
                metrics: self.metrics.clone(),
                awaiting_answer: true,
            },
            queued,
            paced,
        })
    }

    /// Waits until the e-shop's modelled bucket has room and reserves it, but never past
    /// `deadline`: a request that has waited its whole `queue_timeout` goes out anyway and meets
    /// Shoptet's verdict (a GET is then retried after Shoptet's `Retry-After`). Returns the time
    /// waited.
    async fn pace(lane: &Lane, reserve: f64, start: Instant, deadline: Instant) -> Duration {
        let mut now = start;
        let mut registered: Option<Pacer> = None;
        loop {
            // Registered before the check, so an answer landing in between still wakes us.
            let answered = lane.answers.notified();
            let wait = match lock(&lane.bucket).try_reserve(now, reserve) {
                // Zero unless it waited: only a delayed request counts as paced.
                Ok(()) => return now - start,
                Err(wait) => wait,
            };
            if registered.is_none() {
                // Counted as a pacer only once it has to wait; answers from now on notify, and
                // the bucket is looked at once more in case one landed before the count.
                registered = Some(Pacer::new(&lane.pacers));
                continue;
            }
            if now >= deadline {
                lock(&lane.bucket).reserve_anyway();
                return now - start;
            }
            tokio::select! {
                _ = tokio::time::sleep_until((now + wait).min(deadline)) => {}
                _ = answered => {}
            }
            now = Instant::now();
        }
    }
}

/// Counts a request in [`Lane::pacers`] while it waits for the bucket, cancellation included.
struct Pacer<'a>(&'a AtomicUsize);

impl<'a> Pacer<'a> {
    fn new(count: &'a AtomicUsize) -> Pacer<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Pacer(count)
    }
}

impl Drop for Pacer<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A slot taken from a lane and not yet owned by a [`Permit`]: given back if admission is
/// abandoned (queue timeout on the global slot, client gone while paced).
struct HeldSlot<'a>(&'a Lane);

impl Drop for HeldSlot<'_> {
    fn drop(&mut self) {
        self.0.slots.release();
    }
}

fn lock(m: &Mutex<Bucket>) -> std::sync::MutexGuard<'_, Bucket> {
    // The bucket holds plain numbers; a panic mid-update cannot leave it unusable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Permit {
    fn lane(&self) -> &Lane {
        self.owner.as_ref().as_ref()
    }

    /// The request is about to be sent upstream. The first send was reserved at admission; a
    /// resend (replay, 429 retry) is counted in flight again, unpaced.
    pub fn sending(&mut self) {
        if !self.awaiting_answer {
            lock(&self.lane().bucket).reserve_anyway();
            self.awaiting_answer = true;
        }
    }

    /// The upstream answer's head arrived (at `now`): learn the bucket level from it.
    pub fn answered(&mut self, status: http::StatusCode, headers: &http::HeaderMap, now: Instant) {
        let filling = headers
            .get(&BUCKET_FILLING)
            .and_then(|v| bucket::parse_filling(v.as_bytes()));
        let settles = std::mem::replace(&mut self.awaiting_answer, false);
        let lane = self.owner.as_ref().as_ref();
        let mut b = lock(&lane.bucket);
        if settles {
            b.answered(now, filling);
        }
        // The concurrency 429 (nginx) carries no Retry-After; only the bucket's does.
        if status == http::StatusCode::TOO_MANY_REQUESTS
            && headers.contains_key(http::header::RETRY_AFTER)
        {
            b.overflowed(now);
            self.metrics.bucket_429.inc();
        }
        drop(b);
        lane.answer_changed_the_model();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        let lane = self.owner.as_ref().as_ref();
        if self.awaiting_answer {
            lock(&lane.bucket).answered(Instant::now(), None);
            lane.answer_changed_the_model();
        }
        lane.slots.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, StatusCode};

    /// The e-shop every test sends for.
    /// A record holding only a lane, as the per-e-shop record does among its other parts.
    struct Eshop(Lane);

    impl AsRef<Lane> for Eshop {
        fn as_ref(&self) -> &Lane {
            &self.0
        }
    }

    fn eshop() -> Arc<Eshop> {
        Arc::new(Eshop(Lane::new(3)))
    }

    fn flow(queue_timeout: Duration, bucket_reserve: Option<f64>) -> Flow {
        Flow::new(
            FlowConfig {
                max_in_flight_per_eshop: 3,
                max_in_flight: 50,
                max_queue: 100,
                queue_timeout,
                bucket_reserve,
            },
            Arc::new(Metrics::new()),
        )
    }

    /// Runs one request through `flow` whose answer reports `filling` (and `status`).
    async fn answer(flow: &Flow, e: &Arc<Eshop>, status: StatusCode, filling: &'static str) {
        let mut permit = flow.admit(e).await.expect("admitted").permit;
        permit.sending();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-ratelimit-bucket-filling",
            HeaderValue::from_static(filling),
        );
        if status == StatusCode::TOO_MANY_REQUESTS {
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from_static("Mon, 01 Jul 2024 12:01:11 GMT"),
            );
        }
        permit.answered(status, &headers, Instant::now());
    }

    #[tokio::test]
    async fn concurrent_admissions_cannot_share_the_last_drops() {
        let e = eshop();
        let flow = flow(Duration::from_secs(30), Some(10.0));
        // 188 + 3 × cost 1 > 190: room for two requests now, the third waits 0.1 s of drain.
        answer(&flow, &e, StatusCode::OK, "188/200").await;
        let (a, b, c) = tokio::join!(flow.admit(&e), flow.admit(&e), flow.admit(&e),);
        let mut paced: Vec<Duration> = [a, b, c]
            .into_iter()
            .map(|r| r.expect("admitted").paced)
            .collect();
        paced.sort();
        assert_eq!(paced[..2], [Duration::ZERO, Duration::ZERO]);
        assert!(
            paced[2] >= Duration::from_millis(95) && paced[2] < Duration::from_millis(500),
            "{paced:?}"
        );
        assert_eq!(flow.metrics.paced.get(), 1);
    }

    #[tokio::test]
    async fn pacing_never_holds_a_request_past_queue_timeout() {
        let e = eshop();
        let flow = flow(Duration::from_millis(300), Some(10.0));
        answer(&flow, &e, StatusCode::TOO_MANY_REQUESTS, "200/200").await;
        assert_eq!(flow.metrics.bucket_429.get(), 1);
        // A full bucket needs 1.1 s to reach 190 − 1; the queue timeout is 0.3 s.
        let admission = flow.admit(&e).await.expect("sent at the deadline");
        // Released at the deadline, not after the 1.1 s the drain needs.
        assert!(
            admission.paced >= Duration::from_millis(250)
                && admission.paced < Duration::from_millis(900),
            "{:?}",
            admission.paced
        );
    }

    #[tokio::test]
    async fn an_answer_wakes_a_paced_request_before_its_sleep_ends() {
        let e = eshop();
        let flow = flow(Duration::from_secs(30), Some(10.0));
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(flow.admit(&e).await.expect("admitted").permit);
        }
        // 195 + 3 × cost 1 − 190: the drain alone would take 0.8 s.
        answer(&flow, &e, StatusCode::OK, "195/200").await;
        let waiter = flow.admit(&e);
        tokio::pin!(waiter);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut waiter)
                .await
                .is_err(),
            "the bucket has no room yet"
        );
        // A held request's answer shows the bucket far lower than modelled.
        answer_permit(&mut held[0], "150/200");
        let admission = waiter.await.expect("admitted");
        assert!(
            admission.paced < Duration::from_millis(500),
            "{:?}",
            admission.paced
        );
    }

    fn answer_permit(permit: &mut Permit, filling: &'static str) {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-ratelimit-bucket-filling",
            HeaderValue::from_static(filling),
        );
        permit.answered(StatusCode::OK, &headers, Instant::now());
    }

    #[test]
    fn a_lowered_pool_holds_once_the_permits_in_use_come_back() {
        let slots = Slots::new(3);
        let held: Vec<_> = (0..3)
            .map(|_| slots.sem.try_acquire().expect("free"))
            .collect();
        for p in held {
            p.forget();
        }
        slots.resize(1);
        // Two of the three returns pay the debt; only the last one is free again.
        slots.release();
        slots.release();
        assert_eq!(slots.sem.available_permits(), 0);
        slots.release();
        assert_eq!(slots.sem.available_permits(), 1);
        slots.resize(4);
        assert_eq!(slots.sem.available_permits(), 4);
        // Raising while in debt cancels the debt first.
        let p = slots.sem.try_acquire().expect("free");
        p.forget();
        slots.resize(2);
        assert_eq!(slots.sem.available_permits(), 1);
        slots.resize(3);
        slots.release();
        assert_eq!(slots.sem.available_permits(), 3);
    }

    #[tokio::test]
    async fn without_pacing_a_full_bucket_delays_nothing() {
        let e = eshop();
        let flow = flow(Duration::from_secs(30), None);
        answer(&flow, &e, StatusCode::TOO_MANY_REQUESTS, "200/200").await;
        let admission = flow.admit(&e).await.expect("admitted");
        assert_eq!(admission.paced, Duration::ZERO);
    }
}
