#![allow(clippy::unwrap_used)]
//! A rotated certificate is picked up without a restart: new connections
//! get the new certificate, and a connection opened before keeps working.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A fresh CA and a serving certificate for 127.0.0.1 signed by it.
struct Pki {
    ca_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn issue() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let leaf = leaf_params
        .signed_by(&leaf_key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    Pki {
        ca_der: ca.der().clone(),
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

/// Replaces the files the way a Secret volume update does: atomically.
fn install(dir: &Path, pki: &Pki) {
    for (name, text) in [("tls.key", &pki.key_pem), ("tls.crt", &pki.cert_pem)] {
        let tmp = dir.join(format!(".{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

async fn connect(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
}

/// One keep-alive HTTP/1.1 request for /healthz (whose body is "ok").
async fn healthz(stream: &mut TlsStream<TcpStream>) -> std::io::Result<String> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.ends_with(b"\r\n\r\nok") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test]
async fn rotated_certificate_is_served_to_new_connections_without_dropping_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let first = issue();
    install(dir.path(), &first);

    let tls =
        berth_registry::tls::server_config(dir.path().join("tls.crt"), dir.path().join("tls.key"))
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = berth_registry::router(berth_registry::filesystem_store(data.path()).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(berth_registry::server::serve(
        listener,
        app,
        Some(tls),
        async {
            let _ = stopped.await;
        },
    ));

    let mut old = connect(addr, &first.ca_der).await.unwrap();
    assert!(healthz(&mut old).await.unwrap().starts_with("HTTP/1.1 200"));

    let second = issue();
    install(dir.path(), &second);
    let mut rotated = false;
    for _ in 0..50 {
        if let Ok(mut s) = connect(addr, &second.ca_der).await {
            assert!(healthz(&mut s).await.unwrap().starts_with("HTTP/1.1 200"));
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rotated, "the new certificate was not served within 10 s");
    assert!(
        connect(addr, &first.ca_der).await.is_err(),
        "new connections must not get the old certificate"
    );
    assert!(
        healthz(&mut old).await.unwrap().starts_with("HTTP/1.1 200"),
        "the open connection was dropped"
    );

    // A broken pair mid-rotation is ignored: the current certificate keeps serving.
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut s = connect(addr, &second.ca_der).await.unwrap();
    assert!(healthz(&mut s).await.unwrap().starts_with("HTTP/1.1 200"));

    let _ = stop.send(());
    drop((old, s));
    server.await.unwrap().unwrap();
}
