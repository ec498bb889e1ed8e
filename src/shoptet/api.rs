//! Calls the proxy makes to the Shoptet API on its own behalf, not for a client: what they send
//! and how their answers read. Sending them (with the e-shop's token and the proxy's answer
//! policy) is [`crate::proxy::own`]'s part.
//!
//! Today that is one: `POST /api/webhooks/renew-signature-key`, made at installation and import so
//! the proxy can verify the e-shop's webhooks (SPEC A4, B5).

use crate::secret::Secret;

/// The path of the signature-key renewal (SPEC A4).
pub const RENEW_SIGNATURE_KEY: &str = "/api/webhooks/renew-signature-key";

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
}
