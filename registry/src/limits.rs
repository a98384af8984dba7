//! The limits that keep one client from taking the registry down: how long
//! a connection may take to send a request head, how long a request body
//! may make no progress, how many connections may be open, and the file
//! descriptor limit they need.
//!
//! The server ([`crate::server`]) applies the connection-level ones; the
//! body-progress timeout is applied where bodies are read ([`Progress`]).
//! The in-memory upload buffer cap lives with the buffers
//! ([`crate::storage::fs::set_upload_buffer_budget`]).

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::time::{Instant, Sleep};

/// Every limit, with the defaults `berth-registry serve` documents.
#[derive(Debug, Clone)]
pub struct Limits {
    /// An HTTP/1 connection waiting longer than this for a complete request
    /// head is closed: slow headers and idle keep-alive connections alike
    /// (hyper times both from when it starts waiting for a request).
    pub header_timeout: Duration,
    /// A request body that delivers no bytes for this long is cut off; an
    /// upload chunk cut off is rolled back whole.
    pub body_timeout: Duration,
    /// The TLS handshake must finish within this.
    pub tls_handshake_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog until one
    /// closes (idle ones close after `header_timeout`).
    pub max_connections: usize,
    /// Longest request target (path and query) answered; longer ones get
    /// 414 with an OCI error body.
    pub max_uri_bytes: usize,
    /// Largest request head (all header names and values) answered; larger
    /// ones get 431 with an OCI error body.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_uri_bytes: 8 << 10,
            max_header_bytes: 64 << 10,
        }
    }
}

/// File descriptors kept free beyond one per connection: blobs being read
/// or written, the listener, logs.
pub const FD_HEADROOM: u64 = 256;

/// Raises the soft limit on open files to the hard limit (the default soft
/// limit, often 1024, is too few for a registry with many clients) and
/// returns the limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).map_err(std::io::Error::from)?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// A body stream cut off with an error when no chunk arrives for `timeout`.
///
/// Only an `Instant` is read per chunk: the timer is re-armed lazily, when
/// it fires before the deadline a later chunk moved.
pub struct Progress<S> {
    inner: S,
    timeout: Duration,
    last: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Progress<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Progress {
            inner,
            timeout,
            last: Instant::now(),
            timer: None,
        }
    }
}

impl<S> Stream for Progress<S>
where
    S: Stream<Item = Result<bytes::Bytes, String>> + Unpin,
{
    type Item = Result<bytes::Bytes, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                this.last = Instant::now();
                return Poll::Ready(item);
            }
            Poll::Pending => {}
        }
        loop {
            let timeout = this.timeout;
            let last = this.last;
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(last + timeout)));
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    let deadline = this.last + this.timeout;
                    if Instant::now() < deadline {
                        // Chunks came since the timer was set: wait out the rest.
                        timer.as_mut().reset(deadline);
                        continue;
                    }
                    crate::metrics::timeout("body");
                    // Further polls end the stream rather than erroring again.
                    this.last = Instant::now() + Duration::from_secs(365 * 86400);
                    return Poll::Ready(Some(Err(format!(
                        "no request body bytes arrived for {} s; the request was cut off",
                        this.timeout.as_secs()
                    ))));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_body_that_stalls_is_cut_off_and_one_that_flows_is_not() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, String>>(8);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut body = Progress::new(stream, Duration::from_millis(300));
        let sender = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                tx.send(Ok(bytes::Bytes::from_static(b"x"))).await.unwrap();
            }
            tx
        });
        for _ in 0..4 {
            assert!(body.next().await.unwrap().is_ok());
        }
        let _tx = sender.await.unwrap();
        let started = Instant::now();
        assert!(body.next().await.unwrap().is_err());
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250) && waited < Duration::from_millis(600));
    }
}
