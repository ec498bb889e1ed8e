//! The public listener (SPEC B5): Shoptet's calls to the addon, taken over by the proxy.
//!
//! `GET /install?code=` exchanges the one-time code, stores the installation, obtains the webhook
//! signature key and queues the "installed" event, all inside Shoptet's 5 s; `POST /webhooks`
//! verifies the signature and queues the body for the addon. Both paths are reachable from the
//! internet, so each request is judged on its source address first (CIDR allowlists), and nothing
//! an unauthenticated caller sends can change stored state: a webhook changes an installation's
//! status only when signed with that installation's key, and an uninstall only after Shoptet
//! itself confirms it.

use crate::error::ProxyError;
use crate::http::body::{json, RespBody};
use crate::install;
use crate::listeners::settings::SettingsPages;
use crate::proxy::Proxy;
use crate::secret::Secret;
use crate::shoptet::oauth::{FetchError, OAuthClient};
use crate::shoptet::signature;
use crate::store::{NewInstallation, OutboxKind, Status, Store};
use crate::telemetry::metrics::Metrics;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Shoptet fails an installation whose answer takes longer than 5 s; answer within this.
pub const INSTALL_BUDGET: Duration = Duration::from_millis(4500);
/// Of the budget, what the code exchange may use; the rest is for storing and the signature key.
const EXCHANGE_BUDGET: Duration = Duration::from_millis(3000);
/// How long a webhook answer waits for Shoptet to confirm an uninstall (Shoptet wants the answer
/// within 4 s); the check itself runs on past it.
const UNINSTALL_CHECK_WAIT: Duration = Duration::from_millis(2500);
/// Webhook bodies are small JSON; mass events list ids but stay far below this.
const MAX_WEBHOOK_BODY: usize = 256 * 1024;

type PublicBody = RespBody<()>;

/// What the public listener reaches: the store, the partner OAuth client (code exchange,
/// uninstall confirmation), the request path (signature keys, token cache), the metrics, its
/// own settings and the outbox's wake-up.
pub struct Public {
    /// Replaced whole by a reload; read per request without a lock.
    pub settings: arc_swap::ArcSwap<PublicSettings>,
    pub store: Store,
    pub oauth: Arc<OAuthClient>,
    pub proxy: Arc<Proxy>,
    pub metrics: Arc<Metrics>,
    /// Wakes the outbox worker when something was queued.
    pub outbox: Arc<Notify>,
    /// `/settings...` (SPEC B9), outside the install/webhook allowlists: admins' browsers call it.
    pub pages: Arc<SettingsPages>,
}

/// `[public]` allowlists and which deliveries the addon wants (`[addon]`).
pub struct PublicSettings {
    pub install_allow: Vec<IpNet>,
    pub webhook_allow: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    /// `[addon] events_url` is set: "installed" events are queued.
    pub deliver_events: bool,
    /// `[addon] webhooks_url` is set: verified webhooks are queued.
    pub deliver_webhooks: bool,
}

/// The client address: the socket peer, or — when the peer is a trusted proxy — the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !trusted.iter().any(|n| n.contains(ip)))
        .unwrap_or(peer)
}

/// What the proxy itself reads from a webhook body; the addon gets the body byte for byte.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookHead {
    pub eshop_id: u64,
    pub event: String,
}

/// Parses the head of a webhook body. Public so the fuzz target can reach it.
pub fn parse_webhook_head(body: &[u8]) -> Result<WebhookHead, ProxyError> {
    serde_json::from_slice(body)
        .map_err(|_| ProxyError::BadRequest("the webhook body is not Shoptet's JSON"))
}

fn allowed(list: &[IpNet], ip: IpAddr) -> bool {
    list.is_empty() || list.iter().any(|n| n.contains(&ip))
}

impl Public {
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<PublicBody> {
        let method = req.method().clone();
        let path = req.uri().path();
        if path == "/settings" || path.starts_with("/settings/") {
            let resp = self.pages.handle(req).await;
            self.metrics
                .count_request("public", &method, resp.status().as_u16());
            return resp;
        }
        let ip = client_ip(
            peer.ip(),
            req.headers(),
            &self.settings.load().trusted_proxies,
        );
        let resp = match (req.method(), req.uri().path()) {
            (&Method::GET, "/install") => {
                if allowed(&self.settings.load().install_allow, ip) {
                    self.install(req).await
                } else {
                    tracing::warn!(%ip, "install call from an address outside install_allow");
                    Err(ProxyError::Forbidden)
                }
            }
            (&Method::POST, "/webhooks") => {
                if allowed(&self.settings.load().webhook_allow, ip) {
                    self.webhook(req).await
                } else {
                    tracing::warn!(%ip, "webhook from an address outside webhook_allow");
                    Err(ProxyError::Forbidden)
                }
            }
            _ => Err(ProxyError::NotFound),
        };
        let resp = resp.unwrap_or_else(|e| e.to_response());
        self.metrics
            .count_request("public", &method, resp.status().as_u16());
        resp
    }

