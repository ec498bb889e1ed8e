//! Each e-shop's own OAuth server (SPEC A5; B8 "A5 on the simulator"), at
//! `/eshops/{id}/action/OAuthServer/{authorize,token,resource}`, with the e-shop's admins and the
//! one-time `basic_eshop` codes that Shoptet's administration hands to an addon's settings page.
//!
//! Codes and tokens live in one simulator-wide table, as if one Shoptet backend answered on every
//! e-shop's domain: a code issued for e-shop A is also accepted at e-shop B's `token`, and its
//! token's getBasicEshop (at any e-shop's `resource`) still names e-shop A. That is the variant a
//! client's "`project.id` must equal `eshopId`" check can be tested against end to end; the
//! per-e-shop counters in `/sim/stats` show which e-shop's server received the client secret.
//!
//! `token` validates like the partner server ([`super::oauth`]): body shape, `grant_type`,
//! `scope` (`basic_eshop`), client credentials (401 `invalid_client`; a bad client never spends
//! a code), then the code. The code is spent by that look-up whatever follows; it is refused
//! (400 `invalid_grant`) when unknown, used, expired (`settingsCodeLifetime`), or when
//! `redirect_uri` differs from `settingsRedirectUri` (when set) or from the one given to
//! `authorize`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::header::{HeaderValue, CACHE_CONTROL, LOCATION, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::oauth::{bearer, check_grant, ct_eq, invalid_grant, oauth_error, token_fields};
use super::state::{contact_email, Eshop, State};
use super::util::{json_value, random_lower_alnum};
use super::{admin_page, Body};

/// Lifetime of a `basic_eshop` access token (Shoptet does not document one).
pub(crate) const SETTINGS_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The scope of the admin-identity flow.
const SCOPE: &str = "basic_eshop";

/// Codes and tokens are pruned of expired entries once a table grows past this, so codes that
/// are never exchanged cannot pile up.
const PRUNE_AT: usize = 4096;

/// An administrator of an e-shop.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Admin {
    pub email: String,
    pub name: String,
}

fn default_admin(eshop_id: u64) -> Admin {
    Admin {
        email: contact_email(eshop_id),
        name: format!("Owner {eshop_id}"),
    }
}

/// What a code or an access token stands for.
struct Grant {
    eshop_id: u64,
    admin: Admin,
    /// The `redirect_uri` given to `authorize`; None for codes from the administration.
    redirect_uri: Option<String>,
    expires_at: Instant,
}

/// Admins, codes and tokens of every e-shop's own OAuth server.
#[derive(Default)]
pub(crate) struct SettingsAuth {
    /// Admins added (or renamed) through the control plane, besides each e-shop's default one.
    admins: DashMap<u64, Vec<Admin>>,
    codes: DashMap<String, Grant>,
    tokens: DashMap<String, Grant>,
}

impl SettingsAuth {
    /// The e-shop's admins, the default one first.
    pub(crate) fn admins(&self, eshop_id: u64) -> Vec<Admin> {
        let extra = self
            .admins
            .get(&eshop_id)
            .map(|a| a.clone())
            .unwrap_or_default();
        let default = default_admin(eshop_id);
        let mut out = Vec::with_capacity(extra.len() + 1);
        if !extra.iter().any(|a| same_email(&a.email, &default.email)) {
            out.push(default);
        }
        out.extend(extra);
        out
    }

    /// The admin with `email` (case-insensitive); the default admin when `email` is None.
    pub(crate) fn admin(&self, eshop_id: u64, email: Option<&str>) -> Option<Admin> {
        let email = email.map_or_else(|| contact_email(eshop_id), str::to_owned);
        self.admins(eshop_id)
            .into_iter()
            .find(|a| same_email(&a.email, &email))
    }

    /// Adds an admin, or renames the one with that e-mail → the e-shop's admins.
    fn add_admin(&self, eshop_id: u64, admin: Admin) -> Vec<Admin> {
        {
            let mut list = self.admins.entry(eshop_id).or_default();
            match list.iter_mut().find(|a| same_email(&a.email, &admin.email)) {
                Some(a) => *a = admin,
                None => list.push(admin),
            }
        }
        self.admins(eshop_id)
    }

    /// A fresh one-time code for `admin` of `eshop_id`.
    pub(crate) fn issue_code(
        &self,
        eshop_id: u64,
        admin: Admin,
        redirect_uri: Option<String>,
        lifetime: Duration,
    ) -> String {
        insert(
            &self.codes,
            Grant {
                eshop_id,
                admin,
                redirect_uri,
                expires_at: Instant::now() + lifetime,
            },
        )
    }
}

