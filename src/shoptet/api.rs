//! Calls the proxy makes to the Shoptet API on its own behalf, not for a client.
//!
//! Today that is one: `POST /api/webhooks/renew-signature-key`, made at installation and import so
//! the proxy can verify the e-shop's webhooks (SPEC A4, B5). It uses the e-shop's current token
//! from the cache, so installing does not mint a token that the first API call then mints again.

use crate::error::ProxyError;
use crate::http::body::ReqBody;
use crate::proxy::Proxy;
use crate::secret::Secret;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};

const MAX_ANSWER: usize = 64 * 1024;

/// Asks Shoptet for a new webhook signature key for `eshop_id` (the old one stops verifying).
pub async fn renew_signature_key(proxy: &Proxy, eshop_id: u64) -> Result<Secret, ProxyError> {
    let uri: http::Uri = format!(
        "{}/api/webhooks/renew-signature-key",
        proxy.settings.api_base
    )
    .parse()
    .map_err(|_| ProxyError::UpstreamUnreachable)?;
    let eshop = proxy.eshops.get(eshop_id);
    let mut token = proxy.tokens.get(&eshop).await?;
    for attempt in 0..2 {
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .header("shoptet-access-token", token.header.clone())
            .body(ReqBody::empty())
            .map_err(|_| ProxyError::UpstreamUnreachable)?;
        let resp = tokio::time::timeout(proxy.settings.upstream_timeout, proxy.client.request(req))
            .await
            .map_err(|_| ProxyError::UpstreamTimeout)?
            .map_err(|_| ProxyError::UpstreamUnreachable)?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|_| ProxyError::UpstreamUnreachable)?
            .to_bytes();
        if status == StatusCode::UNAUTHORIZED && attempt == 0 {
            token = proxy.tokens.replace(&eshop, &token).await?;
            continue;
        }
        let key = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["data"]["signatureKey"].as_str().map(str::to_owned))
            .filter(|k| !k.is_empty() && status.is_success());
        return key.map(Secret::new).ok_or_else(|| {
            tracing::warn!(
                eshop_id,
                status = status.as_u16(),
                "renew-signature-key failed"
            );
            ProxyError::UpstreamUnreachable
        });
    }
    Err(ProxyError::UpstreamUnreachable)
}
