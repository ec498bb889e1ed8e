//! Client of the partner's OAuth server (SPEC A1, A2): code exchange at installation and
//! getAccessToken for the short-lived API tokens.
//!
//! Each answer is classified into the few outcomes the proxy acts on; Shoptet documents almost
//! none of the statuses, so classification looks at the `error` string first and the status second.
//! The answer bodies carry secrets: they are parsed here and never logged or echoed.

use crate::http::body::ReqBody;
use crate::http::client::Client;
use crate::secret::Secret;
use crate::store::AccessToken;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use std::time::{Duration, SystemTime};

/// OAuth answers are a few hundred bytes; anything far larger is not an OAuth answer.
const MAX_ANSWER: usize = 64 * 1024;

/// Why getAccessToken gave no token. `label()` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("the OAuth server rejected the installation's OAuth token (401)")]
    Unauthorized,
    #[error("the addon is suspended in this e-shop")]
    Suspended,
    #[error("the addon is not installed in this e-shop")]
    NotInstalled,
    #[error("the installation already has the maximum number of valid API tokens")]
    MaxTokens,
    #[error("getAccessToken failed: {0}")]
    Other(String),
}

impl FetchError {
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::Unauthorized => "unauthorized",
            FetchError::Suspended => "suspended",
            FetchError::NotInstalled => "not_installed",
            FetchError::MaxTokens => "max_tokens",
            FetchError::Other(_) => "error",
        }
    }
}

/// What the code exchange gave: one installation's identity and its long-lived OAuth token.
#[derive(Debug)]
pub struct Grant {
    pub oauth_token: Secret,
    pub eshop_id: u64,
    pub eshop_url: Option<String>,
    pub contact_email: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("the OAuth server refused the code: HTTP {status}, error {error:?}")]
    Refused { status: u16, error: Option<String> },
    #[error("the OAuth server could not be reached: {0}")]
    Unreachable(String),
    #[error("the OAuth server's answer is not a valid grant: {0}")]
    BadAnswer(String),
}

pub struct OAuthClient {
    client: Client,
    token_url: Uri,
    access_token_url: Uri,
    /// What a reload may change ([`OAuthClient::set_partner`]); the URLs need a restart.
    partner: arc_swap::ArcSwap<Partner>,
}

/// The addon's identity towards the partner OAuth server and how long a call may take.
pub struct Partner {
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub redirect_uri: String,
    pub timeout: Duration,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
}

/// Shoptet mixes cases in this answer: OAuth's `access_token`, then camelCase `eshopId` etc.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GrantAnswer {
    #[serde(rename = "access_token")]
    access_token: Option<String>,
    eshop_id: Option<u64>,
    eshop_url: Option<String>,
    contact_email: Option<String>,
    error: Option<String>,
}

/// `base` joined with `path`, tolerating a trailing slash on `base`.
pub fn join(base: &url::Url, path: &str) -> Result<Uri, http::uri::InvalidUri> {
    format!("{}{}", base.as_str().trim_end_matches('/'), path).parse()
}

impl OAuthClient {
    pub fn new(
        client: Client,
        partner_url: &url::Url,
        client_id: String,
        client_secret: Option<Secret>,
        redirect_uri: String,
        timeout: Duration,
    ) -> Result<OAuthClient, http::uri::InvalidUri> {
        Ok(OAuthClient {
            client,
            token_url: join(partner_url, "/action/ApiOAuthServer/token")?,
            access_token_url: join(partner_url, "/action/ApiOAuthServer/getAccessToken")?,
            partner: arc_swap::ArcSwap::from_pointee(Partner {
                client_id,
                client_secret,
                redirect_uri,
                timeout,
            }),
        })
    }

    /// Applies a reloaded client id, client secret, redirect URI and timeout to calls made from
    /// now on.
    pub fn set_partner(&self, partner: Partner) {
        self.partner.store(std::sync::Arc::new(partner));
    }

    async fn call(&self, req: Request<ReqBody>) -> Result<(StatusCode, Bytes), String> {
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer failed: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        let timeout = self.partner.load().timeout;
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }

    /// getAccessToken with the installation's OAuth token.
    pub async fn access_token(&self, oauth_token: &Secret) -> Result<AccessToken, FetchError> {
        let mut bearer = HeaderValue::try_from(format!("Bearer {}", oauth_token.expose()))
            .map_err(|_| FetchError::Unauthorized)?;
        bearer.set_sensitive(true);
        let req = Request::builder()
            .method(Method::GET)
            .uri(self.access_token_url.clone())
            .header(header::AUTHORIZATION, bearer)
            .body(ReqBody::empty())
            .map_err(|e| FetchError::Other(e.to_string()))?;
        let (status, body) = self.call(req).await.map_err(FetchError::Other)?;
        let answer: Option<TokenAnswer> = serde_json::from_slice(&body).ok();
        match answer
            .as_ref()
            .and_then(|a| a.error.as_deref())
            .unwrap_or_default()
        {
            "maximum_tokens_reached" => return Err(FetchError::MaxTokens),
            "addon_suspended" => return Err(FetchError::Suspended),
            "addon_not_installed" => return Err(FetchError::NotInstalled),
            _ => {}
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(FetchError::Unauthorized);
        }
        match answer {
            Some(TokenAnswer {
                access_token: Some(token),
                expires_in,
                ..
            }) if status.is_success() && !token.is_empty() => Ok(AccessToken {
                token: Secret::new(token),
                // Shoptet documents 30 minutes; assume that if the field is missing.
                expires_at: SystemTime::now() + Duration::from_secs(expires_in.unwrap_or(1800)),
            }),
            _ => Err(FetchError::Other(format!(
                "HTTP {} without a usable token",
                status.as_u16()
            ))),
        }
    }

    /// Exchanges an installation's one-time code for its OAuth token (JSON body, as Shoptet's
    /// official example sends it).
    pub async fn exchange_code(&self, code: &str) -> Result<Grant, ExchangeError> {
        let partner = self.partner.load_full();
        let mut body = serde_json::json!({
            "client_id": partner.client_id,
            "code": code,
            "grant_type": "authorization_code",
            "redirect_uri": partner.redirect_uri,
            "scope": "api",
        });
        if let Some(secret) = &partner.client_secret {
            body["client_secret"] = serde_json::Value::String(secret.expose().to_owned());
        }
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.token_url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(ReqBody::full(Bytes::from(body.to_string())))
            .map_err(|e| ExchangeError::BadAnswer(e.to_string()))?;
        let (status, body) = self.call(req).await.map_err(ExchangeError::Unreachable)?;
        let answer: Option<GrantAnswer> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            return Err(ExchangeError::Refused {
                status: status.as_u16(),
                error: answer.and_then(|a| a.error),
            });
        }
        match answer {
            Some(GrantAnswer {
                access_token: Some(token),
                eshop_id: Some(eshop_id),
                eshop_url,
                contact_email,
                ..
            }) if !token.is_empty() && eshop_id > 0 => Ok(Grant {
                oauth_token: Secret::new(token),
                eshop_id,
                eshop_url,
                contact_email,
            }),
            _ => Err(ExchangeError::BadAnswer(
                "missing access_token or eshopId".into(),
            )),
        }
    }
}
