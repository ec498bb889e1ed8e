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

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::header::{HeaderValue, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use rand::Rng;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::state::{
    ApiToken, Eshop, Job, RequestRecord, State, TokenCheck, Webhook, SUSPENDED, UNINSTALLED,
};
use super::util::{
    envelope, error_item, http_date_after, random_hex, random_lower_alnum, shoptet_time,
};
use super::util::{fnv1a_hex, now_shoptet, read_body, request_id, JSON_UTF8};
use super::{bucket, entities};
use super::{webhooks, HandlerResult, SimConfig, SimDrop};

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
struct Answer {
    status: StatusCode,
    data: Bytes,
    errors: Bytes,
    retry_after: Option<String>,
}

impl Answer {
    fn data(status: StatusCode, v: &Value) -> Answer {
        Answer {
            status,
            data: Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            errors: Bytes::from_static(b"null"),
            retry_after: None,
        }
    }

    fn raw(status: StatusCode, data: Bytes) -> Answer {
        Answer {
            status,
            data,
            errors: Bytes::from_static(b"null"),
            retry_after: None,
        }
    }

    fn error(status: StatusCode, code: &str, message: &str, instance: &str) -> Answer {
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
    Outcome::Answer(route(state, &eshop, parts, body).await)
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

fn not_found(what: &str) -> Answer {
    Answer::error(
        StatusCode::NOT_FOUND,
        "not-found",
        &format!("{what} not found."),
        "url",
    )
}

fn method_not_allowed() -> Answer {
    Answer::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed for this endpoint.",
        "method",
    )
}

/// The request's JSON body `data` field, after the Content-Type check.
fn json_data(parts: &Parts, body: &Bytes) -> Result<Value, Answer> {
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

async fn route(state: &Arc<State>, eshop: &Arc<Eshop>, parts: &Parts, body: &Bytes) -> Answer {
    let path = parts.uri.path().trim_end_matches('/');
    let rest = path.strip_prefix("/api/").unwrap_or("");
    let segs: Vec<&str> = rest.split('/').collect();
    let m = &parts.method;
    let query = parts.uri.query();
    match (segs.as_slice(), m) {
        (["eshop"], &Method::GET) => Answer::raw(StatusCode::OK, eshop.eshop_json(&state.base_url)),
        (["orders"], &Method::GET) => list_orders(eshop, query),
        (["orders"], &Method::POST) => create_order(state, eshop, parts, body),
        (["orders", code], _) => order(state, eshop, code, m, parts, body),
        (["products"], &Method::GET) => list("products", entities::products(), query, 20, 100),
        (["products", "snapshot"], &Method::GET) => snapshot(state, eshop),
        (["system", "jobs", id], &Method::GET) => job(state, eshop, id),
        (["webhooks"], &Method::GET) => {
            let hooks: Vec<Value> = eshop
                .data
                .lock()
                .map(|d| d.webhooks.iter().map(Webhook::to_json).collect())
                .unwrap_or_default();
            list("webhooks", &hooks, query, 20, 500)
        }
        (["webhooks"], &Method::POST) => register_webhooks(state, eshop, parts, body),
        (["webhooks", "renew-signature-key"], &Method::POST) => {
            let key = random_hex(32);
            if let Ok(mut k) = eshop.signature_key.lock() {
                *k = Some(key.clone());
            }
            Answer::data(StatusCode::OK, &json!({"signatureKey": key}))
        }
        (["webhooks", id], _) => webhook(eshop, id, m),
        (["eshop" | "orders" | "products" | "webhooks"], _)
        | (["products", "snapshot"], _)
        | (["system", "jobs", _], _) => method_not_allowed(),
        _ => not_found("Endpoint"),
    }
}

struct Page {
    page: usize,
    per: usize,
}

fn page_params(query: Option<&str>, default: usize, max: usize) -> Result<Page, Answer> {
    let mut p = Page {
        page: 1,
        per: default,
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let parsed = || {
            v.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    Answer::error(
                        StatusCode::BAD_REQUEST,
                        "invalid-request-data",
                        &format!("Parameter {k} must be a positive integer."),
                        &k,
                    )
                })
        };
        match k.as_ref() {
            "page" => p.page = parsed()?,
            "itemsPerPage" => p.per = parsed()?.min(max),
            _ => {}
        }
    }
    Ok(p)
}

fn list(name: &str, items: &[Value], query: Option<&str>, default: usize, max: usize) -> Answer {
    let p = match page_params(query, default, max) {
        Ok(p) => p,
        Err(a) => return a,
    };
    let total = items.len();
    let page_count = total.div_ceil(p.per).max(1);
    if p.page > page_count {
        return Answer::error(
            StatusCode::NOT_FOUND,
            "page-not-found",
            &format!("Page {} not found, max page is {page_count}.", p.page),
            "page",
        );
    }
    let start = (p.page - 1) * p.per;
    let slice = &items[start.min(total)..(start + p.per).min(total)];
    let mut data = Map::new();
    data.insert(name.to_owned(), Value::Array(slice.to_vec()));
    data.insert(
        "paginator".to_owned(),
        json!({"totalCount": total, "page": p.page, "pageCount": page_count,
               "itemsOnPage": slice.len(), "itemsPerPage": p.per}),
    );
    Answer::data(StatusCode::OK, &Value::Object(data))
}

fn list_orders(eshop: &Eshop, query: Option<&str>) -> Answer {
    let orders: Vec<Value> = eshop
        .data
        .lock()
        .map(|mut d| d.orders().values().map(entities::order_list_item).collect())
        .unwrap_or_default();
    list("orders", &orders, query, 20, 100)
}

/// The request's `data`, which must be a JSON object (order create and update).
fn object_data(parts: &Parts, body: &Bytes) -> Result<Map<String, Value>, Answer> {
    match json_data(parts, body)? {
        Value::Object(m) => Ok(m),
        _ => Err(Answer::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request-data",
            "data must be an object.",
            "data",
        )),
    }
}

