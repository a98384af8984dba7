//! The object storage driver: S3 (and any other `object_store` backend,
//! e.g. its in-memory store for tests) behind the same [`Driver`] contract
//! as the filesystem.
//!
//! Objects cannot be appended to, and S3 multipart parts must be at least
//! 5 MiB while registry clients send chunks of any size, so an object
//! written by an [`Appender`] is kept as numbered *segments*:
//!
//! ```text
//! <dir>/<name>                      a whole object (put, copy)
//! <dir>/.<name>.segments/<offset>   or its bytes from <offset> (20 digits), in order
//! ```
//!
//! A whole object, when present, is authoritative (segments beside it are
//! left over from an appender that never finished); otherwise the object is
//! the contiguous run of segments from offset 0. An appender (one request's
//! bytes) streams them, [`SEGMENT`] bytes at a time, as the parts of one
//! multipart upload that is completed into one segment when the request
//! ends (a request under S3's part minimum is one plain put). The first
//! append to a whole object takes effect when `finish` deletes that whole
//! object: an object always reads as it was before a failed or abandoned
//! append, or with a correct prefix of it. Segments live in the bucket, so
//! another registry process sharing it resumes an upload where this one
//! stopped. [`Driver::commit`] copies a lone segment server-side (a push in
//! one request: no byte passes through this process again), and streams
//! several, in order, into one multipart upload.
//!
//! Names starting with `.` cannot be repository components, tags or
//! digests, so segment directories never collide with the registry's keys.

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::MultipartId;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload,
    UpdateVersion,
};

use super::driver::{Appender, ByteStream, Creator, Driver, Durability, Version};

/// The most an appender holds in memory before writing a segment.
pub const SEGMENT: usize = 8 << 20;

/// The segment size of an upload when the buffer budget is spent: more
/// objects per upload, but memory stays bounded however many clients stall
/// mid-chunk.
const SMALL_SEGMENT: usize = 256 << 10;

/// A buffer older than this is written even if not full: a segment's
/// time is the session's last activity, which every process sharing the
/// bucket reads to tell a slow upload from an abandoned one.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// S3's smallest multipart part (but the last).
const MIN_PART: u64 = 5 << 20;

/// S3's most parts in one multipart upload (kept a little under).
const MAX_PARTS: u64 = 9_000;

/// Digits of a segment's start offset: sorts as text in offset order.
const OFFSET_DIGITS: usize = 20;

const SEGMENTS_SUFFIX: &str = ".segments";

/// Where multipart uploads in progress are recorded (see
/// [`ObjectStoreDriver::assemble_recorded`]).
pub const MULTIPART_RECORDS: &str = "_multipart";

/// What [`Driver::delete_if`] writes over an object before deleting it:
/// object storage has no conditional delete, but a conditional write, so
/// the removal takes the object over first (If-Match), then deletes it.
/// Readers of versions ([`Driver::get_versioned`]) wait for it to go.
const TOMBSTONE: &[u8] = b"\0berth: being removed\0";

/// A tombstone older than this was left by a process that died between its
/// two steps: a reader removes it.
const TOMBSTONE_STALE: Duration = Duration::from_secs(10);

/// How long [`Driver::get_versioned`] waits for a tombstone to go.
const TOMBSTONE_WAIT: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct ObjectStoreDriver {
    store: Arc<dyn ObjectStore>,
    /// Prepended to every key (`<prefix>/<key>`); empty for none.
    prefix: String,
    /// Signs blob URLs for clients that fetch from the bucket themselves
    /// (opt-in: the bucket must be reachable from every client), and how
    /// long a signed URL stays valid.
    redirects: Option<(Arc<dyn Signer>, Duration)>,
    /// The same store's multipart API, when it has one: assembling a blob
    /// then records the upload's id so an abandoned one can be aborted.
    multipart: Option<Arc<dyn MultipartStore>>,
}

/// One segment of a segmented object.
#[derive(Debug, Clone)]
struct Segment {
    path: Path,
    start: u64,
    len: u64,
    modified: SystemTime,
}

impl Segment {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Maps `object_store`'s errors to the I/O kinds [`super::Store`] knows.
fn io_err(e: object_store::Error) -> io::Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => io::ErrorKind::NotFound,
        E::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        E::InvalidPath { .. } => io::ErrorKind::InvalidInput,
        E::NotSupported { .. } | E::NotImplemented { .. } => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

/// `Ok(None)` for an absent object.
fn found<T>(r: object_store::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(io_err(e)),
    }
}

/// Whether a conditional write lost: the object changed, appeared or went.
fn lost_race(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Precondition { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::NotFound { .. }
    )
}

fn put_mode(expected: Option<&Version>) -> PutMode {
    match expected {
        None => PutMode::Create,
        Some(v) => PutMode::Update(UpdateVersion {
            e_tag: v.e_tag.clone(),
            version: v.version.clone(),
        }),
    }
}

fn range_opts(range: Range<u64>) -> GetOptions {
    GetOptions {
        range: Some(GetRange::Bounded(range)),
        ..GetOptions::default()
    }
}

