//! The Shoptet API (`/api/...`, SPEC A3): token checks, concurrency limits, the leaky bucket,
//! faults, test hooks and a few data endpoints, all answering in Shoptet's envelope with
//! `X-Request-ID` and `X-RateLimit-Bucket-Filling`.
//!
//! Order of checks on every call: per-IP concurrency (429 nginx page), the access token
//! (401 `missing-access-token` / `invalid-token` / `expired-token`, "Addon installation is not
//! approved." when suspended), denied endpoints (403 `invalid-token-no-rights`), per-token
//! concurrency (429 nginx page), the bucket (429 envelope `too-many-requests`, `Retry-After`
//! HTTP-date), faults, then the endpoint. `latency` plus `X-Sim-Delay-Ms` is waited after that,
//! while the request still counts as in flight.
//!
//! Test hooks (request headers): `X-Sim-Delay-Ms: N` (clamped to 10 min); `X-Sim-Response-Size: N` pads the body to
//! about N bytes (in `metadata.simPadding`, so it stays an envelope and costs bucket drops);
//! `X-Sim-Fault: 500|503|drop|429|429-bucket` forces 500 `unknown-error`, 503
//! `system-maintenance`, a dropped connection, the concurrency 429 page, or a bucket 429 with a
//! `Retry-After` 1 s ahead. Random faults from the config: drop, else 500, else concurrency 429.
//!
//! Endpoints: `GET /api/eshop`; `GET|POST /api/orders` (page, itemsPerPage: default 20, max 100;
//! POST body `{"data":{...}}` → 201 `data.order`); `GET|PATCH|DELETE /api/orders/{code}` (PATCH
//! merges `data`'s fields); `GET /api/products` (default 20, max 100); `GET /api/products/snapshot`
//! → 202 `data.jobId` (403 `missing-job-finished-webhook` without a `job:finished` webhook);
//! `GET /api/system/jobs/{id}`; `GET|POST /api/webhooks`, `GET|DELETE /api/webhooks/{id}`,
//! `POST /api/webhooks/renew-signature-key`. Writes need `Content-Type` `application/json` or
//! `application/vnd.shoptet.v1.0` when they carry a body (else 415 `unsupported-content-type`);
//! bad JSON is 422 `invalid-request-data`; a page past the end is 404 `page-not-found`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use rand::Rng;
use serde_json::Value;
use tokio::time::Instant;

use super::bucket;
use super::state::{ApiToken, Eshop, RequestRecord, State, TokenCheck, SUSPENDED, UNINSTALLED};
use super::util::{envelope, error_item, http_date_after};
use super::util::{fnv1a_hex, read_body, request_id, JSON_UTF8};
use super::{HandlerResult, SimConfig, SimDrop};

const NGINX_429: &str = "<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n<center><h1>429 Too Many Requests</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// Longest `X-Sim-Delay-Ms` honoured (10 minutes); larger values are clamped.
const MAX_HOOK_DELAY_MS: u64 = 600_000;

/// An in-flight slot; dropping it frees the slot.
enum Slot {
    Ip(Arc<AtomicUsize>),
    Token(Arc<ApiToken>),
    Eshop(Arc<Eshop>),
}

impl Slot {
    fn counter(&self) -> &AtomicUsize {
        match self {
            Slot::Ip(c) => c,
            Slot::Token(t) => &t.in_flight,
            Slot::Eshop(e) => &e.in_flight,
        }
    }

    /// Takes a slot unless `limit` (0 = none) are taken; returns it with the new count.
    fn enter(self, limit: usize) -> Option<(Slot, usize)> {
        let now = self.counter().fetch_add(1, Ordering::AcqRel) + 1;
        if limit > 0 && now > limit {
            // Dropping `self` gives the slot back.
            return None;
        }
        Some((self, now))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counter().fetch_sub(1, Ordering::AcqRel);
    }
}

