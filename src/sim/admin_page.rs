//! A stand-in for Shoptet's administration (SPEC B8): `GET /eshops/{id}/admin/settings?user=&language=`
//! renders the page that frames the addon's settings link (`settingsUrl`) with `#SHOP_ID#`,
//! `#LANGUAGE#` and `#OAUTH_CODE#` filled in, for browser tests and addon developers.
//!
//! As at Shoptet (SPEC A5), `#OAUTH_CODE#` is filled in only when the "URL for user
//! authorization" (`settingsRedirectUri`) is set; otherwise it stays literal and the addon has to
//! start the authorization flow itself. Every render issues a fresh code.

use crate::http::html::escape;
use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::state::{Eshop, State};
use super::Body;

/// The languages Shoptet puts in `#LANGUAGE#`.
const LANGUAGES: [&str; 4] = ["cs", "sk", "hu", "en"];

/// A URL component, percent-encoded for a query value.
fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn html(status: StatusCode, title: &str, body: &str) -> Response<Body> {
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>body{{margin:0;font-family:sans-serif}}header{{padding:8px 16px;background:#1f2937;\
         color:#fff}}main{{padding:16px}}iframe{{border:0;width:100%;height:calc(100vh - 40px)}}\
         </style></head>\n<body>{body}</body></html>\n",
        escape(title)
    );
    let mut r = Response::new(Full::new(Bytes::from(page)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page carries a one-time code.
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn message(status: StatusCode, text: &str) -> Response<Body> {
    let title = "Simulated Shoptet administration";
    html(
        status,
        title,
        &format!(
            "<header>{}</header><main><p>{}</p></main>",
            escape(title),
            escape(text)
        ),
    )
}

/// `GET /eshops/{id}/admin/settings?user=<email>&language=cs`.
pub(crate) fn settings(state: &State, eshop: &Eshop, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return message(StatusCode::METHOD_NOT_ALLOWED, "Use GET.");
    }
    let mut user = None;
    let mut language = "cs".to_owned();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*k {
            "user" if !v.is_empty() => user = Some(v.into_owned()),
            "language" if !v.is_empty() => language = v.into_owned(),
            _ => {}
        }
    }
    if !LANGUAGES.contains(&language.as_str()) {
        return message(
            StatusCode::BAD_REQUEST,
            "language must be one of cs, sk, hu, en.",
        );
    }
    let Some(admin) = state.settings.admin(eshop.id, user.as_deref()) else {
        return message(
            StatusCode::NOT_FOUND,
            "No such admin of this e-shop (add one with POST /sim/eshops/{id}/admins).",
        );
    };
    let cfg = state.cfg();
    let Some(link) = cfg.settings_url.as_deref() else {
        return message(
            StatusCode::NOT_FOUND,
            "The addon has no settings link: set settingsUrl (PATCH /sim/config or \
             --settings-url), e.g. https://addon.example/settings?eshopId=#SHOP_ID#&language=#LANGUAGE#&code=#OAUTH_CODE#",
        );
    };
    let mut src = link
        .replace("#SHOP_ID#", &eshop.id.to_string())
        .replace("#LANGUAGE#", &enc(&language));
    if cfg.settings_redirect_uri.is_some() {
        let code =
            state
                .settings
                .issue_code(eshop.id, admin.clone(), None, cfg.settings_code_lifetime);
        src = src.replace("#OAUTH_CODE#", &enc(&code));
    }
    let title = format!("Simulated Shoptet administration: e-shop {}", eshop.id);
    let header = format!(
        "{} · {} &lt;{}&gt; · {}",
        escape(&title),
        escape(&admin.name),
        escape(&admin.email),
        escape(&language)
    );
    html(
        StatusCode::OK,
        &title,
        &format!(
            "<header>{header}</header>\n<iframe id=\"addon-settings\" title=\"Addon settings\" \
             src=\"{}\"></iframe>",
            escape(&src)
        ),
    )
}
