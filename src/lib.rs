//! shoptet-proxy: a token-managing authenticating reverse proxy for the Shoptet API.
//!
//! Data flows one way: request in → tag → token → upstream → response out.
//! Each module owns one concern; `main.rs` only parses the command line and calls in here.

/// Version string shown by `--version` and the build-info metric: crate version plus git commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SHOPTET_PROXY_GIT_COMMIT"),
    ")"
);
pub mod admin;
pub mod app;
pub mod body;
pub mod bucket;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod error;
pub mod eshops;
pub mod flow;
pub mod logging;
pub mod metrics;
pub mod oauth;
pub mod outbox;
pub mod proxy;
pub mod public;
pub mod secret;
pub mod server;
pub mod shoptet_api;
pub mod signature;
pub mod sim;
pub mod store;
pub mod tag;
pub mod tokens;
pub mod upstream;
