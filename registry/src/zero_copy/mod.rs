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
//! Only for HTTP/1.x over plain TCP: TLS has to encrypt in user space, and
//! HTTP/2 frames the body itself. Pages not in the page cache are read on a
//! blocking thread as ordinary chunks ([`crate::page_cache`] tells which), so a
//! cold disk never stalls the async workers.

mod body;
mod conn;

use std::collections::VecDeque;
use std::fs::File;
use std::sync::{Arc, Mutex, PoisonError};

pub use body::body;
pub use conn::Conn;

/// The most bytes one placeholder chunk stands for: one `sendfile` call
/// asks for this much. On loopback, 4 MiB gave single downloads 10–20% more
/// throughput than 1 MiB; 8 MiB gave no more.
const CHUNK: usize = 4 << 20;

/// The size of the ordinary reads for pages not in the page cache: it
/// bounds the memory a cold download holds.
const COLD_CHUNK: usize = 1 << 20;

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
