//! A client's own `POST /api/webhooks/renew-signature-key` (SPEC B2): Shoptet invalidates the old
//! key with every renewal, so the proxy adopts the new key from the answer before the client sees
//! it; a webhook Shoptet signs right after the 200 then verifies. Kept apart from the forward loop,
//! which only calls [`Proxy::adopt_signature_key`] on that path's final 200.

use super::{respond, Proxy, ProxyBody};
use crate::error::ProxyError;
use crate::http::body::{read_up_to, ReadUpTo, RespBody};
use crate::limits::flow::Permit;
use crate::shoptet::api;
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;

/// The renewal's answer is a small envelope; one larger than this is not Shoptet's.
const MAX_ANSWER: u64 = 64 * 1024;

/// Whether a request is a signature-key renewal whose answer the proxy must read.
pub(super) fn renews_signature_key(method: &Method, path: &str) -> bool {
    method == Method::POST && path == api::RENEW_SIGNATURE_KEY
}

impl Proxy {
    /// Reads the renewal's 200, stores the key it brings (encrypted, B4), then answers the client
    /// with the same bytes. If the key cannot be stored, the client gets `proxy-store-unavailable`
    /// instead of a 200 that would leave every later webhook unverifiable: it can renew again.
    pub(super) async fn adopt_signature_key(
        &self,
        eshop_id: u64,
        resp: Response<Incoming>,
        permit: Permit,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        debug_assert_eq!(resp.status(), StatusCode::OK);
        let (parts, body) = resp.into_parts();
        let bytes = match read_up_to(body, MAX_ANSWER).await {
            Ok(ReadUpTo::Whole(b)) => b,
            Ok(ReadUpTo::Over(rest)) => {
                tracing::warn!(
                    eshop_id,
                    "renew-signature-key: answer too large to read; key not adopted"
                );
                return Ok(respond(parts, RespBody::upstream_prefixed(rest, permit)));
            }
            Err(_) => return Err(ProxyError::UpstreamUnreachable),
        };
        drop(permit);
        match api::signature_key(&bytes) {
            Some(key) => {
                if let Err(e) = self.store.set_signature_key(eshop_id, &key).await {
                    tracing::error!(eshop_id, error = %e, "renew-signature-key: cannot store the new key");
                    return Err(ProxyError::StoreUnavailable);
                }
                tracing::info!(eshop_id, "adopted the signature key a client renewed");
            }
            None => tracing::warn!(
                eshop_id,
                "renew-signature-key: 200 without a key; nothing adopted"
            ),
        }
        Ok(respond(parts, RespBody::full(bytes)))
    }
}
