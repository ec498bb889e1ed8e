//! Sealing of secret columns: XChaCha20-Poly1305 under a keyring of one current and any number of
//! previous 256-bit keys.
//!
//! A sealed value is `version (1 byte, = 1) || key id (8 bytes) || nonce (24 bytes) || ciphertext+tag`.
//! The associated data is `"<eshop_id>:<column>"`, so a ciphertext copied into another row or
//! column fails to open instead of silently handing one e-shop's token to another.
//!
//! The key id lets a read pick the right key without trial decryption and lets `rekey` find values
//! still sealed under an old key. It is the first 8 bytes of the Poly1305 tag obtained by sealing
//! the empty message under the key with an all-zero nonce and the associated data
//! `"shoptet-proxy key id v1"`: a keyed, one-way fingerprint ("sealing nothing") that needs no hash
//! dependency and reveals nothing about the key. The random nonces of real values are never zero
//! in practice (2^-192), and the fingerprint is never used as a ciphertext.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{AeadCore, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
type HmacSha256 = Hmac<Sha256>;
use rand::RngCore;
use sha2::Sha256;

use super::StoreError;

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// One key and its fingerprint.
struct SealKey {
    id: [u8; KEY_ID_LEN],
    cipher: XChaCha20Poly1305,
    /// Kept for [`Keyring::derive`] only.
    raw: [u8; 32],
}

impl SealKey {
    fn new(key: [u8; 32]) -> SealKey {
        let cipher = XChaCha20Poly1305::new(&key.into());
        let zero_nonce = XNonce::default();
        let fingerprint = cipher
            .encrypt(
                &zero_nonce,
                Payload {
                    msg: &[],
                    aad: b"shoptet-proxy key id v1",
                },
            )
            .unwrap_or_default();
        let mut id = [0u8; KEY_ID_LEN];
        for (dst, src) in id.iter_mut().zip(fingerprint) {
            *dst = src;
        }
        SealKey {
            id,
            cipher,
            raw: key,
        }
    }
}

