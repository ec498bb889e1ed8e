//! Tagging: which e-shop a request is for, and which Shoptet path it names (SPEC B2).
//!
//! A request is tagged by the e-shop header on an `/api/...` path, or by the `/eshops/{id}/api/...`
//! prefix for clients that can only set a base URL. This module also guards the one property the
//! proxy must never lose: the upstream host comes from configuration alone. Only a clean
//! `/api/...` path leaves here; dot segments, empty segments and encoded slashes or dots are
//! refused with 404 instead of being normalised, because a normaliser that disagrees with
//! Shoptet's router is how path confusion starts.

use crate::error::ProxyError;
use http::{HeaderMap, HeaderName, Uri};

/// A tagged request: the e-shop and the Shoptet path (with query) to forward.
#[derive(Debug, PartialEq, Eq)]
pub struct Tagged<'a> {
    pub eshop_id: u64,
    /// The path from `/api/` on, tag prefix removed.
    pub path: &'a str,
    pub query: Option<&'a str>,
}

const PATH_PREFIX: &str = "/eshops/";

/// Parses the tag of a request and checks its path. Pure and allocation-free: it runs per request.
pub fn parse<'a>(
    uri: &'a Uri,
    headers: &HeaderMap,
    eshop_header: &HeaderName,
) -> Result<Tagged<'a>, ProxyError> {
    let full = uri.path();
    let (from_path, path) = match full.strip_prefix(PATH_PREFIX) {
        Some(rest) => {
            let (id, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            (Some(parse_id(id.as_bytes())?), tail)
        }
        None => (None, full),
    };
    let mut from_header = None;
    for value in headers.get_all(eshop_header) {
        let id = parse_id(value.as_bytes())?;
        if from_header.is_some_and(|prev| prev != id) {
            return Err(ProxyError::ConflictingEshopId);
        }
        from_header = Some(id);
    }
    let eshop_id = match (from_path, from_header) {
        (Some(p), Some(h)) if p != h => return Err(ProxyError::ConflictingEshopId),
        (Some(id), _) | (None, Some(id)) => Some(id),
        (None, None) => None,
    };
    check_path(path)?;
    let eshop_id = eshop_id.ok_or(ProxyError::MissingEshopId)?;
    Ok(Tagged {
        eshop_id,
        path,
        query: uri.query(),
    })
}

/// A positive decimal that fits in u64; no sign, spaces or leading `+`.
pub fn parse_id(raw: &[u8]) -> Result<u64, ProxyError> {
    if raw.is_empty() || raw.len() > 19 || !raw.iter().all(u8::is_ascii_digit) {
        return Err(ProxyError::InvalidEshopId);
    }
    let id = raw
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    if id == 0 {
        return Err(ProxyError::InvalidEshopId);
    }
    Ok(id)
}

/// Only `/api/<something>` with no empty, `.` or `..` segment and no encoded `/`, `\` or `.`.
fn check_path(path: &str) -> Result<(), ProxyError> {
    let rest = path.strip_prefix("/api/").ok_or(ProxyError::NotFound)?;
    if rest.is_empty() {
        return Err(ProxyError::NotFound);
    }
    let bytes = rest.as_bytes();
    if bytes.contains(&b'\\') {
        return Err(ProxyError::NotFound);
    }
    for w in bytes.windows(3) {
        if w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'f') | (b'5', b'c') | (b'2', b'e')
            )
        {
            return Err(ProxyError::NotFound);
        }
    }
    // A trailing slash yields one empty last segment, which Shoptet's router may treat as its own
    // path; only interior empty segments (`//`) are refused.
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if (seg.is_empty() && !last) || seg == "." || seg == ".." {
            return Err(ProxyError::NotFound);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn tag(uri: &str, header: Option<&str>) -> Result<(u64, String), ProxyError> {
        let uri: Uri = uri.parse().expect("test uri");
        let mut headers = HeaderMap::new();
        if let Some(h) = header {
            headers.insert("x-shoptet-eshop-id", HeaderValue::from_str(h).expect("hv"));
        }
        let name = HeaderName::from_static("x-shoptet-eshop-id");
        parse(&uri, &headers, &name).map(|t| {
            let q = t.query.map(|q| format!("?{q}")).unwrap_or_default();
            (t.eshop_id, format!("{}{q}", t.path))
        })
    }

    #[test]
    fn header_tag_on_api_path() {
        assert_eq!(
            tag("/api/orders?page=2", Some("222651")),
            Ok((222651, "/api/orders?page=2".into()))
        );
    }

    #[test]
    fn path_prefix_tag_is_removed() {
        assert_eq!(
            tag("/eshops/222651/api/orders/2018000057?include=x", None),
            Ok((222651, "/api/orders/2018000057?include=x".into()))
        );
    }

    #[test]
    fn both_tags_equal_is_fine_and_different_is_a_conflict() {
        assert!(tag("/eshops/5/api/eshop", Some("5")).is_ok());
        assert_eq!(
            tag("/eshops/5/api/eshop", Some("6")),
            Err(ProxyError::ConflictingEshopId)
        );
    }

    #[test]
    fn non_numeric_ids_are_invalid() {
        for bad in [
            "abc",
            "-1",
            "+1",
            "1.0",
            "0",
            " 1",
            "99999999999999999999",
            "",
        ] {
            assert_eq!(
                tag("/api/eshop", Some(bad)),
                Err(ProxyError::InvalidEshopId),
                "{bad:?}"
            );
        }
        assert_eq!(
            tag("/eshops/abc/api/eshop", None),
            Err(ProxyError::InvalidEshopId)
        );
        assert_eq!(
            tag("/eshops//api/eshop", None),
            Err(ProxyError::InvalidEshopId)
        );
    }

    #[test]
    fn missing_tag_on_api_path_is_400_and_other_paths_are_404() {
        assert_eq!(tag("/api/eshop", None), Err(ProxyError::MissingEshopId));
        assert_eq!(tag("/", None), Err(ProxyError::NotFound));
        assert_eq!(tag("/admin/eshops", Some("1")), Err(ProxyError::NotFound));
        assert_eq!(tag("/eshops/1/admin", None), Err(ProxyError::NotFound));
        assert_eq!(tag("/eshops/1", None), Err(ProxyError::NotFound));
        assert_eq!(tag("/api/", Some("1")), Err(ProxyError::NotFound));
        assert_eq!(tag("/api", Some("1")), Err(ProxyError::NotFound));
    }

    #[test]
    fn path_tricks_are_refused() {
        for bad in [
            "/api/../admin",
            "/api/./eshop",
            "/api//eshop",
            "/api/orders/..",
            "/api/%2e%2e/x",
            "/api/orders%2F..%2Fx",
            "/api/orders%2f1",
            "/api/a%5cb",
            "/eshops/1/api/../../x",
        ] {
            assert_eq!(tag(bad, Some("1")), Err(ProxyError::NotFound), "{bad}");
        }
    }

    #[test]
    fn absolute_form_uri_keeps_only_the_path() {
        assert_eq!(
            tag("http://evil.example/api/eshop?x=1", Some("7")),
            Ok((7, "/api/eshop?x=1".into()))
        );
    }

    #[test]
    fn trailing_slash_and_encoded_other_chars_pass() {
        assert!(tag("/api/orders/", Some("1")).is_ok());
        assert!(tag("/api/products?name=a%20b", Some("1")).is_ok());
    }
}
