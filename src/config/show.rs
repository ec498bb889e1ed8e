//! Serializers for `#[serde(serialize_with = "...")]`: how check-config prints a value, in the
//! same shape config.toml reads it back. Unset optional values print as `""`, which is how
//! config.toml spells "unset"; secrets print through their `Display`, which is `<redacted>`.

use std::fmt::Display;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serializer;

use super::REDACTED;

pub fn display<S: Serializer, T: Display>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// `None` as `""`.
pub fn opt<S: Serializer, T: Display>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.collect_str(v),
        None => s.serialize_str(""),
    }
}

pub fn displays<S: Serializer, T: Display>(values: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(values.iter().map(ToString::to_string))
}

pub fn opt_path<S: Serializer>(value: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    opt(&value.as_ref().map(|p| p.display()), s)
}

pub fn paths<S: Serializer>(values: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(values.iter().map(|p| p.display().to_string()))
}

/// As written in config.toml, e.g. "5m", "1500ms".
pub fn duration<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*value))
}

pub fn store_url<S: Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url_password(value))
}

/// A store URL with any password replaced, e.g. `postgres://app:<redacted>@db/proxy`.
pub(super) fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:{REDACTED}{}", &rest[at..]),
        None => url.to_owned(),
    }
}
