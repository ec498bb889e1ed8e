//! The proxy as a client of Shoptet: the partner OAuth server ([`oauth`]: code exchange,
//! getAccessToken), the API calls it makes on its own behalf ([`api`]), and webhook signatures
//! ([`signature`], Shoptet's HMAC-SHA1 scheme, also used to sign deliveries to the addon).
pub mod api;
pub mod oauth;
pub mod signature;
