//! The control plane: `/sim/...` routes that tests and developers use to drive the simulator.
//! Bodies and answers are JSON; errors are `{"error":"..."}` with 400 (bad input), 404 (unknown
//! e-shop or route) or 405.
//!
//! | route | effect / answer |
//! |---|---|
//! | `POST /sim/eshops` `{"eshopId":N?,"installUrl":"http://..."?}` | installs an e-shop (a free id when none is given; an existing id is re-installed) → `{"eshopId","code","oauthToken"}`; with `installUrl`, first calls `GET installUrl?code=...` like Shoptet (5 s timeout) and adds `"installStatus":200` (or `"installError":"..."`) |
//! | `POST /sim/eshops/bulk` `{"from":N,"count":M,"oauthTokenPrefix":"p"}` | installs (or re-installs) e-shops N..N+M-1 (M ≤ 1,000,000) at once, each with the OAuth token `<p><eshopId>` and no code, for load tests over many e-shops → `{"from","count"}` |
//! | `GET /sim/eshops/{id}` | `{"eshopId","status":"active|suspended|uninstalled","validTokens":n,"webhooks":[...],"deniedEndpoints":[...],"hasSignatureKey":bool}` |
//! | `POST /sim/eshops/{id}/code` | re-install: a new one-time code **and a new OAuth token**; the old OAuth token and every API token minted under it are revoked; the e-shop is active again → same answer as `POST /sim/eshops` |
//! | `POST /sim/eshops/{id}/revoke-tokens` | every API token of the e-shop answers `invalid-token` from now on → `{"tokens":n}` |
//! | `POST /sim/eshops/{id}/expire-tokens` | every API token of the e-shop answers `expired-token` → `{"tokens":n}` |
//! | `POST /sim/eshops/{id}/suspend` | status suspended (getAccessToken 403 `addon_suspended`, API 401 "Addon installation is not approved.") + `addon:suspend` webhook |
//! | `POST /sim/eshops/{id}/approve` | status active again + `addon:approve` webhook |
//! | `POST /sim/eshops/{id}/uninstall`, `.../terminate` | status uninstalled (getAccessToken 403 `addon_not_installed`, API 401 `invalid-token`) + `addon:uninstall` / `addon:terminate` webhook |
//! | `POST /sim/eshops/{id}/events` `{"event":"order:create","eventInstance":"..."}` | delivers the event to the URL registered for it (`addon:*` events: to `addonWebhookUrl`) → 202 `{"deliveryId":n}`, 404 when nothing is registered |
//! | `PUT /sim/eshops/{id}/denied-endpoints` `["/api/products"]` | API paths starting with one of these answer 403 `invalid-token-no-rights` → the list |
//! | `GET /sim/eshops/{id}/admins` | `{"admins":[{"email","name"}]}`: the e-shop's admins, the default `owner<id>@example.com` ("Owner <id>") first |
//! | `POST /sim/eshops/{id}/admins` `{"email","name"}` | adds an admin (or renames the one with that e-mail) → `{"admins":[...]}` |
//! | `POST /sim/eshops/{id}/settings-code` `{"email"?}` | a one-time `basic_eshop` code for that admin (default: the default admin), as Shoptet's administration puts in `#OAUTH_CODE#` → `{"code"}`; 404 for an unknown admin |
//! | `GET /sim/config` | every knob; durations as strings ("30m"), the client secret redacted |
//! | `PATCH /sim/config` `{"tokenLifetime":"2s","latency":15,...}` | changes knobs (durations as "2s"-style strings or milliseconds; unknown keys are a 400 and nothing changes) → the new config |
//! | `GET /sim/stats` | counters (see `SimStats`) |
//! | `POST /sim/stats/reset` | zeroes counters and empties buckets → the zeroed stats |
//! | `GET /sim/requests?eshopId=N` | `{"requests":[...]}`: the last 1024 /api requests, oldest first (method, path with query, host, contentType, headers with secrets replaced, tokenLabel, bodyLen, bodyFnv1a, status; status null = dropped) |
//! | `DELETE /sim/requests` | empties the request log |
//! | `GET /sim/webhook-deliveries?eshopId=N` | `{"deliveries":[{"deliveryId","eshopId","event","url","body","attempts":[{"signature","status","error"}],"state":"pending|delivered|failed"}]}` |
//! | `GET /sim/jobs/{id}/result.jsonl.gz` (also `.../result`) | the async job's result file (its `resultUrl`): gzipped JSON Lines, `Content-Type: application/gzip` and no `Content-Encoding`, so HTTP clients hand over the `.gz` bytes as they do for Shoptet's file |
//!
//! The system `addon:*` webhooks of suspend/approve/uninstall/terminate are only sent when
//! `addonWebhookUrl` is set; the answer then carries `"deliveryId"`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::state::{status_name, State, ACTIVE, SUSPENDED, UNINSTALLED};
use super::util::{json_value, plain_json, read_body};
use super::{eshop_oauth, webhooks, Body};

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_value(status, &json!({"error": message}))
}

