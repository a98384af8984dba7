//! The filesystem driver: one file per key under a root directory.
//!
//! Atomic writes go to a hidden temporary file in the destination directory,
//! are fsynced, renamed over the destination, and the directory is fsynced,
//! so a killed process leaves either the old object or the new one.

use std::fs;
use std::io::{self, Write as _};
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::driver::{Appender, ByteStream, Driver, Durability, Version};
use super::file_chunks::{CHUNK, FileChunks};
use crate::page_cache;

/// Temporary files start with this; [`Driver::list`] never shows them.
const TMP_PREFIX: &str = ".tmp-";

pub struct FsDriver {
    root: PathBuf,
}

impl FsDriver {
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(FsDriver { root })
    }

    fn path(&self, key: &str) -> PathBuf {
        debug_assert!(
            !key.split('/').any(|c| c == ".." || c.is_empty()),
            "unsafe key {key}"
        );
        self.root.join(key)
    }
}

fn not_found_is_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

/// Writes `data` to `path` atomically (temp file + rename), and durably
/// when asked (file and directory synced). An empty object needs no temp
/// file: creating it is atomic already.
fn write_atomic(path: &Path, data: &[u8], durability: Durability) -> io::Result<()> {
    let dir = parent(path);
    fs::create_dir_all(dir)?;
    let durable = durability == Durability::Durable;
    if data.is_empty() {
        fs::File::create(path)?;
        return if durable { sync_dir(dir) } else { Ok(()) };
    }
    let tmp = dir.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_data()?;
        }
        fs::rename(&tmp, path)?;
        if durable { sync_dir(dir) } else { Ok(()) }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A file's version: its inode (every write renames a new file in), size
