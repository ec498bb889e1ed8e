//! Assembly: turns a validated [`Config`] and a store into running listeners.
//!
//! Everything that can fail on bad configuration (TLS files, CA file, store, key) fails here,
//! before any port is bound. Tests and `demo` use [`start`] in-process with port 0 and read the
//! bound addresses from [`Running`]; `serve` adds signals, systemd readiness and sockets
//! passed by systemd around it.
//!
//! The listeners, the request path and the outbox get narrow handles whose reloadable parts sit
//! behind `ArcSwap`s; the [`Reloader`] kept here builds new values from a reloaded [`Config`]
//! (with the same functions that built the first ones) and stores them.

use crate::config::Config;
use crate::delivery::{Outbox, Targets};
use crate::http::client;
use crate::limits::flow::{Flow, FlowConfig};
use crate::listeners::activation::Passed;
use crate::listeners::admin::{Admin, Readiness};
use crate::listeners::public::{Public, PublicSettings};
use crate::listeners::server::{self, Shutdown};
use crate::listeners::settings::identity::Credentials;
use crate::listeners::settings::{PagesConfig, SettingsPages};
use crate::listeners::tls::Certificate;
use crate::proxy::{Proxy, ProxySettings};
use crate::shoptet::oauth::{OAuthClient, Partner};
use crate::state::eshops::Eshops;
use crate::state::tokens::{TokenCache, TokenConfig};
use crate::store::{Keyring, Store, StoreError};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::traces::Tracer;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
    /// Applies a reloaded configuration to the running listeners.
    pub reloader: Reloader,
    /// The proxy and public listeners, the outbox worker, the status re-check and the store
    /// probe.
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

/// The socket systemd passed for `listener`, or else `addr` bound; and the address it listens
/// on (port 0 picks one).
async fn bind(
    listener: &'static str,
    addr: SocketAddr,
    passed: &mut Passed,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let failed = |source| StartError::Bind {
        listener,
        addr,
        source,
    };
    let tcp = match passed.take(listener).map_err(failed)? {
        Some(tcp) => {
            tracing::info!(listener, "using the socket systemd passed");
            tcp
        }
        None => TcpListener::bind(addr).await.map_err(failed)?,
    };
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
    let partner = partner(cfg);
    let oauth = Arc::new(
        OAuthClient::new(
            client.clone(),
            &cfg.shoptet.partner_url,
            partner.client_id,
            partner.client_secret,
            partner.redirect_uri,
            partner.timeout,
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
        token_config(cfg),
    ));
    let flow = Flow::new(flow_config(cfg), metrics.clone());
    let tracer = tracer(cfg, &client, &metrics);
    let proxy = Arc::new(Proxy {
        settings: ArcSwap::from_pointee(proxy_settings(cfg)?),
        client,
        eshops,
        tokens,
        flow,
        tracer,
        metrics: metrics.clone(),
        store,
    });
    Ok(Core {
        metrics,
        oauth,
        proxy,
    })
}

/// The trace exporter, when `[telemetry] otlp_endpoint` is set and a runtime runs to carry it.
fn tracer(cfg: &Config, client: &client::Client, metrics: &Metrics) -> Option<Tracer> {
    let t = &cfg.telemetry;
    if t.otlp_endpoint.is_empty() || tokio::runtime::Handle::try_current().is_err() {
        return None;
    }
    Some(Tracer::start(
        &t.otlp_endpoint,
        t.sample_ratio,
        &t.service_name,
        client.clone(),
        metrics.trace_spans_dropped.clone(),
    ))
}

// What a reload may change, built from a configuration. `start` builds the first values with
// these and the `Reloader` every later one, so both always agree.

fn proxy_settings(cfg: &Config) -> Result<ProxySettings, StartError> {
    Ok(ProxySettings {
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
    })
}

fn flow_config(cfg: &Config) -> FlowConfig {
    FlowConfig {
        max_in_flight_per_eshop: cfg.proxy.max_in_flight_per_eshop,
        max_in_flight: cfg.proxy.max_in_flight,
        max_queue: cfg.proxy.max_queue,
        queue_timeout: cfg.proxy.queue_timeout,
        bucket_reserve: cfg
            .proxy
            .bucket_pacing
            .then_some(f64::from(cfg.proxy.bucket_reserve)),
    }
}

