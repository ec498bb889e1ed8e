//! The demo's own settings page (SPEC B9): a tiny addon backend behind the proxy's `/settings`,
//! greeting the verified admin and keeping one setting per e-shop in memory. It reads only the
//! identity headers and uses only relative links, as a real addon would.

use crate::http::html::escape;
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// `%XX` sequences decoded (the proxy encodes non-ASCII identity values so).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn identity(h: &HeaderMap, name: &str) -> String {
    percent_decode(h.get(name).and_then(|v| v.to_str().ok()).unwrap_or(""))
}

type Saved = Arc<Mutex<HashMap<String, String>>>;

async fn page(req: Request<Incoming>, saved: Saved) -> Response<Full<Bytes>> {
    let h = req.headers().clone();
    let eshop = identity(&h, "x-shoptet-eshop-id");
    let name = identity(&h, "x-shoptet-user-name");
    let email = identity(&h, "x-shoptet-user-email");
    if eshop.is_empty() {
        let mut r = Response::new(Full::new(Bytes::from("open this page through /settings")));
        *r.status_mut() = StatusCode::FORBIDDEN;
        return r;
    }
    let path = req.uri().path().to_owned();
    if req.method() == Method::POST && path.ends_with("/save") {
        let body = Limited::new(req.into_body(), 16 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let greeting = form_urlencoded::parse(&body)
            .find(|(k, _)| k == "greeting")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if let Ok(mut m) = saved.lock() {
            m.insert(eshop.clone(), greeting);
        }
        // Relative: back to the session's first page.
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SEE_OTHER;
        r.headers_mut().insert(
            header::LOCATION,
            header::HeaderValue::from_static("./?saved=1"),
        );
        return r;
    }
    let greeting = saved
        .lock()
        .ok()
        .and_then(|m| m.get(&eshop).cloned())
        .unwrap_or_else(|| "Hello from the addon".to_owned());
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Demo addon settings</title></head>\
         <body><h1>Hello, {name}!</h1><p>Signed in as <span id=\"email\">{email}</span> \
         for e-shop <b>{eshop}</b>.</p><p>Greeting: <q id=\"greeting\">{greeting}</q></p>\
         <form method=\"post\" action=\"save\"><input name=\"greeting\" value=\"{greeting}\">\
         <button>Save</button></form><p><a id=\"about\" href=\"about\">About this page</a></p>\
         {about}</body></html>",
        name = escape(&name),
        email = escape(&email),
        eshop = escape(&eshop),
        greeting = escape(&greeting),
        about = if path.ends_with("/about") {
            "<p id=\"about-text\">This page is served by the demo behind shoptet-proxy's /settings.</p>"
        } else {
            ""
        },
    );
    let mut r = Response::new(Full::new(Bytes::from(html)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// Serves the page on a free loopback port → its base URL (`http://127.0.0.1:PORT/settings`).
pub async fn start() -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let url = format!("http://{}/settings", listener.local_addr()?);
    let saved: Saved = Arc::default();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let saved = saved.clone();
            let svc = hyper::service::service_fn(move |req| {
                let saved = saved.clone();
                async move { Ok::<_, std::convert::Infallible>(page(req, saved).await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_the_proxy_encodes() {
        assert_eq!(percent_decode("Jana Nov%C3%A1kov%C3%A1"), "Jana Nováková");
        assert_eq!(percent_decode("100%25"), "100%");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
    }
}