fn ok(v: Value) -> Response<Body> {
    json_value(StatusCode::OK, &v)
}

fn bad_request(message: &str) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, message)
}

fn query_eshop(req: &Request<Incoming>) -> Result<Option<u64>, &'static str> {
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        if k == "eshopId" {
            return v.parse().map(Some).map_err(|_| "eshopId must be a number");
        }
    }
    Ok(None)
}

/// The JSON body, or `null` when empty.
async fn body_json(req: Request<Incoming>) -> Result<Value, &'static str> {
    let Some(b) = read_body(req.into_body()).await else {
        return Err("unreadable body");
    };
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&b).map_err(|_| "malformed JSON")
}

pub(crate) async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segs: Vec<&str> = path.trim_start_matches("/sim/").split('/').collect();
    let m = req.method().clone();
    match (segs.as_slice(), &m) {
        (["eshops"], &Method::POST) => create(state, req).await,
        (["eshops", "bulk"], &Method::POST) => bulk(state, req).await,
        (["eshops", id, rest @ ..], _) => {
            let Ok(id) = id.parse::<u64>() else {
                return error(StatusCode::BAD_REQUEST, "e-shop id must be a number");
            };
            eshop_route(state, id, rest, &m, req).await
        }
        (["config"], &Method::GET) => ok(state.cfg().to_json()),
        (["config"], &Method::PATCH) => {
            let v = match body_json(req).await {
                Ok(v) => v,
                Err(e) => return bad_request(e),
            };
            let Some(obj) = v.as_object() else {
                return error(StatusCode::BAD_REQUEST, "body must be a JSON object");
            };
            let mut next = (*state.cfg()).clone();
            if let Err(e) = next.patch(obj) {
                return error(StatusCode::BAD_REQUEST, &e);
            }
            state.update_config(|c| *c = next);
            ok(state.cfg().to_json())
        }
        (["stats"], &Method::GET) => ok(serde_json::to_value(state.stats()).unwrap_or_default()),
        (["stats", "reset"], &Method::POST) => {
            state.reset_stats();
            ok(serde_json::to_value(state.stats()).unwrap_or_default())
        }
        (["requests"], &Method::GET) => match query_eshop(&req) {
            Ok(e) => {
                let list = state.requests.snapshot(e);
                let list: Vec<&super::state::RequestRecord> = list.iter().map(|r| &**r).collect();
                ok(json!({"requests": list}))
            }
            Err(e) => bad_request(e),
        },
        (["requests"], &Method::DELETE) => {
            state.requests.clear();
            ok(json!({"requests": []}))
        }
        (["webhook-deliveries"], &Method::GET) => match query_eshop(&req) {
            Ok(e) => {
                let list: Vec<Value> = state
                    .deliveries
                    .lock()
                    .map(|d| {
                        d.iter()
                            .filter(|r| e.is_none_or(|id| r.eshop_id == id))
                            .filter_map(|r| serde_json::to_value(r).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                ok(json!({"deliveries": list}))
            }
            Err(e) => bad_request(e),
        },
        (["jobs", id, "result.jsonl.gz" | "result"], &Method::GET) => {
            match state.jobs.get(*id).filter(|j| j.completed.is_some()) {
                Some(_) => {
                    let mut r = plain_json(StatusCode::OK, super::endpoints::snapshot_result());
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/gzip"),
                    );
                    r
                }
                None => error(StatusCode::NOT_FOUND, "no finished job with that id"),
            }
        }
        (["eshops" | "config" | "stats" | "requests" | "webhook-deliveries"], _)
        | (["stats", "reset"], _) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, "unknown control route"),
    }
}

async fn create(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let v = match body_json(req).await {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    let eshop_id = match v.get("eshopId") {
        None | Some(Value::Null) => None,
        Some(n) => match n.as_u64().filter(|n| *n > 0) {
            Some(n) => Some(n),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "eshopId must be a positive integer",
                )
            }
        },
    };
    let install_url = match v.get("installUrl") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return error(StatusCode::BAD_REQUEST, "installUrl must be a string"),
    };
    if !v.is_null() && !v.is_object() {
        return error(StatusCode::BAD_REQUEST, "body must be a JSON object");
    }
    let inst = state.install(eshop_id);
    installed(state, inst, install_url.as_deref()).await
}

/// Most e-shops one bulk call installs: enough for the 100,000-e-shop benchmark, bounded so a
/// typo cannot eat the machine's memory.
const MAX_BULK: u64 = 1_000_000;

async fn bulk(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let v = match body_json(req).await {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    let from = v.get("from").and_then(Value::as_u64).filter(|n| *n > 0);
    let count = v
        .get("count")
        .and_then(Value::as_u64)
        .filter(|n| *n <= MAX_BULK);
    let prefix = v
        .get("oauthTokenPrefix")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty());
    let (Some(from), Some(count), Some(prefix)) = (from, count, prefix) else {
        return bad_request(
            "from (positive), count (at most 1000000) and oauthTokenPrefix are required",
        );
    };
    if from.checked_add(count).is_none() {
        return bad_request("from + count overflows");
    }
    state.install_bulk(from, count, prefix);
    ok(json!({"from": from, "count": count}))
}

