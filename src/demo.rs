//! `shoptet-proxy demo`: the simulator and the proxy together, ready to curl (SPEC B6).
//!
//! Starts the simulator on a free loopback port, points a proxy with a throwaway SQLite store and a
//! generated key at it, installs one e-shop, and prints copy-paste commands. It uses the configured
//! listen addresses (defaults 127.0.0.1:8080 and :9090) so the printed lines match the README.

use crate::app::{self, StartError};
use crate::config::Config;
use crate::secret::Secret;
use crate::sim::{SimConfig, Simulator};
use crate::store::{Keyring, NewInstallation, Store};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The e-shop the demo installs (Shoptet's own documentation uses this id).
pub const DEMO_ESHOP: u64 = 222651;

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
}

/// Removes the throwaway store when the demo ends, however it ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn run(mut cfg: Config) -> Result<(), DemoError> {
    let sim_cfg = SimConfig::default();
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let sim = Simulator::start(sim_cfg.clone(), loopback).await?;
    let installation = sim.create_eshop(DEMO_ESHOP);

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
    cfg.store.url = format!("sqlite://{}", dir.0.join("demo.db").display());

    let store = Store::open(&cfg.store.url, Keyring::generate()).await?;
    store
        .upsert_installation(
            &NewInstallation {
                eshop_id: DEMO_ESHOP,
                eshop_url: Some(format!("https://{DEMO_ESHOP}.myshoptet.com/")),
                contact_email: Some("owner@example.com".into()),
                oauth_token: Secret::new(installation.oauth_token),
            },
            None,
        )
        .await?;
    let running = app::start(cfg, store).await?;
    let p = running.proxy_addr;
    let a = running.admin_addr;
    let s = sim.base_url();
    println!(
        "shoptet-proxy demo is running (Ctrl-C stops it).\n\
         \n  simulated Shoptet:   {s}   (control plane: {s}/sim/stats)\
         \n  proxy listener:      http://{p}\
         \n  admin listener:      http://{a}\
         \n  installed e-shop:    {DEMO_ESHOP}\n\
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
