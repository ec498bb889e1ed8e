//! HTTP plumbing shared by every part: the body types that travel through the proxy and the
//! pooled rustls client that reaches Shoptet, and HTML escaping for the pages it renders.
pub mod body;
pub mod client;
pub mod html;