    async fn install(&self, req: Request<Incoming>) -> Result<Response<PublicBody>, ProxyError> {
        let code = req
            .uri()
            .query()
            .and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "code")
                    .map(|(_, v)| v.into_owned())
            })
            .filter(|c| !c.is_empty())
            .ok_or(ProxyError::BadRequest(
                "the code query parameter is missing",
            ))?;
        // The code can be exchanged once: with the store down the installation could not be
        // kept, so refuse before using the code up, and Shoptet (or an admin) retries with it.
        if !crate::listeners::admin::probe_store(&self.store, &self.metrics).await {
            tracing::warn!("installation: store unavailable; the code was not exchanged");
            return Err(ProxyError::StoreUnavailable);
        }
        // Shoptet's code is good once: an exchange abandoned half-way (the caller gave up, hyper
        // dropped this future) would lose the OAuth token Shoptet issued for it. The rest of the
        // installation runs to the end in a task of its own, whoever still waits for it.
        let installing = tokio::spawn(complete_install(
            Installer {
                store: self.store.clone(),
                oauth: self.oauth.clone(),
                proxy: self.proxy.clone(),
                outbox: self.outbox.clone(),
                deliver_events: self.settings.load().deliver_events,
            },
            code,
        ));
        installing.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "installation task failed");
            Err(ProxyError::Internal("the installation task failed"))
        })
    }

    async fn webhook(&self, req: Request<Incoming>) -> Result<Response<PublicBody>, ProxyError> {
        let metrics = &self.metrics;
        let reject = |why: &'static str| {
            metrics.webhooks.with_label_values(&["rejected"]).inc();
            tracing::warn!(reason = why, "webhook rejected");
            ProxyError::WebhookRejected
        };
        let signature = req
            .headers()
            .get("shoptet-webhook-signature")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = Limited::new(req.into_body(), MAX_WEBHOOK_BODY)
            .collect()
            .await
            .map_err(|_| ProxyError::BodyTooLarge)?
            .to_bytes();
        let signature = signature.ok_or_else(|| reject("no signature"))?;
        let head = parse_webhook_head(&body)?;
        let eshop_id = head.eshop_id;
        let inst = match self.store.get(eshop_id).await {
            Ok(Some(i)) => i,
            Ok(None) => return Err(reject("unknown e-shop")),
            Err(e) => {
                tracing::error!(eshop_id, error = %e, "webhook: store unavailable");
                return Err(ProxyError::StoreUnavailable);
            }
        };
        let key = inst
            .signature_key
            .as_ref()
            .ok_or_else(|| reject("no signature key stored"))?;
        if !signature::verify(key.expose().as_bytes(), &body, &signature) {
            return Err(reject("bad signature"));
        }
        metrics.webhooks.with_label_values(&["received"]).inc();
        // Acted on before the event is queued, so an addon reacting to `addon:suspend` already
        // finds the proxy refusing calls for that e-shop.
        self.system_event(eshop_id, &head.event, inst.status, inst.oauth_token)
            .await?;
        if self.settings.load().deliver_webhooks {
            if let Err(e) = self
                .store
                .outbox_push(OutboxKind::Webhook, Some(eshop_id), &body)
                .await
            {
                tracing::error!(eshop_id, error = %e, "webhook: cannot queue");
                // Shoptet retries a non-200 delivery; nothing is lost.
                return Err(ProxyError::StoreUnavailable);
            }
            self.outbox.notify_one();
        }
        tracing::info!(eshop_id, event = %head.event, "webhook accepted");
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({"status": "accepted"}),
        ))
    }

    /// Acts on signed `addon:*` events. Suspend and approve take effect at once; uninstall and
    /// terminate only after Shoptet's OAuth server confirms the token no longer works.
    /// A suspend or approve whose status cannot be stored fails with `proxy-store-unavailable`,
    /// so Shoptet resends it instead of the change being lost.
    async fn system_event(
        &self,
        eshop_id: u64,
        event: &str,
        current: Status,
        oauth_token: Secret,
    ) -> Result<(), ProxyError> {
        let tokens = self.proxy.tokens.clone();
        let store = self.store.clone();
        match event {
            // Only a new installation (install callback or import) revives an uninstalled one: a
            // late or replayed suspend/approve must not turn it active again.
            "addon:suspend" | "addon:approve" if current == Status::Uninstalled => {
                tracing::warn!(eshop_id, event, "ignored for an uninstalled e-shop");
            }
            "addon:suspend" | "addon:approve" => {
                let suspended = event == "addon:suspend";
                let status = if suspended {
                    Status::Suspended
                } else {
                    Status::Active
                };
                if let Err(e) = store.set_status(eshop_id, status).await {
                    tracing::error!(eshop_id, error = %e, "cannot store the new status");
                    return Err(ProxyError::StoreUnavailable);
                }
                tokens.set_suspended(eshop_id, suspended);
            }
            "addon:uninstall" | "addon:terminate" => {
                let oauth = self.oauth.clone();
                let check = tokio::spawn(async move {
                    match oauth.access_token(&oauth_token).await {
                        Err(FetchError::NotInstalled | FetchError::Unauthorized) => {
                            if let Err(e) = store.set_status(eshop_id, Status::Uninstalled).await {
                                tracing::error!(eshop_id, error = %e, "cannot mark uninstalled");
                            }
                            tokens.forget(eshop_id);
                            tracing::info!(eshop_id, "uninstall confirmed by Shoptet");
                        }
                        Ok(token) => {
                            // Still installed: the event was stale or forged. Keep the token we
                            // just got rather than waste one of the installation's five.
                            if let Ok(mut lock) = store.lock_token(eshop_id).await {
                                let _ = lock.save(&token).await;
                                lock.release().await;
                            }
                            tokens.forget(eshop_id);
                            tracing::warn!(
                                eshop_id,
                                "uninstall event, but Shoptet still issues tokens: ignored"
                            );
                        }
                        Err(e) => tracing::warn!(eshop_id, error = %e, "uninstall not confirmed"),
                    }
                });
                // Shoptet answers at once as a rule, and then the status is settled before the
                // webhook is answered and queued; a slow answer is awaited in the background so
                // Shoptet still gets its answer within 4 s.
                let _ = tokio::time::timeout(UNINSTALL_CHECK_WAIT, check).await;
            }
            _ => {}
        }
        Ok(())
    }
}

