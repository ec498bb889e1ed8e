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
pub mod secret;
pub mod store;
