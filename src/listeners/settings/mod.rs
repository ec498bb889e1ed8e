//! The addon's settings pages on the public listener (SPEC B9): the e-shop admin's identity,
//! verified through the e-shop's own OAuth server (A5), handed to the addon in headers.
//!
//! `GET /settings?eshopId=&language=&code=` exchanges Shoptet's one-time code (or, without one,
//! starts the authorization-code flow with a sealed one-time `state`, completed at
//! `GET /settings/authorized`), checks that the identity belongs to that e-shop and redirects to a
//! path session `/settings/s/<session>/`. Everything under it is forwarded to `[addon]
//! settings_url` with `X-Shoptet-*` identity headers that only the proxy sets. The session lives
//! in the path because the pages run in a third-party iframe where browsers drop cookies; relative
//! links and forms stay inside it without the addon doing anything.
//!
//! Inputs and what stops their abuse: the code is only ever sent to the OAuth server Shoptet's
//! API names for the e-shop in `eshopId` and its identity must name that e-shop; the state and
//! the session are sealed (AEAD), expire, and the state is spent in the store; client-sent
//! identity headers are dropped; `<rest>` may not climb out of `settings_url` (no dot segments
//! or encoded slashes). Codes and sessions appear in no log line, metric or error page.

pub mod identity;
pub mod seal;

use crate::http::body::{ReqBody, RespBody};
use crate::http::client::Client;
use crate::proxy::Proxy;
use crate::store::{Status, Store};
use crate::telemetry::metrics::Metrics;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use identity::{Credentials, EshopOAuth, LoginError};
use seal::{LoginState, Refused, Sealer, Session};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

type Body = RespBody<()>;

/// Shoptet gives a settings page 60 s (A5); the addon's answer head must come within that.
const ADDON_TIMEOUT: Duration = Duration::from_secs(60);
/// The placeholder Shoptet leaves in the link when it fills in no code.
const CODE_PLACEHOLDER: &str = "#OAUTH_CODE#";
/// Shoptet's own administration domains, always allowed to frame the pages.
const SHOPTET_ANCESTOR: &str = "https://*.myshoptet.com";

pub const H_ESHOP: &str = "x-shoptet-eshop-id";
pub const H_EMAIL: &str = "x-shoptet-user-email";
pub const H_NAME: &str = "x-shoptet-user-name";
pub const H_LANGUAGE: &str = "x-shoptet-language";
pub const H_BASE: &str = "x-shoptet-settings-base";
/// The identity headers: set only by the proxy, removed from what the browser sent.
const IDENTITY: [&str; 5] = [H_ESHOP, H_EMAIL, H_NAME, H_LANGUAGE, H_BASE];

/// Hop-by-hop headers, never forwarded in either direction.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The failures of B9, each an HTML page naming its errorCode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    BadRequest(&'static str),
    Denied,
    SessionInvalid,
    Unreachable,
    StoreUnavailable,
    NotFound,
}

impl Fail {
    fn parts(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Fail::BadRequest(m) => (StatusCode::BAD_REQUEST, "proxy-bad-request", m),
            Fail::Denied => (
                StatusCode::FORBIDDEN,
                "proxy-settings-denied",
                "Your sign-in could not be verified for this e-shop. Open the addon's settings again from the e-shop administration.",
            ),
            Fail::SessionInvalid => (
                StatusCode::UNAUTHORIZED,
                "proxy-settings-session-invalid",
                "This settings session is invalid or has expired. Open the addon's settings again from the e-shop administration.",
            ),
            Fail::Unreachable => (
                StatusCode::BAD_GATEWAY,
                "proxy-upstream-unreachable",
                "A server needed for this page could not be reached. Try again in a moment.",
            ),
            Fail::StoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "proxy-store-unavailable",
                "The proxy's store could not be reached. Try again in a moment.",
            ),
            Fail::NotFound => (
                StatusCode::NOT_FOUND,
                "proxy-not-found",
                "There is no such settings page.",
            ),
        }
    }

    /// The small HTML page a browser shows. Every text is a fixed string of this module, so
    /// nothing from the request (code, state, session) can appear in it.
    fn page(self) -> Response<Body> {
        let (status, code, message) = self.parts();
        let html = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>Addon settings: {status}</title></head>\n<body>\
             <h1>Addon settings are not available</h1>\n<p>{message}</p>\n\
             <p>errorCode: <code>{code}</code></p></body></html>\n"
        );
        let mut r = Response::new(Body::full(Bytes::from(html)));
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        no_store(h);
        if self == Fail::StoreUnavailable {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }

    /// The login metric's result for a failed login.
    fn login_result(self) -> &'static str {
        match self {
            Fail::Unreachable | Fail::StoreUnavailable => "error",
            _ => "denied",
        }
    }
}

