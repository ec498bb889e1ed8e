//! Shoptet webhook signatures: lowercase hex HMAC-SHA1 of the raw body, keyed with the
//! installation's signature key string used as-is (not hex-decoded).
//!
//! One implementation shared by the simulator (which signs deliveries) and the proxy's webhook
//! verifier, so both sides can never drift apart.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

fn mac(key: &[u8], body: &[u8]) -> HmacSha1 {
    // HMAC accepts keys of any length, so this constructor cannot fail.
    let mut mac = match HmacSha1::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(body);
    mac
}

/// The `Shoptet-Webhook-Signature` header value for `body` under `key`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let tag = mac(key, body).finalize().into_bytes();
    let mut out = String::with_capacity(tag.len() * 2);
    for b in tag.iter() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Constant-time check of a presented signature header (hex, either case; surrounding
/// whitespace ignored). A malformed header is simply a mismatch.
pub fn verify(key: &[u8], body: &[u8], presented: &str) -> bool {
    let presented = presented.trim();
    let Some(raw) = decode_hex(presented) else {
        return false;
    };
    mac(key, body).verify_slice(&raw).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "61d1175f54c47dd67df14c17002a17b2";
    const BODY: &str = r#"{"eshopId":315185,"event":"addon:uninstall","eventCreated":"2019-09-23T22:01:36+0200","eventInstance":"315185"}"#;
    const SIG: &str = "a0e0a3e7689bd4c80e4d6ffcccb05235b864e1d0";

    #[test]
    fn spec_test_vector_signs_as_documented() {
        assert_eq!(sign(KEY.as_bytes(), BODY.as_bytes()), SIG);
    }

    #[test]
    fn verify_accepts_the_vector_in_either_case() {
        assert!(verify(KEY.as_bytes(), BODY.as_bytes(), SIG));
        assert!(verify(KEY.as_bytes(), BODY.as_bytes(), &SIG.to_uppercase()));
    }

    #[test]
    fn verify_rejects_tampering_and_garbage() {
        assert!(!verify(KEY.as_bytes(), b"{}", SIG));
        assert!(!verify(b"other-key", BODY.as_bytes(), SIG));
        assert!(!verify(KEY.as_bytes(), BODY.as_bytes(), "zz"));
        assert!(!verify(KEY.as_bytes(), BODY.as_bytes(), ""));
        assert!(!verify(KEY.as_bytes(), BODY.as_bytes(), &SIG[..38]));
    }
}