fn token_config(cfg: &Config) -> TokenConfig {
    TokenConfig {
        refresh_margin: cfg.proxy.refresh_margin,
        backoff_max: cfg.proxy.token_backoff_max,
        status_recheck: crate::state::tokens::STATUS_RECHECK,
    }
}

fn partner(cfg: &Config) -> Partner {
    Partner {
        client_id: cfg.shoptet.client_id.clone(),
        client_secret: cfg.shoptet.client_secret.clone(),
        redirect_uri: cfg.shoptet.redirect_uri.clone(),
        timeout: cfg.proxy.upstream_timeout,
    }
}

fn public_settings(cfg: &Config) -> PublicSettings {
    PublicSettings {
        install_allow: cfg.public.install_allow.clone(),
        webhook_allow: cfg.public.webhook_allow.clone(),
        trusted_proxies: cfg.public.trusted_proxies.clone(),
        deliver_events: cfg.addon.events_url.is_some(),
        deliver_webhooks: cfg.addon.webhooks_url.is_some(),
    }
}

fn targets(cfg: &Config) -> Targets {
    Targets {
        events_url: cfg.addon.events_url.clone(),
        webhooks_url: cfg.addon.webhooks_url.clone(),
        retry_max: cfg.addon.retry_max,
        signing_key: cfg.addon.signing_key.clone(),
    }
}