impl From<LoginError> for Fail {
    fn from(e: LoginError) -> Fail {
        match e {
            LoginError::Denied => Fail::Denied,
            LoginError::Unreachable => Fail::Unreachable,
        }
    }
}

fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
}

/// `[addon] settings_*` and the OAuth client settings the pages need.
pub struct PagesConfig {
    /// `None`: `/settings` answers 404.
    pub settings_url: Option<url::Url>,
    pub session_ttl: Duration,
    pub frame_ancestors: Vec<String>,
    pub creds: Credentials,
    /// Per call to an e-shop's OAuth server.
    pub oauth_timeout: Duration,
}

/// The settings pages' handles: the store (installation status, used nonces, the key the
/// sessions derive from), the e-shops' OAuth servers (through the proxy's token handling), a
/// plain client for the addon, the metrics.
pub struct SettingsPages {
    /// Replaced whole by a reload (SPEC B7): requests that start afterwards see the new values.
    keys: ArcSwap<PageKeys>,
    store: Store,
    oauth: EshopOAuth,
    addon: Client,
    metrics: Arc<Metrics>,
    sessions: Sealer,
    states: Sealer,
}

/// The `[addon] settings_*` values, as one reloadable unit.
struct PageKeys {
    settings_url: Option<url::Url>,
    session_ttl: Duration,
    frame_ancestors: Vec<String>,
}

impl PagesConfig {
    /// The pages' own keys, and the OAuth client's credentials and timeout.
    fn split(self) -> (PageKeys, Credentials, Duration) {
        let keys = PageKeys {
            settings_url: self.settings_url,
            session_ttl: self.session_ttl,
            frame_ancestors: self.frame_ancestors,
        };
        (keys, self.creds, self.oauth_timeout)
    }
}

/// The query parameter `name`, decoded.
fn param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `#LANGUAGE#` is a short language code; anything else is not Shoptet's link.
fn language(value: Option<String>) -> Result<String, Fail> {
    let v = value.unwrap_or_default();
    let ok = v.len() <= 16 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(v)
    } else {
        Err(Fail::BadRequest("the language is not a language code"))
    }
}