impl ObjectStoreDriver {
    /// A driver over `store`, keeping every key under `prefix` (`/`-separated,
    /// no leading or trailing `/`; empty for the bucket's root).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        ObjectStoreDriver {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            redirects: None,
            multipart: None,
        }
    }

    /// Assembles blobs through `multipart` (the same store as the driver's),
    /// recording each upload: see [`Driver::abort_abandoned_writes`].
    pub fn with_multipart(mut self, multipart: Arc<dyn MultipartStore>) -> Self {
        self.multipart = Some(multipart);
        self
    }

    /// Hands out signed URLs, valid for `valid`, from
    /// [`Driver::presigned_get`]: blob GETs then redirect clients to the
    /// bucket, and the bytes never pass through the registry.
    pub fn with_redirects(mut self, signer: Arc<dyn Signer>, valid: Duration) -> Self {
        self.redirects = Some((signer, valid));
        self
    }

    /// A driver over a fresh in-memory store: for tests.
    pub fn in_memory() -> Self {
        let store = Arc::new(object_store::memory::InMemory::new());
        Self::new(store.clone(), "").with_multipart(store)
    }

    fn path(&self, key: &str) -> io::Result<Path> {
        let full = if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        };
        Path::parse(&full).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    /// The directory of `key`'s segments: `<dir>/.<name>.segments`.
    fn segments_dir(&self, key: &str) -> io::Result<Path> {
        let (dir, name) = match key.rsplit_once('/') {
            Some((dir, name)) => (Some(dir), name),
            None => (None, key),
        };
        let hidden = format!(".{name}{SEGMENTS_SUFFIX}");
        self.path(&match dir {
            Some(dir) => format!("{dir}/{hidden}"),
            None => hidden,
        })
    }

    fn segment_path(&self, key: &str, start: u64) -> io::Result<Path> {
        Ok(self
            .segments_dir(key)?
            .join(format!("{start:0OFFSET_DIGITS$}").as_str()))
    }

    /// Every segment object of `key`, sorted by offset.
    async fn all_segments(&self, key: &str) -> io::Result<Vec<Segment>> {
        let dir = self.segments_dir(key)?;
        let listed = self
            .store
            .list_with_delimiter(Some(&dir))
            .await
            .map_err(io_err)?;
        let mut segments: Vec<Segment> = listed
            .objects
            .into_iter()
            .filter_map(|m| {
                let start = m.location.filename()?.parse::<u64>().ok()?;
                Some(Segment {
                    start,
                    len: m.size,
                    modified: m.last_modified.into(),
                    path: m.location,
                })
            })
            .collect();
        segments.sort_by_key(|s| s.start);
        Ok(segments)
    }

    /// Splits `all` (sorted) into the contiguous run from offset 0, which is
    /// the object, and the rest (left over by a failed cleanup).
    fn split_run(all: Vec<Segment>) -> (Vec<Segment>, Vec<Segment>) {
        let mut run = Vec::new();
        let mut rest = Vec::new();
        let mut end = 0;
        for s in all {
            if rest.is_empty() && s.start == end && s.len > 0 {
                end = s.end();
                run.push(s);
            } else {
                rest.push(s);
            }
        }
        (run, rest)
    }

    /// The segments that make up `key` when no whole object is there.
    async fn segments(&self, key: &str) -> io::Result<Vec<Segment>> {
        Ok(Self::split_run(self.all_segments(key).await?).0)
    }

    async fn delete_paths(&self, paths: Vec<Path>) -> io::Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let stream = futures_util::stream::iter(paths.into_iter().map(Ok)).boxed();
        let mut deleted = self.store.delete_stream(stream);
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(())
    }

    /// Deletes every object under `dir` (recursively).
    async fn delete_under(&self, dir: &Path) -> io::Result<()> {
        let paths: Vec<Path> = self
            .store
            .list(Some(dir))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(io_err)?;
        self.delete_paths(paths).await
    }

    /// Streams `range` of the run `segments`, a segment at a time.
    fn stream_segments(&self, segments: Vec<Segment>, range: Range<u64>) -> ByteStream {
        let store = self.store.clone();
        let parts: Vec<(Path, Range<u64>)> = segments
            .into_iter()
            .filter(|s| s.start < range.end && s.end() > range.start)
            .map(|s| {
                let from = range.start.max(s.start) - s.start;
                let to = range.end.min(s.end()) - s.start;
                (s.path, from..to)
            })
            .collect();
        let chunks = futures_util::stream::iter(parts)
            .then(move |(path, r)| {
                let store = store.clone();
                async move {
                    let got = store.get_opts(&path, range_opts(r)).await.map_err(io_err)?;
                    Ok::<_, io::Error>(got.into_stream().map_err(io_err))
                }
            })
            .try_flatten();
        Box::pin(chunks)
    }

    /// Writes the run `segments` as one object at `to`, streaming.
    async fn assemble(&self, segments: Vec<Segment>, to: &Path) -> io::Result<()> {
        let total: u64 = segments.iter().map(|s| s.len).sum();
        if let [only] = segments.as_slice() {
            // Server-side: no bytes through this process.
            return self.store.copy(&only.path, to).await.map_err(io_err);
        }
        if total <= SEGMENT as u64 {
            let mut data = Vec::with_capacity(total as usize);
            let mut chunks = self.stream_segments(segments, 0..total);
            while let Some(c) = chunks.next().await {
                data.extend_from_slice(&c?);
            }
            return self
                .store
                .put(to, PutPayload::from(data))
                .await
                .map(drop)
                .map_err(io_err);
        }
        let part = (total.div_ceil(MAX_PARTS))
            .max(MIN_PART)
            .max(SEGMENT as u64);
        if let Some(multipart) = &self.multipart {
            return self
                .assemble_recorded(multipart, segments, to, total, part as usize)
                .await;
        }
        let upload = self.store.put_multipart(to).await.map_err(io_err)?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, part as usize);
        let mut chunks = self.stream_segments(segments, 0..total);
        let copied = async {
            while let Some(c) = chunks.next().await {
                let c = c?;
                // Two parts in flight at most: memory stays a few parts.
                writer.wait_for_capacity(2).await.map_err(io_err)?;
                writer.put(c);
            }
            Ok::<_, io::Error>(())
        }
        .await;
        match copied {
            Ok(()) => writer.finish().await.map(drop).map_err(io_err),
            Err(e) => {
                if let Err(undo) = writer.abort().await {
                    tracing::warn!(error = %undo, "could not abort a multipart upload");
                }
                Err(e)
            }
        }
    }
}

