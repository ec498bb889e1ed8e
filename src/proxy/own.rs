//! Requests the proxy sends to the Shoptet API on its own behalf (not for a client), with the
//! e-shop's current token from the cache, so installing does not mint a token that the first API
//! call then mints again. What they say is [`crate::shoptet::api`]'s part.

use super::Proxy;
use crate::error::ProxyError;
use crate::http::body::ReqBody;
use crate::secret::Secret;
use crate::shoptet::api;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};

const MAX_ANSWER: usize = 64 * 1024;

impl Proxy {
    /// Asks Shoptet for a new webhook signature key for `eshop_id` (the old one stops verifying).
    pub async fn renew_signature_key(&self, eshop_id: u64) -> Result<Secret, ProxyError> {
        let uri: http::Uri = format!(
            "{}{}",
            self.settings.load().api_base,
            api::RENEW_SIGNATURE_KEY
        )
        .parse()
        .map_err(|_| ProxyError::UpstreamUnreachable)?;
        let eshop = self.eshops.get(eshop_id);
        let mut token = self.tokens.get(&eshop).await?;
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
            let resp = tokio::time::timeout(
                self.settings.load().upstream_timeout,
                self.client.request(req),
            )
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
                token = self.tokens.replace(&eshop, &token).await?;
                continue;
            }
            let key = api::signature_key(&body).filter(|_| status.is_success());
            return key.ok_or_else(|| {
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
}
