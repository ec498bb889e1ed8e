//! Small helpers shared by the simulator's handlers: random identifiers, Shoptet's time format,
//! the API envelope and response constructors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use rand::Rng;

use super::Body;

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `n` random characters from `[a-z0-9]`: the shape of Shoptet's codes and tokens.
pub(crate) fn random_lower_alnum(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from(LOWER_ALNUM[rng.gen_range(0..LOWER_ALNUM.len())]))
        .collect()
}

/// `n` random lowercase hex digits (signature keys are 32 of them).
pub(crate) fn random_hex(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
        .collect()
}

static REQ_SEQ: AtomicU64 = AtomicU64::new(0);

/// A UUIDv7-looking request id (`019c8c34-...` like Shoptet's), unique within the process:
/// milliseconds since the epoch, then a process-wide sequence number.
pub(crate) fn request_id() -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let seq = REQ_SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:08x}-{:04x}-7{:03x}-8{:03x}-{:012x}",
        (ms >> 16) as u32,
        (ms & 0xffff) as u16,
        (seq >> 48) & 0xfff,
        (seq >> 36) & 0xfff,
        seq & 0xffff_ffff_ffff
    )
}

/// Shoptet's timestamp format, e.g. `2019-01-08T15:13:39+0000` (the simulator speaks UTC).
pub(crate) fn shoptet_time(t: SystemTime) -> String {
    let fmt =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+0000");
    time::OffsetDateTime::from(t)
        .format(&fmt)
        .unwrap_or_default()
}

pub(crate) fn now_shoptet() -> String {
    shoptet_time(SystemTime::now())
}

/// An HTTP-date `after` from now, rounded up to the next whole second so a client that waits
/// until it never comes back too early.
pub(crate) fn http_date_after(after: Duration) -> String {
    let t = SystemTime::now() + after;
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// FNV-1a 64 of a body, as 16 hex digits: a cheap fingerprint for the request log.
pub(crate) fn fnv1a_hex(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Largest request body any simulator route reads.
pub(crate) const MAX_BODY: usize = 8 << 20;

/// Reads a whole request body; `None` when it is too large or the connection failed.
pub(crate) async fn read_body(body: hyper::body::Incoming) -> Option<Bytes> {
    Limited::new(body, MAX_BODY)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}

pub(crate) const JSON_UTF8: &str = "application/json; charset=utf-8";

pub(crate) fn plain_json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    r
}

pub(crate) fn json_value(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    plain_json(status, Bytes::from(v.to_string()))
}

/// Builds the API envelope around already serialized `data` (or `null`) and `errors` (or
/// `null`), optionally padded (inside `metadata.simPadding`) to reach about `pad_to` bytes.
pub(crate) fn envelope(data: &[u8], errors: &[u8], request_id: &str, pad_to: usize) -> Bytes {
    const A: &[u8] = b"{\"data\":";
    const B: &[u8] = b",\"errors\":";
    const C: &[u8] = b",\"metadata\":{\"requestId\":\"";
    const PAD_START: &[u8] = b"\",\"simPadding\":\"";
    const END: &[u8] = b"\"}}";
    let base = A.len() + data.len() + B.len() + errors.len() + C.len() + request_id.len();
    let pad = pad_to.saturating_sub(base + END.len() + PAD_START.len());
    let mut out = Vec::with_capacity(base + END.len() + PAD_START.len() + pad);
    out.extend_from_slice(A);
    out.extend_from_slice(data);
    out.extend_from_slice(B);
    out.extend_from_slice(errors);
    out.extend_from_slice(C);
    out.extend_from_slice(request_id.as_bytes());
    if pad > 0 {
        out.extend_from_slice(PAD_START);
        out.resize(out.len() + pad, b'x');
    }
    out.extend_from_slice(END);
    Bytes::from(out)
}

/// The serialized `errors` array with one item.
pub(crate) fn error_item(code: &str, message: &str, instance: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!([{
        "errorCode": code, "message": message, "instance": instance
    }]))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_valid_json_with_and_without_padding() {
        for pad in [0, 10, 5000] {
            let b = envelope(b"{\"a\":1}", b"null", "rid", pad);
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["data"]["a"], 1);
            assert_eq!(v["metadata"]["requestId"], "rid");
            if pad == 5000 {
                assert_eq!(b.len(), 5000);
            }
        }
    }

    #[test]
    fn shoptet_time_has_the_documented_shape() {
        let s = shoptet_time(SystemTime::UNIX_EPOCH + Duration::from_secs(1_546_960_419));
        assert_eq!(s, "2019-01-08T15:13:39+0000");
    }

    #[test]
    fn tokens_have_the_documented_alphabet() {
        let t = random_lower_alnum(255);
        assert_eq!(t.len(), 255);
        assert!(t
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }
}
