//! Shoptet's limits, kept on the proxy's side: how many requests go upstream at once and who
//! waits ([`flow`]), and the model of each e-shop's leaky bucket that paces them ([`bucket`]).
pub mod bucket;
pub mod flow;
