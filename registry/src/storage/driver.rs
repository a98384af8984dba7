//! The small contract a storage backend fulfils. The registry's operations
//! ([`super::Store`]) are written once over it, so a new backend (object
//! storage) implements these few methods and passes the same test suite.
//!
//! Keys are `/`-separated paths built only by [`super::layout`] from
//! validated names and digests; a driver never sees client-chosen text.

use std::io;
use std::ops::Range;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

/// An object's bytes as a stream of chunks. Chunks rather than an
/// `AsyncRead`, so a driver hands over buffers it filled itself (one copy
/// from the page cache on the filesystem; the HTTP body as is from object
/// storage).
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Whether a write must survive a crash once `put` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Content and links clients were told exist: written, then synced.
    Durable,
    /// Upload session bookkeeping: losing it in a crash only makes the
    /// client start its upload again.
    Scratch,
}

/// Which write of an object a reader saw, for compare-and-swap
/// ([`Driver::put_if`], [`Driver::delete_if`]): opaque, compared whole.
/// Object storage's ETag (and version id); on the filesystem, the file's
/// identity and modification time (every write renames a new file in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub e_tag: Option<String>,
    pub version: Option<String>,
}

#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// Reads a small object whole (links, tags, manifests); `None` if absent.
    async fn get(&self, key: &str) -> io::Result<Option<Bytes>>;

    /// Writes a small object atomically: a reader sees the old value or the
    /// new one, never a part; with [`Durability::Durable`], even across a crash.
    async fn put(&self, key: &str, data: Bytes, durability: Durability) -> io::Result<()>;

    /// Reads a small object whole with the version read; `None` if absent.
    async fn get_versioned(&self, key: &str) -> io::Result<Option<(Bytes, Version)>>;

    /// Writes a small object (durably, atomically) only if it is still at
    /// `expected` (`None`: only if absent). Returns whether it was written;
    /// `false` means another writer (perhaps another process sharing the
    /// storage) changed it since it was read: read again and retry.
    async fn put_if(&self, key: &str, data: Bytes, expected: Option<&Version>) -> io::Result<bool>;

    /// Removes an object only if it is still at `expected`. Returns whether
    /// it was removed; `false` if it changed or is gone.
    async fn delete_if(&self, key: &str, expected: &Version) -> io::Result<bool>;

    /// The object's size in bytes; `None` if absent.
    async fn size(&self, key: &str) -> io::Result<Option<u64>>;

    /// Streams the bytes `range` of an object; `None` if absent. The range
    /// must lie within the object.
    async fn stream(&self, key: &str, range: Range<u64>) -> io::Result<Option<ByteStream>>;

    /// The object as an open local file, for drivers that keep one: the
    /// server can then hand its bytes to the kernel (`sendfile`) instead of
    /// copying them through [`Driver::stream`]. `None` if absent, or if the
    /// driver has no local files (the default).
    async fn local_file(&self, _key: &str) -> io::Result<Option<std::fs::File>> {
        Ok(None)
    }

    /// Opens an object for appending (created empty if absent).
    async fn appender(&self, key: &str) -> io::Result<Box<dyn Appender>>;

    /// A writer that creates `key` whole, only when [`Creator::finish`] is
    /// called: for a push whose bytes all arrive in one request, so they go
    /// straight to the blob's key once their digest is verified, instead of
    /// to an upload and then through [`Driver::commit`]. `None` (the
    /// default) when the driver has nothing cheaper than that.
    async fn creator(&self, _key: &str) -> io::Result<Option<Box<dyn Creator>>> {
        Ok(None)
    }

    /// Durably moves `from` to `to`, replacing `to` if present. `to`
    /// appears whole or not at all. Used to publish a verified upload.
    async fn commit(&self, from: &str, to: &str) -> io::Result<()>;

    /// Names of the direct children of `prefix`, unsorted; empty if none.
    async fn list(&self, prefix: &str) -> io::Result<Vec<String>>;

    /// Removes an object or everything under a prefix; absent is not an error.
    async fn delete(&self, key: &str) -> io::Result<()>;

    /// When the object was last written; `None` if absent or unknown.
    async fn modified(&self, _key: &str) -> io::Result<Option<std::time::SystemTime>> {
        Ok(None)
    }

    /// A URL from which a client may GET `key` itself, without this
    /// process, for a while: object storage that signs URLs and was asked
    /// to hand them out. `None` when the driver does not (the filesystem),
    /// was not configured to, or `key` is not one whole object.
    async fn presigned_get(&self, _key: &str) -> io::Result<Option<String>> {
        Ok(None)
    }

    /// Aborts the driver's own multi-step writes (object storage's
    /// multipart uploads) begun before `before` by a process that died
    /// before finishing or aborting them; returns how many. `before` must
    /// lie further back than any write still running takes.
    async fn abort_abandoned_writes(&self, _before: std::time::SystemTime) -> io::Result<usize> {
        Ok(0)
    }

    /// Removes the driver's own temporary files last written before
    /// `before` (left by a crash mid-write); returns how many. Drivers
    /// without temporaries have nothing to do.
    async fn reclaim_temporaries(&self, _before: std::time::SystemTime) -> io::Result<usize> {
        Ok(0)
    }
}

/// Appends to one object. Dropped without [`Appender::finish`] or
/// [`Appender::abort`], what was written so far stays (and is a correct
/// prefix of what the client sent).
#[async_trait]
pub trait Appender: Send {
    /// Size of the object, including what this appender wrote.
    fn offset(&self) -> u64;

    async fn write(&mut self, data: &[u8]) -> io::Result<()>;

    /// [`Appender::write`] of bytes the caller owns: a driver may keep them
    /// (no copy) until it writes them out. Same result as `write`.
    async fn write_bytes(&mut self, data: Bytes) -> io::Result<()> {
        self.write(&data).await
    }

    /// Flushes what was written (durability comes with [`Driver::commit`]).
    /// If it fails, the object is left as it was before this appender.
    async fn finish(self: Box<Self>) -> io::Result<()>;

    /// Drops what this appender wrote, leaving the object as it was.
    async fn abort(self: Box<Self>) -> io::Result<()>;
}

/// Writes one new object (see [`Driver::creator`]): nothing of it is
/// visible before `finish`, and after `abort` (or a drop, or a crash)
/// nothing of it stays.
#[async_trait]
pub trait Creator: Send {
    async fn write(&mut self, data: Bytes) -> io::Result<()>;

    /// Makes the object, whole and durable, replacing any there.
    async fn finish(self: Box<Self>) -> io::Result<()>;

    async fn abort(self: Box<Self>) -> io::Result<()>;
}
