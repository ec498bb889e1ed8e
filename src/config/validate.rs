//! What deserialising one value cannot check: rules across keys (a secret inline or in a file,
//! not both; TLS certificate and key together), file names resolved in systemd's
//! `$CREDENTIALS_DIRECTORY`, and secret files read into the fields they fill.

use std::path::{Path, PathBuf};

use figment::{Figment, Metadata, Profile};

use super::{Config, ConfigError, Secret, ShoptetSection, ENV_METADATA_NAME};

pub(super) struct Validator<'a> {
    pub figment: &'a Figment,
    pub credentials_dir: Option<PathBuf>,
}

/// Where a value came from, as appended to an error: ` (in ./config.toml)` or
/// ` (from environment variable SHOPTET_PROXY_...)`; empty for a built-in default.
pub(super) fn origin(md: Option<&Metadata>, path: &[&str]) -> String {
    match md {
        Some(md) if md.name == ENV_METADATA_NAME => format!(
            " (from environment variable {})",
            md.interpolate(&Profile::Default, path)
        ),
        Some(md) => match &md.source {
            Some(source) => format!(" (in {source})"),
            None => String::new(),
        },
        None => String::new(),
    }
}

impl Validator<'_> {
    pub fn validate(&self, mut c: Config) -> Result<Config, ConfigError> {
        let s = &mut c.shoptet;
        if s.client_secret.is_some() && s.client_secret_file.is_some() {
            return Err(self.err(
                "shoptet.client_secret",
                "set either client_secret or client_secret_file, not both",
            ));
        }
        if let Some(secret) =
            self.secret_file("shoptet.client_secret_file", &mut s.client_secret_file)?
        {
            s.client_secret = Some(secret);
        }
        self.resolve(&mut s.ca_file);
        s.settings_redirect_uri = self.settings_redirect_uri(s)?;

        let p = &mut c.proxy;
        self.resolve(&mut p.client_keys_file);
        if let Some(path) = &p.client_keys_file {
            p.client_keys = self.read_client_keys(path)?;
        }

        self.tls_pair("proxy", &mut p.tls_cert_file, &mut p.tls_key_file)?;

        let a = &mut c.addon;
        a.signing_key = self.secret_file("addon.signing_key_file", &mut a.signing_key_file)?;

        let p = &mut c.public;
        self.tls_pair("public", &mut p.tls_cert_file, &mut p.tls_key_file)?;

        let a = &mut c.admin;
        a.token = self.secret_file("admin.token_file", &mut a.token_file)?;

        let s = &mut c.store;
        self.resolve(&mut s.key_file);
        for path in &mut s.previous_key_files {
            *path = self.secret_path(path);
        }
        Ok(c)
    }

    /// `settings_redirect_uri` as set, else `redirect_uri` with the path `/settings/authorized`
    /// (query and fragment dropped); empty when neither is set.
    fn settings_redirect_uri(&self, s: &ShoptetSection) -> Result<String, ConfigError> {
        let (key, value) = match (s.settings_redirect_uri.trim(), s.redirect_uri.trim()) {
            ("", "") => return Ok(String::new()),
            ("", base) => ("shoptet.redirect_uri", base),
            (own, _) => ("shoptet.settings_redirect_uri", own),
        };
        let mut url = url::Url::parse(value)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| self.err(key, format!("{value:?} is not an http(s) URL")))?;
        if key == "shoptet.redirect_uri" {
            url.set_path("/settings/authorized");
            url.set_query(None);
            url.set_fragment(None);
        }
        Ok(url.to_string())
    }

    /// Resolves the `*_file` key `key` and reads the secret it names; `None` when it is unset.
    fn secret_file(
        &self,
        key: &str,
        file: &mut Option<PathBuf>,
    ) -> Result<Option<Secret>, ConfigError> {
        self.resolve(file);
        file.as_deref()
            .map(|path| self.read_secret_file(key, path))
            .transpose()
    }

    /// Resolves a listener's `tls_cert_file` and `tls_key_file`, which are set both or neither.
    fn tls_pair(
        &self,
        section: &str,
        cert: &mut Option<PathBuf>,
        key: &mut Option<PathBuf>,
    ) -> Result<(), ConfigError> {
        self.resolve(cert);
        self.resolve(key);
        let (missing, set) = match (&cert, &key) {
            (Some(_), None) => ("tls_key_file", "tls_cert_file"),
            (None, Some(_)) => ("tls_cert_file", "tls_key_file"),
            _ => return Ok(()),
        };
        Err(self.err(
            &format!("{section}.{missing}"),
            format!("is empty but {section}.{set} is set; TLS needs both"),
        ))
    }

    /// Builds an error for `key`, adding where the value came from (file or environment).
    fn err(&self, key: &str, message: impl std::fmt::Display) -> ConfigError {
        let path: Vec<&str> = key.split('.').collect();
        let origin = origin(self.figment.find_metadata(key), &path);
        ConfigError::invalid(key, format!("{message}{origin}"))
    }

    /// Relative names in `*_file` keys live in systemd's `$CREDENTIALS_DIRECTORY` when it is set
    /// (`LoadCredential=`), else in the working directory. One rule for every such key, the CA
    /// file included, so a unit can hand any of them over the same way.
    fn secret_path(&self, path: &Path) -> PathBuf {
        match &self.credentials_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    fn resolve(&self, path: &mut Option<PathBuf>) {
        if let Some(p) = path {
            *p = self.secret_path(p);
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
