//! Everything that accepts connections: the server plumbing shared by all listeners
//! ([`server`]: HTTP/1.1 + h2c, limits, graceful drain), the admin listener ([`admin`]), the
//! public listener ([`public`]: Shoptet's install callback and webhooks), and the TLS setup of
//! the listeners that offer it ([`tls`]).
pub mod admin;
pub mod public;
pub mod server;
pub mod tls;
