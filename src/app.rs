//! Assembly: turns a validated [`Config`] and a store into running listeners.
//!
//! Everything that can fail on bad configuration (TLS files, CA file, store, key) fails here,
//! before any port is bound. Tests and `demo` use [`start`] in-process with port 0 and read the
//! bound addresses from [`Running`]; `serve` adds signals and systemd readiness around it.

use crate::config::Config;
use crate::delivery::{Outbox, Targets};
use crate::http::client;
use crate::limits::flow::{Flow, FlowConfig};
use crate::listeners::admin::{Admin, Readiness};
use crate::listeners::public::{Public, PublicSettings};
use crate::listeners::server::{self, Shutdown};
use crate::proxy::{Proxy, ProxySettings};
use crate::shoptet::oauth::OAuthClient;
use crate::state::eshops::Eshops;
use crate::state::tokens::{TokenCache, TokenConfig};
use crate::store::{Keyring, Store, StoreError};
use crate::telemetry::metrics::Metrics;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind};
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] client::TlsSetupError),
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("cannot listen on {addr} ({listener}): {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Everything the listeners share.
pub struct App {
    pub cfg: Config,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub oauth: Arc<OAuthClient>,
    pub proxy: Arc<Proxy>,
    pub shutdown: Shutdown,
    pub readiness: Readiness,
}

/// Running listeners of one proxy instance.
pub struct Running {
    pub app: Arc<App>,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub public_addr: Option<SocketAddr>,
    /// The proxy and public listeners, the outbox worker and the status re-check.
    tasks: JoinSet<()>,
    /// The admin listener outlives the drain: `/readyz` answers 503 and `/metrics` stays
    /// scrapable while in-flight requests finish, and it stops only after everything else.
    admin: tokio::task::JoinHandle<()>,
    admin_shutdown: Shutdown,
}

impl Running {
    /// Stops accepting, drains (bounded by `shutdown_timeout`), and returns when all listeners
    /// are done.
    pub async fn shutdown(self) {
        self.app.shutdown.trigger();
        self.wait().await;
    }

    /// Waits until the listeners stop (after [`Shutdown::trigger`] on `app.shutdown`).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
        self.admin_shutdown.trigger();
        let _ = self.admin.await;
    }
}

/// Binds `addr` and reports the address actually bound (port 0 picks one).
async fn bind(
    listener: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let failed = |source| StartError::Bind {
        listener,
        addr,
        source,
    };
    let tcp = TcpListener::bind(addr).await.map_err(failed)?;
    let bound = tcp.local_addr().map_err(failed)?;
    Ok((tcp, bound))
}

/// The `Host` header for requests to `url`: the host, and the port when it is not the default.
fn host_header(url: &url::Url) -> Result<http::HeaderValue, StartError> {
    let host = url.host_str().unwrap_or_default();
    let value = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    http::HeaderValue::from_str(&value).map_err(|_| StartError::Invalid {
        what: "shoptet.api_url",
        detail: "the host cannot be sent in a Host header".to_owned(),
    })
}

/// The parts that talk to Shoptet on behalf of every listener (and of the `eshops import`
/// command, which needs a token and a signature key without serving anything).
pub struct Core {
    pub metrics: Arc<Metrics>,
    pub oauth: Arc<OAuthClient>,
    pub proxy: Arc<Proxy>,
}

/// Builds the upstream client, the OAuth client, the token cache and the proxy on `store`.
pub fn core(cfg: &Config, store: Store) -> Result<Core, StartError> {
    client::install_crypto_provider();
    let metrics = Arc::new(Metrics::new());
    let client = client::client(cfg.shoptet.ca_file.as_deref(), cfg.shoptet.connect_timeout)?;
    let oauth = Arc::new(
        OAuthClient::new(
            client.clone(),
            &cfg.shoptet.partner_url,
            cfg.shoptet.client_id.clone(),
            cfg.shoptet.client_secret.clone(),
            cfg.shoptet.redirect_uri.clone(),
            cfg.proxy.upstream_timeout,
        )
        .map_err(|e| StartError::Invalid {
            what: "shoptet.partner_url",
            detail: e.to_string(),
        })?,
    );
    let eshops = Arc::new(Eshops::new(cfg.proxy.max_in_flight_per_eshop));
    let tokens = Arc::new(TokenCache::new(
        eshops.clone(),
        store.clone(),
        oauth.clone(),
        metrics.clone(),
        TokenConfig {
            refresh_margin: cfg.proxy.refresh_margin,
            backoff_max: cfg.proxy.token_backoff_max,
        },
    ));
    let flow = Flow::new(
        FlowConfig {
            max_in_flight_per_eshop: cfg.proxy.max_in_flight_per_eshop,
            max_in_flight: cfg.proxy.max_in_flight,
            max_queue: cfg.proxy.max_queue,
            queue_timeout: cfg.proxy.queue_timeout,
            bucket_reserve: cfg
                .proxy
                .bucket_pacing
                .then_some(f64::from(cfg.proxy.bucket_reserve)),
        },
        metrics.clone(),
    );
    let proxy = Arc::new(Proxy {
        settings: ProxySettings {
            api_base: cfg
                .shoptet
                .api_url
                .as_str()
                .trim_end_matches('/')
                .to_owned(),
            api_host: host_header(&cfg.shoptet.api_url)?,
            eshop_header: cfg.proxy.eshop_header.clone(),
            max_replay_body: cfg.proxy.max_replay_body,
            max_retry_wait: cfg.proxy.max_retry_wait,
            upstream_timeout: cfg.proxy.upstream_timeout,
            client_keys: cfg.proxy.client_keys.clone(),
        },
        client,
        eshops,
        tokens,
        flow,
        metrics: metrics.clone(),
        store,
    });
    Ok(Core {
        metrics,
        oauth,
        proxy,
    })
}

