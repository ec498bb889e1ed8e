//! The two values the settings pages hand to the browser and get back (SPEC B9): the login
//! `state` of the authorization-code flow and the path session. Both are sealed (XChaCha20-Poly1305
//! under keys derived from the store key, one label each), so they are opaque and cannot be forged
//! or altered; replicas that hold the same store key open each other's values, and after a key
//! rotation the previous keys still open values sealed before it.
//!
//! Wire form: base64url without padding of `version (1) || nonce (24) || ciphertext+tag`, the
//! plaintext being compact JSON. The kind is bound as associated data as well as by the key, so a
//! state never opens as a session. Decoding is public for the fuzz target: it must never panic
//! and never accept a value it did not seal.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{AeadCore, XChaCha20Poly1305, XNonce};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Longer encoded values are refused before decoding: a session holds an e-mail, a name and a
/// URL, far below this.
pub const MAX_ENCODED: usize = 4096;

/// Store-key derivation labels.
pub const SESSION_LABEL: &str = "settings session v1";
pub const STATE_LABEL: &str = "settings state v1";

/// How long an authorization-code `state` is valid (SPEC B9).
pub const STATE_LIFETIME: Duration = Duration::from_secs(600);

/// A verified admin of an e-shop, for `settings_session_ttl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    #[serde(rename = "e")]
    pub eshop_id: u64,
    #[serde(rename = "m")]
    pub email: String,
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "l")]
    pub language: String,
    /// getBasicEshop's `project.url` (a frame ancestor).
    #[serde(rename = "u")]
    pub project_url: String,
    /// Unix seconds.
    #[serde(rename = "x")]
    pub expires: u64,
}

/// What `/settings` binds into the `state` it sends to `authorize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    #[serde(rename = "e")]
    pub eshop_id: u64,
    #[serde(rename = "l")]
    pub language: String,
    /// Random, recorded in the store when used so the state works once.
    #[serde(rename = "o")]
    pub nonce: String,
    #[serde(rename = "x")]
    pub expires: u64,
}

/// Something with an expiry in Unix seconds.
pub trait Expiring {
    fn expires(&self) -> u64;
}

impl Expiring for Session {
    fn expires(&self) -> u64 {
        self.expires
    }
}

impl Expiring for LoginState {
    fn expires(&self) -> u64 {
        self.expires
    }
}

/// Why a value was refused. Deliberately coarse: the browser learns nothing about which check
/// failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a value this proxy sealed (or not of this kind, or altered).
    Invalid,
    Expired,
}

/// Seals and opens one kind of value with keys derived for its label.
pub struct Sealer {
    /// The current key first; the others only open.
    ciphers: Vec<XChaCha20Poly1305>,
    aad: &'static [u8],
}

impl Sealer {
    /// `keys` as [`crate::store::Store::derived_keys`] gives them for `label`.
    pub fn new(label: &'static str, keys: &[[u8; 32]]) -> Sealer {
        Sealer {
            ciphers: keys
                .iter()
                .map(|k| XChaCha20Poly1305::new(k.into()))
                .collect(),
            aad: label.as_bytes(),
        }
    }

    pub fn seal<T: Serialize>(&self, value: &T) -> String {
        let plain = serde_json::to_vec(value).unwrap_or_default();
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let Some(cipher) = self.ciphers.first() else {
            return String::new();
        };
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: self.aad,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Opens `encoded` and checks its expiry against `now`.
    pub fn open<T: DeserializeOwned + Expiring>(
        &self,
        encoded: &str,
        now: SystemTime,
    ) -> Result<T, Refused> {
        if encoded.len() > MAX_ENCODED {
            return Err(Refused::Invalid);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| Refused::Invalid)?;
        if raw.len() < 1 + NONCE_LEN + TAG_LEN || raw[0] != VERSION {
            return Err(Refused::Invalid);
        }
        let nonce = XNonce::from_slice(&raw[1..1 + NONCE_LEN]);
        let payload = || Payload {
            msg: &raw[1 + NONCE_LEN..],
            aad: self.aad,
        };
        let plain = self
            .ciphers
            .iter()
            .find_map(|c| c.decrypt(nonce, payload()).ok())
            .ok_or(Refused::Invalid)?;
        let value: T = serde_json::from_slice(&plain).map_err(|_| Refused::Invalid)?;
        if value.expires() <= unix(now) {
            return Err(Refused::Expired);
        }
        Ok(value)
    }
}

/// Unix seconds of `t` (0 before the epoch).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A fresh random nonce for a [`LoginState`]: 128 bits, URL-safe.
pub fn random_nonce() -> String {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut OsRng, &mut b);
    URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(expires: u64) -> Session {
        Session {
            eshop_id: 222651,
            email: "jana@example.com".into(),
            name: "Jana Nováková".into(),
            language: "cs".into(),
            project_url: "https://shop.example/".into(),
            expires,
        }
    }

    #[test]
    fn sealed_session_round_trips_and_is_url_safe() {
        let s = Sealer::new(SESSION_LABEL, &[[7; 32]]);
        let now = SystemTime::now();
        let v = session(unix(now) + 60);
        let enc = s.seal(&v);
        assert!(enc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(!enc.contains("jana"));
        assert_eq!(s.open::<Session>(&enc, now), Ok(v));
    }

    #[test]
    fn tampered_expired_foreign_or_other_kind_values_are_refused() {
        let now = SystemTime::now();
        let s = Sealer::new(SESSION_LABEL, &[[7; 32]]);
        let enc = s.seal(&session(unix(now) + 60));
        let mut raw = URL_SAFE_NO_PAD.decode(&enc).unwrap();
        for i in [0, 1, 30, raw.len() - 1] {
            raw[i] ^= 1;
            let bad = URL_SAFE_NO_PAD.encode(&raw);
            assert_eq!(s.open::<Session>(&bad, now), Err(Refused::Invalid), "{i}");
            raw[i] ^= 1;
        }
        assert_eq!(
            s.open::<Session>(&s.seal(&session(unix(now))), now),
            Err(Refused::Expired)
        );
        let other_key = Sealer::new(SESSION_LABEL, &[[8; 32]]);
        assert_eq!(other_key.open::<Session>(&enc, now), Err(Refused::Invalid));
        let state = Sealer::new(STATE_LABEL, &[[7; 32]]);
        assert_eq!(state.open::<LoginState>(&enc, now), Err(Refused::Invalid));
        for junk in ["", "a", "!!!", &"A".repeat(MAX_ENCODED + 1)] {
            assert_eq!(s.open::<Session>(junk, now), Err(Refused::Invalid));
        }
    }

    #[test]
    fn a_previous_key_still_opens() {
        let now = SystemTime::now();
        let old = Sealer::new(SESSION_LABEL, &[[1; 32]]);
        let enc = old.seal(&session(unix(now) + 60));
        let rotated = Sealer::new(SESSION_LABEL, &[[2; 32], [1; 32]]);
        assert!(rotated.open::<Session>(&enc, now).is_ok());
    }
}