fn same_email(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Stores `grant` under a fresh random key → the key.
fn insert(map: &DashMap<String, Grant>, grant: Grant) -> String {
    if map.len() >= PRUNE_AT {
        let now = Instant::now();
        map.retain(|_, g| g.expires_at > now);
    }
    let key = random_lower_alnum(64);
    map.insert(key.clone(), grant);
    key
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn not_found() -> Response<Body> {
    json_value(StatusCode::NOT_FOUND, &json!({"error": "not_found"}))
}

/// `/eshops/{id}/...`: the e-shop's OAuth server and the simulated administration.
pub(crate) async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let rest = path.trim_start_matches("/eshops/");
    let (id, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(eshop) = id.parse::<u64>().ok().and_then(|id| state.eshop(id)) else {
        return not_found();
    };
    match rest.trim_end_matches('/') {
        "action/OAuthServer/authorize" => authorize(state, &eshop, &req),
        "action/OAuthServer/token" => token(state, &eshop, req).await,
        "action/OAuthServer/resource" => resource(state, &req),
        "admin/settings" => admin_page::settings(state, &eshop, &req),
        _ => not_found(),
    }
}

/// `GET authorize`: the admin (`user`, default the e-shop's default admin) is taken as logged in
/// and consenting, so a valid request is sent straight back with a code and the state.
fn authorize(state: &State, eshop: &Eshop, req: &Request<Incoming>) -> Response<Body> {
    state
        .counters
        .settings_authorize_calls
        .fetch_add(1, Ordering::Relaxed);
    if req.method() != Method::GET {
        return oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "Use GET.",
        );
    }
    let q = query(req);
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let cfg = state.cfg();
    // Errors before redirect_uri is known good are answered here, never redirected (RFC 6749
    // 4.1.2.1): a bad client or redirect_uri must not turn the server into an open redirector.
    if !get("client_id").is_some_and(|id| ct_eq(id, &cfg.client_id)) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "Unknown client_id.",
        );
    }
    let redirect = get("redirect_uri").and_then(|u| {
        let url = url::Url::parse(u).ok()?;
        let registered = cfg.settings_redirect_uri.as_deref().is_none_or(|r| r == u);
        (matches!(url.scheme(), "http" | "https") && registered).then_some((u.to_owned(), url))
    });
    let Some((redirect_uri, mut back)) = redirect else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "redirect_uri is missing, not an absolute http(s) URL, or not the registered one.",
        );
    };
    let Some(admin) = state.settings.admin(eshop.id, get("user")) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "user is not an admin of this e-shop.",
        );
    };
    let outcome = if get("response_type") != Some("code") {
        ("error", "unsupported_response_type".to_owned())
    } else if get("scope") != Some(SCOPE) {
        ("error", "invalid_scope".to_owned())
    } else {
        let code = state.settings.issue_code(
            eshop.id,
            admin,
            Some(redirect_uri),
            cfg.settings_code_lifetime,
        );
        ("code", code)
    };
    {
        let mut pairs = back.query_pairs_mut();
        pairs.append_pair(outcome.0, &outcome.1);
        if let Some(s) = q.get("state") {
            pairs.append_pair("state", s);
        }
    }
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(back.as_str()) {
        r.headers_mut().insert(LOCATION, v);
    }
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST token` (form, JSON or multipart).
async fn token(state: &State, eshop: &Eshop, req: Request<Incoming>) -> Response<Body> {
    state
        .counters
        .settings_token_calls
        .fetch_add(1, Ordering::Relaxed);
    eshop
        .counters
        .settings_token_calls
        .fetch_add(1, Ordering::Relaxed);
    let fields = match token_fields(req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let cfg = state.cfg();
    if fields
        .get("client_secret")
        .is_some_and(|s| ct_eq(s, &cfg.client_secret))
    {
        eshop
            .counters
            .settings_secrets_received
            .fetch_add(1, Ordering::Relaxed);
    }
    let code = match check_grant(state, &fields, SCOPE) {
        Ok(code) => code,
        Err(r) => return *r,
    };
    let Some((_, grant)) = state.settings.codes.remove(code) else {
        return invalid_grant();
    };
    let given = fields.get("redirect_uri").map(String::as_str);
    let registered_ok = cfg
        .settings_redirect_uri
        .as_deref()
        .is_none_or(|r| given == Some(r));
    let bound_ok = grant
        .redirect_uri
        .as_deref()
        .is_none_or(|r| given == Some(r));
    if grant.expires_at <= Instant::now() || !registered_ok || !bound_ok {
        return invalid_grant();
    }
    let access_token = insert(
        &state.settings.tokens,
        Grant {
            expires_at: Instant::now() + SETTINGS_TOKEN_LIFETIME,
            redirect_uri: None,
            ..grant
        },
    );
    eshop
        .counters
        .settings_tokens_issued
        .fetch_add(1, Ordering::Relaxed);
    let mut r = json_value(
        StatusCode::OK,
        &json!({
            "access_token": access_token,
            "expires_in": SETTINGS_TOKEN_LIFETIME.as_secs(),
            "token_type": "bearer",
            "scope": SCOPE,
        }),
    );
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET|POST resource?method=getBasicEshop` with `Authorization: Bearer <token>`.
fn resource(state: &State, req: &Request<Incoming>) -> Response<Body> {
    state
        .counters
        .settings_resource_calls
        .fetch_add(1, Ordering::Relaxed);
    if req.method() != Method::GET && req.method() != Method::POST {
        return oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "Use GET or POST.",
        );
    }
    let now = Instant::now();
    let identity = bearer(req)
        .and_then(|t| state.settings.tokens.get(t))
        .filter(|g| g.expires_at > now)
        .map(|g| (g.eshop_id, g.admin.clone()));
    let Some((eshop_id, admin)) = identity else {
        let mut r = oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "The access token is missing, invalid or expired.",
        );
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        return r;
    };
    if query(req).get("method").map(String::as_str) != Some("getBasicEshop") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Unknown method; this server knows getBasicEshop.",
        );
    }
    let (url, name) = project(state, eshop_id);
    json_value(
        StatusCode::OK,
        &json!({
            "success": true,
            "data": {
                "user": {"email": admin.email, "name": admin.name},
                "project": {"id": eshop_id, "url": url, "name": name},
            },
        }),
    )
}

