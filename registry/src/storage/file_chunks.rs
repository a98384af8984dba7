//! Reads a local file as a sequence of chunks for an HTTP body: what the
//! page cache holds is copied right on the calling (async) thread, only the
//! rest on a blocking thread; buffers are recycled once sent.
//!
//! Used by the filesystem driver's streams and by the zero-copy bodies for
//! the chunks they copy rather than sendfile.

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::page_cache::{self, Wait};

/// Bytes read per chunk: large enough that a syscall (or a hop to a
/// blocking thread) is noise next to the copy, small enough that many
/// concurrent downloads keep memory low.
pub const CHUNK: usize = 256 * 1024;

/// Buffers kept per reader: one being filled, the others' chunks still held
/// by the HTTP layer until sent (then their memory is reclaimed).
const POOL: usize = 3;

pub struct FileChunks {
    file: Arc<File>,
    pool: Vec<BytesMut>,
}

impl FileChunks {
    pub fn new(file: Arc<File>) -> FileChunks {
        FileChunks {
            file,
            pool: Vec::new(),
        }
    }

    /// The `len` bytes at `start` (at most [`CHUNK`] for the buffers to be
    /// reused), or an error if the file ends first.
    ///
    /// Hot data (the common case for a registry) is copied from the page
    /// cache on this thread: a hop to a blocking thread and back for every
    /// chunk cost 7% of the CPU in futex wake-ups in a TLS pull profile. The
    /// buffer is one whose earlier chunk has been sent: fresh allocations of
    /// this size cost page faults and TLB shootdowns that showed in profiles.
    pub async fn read(&mut self, start: u64, len: usize) -> io::Result<Bytes> {
        let mut buf = match self.pool.iter_mut().position(|b| b.try_reclaim(len)) {
            Some(i) => self.pool.swap_remove(i),
            None => BytesMut::with_capacity(len),
        };
        buf.clear();
        let cached = page_cache::read_into(&self.file, &mut buf, start, len, Wait::CachedOnly)?;
        let mut buf = if cached == len {
            buf
        } else {
            let file = self.file.clone();
            tokio::task::spawn_blocking(move || {
                let n = page_cache::read_into(
                    &file,
                    &mut buf,
                    start + cached as u64,
                    len - cached,
                    Wait::Disk,
                )?;
                if cached + n < len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob file is shorter than its recorded size",
                    ));
                }
                Ok(buf)
            })
            .await
            .map_err(io::Error::other)??
        };
        let chunk = buf.split_to(len).freeze();
        if self.pool.len() < POOL {
            self.pool.push(buf);
        }
        Ok(chunk)
    }
}
