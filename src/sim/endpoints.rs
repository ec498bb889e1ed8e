//! The simulator's data endpoints behind the API's limits and token checks ([`super::api`]):
//! e-shop info, orders (with writes), products, snapshots and jobs, webhooks (SPEC B8).

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::{json, Map, Value};

use super::api::{json_data, method_not_allowed, not_found, Answer};
use super::entities;
use super::state::{Eshop, Job, State, Webhook};
use super::util::now_shoptet;
use super::util::{random_hex, random_lower_alnum, shoptet_time};
use super::webhooks;

pub(super) async fn route(
    state: &Arc<State>,
    eshop: &Arc<Eshop>,
    parts: &Parts,
    body: &Bytes,
) -> Answer {
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