impl ObjectStoreDriver {
    /// [`Self::assemble`] as a multipart upload whose id is recorded in the
    /// bucket (`_multipart/<uuid>`) while it runs: a process killed
    /// mid-copy leaves a record, and [`Driver::abort_abandoned_writes`]
    /// aborts the upload it names (S3 keeps, and bills, the parts of an
    /// upload nobody completes or aborts).
    async fn assemble_recorded(
        &self,
        multipart: &Arc<dyn MultipartStore>,
        segments: Vec<Segment>,
        to: &Path,
        total: u64,
        part: usize,
    ) -> io::Result<()> {
        let id = multipart.create_multipart(to).await.map_err(io_err)?;
        let record = self.path(&format!(
            "{MULTIPART_RECORDS}/{}",
            uuid::Uuid::new_v4().simple()
        ))?;
        let recorded = self
            .store
            .put(&record, PutPayload::from(format!("{to}\n{id}")))
            .await;
        let copied = match recorded {
            Ok(_) => {
                self.copy_parts(multipart, segments, to, &id, total, part)
                    .await
            }
            Err(e) => Err(io_err(e)),
        };
        if copied.is_err()
            && let Err(undo) = multipart.abort_multipart(to, &id).await
        {
            tracing::warn!(error = %undo, "could not abort a multipart upload; GC aborts it later");
        }
        if let Err(e) = self.store.delete(&record).await
            && !is_not_found(&e)
        {
            tracing::warn!(error = %e, "could not remove a multipart upload's record");
        }
        copied
    }

    /// Streams the segments into parts of `part` bytes (two in flight at
    /// most) and completes the upload.
    async fn copy_parts(
        &self,
        multipart: &Arc<dyn MultipartStore>,
        segments: Vec<Segment>,
        to: &Path,
        id: &MultipartId,
        total: u64,
        part: usize,
    ) -> io::Result<()> {
        let mut chunks = self.stream_segments(segments, 0..total);
        let mut in_flight = futures_util::stream::FuturesOrdered::new();
        let mut parts: Vec<PartId> = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(part);
        let mut next = 0usize;
        let mut done = false;
        while !done {
            match chunks.next().await {
                Some(c) => buf.extend_from_slice(&c?),
                None => done = true,
            }
            while buf.len() >= part || (done && (!buf.is_empty() || next == 0)) {
                let rest = if buf.len() > part {
                    buf.split_off(part)
                } else {
                    Vec::new()
                };
                let full = std::mem::replace(&mut buf, rest);
                in_flight.push_back(multipart.put_part(to, id, next, PutPayload::from(full)));
                next += 1;
                if in_flight.len() >= 2
                    && let Some(r) = in_flight.next().await
                {
                    parts.push(r.map_err(io_err)?);
                }
                if done && buf.is_empty() {
                    break;
                }
            }
        }
        while let Some(r) = in_flight.next().await {
            parts.push(r.map_err(io_err)?);
        }
        multipart
            .complete_multipart(to, id, parts)
            .await
            .map(drop)
            .map_err(io_err)
    }
}

