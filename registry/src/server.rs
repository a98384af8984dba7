//! Accepts connections and serves the router over HTTP/1.1 and HTTP/2,
//! optionally behind TLS, and drains open connections on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::Request;
use axum::http::Version;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::zero_copy;

/// What the router learns of a request's connection (a request extension):
/// the peer address (login throttling) and whether it came over TLS (the
/// scheme of the token realm).
#[derive(Clone, Copy, Debug)]
pub struct Connection {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// How long open transfers may finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(25);

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper then queues body chunks as they are rather than copying them
    // into one buffer: zero-copy bodies rely on it (see `zero_copy`).
    builder.http1().writev(true);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        match &acceptor {
            None => {
                let (io, regions) = zero_copy::Conn::new(tcp);
                // HTTP/1.x responses on this connection may sendfile blobs;
                // HTTP/2 (prior knowledge) frames bodies itself, so not there.
                let app = app.clone().map_request(move |mut req: Request<Incoming>| {
                    if req.version() <= Version::HTTP_11 {
                        req.extensions_mut().insert(regions.clone());
                    }
                    req.extensions_mut().insert(Connection { peer, tls: false });
                    req
                });
                let service = TowerToHyperService::new(app);
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(io), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move { log_conn(conn.await, peer) });
            }
            Some(acceptor) => {
                let app = app.clone().map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(Connection { peer, tls: true });
                    req
                });
                let service = TowerToHyperService::new(app);
                let acceptor = acceptor.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream =
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                return tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                        };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    log_conn(watcher.watch(conn).await, peer);
                });
            }
        }
    }
    tracing::info!("shutting down: draining open connections");
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN:?}; closing them");
    }
    Ok(())
}

fn log_conn<E: std::fmt::Display>(r: Result<(), E>, peer: SocketAddr) {
    if let Err(e) = r {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