/// The e-shop's URL and name as its `/api/eshop` tells them, so both answers always agree.
fn project(state: &State, eshop_id: u64) -> (String, String) {
    let info: Value = state
        .eshop(eshop_id)
        .and_then(|e| serde_json::from_slice(&e.eshop_json(&state.base_url)).ok())
        .unwrap_or_default();
    let contact = &info["contactInformation"];
    let url = contact["url"].as_str().map_or_else(
        || format!("https://{eshop_id}.myshoptet.com/"),
        str::to_owned,
    );
    let name = contact["eshopName"]
        .as_str()
        .map_or_else(|| format!("Simulated e-shop {eshop_id}"), str::to_owned);
    (url, name)
}

fn control_error(status: StatusCode, message: &str) -> Response<Body> {
    json_value(status, &json!({"error": message}))
}

/// `POST /sim/eshops/{id}/admins {"email","name"}` → `{"admins":[...]}`.
pub(crate) fn add_admin(state: &State, eshop_id: u64, body: &Value) -> Response<Body> {
    let email = body["email"]
        .as_str()
        .map(str::trim)
        .filter(|e| e.contains('@'));
    let Some(email) = email else {
        return control_error(
            StatusCode::BAD_REQUEST,
            "email (an e-mail address) is required",
        );
    };
    let name = match &body["name"] {
        Value::String(n) => n.clone(),
        Value::Null => email.to_owned(),
        _ => return control_error(StatusCode::BAD_REQUEST, "name must be a string"),
    };
    let admins = state.settings.add_admin(
        eshop_id,
        Admin {
            email: email.to_owned(),
            name,
        },
    );
    json_value(StatusCode::OK, &json!({ "admins": admins }))
}

/// `GET /sim/eshops/{id}/admins` → `{"admins":[...]}`.
pub(crate) fn list_admins(state: &State, eshop_id: u64) -> Response<Body> {
    json_value(
        StatusCode::OK,
        &json!({ "admins": state.settings.admins(eshop_id) }),
    )
}

/// `POST /sim/eshops/{id}/settings-code {"email"?}` → `{"code"}`: what Shoptet's administration
/// puts in `#OAUTH_CODE#` for that admin (default: the e-shop's default admin); 404 for an
/// unknown admin.
pub(crate) fn settings_code(state: &State, eshop_id: u64, body: &Value) -> Response<Body> {
    let email = match &body["email"] {
        Value::String(e) => Some(e.as_str()),
        Value::Null => None,
        _ => return control_error(StatusCode::BAD_REQUEST, "email must be a string"),
    };
    let Some(admin) = state.settings.admin(eshop_id, email) else {
        return control_error(StatusCode::NOT_FOUND, "unknown admin of this e-shop");
    };
    let lifetime = state.cfg().settings_code_lifetime;
    let code = state.settings.issue_code(eshop_id, admin, None, lifetime);
    json_value(StatusCode::OK, &json!({ "code": code }))
}