/// What one call learned, for headers, stats and the request log.
struct Call {
    rid: String,
    eshop: Option<Arc<Eshop>>,
    token_label: Option<String>,
    filling: u32,
    slots: [Option<Slot>; 3],
}

/// An endpoint's result before it becomes an envelope.
pub(super) struct Answer {
    status: StatusCode,
    data: Bytes,
    errors: Bytes,
    retry_after: Option<String>,
}

impl Answer {
    pub(super) fn data(status: StatusCode, v: &Value) -> Answer {
        Answer {
            status,
            data: Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            errors: Bytes::from_static(b"null"),
            retry_after: None,
        }
    }

    pub(super) fn raw(status: StatusCode, data: Bytes) -> Answer {
        Answer {
            status,
            data,
            errors: Bytes::from_static(b"null"),
            retry_after: None,
        }
    }

    pub(super) fn error(status: StatusCode, code: &str, message: &str, instance: &str) -> Answer {
        Answer {
            status,
            data: Bytes::from_static(b"null"),
            errors: Bytes::from(error_item(code, message, instance)),
            retry_after: None,
        }
    }
}

enum Outcome {
    Answer(Answer),
    Nginx429,
    Drop,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) async fn handle(
    state: Arc<State>,
    ip: Arc<AtomicUsize>,
    req: Request<Incoming>,
) -> HandlerResult {
    let cfg = state.cfg();
    state.counters.api_calls.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let body = read_body(body).await;
    let mut call = Call {
        rid: request_id(),
        eshop: None,
        token_label: None,
        filling: 0,
        slots: [None, None, None],
    };
    let outcome = match &body {
        Some(b) => run(&state, &cfg, ip, &parts, b, &mut call).await,
        None => Outcome::Answer(Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request-too-large",
            "Request body is too large.",
            "request",
        )),
    };
    let hook_delay = header(&parts.headers, "x-sim-delay-ms")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms.min(MAX_HOOK_DELAY_MS)))
        .unwrap_or_default();
    let delay = cfg.latency.saturating_add(hook_delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let result = finish(&cfg, &parts, &mut call, outcome);
    let status = result.as_ref().ok().map(|r| r.status().as_u16());
    match status {
        Some(s) => state.count_status(call.eshop.as_deref(), s),
        None => {
            state.counters.drops.fetch_add(1, Ordering::Relaxed);
        }
    }
    record(
        &state,
        &parts,
        body.as_deref().unwrap_or_default(),
        &call,
        status,
    );
    result
}

fn finish(cfg: &SimConfig, parts: &Parts, call: &mut Call, outcome: Outcome) -> HandlerResult {
    let mut resp = match outcome {
        Outcome::Drop => return Err(SimDrop),
        Outcome::Nginx429 => {
            let mut r = Response::new(Full::new(Bytes::from_static(NGINX_429.as_bytes())));
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
            r
        }
        Outcome::Answer(a) => {
            let pad = header(&parts.headers, "x-sim-response-size")
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0)
                .min(super::util::MAX_BODY);
            let body = envelope(&a.data, &a.errors, &call.rid, pad);
            let charged = a.status.is_success() && a.retry_after.is_none();
            if let (true, true, Some(e)) = (cfg.bucket, charged, &call.eshop) {
                call.filling = e.bucket.charge(
                    bucket::cost(body.len()),
                    cfg.bucket_capacity,
                    cfg.bucket_drain_per_sec,
                    Instant::now(),
                );
            }
            let mut r = Response::new(Full::new(body));
            *r.status_mut() = a.status;
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
            if let Some(ra) = a.retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                r.headers_mut().insert(RETRY_AFTER, ra);
            }
            r
        }
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&call.rid) {
        h.insert("x-request-id", v);
    }
    let filling = format!("{}/{}", call.filling, cfg.bucket_capacity);
    if let Ok(v) = HeaderValue::from_str(&filling) {
        h.insert("x-ratelimit-bucket-filling", v);
    }
    Ok(resp)
}

