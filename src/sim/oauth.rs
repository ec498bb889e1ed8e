//! The partner e-shop's OAuth server (SPEC A1, A2): the one-time code exchange and getAccessToken.
//!
//! Exchange validation order: body shape (400 `invalid_request`), `grant_type`
//! (400 `unsupported_grant_type`), `scope` if given (400 `invalid_scope`), client credentials
//! (401 `invalid_client`, checked before the code so a bad client never burns a code), then the
//! code (400 `invalid_grant`). `redirect_uri` is accepted but not checked (Shoptet does not
//! document a check). A code exchanges once, to the installation's current OAuth token.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::state::{contact_email, Mint, State, SUSPENDED, UNINSTALLED};
use super::util::{json_value, plain_json, read_body};
use super::Body;

pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    json_value(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

/// A bad, expired or reused code (SPEC A1, A5).
pub(crate) fn invalid_grant() -> Response<Body> {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "The authorization code is invalid, expired or already used.",
    )
}

pub(crate) fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// `POST /action/ApiOAuthServer/token`.
pub(crate) async fn token(state: &State, req: Request<Incoming>) -> Response<Body> {
    state.counters.token_calls.fetch_add(1, Ordering::Relaxed);
    let r = exchange(state, req).await;
    state.count_status(None, r.status().as_u16());
    r
}

async fn exchange(state: &State, req: Request<Incoming>) -> Response<Body> {
    let fields = match token_fields(req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let code = match check_grant(state, &fields, "api") {
        Ok(code) => code,
        Err(r) => return *r,
    };
    let Some((_, (eshop_id, oauth_token))) = state.codes.remove(code) else {
        return invalid_grant();
    };
    // A code issued before a re-install exchanges to a revoked token: refuse it.
    if state.oauth.get(&oauth_token).map(|e| *e) != Some(eshop_id) {
        return invalid_grant();
    }
    json_value(
        StatusCode::OK,
        &json!({
            "access_token": oauth_token,
            "expires_in": null,
            "token_type": "Bearer",
            "scope": "api",
            "eshopId": eshop_id,
            "eshopUrl": format!("https://{eshop_id}.myshoptet.com/"),
            "contactEmail": contact_email(eshop_id),
            "trial": false,
        }),
    )
}

/// The fields of a `POST` token request, or the `invalid_request` answer.
pub(crate) async fn token_fields(
    req: Request<Incoming>,
) -> Result<HashMap<String, String>, Response<Body>> {
    if req.method() != Method::POST {
        return Err(oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "Use POST.",
        ));
    }
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let Some(body) = read_body(req.into_body()).await else {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Unreadable body.",
        ));
    };
    parse_fields(&ct, body)
        .await
        .map_err(|why| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", why))
}

/// Everything about an authorization-code exchange but the code itself, in the order of the
/// module doc; answers the code to look up (the refusal is boxed: a `Response` is large).
pub(crate) fn check_grant<'a>(
    state: &State,
    fields: &'a HashMap<String, String>,
    scope: &str,
) -> Result<&'a str, Box<Response<Body>>> {
    let get = |k: &str| fields.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let (Some(client_id), Some(client_secret), Some(code), Some(grant_type)) = (
        get("client_id"),
        get("client_secret"),
        get("code"),
        get("grant_type"),
    ) else {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing one of client_id, client_secret, code, grant_type.",
        )));
    };
    if grant_type != "authorization_code" {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Only authorization_code is supported.",
        )));
    }
    if get("scope").is_some_and(|s| s != scope) {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!("Scope must be {scope}."),
        )));
    }
    let cfg = state.cfg();
    // Both compared in full so a wrong id and a wrong secret take the same time.
    let id_ok = ct_eq(client_id, &cfg.client_id);
    let secret_ok = ct_eq(client_secret, &cfg.client_secret);
    if !(id_ok & secret_ok) {
        return Err(Box::new(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed.",
        )));
    }
    Ok(code)
}

/// The exchange's fields from a JSON, urlencoded or multipart body.
async fn parse_fields(ct: &str, body: Bytes) -> Result<HashMap<String, String>, &'static str> {
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => {
            let v: Value = serde_json::from_slice(&body).map_err(|_| "Malformed JSON body.")?;
            let obj = v.as_object().ok_or("The JSON body must be an object.")?;
            Ok(obj
                .iter()
                .filter_map(|(k, v)| {
                    let s = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => return None,
                    };
                    Some((k.clone(), s))
                })
                .collect())
        }
        "application/x-www-form-urlencoded" => Ok(form_urlencoded::parse(&body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()),
        "multipart/form-data" => {
            let boundary = multer::parse_boundary(ct).map_err(|_| "Missing multipart boundary.")?;
            let stream = futures_util::stream::once(async move { Ok::<_, Infallible>(body) });
            let mut mp = multer::Multipart::new(stream, boundary);
            let mut out = HashMap::new();
            while let Some(field) = mp
                .next_field()
                .await
                .map_err(|_| "Malformed multipart body.")?
            {
                let Some(name) = field.name().map(str::to_owned) else {
                    continue;
                };
                let text = field.text().await.map_err(|_| "Malformed multipart body.")?;
                out.insert(name, text);
            }
            Ok(out)
        }
        _ => Err("Content-Type must be application/json, application/x-www-form-urlencoded or multipart/form-data."),
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// `GET|POST /action/ApiOAuthServer/getAccessToken`. With `tokenDelay`, a minted token's answer
/// waits that long; the token is minted (counted, valid, under the cap) before the wait, so a
/// caller that gives up meanwhile still used up one of the five.
pub(crate) async fn get_access_token(state: &State, req: Request<Incoming>) -> Response<Body> {
    state
        .counters
        .get_access_token_calls
        .fetch_add(1, Ordering::Relaxed);
    let unauthorized = || {
        plain_json(
            StatusCode::UNAUTHORIZED,
            Bytes::from_static(br#"{"error":"Unauthorized"}"#),
        )
    };
    if req.method() != Method::GET && req.method() != Method::POST {
        return plain_json(
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(br#"{"error":"method_not_allowed"}"#),
        );
    }
    let presented = bearer(&req);
    let eshop = presented
        .and_then(|t| state.oauth.get(t).map(|e| *e))
        .and_then(|id| state.eshop(id));
    let (Some(presented), Some(eshop)) = (presented, eshop) else {
        state.count_status(None, 401);
        return unauthorized();
    };
    let refusal = match eshop.status() {
        SUSPENDED => Some(r#"{"error":"addon_suspended"}"#),
        UNINSTALLED => Some(r#"{"error":"addon_not_installed"}"#),
        _ => None,
    };
    if let Some(body) = refusal {
        return plain_json(StatusCode::FORBIDDEN, Bytes::from_static(body.as_bytes()));
    }
    match state.mint(&eshop, presented) {
        Ok((token, lifetime)) => {
            let delay = state.cfg().token_delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            json_value(
                StatusCode::OK,
                &json!({"access_token": token, "expires_in": lifetime}),
            )
        }
        Err(Mint::Unauthorized) => {
            state.count_status(Some(&eshop), 401);
            unauthorized()
        }
        Err(Mint::CapReached) => {
            state.count_status(Some(&eshop), 429);
            plain_json(
                StatusCode::TOO_MANY_REQUESTS,
                Bytes::from_static(br#"{"error":"maximum_tokens_reached"}"#),
            )
        }
    }
}