#[async_trait]
impl Driver for ObjectStoreDriver {
    async fn abort_abandoned_writes(&self, before: SystemTime) -> io::Result<usize> {
        let Some(multipart) = &self.multipart else {
            return Ok(0);
        };
        let dir = self.path(MULTIPART_RECORDS)?;
        let records: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(io_err)?;
        let mut aborted = 0;
        for meta in records {
            if SystemTime::from(meta.last_modified) >= before {
                continue;
            }
            let Some(raw) = found(self.store.get(&meta.location).await)? else {
                continue;
            };
            let raw = raw.bytes().await.map_err(io_err)?;
            let text = String::from_utf8_lossy(&raw);
            if let Some((to, id)) = text.split_once('\n') {
                match multipart
                    .abort_multipart(&Path::from(to), &id.to_owned())
                    .await
                {
                    Ok(()) => aborted += 1,
                    // Completed or aborted already: only the record was left.
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, upload = to, "could not abort an abandoned multipart upload");
                        continue;
                    }
                }
            }
            match self.store.delete(&meta.location).await {
                Err(e) if !is_not_found(&e) => return Err(io_err(e)),
                _ => {}
            }
        }
        Ok(aborted)
    }

    async fn presigned_get(&self, key: &str) -> io::Result<Option<String>> {
        let Some((signer, valid)) = &self.redirects else {
            return Ok(None);
        };
        let path = self.path(key)?;
        // Only a whole object has one URL (an upload's segments do not),
        // and a URL to nothing would be a client's 404 from the bucket.
        if found(self.store.head(&path).await)?.is_none() {
            return Ok(None);
        }
        let url = signer
            .signed_url(object_store::signer::Method::GET, &path, *valid)
            .await
            .map_err(io_err)?;
        Ok(Some(url.to_string()))
    }

    async fn get(&self, key: &str) -> io::Result<Option<Bytes>> {
        let path = self.path(key)?;
        let whole = match found(self.store.get(&path).await)? {
            Some(got) => Some(got.bytes().await.map_err(io_err)?),
            None => None,
        };
        if whole.is_some() {
            return Ok(whole);
        }
        let segments = self.segments(key).await?;
        let Some(end) = segments.last().map(Segment::end) else {
            return Ok(None);
        };
        let mut data = Vec::with_capacity(usize::try_from(end).unwrap_or(0));
        let mut chunks = self.stream_segments(segments, 0..end);
        while let Some(c) = chunks.next().await {
            data.extend_from_slice(&c?);
        }
        Ok(Some(data.into()))
    }

    async fn get_versioned(&self, key: &str) -> io::Result<Option<(Bytes, Version)>> {
        let path = self.path(key)?;
        let began = std::time::Instant::now();
        loop {
            let Some(got) = found(self.store.get(&path).await)? else {
                return Ok(None);
            };
            let meta = got.meta.clone();
            let data = got.bytes().await.map_err(io_err)?;
            if data.as_ref() != TOMBSTONE {
                let version = Version {
                    e_tag: meta.e_tag,
                    version: meta.version,
                };
                return Ok(Some((data, version)));
            }
            let age = SystemTime::from(meta.last_modified)
                .elapsed()
                .unwrap_or_default();
            if age > TOMBSTONE_STALE {
                tracing::warn!(
                    key,
                    "removing a tombstone left by a removal that did not finish"
                );
                match self.store.delete(&path).await {
                    Err(e) if !is_not_found(&e) => return Err(io_err(e)),
                    _ => continue,
                }
            }
            if began.elapsed() > TOMBSTONE_WAIT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{key} is being removed by another process and is still there; retry"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn put_if(&self, key: &str, data: Bytes, expected: Option<&Version>) -> io::Result<bool> {
        let path = self.path(key)?;
        let opts = PutOptions {
            mode: put_mode(expected),
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(data), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if lost_race(&e) => Ok(false),
            Err(e) => Err(io_err(e)),
        }
    }

    async fn delete_if(&self, key: &str, expected: &Version) -> io::Result<bool> {
        // Taking it over is the compare-and-swap; the delete that follows
        // removes what no other writer can have changed (a writer reading
        // the tombstone waits for it to go).
        if !self
            .put_if(key, Bytes::from_static(TOMBSTONE), Some(expected))
            .await?
        {
            return Ok(false);
        }
        match self.store.delete(&self.path(key)?).await {
            Err(e) if !is_not_found(&e) => Err(io_err(e)),
            _ => Ok(true),
        }
    }

    /// S3 acknowledges a put once it is stored durably: both kinds are equal.
    async fn put(&self, key: &str, data: Bytes, _durability: Durability) -> io::Result<()> {
        let path = self.path(key)?;
        self.store
            .put(&path, PutPayload::from(data))
            .await
            .map(drop)
            .map_err(io_err)
    }

    async fn size(&self, key: &str) -> io::Result<Option<u64>> {
        if let Some(meta) = found(self.store.head(&self.path(key)?).await)? {
            return Ok(Some(meta.size));
        }
        Ok(self.segments(key).await?.last().map(Segment::end))
    }

    async fn stream(&self, key: &str, range: Range<u64>) -> io::Result<Option<ByteStream>> {
        if range.is_empty() {
            // S3 refuses an empty range; the answer is only whether it exists.
            let exists = self.size(key).await?.is_some();
            return Ok(exists.then(|| Box::pin(futures_util::stream::empty()) as ByteStream));
        }
        let path = self.path(key)?;
        if let Some(got) = found(self.store.get_opts(&path, range_opts(range.clone())).await)? {
            return Ok(Some(Box::pin(got.into_stream().map_err(io_err))));
        }
        let segments = self.segments(key).await?;
        if segments.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.stream_segments(segments, range)))
    }

    async fn appender(&self, key: &str) -> io::Result<Box<dyn Appender>> {
        let path = self.path(key)?;
        let (start, whole) = match found(self.store.head(&path).await)? {
            Some(meta) => {
                // Segments beside a whole object are an unfinished append's.
                self.delete_under(&self.segments_dir(key)?).await?;
                (meta.size, Some(meta.size))
            }
            None => {
                let (run, rest) = Self::split_run(self.all_segments(key).await?);
                self.delete_paths(rest.into_iter().map(|s| s.path).collect())
                    .await?;
                match run.last() {
                    Some(last) => (last.end(), None),
                    None => {
                        self.store
                            .put(&path, PutPayload::default())
                            .await
                            .map_err(io_err)?;
                        (0, Some(0))
                    }
                }
            }
        };
        // Three full-size buffers: one filling, two being written.
        let reserved = super::buffer_budget::reserve(3 * SEGMENT);
        let segment = if reserved > 0 {
            SEGMENT
        } else {
            crate::metrics::upload_buffer_budget_spent();
            SMALL_SEGMENT
        };
        Ok(Box::new(ObjectAppender {
            driver: self.clone(),
            segment,
            reserved,
            key: key.to_owned(),
            offset: start,
            whole,
            copied_whole: false,
            buf: Vec::new(),
            last_write: std::time::Instant::now(),
            written: Vec::new(),
            pending: std::collections::VecDeque::new(),
            max_in_flight: if reserved > 0 { 2 } else { 1 },
            streaming: None,
        }))
    }

    async fn creator(&self, key: &str) -> io::Result<Option<Box<dyn Creator>>> {
        let Some(multipart) = self.multipart.clone() else {
            return Ok(None);
        };
        // Three full-size buffers, as an appender; without them the
        // appender's small segments keep memory bounded.
        let reserved = super::buffer_budget::reserve(3 * SEGMENT);
        if reserved == 0 {
            crate::metrics::upload_buffer_budget_spent();
            return Ok(None);
        }
        Ok(Some(Box::new(ObjectCreator {
            driver: self.clone(),
            multipart,
            path: self.path(key)?,
            reserved,
            buf: Vec::new(),
            pending: std::collections::VecDeque::new(),
            streaming: None,
        })))
    }

    async fn commit(&self, from: &str, to: &str) -> io::Result<()> {
        let (from_path, to_path) = (self.path(from)?, self.path(to)?);
        if found(self.store.head(&from_path).await)?.is_some() {
            self.store
                .copy(&from_path, &to_path)
                .await
                .map_err(io_err)?;
            self.store.delete(&from_path).await.map_err(io_err)?;
        } else {
            let segments = self.segments(from).await?;
            if segments.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("nothing to commit at {from}"),
                ));
            }
            self.assemble(segments, &to_path).await?;
        }
        self.delete_under(&self.segments_dir(from)?).await
    }

    async fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.path(prefix)?))
            .await
            .map_err(io_err)?;
        let mut names: Vec<String> = listed
            .objects
            .iter()
            .map(|m| &m.location)
            .chain(&listed.common_prefixes)
            .filter_map(|p| {
                let name = p.filename()?;
                match name.strip_prefix('.') {
                    // A segmented object is listed under its own name.
                    Some(hidden) => hidden.strip_suffix(SEGMENTS_SUFFIX).map(str::to_owned),
                    None => Some(name.to_owned()),
                }
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        let path = self.path(key)?;
        let segments = self.segments_dir(key)?;
        let (whole, under, segs) = futures_util::join!(
            async {
                match self.store.delete(&path).await {
                    Err(e) if !is_not_found(&e) => Err(io_err(e)),
                    _ => Ok(()),
                }
            },
            self.delete_under(&path),
            self.delete_under(&segments),
        );
        whole.and(under).and(segs)
    }

    async fn modified(&self, key: &str) -> io::Result<Option<SystemTime>> {
        if let Some(meta) = found(self.store.head(&self.path(key)?).await)? {
            return Ok(Some(meta.last_modified.into()));
        }
        Ok(self
            .segments(key)
            .await?
            .into_iter()
            .map(|s| s.modified)
            .max())
    }
}