const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "shoptet-private-api-token",
    "cookie",
];

fn record(state: &State, parts: &Parts, body: &[u8], call: &Call, status: Option<u16>) {
    let mut headers = std::collections::BTreeMap::new();
    for (name, value) in parts.headers.iter() {
        let n = name.as_str();
        let v = if n == "shoptet-access-token" {
            call.token_label
                .clone()
                .unwrap_or_else(|| "<unknown token>".to_owned())
        } else if SECRET_HEADERS.contains(&n) {
            "<redacted>".to_owned()
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        headers
            .entry(n.to_owned())
            .and_modify(|old: &mut String| {
                old.push_str(", ");
                old.push_str(&v);
            })
            .or_insert(v);
    }
    let host = header(&parts.headers, HOST.as_str())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    state.requests.push(RequestRecord {
        seq: 0,
        eshop_id: call.eshop.as_ref().map(|e| e.id),
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        host,
        content_type: header(&parts.headers, CONTENT_TYPE.as_str()).map(str::to_owned),
        headers,
        token_label: call.token_label.clone(),
        body_len: body.len(),
        body_fnv1a: fnv1a_hex(body),
        status,
    });
}

fn token_error(code: &str, message: &str, instance: &str) -> Outcome {
    Outcome::Answer(Answer::error(
        StatusCode::UNAUTHORIZED,
        code,
        message,
        instance,
    ))
}

async fn run(
    state: &Arc<State>,
    cfg: &SimConfig,
    ip: Arc<AtomicUsize>,
    parts: &Parts,
    body: &Bytes,
    call: &mut Call,
) -> Outcome {
    match Slot::Ip(ip).enter(cfg.per_ip_concurrency) {
        Some((slot, _)) => call.slots[0] = Some(slot),
        None => return Outcome::Nginx429,
    }
    let Some(presented) = header(&parts.headers, "shoptet-access-token") else {
        return token_error(
            "missing-access-token",
            "Missing access token. Please add `Shoptet-Access-Token` header to your request.",
            "access-token",
        );
    };
    let Some(token) = state.tokens.get(presented.trim()).map(|t| t.clone()) else {
        return token_error("invalid-token", "Invalid access token.", "access-token");
    };
    let Some(eshop) = state.eshop(token.eshop_id) else {
        return token_error("invalid-token", "Invalid access token.", "access-token");
    };
    call.token_label = Some(token.label.clone());
    call.eshop = Some(eshop.clone());
    eshop.counters.api_calls.fetch_add(1, Ordering::Relaxed);
    match token.check(Instant::now()) {
        TokenCheck::Valid => {}
        TokenCheck::Revoked => {
            return token_error("invalid-token", "Invalid access token.", "access-token")
        }
        TokenCheck::Expired => {
            return token_error(
                "expired-token",
                "Token is expired. Please ask for new one.",
                "unknown",
            )
        }
    }
    match eshop.status() {
        SUSPENDED => {
            return token_error(
                "invalid-token",
                "Addon installation is not approved.",
                "access-token",
            )
        }
        UNINSTALLED => {
            return token_error("invalid-token", "Invalid access token.", "access-token")
        }
        _ => {}
    }
    let path = parts.uri.path();
    let denied = eshop
        .denied
        .read()
        .map(|d| d.iter().any(|p| path.starts_with(p.as_str())))
        .unwrap_or(false);
    if denied {
        let msg = format!(
            "Your access token \"{}\" has no defined rights for this resource.",
            token.label
        );
        return Outcome::Answer(Answer::error(
            StatusCode::FORBIDDEN,
            "invalid-token-no-rights",
            &msg,
            "access-token",
        ));
    }
    match Slot::Token(token.clone()).enter(cfg.per_token_concurrency) {
        Some((slot, n)) => {
            call.slots[1] = Some(slot);
            state
                .counters
                .peak_per_token
                .fetch_max(n as u64, Ordering::Relaxed);
        }
        None => return Outcome::Nginx429,
    }
    if let Some((slot, n)) = Slot::Eshop(eshop.clone()).enter(0) {
        call.slots[2] = Some(slot);
        eshop
            .counters
            .peak_concurrency
            .fetch_max(n as u64, Ordering::Relaxed);
    }
    if cfg.bucket {
        match eshop.bucket.admit(
            cfg.bucket_capacity,
            cfg.bucket_drain_per_sec,
            Instant::now(),
        ) {
            Ok(level) => call.filling = level,
            Err(wait) => return bucket_full(cfg, call, wait),
        }
    }
    if let Some(f) = fault(cfg, &parts.headers, call) {
        return f;
    }
    Outcome::Answer(super::endpoints::route(state, &eshop, parts, body).await)
}

/// A bucket 429 reports the bucket full, whether it is (the admission check) or a fault says so.
fn bucket_full(cfg: &SimConfig, call: &mut Call, wait: Duration) -> Outcome {
    call.filling = cfg.bucket_capacity;
    let mut a = Answer::error(
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-requests",
        "Too many requests, the leaky bucket is full.",
        "rate-limit",
    );
    a.retry_after = Some(http_date_after(wait));
    Outcome::Answer(a)
}

fn fault(cfg: &SimConfig, headers: &HeaderMap, call: &mut Call) -> Option<Outcome> {
    let server_error = || {
        Outcome::Answer(Answer::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unknown-error",
            "Simulated server error.",
            "unknown",
        ))
    };
    match header(headers, "x-sim-fault").map(str::trim) {
        Some("500") => return Some(server_error()),
        Some("503") => {
            return Some(Outcome::Answer(Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "system-maintenance",
                "The system is under maintenance.",
                "unknown",
            )))
        }
        Some("drop") => return Some(Outcome::Drop),
        Some("429") => return Some(Outcome::Nginx429),
        Some("429-bucket") => return Some(bucket_full(cfg, call, Duration::from_secs(1))),
        _ => {}
    }
    if cfg.fault_drop + cfg.fault_5xx + cfg.fault_429 <= 0.0 {
        return None;
    }
    let mut rng = rand::thread_rng();
    if rng.gen_bool(cfg.fault_drop.clamp(0.0, 1.0)) {
        Some(Outcome::Drop)
    } else if rng.gen_bool(cfg.fault_5xx.clamp(0.0, 1.0)) {
        Some(server_error())
    } else if rng.gen_bool(cfg.fault_429.clamp(0.0, 1.0)) {
        Some(Outcome::Nginx429)
    } else {
        None
    }
}

pub(super) fn not_found(what: &str) -> Answer {
    Answer::error(
        StatusCode::NOT_FOUND,
        "not-found",
        &format!("{what} not found."),
        "url",
    )
}

pub(super) fn method_not_allowed() -> Answer {
    Answer::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed for this endpoint.",
        "method",
    )
}

/// The request's JSON body `data` field, after the Content-Type check.
pub(super) fn json_data(parts: &Parts, body: &Bytes) -> Result<Value, Answer> {
    let ct = header(&parts.headers, CONTENT_TYPE.as_str())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !(ct.starts_with("application/json") || ct.starts_with("application/vnd.shoptet.v1.0")) {
        return Err(Answer::error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-content-type",
            "Content-Type must be application/json or application/vnd.shoptet.v1.0.",
            "content-type",
        ));
    }
    let invalid = |m: &str| {
        Answer::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request-data",
            m,
            "data",
        )
    };
    let mut v: Value =
        serde_json::from_slice(body).map_err(|_| invalid("Request body is not valid JSON."))?;
    match v.get_mut("data").map(Value::take) {
        Some(d) => Ok(d),
        None => Err(invalid("Request body must contain a data field.")),
    }
}
