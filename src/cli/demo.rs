//! `shoptet-proxy demo`: the simulator and the proxy together, ready to curl (SPEC B6).
//!
//! Starts the simulator on a free loopback port, points a proxy with a throwaway SQLite store and a
//! generated key at it, and installs one e-shop the way Shoptet does: the simulator calls the
//! proxy's public `/install?code=` and the proxy exchanges the code. It uses the configured listen
//! addresses (defaults 127.0.0.1:8080, :9090, and :8081 for the public listener) so the printed
//! lines match the README; `[addon] events_url`/`webhooks_url` from the configuration or the
//! environment receive the "installed" event and webhooks, which is how the examples run.
//!
//! The settings page (SPEC B9) is on too: `[addon] settings_url` from the configuration, or else a
//! small page of the demo's own ([`super::demo_settings`]); the simulator's administration frames
//! the proxy's `/settings` link, and its URL is printed to open in a browser.

use crate::app::{self, StartError};
use crate::config::Config;
use crate::secret::Secret;
use crate::sim::{SimConfig, Simulator};
use crate::store::{Keyring, Store};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The e-shop the demo installs (Shoptet's own documentation uses this id).
pub const DEMO_ESHOP: u64 = 222651;
/// The public listener's address when the configuration leaves it off.
const DEMO_PUBLIC: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8081);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("simulator: {0}")]
    Sim(#[from] crate::sim::SimError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot create the demo directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("the simulated installation failed: {0}")]
    Install(String),
    #[error("the demo settings page cannot listen: {0}")]
    SettingsPage(std::io::Error),
}

/// Removes the throwaway store when the demo ends, however it ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn run(mut cfg: Config) -> Result<(), DemoError> {
    let public = *cfg.public.listen.get_or_insert(DEMO_PUBLIC);
    let public_url = format!("http://{public}");
    let settings_redirect = format!("{public_url}/settings/authorized");
    let sim_cfg = SimConfig {
        addon_webhook_url: Some(format!("{public_url}/webhooks")),
        settings_url: Some(format!(
            "{public_url}/settings?eshopId=#SHOP_ID#&language=#LANGUAGE#&code=#OAUTH_CODE#"
        )),
        settings_redirect_uri: Some(settings_redirect.clone()),
        ..SimConfig::default()
    };
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let sim = Simulator::start(sim_cfg.clone(), loopback).await?;

    let dir =
        TempDir(std::env::temp_dir().join(format!("shoptet-proxy-demo-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(|e| DemoError::Dir(dir.0.clone(), e))?;
    let sim_url: url::Url = sim.base_url().parse().map_err(|_| StartError::Invalid {
        what: "simulator URL",
        detail: sim.base_url(),
    })?;
    cfg.shoptet.api_url = sim_url.clone();
    cfg.shoptet.partner_url = sim_url;
    cfg.shoptet.client_id = sim_cfg.client_id.clone();
    cfg.shoptet.client_secret = Some(Secret::new(sim_cfg.client_secret.clone()));
    cfg.shoptet.redirect_uri = format!("{public_url}/install");
    cfg.shoptet.settings_redirect_uri = settings_redirect;
    if cfg.addon.settings_url.is_none() {
        let page = super::demo_settings::start()
            .await
            .map_err(DemoError::SettingsPage)?;
        cfg.addon.settings_url = page.parse().ok();
    }
    // The simulated administration is on loopback, not on *.myshoptet.com.
    cfg.addon
        .settings_frame_ancestors
        .push(sim.base_url().trim_end_matches('/').to_owned());
    cfg.store.url = format!("sqlite://{}", dir.0.join("demo.db").display());
    // Loopback callers only; Shoptet's real source ranges do not apply here.
    cfg.public.install_allow.clear();
    cfg.public.webhook_allow.clear();

    let store = Store::open(&cfg.store.url, Keyring::generate()).await?;
    let running = app::start(cfg, store).await?;
    install(&running.app, &sim.base_url(), &public_url).await?;
    let p = running.proxy_addr;
    let a = running.admin_addr;
    let s = sim.base_url();
    println!(
        "shoptet-proxy demo is running (Ctrl-C stops it).\n\
         \n  simulated Shoptet:   {s}   (control plane: {s}/sim/stats)\
         \n  proxy listener:      http://{p}\
         \n  admin listener:      http://{a}\
         \n  public listener:     {public_url}   (Shoptet's install and webhook calls)\
         \n  installed e-shop:    {DEMO_ESHOP}\
         \n  settings page:       {s}/eshops/{DEMO_ESHOP}/admin/settings?language=cs   (open it in a browser)\n\
         \nTry:\
         \n  curl -s -H 'X-Shoptet-Eshop-Id: {DEMO_ESHOP}' http://{p}/api/eshop\
         \n  curl -s 'http://{p}/eshops/{DEMO_ESHOP}/api/orders?page=1&itemsPerPage=5'\
         \n  curl -s -X POST -H 'Content-Type: application/json' \\\
         \n       -d '{{\"data\":{{\"email\":\"buyer@example.com\"}}}}' http://{p}/eshops/{DEMO_ESHOP}/api/orders\
         \n  curl -s http://{a}/admin/eshops\
         \n  curl -s http://{a}/metrics | grep shoptet_proxy_token_fetches\
         \n  curl -s {s}/sim/stats\n"
    );
    let shutdown = running.app.shutdown.clone();
    tokio::select! {
        _ = app::shutdown_signal() => {}
        _ = shutdown.wait() => {}
    }
    running.shutdown().await;
    sim.shutdown().await;
    Ok(())
}

/// Asks the simulator to install the demo e-shop through the proxy's `/install`, as Shoptet would.
async fn install(app: &app::App, sim_url: &str, public_url: &str) -> Result<(), DemoError> {
    let body =
        serde_json::json!({"eshopId": DEMO_ESHOP, "installUrl": format!("{public_url}/install")});
    let req = http::Request::post(format!("{sim_url}/sim/eshops"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(crate::http::body::ReqBody::full(bytes::Bytes::from(
            body.to_string(),
        )))
        .map_err(|e| DemoError::Install(e.to_string()))?;
    let resp = app
        .proxy
        .client
        .request(req)
        .await
        .map_err(|e| DemoError::Install(e.to_string()))?;
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| DemoError::Install(e.to_string()))?
        .to_bytes();
    let answer: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| DemoError::Install(e.to_string()))?;
    match answer["installStatus"].as_u64() {
        Some(200) => Ok(()),
        _ => Err(DemoError::Install(format!(
            "the proxy's /install did not answer 200: {}",
            answer["installError"]
                .as_str()
                .unwrap_or("see the log above")
        ))),
    }
}
