//! Every error the proxy itself answers with, and its one mapping to status code, `errorCode`,
//! metric label and body (SPEC B2).
//!
//! Errors made by the proxy use Shoptet's envelope so addon code parses them exactly like Shoptet's
//! own: `{"data":null,"errors":[{"errorCode":"proxy-...","message":"...","instance":"shoptet-proxy"}]}`.
//! Keeping the table in one `match` means a new variant cannot be added without deciding all four.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use std::time::Duration;

/// A failure answered by the proxy rather than by Shoptet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("the request names no e-shop: send the X-Shoptet-Eshop-Id header or use the /eshops/{{id}}/api/... path")]
    MissingEshopId,
    #[error("the e-shop id must be a positive decimal number")]
    InvalidEshopId,
    #[error("the e-shop id in the header differs from the one in the path")]
    ConflictingEshopId,
    /// A malformed request the other codes do not describe; the text says what is wrong.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("this proxy requires a client key: send Proxy-Authorization: Bearer <key>")]
    Unauthorized,
    #[error("the e-shop has no active installation of this addon")]
    EshopNotInstalled,
    #[error("the addon is suspended in this e-shop")]
    EshopSuspended,
    #[error(
        "Shoptet rejected the installation's OAuth token; the e-shop must reinstall the addon"
    )]
    OAuthTokenRejected,
    #[error("only /api/... paths are forwarded to Shoptet")]
    NotFound,
    #[error("this address may not call this endpoint")]
    Forbidden,
    #[error("the webhook is not signed with the e-shop's signature key")]
    WebhookRejected,
    #[error("the installation failed: the code could not be exchanged for an OAuth token")]
    InstallFailed,
    #[error("the store could not be reached")]
    StoreUnavailable,
    #[error("the request body is larger than this proxy accepts")]
    BodyTooLarge,
    #[error("too many requests are waiting for this e-shop")]
    QueueFull { retry_after: Duration },
    #[error("the Shoptet API could not be reached")]
    UpstreamUnreachable,
    #[error("no API access token could be obtained from Shoptet's OAuth server")]
    TokenUnavailable { retry_after: Duration },
    #[error("Shoptet's limit of valid API access tokens for this installation is reached")]
    TokenLimitReached { retry_after: Duration },
    #[error("the Shoptet API did not answer in time")]
    UpstreamTimeout,
    #[error("the request waited too long for a free upstream slot")]
    QueueTimeout,
    /// An invariant of the proxy itself broke (a task panicked, a value built from validated
    /// settings failed to build). The text names it for the log; the client sees only the code.
    #[error("the proxy failed internally; the request may be retried")]
    Internal(&'static str),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            MissingEshopId | InvalidEshopId | ConflictingEshopId | BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            Unauthorized | WebhookRejected => StatusCode::UNAUTHORIZED,
            EshopNotInstalled | EshopSuspended | OAuthTokenRejected | Forbidden => {
                StatusCode::FORBIDDEN
            }
            NotFound => StatusCode::NOT_FOUND,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            UpstreamUnreachable | InstallFailed => StatusCode::BAD_GATEWAY,
            TokenUnavailable { .. } | TokenLimitReached { .. } | StoreUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            UpstreamTimeout | QueueTimeout => StatusCode::GATEWAY_TIMEOUT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `errorCode` of the envelope; also the `reason` label of the error metric.
    pub fn code(&self) -> &'static str {
        use ProxyError::*;
        match self {
            MissingEshopId => "proxy-missing-eshop-id",
            InvalidEshopId => "proxy-invalid-eshop-id",
            ConflictingEshopId => "proxy-conflicting-eshop-id",
            BadRequest(_) => "proxy-bad-request",
            Unauthorized => "proxy-unauthorized",
            EshopNotInstalled => "proxy-eshop-not-installed",
            EshopSuspended => "proxy-eshop-suspended",
            OAuthTokenRejected => "proxy-oauth-token-rejected",
            NotFound => "proxy-not-found",
            Forbidden => "proxy-forbidden",
            WebhookRejected => "proxy-webhook-rejected",
            InstallFailed => "proxy-install-failed",
            StoreUnavailable => "proxy-store-unavailable",
            BodyTooLarge => "proxy-body-too-large",
            QueueFull { .. } => "proxy-queue-full",
            UpstreamUnreachable => "proxy-upstream-unreachable",
            TokenUnavailable { .. } => "proxy-token-unavailable",
            TokenLimitReached { .. } => "proxy-token-limit-reached",
            UpstreamTimeout => "proxy-upstream-timeout",
            QueueTimeout => "proxy-queue-timeout",
            Internal(_) => "proxy-internal-error",
        }
    }

    /// `Retry-After` in whole seconds (at least 1) for the errors the SPEC gives one.
    pub fn retry_after(&self) -> Option<u64> {
        use ProxyError::*;
        match self {
            QueueFull { retry_after }
            | TokenUnavailable { retry_after }
            | TokenLimitReached { retry_after } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            // The store is usually back within seconds; the caller (Shoptet, an admin) retries.
            StoreUnavailable => Some(1),
            _ => None,
        }
    }

    /// The JSON envelope, built without a serializer: every message is a fixed ASCII string
    /// without quotes or backslashes, so no escaping is needed (a unit test keeps it that way).
    pub fn body(&self) -> Bytes {
        Bytes::from(format!(
            r#"{{"data":null,"errors":[{{"errorCode":"{}","message":"{}","instance":"shoptet-proxy"}}]}}"#,
            self.code(),
            self
        ))
    }

    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let mut resp = Response::new(B::from(self.body()));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<ProxyError> {
        use ProxyError::*;
        let d = Duration::from_millis(1500);
        vec![
            MissingEshopId,
            InvalidEshopId,
            ConflictingEshopId,
            BadRequest("the body is not JSON"),
            Unauthorized,
            EshopNotInstalled,
            EshopSuspended,
            OAuthTokenRejected,
            NotFound,
            Forbidden,
            WebhookRejected,
            InstallFailed,
            StoreUnavailable,
            BodyTooLarge,
            QueueFull { retry_after: d },
            UpstreamUnreachable,
            TokenUnavailable { retry_after: d },
            TokenLimitReached { retry_after: d },
            UpstreamTimeout,
            QueueTimeout,
            Internal("a broken invariant"),
        ]
    }

    #[test]
    fn every_error_renders_a_valid_shoptet_envelope() {
        for e in all() {
            let v: serde_json::Value = serde_json::from_slice(&e.body()).expect("valid JSON");
            assert!(v["data"].is_null());
            assert_eq!(v["errors"][0]["errorCode"], e.code());
            assert_eq!(v["errors"][0]["instance"], "shoptet-proxy");
            assert_eq!(v["errors"][0]["message"], e.to_string());
            assert!(e.code().starts_with("proxy-"));
        }
    }

    #[test]
    fn status_codes_follow_the_spec_table() {
        let expect = [
            ("proxy-missing-eshop-id", 400),
            ("proxy-invalid-eshop-id", 400),
            ("proxy-conflicting-eshop-id", 400),
            ("proxy-bad-request", 400),
            ("proxy-unauthorized", 401),
            ("proxy-eshop-not-installed", 403),
            ("proxy-eshop-suspended", 403),
            ("proxy-oauth-token-rejected", 403),
            ("proxy-not-found", 404),
            ("proxy-forbidden", 403),
            ("proxy-webhook-rejected", 401),
            ("proxy-install-failed", 502),
            ("proxy-store-unavailable", 503),
            ("proxy-body-too-large", 413),
            ("proxy-queue-full", 429),
            ("proxy-upstream-unreachable", 502),
            ("proxy-token-unavailable", 503),
            ("proxy-token-limit-reached", 503),
            ("proxy-upstream-timeout", 504),
            ("proxy-queue-timeout", 504),
            ("proxy-internal-error", 500),
        ];
        let errs = all();
        assert_eq!(errs.len(), expect.len());
        for (e, (code, status)) in errs.iter().zip(expect) {
            assert_eq!(e.code(), code);
            assert_eq!(e.status().as_u16(), status, "{code}");
        }
    }

    #[test]
    fn retry_after_is_given_exactly_where_the_spec_says() {
        for e in all() {
            let resp: Response<Bytes> = e.to_response();
            let has = resp.headers().contains_key(header::RETRY_AFTER);
            let want = matches!(e.status().as_u16(), 429 | 503);
            assert_eq!(has, want, "{}", e.code());
            if has {
                // 1.5 s rounds up; the store's fixed hint is 1 s.
                let expect = if e == ProxyError::StoreUnavailable {
                    "1"
                } else {
                    "2"
                };
                assert_eq!(resp.headers()[header::RETRY_AFTER], expect, "{}", e.code());
            }
        }
    }
}
