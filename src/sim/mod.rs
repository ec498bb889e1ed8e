//! The Shoptet simulator: Part A of SPEC.md on loopback, for tests, benches and addon developers.
//!
//! One listener (plain HTTP or HTTPS with a generated certificate, HTTP/1.1 and HTTP/2) serves
//! the partner OAuth server (`/action/ApiOAuthServer/...`, see [`oauth`]), the API (`/api/...`,
//! see [`api`]), each e-shop's own OAuth server and simulated administration (`/eshops/{id}/...`,
//! see [`eshop_oauth`] and [`admin_page`]) and the control plane (`/sim/...`, see [`control`],
//! whose doc comment lists every route). The API hot path touches only sharded maps, atomics and per-e-shop short critical
//! sections, so one core serves tens of thousands of trivial requests per second.

mod admin_page;
mod api;
mod bucket;
mod cli;
mod config;
mod control;
mod endpoints;
mod entities;
mod eshop_oauth;
mod oauth;
mod spelling;
mod state;
pub mod testing;
mod util;
mod webhooks;

pub use cli::{run_cli, SimArgs, SimSettingsArgs};
pub use config::SimConfig;
pub use state::{CallStats, EshopStats, SimStats};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use state::State;

/// How long `shutdown()` lets open connections finish before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Failure to start the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// The answer to "drop this connection": the service fails, so hyper closes the connection (or
/// resets the HTTP/2 stream) without writing a response.
#[derive(Debug, thiserror::Error)]
#[error("simulated connection drop")]
pub(crate) struct SimDrop;

pub(crate) type Body = Full<Bytes>;
pub(crate) type HandlerResult = Result<Response<Body>, SimDrop>;

/// One installation of the addon on an e-shop: what Shoptet hands to the addon.
#[derive(Clone)]
pub struct SimInstallation {
    pub eshop_id: u64,
    /// One-time code for `GET <install-url>?code=` and the token exchange.
    pub code: String,
    /// The long-lived OAuth access token the code exchanges to.
    pub oauth_token: String,
}

impl std::fmt::Debug for SimInstallation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimInstallation")
            .field("eshop_id", &self.eshop_id)
            .field("code", &"<redacted>")
            .field("oauth_token", &"<redacted>")
            .finish()
    }
}

/// Starts simulators.
pub struct Simulator;

impl Simulator {
    /// Binds `listen` (port 0 picks a free port) and serves until [`SimHandle::shutdown`].
    pub async fn start(cfg: SimConfig, listen: SocketAddr) -> Result<SimHandle, SimError> {
        let tls = if cfg.tls { Some(tls_setup()?) } else { None };
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: listen,
            source,
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base_url = format!("{scheme}://{addr}");
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let ca_pem = tls.as_ref().map(|(_, pem)| pem.clone());
        let spelling = spelling::shoptet_spelling().await;
        let state = Arc::new(State::new(cfg, base_url, spelling, shutdown_rx.clone()));
        let acceptor = tls.map(|(a, _)| a);
        let task = tokio::spawn(accept_loop(listener, state.clone(), acceptor, shutdown_rx));
        Ok(SimHandle {
            state,
            addr,
            ca_pem,
            ctl: Arc::new(Control {
                shutdown_tx,
                task: Mutex::new(Some(task)),
            }),
        })
    }
}

struct Control {
    shutdown_tx: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A running simulator. Cloning is cheap; dropping does not stop the server, `shutdown()` does.
#[derive(Clone)]
pub struct SimHandle {
    state: Arc<State>,
    addr: SocketAddr,
    ca_pem: Option<String>,
    ctl: Arc<Control>,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://` when TLS is on. Both the OAuth server and the API
    /// live under it.
    pub fn base_url(&self) -> String {
        self.state.base_url.clone()
    }

    /// PEM of the self-signed certificate (valid for 127.0.0.1 and localhost) when TLS is on.
    pub fn ca_cert_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// Creates (or re-installs) an e-shop installation, like `POST /sim/eshops`.
    pub fn create_eshop(&self, eshop_id: u64) -> SimInstallation {
        self.state.install(Some(eshop_id))
    }

    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// Changes knobs at runtime (`tls` is fixed at start and ignored here).
    pub fn set_config(&self, f: impl FnOnce(&mut SimConfig)) {
        self.state.update_config(f);
    }

    /// Stops accepting, lets open connections finish for up to 2 s, stops webhook retries.
    pub async fn shutdown(self) {
        self.ctl.shutdown_tx.send_replace(true);
        let task = self.ctl.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

fn tls_setup() -> Result<(tokio_rustls::TlsAcceptor, String), SimError> {
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| SimError::Tls(e.to_string()))?;
    let pem = ck.cert.pem();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SimError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| SimError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), pem))
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let ip_counter = state.ip_counter(peer.ip());
        let st = state.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            dispatch(st.clone(), ip_counter.clone(), req)
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match tls.clone() {
            None => {
                tokio::spawn(serve(builder, watcher, stream, service));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
                    {
                        serve(builder, watcher, s, service).await;
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

async fn serve<IO, S>(
    builder: auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    io: IO,
    service: S,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = SimDrop>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    // Connection errors (including simulated drops) only end that connection.
    let _ = watcher.watch(conn).await;
}

async fn dispatch(
    state: Arc<State>,
    ip_counter: Arc<std::sync::atomic::AtomicUsize>,
    req: Request<Incoming>,
) -> HandlerResult {
    let http1 = req.version() <= Version::HTTP_11;
    let mut result = route(&state, ip_counter, req).await;
    if let (true, Ok(resp)) = (http1, &mut result) {
        resp.extensions_mut().extend(state.spelling.clone());
    }
    result
}

async fn route(
    state: &Arc<State>,
    ip_counter: Arc<std::sync::atomic::AtomicUsize>,
    req: Request<Incoming>,
) -> HandlerResult {
    let path = req.uri().path();
    if path.starts_with("/api/") || path == "/api" {
        api::handle(state.clone(), ip_counter, req).await
    } else if path == "/action/ApiOAuthServer/token" {
        Ok(oauth::token(state, req).await)
    } else if path == "/action/ApiOAuthServer/getAccessToken" {
        Ok(oauth::get_access_token(state, req).await)
    } else if path.starts_with("/eshops/") {
        Ok(eshop_oauth::handle(state, req).await)
    } else if path.starts_with("/sim/") {
        Ok(control::handle(state, req).await)
    } else {
        Ok(util::plain_json(
            StatusCode::NOT_FOUND,
            r#"{"error":"not_found"}"#.into(),
        ))
    }
}
