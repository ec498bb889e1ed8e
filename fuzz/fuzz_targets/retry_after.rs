//! `Retry-After` parsing on arbitrary header values, plus round trips of generated values.
//!
//! Properties: never panics; any `u64` written as seconds parses back to itself; an HTTP-date
//! `n` seconds ahead of now parses back to `n` seconds; a date in the past means "now".
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoptet_proxy::proxy::parse_retry_after;
use std::time::{Duration, SystemTime};

/// 2024-07-01T12:01:00Z: whole seconds, since HTTP-dates have no fractions.
const NOW_SECS: u64 = 1_719_835_260;
/// HTTP-dates stop at year 9999.
const LAST_DATE_SECS: u64 = 253_402_300_799;

fuzz_target!(|data: &[u8]| {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    let _ = parse_retry_after(data, now);

    let mut raw = [0u8; 8];
    let n = data.len().min(8);
    raw[..n].copy_from_slice(&data[..n]);
    let secs = u64::from_le_bytes(raw);
    assert_eq!(
        parse_retry_after(secs.to_string().as_bytes(), now),
        Some(Duration::from_secs(secs))
    );
    assert_eq!(
        parse_retry_after(format!(" {secs} ").as_bytes(), now),
        Some(Duration::from_secs(secs))
    );

    let ahead = secs % (LAST_DATE_SECS - NOW_SECS);
    let date = httpdate::fmt_http_date(now + Duration::from_secs(ahead));
    assert_eq!(
        parse_retry_after(date.as_bytes(), now),
        Some(Duration::from_secs(ahead)),
        "{date}"
    );
    let past = httpdate::fmt_http_date(now - Duration::from_secs(secs % NOW_SECS));
    assert_eq!(
        parse_retry_after(past.as_bytes(), now),
        Some(Duration::ZERO)
    );
});
