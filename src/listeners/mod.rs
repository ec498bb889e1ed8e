//! Everything that accepts connections: the server plumbing shared by all listeners
//! ([`server`]: HTTP/1.1 + h2c, limits, graceful drain), the admin listener ([`admin`], its status
//! pages in [`status`]), the public listener ([`public`]: Shoptet's install callback and
//! webhooks; [`settings`]: the addon's settings pages behind the admin's verified identity),
//! reloadable TLS certificates ([`tls`]) and sockets passed by systemd ([`activation`]).
pub mod activation;
pub mod admin;
pub mod public;
pub mod server;
pub mod settings;
pub mod status;
pub mod tls;
