//! The e-shop's own OAuth server (SPEC A5): where it is, the code exchange and getBasicEshop.
//!
//! The base URL comes from the e-shop info through the proxy's own token handling and is cached
//! per e-shop for an hour; a failed exchange drops the entry (the e-shop's domain can change), and
//! an exchange that could not reach the server is tried once more if a fresh look-up names
//! another server. The client secret is sent only to the server so named, never to a URL that
//! came from a request.

use crate::http::body::ReqBody;
use crate::http::client::Client;
use crate::proxy::Proxy;
use crate::secret::Secret;
use arc_swap::ArcSwap;
use bytes::Bytes;
use dashmap::DashMap;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a looked-up OAuth server is trusted.
const SERVER_TTL: Duration = Duration::from_secs(3600);
/// Answers of the OAuth server are small JSON.
const MAX_ANSWER: usize = 64 * 1024;
const SCOPE: &str = "basic_eshop";

/// Why a login could not be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    /// The OAuth server refused the code or token (bad, reused, expired, foreign).
    Denied,
    /// The OAuth server, the Shoptet API or the store could not be reached or answered nonsense.
    Unreachable,
}

/// getBasicEshop's answer, the parts the proxy uses.
#[derive(Debug, Clone)]
pub struct BasicEshop {
    pub email: String,
    pub name: String,
    pub project_id: u64,
    pub project_url: String,
}

/// Client credentials and where codes were sent back to (A5's "URL for user authorization").
pub struct Credentials {
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub redirect_uri: String,
}

/// Finds each e-shop's OAuth server and talks to it.
pub struct EshopOAuth {
    /// Replaced whole by a reload (SPEC B7: the client secret and timeouts apply at once).
    live: ArcSwap<Live>,
    proxy: Arc<Proxy>,
    /// The client built for Shoptet (its CA settings cover the e-shops' OAuth servers).
    client: Client,
    servers: DashMap<u64, (url::Url, Instant)>,
}

/// What a reload may change: the credentials and the per-call timeout.
struct Live {
    creds: Credentials,
    timeout: Duration,
}

impl EshopOAuth {
    pub fn new(creds: Credentials, proxy: Arc<Proxy>, timeout: Duration) -> EshopOAuth {
        EshopOAuth {
            live: ArcSwap::from_pointee(Live { creds, timeout }),
            client: proxy.client.clone(),
            proxy,
            servers: DashMap::new(),
        }
    }

    /// Applies reloaded credentials and timeout to the calls made from now on.
    pub fn reconfigure(&self, creds: Credentials, timeout: Duration) {
        self.live.store(Arc::new(Live { creds, timeout }));
    }

    /// The e-shop's OAuth server base (ending in `/`), cached.
    pub async fn server(&self, eshop_id: u64) -> Result<url::Url, LoginError> {
        if let Some(e) = self.servers.get(&eshop_id) {
            if e.1.elapsed() < SERVER_TTL {
                return Ok(e.0.clone());
            }
        }
        self.look_up(eshop_id).await
    }

    async fn look_up(&self, eshop_id: u64) -> Result<url::Url, LoginError> {
        let url = self.proxy.eshop_oauth_server(eshop_id).await.map_err(|e| {
            tracing::warn!(eshop_id, error = %e, "settings: e-shop info not available");
            LoginError::Unreachable
        })?;
        self.servers.insert(eshop_id, (url.clone(), Instant::now()));
        Ok(url)
    }

    /// The URL `authorize` starts the authorization-code flow at.
    pub fn authorize_url(&self, base: &url::Url, state: &str) -> String {
        let live = self.live.load();
        let mut url = base.clone();
        url.set_path(&format!("{}authorize", base.path()));
        url.query_pairs_mut()
            .append_pair("client_id", &live.creds.client_id)
            .append_pair("scope", SCOPE)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", &live.creds.redirect_uri)
            .append_pair("state", state);
        url.into()
    }

    /// Exchanges `code` at the e-shop's server and asks who it belongs to.
    pub async fn identify(&self, eshop_id: u64, code: &str) -> Result<BasicEshop, LoginError> {
        let base = self.server(eshop_id).await?;
        let token = match self.exchange(&base, code).await {
            Ok(t) => t,
            Err(e) => {
                self.servers.remove(&eshop_id);
                // A server that could not be reached may have moved: if the e-shop now names
                // another one, the code (never delivered) is tried there once.
                let moved = match e {
                    LoginError::Unreachable => self.look_up(eshop_id).await.ok(),
                    LoginError::Denied => None,
                };
                match moved {
                    Some(fresh) if fresh != base => self.exchange(&fresh, code).await?,
                    _ => return Err(e),
                }
            }
        };
        let base = self.server(eshop_id).await?;
        self.basic_eshop(&base, &token).await
    }

