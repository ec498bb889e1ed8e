//! TLS for the listeners that offer it (SPEC B1): the public listener and the proxy listener,
//! each with a certificate chain and key from PEM files (`tls_cert_file`/`tls_key_file`), served
//! with rustls (ring). One configuration for both, so they cannot drift apart.

use std::sync::Arc;

/// Rustls server configuration from PEM files: the certificate chain and its private key.
/// HTTP/2 and HTTP/1.1 are offered by ALPN, in that order.
pub fn tls_acceptor(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certs = std::fs::read(cert_file)
        .map_err(|e| format!("{}: {e}", cert_file.display()))
        .and_then(|pem| {
            rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", cert_file.display()))
        })?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate", cert_file.display()));
    }
    let key = std::fs::read(key_file)
        .map_err(|e| format!("{}: {e}", key_file.display()))
        .and_then(|pem| {
            rustls_pemfile::private_key(&mut pem.as_slice())
                .map_err(|e| format!("{}: {e}", key_file.display()))
        })?
        .ok_or_else(|| format!("{}: no PEM private key", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}