/// A listener's TLS acceptor when both its files are set (the config checks they come in pairs).
fn tls(
    what: &'static str,
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
) -> Result<Option<tokio_rustls::TlsAcceptor>, StartError> {
    match (cert, key) {
        (Some(cert), Some(key)) => crate::listeners::tls::tls_acceptor(cert, key)
            .map(Some)
            .map_err(|detail| StartError::Invalid { what, detail }),
        _ => Ok(None),
    }
}

/// Builds the application on an opened store and binds its listeners.
pub async fn start(cfg: Config, store: Store) -> Result<Running, StartError> {
    start_with_limits(cfg, store, server::Limits::default()).await
}

/// [`start`] with other connection limits on every listener (tests use short timeouts).
pub async fn start_with_limits(
    cfg: Config,
    store: Store,
    limits: server::Limits,
) -> Result<Running, StartError> {
    let Core {
        metrics,
        oauth,
        proxy,
    } = core(&cfg, store.clone())?;

    let public_tls = tls(
        "public.tls_cert_file/tls_key_file",
        &cfg.public.tls_cert_file,
        &cfg.public.tls_key_file,
    )?;
    let proxy_tls = tls(
        "proxy.tls_cert_file/tls_key_file",
        &cfg.proxy.tls_cert_file,
        &cfg.proxy.tls_key_file,
    )?;

    let (proxy_listener, proxy_addr) = bind("proxy", cfg.proxy.listen).await?;
    let (admin_listener, admin_addr) = bind("admin", cfg.admin.listen).await?;
    let (public_listener, public_addr) = match cfg.public.listen {
        Some(addr) => {
            let (l, a) = bind("public", addr).await?;
            (Some(l), Some(a))
        }
        None => (None, None),
    };

    let drain = cfg.proxy.shutdown_timeout;
    let shutdown = Shutdown::new();
    let app = Arc::new(App {
        cfg,
        store,
        metrics,
        oauth,
        proxy,
        readiness: Readiness::new(shutdown.clone()),
        shutdown,
    });
    let mut tasks = JoinSet::new();
    let admin_shutdown = Shutdown::new();
    let admin = {
        let admin = Arc::new(Admin {
            store: app.store.clone(),
            proxy: app.proxy.clone(),
            metrics: app.metrics.clone(),
            token: app.cfg.admin.token.clone(),
            readiness: app.readiness.clone(),
        });
        tokio::spawn(server::serve(
            admin_listener,
            None,
            move |req, _peer| {
                let admin = admin.clone();
                async move { admin.handle(req).await }
            },
            admin_shutdown.clone(),
            drain,
            limits,
        ))
    };
    {
        let proxy = app.proxy.clone();
        tasks.spawn(server::serve(
            proxy_listener,
            proxy_tls,
            move |req, _peer| {
                let proxy = proxy.clone();
                async move { proxy.handle(req).await }
            },
            app.shutdown.clone(),
            drain,
            limits,
        ));
    }
    let wake = Arc::new(tokio::sync::Notify::new());
    if let Some(listener) = public_listener {
        let public = Arc::new(Public {
            settings: PublicSettings {
                install_allow: app.cfg.public.install_allow.clone(),
                webhook_allow: app.cfg.public.webhook_allow.clone(),
                trusted_proxies: app.cfg.public.trusted_proxies.clone(),
                deliver_events: app.cfg.addon.events_url.is_some(),
                deliver_webhooks: app.cfg.addon.webhooks_url.is_some(),
            },
            store: app.store.clone(),
            oauth: app.oauth.clone(),
            proxy: app.proxy.clone(),
            metrics: app.metrics.clone(),
            outbox: wake.clone(),
        });
        tasks.spawn(server::serve(
            listener,
            public_tls,
            move |req, peer| {
                let public = public.clone();
                async move { public.handle(req, peer).await }
            },
            app.shutdown.clone(),
            drain,
            limits,
        ));
    }
    let outbox = Outbox {
        targets: Targets {
            events_url: app.cfg.addon.events_url.clone(),
            webhooks_url: app.cfg.addon.webhooks_url.clone(),
            retry_max: app.cfg.addon.retry_max,
            signing_key: app.cfg.addon.signing_key.clone(),
        },
        store: app.store.clone(),
        client: client::addon_client(app.cfg.shoptet.connect_timeout)?,
        metrics: app.metrics.clone(),
        shutdown: app.shutdown.clone(),
    };
    tasks.spawn(crate::delivery::run(Arc::new(outbox), wake));
    {
        let app = app.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = app.proxy.tokens.clone().watch_statuses() => {}
                _ = app.shutdown.wait() => {}
            }
        });
    }
    app.readiness.set_bound();
    tracing::info!(
        %proxy_addr,
        %admin_addr,
        public_addr = public_addr.map(tracing::field::display),
        "listening"
    );
    Ok(Running {
        app,
        proxy_addr,
        admin_addr,
        public_addr,
        tasks,
        admin,
        admin_shutdown,
    })
}