/// Appends by writing segments (see the module's docs). One segment write
/// is in flight while the next buffer fills.
struct ObjectAppender {
    driver: ObjectStoreDriver,
    /// How full `buf` gets before it is written as a segment.
    segment: usize,
    /// Bytes of the buffer budget this appender holds (returned on drop).
    reserved: usize,
    key: String,
    offset: u64,
    /// The whole object's size, if one was there at open: it stays the
    /// object until `finish` deletes it.
    whole: Option<u64>,
    /// Whether the whole object's bytes were copied to segment 0.
    copied_whole: bool,
    buf: Vec<u8>,
    /// When the last segment was started (or the appender opened).
    last_write: std::time::Instant,
    /// Segments this appender wrote (or is writing): removed by `abort`.
    written: Vec<Path>,
    /// Writes in flight, oldest first: segments (`None`) or parts of
    /// `streaming`.
    pending: std::collections::VecDeque<PendingWrite>,
    /// How many writes may be in flight while the next buffer fills.
    max_in_flight: usize,
    /// The segment being streamed as a multipart upload, if any.
    streaming: Option<Streaming>,
}

/// A segment written as one multipart upload, part by part while a request
/// streams in: a push of any size becomes one segment object, which
/// [`Driver::commit`] copies server-side instead of reading it back. It
/// appears only once completed, so readers see a segment whole or not at
/// all; it is completed at the latest [`FLUSH_EVERY`] after it began (its
/// time is the session's activity) or at [`MAX_STREAMED`] bytes.
struct Streaming {
    multipart: Arc<dyn MultipartStore>,
    path: Path,
    id: MultipartId,
    /// `_multipart/<uuid>`: lets GC abort it if this process dies.
    record: Path,
    /// Parts written, in order.
    parts: Vec<PartId>,
    /// The index of the next part.
    next: usize,
    /// Bytes handed to parts so far.
    bytes: u64,
    began: std::time::Instant,
}

/// The most one streamed segment holds: S3's CopyObject, which publishes a
/// lone segment, takes objects up to 5 GiB.
const MAX_STREAMED: u64 = 4 << 30;

impl ObjectAppender {
    /// Waits for every write in flight.
    async fn settle(&mut self) -> io::Result<()> {
        self.settle_to(0).await
    }