/// Order writes fire the e-shop's `order:*` webhooks, as Shoptet does for any order change.
fn create_order(state: &Arc<State>, eshop: &Eshop, parts: &Parts, body: &Bytes) -> Answer {
    let fields = match object_data(parts, body) {
        Ok(m) => m,
        Err(a) => return a,
    };
    let Ok(mut d) = eshop.data.lock() else {
        return not_found("E-shop");
    };
    let seq = d.next_order;
    d.next_order += 1;
    let (code, mut order) = entities::order(eshop.id, seq, &now_shoptet());
    merge(&mut order, fields);
    d.orders().insert(code.clone(), order.clone());
    drop(d);
    eshop
        .counters
        .orders_created
        .fetch_add(1, Ordering::Relaxed);
    webhooks::send_event(state, eshop.id, "order:create", &code);
    Answer::data(StatusCode::CREATED, &json!({"order": order}))
}

/// Copies `fields` over `order`, except the identity fields.
fn merge(order: &mut Value, fields: Map<String, Value>) {
    if let Some(o) = order.as_object_mut() {
        for (k, v) in fields {
            if k != "code" && k != "guid" {
                o.insert(k, v);
            }
        }
    }
}

fn order(
    state: &Arc<State>,
    eshop: &Eshop,
    code: &str,
    m: &Method,
    parts: &Parts,
    body: &Bytes,
) -> Answer {
    let patch = if m == Method::PATCH {
        match object_data(parts, body) {
            Ok(f) => Some(f),
            Err(a) => return a,
        }
    } else {
        None
    };
    let Ok(mut d) = eshop.data.lock() else {
        return not_found("Order");
    };
    let (answer, event) = match (m, patch) {
        (&Method::GET, _) => match d.orders().get(code) {
            Some(o) => (Answer::data(StatusCode::OK, &json!({"order": o})), None),
            None => (not_found("Order"), None),
        },
        (&Method::PATCH, Some(fields)) => match d.orders().get_mut(code) {
            Some(o) => {
                merge(o, fields);
                if let Some(obj) = o.as_object_mut() {
                    obj.insert("changeTime".into(), Value::String(now_shoptet()));
                }
                let a = Answer::data(StatusCode::OK, &json!({"order": o}));
                (a, Some("order:update"))
            }
            None => (not_found("Order"), None),
        },
        (&Method::DELETE, _) => match d.orders().remove(code) {
            Some(_) => (
                Answer::data(StatusCode::OK, &Value::Null),
                Some("order:delete"),
            ),
            None => (not_found("Order"), None),
        },
        _ => (method_not_allowed(), None),
    };
    // The event is sent after the lock is released: delivery reads the e-shop's webhooks.
    drop(d);
    if let Some(event) = event {
        webhooks::send_event(state, eshop.id, event, code);
    }
    answer
}