    async fn exchange(&self, base: &url::Url, code: &str) -> Result<Secret, LoginError> {
        let live = self.live.load_full();
        let Some(secret) = &live.creds.client_secret else {
            tracing::error!("settings: shoptet.client_secret is not configured");
            return Err(LoginError::Unreachable);
        };
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &live.creds.client_id)
            .append_pair("client_secret", secret.expose())
            .append_pair("code", code)
            .append_pair("grant_type", "authorization_code")
            .append_pair("redirect_uri", &live.creds.redirect_uri)
            .append_pair("scope", SCOPE)
            .finish();
        let (status, body) = self
            .call(
                Method::POST,
                &format!("{base}token"),
                Some("application/x-www-form-urlencoded"),
                None,
                Bytes::from(form),
            )
            .await?;
        #[derive(serde::Deserialize)]
        struct Grant {
            access_token: String,
        }
        if status.is_client_error() {
            tracing::info!(status = status.as_u16(), "settings: code refused");
            return Err(LoginError::Denied);
        }
        match serde_json::from_slice::<Grant>(&body) {
            Ok(g) if status.is_success() && !g.access_token.is_empty() => {
                Ok(Secret::new(g.access_token))
            }
            _ => {
                tracing::warn!(status = status.as_u16(), "settings: unusable token answer");
                Err(LoginError::Unreachable)
            }
        }
    }

    async fn basic_eshop(&self, base: &url::Url, token: &Secret) -> Result<BasicEshop, LoginError> {
        let bearer = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| LoginError::Denied)?;
        let (status, body) = self
            .call(
                Method::GET,
                &format!("{base}resource?method=getBasicEshop"),
                None,
                Some(bearer),
                Bytes::new(),
            )
            .await?;
        if status.is_client_error() {
            return Err(LoginError::Denied);
        }
        let parsed = parse_basic_eshop(&body).filter(|_| status.is_success());
        parsed.ok_or_else(|| {
            tracing::warn!(
                status = status.as_u16(),
                "settings: unusable getBasicEshop answer"
            );
            LoginError::Unreachable
        })
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&'static str>,
        auth: Option<HeaderValue>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), LoginError> {
        let mut req = Request::builder()
            .method(method)
            .uri(url)
            .header(header::ACCEPT, "application/json");
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        if let Some(mut auth) = auth {
            auth.set_sensitive(true);
            req = req.header(header::AUTHORIZATION, auth);
        }
        let req = req
            .body(ReqBody::full(body))
            .map_err(|_| LoginError::Unreachable)?;
        let timeout = self.live.load().timeout;
        let resp = tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| LoginError::Unreachable)?
            .map_err(|e| {
                tracing::warn!(error = %e, "settings: e-shop OAuth server unreachable");
                LoginError::Unreachable
            })?;
        let status = resp.status();
        let body = tokio::time::timeout(
            timeout,
            Limited::new(resp.into_body(), MAX_ANSWER).collect(),
        )
        .await
        .map_err(|_| LoginError::Unreachable)?
        .map_err(|_| LoginError::Unreachable)?
        .to_bytes();
        Ok((status, body))
    }
}

/// `{"success":true,"data":{"user":{"email","name"},"project":{"id","url"}}}`.
pub fn parse_basic_eshop(body: &[u8]) -> Option<BasicEshop> {
    #[derive(serde::Deserialize)]
    struct User {
        email: String,
        name: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Project {
        id: serde_json::Value,
        url: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        user: User,
        project: Project,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        success: Option<bool>,
        data: Data,
    }
    let a: Answer = serde_json::from_slice(body).ok()?;
    if a.success == Some(false) {
        return None;
    }
    // Shoptet's examples give the id as a number; a numeric string is read the same way.
    let project_id = match &a.data.project.id {
        serde_json::Value::Number(n) => n.as_u64()?,
        serde_json::Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    Some(BasicEshop {
        email: a.data.user.email,
        name: a.data.user.name.unwrap_or_default(),
        project_id,
        project_url: a.data.project.url.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_getbasiceshop_with_numeric_or_string_ids() {
        let b = parse_basic_eshop(
            br#"{"success":true,"data":{"user":{"email":"a@b.cz","name":"A"},"project":{"id":222651,"url":"https://s.cz/","name":"S"}}}"#,
        )
        .expect("parses");
        assert_eq!((b.project_id, b.email.as_str()), (222651, "a@b.cz"));
        let b = parse_basic_eshop(br#"{"data":{"user":{"email":"a@b.cz"},"project":{"id":"7"}}}"#)
            .expect("parses");
        assert_eq!(b.project_id, 7);
        assert!(parse_basic_eshop(
            br#"{"success":false,"data":{"user":{"email":"a"},"project":{"id":1}}}"#
        )
        .is_none());
        assert!(
            parse_basic_eshop(br#"{"data":{"user":{"email":"a"},"project":{"id":-1}}}"#).is_none()
        );
    }
}
