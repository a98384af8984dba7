//! Blob bytes from the page cache to a plain-HTTP socket without passing
//! through user space (`sendfile(2)`), the way nginx serves static files.
//!
//! hyper owns the socket and writes response bodies itself; it has no way
//! to say "send this file region". So a zero-copy body ([`body`]) hands
//! hyper *placeholder* chunks: slices of one static buffer that nothing ever
//! writes or reads ([`PLACEHOLDER`]), and queues the file region each one
//! stands for in the connection's [`Regions`]. hyper passes body chunks on
//! untouched (the server forces its vectored, queueing write strategy), in
//! order, to the connection's `poll_write_vectored`; the connection
//! ([`Conn`]) knows a placeholder by its address and sendfiles the region at
//! the head of the queue instead of writing zeros.
//!
//! Anything out of step (no region queued, a length that disagrees, a file
//! shorter than it was) is an I/O error that closes the connection: a client
//! can see a cut-off response, never wrong bytes.
//!
//! When to use it: only when the CPU is busy. With fewer downloads in
//! flight than cores, copying (read, then write) costs CPU that is idle
//! anyway and lets the reader's core and the writer's core share the work:
//! a single download over loopback ran 30% faster copied than sendfiled
//! (the client then reads bytes the server just wrote, from CPU cache,
//! instead of from the page cache in memory). With every core busy, the
//! copies are what slows everyone down: at 32 downloads sendfile cut the
//! server's CPU per GB fivefold. [`Download`] counts, and the body decides
//! chunk by chunk.
//!
//! Only for HTTP/1.x over plain TCP: TLS has to encrypt in user space, and
//! HTTP/2 frames the body itself. Pages not in the page cache go as ordinary
//! chunks read on a blocking thread ([`crate::page_cache`] tells which), so a
//! cold disk never stalls the async workers.

mod body;
mod conn;

use std::collections::VecDeque;
use std::fs::File;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

pub use body::body;
pub use conn::Conn;

use crate::storage::ByteStream;

/// The most bytes one placeholder chunk stands for: one `sendfile` call
/// asks for this much. On loopback, 4 MiB gave single downloads 10–20% more
/// throughput than 1 MiB; 8 MiB gave no more.
const CHUNK: usize = 4 << 20;

/// Never written, so never read: the zeros are not sent, and the pages of
/// this buffer are never touched (it costs address space, not memory).
static PLACEHOLDER: [u8; CHUNK] = [0; CHUNK];

/// Whether `buf` lies inside [`PLACEHOLDER`]: hyper hands the connection
/// the unsent rest of a chunk, so any suffix counts.
fn is_placeholder(buf: &[u8]) -> bool {
    let start = PLACEHOLDER.as_ptr() as usize;
    let p = buf.as_ptr() as usize;
    !buf.is_empty() && p >= start && p + buf.len() <= start + CHUNK
}

/// Blob downloads being sent right now, by either path.
static DOWNLOADS: AtomicUsize = AtomicUsize::new(0);

/// Unset: the number of CPUs this process may use.
static SENDFILE_AFTER: OnceLock<usize> = OnceLock::new();

/// Sets how many other downloads must be in flight for a download's next
/// chunk to go by sendfile (0: always). Takes effect only before the first
/// download.
pub fn set_sendfile_after(n: usize) {
    let _ = SENDFILE_AFTER.set(n);
}

fn sendfile_after() -> usize {
    *SENDFILE_AFTER.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// One blob download, counted for as long as it is alive.
pub struct Download(());

impl Download {
    pub fn start() -> Download {
        DOWNLOADS.fetch_add(1, Ordering::Relaxed);
        Download(())
    }

    /// Keeps this download counted until `body` is done or dropped.
    pub fn lasting_as_long_as(self, body: ByteStream) -> ByteStream {
        Box::pin(Counted {
            body,
            _download: self,
        })
    }
}

/// Whether the next chunk should go by sendfile (if it can): the other
/// downloads in flight keep every core busy.
fn busy() -> bool {
    DOWNLOADS.load(Ordering::Relaxed) > sendfile_after()
}

struct Counted {
    body: ByteStream,
    _download: Download,
}

impl Stream for Counted {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.body.as_mut().poll_next(cx)
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        DOWNLOADS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A part of a file still to be sent for one placeholder chunk.
struct Region {
    file: Arc<File>,
    offset: u64,
    len: usize,
}

/// The regions a connection owes, oldest first; shared by the connection
/// and the bodies of the responses written on it.
#[derive(Clone, Default)]
pub struct Regions(Arc<Mutex<VecDeque<Region>>>);

impl Regions {
    fn push(&self, region: Region) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(region);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_download_is_counted_until_its_body_is_dropped() {
        let before = DOWNLOADS.load(Ordering::Relaxed);
        let body = Download::start().lasting_as_long_as(Box::pin(futures_util::stream::empty()));
        assert_eq!(DOWNLOADS.load(Ordering::Relaxed), before + 1);
        drop(body);
        assert_eq!(DOWNLOADS.load(Ordering::Relaxed), before);
    }

    #[test]
    fn placeholders_are_recognised_by_address_only() {
        assert!(is_placeholder(&PLACEHOLDER[..10]));
        assert!(is_placeholder(&PLACEHOLDER[CHUNK - 1..]));
        assert!(!is_placeholder(&PLACEHOLDER[..0]));
        let zeros = vec![0u8; 16];
        assert!(
            !is_placeholder(&zeros),
            "equal bytes elsewhere are ordinary data"
        );
    }
}
