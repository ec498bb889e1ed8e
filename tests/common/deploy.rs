//! A small harness for the installation tests: a simulator, an addon (two webhook receivers), a
//! store in a temporary directory and a config pointing the proxy at all of them. Every port is
//! OS-assigned; the proxy runs in-process via `app::start`.

#![allow(dead_code)] // each test binary uses a different subset

use super::binary::Served;
use shoptet_proxy::app::{self, Running};
use shoptet_proxy::config::Config;
use shoptet_proxy::sim::testing::{TestClient, TestResponse, WebhookReceiver};
use shoptet_proxy::sim::{SimConfig, SimHandle, Simulator};
use shoptet_proxy::store::{generate_key_base64, Installation, Keyring, Store};
use std::path::PathBuf;

/// The admin bearer token the harness configures.
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";

pub struct Deployment {
    pub sim: SimHandle,
    pub dir: tempfile::TempDir,
    /// `[addon] events_url`.
    pub events: WebhookReceiver,
    /// `[addon] webhooks_url`.
    pub hooks: WebhookReceiver,
    pub http: TestClient,
    pub store_url: String,
}

impl Deployment {
    /// A simulator with default knobs and a SQLite store.
    pub async fn new() -> Deployment {
        Deployment::with_store(None).await
    }

    /// `store_url` None = a fresh SQLite file in the temporary directory.
    pub async fn with_store(store_url: Option<String>) -> Deployment {
        // Quiet unless RUST_LOG asks; output is captured per test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let sim = Simulator::start(SimConfig::default(), ([127, 0, 0, 1], 0).into())
            .await
            .expect("simulator starts");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("store.key"), generate_key_base64()).expect("write key");
        std::fs::write(dir.path().join("admin-token"), ADMIN_TOKEN).expect("write admin token");
        let store_url = store_url
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("proxy.db").display()));
        Deployment {
            sim,
            dir,
            events: WebhookReceiver::start().await,
            hooks: WebhookReceiver::start().await,
            http: TestClient::new(),
            store_url,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The config file's text: everything on loopback port 0, allowlists open, fast outbox
    /// retries. Also written to `config.toml` in the directory for the binary's tests.
    pub fn config_toml(&self) -> String {
        let sim = self.sim.base_url();
        let dir = self.dir.path().display();
        format!(
            r#"[shoptet]
api_url = "{sim}"
partner_url = "{sim}"
client_id = "sim-client"
client_secret = "sim-secret"
redirect_uri = "http://127.0.0.1/install"
[proxy]
listen = "127.0.0.1:0"
[public]
listen = "127.0.0.1:0"
install_allow = []
webhook_allow = []
[addon]
events_url = "{events}"
webhooks_url = "{hooks}"
retry_max = "200ms"
[admin]
listen = "127.0.0.1:0"
token_file = "{dir}/admin-token"
[store]
url = "{store}"
key_file = "{dir}/store.key"
"#,
            events = self.events.url("/events"),
            hooks = self.hooks.url("/hooks"),
            store = self.store_url,
        )
    }

    /// Writes `config.toml` and returns its path.
    pub fn write_config(&self) -> PathBuf {
        let path = self.path("config.toml");
        std::fs::write(&path, self.config_toml()).expect("write config");
        path
    }

    pub fn config(&self) -> Config {
        Config::load_from(Some(&self.write_config()), &[]).expect("test config is valid")
    }

    /// A store handle of its own on the harness's store.
    pub async fn store(&self) -> Store {
        let keys = Keyring::load(&self.path("store.key"), &[]).expect("key file loads");
        Store::open(&self.store_url, keys)
            .await
            .expect("store opens")
    }

    /// The stored installation of `eshop_id`; panics if there is none.
    pub async fn installation(&self, eshop_id: u64) -> Installation {
        self.store()
            .await
            .get(eshop_id)
            .await
            .expect("store read")
            .expect("installation stored")
    }

    /// Starts a proxy on the harness's store with the default config.
    pub async fn start(&self) -> Proxy {
        self.start_with(self.config()).await
    }

    pub async fn start_with(&self, cfg: Config) -> Proxy {
        let store = self.store().await;
        let running = app::start(cfg, store).await.expect("proxy starts");
        Proxy { running }
    }

    /// Shoptet installs the addon: the simulator calls the proxy's install URL with a fresh code.
    /// Returns the simulator's answer (`installStatus` or `installError` included).
    pub async fn install(&self, proxy: &Proxy, eshop_id: u64) -> serde_json::Value {
        let r = self
            .http
            .post_json(
                &format!("{}/sim/eshops", self.sim.base_url()),
                &[],
                &serde_json::json!({"eshopId": eshop_id, "installUrl": proxy.public_url("/install")}),
            )
            .await;
        assert_eq!(r.status, 200, "sim install: {}", r.text());
        r.json()
    }

    /// Tokens the simulator minted for `eshop_id` so far.
    pub fn minted(&self, eshop_id: u64) -> u64 {
        super::minted(&self.sim, eshop_id)
    }

    /// `shoptet-proxy serve` on the harness's config with JSON logs at `rust_log`, `env` added.
    pub fn serve(&self, rust_log: &str, env: &[(&str, &str)]) -> Served {
        let mut env = env.to_vec();
        env.push(("SHOPTET_PROXY_LOG__FORMAT", "json"));
        Served::start_with(&self.write_config(), rust_log, &env)
    }

    /// `POST /sim/...` on the simulator's control plane.
    pub async fn sim_post(&self, path: &str, body: serde_json::Value) -> TestResponse {
        self.http
            .post_json(&format!("{}{path}", self.sim.base_url()), &[], &body)
            .await
    }
}

/// One running proxy instance.
pub struct Proxy {
    pub running: Running,
}

impl Proxy {
    pub fn public_url(&self, path: &str) -> String {
        let addr = self.running.public_addr.expect("public listener is on");
        format!("http://{addr}{path}")
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.proxy_addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr)
    }

    /// `GET /api/eshop` for `eshop_id` through the proxy.
    pub async fn api_get(&self, http: &TestClient, eshop_id: u64) -> TestResponse {
        http.get(
            &self.api_url("/api/eshop"),
            &[("x-shoptet-eshop-id", &eshop_id.to_string())],
        )
        .await
    }

    pub async fn stop(self) {
        self.running.shutdown().await;
    }
}
