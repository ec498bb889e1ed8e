//! A model of one e-shop's leaky bucket at Shoptet, used to pace requests (SPEC A3, B2).
//!
//! Shoptet meters each (addon, e-shop) with a bucket of `max` drops (200) draining `DRAIN_PER_SEC`
//! (10) drops a second; each request adds drops by its result size once it has run, and every
//! answer reports `X-RateLimit-Bucket-Filling: <current>/<max>`. A request that arrives while the
//! bucket is full is answered 429. Addons are written against that wall; the proxy keeps them off
//! it.
//!
//! The strategy:
//! - **Level.** Every answer's header sets the level; between answers the model drains it
//!   linearly. A bucket 429 (one with `Retry-After`) sets it to full.
//! - **Cost estimate.** A request's cost is only known after it ran, from the increase its answer
//!   reports. The estimate is the largest recent cost, forgetting slowly (a smaller cost pulls it
//!   `COST_FORGET` of the way down): being too high only shrinks the first burst, while being too
//!   low when an addon alternates small reads with 50 KiB exports would let several large
//!   requests in at once. In a steady flood the rate is set by the drain, not by the estimate.
//! - **Threshold.** A request may go when the drained level plus the estimate for every request
//!   in flight and for itself stays at most `max - reserve` (`proxy.bucket_reserve`, default 10
//!   drops: two 50 KiB answers beyond the estimate); otherwise it waits exactly as long as the
//!   drain needs. [`Bucket::try_reserve`] decides and counts the request in flight under one lock,
//!   so concurrent requests of the same e-shop cannot all take the last drops.

use std::time::Duration;
use tokio::time::Instant;

/// Shoptet's documented drain rate. The header does not report it, so it is a constant.
pub const DRAIN_PER_SEC: f64 = 10.0;
/// Shoptet's documented capacity, assumed until the first answer reports the real one.
const DEFAULT_MAX: f64 = 200.0;
/// How far a smaller observed cost pulls the estimate down: after a large export the estimate
/// returns to small reads within a few dozen answers, not on the first one.
const COST_FORGET: f64 = 0.1;

/// Largest level or capacity believed from the header. Shoptet's bucket holds 200 drops; a value
/// far beyond that is garbage, and believing it would turn into waits too long for a `Duration`
/// (found by fuzzing: `1e33/200` made [`Bucket::wait`] panic).
const MAX_PLAUSIBLE: f64 = 1e6;

/// Parses `X-RateLimit-Bucket-Filling: <current>/<max>`; `None` for anything else.
pub fn parse_filling(value: &[u8]) -> Option<(f64, f64)> {
    let s = std::str::from_utf8(value).ok()?;
    let (cur, max) = s.trim().split_once('/')?;
    let cur: f64 = cur.trim().parse().ok()?;
    let max: f64 = max.trim().parse().ok()?;
    let plausible = |v: f64| v.is_finite() && v <= MAX_PLAUSIBLE;
    (plausible(cur) && plausible(max) && cur >= 0.0 && max > 0.0).then_some((cur, max))
}

#[derive(Debug, Clone)]
pub struct Bucket {
    /// Level reported (or predicted) at `at`.
    level: f64,
    at: Instant,
    max: f64,
    /// Drops a request of this e-shop is assumed to cost (see the module doc).
    cost: f64,
    /// Requests admitted whose answers have not reported a level yet.
    in_flight: u32,
    /// Whether `level` came from an answer; before the first one the increment is unknown.
    observed: bool,
}

impl Bucket {
    pub fn new(now: Instant) -> Bucket {
        Bucket {
            level: 0.0,
            at: now,
            max: DEFAULT_MAX,
            cost: 1.0,
            in_flight: 0,
            observed: false,
        }
    }

    fn drained(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        (self.level - dt * DRAIN_PER_SEC).max(0.0)
    }

    /// Admits one request now, counting it in flight until [`Bucket::answered`], or says how
    /// long the drain needs before it may go. Keeping `reserve` drops free below the capacity.
    pub fn try_reserve(&mut self, now: Instant, reserve: f64) -> Result<(), Duration> {
        let predicted = self.drained(now) + f64::from(self.in_flight + 1) * self.cost;
        // Whatever the reserve, one request alone on an empty bucket always fits.
        let room = (self.max - reserve).max(self.cost);
        if predicted <= room {
            self.in_flight += 1;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((predicted - room) / DRAIN_PER_SEC))
        }
    }

    /// Counts a request in flight without asking: pacing is off, its wait ran out, or it is
    /// resent (a replay or a 429 retry).
    pub fn reserve_anyway(&mut self) {
        self.in_flight += 1;
    }

    /// An answer arrived: `filling` is its header, if it had one. Its request leaves the in-flight
    /// count either way.
    pub fn answered(&mut self, now: Instant, filling: Option<(f64, f64)>) {
        // The estimate for the other in-flight requests is not part of `level`: subtracting the
        // drained level leaves this request's own cost.
        let before = self.drained(now);
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some((cur, max)) = filling {
            let increment = cur - before;
            // Below one drop the answer raced another one (or was not charged): no evidence.
            if self.observed && increment >= 1.0 {
                self.cost = if increment > self.cost {
                    increment
                } else {
                    self.cost - COST_FORGET * (self.cost - increment)
                };
            }
            self.level = cur;
            self.max = max;
            self.at = now;
            self.observed = true;
        }
    }

    /// A 429 for a full bucket: the level is `max` now.
    pub fn overflowed(&mut self, now: Instant) {
        self.level = self.max;
        self.at = now;
    }

    #[cfg(test)]
    fn cost(&self) -> f64 {
        self.cost
    }

    /// Requests admitted whose answers have not arrived.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The modelled level now, once an answer has reported one.
    pub fn level(&self, now: Instant) -> Option<Level> {
        self.observed.then(|| Level {
            level: self.drained(now),
            capacity: self.max,
        })
    }
}

