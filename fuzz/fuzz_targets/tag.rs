//! `tag::parse` on arbitrary request targets and e-shop header values.
//!
//! Input: the request target, then one e-shop header value per following line (bytes, so header
//! values may hold anything a client can send). Properties: never panics, and whatever it accepts
//! is a clean `/api/...` path — the proxy's guarantee that a path can never steer the upstream.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use shoptet_proxy::proxy::tag;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let Some(Ok(uri)) = lines.next().map(Uri::try_from) else {
        return;
    };
    let name = HeaderName::from_static("x-shoptet-eshop-id");
    let mut headers = HeaderMap::new();
    for value in lines.take(4) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name.clone(), v);
        }
    }
    let Ok(tagged) = tag::parse(&uri, &headers, &name) else {
        return;
    };
    let path = tagged.path;
    let lower = path.to_ascii_lowercase();
    assert!(path.starts_with("/api/"), "{path:?}");
    assert!(path.len() > "/api/".len(), "{path:?}");
    for bad in ["//", "/../", "/./", "%2f", "%5c", "%2e", "\\"] {
        assert!(!lower.contains(bad), "{bad:?} in {path:?}");
    }
    assert!(!path.ends_with("/..") && !path.ends_with("/."), "{path:?}");
    assert!(tagged.eshop_id > 0);
    assert_eq!(tagged.query, uri.query());
});
