//! The admin listener (SPEC B7): metrics, health, the installation admin API, the live state of
//! one e-shop and the status pages ([`crate::listeners::status`]).
//!
//! Reads (`GET`, `/metrics`, `/healthz`, `/readyz`) need no credentials because the listener is on
//! loopback by default; writes need `Authorization: Bearer <admin token>` and are off entirely when
//! no admin token is configured. No answer here ever contains a secret.

use crate::error::ProxyError;
use crate::http::body::{json, local, RespBody};
use crate::install::import_installation;
use crate::listeners::server::Shutdown;
use crate::listeners::status;
use crate::proxy::tag::parse_id;
use crate::proxy::Proxy;
use crate::secret::Secret;
use crate::state::eshops::Runtime;
use crate::store::{NewInstallation, Store};
use crate::telemetry::metrics::Metrics;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An import body is the code-exchange answer: a few hundred bytes.
const MAX_IMPORT_BODY: usize = 64 * 1024;

type AdminBody = RespBody<()>;

/// What the admin listener reaches: the store, the request path (for imports, which fetch a
/// signature key with the e-shop's token), the metrics, its own token and the readiness flag.
pub struct Admin {
    pub store: Store,
    pub proxy: Arc<Proxy>,
    pub metrics: Arc<Metrics>,
    /// `[admin] token`; `None` turns the write endpoints off. Replaced by a reload.
    pub token: arc_swap::ArcSwapOption<Secret>,
    pub readiness: Readiness,
}

/// Ready = listeners bound and not draining (SPEC B7's `/readyz`).
#[derive(Clone)]
pub struct Readiness {
    bound: Arc<AtomicBool>,
    shutdown: Shutdown,
}

impl Readiness {
    pub fn new(shutdown: Shutdown) -> Readiness {
        Readiness {
            bound: Arc::new(AtomicBool::new(false)),
            shutdown,
        }
    }

    /// Every listener is bound.
    pub fn set_bound(&self) {
        self.bound.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.bound.load(Ordering::Acquire) && !self.shutdown.is_triggered()
    }
}

/// The body of `PUT /admin/eshops/{id}`: what Shoptet's code exchange returned (SPEC A1).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Import {
    #[serde(rename = "access_token")]
    access_token: String,
    eshop_id: Option<u64>,
    eshop_url: Option<String>,
    contact_email: Option<String>,
}

