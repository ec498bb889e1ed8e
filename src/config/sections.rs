//! The configuration sections: every key declared once, as a field with its serde attributes,
//! and its built-in default in the section's `Default` impl (SPEC B3). `deserialize_with` parses
//! the value where figment can still name the key; `serialize_with` prints it for check-config.
//! Fields marked `skip_deserializing` are not keys: `validate` fills them (secrets read from
//! `*_file` keys) and check-config shows them redacted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{parse, show, Secret};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShoptetSection {
    #[serde(deserialize_with = "parse::http_url", serialize_with = "show::display")]
    pub api_url: url::Url,
    #[serde(deserialize_with = "parse::http_url", serialize_with = "show::display")]
    pub partner_url: url::Url,
    #[serde(deserialize_with = "parse::text")]
    pub client_id: String,
    /// Inline, or read from `client_secret_file` by `validate`; not both.
    #[serde(deserialize_with = "parse::opt_secret", serialize_with = "show::opt")]
    pub client_secret: Option<Secret>,
    #[serde(deserialize_with = "parse::opt_path", skip_serializing)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(deserialize_with = "parse::text")]
    pub redirect_uri: String,
    /// A5's "URL for user authorization" (B9): as configured, or (filled in by `validate`)
    /// `redirect_uri` with the path `/settings/authorized`; empty only when both are.
    #[serde(deserialize_with = "parse::text")]
    pub settings_redirect_uri: String,
    #[serde(
        deserialize_with = "parse::opt_path",
        serialize_with = "show::opt_path"
    )]
    pub ca_file: Option<PathBuf>,
    #[serde(
        deserialize_with = "parse::positive_duration",
        serialize_with = "show::duration"
    )]
    pub connect_timeout: Duration,
}

impl Default for ShoptetSection {
    fn default() -> Self {
        ShoptetSection {
            api_url: parse::known_url("https://api.myshoptet.com"),
            partner_url: parse::known_url("https://12345.myshoptet.com"),
            client_id: String::new(),
            client_secret: None,
            client_secret_file: None,
            redirect_uri: String::new(),
            settings_redirect_uri: String::new(),
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    #[serde(
        deserialize_with = "parse::socket_addr",
        serialize_with = "show::display"
    )]
    pub listen: SocketAddr,
    #[serde(
        deserialize_with = "parse::header_name",
        serialize_with = "show::display"
    )]
    pub eshop_header: http::HeaderName,
    #[serde(
        deserialize_with = "parse::duration",
        serialize_with = "show::duration"
    )]
    pub refresh_margin: Duration,
    pub max_replay_body: u64,
    #[serde(deserialize_with = "parse::at_least_one")]
    pub max_in_flight_per_eshop: usize,
    #[serde(deserialize_with = "parse::at_least_one")]
    pub max_in_flight: usize,
    pub max_queue: usize,
    #[serde(
        deserialize_with = "parse::positive_duration",
        serialize_with = "show::duration"
    )]
    pub queue_timeout: Duration,
    #[serde(
        deserialize_with = "parse::duration",
        serialize_with = "show::duration"
    )]
    pub max_retry_wait: Duration,
    #[serde(
        deserialize_with = "parse::positive_duration",
        serialize_with = "show::duration"
    )]
    pub upstream_timeout: Duration,
    #[serde(
        deserialize_with = "parse::positive_duration",
        serialize_with = "show::duration"
    )]
    pub token_backoff_max: Duration,
    pub bucket_pacing: bool,
    /// Drops pacing keeps free below the bucket's capacity (below [`super::MAX_BUCKET_RESERVE`]).
    #[serde(deserialize_with = "parse::bucket_reserve")]
    pub bucket_reserve: u32,
    #[serde(
        deserialize_with = "parse::duration",
        serialize_with = "show::duration"
    )]
    pub shutdown_timeout: Duration,
    #[serde(
        deserialize_with = "parse::opt_path",
        serialize_with = "show::opt_path"
    )]
    pub client_keys_file: Option<PathBuf>,
    /// Loaded from `client_keys_file`; empty means clients need not authenticate.
    #[serde(skip_deserializing)]
    pub client_keys: Vec<Secret>,
    /// Both set: the proxy listener speaks TLS (SPEC B1).
    #[serde(
        deserialize_with = "parse::opt_path",
        serialize_with = "show::opt_path"
    )]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(
        deserialize_with = "parse::opt_path",
        serialize_with = "show::opt_path"
    )]
    pub tls_key_file: Option<PathBuf>,
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            eshop_header: http::HeaderName::from_static("x-shoptet-eshop-id"),
            refresh_margin: Duration::from_secs(5 * 60),
            max_replay_body: 1_048_576,
            max_in_flight_per_eshop: 3,
            max_in_flight: 50,
            max_queue: 1000,
            queue_timeout: Duration::from_secs(30),
            max_retry_wait: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(60),
            token_backoff_max: Duration::from_secs(10),
            bucket_pacing: true,
            bucket_reserve: 10,
            shutdown_timeout: Duration::from_secs(30),
            client_keys_file: None,
            client_keys: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublicSection {
    /// `None`: the public listener is off.
    #[serde(
        deserialize_with = "parse::opt_socket_addr",
        serialize_with = "show::opt"
    )]
    pub listen: Option<SocketAddr>,
    #[serde(
        deserialize_with = "parse::opt_path",
        serialize_with = "show::opt_path"
    )]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(
        deserialize_with = "parse::opt_path",
        serialize_with = "show::opt_path"
    )]
    pub tls_key_file: Option<PathBuf>,
    #[serde(deserialize_with = "parse::cidrs", serialize_with = "show::displays")]
    pub install_allow: Vec<ipnet::IpNet>,
    #[serde(deserialize_with = "parse::cidrs", serialize_with = "show::displays")]
    pub webhook_allow: Vec<ipnet::IpNet>,
    #[serde(deserialize_with = "parse::cidrs", serialize_with = "show::displays")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for PublicSection {
    fn default() -> Self {
        PublicSection {
            listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            // Shoptet's published source ranges for installation and webhook calls (A1, A4).
            install_allow: parse::known_nets(&["78.24.15.64/26", "93.185.110.117/28"]),
            webhook_allow: parse::known_nets(&["185.184.254.0/24"]),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AddonSection {
    #[serde(deserialize_with = "parse::opt_http_url", serialize_with = "show::opt")]
    pub events_url: Option<url::Url>,
    #[serde(deserialize_with = "parse::opt_http_url", serialize_with = "show::opt")]
    pub webhooks_url: Option<url::Url>,
    #[serde(
        deserialize_with = "parse::positive_duration",
        serialize_with = "show::duration"
    )]
    pub retry_max: Duration,
    /// Signs every delivery to the addon (SPEC B5); only the path prints.
    #[serde(
        deserialize_with = "parse::opt_path",
        serialize_with = "show::opt_path"
    )]
    pub signing_key_file: Option<PathBuf>,
    /// Loaded from `signing_key_file`; `None`: deliveries go unsigned.
    #[serde(skip)]
    pub signing_key: Option<Secret>,
    /// Where `/settings/s/<session>/...` is forwarded (B9); `None` turns `/settings` off.
    #[serde(deserialize_with = "parse::opt_http_url", serialize_with = "show::opt")]
    pub settings_url: Option<url::Url>,
    #[serde(
        deserialize_with = "parse::positive_duration",
        serialize_with = "show::duration"
    )]
    pub settings_session_ttl: Duration,
    /// CSP `frame-ancestors` sources allowed besides the e-shop's own and Shoptet's.
    #[serde(deserialize_with = "parse::frame_ancestors")]
    pub settings_frame_ancestors: Vec<String>,
}

