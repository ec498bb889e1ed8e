//! TLS for the listeners: a certificate and key loaded from PEM files behind a resolver that a
//! reload can point at new files. New handshakes use the new pair; connections already open keep
//! the one they negotiated (rustls asks the resolver once per handshake).

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;

/// The certificate every new handshake on one listener gets.
#[derive(Debug)]
pub struct Certificate {
    /// Read by every handshake, replaced by a reload: lock-free loads via `ArcSwap`.
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Certificate {
    /// Loads `cert_file` and `key_file`, or says (without any key material) why not.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Certificate>, String> {
        Ok(Arc::new(Certificate {
            current: ArcSwap::new(certified_key(cert_file, key_file)?),
        }))
    }

    /// Replaces the pair for new handshakes; on an error the old pair stays.
    pub fn reload(&self, cert_file: &Path, key_file: &Path) -> Result<(), String> {
        self.current.store(certified_key(cert_file, key_file)?);
        Ok(())
    }

    /// A TLS acceptor (HTTP/2 and HTTP/1.1 by ALPN) serving this certificate.
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
    }
}

/// The chain of `cert_file` with the key of `key_file`, checked to belong together.
fn certified_key(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, String> {
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
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(certs, key, &provider)
        .map(Arc::new)
        .map_err(|e| format!("{}: {e}", key_file.display()))
}