/// The modelled bucket of one e-shop at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    pub level: f64,
    pub capacity: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(now: Instant, level: f64) -> Bucket {
        let mut b = Bucket::new(now);
        b.reserve_anyway();
        b.answered(now, Some((level, 200.0)));
        b
    }

    #[test]
    fn parses_the_filling_header() {
        assert_eq!(parse_filling(b"12/200"), Some((12.0, 200.0)));
        assert_eq!(parse_filling(b" 200/200 "), Some((200.0, 200.0)));
        assert_eq!(parse_filling(b"1.5/200"), Some((1.5, 200.0)));
        for bad in [
            &b""[..],
            b"12",
            b"/200",
            b"12/0",
            b"-1/200",
            b"a/b",
            b"NaN/200",
            b"\xff/1",
        ] {
            assert_eq!(parse_filling(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn absurd_levels_are_ignored_and_the_largest_believed_ones_still_give_a_wait() {
        // Regression (fuzz target bucket_header): `1e33/200` made `wait` panic converting the
        // wait to a Duration, which aborts the release build.
        assert_eq!(parse_filling(b"1e33/200"), None);
        assert_eq!(parse_filling(b"1/1e33"), None);
        assert_eq!(parse_filling(b"1000000/200"), Some((1e6, 200.0)));
        let now = Instant::now();
        let mut b = Bucket::new(now);
        for level in ["0/1", "1000000/1", "0/1", "1000000/1"] {
            b.reserve_anyway();
            b.answered(now, parse_filling(level.as_bytes()));
        }
        for _ in 0..10_000 {
            b.reserve_anyway();
        }
        let w = b
            .try_reserve(now, 10.0)
            .expect_err("a full bucket makes the request wait");
        assert!(w > Duration::from_secs(1000), "{w:?}");
    }

    #[test]
    fn an_empty_bucket_admits_at_once() {
        let now = Instant::now();
        let mut b = Bucket::new(now);
        assert_eq!(b.try_reserve(now, 10.0), Ok(()));
        assert_eq!(b.in_flight(), 1);
    }

    #[test]
    fn a_nearly_full_bucket_waits_for_the_drain() {
        let now = Instant::now();
        let mut b = at(now, 195.0);
        // Cost 1, reserve 10: needs level <= 189, i.e. 6 drops drained = 0.6 s.
        let w = b.try_reserve(now, 10.0).expect_err("must wait");
        assert!(
            w > Duration::from_millis(550) && w < Duration::from_millis(700),
            "{w:?}"
        );
        assert_eq!(b.in_flight(), 0, "a refused request is not counted");
        assert_eq!(b.try_reserve(now + Duration::from_secs(1), 10.0), Ok(()));
    }

    #[test]
    fn concurrent_requests_cannot_all_take_the_last_drops() {
        let now = Instant::now();
        // 187 + 3 requests of cost 1 = 190 = max - reserve: room for exactly three.
        let mut b = at(now, 187.0);
        assert_eq!(b.try_reserve(now, 10.0), Ok(()));
        assert_eq!(b.try_reserve(now, 10.0), Ok(()));
        assert_eq!(b.try_reserve(now, 10.0), Ok(()));
        assert!(b.try_reserve(now, 10.0).is_err());
        assert_eq!(b.in_flight(), 3);
        // One answer reports its cost: its slot in the prediction is freed, the level rises.
        b.answered(now, Some((188.0, 200.0)));
        assert_eq!(b.in_flight(), 2);
        assert!(b.try_reserve(now, 10.0).is_err());
        assert_eq!(
            b.try_reserve(now + Duration::from_millis(200), 10.0),
            Ok(())
        );
    }

    #[test]
    fn cost_estimate_jumps_to_large_answers_and_forgets_slowly() {
        let now = Instant::now();
        let mut b = at(now, 0.0);
        b.reserve_anyway();
        b.answered(now, Some((6.0, 200.0)));
        assert_eq!(b.cost(), 6.0);
        let mut level = 6.0;
        for _ in 0..5 {
            b.reserve_anyway();
            level += 1.0;
            b.answered(now, Some((level, 200.0)));
        }
        assert!(b.cost() > 3.5 && b.cost() < 6.0, "{}", b.cost());
        for _ in 0..60 {
            b.reserve_anyway();
            level += 1.0;
            b.answered(now, Some((level, 200.0)));
        }
        assert!(b.cost() < 1.1, "{}", b.cost());
    }

    #[test]
    fn the_first_answer_sets_the_level_but_teaches_no_cost() {
        let now = Instant::now();
        let b = at(now, 150.0);
        assert_eq!(b.cost(), 1.0);
    }

    #[test]
    fn a_bucket_429_means_full_until_it_drained() {
        let now = Instant::now();
        let mut b = at(now, 20.0);
        b.overflowed(now);
        let w = b.try_reserve(now, 10.0).expect_err("full");
        // 200 + 1 - 190 = 11 drops = 1.1 s.
        assert!(
            w > Duration::from_millis(1050) && w < Duration::from_millis(1150),
            "{w:?}"
        );
    }

    #[test]
    fn a_reserve_beyond_the_capacity_still_admits_one_request_on_an_empty_bucket() {
        let now = Instant::now();
        let mut b = Bucket::new(now);
        assert_eq!(b.try_reserve(now, 500.0), Ok(()));
        assert!(b.try_reserve(now, 500.0).is_err());
    }
}
