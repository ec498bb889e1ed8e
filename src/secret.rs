//! A string that must never be printed: OAuth tokens, API access tokens, the client secret, keys.
//!
//! `Debug` and `Display` print `<redacted>`, so a secret that slips into a log line, an error
//! message or a panic reveals nothing; the value is reachable only through `expose()`, which makes
//! every real use greppable.

use std::fmt;

/// A secret string. Compare with [`Secret::ct_eq`] when the comparison is an authentication check.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself. Call only where it is sent to its rightful recipient.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison, for authenticating a presented credential.
    pub fn ct_eq(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        // Lengths are not secret (keys have a fixed, public format); the content is.
        self.0.len() == presented.len() && bool::from(self.0.as_bytes().ct_eq(presented))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Serialises as `<redacted>` too, so a secret in anything printed (check-config) stays hidden.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-oauth");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2-oauth");
    }

    #[test]
    fn serialising_never_shows_the_value() {
        let s = Secret::new("hunter2-oauth");
        assert_eq!(serde_json::to_string(&[s]).unwrap(), r#"["<redacted>"]"#);
    }

    #[test]
    fn ct_eq_matches_only_the_exact_value() {
        let s = Secret::new("abc");
        assert!(s.ct_eq(b"abc"));
        assert!(!s.ct_eq(b"abd"));
        assert!(!s.ct_eq(b"ab"));
        assert!(!s.ct_eq(b"abcd"));
    }
}
