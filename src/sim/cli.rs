//! `shoptet-proxy sim`: runs the simulator alone, every knob a flag, until Ctrl-C / SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use super::{SimConfig, SimError, Simulator};

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

fn probability(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| format!("{s:?} is not a probability between 0 and 1"))
}

/// Flags of `shoptet-proxy sim`.
#[derive(Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// API access token lifetime, e.g. 30s, 30m.
    #[arg(long, value_parser = duration, default_value = "30m")]
    pub token_lifetime: Duration,
    /// Delay of getAccessToken's answer, after the token is minted, e.g. 2s.
    #[arg(long, value_parser = duration, default_value = "0s")]
    pub token_delay: Duration,
    /// Valid API tokens per OAuth token (0 = unlimited).
    #[arg(long, default_value_t = 5)]
    pub token_cap: usize,
    /// Concurrent API requests per access token (0 = off).
    #[arg(long, default_value_t = 3)]
    pub per_token_concurrency: usize,
    /// Concurrent API requests per client IP (0 = off).
    #[arg(long, default_value_t = 50)]
    pub per_ip_concurrency: usize,
    /// Turn the leaky bucket off.
    #[arg(long)]
    pub no_bucket: bool,
    /// Turn every limit off: per-token and per-IP concurrency and the bucket (the token cap
    /// stays; use --token-cap 0 for that).
    #[arg(long)]
    pub no_limits: bool,
    #[arg(long, default_value_t = 200)]
    pub bucket_capacity: u32,
    #[arg(long, default_value_t = 10)]
    pub bucket_drain_per_sec: u32,
    /// Latency added to every API call, e.g. 10ms.
    #[arg(long, value_parser = duration, default_value = "0s")]
    pub latency: Duration,
    /// Probability of a 500 per API call.
    #[arg(long, value_parser = probability, default_value_t = 0.0)]
    pub fault_5xx: f64,
    /// Probability of a dropped connection per API call.
    #[arg(long, value_parser = probability, default_value_t = 0.0)]
    pub fault_drop: f64,
    /// Probability of a concurrency 429 per API call.
    #[arg(long, value_parser = probability, default_value_t = 0.0)]
    pub fault_429: f64,
    /// Wait between webhook delivery attempts.
    #[arg(long, value_parser = duration, default_value = "15m")]
    pub webhook_retry_delay: Duration,
    /// How long async jobs take.
    #[arg(long, value_parser = duration, default_value = "200ms")]
    pub job_duration: Duration,
    /// Boxed: every byte here counts against the size of the whole `shoptet-proxy` command enum.
    #[command(flatten)]
    pub settings: Box<SimSettingsArgs>,
    /// Where addon:* system webhooks are sent.
    #[arg(long)]
    pub addon_webhook_url: Option<String>,
    #[arg(long, default_value = "sim-client")]
    pub client_id: String,
    #[arg(
        long,
        env = "SHOPTET_SIM_CLIENT_SECRET",
        default_value = "sim-secret",
        hide_env_values = true
    )]
    pub client_secret: String,
    /// Serve HTTPS with a self-signed certificate (printed at start).
    #[arg(long)]
    pub tls: bool,
    /// Pre-create this e-shop installation and print its code and OAuth token (repeatable).
    #[arg(long = "eshop")]
    pub eshops: Vec<u64>,
}

/// Flags of the settings-page flow (SPEC A5).
#[derive(Clone, clap::Args)]
pub struct SimSettingsArgs {
    /// The addon's settings link framed by the simulated administration
    /// (`/eshops/{id}/admin/settings`), with #SHOP_ID#, #LANGUAGE# and #OAUTH_CODE#.
    #[arg(long)]
    pub settings_url: Option<String>,
    /// The addon's "URL for user authorization": #OAUTH_CODE# is filled in only when it is set,
    /// and the e-shop OAuth servers then require it as redirect_uri.
    #[arg(long)]
    pub settings_redirect_uri: Option<String>,
    /// How long an e-shop OAuth server's basic_eshop code stays exchangeable.
    #[arg(long, value_parser = duration, default_value = "5m")]
    pub settings_code_lifetime: Duration,
}

impl std::fmt::Debug for SimArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client secret stays out of Debug output.
        f.debug_struct("SimArgs")
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .field("eshops", &self.eshops)
            .finish_non_exhaustive()
    }
}

impl SimArgs {
    pub fn to_config(&self) -> SimConfig {
        let limits = !self.no_limits;
        SimConfig {
            token_lifetime: self.token_lifetime,
            token_delay: self.token_delay,
            token_cap: self.token_cap,
            per_token_concurrency: if limits {
                self.per_token_concurrency
            } else {
                0
            },
            per_ip_concurrency: if limits { self.per_ip_concurrency } else { 0 },
            bucket: limits && !self.no_bucket,
            bucket_capacity: self.bucket_capacity,
            bucket_drain_per_sec: self.bucket_drain_per_sec,
            latency: self.latency,
            fault_5xx: self.fault_5xx,
            fault_drop: self.fault_drop,
            fault_429: self.fault_429,
            webhook_retry_delay: self.webhook_retry_delay,
            addon_webhook_url: self.addon_webhook_url.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            tls: self.tls,
            job_duration: self.job_duration,
            settings_url: self.settings.settings_url.clone(),
            settings_redirect_uri: self.settings.settings_redirect_uri.clone(),
            settings_code_lifetime: self.settings.settings_code_lifetime,
        }
    }
}

/// Runs the simulator until Ctrl-C or SIGTERM. Prints the base URL, the certificate when TLS is
/// on, and for each `--eshop` its one-time code and OAuth token (deliberately: this is a local
/// test tool and the developer needs them).
pub async fn run_cli(args: SimArgs) -> Result<(), SimError> {
    let sim = Simulator::start(args.to_config(), args.listen).await?;
    let base = sim.base_url();
    println!("Shoptet simulator listening on {base}");
    println!("  OAuth server: {base}/action/ApiOAuthServer/token and .../getAccessToken");
    println!("  API:          {base}/api/...   control plane: {base}/sim/...");
    if let Some(pem) = sim.ca_cert_pem() {
        println!("Self-signed certificate (trust it as a CA):\n{pem}");
    }
    for id in &args.eshops {
        let inst = sim.create_eshop(*id);
        println!("e-shop {}:", inst.eshop_id);
        println!("  code:        {}", inst.code);
        println!("  oauth token: {}", inst.oauth_token);
        println!(
            "  curl -s -H 'Authorization: Bearer {}' {base}/action/ApiOAuthServer/getAccessToken",
            inst.oauth_token
        );
        println!("  e-shop OAuth server: {base}/eshops/{id}/action/OAuthServer/");
        println!("  administration (settings page): {base}/eshops/{id}/admin/settings?language=cs");
    }
    wait_for_signal().await;
    sim.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
