//! The simulator's knobs: defaults are Shoptet's real values; `GET|PATCH /sim/config` shows and
//! changes them at runtime as JSON (camelCase keys, durations as "2s"-style strings or numbers of
//! milliseconds).

use std::time::Duration;

use serde_json::{json, Map, Value};

/// Simulator configuration. `Default` is Shoptet as documented.
#[derive(Clone)]
pub struct SimConfig {
    /// Lifetime of API access tokens from getAccessToken (1800 s).
    pub token_lifetime: Duration,
    /// How long getAccessToken waits before answering, after the token is minted (0): the token
    /// counts against the cap and works even if the caller gave up, as at Shoptet.
    pub token_delay: Duration,
    /// Valid API tokens per OAuth token (5); 0 = unlimited.
    pub token_cap: usize,
    /// Concurrent /api requests per API token (3); 0 = off.
    pub per_token_concurrency: usize,
    /// Concurrent /api requests per client IP (50); 0 = off.
    pub per_ip_concurrency: usize,
    /// Leaky bucket per e-shop on (true).
    pub bucket: bool,
    pub bucket_capacity: u32,
    pub bucket_drain_per_sec: u32,
    /// Added to every /api call (0).
    pub latency: Duration,
    /// Probabilities 0..1 per /api call of a 500, a dropped connection, a 429 (all 0).
    pub fault_5xx: f64,
    pub fault_drop: f64,
    pub fault_429: f64,
    /// Wait between webhook delivery attempts (15 min); 3 attempts in all.
    pub webhook_retry_delay: Duration,
    /// Where `addon:*` system webhooks go (the partner admin setting); None = not sent.
    pub addon_webhook_url: Option<String>,
    /// Credentials the OAuth server accepts.
    pub client_id: String,
    pub client_secret: String,
    /// Serve HTTPS with a self-signed certificate for 127.0.0.1/localhost (fixed at start).
    pub tls: bool,
    /// How long an async job (`GET /api/products/snapshot`) runs before it completes (200 ms).
    pub job_duration: Duration,
    /// The addon's "link to external addon settings" (SPEC A5) that the simulated administration
    /// frames, with `#SHOP_ID#`, `#LANGUAGE#` and `#OAUTH_CODE#`; None = not registered.
    pub settings_url: Option<String>,
    /// The addon's "URL for user authorization": when set, `#OAUTH_CODE#` is filled in and every
    /// e-shop OAuth server's `authorize` and `token` require exactly this `redirect_uri`.
    pub settings_redirect_uri: Option<String>,
    /// How long an e-shop OAuth server's `basic_eshop` code stays exchangeable (5 min).
    pub settings_code_lifetime: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            token_lifetime: Duration::from_secs(1800),
            token_delay: Duration::ZERO,
            token_cap: 5,
            per_token_concurrency: 3,
            per_ip_concurrency: 50,
            bucket: true,
            bucket_capacity: 200,
            bucket_drain_per_sec: 10,
            latency: Duration::ZERO,
            fault_5xx: 0.0,
            fault_drop: 0.0,
            fault_429: 0.0,
            webhook_retry_delay: Duration::from_secs(15 * 60),
            addon_webhook_url: None,
            client_id: "sim-client".to_owned(),
            client_secret: "sim-secret".to_owned(),
            tls: false,
            job_duration: Duration::from_millis(200),
            settings_url: None,
            settings_redirect_uri: None,
            settings_code_lifetime: Duration::from_secs(5 * 60),
        }
    }
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_json().to_string())
    }
}

fn dur(d: Duration) -> Value {
    Value::String(humantime::format_duration(d).to_string())
}