/// A TLS acceptor for `cert_file` and `key_file` whose certificate cannot be reloaded (see
/// [`super::tls::Certificate`] for one that can).
pub fn tls_acceptor(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    super::tls::Certificate::load(cert_file, key_file)?.acceptor()
}

/// What finishing an installation reaches, owned so it can run as a task of its own.
struct Installer {
    store: Store,
    oauth: Arc<OAuthClient>,
    proxy: Arc<Proxy>,
    outbox: Arc<Notify>,
    deliver_events: bool,
}

/// Exchanges `code`, stores the installation, obtains the signature key (waiting for it within
/// the install budget) and queues the "installed" event.
async fn complete_install(i: Installer, code: String) -> Result<Response<PublicBody>, ProxyError> {
    let deadline = Instant::now() + INSTALL_BUDGET;
    let grant = match tokio::time::timeout(EXCHANGE_BUDGET, i.oauth.exchange_code(&code)).await {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "installation: code exchange failed");
            return Err(ProxyError::InstallFailed);
        }
        Err(_) => {
            tracing::warn!("installation: the OAuth server did not answer in time");
            return Err(ProxyError::InstallFailed);
        }
    };
    let eshop_id = grant.eshop_id;
    let new = NewInstallation {
        eshop_id,
        eshop_url: grant.eshop_url.clone(),
        contact_email: grant.contact_email.clone(),
        oauth_token: grant.oauth_token,
    };
    if let Err(e) = i.store.upsert_installation(&new, None).await {
        tracing::error!(eshop_id, error = %e, "installation: store failed");
        return Err(ProxyError::StoreUnavailable);
    }
    let tokens = &i.proxy.tokens;
    tokens.forget(eshop_id);
    // The key lets the proxy verify this e-shop's webhooks. Without it the installation still
    // works for API calls, so a slow or failing renewal does not fail the installation. The
    // renewal runs as a task of its own: Shoptet issues the key once the request reaches it,
    // so a renewal that outlasts the install answer must still store the key it brings back.
    let (store, proxy) = (i.store.clone(), i.proxy.clone());
    let renewal = tokio::spawn(async move {
        install::renew_signature_key(&store, &proxy, eshop_id).await;
    });
    if tokio::time::timeout_at(deadline, renewal).await.is_err() {
        tracing::warn!(
            eshop_id,
            "installation: signature key not obtained in time; still waiting for it"
        );
    }
    if i.deliver_events {
        let event = serde_json::json!({
            "event": "installed",
            "eshopId": eshop_id,
            "eshopUrl": grant.eshop_url,
            "contactEmail": grant.contact_email,
        });
        match i
            .store
            .outbox_push(
                OutboxKind::Event,
                Some(eshop_id),
                event.to_string().as_bytes(),
            )
            .await
        {
            Ok(_) => i.outbox.notify_one(),
            Err(e) => {
                tracing::error!(eshop_id, error = %e, "installation: cannot queue the installed event")
            }
        }
    }
    tracing::info!(eshop_id, "installed");
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"eshopId": eshop_id, "status": "installed"}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().expect("net")).collect()
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 185.184.254.7"),
        );
        let trusted = nets(&["10.0.0.0/8"]);
        let direct: IpAddr = "203.0.113.9".parse().expect("ip");
        assert_eq!(client_ip(direct, &h, &trusted), direct);
        let via_proxy: IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(
            client_ip(via_proxy, &h, &trusted),
            "185.184.254.7".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn allowlists_match_cidrs_and_empty_allows_all() {
        let list = nets(&["78.24.15.64/26", "93.185.110.117/28"]);
        assert!(allowed(&list, "78.24.15.100".parse().expect("ip")));
        assert!(!allowed(&list, "78.24.15.128".parse().expect("ip")));
        assert!(allowed(&[], "8.8.8.8".parse().expect("ip")));
        let mapped: IpAddr = "::ffff:78.24.15.65".parse().expect("ip");
        assert!(allowed(&list, mapped.to_canonical()));
    }
}