/// The store's keys: `current` seals every write and is tried first on reads; `previous` keys only
/// open values written before a rotation (until `store rekey` rewrites them).
pub struct Keyring {
    current: SealKey,
    previous: Vec<SealKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key ids are public fingerprints; the keys themselves never print.
        f.debug_struct("Keyring")
            .field("current", &hex_id(&self.current.id))
            .field(
                "previous",
                &self
                    .previous
                    .iter()
                    .map(|k| hex_id(&k.id))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// Reads the current key file and the previous key files: each holds the base64 encoding of
    /// 32 bytes (surrounding whitespace ignored). Errors name the file, never its content.
    pub fn load(current: &Path, previous: &[PathBuf]) -> Result<Keyring, StoreError> {
        let current = read_key_file(current)?;
        let previous = previous
            .iter()
            .map(|p| read_key_file(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Keyring::from_keys(current, previous))
    }

    pub fn from_keys(current: [u8; 32], previous: Vec<[u8; 32]>) -> Keyring {
        Keyring {
            current: SealKey::new(current),
            previous: previous.into_iter().map(SealKey::new).collect(),
        }
    }

    /// A fresh random key and no previous keys: for `demo` and tests, whose stores are throwaway.
    pub fn generate() -> Keyring {
        Keyring::from_keys(random_key(), Vec::new())
    }

    /// Seals `plaintext` under the current key, bound to the e-shop and column.
    pub(crate) fn seal(
        &self,
        eshop_id: u64,
        column: &'static str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = associated_data(eshop_id, column);
        let ciphertext = self
            .current
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Crypto { eshop_id, column })?;
        let mut sealed = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&self.current.id);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Opens a value sealed by [`Keyring::seal`] for the same e-shop and column, with whichever
    /// key of the ring sealed it.
    pub(crate) fn open(
        &self,
        eshop_id: u64,
        column: &'static str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let fail = || StoreError::Crypto { eshop_id, column };
        if sealed.len() < HEADER_LEN + TAG_LEN || sealed[0] != VERSION {
            return Err(fail());
        }
        let key_id = &sealed[1..1 + KEY_ID_LEN];
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == key_id)
            .ok_or_else(fail)?;
        let nonce = XNonce::from_slice(&sealed[1 + KEY_ID_LEN..HEADER_LEN]);
        let aad = associated_data(eshop_id, column);
        key.cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[HEADER_LEN..],
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| fail())
    }

    /// The ids of the ring's keys in hex, the current one first (public fingerprints).
    pub fn key_ids(&self) -> Vec<String> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| hex_id(&k.id))
            .collect()
    }

    /// The id (hex) of the key that sealed `sealed` when the ring has no such key; `None` when
    /// the ring can open it by key id (or it is no sealed value at all, which opening reports).
    pub(crate) fn foreign_key_id(&self, sealed: &[u8]) -> Option<String> {
        if sealed.len() < HEADER_LEN || sealed[0] != VERSION {
            return None;
        }
        let id = &sealed[1..1 + KEY_ID_LEN];
        let known = std::iter::once(&self.current)
            .chain(&self.previous)
            .any(|k| k.id == id);
        (!known).then(|| id.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// HMAC-SHA256(key, "shoptet-proxy derive v1:" + label) for each key, the current one first.
    pub(crate) fn derive(&self, label: &str) -> Vec<[u8; 32]> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| {
                let mut mac = <HmacSha256 as hmac::KeyInit>::new_from_slice(&k.raw)
                    .expect("HMAC takes a key of any length");
                mac.update(b"shoptet-proxy derive v1:");
                mac.update(label.as_bytes());
                mac.finalize().into_bytes().into()
            })
            .collect()
    }

    /// Whether `sealed` was written under the current key (so `rekey` can leave it alone).
    pub(crate) fn is_current(&self, sealed: &[u8]) -> bool {
        sealed.len() >= HEADER_LEN
            && sealed[0] == VERSION
            && sealed[1..1 + KEY_ID_LEN] == self.current.id
    }
}

/// A new random key in the key-file format (base64 of 32 bytes), as `gen-key` prints it.
pub fn generate_key_base64() -> String {
    base64::engine::general_purpose::STANDARD.encode(random_key())
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    key
}

