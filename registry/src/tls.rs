//! Serving certificates that follow their files.
//!
//! Kubernetes updates a mounted Secret by swapping a symlink, so the
//! certificate files change under a running registry when the operator
//! rotates them. A watcher re-reads them when their metadata changes; new
//! handshakes use the new certificate, open connections keep theirs, and a
//! bad new pair is logged and ignored (the old one keeps serving).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::aws_lc_rs;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate; give the serving certificate (chain) in PEM form")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("the private key cannot be used: {0}")]
    Key(rustls::Error),
    #[error("the certificate and key do not match: {0}")]
    Mismatch(rustls::Error),
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// Loads a certificate chain and its key, checking that they belong together.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: key.to_owned(),
        })?;
    let provider = aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch(e),
        other => TlsError::Key(other),
    })?;
    Ok(certified)
}

/// Hands rustls whichever certificate was loaded last.
#[derive(Debug)]
pub struct ReloadingResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// Builds the server config and starts the watcher that reloads the files.
pub fn server_config(cert: PathBuf, key: PathBuf) -> Result<Arc<ServerConfig>, TlsError> {
    let initial = load(&cert, &key)?;
    let resolver = Arc::new(ReloadingResolver {
        current: RwLock::new(Arc::new(initial)),
    });
    let mut config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(watch(cert, key, resolver));
    Ok(Arc::new(config))
}

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Polls the files' metadata; polling works the same on every filesystem
/// and volume type, and a two-second delay is far inside any renewal window.
async fn watch(cert: PathBuf, key: PathBuf, resolver: Arc<ReloadingResolver>) {
    let mut seen = (stamp(&cert), stamp(&key));
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let now = (stamp(&cert), stamp(&key));
        if now == seen {
            continue;
        }
        match load(&cert, &key) {
            Ok(k) => {
                *resolver.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(k);
                seen = now;
                tracing::info!(cert = %cert.display(), "reloaded the TLS certificate");
            }
            // A half-written pair is common mid-rotation: try again next tick.
            Err(e) => {
                tracing::warn!(error = %e, "new TLS files not usable yet; still serving the previous certificate")
            }
        }
    }
}
