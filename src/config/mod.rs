//! Configuration: built-in defaults < TOML file < `SHOPTET_PROXY_<SECTION>__<KEY>` environment.
//!
//! Every key is declared once: a field of its section in `sections.rs`, with its serde
//! attributes, and its default in that section's `Default` impl. figment merges the layers and
//! deserialises straight into those sections (`deny_unknown_fields`, so a misspelt key fails
//! loudly instead of silently keeping a default); `deserialize_with` parsers (`parse.rs`) turn
//! strings into typed values there, so figment's error names the key, the value and its origin.
//! `validate.rs` then applies the rules that span keys and reads secret files, so every consumer
//! gets a [`Config`] that is already known good. check-config serialises the same sections
//! (`show.rs`), every secret printed as `<redacted>`. Secret values never leave this module except
//! through [`Secret`].
//!
//! Adding a key (e.g. `[addon] settings_session_ttl = "1h"`):
//! 1. add the field to its section in `sections.rs`, with the parser and printer its type needs:
//!    - `bool`, integers, `f64`: no attribute (serde's own errors name the key);
//!    - free text: `deserialize_with = "parse::text"` (a number in the environment stays text);
//!    - durations: `deserialize_with = "parse::duration"` (or `positive_duration`),
//!      `serialize_with = "show::duration"`;
//!    - a URL / listen address (optional: `""` means unset): `parse::http_url` /
//!      `socket_addr` with `show::display`, or `parse::opt_http_url` / `opt_socket_addr` with
//!      `show::opt`; a file name: `parse::opt_path` with `show::opt_path`;
//!    - lists: `parse::text_list` for strings, `parse::cidrs` with `show::displays` for networks;
//!    - a secret in a file: the `*_file` key as above plus a field
//!      `#[serde(skip_deserializing, serialize_with = "show::opt")] Option<Secret>` that
//!      `validate.rs` fills with `Validator::secret_file` (and both names in the secret lists
//!      of the check-config tests in `tests.rs`); every other `*_file` path is resolved there
//!      with `Validator::resolve` (TLS pairs: `Validator::tls_pair`);
//! 2. add its default to the section's `Default` impl;
//! 3. add the key with its default and a comment to the reference `config.toml`, and a value
//!    other than the default to the config of
//!    `tests::redacted_output_of_a_config_with_every_key_changed_loads_back_to_it` (tests check
//!    that config.toml holds exactly the printed keys and loads to the defaults, and that every
//!    key's printed value reads back).
//!
//! A new section is a struct like the others plus a field of [`Config`].

use std::path::{Path, PathBuf};

use figment::Profile;
use serde::{Deserialize, Serialize};

pub use crate::secret::Secret;
pub use sections::{
    AddonSection, AdminSection, LogFormat, LogSection, ProxySection, PublicSection, ShoptetSection,
    StoreSection, TelemetrySection,
};

mod env;
mod parse;
mod sections;
mod show;
#[cfg(test)]
mod tests;
mod validate;

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "SHOPTET_PROXY_";
/// Separator between section and key in an environment variable name.
const ENV_SEPARATOR: &str = "__";
/// figment metadata name of the environment layer; errors from it name the variable, not a file.
const ENV_METADATA_NAME: &str = "environment variable";
/// Config file read when `--config` is not given; its absence is not an error.
pub const DEFAULT_CONFIG_PATH: &str = "config.toml";
/// Printed in place of every secret value.
const REDACTED: &str = "<redacted>";
/// Bound of `proxy.bucket_reserve`: Shoptet's bucket holds 200 drops, and a reserve of all of
/// them would leave pacing room for one request at a time only.
pub const MAX_BUCKET_RESERVE: u32 = 200;

