//! The installation lifecycle shared by the install callback, the admin API and the command
//! line: storing an installation and obtaining its webhook signature key (SPEC B5, B7).
//!
//! It sits above the request path ([`crate::proxy`]) because the key is fetched with the
//! e-shop's own token, and below the listeners and commands that call it.

use crate::error::ProxyError;
use crate::proxy::Proxy;
use crate::store::{NewInstallation, Store, StoreError};

/// What an import did about the e-shop's webhook signature key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureKey {
    /// A fresh key was obtained and stored; the old one no longer verifies.
    Renewed,
    /// Shoptet gave none (the error says why); API calls work, webhooks are rejected until the
    /// next import or installation.
    Failed(ProxyError),
}

impl SignatureKey {
    /// `renewed` or `failed`, as the admin API and the command line report it.
    pub fn label(&self) -> &'static str {
        match self {
            SignatureKey::Renewed => "renewed",
            SignatureKey::Failed(_) => "failed",
        }
    }
}

/// Imports an installation (SPEC B7), for `PUT /admin/eshops/{id}` and `eshops import` alike:
/// stores it active with its new OAuth token (dropping any token cached under the old one), then
/// obtains a fresh webhook signature key as installation does; the API token minted for that
/// stays the e-shop's current token. No "installed" event is sent. Only a store failure is an
/// error: without a key the installation still serves API calls.
pub async fn import_installation(
    store: &Store,
    proxy: &Proxy,
    new: &NewInstallation,
) -> Result<SignatureKey, StoreError> {
    let eshop_id = new.eshop_id;
    store.upsert_installation(new, None).await?;
    proxy.tokens.forget(eshop_id);
    match proxy.renew_signature_key(eshop_id).await {
        Ok(key) => {
            store.set_signature_key(eshop_id, &key).await?;
            Ok(SignatureKey::Renewed)
        }
        Err(e) => {
            tracing::warn!(
                eshop_id,
                code = e.code(),
                "import: no webhook signature key"
            );
            Ok(SignatureKey::Failed(e))
        }
    }
}

/// Obtains a fresh webhook signature key for `eshop_id` and stores it. Without a key the
/// installation still serves API calls; webhooks are rejected until the next one.
pub async fn renew_signature_key(store: &Store, proxy: &Proxy, eshop_id: u64) {
    match proxy.renew_signature_key(eshop_id).await {
        Ok(key) => {
            if let Err(e) = store.set_signature_key(eshop_id, &key).await {
                tracing::error!(eshop_id, error = %e, "installation: cannot store the signature key");
            }
        }
        Err(e) => tracing::warn!(
            eshop_id,
            code = e.code(),
            "installation: no webhook signature key"
        ),
    }
}