async fn installed(
    state: &State,
    inst: super::SimInstallation,
    install_url: Option<&str>,
) -> Response<Body> {
    let mut out =
        json!({"eshopId": inst.eshop_id, "code": inst.code, "oauthToken": inst.oauth_token});
    if let Some(url) = install_url {
        match webhooks::call_install_url(state, url, &inst.code).await {
            Ok(s) => out["installStatus"] = json!(s),
            Err(e) => out["installError"] = json!(e),
        }
    }
    ok(out)
}

async fn eshop_route(
    state: &Arc<State>,
    id: u64,
    rest: &[&str],
    m: &Method,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(eshop) = state.eshop(id) else {
        return error(StatusCode::NOT_FOUND, "unknown e-shop");
    };
    let status_change = |to: u8, event: &str| {
        eshop.status.store(to, Ordering::Relaxed);
        let delivery = webhooks::send_system(state, id, event);
        ok(json!({"eshopId": id, "status": status_name(to), "deliveryId": delivery}))
    };
    match (rest, m) {
        ([], &Method::GET) => {
            let (webhooks, valid) = {
                let hooks: Vec<Value> = eshop
                    .data
                    .lock()
                    .map(|d| d.webhooks.iter().map(|w| w.to_json()).collect())
                    .unwrap_or_default();
                let now = tokio::time::Instant::now();
                let valid = eshop
                    .auth
                    .lock()
                    .map(|a| {
                        a.minted
                            .iter()
                            .filter(|t| matches!(t.check(now), super::state::TokenCheck::Valid))
                            .count()
                    })
                    .unwrap_or(0);
                (hooks, valid)
            };
            let denied = eshop.denied.read().map(|d| d.clone()).unwrap_or_default();
            let has_key = eshop
                .signature_key
                .lock()
                .map(|k| k.is_some())
                .unwrap_or(false);
            ok(
                json!({"eshopId": id, "status": status_name(eshop.status()), "validTokens": valid,
                      "webhooks": webhooks, "deniedEndpoints": denied, "hasSignatureKey": has_key}),
            )
        }
        (["code"], &Method::POST) => installed(state, state.install(Some(id)), None).await,
        (["revoke-tokens"], &Method::POST) => ok(json!({"tokens": state.revoke_tokens(&eshop)})),
        (["expire-tokens"], &Method::POST) => ok(json!({"tokens": state.expire_tokens(&eshop)})),
        (["suspend"], &Method::POST) => status_change(SUSPENDED, "addon:suspend"),
        (["approve"], &Method::POST) => status_change(ACTIVE, "addon:approve"),
        (["uninstall"], &Method::POST) => status_change(UNINSTALLED, "addon:uninstall"),
        (["terminate"], &Method::POST) => status_change(UNINSTALLED, "addon:terminate"),
        (["events"], &Method::POST) => {
            let v = match body_json(req).await {
                Ok(v) => v,
                Err(e) => return bad_request(e),
            };
            let Some(event) = v.get("event").and_then(Value::as_str) else {
                return error(StatusCode::BAD_REQUEST, "event (string) is required");
            };
            let instance = match v.get("eventInstance") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                None | Some(Value::Null) => id.to_string(),
                Some(_) => return error(StatusCode::BAD_REQUEST, "eventInstance must be a string"),
            };
            let delivery = if event.starts_with("addon:") {
                webhooks::send_system(state, id, event)
            } else {
                webhooks::send_event(state, id, event, &instance)
            };
            match delivery {
                Some(d) => json_value(StatusCode::ACCEPTED, &json!({"deliveryId": d})),
                None => error(StatusCode::NOT_FOUND, "no webhook URL for this event"),
            }
        }
        (["denied-endpoints"], &Method::PUT) => {
            let v = match body_json(req).await {
                Ok(v) => v,
                Err(e) => return bad_request(e),
            };
            let list: Option<Vec<String>> = v
                .as_array()
                .and_then(|a| a.iter().map(|p| p.as_str().map(str::to_owned)).collect());
            let Some(list) = list else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body must be an array of path prefixes",
                );
            };
            if let Ok(mut d) = eshop.denied.write() {
                d.clone_from(&list);
            }
            ok(json!(list))
        }
        (["admins"], &Method::GET) => eshop_oauth::list_admins(state, id),
        (["admins" | "settings-code"], &Method::POST) => {
            let route = rest[0];
            match body_json(req).await {
                Ok(v) if route == "admins" => eshop_oauth::add_admin(state, id, &v),
                Ok(v) => eshop_oauth::settings_code(state, id, &v),
                Err(e) => bad_request(e),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "unknown control route"),
    }
}
