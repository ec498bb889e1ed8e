//! Webhook deliveries (SPEC A4) from the simulator's own HTTP client (plain http).
//!
//! Body `{"eshopId","event","eventCreated","eventInstance"}` (+ `payload` for `order:*` events
//! registered with `sendPayload: "full"`), `Content-Type: application/json`, header
//! `Shoptet-Webhook-Signature` = hex HMAC-SHA1 of the body keyed with the e-shop's signature key
//! *current at each attempt*; an e-shop that never called renew-signature-key gets unsigned
//! deliveries (no header). `addon:*` events go to the configured `addon_webhook_url` and are
//! signed the same way. Only exactly 200 within 4 s counts as delivered; otherwise the attempt
//! is retried after `webhook_retry_delay`, 3 attempts in all.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{json, Value};

use super::state::{Attempt, DeliveryRecord, State};
use super::util::now_shoptet;

const ATTEMPTS: usize = 3;
const RECEIVER_TIMEOUT: Duration = Duration::from_secs(4);

pub(crate) fn event_body(
    eshop_id: u64,
    event: &str,
    instance: &str,
    payload: Option<Value>,
) -> Bytes {
    let mut v = json!({
        "eshopId": eshop_id,
        "event": event,
        "eventCreated": now_shoptet(),
        "eventInstance": instance,
    });
    if let (Some(p), Some(o)) = (payload, v.as_object_mut()) {
        o.insert("payload".to_owned(), p);
    }
    Bytes::from(v.to_string())
}

/// Sends `event` to the URL the e-shop registered for it; None when nothing is registered.
pub(crate) fn send_event(
    state: &Arc<State>,
    eshop_id: u64,
    event: &str,
    instance: &str,
) -> Option<u64> {
    let eshop = state.eshop(eshop_id)?;
    let (url, payload) = {
        let mut d = eshop.data.lock().ok()?;
        let hook = d.webhooks.iter().find(|w| w.event == event)?;
        let url = hook.url.clone();
        let full = hook.send_payload.as_str() == Some("full") && event.starts_with("order:");
        let payload = full
            .then(|| {
                d.orders()
                    .get(instance)
                    .map(|o| json!({"data": {"order": o}}))
            })
            .flatten();
        (url, payload)
    };
    Some(deliver(
        state,
        eshop_id,
        event,
        url,
        event_body(eshop_id, event, instance, payload),
    ))
}

/// Sends a system `addon:*` event to the partner's configured URL; None when none is set.
pub(crate) fn send_system(state: &Arc<State>, eshop_id: u64, event: &str) -> Option<u64> {
    let url = state.cfg().addon_webhook_url.clone()?;
    let body = event_body(eshop_id, event, &eshop_id.to_string(), None);
    Some(deliver(state, eshop_id, event, url, body))
}

/// Starts delivering `body` to `url` in the background; returns the delivery id.
pub(crate) fn deliver(
    state: &Arc<State>,
    eshop_id: u64,
    event: &str,
    url: String,
    body: Bytes,
) -> u64 {
    let id = state
        .next_delivery
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    state.push_delivery(DeliveryRecord {
        delivery_id: id,
        eshop_id,
        event: event.to_owned(),
        url: url.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
        attempts: Vec::new(),
        state: "pending",
    });
    let state = state.clone();
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = attempts(&state, id, eshop_id, &url, body) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    });
    id
}

async fn attempts(state: &State, id: u64, eshop_id: u64, url: &str, body: Bytes) {
    for n in 1..=ATTEMPTS {
        let key = state
            .eshop(eshop_id)
            .and_then(|e| e.signature_key.lock().ok().and_then(|k| k.clone()));
        let signature = key.map(|k| crate::shoptet::signature::sign(k.as_bytes(), &body));
        let result = post(state, url, body.clone(), signature.as_deref()).await;
        let delivered = matches!(result, Ok(200));
        let (status, error) = match result {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e)),
        };
        state.update_delivery(id, |r| {
            r.attempts.push(Attempt {
                signature,
                status,
                error,
            });
            if delivered {
                r.state = "delivered";
            } else if n == ATTEMPTS {
                r.state = "failed";
            }
        });
        if delivered {
            return;
        }
        if n < ATTEMPTS {
            tokio::time::sleep(state.cfg().webhook_retry_delay).await;
        }
    }
}

async fn post(
    state: &State,
    url: &str,
    body: Bytes,
    signature: Option<&str>,
) -> Result<u16, String> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(CONTENT_TYPE, "application/json");
    if let Some(sig) = signature {
        req = req.header("shoptet-webhook-signature", sig);
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| format!("bad webhook URL: {e}"))?;
    match tokio::time::timeout(RECEIVER_TIMEOUT, state.http.request(req)).await {
        Err(_) => Err("receiver did not answer within 4 s".to_owned()),
        Ok(Err(e)) => Err(format!("request failed: {e}")),
        Ok(Ok(resp)) => Ok(resp.status().as_u16()),
    }
}

/// Runs an async job: completes after `job_duration`, then sends `job:finished`.
pub(crate) fn run_job(state: Arc<State>, eshop_id: u64, job_id: String) {
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let wait = state.cfg().job_duration;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if let Some(mut j) = state.jobs.get_mut(&job_id) {
            j.completed = Some(now_shoptet());
        }
        send_event(&state, eshop_id, "job:finished", &job_id);
    });
}

/// Sends a GET to the addon's install URL with `code`, as Shoptet does on installation (5 s).
pub(crate) async fn call_install_url(
    state: &State,
    install_url: &str,
    code: &str,
) -> Result<u16, String> {
    let mut url = url::Url::parse(install_url).map_err(|e| format!("bad installUrl: {e}"))?;
    if url.scheme() != "http" {
        return Err("installUrl must be plain http".to_owned());
    }
    url.query_pairs_mut().append_pair("code", code);
    let req = Request::builder()
        .method(Method::GET)
        .uri(url.as_str())
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("bad installUrl: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(5), state.http.request(req)).await {
        Err(_) => Err("install URL did not answer within 5 s".to_owned()),
        Ok(Err(e)) => Err(format!("install request failed: {e}")),
        Ok(Ok(resp)) => Ok(resp.status().as_u16()),
    }
}
