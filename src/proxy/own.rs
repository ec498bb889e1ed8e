//! Requests the proxy sends to the Shoptet API on its own behalf (not for a client), with the
//! e-shop's current token from the cache, so installing does not mint a token that the first API
//! call then mints again: the webhook signature key, and the e-shop info that names the e-shop's
//! own OAuth server (settings page). What they say is [`crate::shoptet::api`]'s part; what to do
//! with the answer is [`super::policy`]'s, as for proxied requests.

use super::policy::{self, Answer, Attempt, Decision};
use super::Proxy;
use crate::error::ProxyError;
use crate::http::body::ReqBody;
use crate::secret::Secret;
use crate::shoptet::api;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};

const MAX_ANSWER: usize = 64 * 1024;

impl Proxy {
    /// Asks Shoptet for a new webhook signature key for `eshop_id` (the old one stops verifying).
    pub async fn renew_signature_key(&self, eshop_id: u64) -> Result<Secret, ProxyError> {
        let (status, body) = self
            .own_call(eshop_id, Method::POST, api::RENEW_SIGNATURE_KEY)
            .await?;
        let key = api::signature_key(&body).filter(|_| status.is_success());
        key.ok_or_else(|| {
            tracing::warn!(
                eshop_id,
                status = status.as_u16(),
                "renew-signature-key failed"
            );
            ProxyError::UpstreamUnreachable
        })
    }

    /// The base URL of the e-shop's own OAuth server (SPEC A5), as `GET /api/eshop` names it.
    pub async fn eshop_oauth_server(&self, eshop_id: u64) -> Result<url::Url, ProxyError> {
        let (status, body) = self.own_call(eshop_id, Method::GET, api::ESHOP).await?;
        let url = api::oauth_server_url(&body).filter(|_| status.is_success());
        url.ok_or_else(|| {
            tracing::warn!(
                eshop_id,
                status = status.as_u16(),
                "the e-shop info names no OAuth server"
            );
            ProxyError::UpstreamUnreachable
        })
    }

    /// One call to `path` with the e-shop's current token, replaced once if Shoptet rejects it
    /// → the answer's status and (bounded) body.
    async fn own_call(
        &self,
        eshop_id: u64,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, Bytes), ProxyError> {
        let uri: http::Uri = format!("{}{path}", self.settings.load().api_base)
            .parse()
            .map_err(|_| ProxyError::Internal("an own call's URL does not parse"))?;
        let eshop = self.eshops.get(eshop_id);
        let mut token = self.tokens.get(&eshop).await?;
        // Replayed once after a token rejection (which proves Shoptet refused it before
        // acting); only a GET is resent after a 429 (a POST may have been counted).
        let mut attempt = Attempt {
            resendable: true,
            idempotent: method == Method::GET,
            ..Attempt::default()
        };
        loop {
            let req = Request::builder()
                .method(method.clone())
                .uri(uri.clone())
                .header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )
                .header("shoptet-access-token", token.header.clone())
                .body(ReqBody::empty())
                .map_err(|_| ProxyError::Internal("an own call's request is invalid"))?;
            let resp = tokio::time::timeout(
                self.settings.load().upstream_timeout,
                self.client.request(req),
            )
            .await
            .map_err(|_| ProxyError::UpstreamTimeout)?
            .map_err(|e| {
                tracing::warn!(eshop_id, error = %e, "own call: no answer");
                ProxyError::UpstreamUnreachable
            })?;
            let status = resp.status();
            let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|_| ProxyError::UpstreamUnreachable)?
                .to_bytes();
            let answer = match status {
                StatusCode::UNAUTHORIZED => Answer::Unauthorized(policy::classify_401(&body)),
                StatusCode::TOO_MANY_REQUESTS => Answer::TooManyRequests {
                    retry_after: retry_after.as_ref(),
                },
                other => Answer::Other(other),
            };
            match policy::decide(&answer, &attempt, self.settings.load().max_retry_wait) {
                Decision::RefreshAndReplay => {
                    token = self.tokens.replace(&eshop, &token).await?;
                    attempt.replayed = true;
                }
                Decision::WaitAndRetry(wait) => {
                    attempt.retries_429 += 1;
                    tokio::time::sleep(wait).await;
                }
                Decision::PassBack(reason) => {
                    tracing::debug!(eshop_id, path, ?reason, "own call answered");
                    return Ok((status, body));
                }
            }
        }
    }
}
