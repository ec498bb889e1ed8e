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
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
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
        metrics: metrics.clone(),
        tracer,
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

fn pages_config(cfg: &Config) -> PagesConfig {
    PagesConfig {
        settings_url: cfg.addon.settings_url.clone(),
        session_ttl: cfg.addon.settings_session_ttl,
        frame_ancestors: cfg.addon.settings_frame_ancestors.clone(),
        creds: Credentials {
            client_id: cfg.shoptet.client_id.clone(),
            client_secret: cfg.shoptet.client_secret.clone(),
            redirect_uri: cfg.shoptet.settings_redirect_uri.clone(),
        },
        oauth_timeout: cfg.proxy.upstream_timeout,
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
                pages_config(&app.cfg),
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

mod serve;
pub use serve::{serve, shutdown_signal, ReloadError, Reloader};