/// A configuration that cannot be used. Shown to the operator as is, so every variant names the
/// key and the offending value (never a secret value).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} does not exist", path.display())]
    FileMissing { path: PathBuf },
    /// Syntax errors, unknown keys, type mismatches and bad values, as found while merging the
    /// layers.
    #[error("{0}")]
    Parse(String),
    #[error("invalid config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The validated configuration. Field names mirror the TOML sections.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub shoptet: ShoptetSection,
    pub proxy: ProxySection,
    pub public: PublicSection,
    pub addon: AddonSection,
    pub admin: AdminSection,
    pub store: StoreSection,
    pub log: LogSection,
    pub telemetry: TelemetrySection,
}

impl Config {
    /// Loads from `path` (or `./config.toml`, which may be absent) and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(path, &env::process_env())
    }

    /// Like [`Config::load`], with the environment given explicitly (for tests). `env` is the
    /// whole environment: `SHOPTET_PROXY_*` overrides and `CREDENTIALS_DIRECTORY` are taken from it.
    pub fn load_from(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let file = path.unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
        if !file.exists() && path.is_some() {
            return Err(ConfigError::FileMissing {
                path: file.to_path_buf(),
            });
        }
        let figment = env::layers(file, env);
        let parsed: Config = figment.extract().map_err(describe_figment_error)?;
        let credentials_dir = env
            .iter()
            .find(|(k, v)| k == "CREDENTIALS_DIRECTORY" && !v.is_empty())
            .map(|(_, v)| PathBuf::from(v));
        validate::Validator {
            figment: &figment,
            credentials_dir,
        }
        .validate(parsed)
    }

    /// The `log.format` the file and environment ask for, read on its own: when the
    /// configuration as a whole is invalid, `serve` still reports that in the chosen format.
    /// Anything unreadable counts as text.
    pub fn requested_log_format(path: Option<&Path>) -> LogFormat {
        let env = env::process_env();
        let figment = env::layers(path.unwrap_or(Path::new(DEFAULT_CONFIG_PATH)), &env);
        match figment.extract_inner::<String>("log.format").as_deref() {
            Ok("json") => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }

    /// The effective configuration as TOML, with every secret value replaced by `<redacted>`.
    pub fn redacted_toml(&self) -> String {
        // Serialising plain strings, numbers and lists into TOML cannot fail.
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// Rewrites figment's errors so that each names the config key (or environment variable) and
/// the file it came from, e.g. ``unknown key `proxy.foo` in config file ./config.toml``.
fn describe_figment_error(errors: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let lines: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let key = format!("`{}`", e.path.join("."));
            let origin = match &e.metadata {
                Some(md) if md.name == ENV_METADATA_NAME => {
                    format!(
                        " (environment variable {})",
                        md.interpolate(&Profile::Default, &e.path)
                    )
                }
                Some(md) => match &md.source {
                    Some(source) => format!(" (in {} {source})", md.name),
                    None => format!(" (in {})", md.name),
                },
                None => String::new(),
            };
            match &e.kind {
                // figment's path already ends with the unknown field's name.
                Kind::UnknownField(..) => format!("unknown config key {key}{origin}"),
                // A scalar where a [section] belongs; serde would name our internal struct.
                Kind::InvalidType(actual, expected) if expected.starts_with("struct ") => {
                    format!("invalid config key {key}: found {actual}, expected a table{origin}")
                }
                kind if e.path.is_empty() => format!("{}{origin}", without_source_lines(kind)),
                // A value parser's own message (`parse`): worded like the validator's errors.
                Kind::Message(message) => {
                    let path: Vec<&str> = e.path.iter().map(String::as_str).collect();
                    let origin = validate::origin(e.metadata.as_ref(), &path);
                    format!("invalid config key {key}: {message}{origin}")
                }
                kind => format!("invalid config key {key}: {kind}{origin}"),
            }
        })
        .collect();
    ConfigError::Parse(lines.join("\n"))
}

/// A TOML syntax error quotes the offending source line, which may hold a secret
/// (`client_secret = "...`); keep the position and the explanation, drop the quoted line.
fn without_source_lines(kind: &figment::error::Kind) -> String {
    kind.to_string()
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            !(digits > 0 && line[digits..].starts_with(" |"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}
