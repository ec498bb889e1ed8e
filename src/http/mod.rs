//! HTTP plumbing shared by every part: the body types that travel through the proxy and the
//! pooled rustls client that reaches Shoptet, the proxy's own connection pool for the API (each
//! connection driven by the request holding it), and HTML escaping for the pages it renders.
pub mod body;
pub mod client;
pub mod html;
pub mod upstream;
