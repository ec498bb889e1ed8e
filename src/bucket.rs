//! A model of one e-shop's leaky bucket at Shoptet, used to pace requests (SPEC A3, B2).
//!
//! Shoptet meters each (addon, e-shop) with a bucket of `max` drops (200) draining `DRAIN_PER_SEC`
//! (10) drops a second; each request adds drops by its result size, and every answer reports
//! `X-RateLimit-Bucket-Filling: <current>/<max>`. Between answers the model drains the level
//! linearly. A request's cost is not known before it runs, so the model keeps an average of the
//! increments it has observed, and counts requests in flight at that estimate until their answers
//! report the truth. A request is admitted when the predicted level plus its estimated cost stays
//! `reserve` drops below `max`; otherwise it waits exactly as long as the drain needs.

use std::time::{Duration, Instant};

/// Shoptet's documented drain rate. The header does not report it, so it is a constant.
pub const DRAIN_PER_SEC: f64 = 10.0;
/// Shoptet's documented capacity, assumed until the first answer reports the real one.
const DEFAULT_MAX: f64 = 200.0;
/// Weight of the newest observation in the cost average: reacts within a handful of answers when
/// an addon switches from small reads to large exports, without jumping on one outlier.
const COST_WEIGHT: f64 = 0.25;

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
    /// Average drops a request of this e-shop costs.
    cost: f64,
    /// Requests sent whose answers have not reported a level yet.
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

    /// How long a request must wait before it may be sent; zero means now. The caller sends it
    /// when this is zero (calling [`Bucket::sent`]) or sleeps and asks again.
    pub fn wait(&self, now: Instant, reserve: f64) -> Duration {
        let predicted = self.drained(now) + f64::from(self.in_flight + 1) * self.cost;
        let room = (self.max - reserve).max(self.cost);
        if predicted <= room {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((predicted - room) / DRAIN_PER_SEC)
        }
    }

    pub fn sent(&mut self) {
        self.in_flight += 1;
    }

    /// An answer arrived: `filling` is its header, if it had one. Its request leaves the in-flight
    /// count either way.
    pub fn answered(&mut self, now: Instant, filling: Option<(f64, f64)>) {
        // The estimate for the other in-flight requests stays in the prediction: subtract only
        // the drained level, so the increment is this request's own cost.
        let before = self.drained(now);
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some((cur, max)) = filling {
            let increment = cur - before;
            if self.observed && increment >= 1.0 {
                self.cost += COST_WEIGHT * (increment - self.cost);
            }
            self.level = cur;
            self.max = max;
            self.at = now;
            self.observed = true;
        }
    }

    /// A 429 for a full bucket: the level is at least `max` until `retry_at`.
    pub fn overflowed(&mut self, now: Instant) {
        self.level = self.level.max(self.max);
        self.at = now;
    }

    pub fn cost(&self) -> f64 {
        self.cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            b.sent();
            b.answered(now, parse_filling(level.as_bytes()));
        }
        for _ in 0..10_000 {
            b.sent();
        }
        let w = b.wait(now, 10.0);
        assert!(w > Duration::from_secs(1000), "{w:?}");
    }

    #[test]
    fn an_empty_bucket_admits_at_once() {
        let now = Instant::now();
        assert_eq!(Bucket::new(now).wait(now, 10.0), Duration::ZERO);
    }

    #[test]
    fn a_nearly_full_bucket_waits_for_the_drain() {
        let now = Instant::now();
        let mut b = Bucket::new(now);
        b.sent();
        b.answered(now, Some((195.0, 200.0)));
        // Cost ~1, reserve 10: needs level <= 189, i.e. 6 drops drained = 0.6 s.
        let w = b.wait(now, 10.0);
        assert!(
            w > Duration::from_millis(550) && w < Duration::from_millis(700),
            "{w:?}"
        );
        assert_eq!(b.wait(now + Duration::from_secs(1), 10.0), Duration::ZERO);
    }

    #[test]
    fn in_flight_requests_count_against_the_room() {
        let now = Instant::now();
        let mut b = Bucket::new(now);
        b.answered(now, Some((185.0, 200.0)));
        assert_eq!(b.wait(now, 10.0), Duration::ZERO);
        for _ in 0..5 {
            b.sent();
        }
        assert!(b.wait(now, 10.0) > Duration::ZERO);
    }

    #[test]
    fn cost_estimate_follows_large_answers() {
        let now = Instant::now();
        let mut b = Bucket::new(now);
        let mut level = 0.0;
        for _ in 0..20 {
            b.sent();
            level += 6.0;
            b.answered(now, Some((level, 200.0)));
        }
        assert!(b.cost() > 5.0, "{}", b.cost());
    }
}
