//! shoptet-proxy: a token-managing authenticating reverse proxy for the Shoptet API.
//!
//! Data flows one way: request in → tag → slot → token → upstream → response out.
//!
//! | module | owns |
//! |---|---|
//! | [`proxy`] | the proxied request (tag, the one answer policy, forwarding) |
//! | [`limits`] | flow control (slots, FIFO queue) and leaky-bucket pacing |
//! | [`state`] | the per-e-shop runtime record and the token cache |
//! | [`shoptet`] | clients of Shoptet: partner OAuth, the API calls the proxy makes itself, signatures |
//! | [`listeners`] | server plumbing and the admin and public listeners |
//! | [`delivery`] | the durable outbox that POSTs events and webhooks to the addon |
//! | [`store`] | the encrypted installation store (SQLite, PostgreSQL) |
//! | [`config`], [`telemetry`], [`http`] | configuration; metrics, logs and traces; body types and the pooled client |
//! | [`app`], [`cli`], [`sim`] | assembly and `serve`; the command line; the Shoptet simulator |
//!
//! Lower modules never import higher ones: `main.rs` only parses the command line and calls in here.

/// Version string shown by `--version` and the build-info metric: crate version plus git commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SHOPTET_PROXY_GIT_COMMIT"),
    ")"
);
pub mod app;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod error;
pub mod http;
pub mod install;
pub mod limits;
pub mod listeners;
pub mod proxy;
pub mod secret;
pub mod shoptet;
pub mod sim;
pub mod state;
pub mod store;
pub mod telemetry;
