//! Delivery of queued events and verified webhooks to the addon (SPEC B5).
//!
//! The public listener answers Shoptet only after the body is in the store's outbox, so a webhook
//! survives a crash or a down addon. This worker takes due items, POSTs each to `[addon]
//! events_url` or `webhooks_url`, deletes it on a 2xx, and otherwise reschedules it with backoff
//! (1 s doubling up to `retry_max`), forever: dropping an undelivered webhook would lose data the
//! addon cannot get back. Items are leased by the store, so several replicas share the work.
//!
//! With `[addon] signing_key_file`, each delivery carries `Shoptet-Webhook-Signature` computed
//! over the exact bytes sent, in Shoptet's own scheme, so the addon's SDK validator checks it with
//! that key; Shoptet's signature (under the e-shop's key, which the addon never has) is not kept.

use crate::http::body::ReqBody;
use crate::http::client::Client;
use crate::listeners::server::Shutdown;
use crate::secret::Secret;
use crate::shoptet::signature;
use crate::store::{OutboxItem, OutboxKind, Store};
use crate::telemetry::metrics::Metrics;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

/// Shoptet gives its receivers 4 s; the addon gets the same.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(4);
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Items taken per round.
const BATCH: usize = 32;
/// Poll interval when nothing wakes the worker (retries coming due, other replicas' items).
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Backoff before attempt `attempts + 1`.
pub fn backoff(attempts: u32, max: Duration) -> Duration {
    FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(attempts.min(20)))
        .min(max)
}

/// Where deliveries go (`[addon]`).
pub struct Targets {
    pub events_url: Option<url::Url>,
    pub webhooks_url: Option<url::Url>,
    /// The longest backoff between attempts.
    pub retry_max: Duration,
    /// `[addon] signing_key_file`'s key; `None`: deliveries go unsigned.
    pub signing_key: Option<Secret>,
}

/// The delivery worker's handles: the store's outbox, its own HTTP client for the addon (not
/// the one built for Shoptet, whose CA settings and pool are Shoptet's), the metrics.
pub struct Outbox {
    /// Replaced by a reload: items delivered afterwards go to the new URLs.
    pub targets: arc_swap::ArcSwap<Targets>,
    pub store: Store,
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
}

/// Runs until shutdown; an item being delivered when shutdown comes is finished first.
pub async fn run(app: Arc<Outbox>, wake: Arc<Notify>) {
    loop {
        if app.shutdown.is_triggered() {
            return;
        }
        let due = match app.store.outbox_due(SystemTime::now(), BATCH).await {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "outbox: store unavailable");
                Vec::new()
            }
        };
        if due.is_empty() {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = app.shutdown.wait() => return,
            }
            continue;
        }
        let deliveries = due.into_iter().map(|item| deliver(&app, item));
        futures_util::future::join_all(deliveries).await;
    }
}

async fn deliver(app: &Outbox, item: OutboxItem) {
    let targets = app.targets.load_full();
    let url = match item.kind {
        OutboxKind::Event => targets.events_url.as_ref(),
        OutboxKind::Webhook => targets.webhooks_url.as_ref(),
    };
    let Some(url) = url else {
        // The target was unset after the item was queued: keep it until one is configured.
        let _ = app
            .store
            .outbox_retry_at(
                item.id,
                item.attempts,
                SystemTime::now() + targets.retry_max,
            )
            .await;
        return;
    };
    let ok = match post(app, url.as_str(), item.body.clone()).await {
        Ok(status) if status.is_success() => true,
        Ok(status) => {
            tracing::warn!(
                id = item.id,
                status = status.as_u16(),
                "outbox: addon refused delivery"
            );
            false
        }
        Err(e) => {
            tracing::warn!(id = item.id, error = %e, "outbox: delivery failed");
            false
        }
    };
    let label = if ok { "delivered" } else { "failed" };
    app.metrics.webhooks.with_label_values(&[label]).inc();
    let settled = if ok {
        app.store.outbox_delivered(item.id).await
    } else {
        let wait = backoff(item.attempts, targets.retry_max);
        app.store
            .outbox_retry_at(item.id, item.attempts + 1, SystemTime::now() + wait)
            .await
    };
    if let Err(e) = settled {
        // The lease expires and the item comes due again: delivered at least once, never lost.
        tracing::warn!(id = item.id, error = %e, "outbox: could not record the delivery outcome");
    }
}

static SIGNATURE: header::HeaderName = header::HeaderName::from_static("shoptet-webhook-signature");

async fn post(app: &Outbox, url: &str, body: Vec<u8>) -> Result<http::StatusCode, String> {
    let mut req = Request::builder().method(Method::POST).uri(url).header(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(key) = &app.targets.load().signing_key {
        let sig = signature::sign(key.expose().as_bytes(), &body);
        req = req.header(&SIGNATURE, sig);
    }
    let req = req
        .body(ReqBody::full(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(DELIVERY_TIMEOUT, app.client.request(req))
        .await
        .map_err(|_| "no answer within 4 s".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(resp.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_the_cap() {
        let max = Duration::from_secs(15);
        let waits: Vec<u64> = (0..6).map(|a| backoff(a, max).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 15, 15]);
        assert_eq!(backoff(u32::MAX, max), max);
    }
}
