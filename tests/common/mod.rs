//! The one test harness: every integration test (and `benches/pacing.rs`) takes its helpers from
//! here, so each exists once. This file holds the in-process proxy ([`Harness`]) and the helpers
//! every kind of test shares; the submodules hold the rest:
//!
//! - [`deploy`]: a simulator, an addon (webhook receivers) and config/key files on disk, with
//!   proxies started in-process from that config (installation, webhook, admin, replica tests);
//! - [`binary`]: the real `shoptet-proxy serve` as a child process, its production-like config
//!   with secret files, and the external checkers (promtool, systemd-analyze);
//! - [`load`]: clients hammering an e-shop through the proxy (pacing test and bench);
//! - [`pg`]: the throwaway PostgreSQL of `tests/pg.sh`.
//!
//! [`Harness::start`] brings up a simulator with the given knobs, an encrypted SQLite store in a
//! temporary directory, and the proxy's listeners on OS-assigned ports, configured exactly as an
//! operator would (`Config::load_from` defaults, then the test's tweaks). Tests then tag requests,
//! install e-shops, and assert on what the client got and on `sim.stats()` / `/sim/requests`.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod binary;
pub mod cluster;
pub mod deploy;
pub mod load;
pub mod pg;

use bytes::Bytes;
use http::Method;
use serde_json::Value;
use shoptet_proxy::app::{self, Running};
use shoptet_proxy::config::Config;
use shoptet_proxy::listeners::server::Limits;
use shoptet_proxy::secret::Secret;
use shoptet_proxy::sim::testing::{TestClient, TestResponse};
use shoptet_proxy::sim::{SimConfig, SimHandle, SimInstallation, SimStats, Simulator};
use shoptet_proxy::store::{Keyring, NewInstallation, Store};
use shoptet_proxy::telemetry::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub const LOOPBACK: &str = "127.0.0.1:0";

/// The default e-shop of a test (the id Shoptet's documentation uses).
pub const ESHOP: u64 = 222651;

/// A simulator with Shoptet's documented limits; tests switch off what would slow them down.
pub fn sim_config() -> SimConfig {
    SimConfig::default()
}

pub struct Harness {
    pub sim: SimHandle,
    pub store: Store,
    store_key: [u8; 32],
    pub cfg: Config,
    pub client: TestClient,
    running: Option<Running>,
    limits: Limits,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// The proxy configuration a test starts from: defaults, pointed at `sim`, loopback port 0.
/// `env` is passed to the loader as the whole environment (`SHOPTET_PROXY_*` overrides).
pub fn base_config(
    sim: &SimHandle,
    sim_cfg: &SimConfig,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> Config {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut cfg = Config::load_from(None, &env).expect("config loads");
    let url: url::Url = sim.base_url().parse().expect("simulator URL");
    cfg.shoptet.api_url = url.clone();
    cfg.shoptet.partner_url = url;
    cfg.shoptet.client_id = sim_cfg.client_id.clone();
    cfg.shoptet.client_secret = Some(Secret::new(sim_cfg.client_secret.clone()));
    let lo: SocketAddr = LOOPBACK.parse().expect("loopback address");
    cfg.proxy.listen = lo;
    cfg.admin.listen = lo;
    cfg.public.listen = None;
    cfg.store.url = format!("sqlite://{}", dir.join("proxy.db").display());
    cfg.store.key_file = None;
    cfg
}

impl Harness {
    /// Simulator with `sim_cfg`, proxy with the default configuration.
    pub async fn start(sim_cfg: SimConfig) -> Harness {
        Harness::with(sim_cfg, |_| {}).await
    }

    /// Simulator with `sim_cfg`, proxy configuration changed by `tweak` before start.
    pub async fn with(sim_cfg: SimConfig, tweak: impl FnOnce(&mut Config)) -> Harness {
        Harness::with_env(sim_cfg, &[], tweak).await
    }

    /// Like [`Harness::with`], the configuration loaded with `env` as its environment.
    pub async fn with_env(
        sim_cfg: SimConfig,
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut Config),
    ) -> Harness {
        let sim = Simulator::start(sim_cfg.clone(), LOOPBACK.parse().expect("addr"))
            .await
            .expect("simulator starts");
        Harness::around(sim, &sim_cfg, env, tweak).await
    }

    /// A simulator with `sim_cfg` and a proxy whose listeners have `limits` (short timeouts,
    /// few connection slots) instead of the production ones.
    pub async fn with_limits(sim_cfg: SimConfig, limits: Limits) -> Harness {
        let sim = Simulator::start(sim_cfg.clone(), LOOPBACK.parse().expect("addr"))
            .await
            .expect("simulator starts");
        Harness::launch(sim, &sim_cfg, &[], |_| {}, limits).await
    }

    /// A proxy in front of an already running simulator (for tests that need its address or
    /// certificate before configuring the proxy). `sim_cfg` is what it was started with.
    pub async fn around(
        sim: SimHandle,
        sim_cfg: &SimConfig,
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut Config),
    ) -> Harness {
        Harness::launch(sim, sim_cfg, env, tweak, Limits::default()).await
    }

