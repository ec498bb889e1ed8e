//! `serve`: the running process around the assembled listeners — signals, systemd readiness and
//! SIGHUP reload (SPEC B7). A reload builds every new value with the same functions `start`
//! uses ([`super`]) and swaps them in, or changes nothing when anything fails.

use super::*;
use crate::config::Config;
use crate::delivery::Outbox;
use crate::listeners::activation::Passed;
use crate::listeners::admin::Admin;
use crate::listeners::public::Public;
use crate::listeners::server;
use crate::listeners::tls::Certificate;
use crate::proxy::Proxy;
use crate::shoptet::oauth::OAuthClient;
use crate::telemetry::metrics::Metrics;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::signal::unix::{Signal, SignalKind};

/// `shoptet-proxy serve`: runs until SIGTERM or SIGINT, then drains and returns. SIGHUP reloads
/// the configuration from `config_path` (what `--config` named; `None` = `./config.toml`).
/// `passed` holds the sockets systemd passed (taken before the runtime started threads).
pub async fn serve(
    cfg: Config,
    config_path: Option<&Path>,
    passed: Passed,
) -> Result<(), StartError> {
    // Installed first: a signal that arrives once the listeners are bound (and READY=1 is
    // sent) must start a drain, not kill the process with the default action.
    let mut term = signal(SignalKind::terminate());
    let mut int = signal(SignalKind::interrupt());
    let mut hangup = signal(SignalKind::hangup());
    let store = open_store(&cfg).await?;
    refuse_foreign_keys(&store).await?;
    let running = start_with(cfg, store, server::Limits::default(), passed).await?;
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let shutdown = running.app.shutdown.clone();
    loop {
        tokio::select! {
            _ = received(&mut term) => break,
            _ = received(&mut int) => break,
            _ = shutdown.wait() => break,
            _ = received(&mut hangup) => {
                // Type=notify-reload wants MONOTONIC_USEC with RELOADING=1; Type=notify ignores it.
                let mut reloading = vec![sd_notify::NotifyState::Reloading];
                reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
                notify_systemd(&reloading);
                let _ = running.reloader.reload(config_path);
                notify_systemd(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
    tracing::info!("shutting down: draining in-flight requests");
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn signal(kind: SignalKind) -> Option<Signal> {
    tokio::signal::unix::signal(kind)
        .map_err(|e| tracing::warn!(error = %e, "cannot install a signal handler"))
        .ok()
}

/// Resolves when `signal` arrives; never when its handler could not be installed.
async fn received(signal: &mut Option<Signal>) {
    if let Some(s) = signal {
        if s.recv().await.is_some() {
            return;
        }
    }
    std::future::pending().await
}

/// Applies a reloaded configuration (SPEC B7 "Reload") to the running listeners, request path
/// and outbox. Keeps the configuration in effect, whose restart-only values stay those the
/// process started with.
pub struct Reloader {
    pub(super) running: Mutex<Config>,
    pub(super) proxy: Arc<Proxy>,
    pub(super) oauth: Arc<OAuthClient>,
    pub(super) admin: Arc<Admin>,
    pub(super) public: Option<Arc<Public>>,
    pub(super) public_cert: Option<Arc<Certificate>>,
    pub(super) proxy_cert: Option<Arc<Certificate>>,
    pub(super) outbox: Arc<Outbox>,
    pub(super) metrics: Arc<Metrics>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the configuration is invalid: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

impl Reloader {
    /// Re-reads `config_path` (and the files it names) and applies it; logs and counts the
    /// outcome. An invalid file changes nothing.
    pub fn reload(&self, config_path: Option<&Path>) -> Result<(), ReloadError> {
        let result = Config::load(config_path)
            .map_err(ReloadError::from)
            .and_then(|new| self.apply(new));
        let label = match &result {
            Ok(()) => {
                tracing::info!("reload: done");
                "ok"
            }
            Err(e) => {
                tracing::error!(error = %e, "reload: nothing changed");
                "error"
            }
        };
        self.metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        result
    }

    /// Applies `new`: everything that can change at run time, all or nothing; each change that
    /// needs a restart is named in the log and keeps its running value.
    pub fn apply(&self, mut new: Config) -> Result<(), ReloadError> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for key in keep_restart_values(&running, &mut new) {
            tracing::warn!(
                key,
                "reload: `{key}` changed but takes effect only after a restart; running with the old value"
            );
        }
        // Everything that can fail comes first, so a failure leaves everything as it was.
        let certificates: Vec<_> = [
            (
                &self.public_cert,
                &new.public.tls_cert_file,
                &new.public.tls_key_file,
                "public.tls_cert_file/tls_key_file",
            ),
            (
                &self.proxy_cert,
                &new.proxy.tls_cert_file,
                &new.proxy.tls_key_file,
                "proxy.tls_cert_file/tls_key_file",
            ),
        ]
        .into_iter()
        .filter_map(|c| match c {
            (Some(current), Some(cert), Some(key), what) => Some((current, cert, key, what)),
            _ => None,
        })
        .collect();
        for (_, cert, key, what) in &certificates {
            // Loaded once to check it, once more to store it: cheap, and no half-applied state.
            Certificate::load(cert, key).map_err(|detail| ReloadError::Invalid { what, detail })?;
        }
        let settings = proxy_settings(&new).map_err(|e| ReloadError::Invalid {
            what: "shoptet.api_url",
            detail: e.to_string(),
        })?;

        for (current, cert, key, what) in certificates {
            if let Err(detail) = current.reload(cert, key) {
                // Replaced between the check and now; the old pair stays in use.
                return Err(ReloadError::Invalid { what, detail });
            }
        }
        self.proxy.settings.store(Arc::new(settings));
        self.proxy.flow.reconfigure(flow_config(&new));
        self.proxy.tokens.reconfigure(token_config(&new));
        self.oauth.set_partner(partner(&new));
        self.admin
            .token
            .store(new.admin.token.clone().map(Arc::new));
        if let Some(public) = &self.public {
            public.settings.store(Arc::new(public_settings(&new)));
            public.pages.reconfigure(pages_config(&new));
        }
        self.outbox.targets.store(Arc::new(targets(&new)));
        // The addon signing key travels in the outbox's targets above.
        if new.log.level != running.log.level {
            match crate::telemetry::logging::set_level(&new.log.level) {
                Ok(()) => tracing::info!(filter = %new.log.level, "reload: log level changed"),
                Err(e) => {
                    tracing::warn!(error = %e, "reload: log level not changed");
                    new.log.level = running.log.level.clone();
                }
            }
        }
        *running = new;
        Ok(())
    }
}

/// Puts back into `new` every value that needs a restart (SPEC B7) and returns the keys whose
/// value differed.
fn keep_restart_values(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($key:literal, $($field:ident).+) => {
            if new.$($field).+ != running.$($field).+ {
                changed.push($key);
                new.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!("proxy.listen", proxy.listen);
    keep!("admin.listen", admin.listen);
    keep!("public.listen", public.listen);
    // The drain timeout and connect timeout are fixed into the listeners and the upstream
    // client when they are built.
    keep!("proxy.shutdown_timeout", proxy.shutdown_timeout);
    keep!("shoptet.connect_timeout", shoptet.connect_timeout);
    keep!("shoptet.api_url", shoptet.api_url);
    keep!("shoptet.partner_url", shoptet.partner_url);
    keep!("shoptet.ca_file", shoptet.ca_file);
    keep!("store", store);
    keep!("log.format", log.format);
    keep!("telemetry", telemetry);
    // New certificate and key files apply; turning TLS on or off does not.
    let tls = |c: &Config| c.public.tls_cert_file.is_some() && c.public.tls_key_file.is_some();
    if tls(new) != tls(running) {
        changed.push("public.tls_cert_file");
        new.public.tls_cert_file = running.public.tls_cert_file.clone();
        new.public.tls_key_file = running.public.tls_key_file.clone();
    }
    let tls = |c: &Config| c.proxy.tls_cert_file.is_some() && c.proxy.tls_key_file.is_some();
    if tls(new) != tls(running) {
        changed.push("proxy.tls_cert_file");
        new.proxy.tls_cert_file = running.proxy.tls_cert_file.clone();
        new.proxy.tls_key_file = running.proxy.tls_key_file.clone();
    }
    changed
}

fn notify_systemd(state: &[sd_notify::NotifyState]) {
    // Outside systemd NOTIFY_SOCKET is unset and this does nothing.
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Some(mut term), Some(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Signal handlers could not be installed: fall back to Ctrl-C only.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