/// A header value per B9: UTF-8 with every byte outside printable ASCII, and `%`, as `%XX`.
pub fn header_text(s: &str) -> HeaderValue {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The origin (`scheme://host[:port]`) of `url`, as a CSP source.
fn origin(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    matches!(u.scheme(), "http" | "https")
        .then(|| u.origin().ascii_serialization())
        .filter(|o| o != "null")
}

/// Whether `rest` stays below `settings_url`: no dot segments, no encoded or back slashes that a
/// server could decode into a path separator.
fn contained(rest: &str) -> bool {
    let lower = rest.to_ascii_lowercase();
    !lower.contains("%2e")
        && !lower.contains("%2f")
        && !lower.contains("%5c")
        && !rest.contains('\\')
        && rest.split('/').all(|seg| seg != "." && seg != "..")
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = Response::new(Body::full(Bytes::new()));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    no_store(r.headers_mut());
    r
}

impl SettingsPages {
    pub fn new(
        cfg: PagesConfig,
        store: Store,
        proxy: Arc<Proxy>,
        addon: Client,
        metrics: Arc<Metrics>,
    ) -> SettingsPages {
        let (keys, creds, oauth_timeout) = cfg.split();
        SettingsPages {
            sessions: Sealer::new(
                seal::SESSION_LABEL,
                &store.derived_keys(seal::SESSION_LABEL),
            ),
            states: Sealer::new(seal::STATE_LABEL, &store.derived_keys(seal::STATE_LABEL)),
            keys: ArcSwap::from_pointee(keys),
            oauth: EshopOAuth::new(creds, proxy, oauth_timeout),
            store,
            addon,
            metrics,
        }
    }

    /// Applies reloaded settings keys and OAuth client settings to requests from now on.
    pub fn reconfigure(&self, cfg: PagesConfig) {
        let (keys, creds, oauth_timeout) = cfg.split();
        self.keys.store(Arc::new(keys));
        self.oauth.reconfigure(creds, oauth_timeout);
    }

    /// Answers any request under `/settings`.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let started = std::time::Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        // What the log shows: never the query (codes, states) nor the session.
        let shown = match path.strip_prefix("/settings/s/") {
            Some(tail) => match tail.split_once('/') {
                Some((_, rest)) => format!("/settings/s/…/{rest}"),
                None => "/settings/s/…".to_owned(),
            },
            None => path.clone(),
        };
        let keys = self.keys.load_full();
        let resp = match &keys.settings_url {
            None => Err(Fail::NotFound),
            Some(base) => self.route(req, &path, base, &keys.frame_ancestors).await,
        };
        let resp = resp.unwrap_or_else(Fail::page);
        tracing::info!(
            target: "access",
            method = %method,
            path = %shown,
            status = resp.status().as_u16(),
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "settings"
        );
        resp
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        path: &str,
        base: &url::Url,
        frame_ancestors: &[String],
    ) -> Result<Response<Body>, Fail> {
        let login = match path {
            "/settings" | "/settings/" => Some(false),
            "/settings/authorized" => Some(true),
            _ => None,
        };
        if let Some(authorized) = login {
            if req.method() != Method::GET {
                return Err(Fail::BadRequest("use GET"));
            }
            let query = req.uri().query();
            let out = if authorized {
                self.authorized(query).await
            } else {
                self.login(query).await
            };
            let result = match &out {
                Ok(r) if r.status() == StatusCode::FOUND => "redirected",
                Ok(_) => "ok",
                Err(f) => f.login_result(),
            };
            self.metrics
                .settings_logins
                .with_label_values(&[result])
                .inc();
            return out;
        }
        match path.strip_prefix("/settings/s/") {
            Some(tail) => self.forward(req, tail, base, frame_ancestors).await,
            None => Err(Fail::NotFound),
        }
    }

    /// The active installation's `eshopUrl`, or why there is none.
    async fn active(&self, eshop_id: u64) -> Result<Option<String>, Fail> {
        match self.store.get(eshop_id).await {
            Ok(Some(i)) if i.status == Status::Active => Ok(i.eshop_url),
            Ok(_) => Err(Fail::Denied),
            Err(e) => {
                tracing::error!(eshop_id, error = %e, "settings: store unavailable");
                Err(Fail::StoreUnavailable)
            }
        }
    }

    /// `GET /settings?eshopId=&language=&code=`.
    async fn login(&self, query: Option<&str>) -> Result<Response<Body>, Fail> {
        let eshop_id = param(query, "eshopId")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&id| id > 0)
            .ok_or(Fail::BadRequest("eshopId must be the e-shop's numeric id"))?;
        let language = language(param(query, "language"))?;
        self.active(eshop_id).await?;
        let code = param(query, "code").filter(|c| !c.is_empty() && c != CODE_PLACEHOLDER);
        let Some(code) = code else {
            let server = self.oauth.server(eshop_id).await?;
            let state = LoginState {
                eshop_id,
                language,
                nonce: seal::random_nonce(),
                expires: seal::unix(SystemTime::now() + seal::STATE_LIFETIME),
            };
            let url = self.oauth.authorize_url(&server, &self.states.seal(&state));
            return Ok(redirect(StatusCode::FOUND, &url));
        };
        self.complete(eshop_id, language, &code).await
    }

    /// `GET /settings/authorized?code=&state=`: the end of the authorization-code flow.
    async fn authorized(&self, query: Option<&str>) -> Result<Response<Body>, Fail> {
        let state = param(query, "state").ok_or(Fail::BadRequest("the state is missing"))?;
        let state: LoginState = self.states.open(&state, SystemTime::now()).map_err(|e| {
            tracing::warn!(reason = ?e, "settings: state refused");
            Fail::Denied
        })?;
        let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(state.expires);
        match self.store.use_nonce(&state.nonce, expires).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(eshop_id = state.eshop_id, "settings: state used again");
                return Err(Fail::Denied);
            }
            Err(e) => {
                tracing::error!(error = %e, "settings: store unavailable");
                return Err(Fail::StoreUnavailable);
            }
        }
        let code = param(query, "code")
            .filter(|c| !c.is_empty())
            .ok_or(Fail::Denied)?;
        self.active(state.eshop_id).await?;
        self.complete(state.eshop_id, state.language, &code).await
    }

    /// Exchanges `code`, checks the identity belongs to `eshop_id`, and opens a session.
    async fn complete(
        &self,
        eshop_id: u64,
        language: String,
        code: &str,
    ) -> Result<Response<Body>, Fail> {
        let who = self.oauth.identify(eshop_id, code).await?;
        if who.project_id != eshop_id {
            tracing::warn!(
                eshop_id,
                identity_of = who.project_id,
                "settings: the code belongs to another e-shop"
            );
            return Err(Fail::Denied);
        }
        let session = Session {
            eshop_id,
            email: who.email,
            name: who.name,
            language,
            project_url: who.project_url,
            expires: seal::unix(SystemTime::now() + self.keys.load().session_ttl),
        };
        tracing::info!(eshop_id, "settings: admin signed in");
        let location = format!("/settings/s/{}/", self.sessions.seal(&session));
        Ok(redirect(StatusCode::SEE_OTHER, &location))
    }

    /// `ANY /settings/s/<session>/<rest>` → `settings_url/<rest>`.
    async fn forward(
        &self,
        req: Request<Incoming>,
        tail: &str,
        base: &url::Url,
        frame_ancestors: &[String],
    ) -> Result<Response<Body>, Fail> {
        let Some((token, rest)) = tail.split_once('/') else {
            // Without the slash, relative links would resolve outside the session.
            self.sessions
                .open::<Session>(tail, SystemTime::now())
                .map_err(|_| Fail::SessionInvalid)?;
            let q = req
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            return Ok(redirect(
                StatusCode::PERMANENT_REDIRECT,
                &format!("/settings/s/{tail}/{q}"),
            ));
        };
        let session: Session = self.sessions.open(token, SystemTime::now()).map_err(|e| {
            tracing::info!(expired = e == Refused::Expired, "settings: session refused");
            Fail::SessionInvalid
        })?;
        let eshop_url = self.active(session.eshop_id).await?;
        if !contained(rest) {
            return Err(Fail::BadRequest("the path leaves the settings pages"));
        }
        let session_base = format!("/settings/s/{token}/");
        let addon_base = base.as_str().trim_end_matches('/');
        let mut target = format!("{addon_base}/{rest}");
        if let Some(q) = req.uri().query() {
            target.push('?');
            target.push_str(q);
        }
        let (parts, body) = req.into_parts();
        let mut out = Request::builder()
            .method(parts.method)
            .uri(&target)
            .body(ReqBody::stream(body, crate::proxy::MAX_BODY))
            .map_err(|_| Fail::BadRequest("the path cannot be forwarded"))?;
        let h = out.headers_mut();
        *h = parts.headers;
        strip_hop_by_hop(h);
        h.remove(header::HOST);
        for name in IDENTITY {
            h.remove(name);
        }
        h.insert(H_ESHOP, HeaderValue::from(session.eshop_id));
        h.insert(H_EMAIL, header_text(&session.email));
        h.insert(H_NAME, header_text(&session.name));
        h.insert(H_LANGUAGE, header_text(&session.language));
        h.insert(H_BASE, header_text(&session_base));
        let resp = match tokio::time::timeout(ADDON_TIMEOUT, self.addon.request(out)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "settings: the addon's settings backend is unreachable");
                return Err(Fail::Unreachable);
            }
            Err(_) => {
                tracing::warn!("settings: the addon's settings backend did not answer in 60 s");
                return Err(Fail::Unreachable);
            }
        };
        let (mut parts, body) = resp.into_parts();
        let h = &mut parts.headers;
        strip_hop_by_hop(h);
        h.remove("x-frame-options");
        let mut ancestors: Vec<String> = [eshop_url.as_deref(), Some(&session.project_url)]
            .into_iter()
            .flatten()
            .filter_map(origin)
            .collect();
        ancestors.push(SHOPTET_ANCESTOR.to_owned());
        ancestors.extend(frame_ancestors.iter().cloned());
        ancestors.dedup();
        if let Ok(v) = HeaderValue::from_str(&format!("frame-ancestors {}", ancestors.join(" "))) {
            h.append(header::CONTENT_SECURITY_POLICY, v);
        }
        if !h.contains_key("referrer-policy") {
            h.insert(
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("same-origin"),
            );
        }
        // An absolute redirect to the addon's own settings URL is brought back into the session.
        if let Some(loc) = h.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
            if let Some(after) = loc.strip_prefix(addon_base) {
                let after = after.strip_prefix('/').unwrap_or(after);
                if let Ok(v) = HeaderValue::from_str(&format!("{session_base}{after}")) {
                    h.insert(header::LOCATION, v);
                }
            }
        }
        Ok(Response::from_parts(parts, Body::upstream(body, ())))
    }
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        h.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_percent_encoded_outside_printable_ascii() {
        assert_eq!(header_text("Jana Nováková"), "Jana Nov%C3%A1kov%C3%A1");
        assert_eq!(header_text("100% a\r\nb"), "100%25 a%0D%0Ab");
        assert_eq!(header_text("a@b.cz"), "a@b.cz");
    }

    #[test]
    fn rest_may_not_climb_out_of_the_settings_url() {
        for ok in ["", "index.html", "a/b/c?x=..", "save", "a.b/c..d"] {
            assert!(contained(ok), "{ok}");
        }
        for bad in ["..", "a/../b", "./x", "%2e%2e/x", "a%2Fb", "a\\b", "a%5cb"] {
            assert!(!contained(bad), "{bad}");
        }
    }

    #[test]
    fn origins_of_urls() {
        assert_eq!(
            origin("https://shop.example:8443/admin/x").as_deref(),
            Some("https://shop.example:8443")
        );
        assert_eq!(
            origin("https://shop.example/").as_deref(),
            Some("https://shop.example")
        );
        assert_eq!(origin("javascript:alert(1)"), None);
        assert_eq!(origin(""), None);
    }

    #[test]
    fn error_pages_name_their_code() {
        for (f, status, code) in [
            (Fail::BadRequest("x"), 400, "proxy-bad-request"),
            (Fail::Denied, 403, "proxy-settings-denied"),
            (Fail::SessionInvalid, 401, "proxy-settings-session-invalid"),
            (Fail::Unreachable, 502, "proxy-upstream-unreachable"),
            (Fail::NotFound, 404, "proxy-not-found"),
        ] {
            let r = f.page();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(
                r.headers()[header::CONTENT_TYPE],
                "text/html; charset=utf-8"
            );
            assert_eq!(f.parts().1, code);
        }
    }
}