    async fn launch(
        sim: SimHandle,
        sim_cfg: &SimConfig,
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut Config),
        limits: Limits,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = base_config(&sim, sim_cfg, dir.path(), env);
        tweak(&mut cfg);
        let key: [u8; 32] = rand::random();
        let store = Store::open(&cfg.store.url, Keyring::from_keys(key, Vec::new()))
            .await
            .expect("store opens");
        let client = match sim.ca_cert_pem() {
            Some(pem) => TestClient::with_ca_pem(&pem),
            None => TestClient::new(),
        };
        let running = app::start_with_limits(cfg.clone(), store.clone(), limits)
            .await
            .expect("proxy starts");
        Harness {
            limits,
            proxy_addr: running.proxy_addr,
            admin_addr: running.admin_addr,
            running: Some(running),
            sim,
            store,
            store_key: key,
            cfg,
            client,
            _dir: dir,
        }
    }

    /// Installs `eshop_id` in the simulator and imports it into the proxy's store.
    pub async fn install(&self, eshop_id: u64) -> SimInstallation {
        let inst = self.sim.create_eshop(eshop_id);
        import(&self.store, eshop_id, &inst.oauth_token).await;
        inst
    }

    /// Stops the proxy and starts a new one with the same configuration, on the same database
    /// file opened afresh (with the same key), as a restarted process would.
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.store = Store::open(
            &self.cfg.store.url,
            Keyring::from_keys(self.store_key, Vec::new()),
        )
        .await
        .expect("store reopens");
        let running = app::start_with_limits(self.cfg.clone(), self.store.clone(), self.limits)
            .await
            .expect("proxy restarts");
        self.proxy_addr = running.proxy_addr;
        self.admin_addr = running.admin_addr;
        self.running = Some(running);
    }

    /// The running proxy's metrics (queue length, in-flight) for tests that wait on its state.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.running
            .as_ref()
            .expect("the proxy is running")
            .app
            .metrics
            .clone()
    }

    /// `http://<proxy>{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy_addr)
    }

    /// `http://<proxy>/eshops/{id}{path}`: the path-prefix tagging style.
    pub fn eshop_url(&self, eshop_id: u64, path: &str) -> String {
        self.url(&format!("/eshops/{eshop_id}{path}"))
    }

    /// `<simulator base>{path}`.
    pub fn sim_url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    pub fn stats(&self) -> SimStats {
        self.sim.stats()
    }

    /// getAccessToken calls the simulator answered so far.
    pub fn token_calls(&self) -> u64 {
        self.sim.stats().calls.get_access_token
    }

    /// Tokens minted for `eshop_id` so far.
    pub fn minted(&self, eshop_id: u64) -> u64 {
        minted(&self.sim, eshop_id)
    }

    /// A request through the proxy, tagged by header.
    pub async fn call(
        &self,
        method: Method,
        eshop_id: u64,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        let id = eshop_id.to_string();
        let mut h: Vec<(&str, &str)> = vec![("x-shoptet-eshop-id", &id)];
        h.extend_from_slice(headers);
        self.client.request(method, &self.url(path), &h, body).await
    }

    /// `GET path` through the proxy, tagged by header.
    pub async fn get(&self, eshop_id: u64, path: &str) -> TestResponse {
        self.call(Method::GET, eshop_id, path, &[], Bytes::new())
            .await
    }

    /// The simulator's request log, oldest first: for `eshop_id`, or all of it. Requests made
    /// with a revoked token are logged without an e-shop id (the simulator forgets revoked
    /// tokens), so tests of rejected tokens read the whole log.
    pub async fn sim_requests(&self, eshop_id: Option<u64>) -> Vec<Value> {
        let query = eshop_id
            .map(|id| format!("?eshopId={id}"))
            .unwrap_or_default();
        let r = self
            .client
            .get(&self.sim_url(&format!("/sim/requests{query}")), &[])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["requests"]
            .as_array()
            .cloned()
            .expect("requests is an array")
    }

    /// A `POST /sim/...` control call; panics unless it answers 2xx.
    /// Revokes every API token the simulator issued for `eshop_id` (the next call meets a 401).
    pub async fn revoke_tokens(&self, eshop_id: u64) {
        self.sim_control(&format!("/sim/eshops/{eshop_id}/revoke-tokens"))
            .await;
    }

    /// A tagged POST of a JSON `body` to `path`.
    pub async fn post_json(
        &self,
        eshop_id: u64,
        path: &str,
        body: impl Into<Bytes>,
    ) -> TestResponse {
        self.call(
            Method::POST,
            eshop_id,
            path,
            &[("content-type", "application/json")],
            body,
        )
        .await
    }

    pub async fn sim_control(&self, path: &str) -> Value {
        let r = self
            .client
            .request(Method::POST, &self.sim_url(path), &[], Bytes::new())
            .await;
        assert!(r.status.is_success(), "{path}: {}", r.text());
        r.json()
    }

    /// Stops the proxy and the simulator.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.sim.clone().shutdown().await;
    }
}