fn register_webhooks(state: &State, eshop: &Eshop, parts: &Parts, body: &Bytes) -> Answer {
    let items = match json_data(parts, body) {
        Ok(Value::Array(items)) if !items.is_empty() && items.len() <= 50 => items,
        Ok(_) => {
            return Answer::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-request-data",
                "data must be an array of 1 to 50 webhooks.",
                "data",
            )
        }
        Err(a) => return a,
    };
    let invalid = |m: String| {
        Answer::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request-data",
            &m,
            "data",
        )
    };
    let mut new = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let (Some(event), Some(url)) = (
            item.get("event").and_then(Value::as_str),
            item.get("url").and_then(Value::as_str),
        ) else {
            return invalid(format!("data[{i}] needs event and url strings."));
        };
        if event.starts_with("addon:") {
            return invalid(format!(
                "data[{i}]: system events are set in the partner admin."
            ));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2000 {
            return invalid(format!(
                "data[{i}]: url must be an http(s) URL of at most 2000 chars."
            ));
        }
        new.push((
            event.to_owned(),
            url.to_owned(),
            item.get("sendPayload").cloned().unwrap_or(Value::Null),
        ));
    }
    let Ok(mut d) = eshop.data.lock() else {
        return not_found("E-shop");
    };
    for (i, (event, _, _)) in new.iter().enumerate() {
        let dup_existing = d.webhooks.iter().any(|w| &w.event == event);
        let dup_in_request = new[..i].iter().any(|(e, _, _)| e == event);
        if dup_existing || dup_in_request {
            return Answer::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "webhook-exists",
                &format!("Webhook already exists for this event ({event})."),
                "event",
            );
        }
    }
    let created = now_shoptet();
    let mut out = Vec::with_capacity(new.len());
    for (event, url, send_payload) in new {
        let w = Webhook {
            id: state.next_webhook.fetch_add(1, Ordering::Relaxed),
            event,
            url,
            send_payload,
            created: created.clone(),
        };
        out.push(w.to_json());
        d.webhooks.push(w);
    }
    Answer::data(StatusCode::CREATED, &json!({"webhooks": out}))
}

fn webhook(eshop: &Eshop, id: &str, m: &Method) -> Answer {
    let Ok(id) = id.parse::<u64>() else {
        return not_found("Webhook");
    };
    let Ok(mut d) = eshop.data.lock() else {
        return not_found("Webhook");
    };
    let Some(pos) = d.webhooks.iter().position(|w| w.id == id) else {
        return not_found("Webhook");
    };
    match *m {
        Method::GET => Answer::data(
            StatusCode::OK,
            &json!({"webhook": d.webhooks[pos].to_json()}),
        ),
        Method::DELETE => {
            d.webhooks.remove(pos);
            Answer::data(StatusCode::OK, &Value::Null)
        }
        _ => method_not_allowed(),
    }
}

fn snapshot(state: &Arc<State>, eshop: &Arc<Eshop>) -> Answer {
    let registered = eshop
        .data
        .lock()
        .map(|d| d.webhooks.iter().any(|w| w.event == "job:finished"))
        .unwrap_or(false);
    if !registered {
        return Answer::error(
            StatusCode::FORBIDDEN,
            "missing-job-finished-webhook",
            "Register a job:finished webhook before calling asynchronous endpoints.",
            "webhook",
        );
    }
    let id = random_lower_alnum(7);
    state.jobs.insert(
        id.clone(),
        Job {
            eshop_id: eshop.id,
            endpoint: "/api/products/snapshot".to_owned(),
            created: now_shoptet(),
            completed: None,
        },
    );
    webhooks::run_job(state.clone(), eshop.id, id.clone());
    Answer::data(StatusCode::ACCEPTED, &json!({"jobId": id}))
}

fn job(state: &State, eshop: &Eshop, id: &str) -> Answer {
    let Some(j) = state.jobs.get(id).filter(|j| j.eshop_id == eshop.id) else {
        return not_found("Job");
    };
    let done = j.completed.is_some();
    let valid_until = shoptet_time(SystemTime::now() + Duration::from_secs(24 * 3600));
    Answer::data(
        StatusCode::OK,
        &json!({"job": {
            "jobId": id,
            "endpoint": j.endpoint,
            "creationTime": j.created,
            "completionTime": j.completed,
            "duration": null,
            "status": if done { "completed" } else { "pending" },
            "resultUrl": if done { Some(format!("{}/sim/jobs/{id}/result.jsonl.gz", state.base_url)) } else { None },
            "validUntil": if done { Some(valid_until) } else { None },
            "log": null,
        }}),
    )
}

/// The result file of a products snapshot: JSON Lines (one product a line), gzipped, as the
/// file behind Shoptet's `resultUrl` is. Built once: the catalogue never changes.
pub(crate) fn snapshot_result() -> Bytes {
    static GZ: OnceLock<Bytes> = OnceLock::new();
    GZ.get_or_init(|| {
        let mut lines = Vec::new();
        for p in entities::products() {
            lines.extend_from_slice(p.to_string().as_bytes());
            lines.push(b'\n');
        }
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        // Writing into a Vec cannot fail.
        let _ = gz.write_all(&lines);
        Bytes::from(gz.finish().unwrap_or_default())
    })
    .clone()
}
