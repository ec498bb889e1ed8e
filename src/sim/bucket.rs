//! The leaky bucket per (addon, e-shop): Shoptet's 2025 rate limit.
//!
//! Exact rule of the simulator (Shoptet documents only "by result size"):
//! - the level drains continuously at `drain_per_sec` drops/s;
//! - a request is admitted when, after draining, at least one drop of room is left
//!   (`level <= capacity - 1`); otherwise it is answered 429 and costs nothing, with
//!   `Retry-After` at the moment one drop of room will be free (at least 1 s ahead);
//! - an admitted request costs, after it ran, 1 drop plus 1 per started 10 KiB of answer body
//!   beyond the first 10 KiB (≤ 10 KiB: 1, ≤ 20 KiB: 2, …); the level is capped at `capacity`;
//! - `X-RateLimit-Bucket-Filling` is the level rounded up, over the capacity.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// 10 KiB: the answer size each extra drop stands for.
const DROP_BYTES: usize = 10 * 1024;

/// Drops an answer of `body_len` bytes costs.
pub(crate) fn cost(body_len: usize) -> u32 {
    let extra = body_len
        .saturating_sub(1)
        .checked_div(DROP_BYTES)
        .unwrap_or(0);
    1 + u32::try_from(extra).unwrap_or(u32::MAX - 1)
}

pub(crate) struct Bucket {
    state: Mutex<Level>,
}

struct Level {
    drops: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn new() -> Self {
        Bucket {
            state: Mutex::new(Level {
                drops: 0.0,
                at: Instant::now(),
            }),
        }
    }

    fn drained(level: &mut Level, drain: u32, now: Instant) {
        let dt = now.saturating_duration_since(level.at).as_secs_f64();
        level.drops = (level.drops - dt * f64::from(drain)).max(0.0);
        level.at = now;
    }

    /// Admits a request, or says how long until there is room for one drop.
    pub(crate) fn admit(&self, capacity: u32, drain: u32, now: Instant) -> Result<u32, Duration> {
        let Ok(mut level) = self.state.lock() else {
            return Ok(0);
        };
        Self::drained(&mut level, drain, now);
        let room_at = f64::from(capacity.saturating_sub(1));
        if level.drops <= room_at {
            return Ok(level.drops.ceil() as u32);
        }
        let wait = if drain == 0 {
            Duration::from_secs(60)
        } else {
            Duration::from_secs_f64((level.drops - room_at) / f64::from(drain))
        };
        Err(wait.max(Duration::from_secs(1)))
    }

    /// Adds `cost` drops after an admitted request ran; returns the level to report.
    pub(crate) fn charge(&self, cost: u32, capacity: u32, drain: u32, now: Instant) -> u32 {
        let Ok(mut level) = self.state.lock() else {
            return 0;
        };
        Self::drained(&mut level, drain, now);
        level.drops = (level.drops + f64::from(cost)).min(f64::from(capacity));
        level.drops.ceil() as u32
    }

    pub(crate) fn reset(&self) {
        if let Ok(mut level) = self.state.lock() {
            level.drops = 0.0;
            level.at = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_one_plus_one_per_started_ten_kib_beyond_the_first() {
        assert_eq!(cost(0), 1);
        assert_eq!(cost(10 * 1024), 1);
        assert_eq!(cost(10 * 1024 + 1), 2);
        assert_eq!(cost(20 * 1024), 2);
        assert_eq!(cost(20 * 1024 + 1), 3);
    }

    #[test]
    fn full_bucket_rejects_until_it_drained_one_drop() {
        let b = Bucket::new();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(b.admit(3, 1, t0).is_ok());
            b.charge(1, 3, 1, t0);
        }
        let wait = b.admit(3, 1, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(b.admit(3, 1, t0 + Duration::from_millis(500)).is_err());
        assert_eq!(b.admit(3, 1, t0 + Duration::from_millis(1000)), Ok(2));
    }

    #[test]
    fn big_answers_cannot_push_the_level_past_capacity() {
        let b = Bucket::new();
        let t0 = Instant::now();
        assert_eq!(b.charge(500, 200, 10, t0), 200);
        assert_eq!(b.charge(1, 200, 10, t0 + Duration::from_secs(1)), 191);
    }
}
