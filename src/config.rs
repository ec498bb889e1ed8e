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
/// Config file read when `--config` is not given; its absence is not an error.
pub const DEFAULT_CONFIG_PATH: &str = "config.toml";
/// Printed in place of every secret value.
const REDACTED: &str = "<redacted>";

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
}

#[derive(Debug, Clone, PartialEq)]
pub struct Shoptet {
    pub api_url: url::Url,
    pub partner_url: url::Url,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub redirect_uri: String,
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

impl Config {
    /// Loads from `path` (or `./config.toml`, which may be absent) and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Config::load_from(path, &env)
    }

    /// Like [`Config::load`], with the environment given explicitly (for tests). `env` is the
    /// whole environment: `SHOPTET_PROXY_*` overrides and `CREDENTIALS_DIRECTORY` are taken from it.
    pub fn load_from(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        let file = path.unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
        if file.exists() {
            figment = figment.merge(Toml::file_exact(file));
        } else if path.is_some() {
            return Err(ConfigError::FileMissing {
                path: file.to_path_buf(),
            });
        }
        let figment = figment.merge(EnvOverrides::from_env(env));
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
}

impl Default for RawAddon {
    fn default() -> Self {
        RawAddon {
            events_url: String::new(),
            webhooks_url: String::new(),
            retry_max: "15s".into(),
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
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<Text>),
        One(Text),
    }
    #[derive(Deserialize)]
    struct Text(#[serde(deserialize_with = "text")] String);

    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(items) => items.into_iter().map(|t| t.0).collect(),
        OneOrMany::One(Text(s)) if s.is_empty() => Vec::new(),
        OneOrMany::One(Text(s)) => vec![s],
    })
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
                if path.iter().any(String::is_empty) {
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
        Metadata::named("environment variable").interpolater(|_: &Profile, keys: &[&str]| {
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
            let origin = match &e.metadata {
                Some(md) => match &md.source {
                    Some(source) => format!(" (in {} {source})", md.name),
                    None => format!(" (in {})", md.name),
                },
                None => String::new(),
            };
            let dotted = |extra: Option<&str>| {
                let mut path: Vec<&str> = e.path.iter().map(String::as_str).collect();
                path.extend(extra);
                let key = path.join(".");
                match &e.metadata {
                    Some(md) if md.name == "environment variable" => {
                        format!("`{key}` ({})", md.interpolate(&Profile::Default, &path))
                    }
                    _ => format!("`{key}`"),
                }
            };
            match &e.kind {
                Kind::UnknownField(field, _) => {
                    format!("unknown config key {}{origin}", dotted(Some(field)))
                }
                kind if e.path.is_empty() => format!("{kind}{origin}"),
                kind => format!("invalid config key {}: {kind}{origin}", dotted(None)),
            }
        })
        .collect();
    ConfigError::Parse(lines.join("\n"))
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
        })
    }

    /// Builds an error for `key`, adding where the value came from (file or environment).
    fn err(&self, key: &str, message: impl fmt::Display) -> ConfigError {
        let origin = match self.figment.find_metadata(key) {
            Some(md) if md.name == "environment variable" => {
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
            redirect_uri: raw.redirect_uri,
            ca_file: non_empty(&raw.ca_file).map(PathBuf::from),
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
        })
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
        if url.host_str().map_or(true, str::is_empty) {
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

    /// Relative names of secret files live in systemd's `$CREDENTIALS_DIRECTORY` when it is set
    /// (`LoadCredential=`), else in the working directory.
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
}

#[derive(Serialize)]
struct ShoptetView {
    api_url: String,
    partner_url: String,
    client_id: String,
    client_secret: String,
    redirect_uri: String,
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
        }
    }
}