/// Opens the store named by the config with the key files it names. `serve` refuses to run
/// without a key: there is no plaintext mode.
pub async fn open_store(cfg: &Config) -> Result<Store, StartError> {
    let key_file = cfg.store.key_file.as_deref().ok_or(StartError::Invalid {
        what: "store.key_file",
        detail: "a store key is required (generate one with `shoptet-proxy gen-key`)".into(),
    })?;
    let keys = Keyring::load(key_file, &cfg.store.previous_key_files)?;
    Ok(Store::open(&cfg.store.url, keys).await?)
}

/// `shoptet-proxy serve`: runs until SIGTERM or SIGINT, then drains and returns. SIGHUP reloads
/// the configuration from `config_path` (what `--config` named; `None` = `./config.toml`).
pub async fn serve(cfg: Config, config_path: Option<&Path>) -> Result<(), StartError> {
    // Installed first: a signal that arrives once the listeners are bound (and READY=1 is
    // sent) must start a drain, not kill the process with the default action.
    let mut term = signal(SignalKind::terminate());
    let mut int = signal(SignalKind::interrupt());
    let mut hangup = signal(SignalKind::hangup());
    let store = open_store(&cfg).await?;
    let running = start(cfg, store).await?;
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let shutdown = running.app.shutdown.clone();
    let mut current = running.app.cfg.clone();
    loop {
        tokio::select! {
            _ = received(&mut term) => break,
            _ = received(&mut int) => break,
            _ = shutdown.wait() => break,
            _ = received(&mut hangup) => {
                notify_systemd(&[sd_notify::NotifyState::Reloading]);
                reload(&mut current, config_path);
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

/// Applies what can change at run time (the log level) and names, in the log, every section
/// whose changes need a restart. An invalid file changes nothing.
fn reload(current: &mut Config, config_path: Option<&Path>) {
    let new = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reload: the configuration is invalid; nothing changed");
            return;
        }
    };
    if new.log.level != current.log.level {
        match crate::telemetry::logging::set_level(&new.log.level) {
            Ok(()) => {
                tracing::info!(filter = %new.log.level, "reload: log level changed");
                current.log.level = new.log.level.clone();
            }
            Err(e) => tracing::warn!(error = %e, "reload: log level not changed"),
        }
    }
    let restart: Vec<&str> = [
        ("shoptet", current.shoptet != new.shoptet),
        ("proxy", current.proxy != new.proxy),
        ("public", current.public != new.public),
        ("addon", current.addon != new.addon),
        ("admin", current.admin != new.admin),
        ("store", current.store != new.store),
        ("log.format", current.log.format != new.log.format),
    ]
    .into_iter()
    .filter_map(|(section, changed)| changed.then_some(section))
    .collect();
    if restart.is_empty() {
        tracing::info!("reload: done");
    } else {
        tracing::warn!(
            sections = ?restart,
            "reload: these changes take effect only after a restart; running with the old values"
        );
    }
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
