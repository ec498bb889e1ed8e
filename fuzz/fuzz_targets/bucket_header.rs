//! `X-RateLimit-Bucket-Filling` parsing, and the bucket model fed with what it parses.
//!
//! Input: one header value per line, read as the answers to successive requests 100 ms apart.
//! Properties: the parser never panics and yields only finite levels with a positive capacity;
//! the model fed with those answers never panics when asked how long the next request waits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoptet_proxy::bucket::{parse_filling, Bucket};
use std::time::{Duration, Instant};

/// The reserve the proxy runs with (`app::BUCKET_RESERVE`).
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
        let _ = bucket.wait(now, RESERVE);
        bucket.sent();
        bucket.answered(now, filling);
        let _ = bucket.wait(now, RESERVE);
        let _ = bucket.wait(now + Duration::from_secs(3600), RESERVE);
    }
});
