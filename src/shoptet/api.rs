//! Calls the proxy makes to the Shoptet API on its own behalf, not for a client: what they send
//! and how their answers read. Sending them (with the e-shop's token and the proxy's answer
//! policy) is [`crate::proxy::own`]'s part.
//!
//! `POST /api/webhooks/renew-signature-key`, made at installation and import so the proxy can
//! verify the e-shop's webhooks (SPEC A4, B5); `GET /api/eshop`, read for the e-shop's own OAuth
//! server behind the settings page (SPEC A5, B9).

use crate::secret::Secret;

/// The path of the signature-key renewal (SPEC A4).
pub const RENEW_SIGNATURE_KEY: &str = "/api/webhooks/renew-signature-key";

/// The e-shop info (SPEC A5).
pub const ESHOP: &str = "/api/eshop";

/// The e-shop's own OAuth server from `GET /api/eshop`: `data.urls[]`, the item with
/// `ident == "oauth"`, as an http(s) URL ending in `/` (so `token`, `authorize` and `resource`
/// append to it).
pub fn oauth_server_url(body: &[u8]) -> Option<url::Url> {
    #[derive(serde::Deserialize)]
    struct Item {
        ident: Option<String>,
        url: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        urls: Option<Vec<Item>>,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        data: Option<Data>,
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    let raw = answer
        .data?
        .urls?
        .into_iter()
        .find(|i| i.ident.as_deref() == Some("oauth"))?
        .url?;
    let mut url = url::Url::parse(&raw).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    url.set_query(None);
    url.set_fragment(None);
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Some(url)
}

/// The new key from a renewal's answer body: `{"data":{"signatureKey":"..."}}`.
pub fn signature_key(body: &[u8]) -> Option<Secret> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        signature_key: String,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        data: Option<Data>,
    }
    serde_json::from_slice::<Answer>(body)
        .ok()?
        .data
        .map(|d| d.signature_key)
        .filter(|k| !k.is_empty())
        .map(Secret::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_key_and_refuses_empty_or_missing_ones() {
        let key = signature_key(br#"{"data":{"signatureKey":"abc"},"errors":null}"#);
        assert_eq!(key.map(|k| k.expose().to_owned()).as_deref(), Some("abc"));
        assert!(signature_key(br#"{"data":{"signatureKey":""}}"#).is_none());
        assert!(signature_key(br#"{"data":null,"errors":[]}"#).is_none());
        assert!(signature_key(b"<html>").is_none());
    }

    #[test]
    fn finds_the_oauth_server_among_the_eshop_urls() {
        let body = br#"{"data":{"urls":[{"ident":"eshop","url":"https://shop.example/"},
            {"ident":"oauth","url":"https://shop.example/action/OAuthServer"}]}}"#;
        assert_eq!(
            oauth_server_url(body).map(String::from).as_deref(),
            Some("https://shop.example/action/OAuthServer/")
        );
        assert!(oauth_server_url(br#"{"data":{"urls":[{"ident":"eshop","url":"x"}]}}"#).is_none());
        assert!(
            oauth_server_url(br#"{"data":{"urls":[{"ident":"oauth","url":"ftp://x/"}]}}"#)
                .is_none()
        );
        assert!(oauth_server_url(br#"{"data":null}"#).is_none());
    }
}
