//! Assembly: turns a validated [`Config`] and a store into running listeners.
//!
//! Everything that can fail on bad configuration (TLS files, CA file, store, key) fails here,
//! before any port is bound. Tests and `demo` use [`start`] in-process with port 0 and read the
//! bound addresses from [`Running`]; `serve` adds signals and systemd readiness around it.

use crate::admin::Admin;
use crate::config::Config;
use crate::flow::{Flow, FlowConfig};
use crate::metrics::Metrics;
use crate::oauth::OAuthClient;
use crate::proxy::{Proxy, ProxySettings};
use crate::public::Public;
use crate::server::{self, Shutdown};
use crate::store::{Keyring, Store, StoreError};
use crate::tokens::{TokenCache, TokenConfig};
use crate::upstream;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] upstream::TlsSetupError),
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
    ready: AtomicBool,
}

impl App {
    /// Ready = listeners bound and not draining; the store is checked per probe.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutdown.is_triggered()
    }
}

/// Running listeners of one proxy instance.
pub struct Running {
    pub app: Arc<App>,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub public_addr: Option<SocketAddr>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops accepting, drains (bounded by `shutdown_timeout`), and returns when all listeners
    /// are done.
    pub async fn shutdown(mut self) {
        self.app.shutdown.trigger();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Waits until the listeners stop (after [`Shutdown::trigger`] on `app.shutdown`).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            listener,
            addr,
            source,
        })
}

/// Builds the application on an opened store and binds its listeners.
pub async fn start(cfg: Config, store: Store) -> Result<Running, StartError> {
    upstream::install_crypto_provider();
    let metrics = Arc::new(Metrics::new());
    let client = upstream::client(cfg.shoptet.ca_file.as_deref(), cfg.shoptet.connect_timeout)?;
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
    let tokens = Arc::new(TokenCache::new(
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
            eshop_header: cfg.proxy.eshop_header.clone(),
            max_replay_body: cfg.proxy.max_replay_body,
            max_retry_wait: cfg.proxy.max_retry_wait,
            upstream_timeout: cfg.proxy.upstream_timeout,
            client_keys: cfg.proxy.client_keys.clone(),
        },
        client,
        tokens,
        flow,
        metrics: metrics.clone(),
    });

    let public_tls = match (&cfg.public.tls_cert_file, &cfg.public.tls_key_file) {
        (Some(cert), Some(key)) => Some(crate::public::tls_acceptor(cert, key).map_err(
            |detail| StartError::Invalid {
                what: "public.tls_cert_file/tls_key_file",
                detail,
            },
        )?),
        _ => None,
    };

    let proxy_listener = bind("proxy", cfg.proxy.listen).await?;
    let admin_listener = bind("admin", cfg.admin.listen).await?;
    let public_listener = match cfg.public.listen {
        Some(addr) => Some(bind("public", addr).await?),
        None => None,
    };
    let public_addr = match &public_listener {
        Some(l) => Some(l.local_addr().map_err(|source| StartError::Bind {
            listener: "public",
            addr: cfg.public.listen.unwrap_or(cfg.proxy.listen),
            source,
        })?),
        None => None,
    };
    let proxy_addr = proxy_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            listener: "proxy",
            addr: cfg.proxy.listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            listener: "admin",
            addr: cfg.admin.listen,
            source,
        })?;

    let drain = cfg.proxy.shutdown_timeout;
    let app = Arc::new(App {
        cfg,
        store,
        metrics,
        oauth,
        proxy,
        shutdown: Shutdown::new(),
        ready: AtomicBool::new(false),
    });
    let mut tasks = JoinSet::new();
    {
        let proxy = app.proxy.clone();
        tasks.spawn(server::serve(
            proxy_listener,
            None,
            move |req, _peer| {
                let proxy = proxy.clone();
                async move { proxy.handle(req).await }
            },
            app.shutdown.clone(),
            drain,
        ));
    }
    {
        let admin = Arc::new(Admin::new(app.clone()));
        tasks.spawn(server::serve(
            admin_listener,
            None,
            move |req, _peer| {
                let admin = admin.clone();
                async move { admin.handle(req).await }
            },
            app.shutdown.clone(),
            drain,
        ));
    }
    let wake = Arc::new(tokio::sync::Notify::new());
    if let Some(listener) = public_listener {
        let public = Arc::new(Public::new(app.clone(), wake.clone()));
        tasks.spawn(server::serve(
            listener,
            public_tls,
            move |req, peer| {
                let public = public.clone();
                async move { public.handle(req, peer).await }
            },
            app.shutdown.clone(),
            drain,
        ));
    }
    tasks.spawn(crate::outbox::run(app.clone(), wake));
    app.ready.store(true, Ordering::Release);
    tracing::info!(%proxy_addr, %admin_addr, public_addr = ?public_addr, "listening");
    Ok(Running {
        app,
        proxy_addr,
        admin_addr,
        public_addr,
        tasks,
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

/// `shoptet-proxy serve`: runs until SIGTERM or SIGINT, then drains and returns.
pub async fn serve(cfg: Config) -> Result<(), StartError> {
    let store = open_store(&cfg).await?;
    let running = start(cfg, store).await?;
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let shutdown = running.app.shutdown.clone();
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = shutdown.wait() => {}
    }
    tracing::info!("shutting down: draining in-flight requests");
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn notify_systemd(state: &[sd_notify::NotifyState]) {
    // Outside systemd NOTIFY_SOCKET is unset and this does nothing.
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
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