/// Imports an installation of `eshop_id` with `oauth_token` into `store`, as `eshops import`
/// or the install callback would.
pub async fn import(store: &Store, eshop_id: u64, oauth_token: &str) {
    store
        .upsert_installation(
            &NewInstallation {
                eshop_id,
                eshop_url: Some(format!("https://{eshop_id}.myshoptet.com/")),
                contact_email: Some(format!("owner{eshop_id}@example.com")),
                oauth_token: Secret::new(oauth_token.to_owned()),
            },
            None,
        )
        .await
        .expect("store upsert");
}

/// Tokens `sim` minted for `eshop_id` so far.
pub fn minted(sim: &SimHandle, eshop_id: u64) -> u64 {
    sim.stats()
        .tokens_minted
        .get(&eshop_id)
        .copied()
        .unwrap_or(0)
}

/// A stand-in HTTP/1 server on a loopback port (an OAuth server, an API or an addon that
/// misbehaves as a test needs): `handle` answers every request. Returns its base URL.
pub async fn stand_in<F, Fut>(handle: F) -> String
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<http_body_util::Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(LOOPBACK).await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            let svc = hyper::service::service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    url
}

/// Asserts a proxy-made error: status, `errorCode`, and the exact envelope shape.
pub fn assert_proxy_error(r: &TestResponse, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{code}: {}", r.text());
    let v = r.json();
    let obj = v.as_object().expect("envelope is an object");
    assert_eq!(obj.len(), 2, "envelope has data and errors only: {v}");
    assert!(v["data"].is_null(), "{v}");
    let errors = v["errors"].as_array().expect("errors is an array");
    assert_eq!(errors.len(), 1, "{v}");
    let e = errors[0].as_object().expect("error item is an object");
    assert_eq!(e.len(), 3, "{v}");
    assert_eq!(e["errorCode"], code, "{v}");
    assert_eq!(e["instance"], "shoptet-proxy", "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
}

/// Waits until `cond` holds (checked every few milliseconds); panics after 10 s. This awaits an
/// observable event, it does not guess how long something takes.
pub async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The `email` of every order at `base` (the simulator, or a proxy) read page by page with
/// `headers` (a token, or an e-shop tag): tests mark each order they create with a unique one.
pub async fn order_emails(http: &TestClient, base: &str, headers: &[(&str, &str)]) -> Vec<String> {
    let mut emails = Vec::new();
    for page in 1.. {
        let r = http
            .get(
                &format!("{base}/api/orders?page={page}&itemsPerPage=100"),
                headers,
            )
            .await;
        assert_eq!(r.status, 200, "orders page {page}: {}", r.text());
        let v = r.json();
        for o in v["data"]["orders"].as_array().into_iter().flatten() {
            if let Some(e) = o["email"].as_str() {
                emails.push(e.to_owned());
            }
        }
        if v["data"]["paginator"]["pageCount"].as_u64() <= Some(page) {
            break;
        }
    }
    emails
}
