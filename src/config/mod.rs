//! Configuration: built-in defaults < TOML file < `SHOPTET_PROXY_<SECTION>__<KEY>` environment.
//!
//! Loading is two-staged on purpose. figment merges the layers into permissive "raw" structs
//! (`deny_unknown_fields`, so a misspelt key fails loudly instead of silently keeping a
//! default); `validate` then turns strings into typed values (URLs, durations, CIDRs, socket
//! addresses) and reads secret files, so every consumer gets a [`Config`] that is already known
//! good. Every error names the key and the offending value, except for secret values, which never
//! leave this module except through [`Secret`].

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer, Serialize};

pub use crate::secret::Secret;

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "SHOPTET_PROXY_";
/// Separator between section and key in an environment variable name.
const ENV_SEPARATOR: &str = "__";
/// figment metadata name of [`EnvOverrides`]; errors from it name the variable, not a file.
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
    /// Syntax errors, unknown keys and type mismatches, as found while merging the layers.
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

/// The validated configuration. Field names mirror the TOML keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub shoptet: Shoptet,
    pub proxy: Proxy,
    pub public: Public,
    pub addon: Addon,
    pub admin: Admin,
    pub store: Store,
    pub log: Log,
    pub telemetry: Telemetry,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Shoptet {
    pub api_url: url::Url,
    pub partner_url: url::Url,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub redirect_uri: String,
    /// A5's "URL for user authorization" (B9): as configured, or `redirect_uri` with the path
    /// `/settings/authorized`; empty only when both are.
    pub settings_redirect_uri: String,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Proxy {
    pub listen: SocketAddr,
    pub eshop_header: http::HeaderName,
    pub refresh_margin: Duration,
    pub max_replay_body: u64,
    pub max_in_flight_per_eshop: usize,
    pub max_in_flight: usize,
    pub max_queue: usize,
    pub queue_timeout: Duration,
    pub max_retry_wait: Duration,
    pub upstream_timeout: Duration,
    pub token_backoff_max: Duration,
    pub bucket_pacing: bool,
    /// Drops pacing keeps free below the bucket's capacity (below [`MAX_BUCKET_RESERVE`]).
    pub bucket_reserve: u32,
    pub shutdown_timeout: Duration,
    pub client_keys_file: Option<PathBuf>,
    /// Loaded from `client_keys_file`; empty means clients need not authenticate.
    pub client_keys: Vec<Secret>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Public {
    /// `None`: the public listener is off.
    pub listen: Option<SocketAddr>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub install_allow: Vec<ipnet::IpNet>,
    pub webhook_allow: Vec<ipnet::IpNet>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Addon {
    pub events_url: Option<url::Url>,
    pub webhooks_url: Option<url::Url>,
    pub retry_max: Duration,
    /// Where `/settings/s/<session>/...` is forwarded (B9); `None` turns `/settings` off.
    pub settings_url: Option<url::Url>,
    pub settings_session_ttl: Duration,
    /// CSP `frame-ancestors` sources allowed besides the e-shop's own and Shoptet's.
    pub settings_frame_ancestors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    /// Loaded from `token_file`; `None` turns the /admin write endpoints off.
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Store {
    /// `sqlite://<path>` (relative to the working directory) or `postgres://...`.
    pub url: String,
    /// Only the path: the store reads the key itself. `None` is allowed here; `serve` refuses it.
    pub key_file: Option<PathBuf>,
    pub previous_key_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive, checked at load time.
    pub level: String,
}

/// `[telemetry]`: OTLP/HTTP trace export (SPEC B7). Also the redacted view: nothing secret here.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Telemetry {
    /// Base URL of the collector ("" = no traces); spans go to `<base>/v1/traces`.
    pub otlp_endpoint: String,
    pub sample_ratio: f64,
    pub service_name: String,
}

impl Config {
    /// Loads from `path` (or `./config.toml`, which may be absent) and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(path, &process_env())
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
        let figment = layers(file, env);
        let raw: RawConfig = figment.extract().map_err(describe_figment_error)?;
        let credentials_dir = env
            .iter()
            .find(|(k, v)| k == "CREDENTIALS_DIRECTORY" && !v.is_empty())
            .map(|(_, v)| PathBuf::from(v));
        Validator {
            figment: &figment,
            credentials_dir,
        }
        .validate(raw)
    }

    /// The `log.format` the file and environment ask for, read on its own: when the
    /// configuration as a whole is invalid, `serve` still reports that in the chosen format.
    /// Anything unreadable counts as text.
    pub fn requested_log_format(path: Option<&Path>) -> LogFormat {
        let env = process_env();
        let figment = layers(path.unwrap_or(Path::new(DEFAULT_CONFIG_PATH)), &env);
        match figment.extract_inner::<String>("log.format").as_deref() {
            Ok("json") => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }

    /// The effective configuration as TOML, with every secret value replaced by `<redacted>`.
    pub fn redacted_toml(&self) -> String {
        let view = RedactedView::from(self);
        // Serialising plain strings, numbers and lists into TOML cannot fail.
        toml::to_string(&view).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

// ---------------------------------------------------------------------------------------------
// Raw layer: what figment deserialises. Strings stay strings until `validate`, so a bad value
// produces our message (naming key and value) instead of a generic serde one.

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    shoptet: RawShoptet,
    proxy: RawProxy,
    public: RawPublic,
    addon: RawAddon,
    admin: RawAdmin,
    store: RawStore,
    log: RawLog,
    telemetry: RawTelemetry,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawShoptet {
    #[serde(deserialize_with = "text")]
    api_url: String,
    #[serde(deserialize_with = "text")]
    partner_url: String,
    #[serde(deserialize_with = "text")]
    client_id: String,
    #[serde(deserialize_with = "text")]
    client_secret: String,
    #[serde(deserialize_with = "text")]
    client_secret_file: String,
    #[serde(deserialize_with = "text")]
    redirect_uri: String,
    #[serde(deserialize_with = "text")]
    settings_redirect_uri: String,
    #[serde(deserialize_with = "text")]
    ca_file: String,
    #[serde(deserialize_with = "text")]
    connect_timeout: String,
}

impl Default for RawShoptet {
    fn default() -> Self {
        RawShoptet {
            api_url: "https://api.myshoptet.com".into(),
            partner_url: "https://12345.myshoptet.com".into(),
            client_id: String::new(),
            client_secret: String::new(),
            client_secret_file: String::new(),
            redirect_uri: String::new(),
            settings_redirect_uri: String::new(),
            ca_file: String::new(),
            connect_timeout: "5s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawProxy {
    #[serde(deserialize_with = "text")]
    listen: String,
    #[serde(deserialize_with = "text")]
    eshop_header: String,
    #[serde(deserialize_with = "text")]
    refresh_margin: String,
    max_replay_body: u64,
    max_in_flight_per_eshop: usize,
    max_in_flight: usize,
    max_queue: usize,
    #[serde(deserialize_with = "text")]
    queue_timeout: String,
    #[serde(deserialize_with = "text")]
    max_retry_wait: String,
    #[serde(deserialize_with = "text")]
    upstream_timeout: String,
    #[serde(deserialize_with = "text")]
    token_backoff_max: String,
    bucket_pacing: bool,
    bucket_reserve: u32,
    #[serde(deserialize_with = "text")]
    shutdown_timeout: String,
    #[serde(deserialize_with = "text")]
    client_keys_file: String,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            listen: "127.0.0.1:8080".into(),
            eshop_header: "X-Shoptet-Eshop-Id".into(),
            refresh_margin: "5m".into(),
            max_replay_body: 1_048_576,
            max_in_flight_per_eshop: 3,
            max_in_flight: 50,
            max_queue: 1000,
            queue_timeout: "30s".into(),
            max_retry_wait: "10s".into(),
            upstream_timeout: "60s".into(),
            token_backoff_max: "10s".into(),
            bucket_pacing: true,
            bucket_reserve: 10,
            shutdown_timeout: "30s".into(),
            client_keys_file: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPublic {
    #[serde(deserialize_with = "text")]
    listen: String,
    #[serde(deserialize_with = "text")]
    tls_cert_file: String,
    #[serde(deserialize_with = "text")]
    tls_key_file: String,
    #[serde(deserialize_with = "text_list")]
    install_allow: Vec<String>,
    #[serde(deserialize_with = "text_list")]
    webhook_allow: Vec<String>,
    #[serde(deserialize_with = "text_list")]
    trusted_proxies: Vec<String>,
}

impl Default for RawPublic {
    fn default() -> Self {
        RawPublic {
            listen: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            // Shoptet's published source ranges for installation and webhook calls (A1, A4).
            install_allow: vec!["78.24.15.64/26".into(), "93.185.110.117/28".into()],
            webhook_allow: vec!["185.184.254.0/24".into()],
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAddon {
    #[serde(deserialize_with = "text")]
    events_url: String,
    #[serde(deserialize_with = "text")]
    webhooks_url: String,
    #[serde(deserialize_with = "text")]
    retry_max: String,
    #[serde(deserialize_with = "text")]
    settings_url: String,
    #[serde(deserialize_with = "text")]
    settings_session_ttl: String,
    #[serde(deserialize_with = "text_list")]
    settings_frame_ancestors: Vec<String>,
}

impl Default for RawAddon {
    fn default() -> Self {
        RawAddon {
            events_url: String::new(),
            webhooks_url: String::new(),
            retry_max: "15s".into(),
            settings_url: String::new(),
            settings_session_ttl: "1h".into(),
            settings_frame_ancestors: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAdmin {
    #[serde(deserialize_with = "text")]
    listen: String,
    #[serde(deserialize_with = "text")]
    token_file: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: "127.0.0.1:9090".into(),
            token_file: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawStore {
    #[serde(deserialize_with = "text")]
    url: String,
    #[serde(deserialize_with = "text")]
    key_file: String,
    #[serde(deserialize_with = "text_list")]
    previous_key_files: Vec<String>,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            url: "sqlite://shoptet-proxy.db".into(),
            key_file: "store.key".into(),
            previous_key_files: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLog {
    #[serde(deserialize_with = "text")]
    format: String,
    #[serde(deserialize_with = "text")]
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawTelemetry {
    #[serde(deserialize_with = "text")]
    otlp_endpoint: String,
    sample_ratio: f64,
    #[serde(deserialize_with = "text")]
    service_name: String,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        RawTelemetry {
            otlp_endpoint: String::new(),
            sample_ratio: 1.0,
            service_name: "shoptet-proxy".into(),
        }
    }
}

/// Accepts any scalar as a string. Environment values are parsed by figment's value grammar, so
/// `SHOPTET_PROXY_SHOPTET__CLIENT_ID=12345` arrives as a number; it must still be a client id.
struct TextVisitor;

impl serde::de::Visitor<'_> for TextVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_char<E>(self, v: char) -> Result<String, E> {
        Ok(v.to_string())
    }
}

fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(TextVisitor)
}

/// A list of strings; a single string is a one-element list and an empty string the empty list,
/// so `SHOPTET_PROXY_PUBLIC__INSTALL_ALLOW=10.0.0.0/8` works without list syntax.
fn text_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct ListVisitor;

    /// One list element, any scalar accepted as for single values.
    struct Item(String);
    impl<'de> Deserialize<'de> for Item {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            text(d).map(Item)
        }
    }

    impl<'de> serde::de::Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of strings")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut items = Vec::new();
            while let Some(Item(s)) = seq.next_element()? {
                items.push(s);
            }
            Ok(items)
        }
        fn visit_str<E>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(if v.is_empty() {
                Vec::new()
            } else {
                vec![v.to_owned()]
            })
        }
    }

    d.deserialize_any(ListVisitor)
}

/// The process environment as UTF-8 pairs (other variables cannot be configuration).
fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// The file (when it exists) under the `SHOPTET_PROXY_*` variables of `env`; defaults come from
/// the raw types.
fn layers(file: &Path, env: &[(String, String)]) -> Figment {
    let mut figment = Figment::new();
    if file.exists() {
        figment = figment.merge(Toml::file_exact(file));
    }
    figment.merge(EnvOverrides::from_env(env))
}

// ---------------------------------------------------------------------------------------------
// Environment layer.

/// The `SHOPTET_PROXY_*` variables of a given environment, as a figment provider. figment's own
/// `Env` reads only the process environment; this one takes the variables as data so tests can
/// exercise the layering without mutating global state. Semantics match
/// `Env::prefixed("SHOPTET_PROXY_").split("__")` with lowercased keys.
struct EnvOverrides {
    /// (path inside the config, e.g. ["proxy", "listen"]; raw value)
    vars: Vec<(Vec<String>, String)>,
}

impl EnvOverrides {
    fn from_env(env: &[(String, String)]) -> Self {
        let vars = env
            .iter()
            .filter_map(|(name, value)| {
                let head = name.get(..ENV_PREFIX.len())?;
                if !head.eq_ignore_ascii_case(ENV_PREFIX) {
                    return None;
                }
                let path: Vec<String> = name[ENV_PREFIX.len()..]
                    .split(ENV_SEPARATOR)
                    .map(|part| part.to_ascii_lowercase())
                    .collect();
                // Every key lives in a section, so a config variable always has a `__`. Names
                // without one (SHOPTET_PROXY_BIN, SHOPTET_PROXY_TEST_PG_URL, ...) belong to
                // scripts and tests, not to the configuration.
                if path.len() < 2 || path.iter().any(String::is_empty) {
                    return None;
                }
                Some((path, value.clone()))
            })
            .collect();
        EnvOverrides { vars }
    }
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_METADATA_NAME).interpolater(|_: &Profile, keys: &[&str]| {
            format!(
                "{ENV_PREFIX}{}",
                keys.join(ENV_SEPARATOR).to_ascii_uppercase()
            )
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (path, raw) in &self.vars {
            let value: Value = raw
                .parse()
                .unwrap_or_else(|never: Infallible| match never {});
            insert_nested(&mut root, path, value);
        }
        Ok(Profile::Default.collect(root))
    }
}

fn insert_nested(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_nested(inner, rest, value);
            }
        }
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

// ---------------------------------------------------------------------------------------------
// Validation: raw strings → typed values.

struct Validator<'a> {
    figment: &'a Figment,
    credentials_dir: Option<PathBuf>,
}

impl Validator<'_> {
    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        Ok(Config {
            shoptet: self.shoptet(raw.shoptet)?,
            proxy: self.proxy(raw.proxy)?,
            public: self.public(raw.public)?,
            addon: self.addon(raw.addon)?,
            admin: self.admin(raw.admin)?,
            store: self.store(raw.store)?,
            log: self.log(raw.log)?,
            telemetry: self.telemetry(raw.telemetry)?,
        })
    }

    /// Builds an error for `key`, adding where the value came from (file or environment).
    fn err(&self, key: &str, message: impl fmt::Display) -> ConfigError {
        let origin = match self.figment.find_metadata(key) {
            Some(md) if md.name == ENV_METADATA_NAME => {
                let path: Vec<&str> = key.split('.').collect();
                format!(
                    " (from environment variable {})",
                    md.interpolate(&Profile::Default, &path)
                )
            }
            Some(md) => match &md.source {
                Some(source) => format!(" (in {source})"),
                None => String::new(),
            },
            None => String::new(),
        };
        ConfigError::invalid(key, format!("{message}{origin}"))
    }

    fn shoptet(&self, raw: RawShoptet) -> Result<Shoptet, ConfigError> {
        let client_secret = match (
            raw.client_secret.is_empty(),
            raw.client_secret_file.is_empty(),
        ) {
            (false, false) => {
                return Err(self.err(
                    "shoptet.client_secret",
                    "set either client_secret or client_secret_file, not both",
                ))
            }
            (false, true) => Some(Secret::new(raw.client_secret)),
            (true, false) => {
                let path = self.secret_path(&raw.client_secret_file);
                Some(self.read_secret_file("shoptet.client_secret_file", &path)?)
            }
            (true, true) => None,
        };
        Ok(Shoptet {
            api_url: self.http_url("shoptet.api_url", &raw.api_url)?,
            partner_url: self.http_url("shoptet.partner_url", &raw.partner_url)?,
            client_id: raw.client_id,
            client_secret,
            settings_redirect_uri: self
                .settings_redirect_uri(&raw.settings_redirect_uri, &raw.redirect_uri)?,
            redirect_uri: raw.redirect_uri,
            ca_file: non_empty(&raw.ca_file).map(|p| self.secret_path(p)),
            connect_timeout: self
                .positive_duration("shoptet.connect_timeout", &raw.connect_timeout)?,
        })
    }

    fn proxy(&self, raw: RawProxy) -> Result<Proxy, ConfigError> {
        let client_keys_file = non_empty(&raw.client_keys_file).map(|p| self.secret_path(p));
        let client_keys = match &client_keys_file {
            Some(path) => self.read_client_keys(path)?,
            None => Vec::new(),
        };
        let eshop_header =
            http::HeaderName::from_bytes(raw.eshop_header.as_bytes()).map_err(|_| {
                self.err(
                    "proxy.eshop_header",
                    format!("{:?} is not a valid HTTP header name", raw.eshop_header),
                )
            })?;
        Ok(Proxy {
            listen: self.socket_addr("proxy.listen", &raw.listen)?,
            eshop_header,
            refresh_margin: self.duration("proxy.refresh_margin", &raw.refresh_margin)?,
            max_replay_body: raw.max_replay_body,
            max_in_flight_per_eshop: self
                .positive("proxy.max_in_flight_per_eshop", raw.max_in_flight_per_eshop)?,
            max_in_flight: self.positive("proxy.max_in_flight", raw.max_in_flight)?,
            max_queue: raw.max_queue,
            queue_timeout: self.positive_duration("proxy.queue_timeout", &raw.queue_timeout)?,
            max_retry_wait: self.duration("proxy.max_retry_wait", &raw.max_retry_wait)?,
            upstream_timeout: self
                .positive_duration("proxy.upstream_timeout", &raw.upstream_timeout)?,
            token_backoff_max: self
                .positive_duration("proxy.token_backoff_max", &raw.token_backoff_max)?,
            bucket_pacing: raw.bucket_pacing,
            bucket_reserve: self.bucket_reserve(raw.bucket_reserve)?,
            shutdown_timeout: self.duration("proxy.shutdown_timeout", &raw.shutdown_timeout)?,
            client_keys_file,
            client_keys,
        })
    }

    fn public(&self, raw: RawPublic) -> Result<Public, ConfigError> {
        let listen = match non_empty(&raw.listen) {
            Some(addr) => Some(self.socket_addr("public.listen", addr)?),
            None => None,
        };
        let tls_cert_file = non_empty(&raw.tls_cert_file).map(|p| self.secret_path(p));
        let tls_key_file = non_empty(&raw.tls_key_file).map(|p| self.secret_path(p));
        match (&tls_cert_file, &tls_key_file) {
            (Some(_), None) => {
                return Err(self.err(
                    "public.tls_key_file",
                    "is empty but public.tls_cert_file is set; TLS needs both",
                ))
            }
            (None, Some(_)) => {
                return Err(self.err(
                    "public.tls_cert_file",
                    "is empty but public.tls_key_file is set; TLS needs both",
                ))
            }
            _ => {}
        }
        Ok(Public {
            listen,
            tls_cert_file,
            tls_key_file,
            install_allow: self.cidrs("public.install_allow", &raw.install_allow)?,
            webhook_allow: self.cidrs("public.webhook_allow", &raw.webhook_allow)?,
            trusted_proxies: self.cidrs("public.trusted_proxies", &raw.trusted_proxies)?,
        })
    }

    fn addon(&self, raw: RawAddon) -> Result<Addon, ConfigError> {
        let optional_url = |key: &str, value: &str| match non_empty(value) {
            Some(v) => self.http_url(key, v).map(Some),
            None => Ok(None),
        };
        Ok(Addon {
            events_url: optional_url("addon.events_url", &raw.events_url)?,
            webhooks_url: optional_url("addon.webhooks_url", &raw.webhooks_url)?,
            retry_max: self.positive_duration("addon.retry_max", &raw.retry_max)?,
            settings_url: optional_url("addon.settings_url", &raw.settings_url)?,
            settings_session_ttl: self
                .positive_duration("addon.settings_session_ttl", &raw.settings_session_ttl)?,
            settings_frame_ancestors: self.frame_ancestors(&raw.settings_frame_ancestors)?,
        })
    }

    /// `settings_redirect_uri` as set, else `redirect_uri` with the path `/settings/authorized`
    /// (query and fragment dropped); empty when neither is set.
    fn settings_redirect_uri(
        &self,
        value: &str,
        redirect_uri: &str,
    ) -> Result<String, ConfigError> {
        if let Some(v) = non_empty(value) {
            return self
                .http_url("shoptet.settings_redirect_uri", v)
                .map(|u| u.to_string());
        }
        let Some(base) = non_empty(redirect_uri) else {
            return Ok(String::new());
        };
        let mut url = self.http_url("shoptet.redirect_uri", base)?;
        url.set_path("/settings/authorized");
        url.set_query(None);
        url.set_fragment(None);
        Ok(url.to_string())
    }

    /// CSP source expressions: one token each, so none can end the directive or add another.
    fn frame_ancestors(&self, values: &[String]) -> Result<Vec<String>, ConfigError> {
        values
            .iter()
            .map(|v| {
                let v = v.trim();
                let ok = !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"'));
                if ok {
                    Ok(v.to_owned())
                } else {
                    Err(self.err(
                        "addon.settings_frame_ancestors",
                        format!("{v:?} is not a CSP source (e.g. \"https://admin.example.com\")"),
                    ))
                }
            })
            .collect()
    }

    fn admin(&self, raw: RawAdmin) -> Result<Admin, ConfigError> {
        let token_file = non_empty(&raw.token_file).map(|p| self.secret_path(p));
        let token = match &token_file {
            Some(path) => Some(self.read_secret_file("admin.token_file", path)?),
            None => None,
        };
        Ok(Admin {
            listen: self.socket_addr("admin.listen", &raw.listen)?,
            token_file,
            token,
        })
    }

    fn store(&self, raw: RawStore) -> Result<Store, ConfigError> {
        // The URL is not echoed: a postgres URL may carry a password.
        let scheme_ok = ["sqlite://", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| raw.url.starts_with(scheme) && raw.url.len() > scheme.len());
        if !scheme_ok {
            return Err(self.err(
                "store.url",
                "must be sqlite://<path> or postgres://... (value not shown: it may hold a password)",
            ));
        }
        let previous_key_files = raw
            .previous_key_files
            .iter()
            .enumerate()
            .map(|(i, p)| match non_empty(p) {
                Some(p) => Ok(self.secret_path(p)),
                None => Err(self.err(
                    "store.previous_key_files",
                    format!("entry {i} is an empty path"),
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(Store {
            url: raw.url,
            key_file: non_empty(&raw.key_file).map(|p| self.secret_path(p)),
            previous_key_files,
        })
    }

    fn telemetry(&self, raw: RawTelemetry) -> Result<Telemetry, ConfigError> {
        if !raw.otlp_endpoint.is_empty() {
            self.http_url("telemetry.otlp_endpoint", &raw.otlp_endpoint)?;
        }
        if !(0.0..=1.0).contains(&raw.sample_ratio) {
            return Err(self.err(
                "telemetry.sample_ratio",
                format!("{} is not between 0 and 1", raw.sample_ratio),
            ));
        }
        Ok(Telemetry {
            otlp_endpoint: raw.otlp_endpoint.trim_end_matches('/').to_string(),
            sample_ratio: raw.sample_ratio,
            service_name: raw.service_name,
        })
    }

    fn log(&self, raw: RawLog) -> Result<Log, ConfigError> {
        let format = match raw.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(self.err(
                    "log.format",
                    format!("{other:?} is neither \"text\" nor \"json\""),
                ))
            }
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.level) {
            return Err(self.err(
                "log.level",
                format!("{:?} is not a valid log filter: {e}", raw.level),
            ));
        }
        Ok(Log {
            format,
            level: raw.level,
        })
    }

    // --- value parsers -------------------------------------------------------------------------

    fn duration(&self, key: &str, value: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(value).map_err(|e| {
            self.err(
                key,
                format!("{value:?} is not a duration ({e}); use e.g. \"30s\", \"5m\", \"1500ms\""),
            )
        })
    }

    fn positive_duration(&self, key: &str, value: &str) -> Result<Duration, ConfigError> {
        let d = self.duration(key, value)?;
        if d.is_zero() {
            return Err(self.err(key, format!("{value:?} must be longer than zero")));
        }
        Ok(d)
    }

    fn bucket_reserve(&self, value: u32) -> Result<u32, ConfigError> {
        if value >= MAX_BUCKET_RESERVE {
            return Err(self.err(
                "proxy.bucket_reserve",
                format!(
                    "{value} leaves no room in Shoptet's bucket of 200 drops; must be below {MAX_BUCKET_RESERVE}"
                ),
            ));
        }
        Ok(value)
    }

    fn positive(&self, key: &str, value: usize) -> Result<usize, ConfigError> {
        if value == 0 {
            return Err(self.err(key, "0 is not allowed; must be at least 1"));
        }
        Ok(value)
    }

    fn socket_addr(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.parse().map_err(|_| {
            self.err(
                key,
                format!(
                    "{value:?} is not a listen address (expected IP:PORT, e.g. \"127.0.0.1:8080\")"
                ),
            )
        })
    }

    fn http_url(&self, key: &str, value: &str) -> Result<url::Url, ConfigError> {
        let url = url::Url::parse(value)
            .map_err(|e| self.err(key, format!("{value:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.err(key, format!("{value:?} must use http:// or https://")));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(self.err(key, format!("{value:?} has no host")));
        }
        Ok(url)
    }

    fn cidrs(&self, key: &str, values: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        values
            .iter()
            .map(|v| {
                let v = v.trim();
                // A bare address is a single host, the way operators usually write one.
                v.parse::<ipnet::IpNet>()
                    .or_else(|_| v.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        self.err(
                            key,
                            format!(
                                "{v:?} is not a CIDR network (e.g. \"10.0.0.0/8\") or IP address"
                            ),
                        )
                    })
            })
            .collect()
    }

    // --- secret files --------------------------------------------------------------------------

    /// Relative names in `*_file` keys live in systemd's `$CREDENTIALS_DIRECTORY` when it is set
    /// (`LoadCredential=`), else in the working directory. One rule for every such key, the CA
    /// file included, so a unit can hand any of them over the same way.
    fn secret_path(&self, value: &str) -> PathBuf {
        let path = Path::new(value);
        match &self.credentials_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    fn read_file(&self, key: &str, path: &Path) -> Result<String, ConfigError> {
        std::fs::read_to_string(path)
            .map_err(|e| self.err(key, format!("cannot read {}: {e}", path.display())))
    }

    fn read_secret_file(&self, key: &str, path: &Path) -> Result<Secret, ConfigError> {
        let contents = self.read_file(key, path)?;
        let value = contents.trim_end_matches(['\r', '\n']);
        if value.is_empty() {
            return Err(self.err(key, format!("{} is empty", path.display())));
        }
        Ok(Secret::new(value))
    }

    fn read_client_keys(&self, path: &Path) -> Result<Vec<Secret>, ConfigError> {
        let key = "proxy.client_keys_file";
        let keys: Vec<Secret> = self
            .read_file(key, path)?
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(Secret::new)
            .collect();
        if keys.is_empty() {
            return Err(self.err(
                key,
                format!(
                    "{} holds no keys (clear client_keys_file to turn client authentication off)",
                    path.display()
                ),
            ));
        }
        Ok(keys)
    }
}

fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

// ---------------------------------------------------------------------------------------------
// check-config output: the effective configuration in the same shape as config.toml. Unset
// optional values print as "" (which is how config.toml spells "unset").

#[derive(Serialize)]
struct RedactedView {
    shoptet: ShoptetView,
    proxy: ProxyView,
    public: PublicView,
    addon: AddonView,
    admin: AdminView,
    store: StoreView,
    log: LogView,
    telemetry: Telemetry,
}

#[derive(Serialize)]
struct ShoptetView {
    api_url: String,
    partner_url: String,
    client_id: String,
    client_secret: String,
    redirect_uri: String,
    settings_redirect_uri: String,
    ca_file: String,
    connect_timeout: String,
}

#[derive(Serialize)]
struct ProxyView {
    listen: String,
    eshop_header: String,
    refresh_margin: String,
    max_replay_body: u64,
    max_in_flight_per_eshop: usize,
    max_in_flight: usize,
    max_queue: usize,
    queue_timeout: String,
    max_retry_wait: String,
    upstream_timeout: String,
    token_backoff_max: String,
    bucket_pacing: bool,
    bucket_reserve: u32,
    shutdown_timeout: String,
    client_keys_file: String,
    client_keys: Vec<&'static str>,
}

#[derive(Serialize)]
struct PublicView {
    listen: String,
    tls_cert_file: String,
    tls_key_file: String,
    install_allow: Vec<String>,
    webhook_allow: Vec<String>,
    trusted_proxies: Vec<String>,
}

#[derive(Serialize)]
struct AddonView {
    events_url: String,
    webhooks_url: String,
    retry_max: String,
    settings_url: String,
    settings_session_ttl: String,
    settings_frame_ancestors: Vec<String>,
}

#[derive(Serialize)]
struct AdminView {
    listen: String,
    token_file: String,
    token: String,
}

#[derive(Serialize)]
struct StoreView {
    url: String,
    key_file: String,
    previous_key_files: Vec<String>,
}

#[derive(Serialize)]
struct LogView {
    format: &'static str,
    level: String,
}

fn show_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn show_path(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn show_opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

fn show_redacted(s: &Option<Secret>) -> String {
    s.as_ref().map(|_| REDACTED.to_owned()).unwrap_or_default()
}

fn show_nets(nets: &[ipnet::IpNet]) -> Vec<String> {
    nets.iter().map(ToString::to_string).collect()
}

/// A store URL with any password replaced, e.g. `postgres://app:<redacted>@db/proxy`.
fn redact_url_password(url: &str) -> String {
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

impl From<&Config> for RedactedView {
    fn from(c: &Config) -> Self {
        RedactedView {
            shoptet: ShoptetView {
                api_url: c.shoptet.api_url.to_string(),
                partner_url: c.shoptet.partner_url.to_string(),
                client_id: c.shoptet.client_id.clone(),
                client_secret: show_redacted(&c.shoptet.client_secret),
                redirect_uri: c.shoptet.redirect_uri.clone(),
                settings_redirect_uri: c.shoptet.settings_redirect_uri.clone(),
                ca_file: show_path(&c.shoptet.ca_file),
                connect_timeout: show_duration(c.shoptet.connect_timeout),
            },
            proxy: ProxyView {
                listen: c.proxy.listen.to_string(),
                eshop_header: c.proxy.eshop_header.to_string(),
                refresh_margin: show_duration(c.proxy.refresh_margin),
                max_replay_body: c.proxy.max_replay_body,
                max_in_flight_per_eshop: c.proxy.max_in_flight_per_eshop,
                max_in_flight: c.proxy.max_in_flight,
                max_queue: c.proxy.max_queue,
                queue_timeout: show_duration(c.proxy.queue_timeout),
                max_retry_wait: show_duration(c.proxy.max_retry_wait),
                upstream_timeout: show_duration(c.proxy.upstream_timeout),
                token_backoff_max: show_duration(c.proxy.token_backoff_max),
                bucket_pacing: c.proxy.bucket_pacing,
                bucket_reserve: c.proxy.bucket_reserve,
                shutdown_timeout: show_duration(c.proxy.shutdown_timeout),
                client_keys_file: show_path(&c.proxy.client_keys_file),
                client_keys: c.proxy.client_keys.iter().map(|_| REDACTED).collect(),
            },
            public: PublicView {
                listen: show_opt(&c.public.listen),
                tls_cert_file: show_path(&c.public.tls_cert_file),
                tls_key_file: show_path(&c.public.tls_key_file),
                install_allow: show_nets(&c.public.install_allow),
                webhook_allow: show_nets(&c.public.webhook_allow),
                trusted_proxies: show_nets(&c.public.trusted_proxies),
            },
            addon: AddonView {
                events_url: show_opt(&c.addon.events_url),
                webhooks_url: show_opt(&c.addon.webhooks_url),
                retry_max: show_duration(c.addon.retry_max),
                settings_url: show_opt(&c.addon.settings_url),
                settings_session_ttl: show_duration(c.addon.settings_session_ttl),
                settings_frame_ancestors: c.addon.settings_frame_ancestors.clone(),
            },
            admin: AdminView {
                listen: c.admin.listen.to_string(),
                token_file: show_path(&c.admin.token_file),
                token: show_redacted(&c.admin.token),
            },
            store: StoreView {
                url: redact_url_password(&c.store.url),
                key_file: show_path(&c.store.key_file),
                previous_key_files: c
                    .store
                    .previous_key_files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            },
            log: LogView {
                format: match c.log.format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                },
                level: c.log.level.clone(),
            },
            telemetry: c.telemetry.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `toml` (written to a temporary file) with the given environment.
    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, toml).expect("write config");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_from(Some(&path), &env)
    }

    fn load_ok(toml: &str, env: &[(&str, &str)]) -> Config {
        match load(toml, env) {
            Ok(c) => c,
            Err(e) => panic!("config should load: {e}"),
        }
    }

    /// The error message of a config that must not load.
    fn load_err(toml: &str, env: &[(&str, &str)]) -> String {
        match load(toml, env) {
            Ok(c) => panic!("config should be rejected, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_mentions(message: &str, parts: &[&str]) {
        for part in parts {
            assert!(
                message.contains(part),
                "error {message:?} should mention {part:?}"
            );
        }
    }

    #[test]
    fn empty_file_gives_the_spec_defaults() {
        let c = load_ok("", &[]);
        assert_eq!(c.shoptet.api_url.as_str(), "https://api.myshoptet.com/");
        assert_eq!(c.shoptet.client_secret, None);
        assert_eq!(c.shoptet.ca_file, None);
        assert_eq!(c.shoptet.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.proxy.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.proxy.eshop_header, "x-shoptet-eshop-id");
        assert_eq!(c.proxy.refresh_margin, Duration::from_secs(300));
        assert_eq!(c.shoptet.settings_redirect_uri, "");
        assert_eq!(c.addon.settings_url, None);
        assert_eq!(c.addon.settings_session_ttl, Duration::from_secs(3600));
        assert!(c.addon.settings_frame_ancestors.is_empty());
        assert_eq!(c.proxy.max_replay_body, 1_048_576);
        assert_eq!(
            (
                c.proxy.max_in_flight_per_eshop,
                c.proxy.max_in_flight,
                c.proxy.max_queue
            ),
            (3, 50, 1000)
        );
        assert_eq!(c.proxy.upstream_timeout, Duration::from_secs(60));
        assert!(c.proxy.bucket_pacing);
        assert_eq!(c.proxy.bucket_reserve, 10);
        assert!(c.proxy.client_keys.is_empty());
        assert_eq!(c.public.listen, None);
        assert_eq!(c.public.install_allow.len(), 2);
        assert_eq!(
            c.public.webhook_allow,
            vec!["185.184.254.0/24".parse().unwrap()]
        );
        assert!(c.public.trusted_proxies.is_empty());
        assert_eq!(c.addon.events_url, None);
        assert_eq!(c.addon.retry_max, Duration::from_secs(15));
        assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.admin.token, None);
        assert_eq!(c.store.url, "sqlite://shoptet-proxy.db");
        assert_eq!(c.store.key_file, Some(PathBuf::from("store.key")));
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "info");
    }

    #[test]
    fn prefixed_variables_without_a_section_are_not_config_keys() {
        let c = load_ok(
            "",
            &[
                ("SHOPTET_PROXY_BIN", "/usr/bin/x"),
                ("SHOPTET_PROXY_TEST_PG_URL", "postgres://x"),
                ("SHOPTET_PROXY_PROXY__MAX_QUEUE", "7"),
            ],
        );
        assert_eq!(c.proxy.max_queue, 7);
        assert_eq!(load_ok("", &[]).proxy.listen, c.proxy.listen);
    }

    #[test]
    fn reference_config_file_gives_exactly_the_defaults() {
        let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let from_reference = Config::load_from(Some(&reference), &[]).expect("reference loads");
        assert_eq!(from_reference, load_ok("", &[]));
    }

    #[test]
    fn redacted_output_of_the_defaults_loads_back_to_the_defaults() {
        let defaults = load_ok("", &[]);
        let printed = defaults.redacted_toml();
        // check-config adds read-only lines for the (here absent) secrets; drop them to reload.
        let reloadable: String = printed
            .lines()
            .filter(|l| !l.starts_with("client_keys =") && !l.starts_with("token ="))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(load_ok(&reloadable, &[]), defaults);
    }

    #[test]
    fn file_values_replace_defaults() {
        let c = load_ok(
            r#"
            [shoptet]
            api_url = "http://127.0.0.1:1234"
            ca_file = "ca.pem"
            [proxy]
            queue_timeout = "1500ms"
            max_in_flight = 7
            bucket_pacing = false
            [public]
            listen = "0.0.0.0:8443"
            install_allow = []
            trusted_proxies = ["10.0.0.1"]
            [addon]
            events_url = "http://127.0.0.1:9000/events"
            [log]
            format = "json"
            level = "info,shoptet_proxy=debug"
            "#,
            &[],
        );
        assert_eq!(c.shoptet.api_url.as_str(), "http://127.0.0.1:1234/");
        assert_eq!(c.shoptet.ca_file, Some(PathBuf::from("ca.pem")));
        assert_eq!(c.proxy.queue_timeout, Duration::from_millis(1500));
        assert_eq!(c.proxy.max_in_flight, 7);
        assert!(!c.proxy.bucket_pacing);
        assert_eq!(c.public.listen, Some("0.0.0.0:8443".parse().unwrap()));
        assert!(c.public.install_allow.is_empty());
        assert_eq!(
            c.public.trusted_proxies,
            vec!["10.0.0.1/32".parse().unwrap()]
        );
        assert_eq!(
            c.addon.events_url.as_ref().map(url::Url::as_str),
            Some("http://127.0.0.1:9000/events")
        );
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn environment_beats_file_with_double_underscore_nesting() {
        let c = load_ok(
            "[proxy]\nmax_in_flight = 7\nlisten = \"127.0.0.1:1111\"\n",
            &[
                ("SHOPTET_PROXY_PROXY__MAX_IN_FLIGHT", "20"),
                ("SHOPTET_PROXY_SHOPTET__CLIENT_ID", "12345"),
                ("SHOPTET_PROXY_PROXY__REFRESH_MARGIN", "90s"),
                ("SHOPTET_PROXY_PUBLIC__WEBHOOK_ALLOW", "[]"),
                ("SHOPTET_PROXY_PUBLIC__INSTALL_ALLOW", "10.0.0.0/8"),
                ("UNRELATED", "ignored"),
            ],
        );
        assert_eq!(c.proxy.max_in_flight, 20);
        assert_eq!(
            c.proxy.listen,
            "127.0.0.1:1111".parse().unwrap(),
            "file value kept"
        );
        assert_eq!(
            c.shoptet.client_id, "12345",
            "numeric env value is still a string"
        );
        assert_eq!(c.proxy.refresh_margin, Duration::from_secs(90));
        assert!(c.public.webhook_allow.is_empty());
        assert_eq!(c.public.install_allow, vec!["10.0.0.0/8".parse().unwrap()]);
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_named_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("absent.toml");
        let err = Config::load_from(Some(&missing), &[]).expect_err("named file must exist");
        assert!(matches!(err, ConfigError::FileMissing { .. }));
        assert_mentions(&err.to_string(), &["absent.toml"]);
    }

    #[test]
    fn secret_files_resolve_in_credentials_directory() {
        let creds = tempfile::tempdir().expect("tempdir");
        std::fs::write(creds.path().join("client-secret"), "s3cret-value\n").unwrap();
        std::fs::write(creds.path().join("admin-token"), "admin-tok\r\n").unwrap();
        std::fs::write(
            creds.path().join("keys"),
            "# addon keys\n\nkey-one\n  key-two  \n",
        )
        .unwrap();
        let dir = creds.path().to_str().unwrap();
        let c = load_ok(
            r#"
            [shoptet]
            client_secret_file = "client-secret"
            ca_file = "ca.pem"
            [admin]
            token_file = "admin-token"
            [proxy]
            client_keys_file = "keys"
            [store]
            previous_key_files = ["old.key"]
            "#,
            &[("CREDENTIALS_DIRECTORY", dir)],
        );
        assert_eq!(
            c.shoptet.client_secret.as_ref().map(Secret::expose),
            Some("s3cret-value")
        );
        assert_eq!(
            c.admin.token.as_ref().map(Secret::expose),
            Some("admin-tok")
        );
        assert_eq!(c.admin.token_file, Some(creds.path().join("admin-token")));
        assert_eq!(c.shoptet.ca_file, Some(creds.path().join("ca.pem")));
        let keys: Vec<&str> = c.proxy.client_keys.iter().map(Secret::expose).collect();
        assert_eq!(keys, ["key-one", "key-two"]);
        assert_eq!(c.store.key_file, Some(creds.path().join("store.key")));
        assert_eq!(
            c.store.previous_key_files,
            vec![creds.path().join("old.key")]
        );
        assert_eq!(
            c.store.url, "sqlite://shoptet-proxy.db",
            "store path is not a credential"
        );
    }

    #[test]
    fn secret_files_without_credentials_directory_use_the_path_as_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("client-secret");
        std::fs::write(&secret, "from-file\n").unwrap();
        let c = load_ok(
            &format!(
                "[shoptet]\nclient_secret_file = {:?}\n",
                secret.to_str().unwrap()
            ),
            &[],
        );
        assert_eq!(
            c.shoptet.client_secret.as_ref().map(Secret::expose),
            Some("from-file")
        );
        assert_eq!(
            c.store.key_file,
            Some(PathBuf::from("store.key")),
            "relative to cwd"
        );
    }

    #[test]
    fn inline_secret_never_shows_in_debug_or_check_config() {
        let c = load_ok(
            "[shoptet]\nclient_secret = \"inline-secret-xyz\"\n[store]\nurl = \"postgres://app:db-pass-xyz@db/proxy\"\n",
            &[],
        );
        assert_eq!(
            c.shoptet.client_secret.as_ref().map(Secret::expose),
            Some("inline-secret-xyz")
        );
        let shown = format!("{c:?}\n{}", c.redacted_toml());
        assert!(!shown.contains("inline-secret-xyz"), "{shown}");
        assert!(shown.contains("client_secret = \"<redacted>\""), "{shown}");
        assert!(
            shown.contains("postgres://app:<redacted>@db/proxy"),
            "{shown}"
        );
        assert!(!c.redacted_toml().contains("db-pass-xyz"));
    }

    #[test]
    fn unknown_key_in_every_section_is_named() {
        for section in [
            "shoptet", "proxy", "public", "addon", "admin", "store", "log",
        ] {
            let message = load_err(&format!("[{section}]\nbogus_key = 1\n"), &[]);
            assert_mentions(
                &message,
                &["unknown config key", &format!("`{section}.bogus_key`")],
            );
        }
        let message = load_err("bogus_top = 1\n", &[]);
        assert_mentions(&message, &["unknown config key", "`bogus_top`"]);
        let message = load_err("", &[("SHOPTET_PROXY_PROXY__LISTN", "x")]);
        assert_mentions(&message, &["`proxy.listn`", "SHOPTET_PROXY_PROXY__LISTN"]);
    }

    #[test]
    fn bad_duration_names_key_and_value() {
        let message = load_err("[proxy]\nqueue_timeout = \"30x\"\n", &[]);
        assert_mentions(&message, &["proxy.queue_timeout", "\"30x\""]);
        let message = load_err("", &[("SHOPTET_PROXY_ADDON__RETRY_MAX", "soon")]);
        assert_mentions(
            &message,
            &[
                "addon.retry_max",
                "\"soon\"",
                "SHOPTET_PROXY_ADDON__RETRY_MAX",
            ],
        );
        let message = load_err("[proxy]\nupstream_timeout = \"0s\"\n", &[]);
        assert_mentions(&message, &["proxy.upstream_timeout", "\"0s\""]);
    }

    #[test]
    fn bad_listen_address_names_key_and_value() {
        let message = load_err("[proxy]\nlisten = \"localhost:80\"\n", &[]);
        assert_mentions(&message, &["proxy.listen", "\"localhost:80\""]);
        let message = load_err("[public]\nlisten = \"0.0.0.0\"\n", &[]);
        assert_mentions(&message, &["public.listen", "\"0.0.0.0\""]);
        let message = load_err("[admin]\nlisten = \"1.2.3.4:99999\"\n", &[]);
        assert_mentions(&message, &["admin.listen", "\"1.2.3.4:99999\""]);
    }

    #[test]
    fn bad_url_names_key_and_value() {
        for (toml, key, value) in [
            (
                "[shoptet]\napi_url = \"ftp://api.example\"",
                "shoptet.api_url",
                "\"ftp://api.example\"",
            ),
            (
                "[shoptet]\npartner_url = \"not a url\"",
                "shoptet.partner_url",
                "\"not a url\"",
            ),
            (
                "[addon]\nevents_url = \"mailto:x@y\"",
                "addon.events_url",
                "\"mailto:x@y\"",
            ),
            (
                "[addon]\nwebhooks_url = \"http://\"",
                "addon.webhooks_url",
                "\"http://\"",
            ),
        ] {
            assert_mentions(&load_err(toml, &[]), &[key, value]);
        }
    }

    #[test]
    fn bad_cidr_names_key_and_value() {
        let message = load_err("[public]\nwebhook_allow = [\"10.0.0.0/33\"]\n", &[]);
        assert_mentions(&message, &["public.webhook_allow", "\"10.0.0.0/33\""]);
        let message = load_err("[public]\ntrusted_proxies = [\"proxy.local\"]\n", &[]);
        assert_mentions(&message, &["public.trusted_proxies", "\"proxy.local\""]);
    }

    #[test]
    fn secret_and_secret_file_together_are_rejected_without_echoing_the_secret() {
        let message = load_err(
            "[shoptet]\nclient_secret = \"do-not-echo\"\nclient_secret_file = \"f\"\n",
            &[],
        );
        assert_mentions(&message, &["shoptet.client_secret", "client_secret_file"]);
        assert!(!message.contains("do-not-echo"), "{message}");
    }

    #[test]
    fn missing_or_empty_secret_file_names_key_and_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir.path().to_str().unwrap();
        let message = load_err(
            "[shoptet]\nclient_secret_file = \"nope\"\n",
            &[("CREDENTIALS_DIRECTORY", creds)],
        );
        assert_mentions(
            &message,
            &["shoptet.client_secret_file", "nope", "cannot read"],
        );
        let message = load_err("[admin]\ntoken_file = \"/nonexistent/admin-token\"\n", &[]);
        assert_mentions(&message, &["admin.token_file", "/nonexistent/admin-token"]);
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let message = load_err(
            "[admin]\ntoken_file = \"empty\"\n",
            &[("CREDENTIALS_DIRECTORY", creds)],
        );
        assert_mentions(&message, &["admin.token_file", "is empty"]);
    }

    #[test]
    fn client_keys_file_with_no_keys_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("keys"), "# nobody yet\n\n").unwrap();
        let message = load_err(
            "[proxy]\nclient_keys_file = \"keys\"\n",
            &[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())],
        );
        assert_mentions(&message, &["proxy.client_keys_file", "no keys"]);
    }

    #[test]
    fn tls_cert_without_key_and_key_without_cert_are_rejected() {
        let message = load_err("[public]\ntls_cert_file = \"cert.pem\"\n", &[]);
        assert_mentions(&message, &["public.tls_key_file", "tls_cert_file"]);
        let message = load_err("[public]\ntls_key_file = \"key.pem\"\n", &[]);
        assert_mentions(&message, &["public.tls_cert_file", "tls_key_file"]);
    }

    #[test]
    fn other_bad_values_name_key_and_value() {
        for (toml, key, value) in [
            (
                "[proxy]\neshop_header = \"Bad Header\"",
                "proxy.eshop_header",
                "\"Bad Header\"",
            ),
            ("[proxy]\nmax_in_flight = 0", "proxy.max_in_flight", "0"),
            (
                "[proxy]\nmax_in_flight_per_eshop = 0",
                "proxy.max_in_flight_per_eshop",
                "0",
            ),
            (
                "[proxy]\nmax_queue = \"many\"",
                "proxy.max_queue",
                "\"many\"",
            ),
            (
                "[proxy]\nbucket_pacing = \"yes\"",
                "proxy.bucket_pacing",
                "\"yes\"",
            ),
            ("[log]\nformat = \"xml\"", "log.format", "\"xml\""),
            ("[log]\nlevel = \"info,=[\"", "log.level", "\"info,=[\""),
            ("proxy = 3", "proxy", "3"),
            (
                "[public]\ninstall_allow = [{ a = 1 }]",
                "public.install_allow",
                "found map",
            ),
        ] {
            assert_mentions(&load_err(toml, &[]), &[key, value]);
        }
    }

    #[test]
    fn bucket_reserve_is_read_and_bounded_below_the_capacity() {
        let c = load_ok("[proxy]\nbucket_reserve = 0\n", &[]);
        assert_eq!(c.proxy.bucket_reserve, 0);
        let c = load_ok("", &[("SHOPTET_PROXY_PROXY__BUCKET_RESERVE", "25")]);
        assert_eq!(c.proxy.bucket_reserve, 25);
        assert_mentions(
            &load_err("[proxy]\nbucket_reserve = 200\n", &[]),
            &["proxy.bucket_reserve", "200"],
        );
        assert_mentions(
            &load_err("[proxy]\nbucket_reserve = -1\n", &[]),
            &["proxy.bucket_reserve", "-1"],
        );
    }

    #[test]
    fn store_url_must_name_a_known_backend_without_echoing_it() {
        let message = load_err("[store]\nurl = \"mysql://u:pw-xyz@h/db\"\n", &[]);
        assert_mentions(&message, &["store.url", "sqlite://"]);
        assert!(!message.contains("pw-xyz"), "{message}");
    }

    #[test]
    fn toml_syntax_error_does_not_quote_the_line() {
        let message = load_err("[shoptet]\nclient_secret = \"unterminated-xyz\n", &[]);
        assert_mentions(&message, &["line 2"]);
        assert!(!message.contains("unterminated-xyz"), "{message}");
    }

    #[test]
    fn url_password_redaction_keeps_everything_else() {
        assert_eq!(
            redact_url_password("postgres://app:pw@db:5432/proxy?sslmode=require"),
            "postgres://app:<redacted>@db:5432/proxy?sslmode=require"
        );
        assert_eq!(
            redact_url_password("postgres://app@db/proxy"),
            "postgres://app@db/proxy"
        );
        assert_eq!(
            redact_url_password("sqlite://data/p.db"),
            "sqlite://data/p.db"
        );
    }

    #[test]
    fn settings_redirect_uri_defaults_to_redirect_uri_with_the_settings_path() {
        let c = load_ok(
            "[shoptet]\nredirect_uri = \"https://addon.example.com/shoptet/install?x=1\"",
            &[],
        );
        assert_eq!(
            c.shoptet.settings_redirect_uri,
            "https://addon.example.com/settings/authorized"
        );
        let c = load_ok(
            "[shoptet]\nredirect_uri = \"https://a.example/install\"\nsettings_redirect_uri = \"https://b.example/settings/authorized\"",
            &[],
        );
        assert_eq!(
            c.shoptet.settings_redirect_uri,
            "https://b.example/settings/authorized"
        );
        let err = load(
            "[addon]\nsettings_frame_ancestors = [\"https://a.example; script-src *\"]",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("addon.settings_frame_ancestors"), "{err}");
    }
}
