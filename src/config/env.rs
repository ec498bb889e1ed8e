//! The layers figment merges over the built-in defaults: the TOML file and the
//! `SHOPTET_PROXY_<SECTION>__<KEY>` environment variables.

use std::convert::Infallible;
use std::path::Path;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::{ENV_METADATA_NAME, ENV_PREFIX, ENV_SEPARATOR};

/// The process environment as UTF-8 pairs (other variables cannot be configuration).
pub(super) fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// The file (when it exists) under the `SHOPTET_PROXY_*` variables of `env`; defaults come from
/// the sections' `Default` impls (`#[serde(default)]`).
pub(super) fn layers(file: &Path, env: &[(String, String)]) -> Figment {
    let mut figment = Figment::new();
    if file.exists() {
        figment = figment.merge(Toml::file_exact(file));
    }
    figment.merge(EnvOverrides::from_env(env))
}

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