impl Default for AddonSection {
    fn default() -> Self {
        AddonSection {
            events_url: None,
            webhooks_url: None,
            retry_max: Duration::from_secs(15),
            signing_key_file: None,
            signing_key: None,
            settings_url: None,
            settings_session_ttl: Duration::from_secs(3600),
            settings_frame_ancestors: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    #[serde(
        deserialize_with = "parse::socket_addr",
        serialize_with = "show::display"
    )]
    pub listen: SocketAddr,
    #[serde(
        deserialize_with = "parse::opt_path",
        serialize_with = "show::opt_path"
    )]
    pub token_file: Option<PathBuf>,
    /// Loaded from `token_file`; `None` turns the /admin write endpoints off.
    #[serde(skip_deserializing, serialize_with = "show::opt")]
    pub token: Option<Secret>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token_file: None,
            token: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sqlite://<path>` (relative to the working directory) or `postgres://...`.
    #[serde(
        deserialize_with = "parse::store_url",
        serialize_with = "show::store_url"
    )]
    pub url: String,
    /// Only the path: the store reads the key itself. `None` is allowed here; `serve` refuses it.
    #[serde(
        deserialize_with = "parse::opt_path",
        serialize_with = "show::opt_path"
    )]
    pub key_file: Option<PathBuf>,
    #[serde(deserialize_with = "parse::paths", serialize_with = "show::paths")]
    pub previous_key_files: Vec<PathBuf>,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            url: "sqlite://shoptet-proxy.db".into(),
            key_file: Some("store.key".into()),
            previous_key_files: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    #[serde(deserialize_with = "parse::log_format")]
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive, checked at load time.
    #[serde(deserialize_with = "parse::log_filter")]
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// `[telemetry]`: OTLP/HTTP trace export (SPEC B7).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// Base URL of the collector, no trailing slash; "" = no traces. Spans go to `<base>/v1/traces`.
    #[serde(deserialize_with = "parse::otlp_endpoint")]
    pub otlp_endpoint: String,
    #[serde(deserialize_with = "parse::ratio")]
    pub sample_ratio: f64,
    #[serde(deserialize_with = "parse::text")]
    pub service_name: String,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        TelemetrySection {
            otlp_endpoint: String::new(),
            sample_ratio: 1.0,
            service_name: "shoptet-proxy".into(),
        }
    }
}
