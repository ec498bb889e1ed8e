//! Value parsers for `#[serde(deserialize_with = "...")]`: each turns a TOML or environment value
//! into its typed form, or fails with a message naming the offending value. figment adds the key
//! and where the value came from (`super::describe_figment_error`), so a parser never names its
//! key. Secret values are never echoed.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::{LogFormat, Secret, MAX_BUCKET_RESERVE};

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

/// Any scalar, as a string.
pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(TextVisitor)
}

/// A list of strings; a single string is a one-element list and an empty string the empty list,
/// so `SHOPTET_PROXY_PUBLIC__INSTALL_ALLOW=10.0.0.0/8` works without list syntax.
pub fn text_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
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

/// An optional value: `""` (or blanks) is how config.toml spells "unset".
fn optional<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, D::Error> {
    let value = text(d)?;
    match value.trim() {
        "" => Ok(None),
        v => parse(v).map(Some).map_err(D::Error::custom),
    }
}

/// A required string value parsed by `parse`, whose error message becomes figment's.
fn required<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    parse(&text(d)?).map_err(D::Error::custom)
}

/// A secret given inline; not trimmed, as spaces may be part of it. Empty is unset.
pub fn opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    let value = text(d)?;
    Ok((!value.is_empty()).then(|| Secret::new(value)))
}

/// A file name as written; `validate` resolves it (see `Validator::resolve`).
pub fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    optional(d, |v| Ok(PathBuf::from(v)))
}

/// A list of file names, none of them empty.
pub fn paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    text_list(d)?
        .iter()
        .enumerate()
        .map(|(i, p)| match p.trim() {
            "" => Err(D::Error::custom(format!("entry {i} is an empty path"))),
            p => Ok(PathBuf::from(p)),
        })
        .collect()
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| {
        format!("{value:?} is not a duration ({e}); use e.g. \"30s\", \"5m\", \"1500ms\"")
    })
}

/// A duration such as "30s", "5m", "1500ms"; zero allowed.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    required(d, parse_duration)
}

/// A duration longer than zero.
pub fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    required(d, |value| {
        let duration = parse_duration(value)?;
        if duration.is_zero() {
            return Err(format!("{value:?} must be longer than zero"));
        }
        Ok(duration)
    })
}

/// A count of at least one.
pub fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(D::Error::custom("0 is not allowed; must be at least 1")),
        n => Ok(n),
    }
}

/// `proxy.bucket_reserve`: below [`MAX_BUCKET_RESERVE`].
pub fn bucket_reserve<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let value = u32::deserialize(d)?;
    if value >= MAX_BUCKET_RESERVE {
        return Err(D::Error::custom(format!(
            "{value} leaves no room in Shoptet's bucket of 200 drops; must be below {MAX_BUCKET_RESERVE}"
        )));
    }
    Ok(value)
}

fn parse_socket_addr(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("{value:?} is not a listen address (expected IP:PORT, e.g. \"127.0.0.1:8080\")")
    })
}

pub fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    required(d, parse_socket_addr)
}

pub fn opt_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    optional(d, parse_socket_addr)
}

pub fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<http::HeaderName, D::Error> {
    required(d, |value| {
        http::HeaderName::from_bytes(value.as_bytes())
            .map_err(|_| format!("{value:?} is not a valid HTTP header name"))
    })
}

fn parse_http_url(value: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(value).map_err(|e| format!("{value:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{value:?} must use http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{value:?} has no host"));
    }
    Ok(url)
}

/// An http:// or https:// URL with a host.
pub fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<url::Url, D::Error> {
    required(d, parse_http_url)
}

pub fn opt_http_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<url::Url>, D::Error> {
    optional(d, parse_http_url)
}

fn parse_cidr(value: &str) -> Result<ipnet::IpNet, String> {
    let v = value.trim();
    // A bare address is a single host, the way operators usually write one.
    v.parse::<ipnet::IpNet>()
        .or_else(|_| v.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{v:?} is not a CIDR network (e.g. \"10.0.0.0/8\") or IP address"))
}

/// A list of CIDR networks or bare addresses (see [`text_list`] for the accepted shapes).
/// CSP source expressions: one token each, so none can end the directive or add another.
pub fn frame_ancestors<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    text_list(d)?
        .into_iter()
        .map(|v| {
            let v = v.trim();
            let ok = !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"'));
            if ok {
                Ok(v.to_owned())
            } else {
                Err(serde::de::Error::custom(format!(
                    "{v:?} is not a CSP source (e.g. \"https://admin.example.com\")"
                )))
            }
        })
        .collect()
}

pub fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    text_list(d)?
        .iter()
        .map(|v| parse_cidr(v).map_err(D::Error::custom))
        .collect()
}

/// `store.url`: a known backend. The URL is not echoed: a postgres URL may carry a password.
pub fn store_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    required(d, |url| {
        let known = ["sqlite://", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len());
        if known {
            Ok(url.to_owned())
        } else {
            Err("must be sqlite://<path> or postgres://... (value not shown: it may hold a password)".into())
        }
    })
}

pub fn log_format<'de, D: Deserializer<'de>>(d: D) -> Result<LogFormat, D::Error> {
    required(d, |value| match value {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?} is neither \"text\" nor \"json\"")),
    })
}

/// An OTLP/HTTP base URL, or "" for none.
pub fn otlp_endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    optional(d, parse_http_url)
        .map(|u| u.map_or_else(String::new, |u| u.as_str().trim_end_matches('/').to_owned()))
}

/// A share between 0 and 1.
pub fn ratio<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    required(d, |value| match value.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{value:?} is not a number between 0 and 1")),
    })
}

/// A tracing `EnvFilter` directive.
pub fn log_filter<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    required(d, |value| {
        match tracing_subscriber::EnvFilter::try_new(value) {
            Ok(_) => Ok(value.to_owned()),
            Err(e) => Err(format!("{value:?} is not a valid log filter: {e}")),
        }
    })
}

/// A built-in default URL; a typo in it fails every test that loads a config.
pub fn known_url(url: &str) -> url::Url {
    parse_http_url(url).expect("built-in default URL")
}

/// Built-in default networks.
pub fn known_nets(nets: &[&str]) -> Vec<ipnet::IpNet> {
    nets.iter()
        .map(|n| parse_cidr(n).expect("built-in default network"))
        .collect()
}
