//! Accepts connections and serves the router over HTTP/1.1 and HTTP/2,
//! optionally behind TLS, within the connection limits and timeouts of
//! [`Limits`], and drains open connections on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::Request;
use axum::http::Version;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::limits::Limits;
use crate::raw_errors::ErrorBodies;
use crate::zero_copy;

/// The most a connection's read buffer holds (also the largest request
/// head hyper accepts; the application's own limit is lower).
const READ_BUFFER: usize = 128 << 10;

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

/// Serves `app` on `listener` until `shutdown` resolves, then drains, with
/// the default [`Limits`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(listener, app, tls, &Limits::default(), shutdown).await
}

/// [`serve`] with the connection limits and timeouts of `limits`.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: &Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    // Tells every connection to finish its requests and close.
    let (closing, _) = watch::channel(false);
    let builder = builder(limits);
    let capacity = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(capacity));
    let handshake_timeout = limits.tls_handshake_timeout;
    let header_timeout = limits.header_timeout;
    let (h1, h2) = (builder.clone().http1_only(), builder.clone().http2_only());
    tokio::pin!(shutdown);
    loop {
        // At the cap, stop accepting: new clients wait in the listen backlog
        // (not refused) and are taken in order as connections close.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                crate::metrics::connection_wait();
                tracing::debug!("connection limit reached; new connections wait");
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
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
        let open = crate::metrics::connection_opened();
        let _ = tcp.set_nodelay(true);
        let closing = closing.subscribe();
        match &acceptor {
            None => {
                let app = app.clone();
                let builder = builder.clone();
                tokio::spawn(async move {
                    let _held = (slot, open);
                    // hyper's header timeout starts only once it has seen
                    // bytes telling HTTP/1 from HTTP/2: a client that sends
                    // nothing is timed here.
                    // (`readable` may wake spuriously; a peek waits for a byte.)
                    match tokio::time::timeout(header_timeout, tcp.peek(&mut [0u8; 1])).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return,
                        Ok(Ok(_)) => {}
                        Err(_) => {
                            crate::metrics::timeout("header");
                            return tracing::debug!(%peer, "connection closed: sent nothing in time");
                        }
                    }
                    serve_plain(tcp, peer, app, &builder, closing, header_timeout).await;
                });
            }
            Some(acceptor) => {
                let activity = Arc::new(Activity::new());
                let app = app.clone().map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(Connection { peer, tls: true });
                    req
                });
                let service = TowerToHyperService::new(Tracked {
                    inner: app,
                    activity: activity.clone(),
                });
                let acceptor = acceptor.clone();
                let (h1, h2) = (h1.clone(), h2.clone());
                tokio::spawn(async move {
                    let _held = (slot, open);
                    let stream =
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                return tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => {
                                crate::metrics::timeout("tls");
                                return tracing::debug!(%peer, "TLS handshake timed out");
                            }
                        };
                    // The protocol is known from ALPN: no sniffing of the
                    // first bytes, whose wait no hyper timeout covers.
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let conn = h2.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        let idle = Idle {
                            activity,
                            after: header_timeout,
                        };
                        drive(conn, |c| c.graceful_shutdown(), closing, Some(idle), peer).await;
                    } else {
                        // HTTP/1 idles out by hyper's header-read timeout.
                        let io = TokioIo::new(ErrorBodies::new(stream));
                        let conn = h1.serve_connection_with_upgrades(io, service);
                        drive(conn, |c| c.graceful_shutdown(), closing, None, peer).await;
                    }
                });
            }
        }
    }
    tracing::info!("shutting down: draining open connections");
    closing.send_replace(true);
    // Every connection holds a slot until it ends: all slots back, all done.
    let all = u32::try_from(capacity).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN:?}; closing them");
    }
    Ok(())
}

/// Serves one plain-TCP connection (HTTP/1.x or HTTP/2 prior knowledge).
async fn serve_plain(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    builder: &auto::Builder<TokioExecutor>,
    closing: watch::Receiver<bool>,
    idle_after: Duration,
) {
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
    let activity = Arc::new(Activity::new());
    let service = TowerToHyperService::new(Tracked {
        inner: app,
        activity: activity.clone(),
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(ErrorBodies::new(io)), service)
        .into_owned();
    let idle = Idle {
        activity,
        after: idle_after,
    };
    drive(conn, |c| c.graceful_shutdown(), closing, Some(idle), peer).await;
}

/// A connection's requests: how many are in flight, and when the last one
/// started or ended.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    fn touch(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// How long the connection has had no request in flight; zero if busy.
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }
}

/// Counts a request in flight until its response head is ready.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The router, keeping a connection's [`Activity`] up to date.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> tower::Service<Request<B>> for Tracked<S>
where
    S: tower::Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let busy = Busy::new(self.activity.clone());
        let response = self.inner.call(req);
        Box::pin(async move {
            let out = response.await;
            drop(busy);
            out
        })
    }
}

/// Closes a connection that went this long without a request.
struct Idle {
    activity: Arc<Activity>,
    after: Duration,
}

/// Drives a connection to its end. When the server shuts down, or (with
/// `idle`) the client sent no request for a while, the connection is
/// closed gracefully: requests in flight finish, HTTP/2 clients get a
/// GOAWAY. Without this, an HTTP/2 client that only answers pings would
/// hold a connection slot forever (hyper has no HTTP/2 idle timeout).
async fn drive<C>(
    conn: C,
    close: impl Fn(Pin<&mut C>),
    mut closing: watch::Receiver<bool>,
    idle: Option<Idle>,
    peer: SocketAddr,
) where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    tokio::pin!(conn);
    let check = idle.as_ref().map_or(Duration::from_secs(3600), |i| {
        (i.after / 4).max(Duration::from_millis(250))
    });
    let mut tick = tokio::time::interval(check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closed = false;
    loop {
        if !closed && *closing.borrow_and_update() {
            close(conn.as_mut());
            closed = true;
        }
        tokio::select! {
            result = conn.as_mut() => return log_conn(result, peer),
            changed = closing.changed(), if !closed => {
                if changed.is_err() {
                    // The server is gone without a word: close as on shutdown.
                    close(conn.as_mut());
                    closed = true;
                }
            }
            _ = tick.tick(), if !closed => {
                if let Some(idle) = &idle
                    && idle.activity.idle_for() >= idle.after
                {
                    crate::metrics::timeout("idle");
                    tracing::debug!(%peer, "closing a connection idle for {:?}", idle.after);
                    close(conn.as_mut());
                    closed = true;
                }
            }
        }
    }
}

/// The HTTP/1 and HTTP/2 connection settings, limits applied.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // hyper then queues body chunks as they are rather than copying them
        // into one buffer: zero-copy bodies rely on it (see `zero_copy`).
        .writev(true)
        .timer(TokioTimer::new())
        // hyper's read buffer grows to ~400 KiB by default, per connection,
        // and a stalled upload keeps it: 300 stalled uploads held 240 MB.
        // 128 KiB reads still keep a core busy with far fewer syscalls than
        // the network's 16 KiB frames.
        .max_buf_size(READ_BUFFER)
        // Timed from when hyper starts waiting for a request: this closes
        // idle keep-alive connections as well as slow senders of headers.
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Pings find peers that vanished without closing.
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout.min(Duration::from_secs(20)));
    builder
}

fn log_conn(r: Result<(), Box<dyn std::error::Error + Send + Sync>>, peer: SocketAddr) {
    if let Err(e) = r {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            crate::metrics::timeout("header");
            tracing::debug!(%peer, "connection closed: no complete request head in time");
        } else {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}