fn hex_id(id: &[u8; KEY_ID_LEN]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn associated_data(eshop_id: u64, column: &str) -> String {
    format!("{eshop_id}:{column}")
}

fn read_key_file(path: &Path) -> Result<[u8; 32], StoreError> {
    let key_error = |reason: String| StoreError::Key {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| key_error(e.kind().to_string()))?;
    // The decode error's text could quote an offending character of the key; keep only a summary.
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| key_error("not valid base64".into()))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| key_error(format!("decodes to {} bytes, expected 32", bytes.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(current: u8, previous: &[u8]) -> Keyring {
        Keyring::from_keys([current; 32], previous.iter().map(|&b| [b; 32]).collect())
    }

    #[test]
    fn sealed_value_round_trips() {
        let keys = ring(1, &[]);
        let sealed = keys.seal(222651, "oauth_token", b"oauth-secret").unwrap();
        assert_eq!(sealed.len(), HEADER_LEN + b"oauth-secret".len() + TAG_LEN);
        assert_eq!(
            keys.open(222651, "oauth_token", &sealed).unwrap(),
            b"oauth-secret"
        );
    }

    #[test]
    fn same_plaintext_seals_differently_each_time() {
        let keys = ring(1, &[]);
        let a = keys.seal(1, "oauth_token", b"x").unwrap();
        let b = keys.seal(1, "oauth_token", b"x").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn ciphertext_moved_to_another_row_or_column_fails() {
        let keys = ring(1, &[]);
        let sealed = keys.seal(1, "oauth_token", b"secret").unwrap();
        let err = keys.open(2, "oauth_token", &sealed).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot open sealed value for eshop 2 column oauth_token"
        );
        assert!(keys.open(1, "access_token", &sealed).is_err());
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let keys = ring(1, &[]);
        let sealed = keys.seal(1, "oauth_token", b"secret").unwrap();
        for i in [0, 1, HEADER_LEN - 1, HEADER_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(keys.open(1, "oauth_token", &bad).is_err(), "byte {i}");
        }
        assert!(keys
            .open(1, "oauth_token", &sealed[..HEADER_LEN + 3])
            .is_err());
        assert!(keys.open(1, "oauth_token", &[]).is_err());
    }

    #[test]
    fn previous_key_still_opens_old_values_but_new_writes_use_current() {
        let old = ring(1, &[]);
        let sealed = old.seal(7, "access_token", b"tok").unwrap();
        let rotated = ring(2, &[1]);
        assert_eq!(rotated.open(7, "access_token", &sealed).unwrap(), b"tok");
        assert!(!rotated.is_current(&sealed));
        let fresh = rotated.seal(7, "access_token", b"tok").unwrap();
        assert!(rotated.is_current(&fresh));
        assert!(old.open(7, "access_token", &fresh).is_err());
        assert!(ring(2, &[]).open(7, "access_token", &sealed).is_err());
    }

    #[test]
    fn foreign_key_ids_are_named_and_known_ones_are_not() {
        let old = ring(1, &[]);
        let sealed = old.seal(7, "oauth_token", b"tok").unwrap();
        let other = ring(2, &[]);
        assert_eq!(
            other.foreign_key_id(&sealed),
            Some(old.key_ids()[0].clone())
        );
        assert_eq!(ring(2, &[1]).foreign_key_id(&sealed), None);
        assert_eq!(old.foreign_key_id(&sealed), None);
        assert_eq!(other.foreign_key_id(b"short"), None);
    }

    #[test]
    fn derived_keys_depend_on_key_and_label_and_follow_the_ring() {
        let a = ring(1, &[2]).derive("settings");
        assert_eq!(a.len(), 2);
        assert_eq!(a, ring(1, &[2]).derive("settings"));
        assert_ne!(a[0], a[1]);
        assert_ne!(a[0], ring(1, &[]).derive("other")[0]);
        assert_eq!(a[1], ring(2, &[]).derive("settings")[0]);
        assert_ne!(a[0], [1u8; 32]);
    }

    #[test]
    fn key_ids_differ_per_key_and_debug_shows_no_key() {
        let keys = ring(0xAB, &[0xCD]);
        assert_ne!(keys.current.id, keys.previous[0].id);
        let dbg = format!("{keys:?}");
        assert!(!dbg.contains("abababab"), "{dbg}");
    }

    #[test]
    fn key_file_loads_and_errors_name_the_path_not_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.key");
        std::fs::write(&good, format!("{}\n", generate_key_base64())).unwrap();
        let prev = dir.path().join("prev.key");
        std::fs::write(&prev, generate_key_base64()).unwrap();
        let keys = Keyring::load(&good, std::slice::from_ref(&prev)).unwrap();
        assert_eq!(keys.previous.len(), 1);

        let short = dir.path().join("short.key");
        let short_content = base64::engine::general_purpose::STANDARD.encode(b"sixteen-byte-key");
        std::fs::write(&short, &short_content).unwrap();
        let err = Keyring::load(&short, &[]).unwrap_err().to_string();
        assert!(
            err.contains("short.key") && err.contains("16 bytes"),
            "{err}"
        );
        assert!(!err.contains(&short_content), "{err}");

        let garbage = dir.path().join("garbage.key");
        std::fs::write(&garbage, "hunter2!!secret").unwrap();
        let err = Keyring::load(&good, &[garbage]).unwrap_err().to_string();
        assert!(
            err.contains("garbage.key") && !err.contains("hunter2"),
            "{err}"
        );

        let err = Keyring::load(&dir.path().join("missing.key"), &[]).unwrap_err();
        assert!(err.to_string().contains("missing.key"), "{err}");
    }
}