    /// Waits for the oldest writes until at most `left` are in flight.
    async fn settle_to(&mut self, left: usize) -> io::Result<()> {
        settle(&mut self.pending, &mut self.streaming, left).await
    }

    /// Starts writing the buffer, after the write in flight: as the next
    /// part of the streamed segment, or as a segment of its own. `last`:
    /// nothing more comes, so a streamed segment is completed.
    async fn drain(&mut self, last: bool) -> io::Result<()> {
        self.settle_to(self.max_in_flight - 1).await?;
        if self.buf.is_empty() {
            if last {
                self.settle().await?;
                self.complete_streaming().await?;
            }
            return Ok(());
        }
        if let Some(len) = self.whole
            && len > 0
            && !self.copied_whole
        {
            // The whole object becomes segment 0, so the run stays whole
            // once `finish` deletes it.
            let seg0 = self.driver.segment_path(&self.key, 0)?;
            self.written.push(seg0.clone());
            self.driver
                .store
                .copy(&self.driver.path(&self.key)?, &seg0)
                .await
                .map_err(io_err)?;
            self.copied_whole = true;
        }
        let data = std::mem::take(&mut self.buf);
        self.last_write = std::time::Instant::now();
        let start = self.offset - data.len() as u64;
        // Only S3's last part may be under its minimum.
        let small = (data.len() as u64) < MIN_PART;
        if self.streaming.is_none()
            && !small
            && !last
            && let Some(multipart) = self.driver.multipart.clone()
        {
            self.begin_streaming(multipart, start).await?;
        }
        let Some(streaming) = self.streaming.as_mut() else {
            let path = self.driver.segment_path(&self.key, start)?;
            self.written.push(path.clone());
            let store = self.driver.store.clone();
            self.pending.push_back(tokio::spawn(async move {
                store
                    .put(&path, PutPayload::from(data))
                    .await
                    .map(|_| None)
                    .map_err(io_err)
            }));
            return Ok(());
        };
        let write = streaming.send(data);
        let full = streaming.bytes >= MAX_STREAMED || streaming.began.elapsed() >= FLUSH_EVERY;
        self.pending.push_back(write);
        if last || small || full {
            self.settle().await?;
            self.complete_streaming().await?;
        }
        Ok(())
    }

    /// Opens a multipart upload for the segment at `start`.
    async fn begin_streaming(
        &mut self,
        multipart: Arc<dyn MultipartStore>,
        start: u64,
    ) -> io::Result<()> {
        let path = self.driver.segment_path(&self.key, start)?;
        self.streaming = Some(Streaming::begin(&self.driver, multipart, path).await?);
        Ok(())
    }

    /// Completes the streamed segment (its parts are all settled), which
    /// makes it a segment like any other.
    async fn complete_streaming(&mut self) -> io::Result<()> {
        let Some(streaming) = self.streaming.take() else {
            return Ok(());
        };
        self.written.push(streaming.path.clone());
        streaming.complete(&self.driver.store).await
    }

    /// Removes the segments this appender wrote, and aborts the one being
    /// streamed.
    async fn undo(&mut self) -> io::Result<()> {
        self.buf.clear();
        let _ = self.settle().await;
        if let Some(streaming) = self.streaming.take() {
            streaming.abort(&self.driver.store).await;
        }
        let written = std::mem::take(&mut self.written);
        self.driver.delete_paths(written).await
    }
}

impl Streaming {
    /// Opens a multipart upload to `path`, recorded first.
    async fn begin(
        driver: &ObjectStoreDriver,
        multipart: Arc<dyn MultipartStore>,
        path: Path,
    ) -> io::Result<Self> {
        let id = multipart.create_multipart(&path).await.map_err(io_err)?;
        let record = driver.path(&format!(
            "{MULTIPART_RECORDS}/{}",
            uuid::Uuid::new_v4().simple()
        ))?;
        if let Err(e) = driver
            .store
            .put(&record, PutPayload::from(format!("{path}\n{id}")))
            .await
        {
            let _ = multipart.abort_multipart(&path, &id).await;
            return Err(io_err(e));
        }
        Ok(Streaming {
            multipart,
            path,
            id,
            record,
            parts: Vec::new(),
            next: 0,
            bytes: 0,
            began: std::time::Instant::now(),
        })
    }

    /// Sends `data` as the next part, in the background.
    fn send(&mut self, data: Vec<u8>) -> PendingWrite {
        self.bytes += data.len() as u64;
        let index = self.next;
        self.next += 1;
        let (multipart, path, id) = (self.multipart.clone(), self.path.clone(), self.id.clone());
        tokio::spawn(async move {
            multipart
                .put_part(&path, &id, index, PutPayload::from(data))
                .await
                .map(Some)
                .map_err(io_err)
        })
    }

    /// Completes the upload (its parts all settled): the object appears.
    async fn complete(self, store: &Arc<dyn ObjectStore>) -> io::Result<()> {
        let completed = self
            .multipart
            .complete_multipart(&self.path, &self.id, self.parts.clone())
            .await
            .map(drop)
            .map_err(io_err);
        if completed.is_err()
            && let Err(e) = self.multipart.abort_multipart(&self.path, &self.id).await
        {
            tracing::warn!(error = %e, "could not abort a multipart upload; GC aborts it later");
        }
        forget_record(store, &self.record).await;
        completed
    }