/// and modification time.
fn version_of(meta: &fs::Metadata) -> Version {
    use std::os::unix::fs::MetadataExt as _;
    Version {
        e_tag: Some(format!(
            "{}-{}-{}.{}",
            meta.ino(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        )),
        version: None,
    }
}

/// Holds an exclusive `flock` on a directory: compare-and-swap of the
/// objects in it, between tasks and between processes sharing the volume.
/// Released when dropped (the descriptor closes).
struct DirLock(#[allow(dead_code)] fs::File);

impl DirLock {
    fn take(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let f = fs::File::open(dir)?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(DirLock(f))
    }
}

/// The version of the object at `path` now; `None` if absent.
fn current_version(path: &Path) -> io::Result<Option<Version>> {
    Ok(not_found_is_none(fs::metadata(path))?
        .filter(|m| m.is_file())
        .map(|m| version_of(&m)))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

#[async_trait]
impl Driver for FsDriver {
    // `get` and `size` run on the calling thread: they touch small files
    // (links, tags, manifests) that are page-cache hits costing a few
    // microseconds, while a hop to the blocking pool and back costs more
    // than that in context switches (it dominated manifest GET profiles).
    // Bulk data, syncs and directory listings go to the blocking pool.

    async fn get(&self, key: &str) -> io::Result<Option<Bytes>> {
        not_found_is_none(fs::read(self.path(key))).map(|o| o.map(Bytes::from))
    }

    async fn put(&self, key: &str, data: Bytes, durability: Durability) -> io::Result<()> {
        let path = self.path(key);
        blocking(move || write_atomic(&path, &data, durability)).await
    }

    async fn get_versioned(&self, key: &str) -> io::Result<Option<(Bytes, Version)>> {
        use std::io::Read as _;
        let Some(mut f) = not_found_is_none(fs::File::open(self.path(key)))? else {
            return Ok(None);
        };
        // The version of the very file read: a write renames a new one in.
        let version = version_of(&f.metadata()?);
        let mut data = Vec::new();
        f.read_to_end(&mut data)?;
        Ok(Some((Bytes::from(data), version)))
    }

    async fn put_if(&self, key: &str, data: Bytes, expected: Option<&Version>) -> io::Result<bool> {
        let path = self.path(key);
        let expected = expected.cloned();
        blocking(move || {
            let _lock = DirLock::take(parent(&path))?;
            if current_version(&path)? != expected {
                return Ok(false);
            }
            if data.is_empty() {
                // `write_atomic` truncates in place for empty data: same
                // inode, so remove first for a new version.
                let _ = fs::remove_file(&path);
            }
            write_atomic(&path, &data, Durability::Durable)?;
            Ok(true)
        })
        .await
    }

    async fn delete_if(&self, key: &str, expected: &Version) -> io::Result<bool> {
        let path = self.path(key);
        let expected = expected.clone();
        blocking(move || {
            let dir = parent(&path);
            if !dir.exists() {
                return Ok(false);
            }
            let _lock = DirLock::take(dir)?;
            if current_version(&path)?.as_ref() != Some(&expected) {
                return Ok(false);
            }
            match fs::remove_file(&path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn size(&self, key: &str) -> io::Result<Option<u64>> {
        let meta = not_found_is_none(fs::metadata(self.path(key)))?;
        Ok(meta.filter(|m| m.is_file()).map(|m| m.len()))
    }

    async fn stream(&self, key: &str, range: Range<u64>) -> io::Result<Option<ByteStream>> {
        let path = self.path(key);
        let Some(file) = blocking(move || not_found_is_none(fs::File::open(path))).await? else {
            return Ok(None);
        };
        let reader = FileChunks::new(Arc::new(file));
        let chunks =
            futures_util::stream::try_unfold((range, reader), |(r, mut reader)| async move {
                if r.start >= r.end {
                    return Ok(None);
                }
                let len = (r.end - r.start).min(CHUNK as u64) as usize;
                let chunk = reader.read(r.start, len).await?;
                Ok(Some((chunk, (r.start + len as u64..r.end, reader))))
            });
        Ok(Some(Box::pin(chunks)))
    }

    async fn local_file(&self, key: &str) -> io::Result<Option<fs::File>> {
        let path = self.path(key);
        blocking(move || not_found_is_none(fs::File::open(path))).await
    }

    async fn appender(&self, key: &str) -> io::Result<Box<dyn Appender>> {
        let path = self.path(key);
        let (file, start) = blocking(move || {
            fs::create_dir_all(parent(&path))?;
            // Not O_APPEND: each buffer goes to its own offset, so a write
            // still in flight from an appender that was dropped (its request
            // cut off) lands where its bytes belong, not after the next
            // appender's.
            let file = fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&path)?;
            let start = file.metadata()?.len();
            Ok((file, start))
        })
        .await?;
        let reserved = super::buffer_budget::reserve(2 * WRITE_BUFFER);
        let size = if reserved > 0 {
            WRITE_BUFFER
        } else {
            crate::metrics::upload_buffer_budget_spent();
            SMALL_WRITE_BUFFER
        };
        Ok(Box::new(FsAppender {
            file: Arc::new(file),
            start,
            offset: start,
            buf: Vec::with_capacity(size),
            kept: Vec::new(),
            kept_len: 0,
            size,
            reserved,
            pending: None,
            spare: None,
            unhinted: start.saturating_sub(WRITE_BUFFER as u64)..start,
        }))
    }

    async fn commit(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (self.path(from), self.path(to));
        blocking(move || {
            fs::File::open(&from)?.sync_data()?;
            let dir = parent(&to);
            fs::create_dir_all(dir)?;
            fs::rename(&from, &to)?;
            sync_dir(dir)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let path = self.path(prefix);
        blocking(move || {
            let Some(entries) = not_found_is_none(fs::read_dir(&path))? else {
                return Ok(Vec::new());
            };
            let mut names = Vec::new();
            for entry in entries {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if !name.starts_with(TMP_PREFIX) {
                    names.push(name);
                }
            }
            Ok(names)
        })
        .await
    }

    async fn modified(&self, key: &str) -> io::Result<Option<std::time::SystemTime>> {
        let meta = not_found_is_none(fs::metadata(self.path(key)))?;
        meta.map(|m| m.modified()).transpose()
    }

    async fn reclaim_temporaries(&self, before: std::time::SystemTime) -> io::Result<usize> {
        let root = self.root.clone();
        // Temporaries are written beside their destination: blobs, links,
        // tags, revisions. Session data is appended in place, never a temporary.
        blocking(move || reclaim_tmp_under(&root, before)).await
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        let path = self.path(key);
        blocking(move || {
            let meta = match fs::symlink_metadata(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                other => other?,
            };
            let removed = if meta.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match removed {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await
    }
}

/// Removes `.tmp-*` files under `dir` last modified before `before`.
fn reclaim_tmp_under(dir: &Path, before: std::time::SystemTime) -> io::Result<usize> {
    let mut removed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Some(entries) = not_found_is_none(fs::read_dir(&dir))? else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX)
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < before)
                && fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Appends are gathered to this size before a write: network frames are
/// small (~16 KiB), and each file write costs a hop to a blocking thread.
const WRITE_BUFFER: usize = 1 << 20;

/// The buffer size of an upload when the budget below is spent: slower
/// (more hops to a blocking thread), but memory stays bounded.
const SMALL_WRITE_BUFFER: usize = 64 << 10;

/// Chunks handed over as [`Bytes`] at least this large are kept as they
/// are and written with one `pwritev`, not copied into the buffer: a mirror
/// fetch's chunks (hundreds of KiB from the upstream connection) cost a
/// memcpy per byte otherwise. Smaller ones are copied: many tiny pieces
/// would pin their (larger) receive buffers and make long iovec lists.
const KEEP_AT_LEAST: usize = 32 << 10;

/// At most this many kept chunks per write (the kernel takes 1024).
const MAX_KEPT: usize = 256;

/// Buffers appends and writes each full buffer on a blocking thread while
/// the next one fills (receiving and hashing overlap the disk write).
/// Large [`Bytes`] chunks are kept instead of copied (see [`KEEP_AT_LEAST`]);
/// either `buf` or `kept` holds data, never both, so order is kept.
struct FsAppender {
    file: Arc<fs::File>,
    start: u64,
    offset: u64,
    buf: Vec<u8>,
    /// Chunks kept as they came, `kept_len` bytes, after `buf`'s last write.
    kept: Vec<Bytes>,
    kept_len: usize,
    /// How full `buf` (or `kept`) gets before it is written.
    size: usize,
    /// Bytes of the buffer budget this appender holds (returned on drop).
    reserved: usize,
    /// The write in flight, if any; it hands its buffer (if it wrote one)
    /// back for reuse.
    pending: Option<tokio::task::JoinHandle<io::Result<Option<Vec<u8>>>>>,
    /// A written-out buffer to fill next (fresh ones cost page faults).
    spare: Option<Vec<u8>>,
    /// Written bytes whose writeback is not started yet: the last buffer
    /// (at first, the one an earlier appender may have left).
    unhinted: Range<u64>,
}

impl FsAppender {
    /// Waits for the write in flight.
    async fn settle(&mut self) -> io::Result<()> {
        if let Some(write) = self.pending.take()
            && let Some(mut buf) = write.await.map_err(io::Error::other)??
        {
            buf.clear();
            self.spare = Some(buf);
        }
        Ok(())
    }

    /// Hands the buffer (or the kept chunks) to a blocking thread (after
    /// the previous write).
    async fn drain(&mut self) -> io::Result<()> {
        self.settle().await?;
        if !self.kept.is_empty() {
            let kept = std::mem::take(&mut self.kept);
            let len = std::mem::take(&mut self.kept_len) as u64;
            let file = self.file.clone();
            let at = self.offset - len;
            let behind = std::mem::replace(&mut self.unhinted, at..self.offset);
            self.pending = Some(tokio::task::spawn_blocking(move || {
                write_all_vectored_at(&file, &kept, at)?;
                page_cache::start_writeback(&file, behind.start, behind.end - behind.start);
                Ok(None)
            }));
        } else if !self.buf.is_empty() {
            let next = self
                .spare
                .take()
                .unwrap_or_else(|| Vec::with_capacity(self.size));
            let buf = std::mem::replace(&mut self.buf, next);
            let file = self.file.clone();
            let at = self.offset - buf.len() as u64;
            let behind = std::mem::replace(&mut self.unhinted, at..self.offset);
            self.pending = Some(tokio::task::spawn_blocking(move || {
                file.write_all_at(&buf, at)?;
                // The blob is fsynced before the client hears it is stored;
                // writing it out as it arrives leaves that fsync only the
                // tail to wait for, instead of the whole blob. One buffer
                // behind: starting writeback can wait for a busy disk, and
                // the end of a chunk (PATCH) should not.
                page_cache::start_writeback(&file, behind.start, behind.end - behind.start);
                Ok(Some(buf))
            }));
        }
        Ok(())
    }
}

/// Writes all of `parts`, in order, at `at` (`pwritev`, resumed after a
/// short write).
fn write_all_vectored_at(file: &fs::File, parts: &[Bytes], mut at: u64) -> io::Result<()> {
    let mut parts: Vec<&[u8]> = parts
        .iter()
        .map(|b| &b[..])
        .filter(|b| !b.is_empty())
        .collect();
    let mut first = 0;
    while first < parts.len() {
        let slices: Vec<io::IoSlice<'_>> =
            parts[first..].iter().map(|p| io::IoSlice::new(p)).collect();
        let mut n = match rustix::io::pwritev(file, &slices, at) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        at += n as u64;
        while n > 0 {
            let len = parts[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                parts[first] = &parts[first][n..];
                n = 0;
            }
        }
    }
    Ok(())
}

impl Drop for FsAppender {
    fn drop(&mut self) {
        super::buffer_budget::release(self.reserved);
    }
}

#[async_trait]
impl Appender for FsAppender {
    fn offset(&self) -> u64 {
        self.offset
    }

    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if !self.kept.is_empty() {
            self.drain().await?;
        }
        self.buf.extend_from_slice(data);
        self.offset += data.len() as u64;
        if self.buf.len() >= self.size {
            self.drain().await?;
        }
        Ok(())
    }

    async fn write_bytes(&mut self, data: Bytes) -> io::Result<()> {
        if data.len() < KEEP_AT_LEAST {
            return self.write(&data).await;
        }
        if !self.buf.is_empty() {
            self.drain().await?;
        }
        self.offset += data.len() as u64;
        self.kept_len += data.len();
        self.kept.push(data);
        if self.kept_len >= self.size || self.kept.len() >= MAX_KEPT {
            self.drain().await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> io::Result<()> {
        let flushed = match self.drain().await {
            Ok(()) => self.settle().await,
            Err(e) => Err(e),
        };
        if let Err(e) = flushed {
            // The last buffer failed (disk full): the object keeps none of
            // this chunk, so the session's range stays what was acknowledged.
            self.buf.clear();
            self.kept.clear();
            let _ = self.settle().await;
            let (file, start) = (self.file.clone(), self.start);
            if let Err(undo) = blocking(move || file.set_len(start)).await {
                tracing::warn!(error = %undo, "could not roll back a failed chunk");
            }
            return Err(e);
        }
        Ok(())
    }

    async fn abort(mut self: Box<Self>) -> io::Result<()> {
        self.buf.clear();
        self.kept.clear();
        // A failed write in flight changes nothing: the length is reset below.
        let _ = self.settle().await;
        let (file, start) = (self.file.clone(), self.start);
        blocking(move || file.set_len(start)).await
    }
}