fn text(status: StatusCode, body: &'static str) -> Response<AdminBody> {
    local(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn html(status: StatusCode, page: String) -> Response<AdminBody> {
    let mut resp = local(status, "text/html; charset=utf-8", Bytes::from(page));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(status::CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// How long a store check may take before the store counts as down.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Pings the store and sets `shoptet_proxy_store_up`; `true` when it answered. Run at each
/// scrape and every second by `app` (SPEC B10), logging only when the answer changes.
pub async fn probe_store(store: &Store, metrics: &Metrics) -> bool {
    let result = match tokio::time::timeout(STORE_PROBE_TIMEOUT, store.ping()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("no answer within 1 s".to_owned()),
    };
    let up = result.is_ok();
    let was_up = metrics.store_up.get() == 1;
    metrics.store_up.set(i64::from(up));
    match result {
        Err(e) if was_up => tracing::error!(error = %e, "store unreachable"),
        Ok(()) if !was_up => tracing::info!("store reachable again"),
        _ => {}
    }
    up
}

fn store_failed(e: impl std::fmt::Display) -> Response<AdminBody> {
    tracing::error!(error = %e, "store operation failed");
    ProxyError::StoreUnavailable.to_response()
}

impl Admin {
    pub async fn handle(&self, req: Request<Incoming>) -> Response<AdminBody> {
        let method = req.method().clone();
        let resp = self.route(req).await.unwrap_or_else(|e| e.to_response());
        self.metrics
            .count_request("admin", &method, resp.status().as_u16());
        resp
    }

    fn authorize(&self, req: &Request<Incoming>) -> Result<(), ProxyError> {
        let token = self.token.load();
        let Some(token) = token.as_deref() else {
            // Writes are off: behave as if the endpoint did not exist.
            return Err(ProxyError::NotFound);
        };
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .ok_or(ProxyError::Unauthorized)?;
        token
            .ct_eq(presented)
            .then_some(())
            .ok_or(ProxyError::Unauthorized)
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<AdminBody>, ProxyError> {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (req.method(), segments.as_slice()) {
            (&Method::GET, ["healthz"]) => Ok(text(StatusCode::OK, "ok\n")),
            (&Method::GET, ["readyz"]) => Ok(self.readyz().await),
            (&Method::GET, ["metrics"]) => Ok(self.metrics().await),
            (&Method::GET, ["admin", "eshops"]) => Ok(self.list().await),
            (&Method::GET, ["admin", "eshops", id]) => {
                let id = parse_id(id.as_bytes())?;
                self.live(id).await
            }
            (&Method::GET, [""]) => Ok(self.overview_page().await),
            (&Method::GET, ["eshops", id]) => {
                let id = parse_id(id.as_bytes())?;
                Ok(self.eshop_page(id).await)
            }
            (&Method::PUT, ["admin", "eshops", id]) => {
                self.authorize(&req)?;
                let id = parse_id(id.as_bytes())?;
                self.import(id, req.into_body()).await
            }
            (&Method::DELETE, ["admin", "eshops", id]) => {
                self.authorize(&req)?;
                let id = parse_id(id.as_bytes())?;
                Ok(self.remove(id).await)
            }
            (&Method::POST, ["admin", "eshops", id, "refresh"]) => {
                // Credentials first: an unauthenticated caller learns nothing, not even that
                // its id is malformed.
                self.authorize(&req)?;
                let id = parse_id(id.as_bytes())?;
                self.refresh(id).await
            }
            _ => Err(ProxyError::NotFound),
        }
    }

    /// The store was reached at start (`serve` opened it before binding); a later outage does
    /// not take this replica out of the balancer while cached tokens still serve (SPEC B10).
    async fn readyz(&self) -> Response<AdminBody> {
        if !self.readiness.is_ready() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        text(StatusCode::OK, "ready\n")
    }

    async fn metrics(&self) -> Response<AdminBody> {
        // Store-backed gauges are read at scrape time: cheap, and always current. During an
        // outage they keep their last values rather than make the scrape wait on the store.
        if probe_store(&self.store, &self.metrics).await {
            self.store_gauges().await;
        }
        let mut resp = Response::new(AdminBody::full(Bytes::from(self.metrics.render())));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }

    async fn store_gauges(&self) {
        if let Ok(counts) = self.store.count_by_status().await {
            for status in crate::telemetry::metrics::INSTALLATION_STATUSES {
                let n = counts
                    .iter()
                    .find(|(s, _)| s.as_str() == status)
                    .map_or(0, |(_, n)| *n);
                self.metrics
                    .installations
                    .with_label_values(&[status])
                    .set(n as i64);
            }
        }
        if let Ok(depth) = self.store.outbox_depth().await {
            self.metrics.outbox_depth.set(depth as i64);
        }
    }

    async fn list(&self) -> Response<AdminBody> {
        match self.store.list().await {
            Ok(list) => json(StatusCode::OK, &serde_json::json!({ "eshops": list })),
            Err(e) => store_failed(e),
        }
    }

    /// This replica's live state of one e-shop, or `None` when it holds no record of it.
    fn runtime(&self, eshop_id: u64) -> Runtime {
        self.proxy
            .eshops
            .existing(eshop_id)
            .map_or_else(Runtime::idle, |e| e.runtime())
    }

    /// `GET /admin/eshops/{id}`: the list item plus `runtime` (SPEC B7).
    async fn live(&self, eshop_id: u64) -> Result<Response<AdminBody>, ProxyError> {
        let summary = match self.store.summary(eshop_id).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(ProxyError::NotFound),
            Err(e) => return Ok(store_failed(e)),
        };
        let mut item = serde_json::to_value(&summary).unwrap_or_default();
        item["runtime"] = serde_json::to_value(self.runtime(eshop_id)).unwrap_or_default();
        Ok(json(StatusCode::OK, &item))
    }

    async fn overview_page(&self) -> Response<AdminBody> {
        let installations = match self.store.count_by_status().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "status page: store unavailable");
                None
            }
        };
        let (busiest, eshops_known) = status::busiest(&self.proxy.eshops, status::BUSIEST);
        let overview = status::Overview {
            installations,
            token_fetches: Metrics::by_label(&self.metrics.token_fetches),
            proxy_errors: Metrics::by_label(&self.metrics.proxy_errors),
            busiest,
            eshops_known,
        };
        html(StatusCode::OK, status::render_overview(&overview))
    }

    async fn eshop_page(&self, eshop_id: u64) -> Response<AdminBody> {
        match self.store.summary(eshop_id).await {
            Ok(Some(s)) => html(
                StatusCode::OK,
                status::render_eshop(&s, &self.runtime(eshop_id)),
            ),
            Ok(None) => html(StatusCode::NOT_FOUND, status::render_unknown(eshop_id)),
            Err(e) => store_failed(e),
        }
    }

    async fn import(
        &self,
        eshop_id: u64,
        body: Incoming,
    ) -> Result<Response<AdminBody>, ProxyError> {
        let bytes = Limited::new(body, MAX_IMPORT_BODY)
            .collect()
            .await
            .map_err(|_| ProxyError::BodyTooLarge)?
            .to_bytes();
        let import: Import = serde_json::from_slice(&bytes).map_err(|_| {
            ProxyError::BadRequest(
                "the body must be the JSON of Shoptet's code exchange, with access_token",
            )
        })?;
        if import.access_token.is_empty() {
            return Err(ProxyError::BadRequest("access_token is empty"));
        }
        if import.eshop_id.is_some_and(|id| id != eshop_id) {
            return Err(ProxyError::BadRequest(
                "eshopId in the body differs from the path",
            ));
        }
        let new = NewInstallation {
            eshop_id,
            eshop_url: import.eshop_url,
            contact_email: import.contact_email,
            oauth_token: Secret::new(import.access_token),
        };
        let key = match import_installation(&self.store, &self.proxy, &new).await {
            Ok(key) => key,
            Err(e) => return Ok(store_failed(e)),
        };
        tracing::info!(eshop_id, "installation imported");
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({"eshopId": eshop_id, "status": "active", "webhookSignatureKey": key.label()}),
        ))
    }

    async fn remove(&self, eshop_id: u64) -> Response<AdminBody> {
        match self.store.remove(eshop_id).await {
            Ok(true) => {
                self.proxy.tokens.forget(eshop_id);
                tracing::info!(eshop_id, "installation removed");
                let mut r = Response::new(AdminBody::full(Bytes::new()));
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            Ok(false) => ProxyError::EshopNotInstalled.to_response(),
            Err(e) => store_failed(e),
        }
    }

    async fn refresh(&self, eshop_id: u64) -> Result<Response<AdminBody>, ProxyError> {
        let stored = match self.store.get(eshop_id).await {
            Ok(Some(inst)) => inst.access_token,
            Ok(None) => return Err(ProxyError::EshopNotInstalled),
            Err(e) => return Ok(store_failed(e)),
        };
        let tokens = &self.proxy.tokens;
        let eshop = self.proxy.eshops.get(eshop_id);
        let current = tokens.get(&eshop).await?;
        // With no token stored, `get` has just minted one: replacing it would mint a second.
        let fresh = match stored {
            Some(_) => tokens.replace(&eshop, &current).await?,
            None => current,
        };
        let expires = time::OffsetDateTime::from(std::time::SystemTime::now() + fresh.remaining())
            .format(&time::format_description::well_known::Rfc3339)
            .ok();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({"eshopId": eshop_id, "tokenExpiresAt": expires}),
        ))
    }
}