    async fn abort(self, store: &Arc<dyn ObjectStore>) {
        match self.multipart.abort_multipart(&self.path, &self.id).await {
            Ok(()) => forget_record(store, &self.record).await,
            // The record stays: GC tries again.
            Err(e) => {
                tracing::warn!(error = %e, "could not abort a multipart upload; GC aborts it later");
            }
        }
    }
}

/// A write in the background: a segment (`None`) or a part of a
/// [`Streaming`] upload.
type PendingWrite = tokio::task::JoinHandle<io::Result<Option<PartId>>>;

/// Waits for the oldest of `pending` until at most `left` are in flight,
/// handing the parts written to `streaming`, in order.
async fn settle(
    pending: &mut std::collections::VecDeque<PendingWrite>,
    streaming: &mut Option<Streaming>,
    left: usize,
) -> io::Result<()> {
    while pending.len() > left {
        let Some(write) = pending.pop_front() else {
            break;
        };
        let part = write.await.map_err(io::Error::other)??;
        if let (Some(part), Some(streaming)) = (part, streaming.as_mut()) {
            streaming.parts.push(part);
        }
    }
    Ok(())
}

/// On a drop: writes not yet sent are not sent, and a multipart upload
/// under way never appears: it is aborted in the background (or, if that
/// cannot run, by GC through its record).
fn abandon(
    pending: &mut std::collections::VecDeque<PendingWrite>,
    streaming: Option<Streaming>,
    store: &Arc<dyn ObjectStore>,
) {
    for write in pending.drain(..) {
        write.abort();
    }
    if let Some(streaming) = streaming
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        let store = store.clone();
        runtime.spawn(async move { streaming.abort(&store).await });
    }
}

async fn forget_record(store: &Arc<dyn ObjectStore>, record: &Path) {
    if let Err(e) = store.delete(record).await
        && !is_not_found(&e)
    {
        tracing::warn!(error = %e, "could not remove a multipart upload's record");
    }
}

impl Drop for ObjectAppender {
    fn drop(&mut self) {
        // Cut off (the request dropped): a segment write not yet sent is
        // not sent; one already sent lands as the next contiguous segment.
        abandon(&mut self.pending, self.streaming.take(), &self.driver.store);
        super::buffer_budget::release(self.reserved);
    }
}

#[async_trait]
impl Appender for ObjectAppender {
    fn offset(&self) -> u64 {
        self.offset
    }

    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut data = data;
        while !data.is_empty() {
            let room = self.segment - self.buf.len();
            let take = room.min(data.len());
            if self.buf.capacity() == 0 {
                // Lazily: a small chunk does not cost a whole segment.
                self.buf.reserve(take.max(self.segment.min(1 << 20)));
            }
            self.buf.extend_from_slice(&data[..take]);
            self.offset += take as u64;
            data = &data[take..];
            if self.buf.len() >= self.segment || self.last_write.elapsed() >= FLUSH_EVERY {
                self.drain(false).await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> io::Result<()> {
        let flushed = match self.drain(true).await {
            Ok(()) => self.settle().await,
            Err(e) => Err(e),
        };
        // Deleting the whole object is what makes the segments the object.
        let published = match flushed {
            Ok(()) if self.whole.is_some() && !self.written.is_empty() => {
                let path = self.driver.path(&self.key)?;
                self.driver.store.delete(&path).await.map_err(io_err)
            }
            other => other,
        };
        if let Err(e) = published {
            if let Err(undo) = self.undo().await {
                tracing::warn!(error = %undo, "could not remove the segments of a failed append");
            }
            return Err(e);
        }
        Ok(())
    }

    async fn abort(mut self: Box<Self>) -> io::Result<()> {
        self.undo().await
    }
}

/// Creates one object as a multipart upload to its own key, completed only
/// by `finish` (an object of at most one buffer is one plain put then).
struct ObjectCreator {
    driver: ObjectStoreDriver,
    multipart: Arc<dyn MultipartStore>,
    path: Path,
    reserved: usize,
    buf: Vec<u8>,
    pending: std::collections::VecDeque<PendingWrite>,
    streaming: Option<Streaming>,
}

impl ObjectCreator {
    /// Waits for the oldest parts until at most `left` are in flight.
    async fn settle_to(&mut self, left: usize) -> io::Result<()> {
        settle(&mut self.pending, &mut self.streaming, left).await
    }

    /// Sends the full buffer as the next part (two in flight at most).
    async fn send(&mut self) -> io::Result<()> {
        self.settle_to(1).await?;
        if self.streaming.is_none() {
            self.streaming = Some(
                Streaming::begin(&self.driver, self.multipart.clone(), self.path.clone()).await?,
            );
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(SEGMENT));
        if let Some(streaming) = self.streaming.as_mut() {
            let write = streaming.send(data);
            self.pending.push_back(write);
        }
        Ok(())
    }

    async fn undo(&mut self) {
        for write in self.pending.drain(..) {
            let _ = write.await;
        }
        if let Some(streaming) = self.streaming.take() {
            streaming.abort(&self.driver.store).await;
        }
    }
}

impl Drop for ObjectCreator {
    fn drop(&mut self) {
        abandon(&mut self.pending, self.streaming.take(), &self.driver.store);
        super::buffer_budget::release(self.reserved);
    }
}

#[async_trait]
impl Creator for ObjectCreator {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        let mut data = &data[..];
        while !data.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf
                    .reserve(SEGMENT.min(1 << 20).max(data.len().min(SEGMENT)));
            }
            let take = (SEGMENT - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() >= SEGMENT {
                self.send().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> io::Result<()> {
        if self.streaming.is_none() {
            // Small: one put.
            let data = std::mem::take(&mut self.buf);
            return self
                .driver
                .store
                .put(&self.path, PutPayload::from(data))
                .await
                .map(drop)
                .map_err(io_err);
        }
        let sent = async {
            if !self.buf.is_empty() {
                self.send().await?;
            }
            self.settle_to(0).await
        }
        .await;
        if let Err(e) = sent {
            self.undo().await;
            return Err(e);
        }
        match self.streaming.take() {
            Some(streaming) => streaming.complete(&self.driver.store).await,
            None => Ok(()),
        }
    }

    async fn abort(mut self: Box<Self>) -> io::Result<()> {
        self.undo().await;
        Ok(())
    }
}

/// Where an S3 bucket is. Credentials come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or a
/// web identity / container role), as every AWS client finds them.
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    pub bucket: String,
    /// Keys are kept under this prefix in the bucket; empty for its root.
    pub prefix: String,
    /// The server's URL (e.g. `http://127.0.0.1:7070`); AWS when `None`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Redirect blob GETs to URLs signed for this long (`None`: the
    /// registry streams the bytes itself).
    pub redirect: Option<Duration>,
}

/// Why S3 storage cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the S3 settings are not usable: {0}; check the bucket name, endpoint URL and region")]
    Config(#[source] object_store::Error),
    #[error("bucket {bucket} does not exist at {endpoint}; create it, or name an existing one")]
    BucketMissing { bucket: String, endpoint: String },
    #[error(
        "the S3 server at {endpoint} refused the credentials for bucket {bucket}; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the role) and that they may read, write and list the bucket"
    )]
    CredentialsRefused { bucket: String, endpoint: String },
    #[error(
        "cannot write to bucket {bucket} at {endpoint}: {source}; check the endpoint is reachable and the bucket writable"
    )]
    Unusable {
        bucket: String,
        endpoint: String,
        #[source]
        source: object_store::Error,
    },
}

