//! What the process knows about each e-shop while it runs: one record per e-shop ([`eshops`])
//! holding its token state ([`tokens`]: single-flight fetch, background refresh, backoff) and its
//! flow state ([`crate::limits`]).
pub mod eshops;
pub mod tokens;
