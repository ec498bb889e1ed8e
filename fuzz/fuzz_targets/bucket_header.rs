//! `X-RateLimit-Bucket-Filling` parsing, and the bucket model fed with what it parses.
//!
//! Input: one header value per line, read as the answers to successive requests 100 ms apart.
//! Properties: the parser never panics and yields only finite levels with a positive capacity;
//! the model fed with those answers never panics when a request asks for room.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoptet_proxy::limits::bucket::{parse_filling, Bucket};
use std::time::Duration;
use tokio::time::Instant;

/// The proxy's default `proxy.bucket_reserve`.
const RESERVE: f64 = 10.0;

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut bucket = Bucket::new(start);
    for (i, line) in data.split(|b| *b == b'\n').take(64).enumerate() {
        let now = start + Duration::from_millis(100 * i as u64);
        let filling = parse_filling(line);
        if let Some((cur, max)) = filling {
            assert!(cur.is_finite() && max.is_finite() && cur >= 0.0 && max > 0.0);
        }
        // A line starting with '!' stands for a 429 that overflowed the bucket.
        if line.first() == Some(&b'!') {
            bucket.overflowed(now);
        }
        // A request is admitted or told how long to wait; one that waited too long goes anyway.
        if bucket.try_reserve(now, RESERVE).is_err() {
            bucket.reserve_anyway();
        }
        bucket.answered(now, filling);
        let _ = bucket.try_reserve(now, RESERVE);
        let _ = bucket.try_reserve(now + Duration::from_secs(3600), RESERVE);
    }
});