impl ObjectStoreDriver {
    /// A driver over an S3 bucket. Nothing is sent yet: see [`Self::check`].
    pub fn s3(config: &S3Config) -> Result<Self, ConnectError> {
        use object_store::aws::AmazonS3Builder;
        use object_store::{ClientOptions, RetryConfig};
        let http = config
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        // No deadline on a whole request: a blob streams to a slow client
        // for as long as it reads. A stalled read still ends the request.
        let client = ClientOptions::new()
            .with_timeout_disabled()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_read_timeout(std::time::Duration::from_secs(60));
        let mut builder = AmazonS3Builder::from_env()
            .with_client_options(client)
            .with_bucket_name(&config.bucket)
            // Plain HTTP only when asked for by the endpoint (loopback tests).
            .with_allow_http(http)
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: std::time::Duration::from_secs(30),
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        let store = Arc::new(builder.build().map_err(ConnectError::Config)?);
        let driver = Self::new(store.clone(), &config.prefix).with_multipart(store.clone());
        Ok(match config.redirect {
            Some(valid) => driver.with_redirects(store, valid),
            None => driver,
        })
    }

    /// Writes and reads back a small object: the bucket exists and the
    /// credentials may use it. Errors say which.
    pub async fn check(&self, config: &S3Config) -> Result<(), ConnectError> {
        let endpoint = config
            .endpoint
            .clone()
            .unwrap_or_else(|| "AWS S3".to_owned());
        let bucket = config.bucket.clone();
        let path = self.path(super::layout::probe()).map_err(|e| {
            ConnectError::Config(object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })
        })?;
        let r = match self
            .store
            .put(&path, PutPayload::from_static(b"probe"))
            .await
        {
            Ok(_) => self.store.head(&path).await.map(drop),
            Err(e) => Err(e),
        };
        r.map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                ConnectError::BucketMissing { bucket, endpoint }
            }
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                ConnectError::CredentialsRefused { bucket, endpoint }
            }
            source => ConnectError::Unusable {
                bucket,
                endpoint,
                source,
            },
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn seg(start: u64, len: u64) -> Segment {
        Segment {
            path: Path::from(format!("s/{start}")),
            start,
            len,
            modified: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_object_is_the_contiguous_run_from_zero() {
        let (run, rest) =
            ObjectStoreDriver::split_run(vec![seg(0, 3), seg(3, 2), seg(9, 1), seg(10, 1)]);
        assert_eq!(run.iter().map(|s| s.start).collect::<Vec<_>>(), [0, 3]);
        assert_eq!(rest.len(), 2);
        let (run, _) = ObjectStoreDriver::split_run(vec![seg(4, 3)]);
        assert!(run.is_empty());
    }

    #[test]
    fn segments_hide_beside_their_object() {
        let d = ObjectStoreDriver::new(Arc::new(object_store::memory::InMemory::new()), "/p/");
        assert_eq!(
            d.segment_path("a/b/data", 5).unwrap().as_ref(),
            "p/a/b/.data.segments/00000000000000000005"
        );
        assert_eq!(d.path("x").unwrap().as_ref(), "p/x");
    }
}