impl SimConfig {
    /// The `GET /sim/config` view; the client secret is redacted.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "tokenLifetime": dur(self.token_lifetime),
            "tokenDelay": dur(self.token_delay),
            "tokenCap": self.token_cap,
            "perTokenConcurrency": self.per_token_concurrency,
            "perIpConcurrency": self.per_ip_concurrency,
            "bucket": self.bucket,
            "bucketCapacity": self.bucket_capacity,
            "bucketDrainPerSec": self.bucket_drain_per_sec,
            "latency": dur(self.latency),
            "fault5xx": self.fault_5xx,
            "faultDrop": self.fault_drop,
            "fault429": self.fault_429,
            "webhookRetryDelay": dur(self.webhook_retry_delay),
            "addonWebhookUrl": self.addon_webhook_url,
            "clientId": self.client_id,
            "clientSecret": "<redacted>",
            "tls": self.tls,
            "jobDuration": dur(self.job_duration),
            "settingsUrl": self.settings_url,
            "settingsRedirectUri": self.settings_redirect_uri,
            "settingsCodeLifetime": dur(self.settings_code_lifetime),
        })
    }

    /// Applies a `PATCH /sim/config` body. All-or-nothing: on error nothing is changed.
    pub(crate) fn patch(&mut self, body: &Map<String, Value>) -> Result<(), String> {
        let mut next = self.clone();
        for (k, v) in body {
            match k.as_str() {
                "tokenLifetime" => next.token_lifetime = duration(k, v)?,
                "tokenDelay" => next.token_delay = duration(k, v)?,
                "tokenCap" => next.token_cap = uint(k, v)?,
                "perTokenConcurrency" => next.per_token_concurrency = uint(k, v)?,
                "perIpConcurrency" => next.per_ip_concurrency = uint(k, v)?,
                "bucket" => next.bucket = boolean(k, v)?,
                "bucketCapacity" => next.bucket_capacity = u32_(k, v)?,
                "bucketDrainPerSec" => next.bucket_drain_per_sec = u32_(k, v)?,
                "latency" => next.latency = duration(k, v)?,
                "fault5xx" => next.fault_5xx = prob(k, v)?,
                "faultDrop" => next.fault_drop = prob(k, v)?,
                "fault429" => next.fault_429 = prob(k, v)?,
                "webhookRetryDelay" => next.webhook_retry_delay = duration(k, v)?,
                "addonWebhookUrl" => next.addon_webhook_url = opt_string(k, v)?,
                "clientId" => next.client_id = string(k, v)?,
                "clientSecret" => next.client_secret = string(k, v)?,
                "jobDuration" => next.job_duration = duration(k, v)?,
                "settingsUrl" => next.settings_url = opt_string(k, v)?,
                "settingsRedirectUri" => next.settings_redirect_uri = opt_string(k, v)?,
                "settingsCodeLifetime" => next.settings_code_lifetime = duration(k, v)?,
                "tls" => return Err("tls: fixed at start".to_owned()),
                _ => return Err(format!("unknown key {k}")),
            }
        }
        *self = next;
        Ok(())
    }
}

/// A duration given as "2s"/"150ms" or as a number of milliseconds.
pub(crate) fn duration(k: &str, v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(s) => {
            humantime::parse_duration(s.trim()).map_err(|e| format!("{k}: bad duration {s:?}: {e}"))
        }
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_millis)
            .ok_or_else(|| format!("{k}: expected a non-negative integer of milliseconds")),
        _ => Err(format!("{k}: expected a duration string or milliseconds")),
    }
}

fn uint(k: &str, v: &Value) -> Result<usize, String> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("{k}: expected a non-negative integer"))
}

fn u32_(k: &str, v: &Value) -> Result<u32, String> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("{k}: expected a non-negative 32-bit integer"))
}

fn boolean(k: &str, v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("{k}: expected a boolean"))
}

fn string(k: &str, v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{k}: expected a string"))
}

/// A string knob that may be unset: null or "" unsets it.
fn opt_string(k: &str, v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(format!("{k}: expected a string or null")),
    }
}

fn prob(k: &str, v: &Value) -> Result<f64, String> {
    v.as_f64()
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| format!("{k}: expected a probability between 0 and 1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_accepts_strings_and_milliseconds_and_rejects_unknown_keys() {
        let mut c = SimConfig::default();
        let body = json!({"tokenLifetime": "2s", "latency": 15, "tokenCap": 0, "tokenDelay": "1s"});
        c.patch(body.as_object().unwrap()).unwrap();
        assert_eq!(c.token_delay, Duration::from_secs(1));
        assert_eq!(c.token_lifetime, Duration::from_secs(2));
        assert_eq!(c.latency, Duration::from_millis(15));
        assert_eq!(c.token_cap, 0);
        let bad = json!({"tokenCap": 1, "nope": 1});
        assert!(c.patch(bad.as_object().unwrap()).is_err());
        assert_eq!(c.token_cap, 0, "a failed patch changes nothing");
    }

    #[test]
    fn debug_redacts_the_client_secret() {
        let c = SimConfig {
            client_secret: "hunter2".into(),
            ..SimConfig::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