/// A listener's reloadable certificate, when it has TLS (the config checks the files come in
/// pairs).
fn certificate(
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
) -> Result<Option<Arc<Certificate>>, String> {
    match (cert, key) {
        (Some(cert), Some(key)) => Certificate::load(cert, key).map(Some),
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
    start_with(cfg, store, limits, Passed::none()).await
}

/// [`start_with_limits`] on the sockets in `passed` where a listener's name is there.
pub async fn start_with(
    cfg: Config,
    store: Store,
    limits: server::Limits,
    mut passed: Passed,
) -> Result<Running, StartError> {
    let Core {
        metrics,
        oauth,
        proxy,
    } = core(&cfg, store.clone())?;

    let tls_invalid = |what: &'static str| move |detail| StartError::Invalid { what, detail };
    let acceptor = |cert: &Option<Arc<Certificate>>, what: &'static str| match cert {
        Some(cert) => cert.acceptor().map(Some).map_err(tls_invalid(what)),
        None => Ok(None),
    };
    const PUBLIC_TLS: &str = "public.tls_cert_file/tls_key_file";
    const PROXY_TLS: &str = "proxy.tls_cert_file/tls_key_file";
    let public_cert = certificate(&cfg.public.tls_cert_file, &cfg.public.tls_key_file)
        .map_err(tls_invalid(PUBLIC_TLS))?;
    let public_tls = acceptor(&public_cert, PUBLIC_TLS)?;
    let proxy_cert = certificate(&cfg.proxy.tls_cert_file, &cfg.proxy.tls_key_file)
        .map_err(tls_invalid(PROXY_TLS))?;
    let proxy_tls = acceptor(&proxy_cert, PROXY_TLS)?;

    let (proxy_listener, proxy_addr) = bind("proxy", cfg.proxy.listen, &mut passed).await?;
    let (admin_listener, admin_addr) = bind("admin", cfg.admin.listen, &mut passed).await?;
    let (public_listener, public_addr) = match cfg.public.listen {
        Some(addr) => {
            let (l, a) = bind("public", addr, &mut passed).await?;
            (Some(l), Some(a))
        }
        None => (None, None),
    };
    for name in passed.unused() {
        tracing::warn!(
            name,
            "systemd passed a socket for a listener that is off; not serving on it"
        );
    }

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
    let admin_handle = Arc::new(Admin {
        store: app.store.clone(),
        proxy: app.proxy.clone(),
        metrics: app.metrics.clone(),
        token: arc_swap::ArcSwapOption::from(app.cfg.admin.token.clone().map(Arc::new)),
        readiness: app.readiness.clone(),
    });
    let admin = {
        let admin = admin_handle.clone();
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
    let mut public_handle = None;
    if let Some(listener) = public_listener {
        let public = Arc::new(Public {
            settings: ArcSwap::from_pointee(public_settings(&app.cfg)),
            store: app.store.clone(),
            oauth: app.oauth.clone(),
            proxy: app.proxy.clone(),
            metrics: app.metrics.clone(),
            outbox: wake.clone(),
            pages: Arc::new(SettingsPages::new(
                PagesConfig {
                    settings_url: app.cfg.addon.settings_url.clone(),
                    session_ttl: app.cfg.addon.settings_session_ttl,
                    frame_ancestors: app.cfg.addon.settings_frame_ancestors.clone(),
                    creds: Credentials {
                        client_id: app.cfg.shoptet.client_id.clone(),
                        client_secret: app.cfg.shoptet.client_secret.clone(),
                        redirect_uri: app.cfg.shoptet.settings_redirect_uri.clone(),
                    },
                    oauth_timeout: app.cfg.proxy.upstream_timeout,
                },
                app.store.clone(),
                app.proxy.clone(),
                client::client(None, app.cfg.shoptet.connect_timeout)?,
                app.metrics.clone(),
            )),
        });
        public_handle = Some(public.clone());
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
    let outbox = Arc::new(Outbox {
        targets: ArcSwap::from_pointee(targets(&app.cfg)),
        store: app.store.clone(),
        client: client::addon_client(app.cfg.shoptet.connect_timeout)?,
        metrics: app.metrics.clone(),
        shutdown: app.shutdown.clone(),
    });
    tasks.spawn(crate::delivery::run(outbox.clone(), wake));
    {
        let app = app.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = app.proxy.tokens.clone().watch_statuses() => {}
                _ = app.shutdown.wait() => {}
            }
        });
    }
    // `serve` reached the store to open it; from now on the probe keeps the gauge current.
    app.metrics.store_up.set(1);
    {
        let (store, metrics, shutdown) =
            (app.store.clone(), app.metrics.clone(), app.shutdown.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = watch_store(store, metrics) => {}
                _ = shutdown.wait() => {}
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
    let reloader = Reloader {
        running: Mutex::new(app.cfg.clone()),
        proxy: app.proxy.clone(),
        oauth: app.oauth.clone(),
        admin: admin_handle,
        public: public_handle,
        public_cert,
        proxy_cert,
        outbox,
        metrics: app.metrics.clone(),
    };
    Ok(Running {
        app,
        proxy_addr,
        admin_addr,
        public_addr,
        reloader,
        tasks,
        admin,
        admin_shutdown,
    })
}

/// How often `shoptet_proxy_store_up` is brought up to date between scrapes.
const STORE_PROBE_EVERY: Duration = Duration::from_secs(1);

/// Pings the store every [`STORE_PROBE_EVERY`] so `shoptet_proxy_store_up` and the log tell when
/// it goes away and comes back; nothing waits on this, requests meet an outage on their own.
async fn watch_store(store: Store, metrics: Arc<Metrics>) {
    let mut every = tokio::time::interval(STORE_PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        crate::listeners::admin::probe_store(&store, &metrics).await;
    }
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

/// SPEC B5: the store key must open the store. A restored backup with the wrong key file, or a
/// key regenerated by mistake, would otherwise serve on and fail per e-shop at its first token;
/// refusing at start names the keys so the operator can find the right file.
async fn refuse_foreign_keys(store: &Store) -> Result<(), StartError> {
    let foreign = store.foreign_key_ids().await?;
    if foreign.is_empty() {
        return Ok(());
    }
    Err(StartError::Invalid {
        what: "store.key_file",
        detail: format!(
            "the store holds values sealed with key id(s) {} that neither key_file nor              previous_key_files provides (they have key id(s) {}); configure the key that sealed              the store, or add it to previous_key_files and run `store rekey`",
            foreign.join(", "),
            store.key_ids().join(", ")
        ),
    })
}

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
    running: Mutex<Config>,
    proxy: Arc<Proxy>,
    oauth: Arc<OAuthClient>,
    admin: Arc<Admin>,
    public: Option<Arc<Public>>,
    public_cert: Option<Arc<Certificate>>,
    proxy_cert: Option<Arc<Certificate>>,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
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
        }
        self.outbox.targets.store(Arc::new(targets(&new)));
        // The addon signing key travels in the outbox's targets above; the settings keys other
        // branches add are stored here the same way, from `new`.
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
    // The settings pages (B9) are built once with the public listener.
    keep!("addon.settings_url", addon.settings_url);
    keep!("addon.settings_session_ttl", addon.settings_session_ttl);
    keep!(
        "addon.settings_frame_ancestors",
        addon.settings_frame_ancestors
    );
    keep!(
        "shoptet.settings_redirect_uri",
        shoptet.settings_redirect_uri
    );
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
