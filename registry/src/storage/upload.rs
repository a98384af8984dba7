//! Upload sessions: receive bytes, hash them as they arrive, and publish a
//! blob only once its size and digest are verified.
//!
//! The session's state lives in storage (`_uploads/<id>/data`: its length is
//! the offset), so an upload survives a restart and any replica can resume
//! it. The running hash is only a cache: when it is missing or behind (after
//! a restart, or for another algorithm) the data is hashed again from storage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::{StorageError, Store, layout};
use crate::oci::{Algorithm, Digest, Name, digest::Hasher};

/// Why an upload request failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("upload session not found; start a new one with POST /v2/<name>/blobs/uploads/")]
    Unknown,
    #[error(
        "chunk starts at byte {got} but the upload holds {size} bytes; send the chunk that starts at {size}"
    )]
    OutOfOrder { size: u64, got: u64 },
    #[error("received {got} bytes but the request declared {want}")]
    SizeMismatch { want: u64, got: u64 },
    #[error("uploaded content has digest {actual}, not {expected}; the upload was discarded")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("the request body ended early: {0}")]
    Body(String),
    #[error(
        "another request is writing to this upload; wait for it to finish, then ask GET for the upload's range and resume"
    )]
    Busy,
    #[error("the upload was cancelled by a DELETE while this request was writing to it")]
    Cancelled,
    /// The verified blob would take its namespace past its quota; the
    /// session was discarded.
    #[error(transparent)]
    OverQuota(#[from] crate::quota::Exceeded),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Per-session running hashes, and a lock so one session takes one request
/// at a time. An entry exists only while a request holds it or the session
/// has a running hash worth keeping: a request naming a session that does
/// not exist leaves nothing behind.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

#[derive(Default)]
struct Session {
    cache: tokio::sync::Mutex<HashCache>,
    /// Wakes the request writing to this session when a DELETE cancels it.
    cancel: tokio::sync::Notify,
}

#[derive(Default)]
struct HashCache {
    /// The hash of the first `offset` bytes of the session's data.
    state: Option<(u64, Hasher)>,
}

/// How long a request waits for another request on the same session to
/// finish before it is refused: a retry may arrive just before the server
/// notices the first attempt's connection is gone, but a stalled writer
/// must not queue everyone behind it.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a DELETE waits for the writer it cancelled to let go.
const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Sessions {
    fn get(&self, id: &str) -> Arc<Session> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(id) {
            return s.clone();
        }
        let s = Arc::new(Session::default());
        map.insert(id.to_owned(), s.clone());
        s
    }

    /// How many sessions are held in memory (for tests and metrics).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a request holds the session's lock now.
    fn is_busy(&self, id: &str) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).is_some_and(|s| s.cache.try_lock().is_err())
    }

    fn forget(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Drops the entry `session` for a session found not to exist, unless
    /// another request holds it too (that one will drop it in turn).
    fn forget_unknown(&self, id: &str, session: Arc<Session>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(id).is_some_and(|s| Arc::ptr_eq(s, &session)) && Arc::strong_count(&session) == 2
        {
            map.remove(id);
        }
    }
}

impl Session {
    /// The session's lock, waiting at most [`BUSY_WAIT`] for another request.
    async fn lock(&self) -> Result<tokio::sync::MutexGuard<'_, HashCache>, UploadError> {
        tokio::time::timeout(BUSY_WAIT, self.cache.lock())
            .await
            .map_err(|_| UploadError::Busy)
    }
}

/// What a completing request's bytes became.
enum Received {
    /// Appended to the session's data, which now holds this many bytes.
    Appended(u64),
    /// On their way to the blob's key, which appears when `creator`
    /// finishes; the session's data stays empty.
    Created {
        size: u64,
        hasher: Box<Hasher>,
        creator: Box<dyn super::driver::Creator>,
    },
}

impl Received {
    fn size(&self) -> u64 {
        match self {
            Received::Appended(size) | Received::Created { size, .. } => *size,
        }
    }
}

/// Marks a one-request push in its session's start-time file.
const MONOLITHIC: &str = "monolithic";

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the next chunk of a request body, bounded by what the client declared.
pub type BodyChunk = Result<Bytes, String>;

impl Store {
    /// Opens a session; `algorithm` is the digest the client announced, if
    /// any, so the running hash is of the right kind.
    pub async fn upload_start(
        &self,
        name: &Name,
        algorithm: Option<Algorithm>,
    ) -> Result<String, StorageError> {
        self.start_session(name, algorithm, false).await
    }

    /// Opens a session for a one-request (monolithic) push: no client knows
    /// its id, so once its request is gone it can be reclaimed at once
    /// (see [`Self::purge_stale_uploads`]).
    pub async fn upload_start_monolithic(
        &self,
        name: &Name,
        algorithm: Option<Algorithm>,
    ) -> Result<String, StorageError> {
        self.start_session(name, algorithm, true).await
    }

    async fn start_session(
        &self,
        name: &Name,
        algorithm: Option<Algorithm>,
        monolithic: bool,
    ) -> Result<String, StorageError> {
        let id = uuid::Uuid::new_v4().to_string();
        let started = if monolithic {
            format!("{} {MONOLITHIC}", unix_now())
        } else {
            unix_now().to_string()
        };
        self.put_scratch(&layout::upload_started(name, &id), Bytes::from(started))
            .await?;
        self.put_scratch(&layout::upload_data(name, &id), Bytes::new())
            .await?;
        let session = self.sessions.get(&id);
        session.cache.lock().await.state =
            Some((0, algorithm.unwrap_or(Algorithm::Sha256).hasher()));
        Ok(id)
    }

    /// Bytes received so far.
    pub async fn upload_size(&self, name: &Name, id: &str) -> Result<u64, UploadError> {
        self.size(&layout::upload_data(name, id))
            .await?
            .ok_or(UploadError::Unknown)
    }

    /// Appends a chunk. `start` (from Content-Range) must equal the bytes
    /// held; `declared` (from Content-Range or Content-Length) must equal the
    /// bytes received. A chunk that fails is rolled back whole.
    pub async fn upload_append<S>(
        &self,
        name: &Name,
        id: &str,
        start: Option<u64>,
        declared: Option<u64>,
        body: S,
    ) -> Result<u64, UploadError>
    where
        S: Stream<Item = BodyChunk> + Send + Unpin,
    {
        let session = self.sessions.get(id);
        let result = self
            .receive_cancellable(&session, name, id, None, start, declared, body)
            .await
            .map(|(_, received)| received.size());
        if matches!(result, Err(UploadError::Unknown)) {
            self.sessions.forget_unknown(id, session);
        }
        result
    }

    /// Receives a request's bytes under the session's lock; a DELETE of the
    /// session ends it early (the DELETE removes what was written). Returns
    /// the lock, still held, so a completion goes on under it. `expected`:
    /// the digest, when this request completes the upload.
    #[allow(clippy::too_many_arguments)]
    async fn receive_cancellable<'s, S>(
        &self,
        session: &'s Session,
        name: &Name,
        id: &str,
        expected: Option<&Digest>,
        start: Option<u64>,
        declared: Option<u64>,
        body: S,
    ) -> Result<(tokio::sync::MutexGuard<'s, HashCache>, Received), UploadError>
    where
        S: Stream<Item = BodyChunk> + Send + Unpin,
    {
        // Listening before taking the lock: a DELETE that comes later is heard.
        let cancelled = session.cancel.notified();
        tokio::pin!(cancelled);
        cancelled.as_mut().enable();
        let mut cache = session.lock().await?;
        let received = tokio::select! {
            biased;
            () = cancelled => Err(UploadError::Cancelled),
            r = self.receive_locked(&mut cache, name, id, expected, start, declared, body) => r,
        }?;
        Ok((cache, received))
    }

    /// When this request completes the upload, every byte of the blob comes
    /// in it, and the driver can create the blob's key directly (object
    /// storage), the bytes go there, not to the session's data: no copy at
    /// commit. Otherwise they are appended as by any chunk.
    #[allow(clippy::too_many_arguments)]
    async fn receive_locked<S>(
        &self,
        cache: &mut HashCache,
        name: &Name,
        id: &str,
        expected: Option<&Digest>,
        start: Option<u64>,
        declared: Option<u64>,
        body: S,
    ) -> Result<Received, UploadError>
    where
        S: Stream<Item = BodyChunk> + Send + Unpin,
    {
        // A session this process knows holds bytes (a PATCH went before,
        // as docker pushes) is appended to without asking storage.
        let known_written = cache.state.as_ref().is_some_and(|(offset, _)| *offset > 0);
        if let Some(expected) = expected
            && start.unwrap_or(0) == 0
            && !known_written
        {
            let blob = layout::blob(expected);
            let creator = self
                .driver
                .creator(&blob)
                .await
                .map_err(|e| StorageError::new("create", &blob, e))?;
            if let Some(creator) = creator
                && self.upload_size(name, id).await? == 0
                && self.size(&blob).await?.is_none()
            {
                return self
                    .create_locked(creator, &blob, expected.algorithm(), declared, body)
                    .await;
            }
        }
        self.append_locked(cache, name, id, start, declared, body)
            .await
            .map(Received::Appended)
    }

    /// Streams a request's body into `creator`, hashing it; nothing is
    /// visible until the caller finishes the creator.
    async fn create_locked<S>(
        &self,
        mut creator: Box<dyn super::driver::Creator>,
        key: &str,
        alg: Algorithm,
        declared: Option<u64>,
        mut body: S,
    ) -> Result<Received, UploadError>
    where
        S: Stream<Item = BodyChunk> + Send + Unpin,
    {
        let mut hasher = alg.hasher();
        let mut received: u64 = 0;
        let failure = loop {
            let chunk = match body.next().await {
                None => break None,
                Some(Err(e)) => break Some(UploadError::Body(e)),
                Some(Ok(c)) => c,
            };
            received += chunk.len() as u64;
            if declared.is_some_and(|want| received > want) {
                break Some(UploadError::SizeMismatch {
                    want: declared.unwrap_or(0),
                    got: received,
                });
            }
            hasher.update(&chunk);
            if let Err(e) = creator.write(chunk).await {
                break Some(StorageError::new("write", key, e).into());
            }
        };
        let failure = failure.or(match declared {
            Some(want) if want != received => Some(UploadError::SizeMismatch {
                want,
                got: received,
            }),
            _ => None,
        });
        if let Some(err) = failure {
            if let Err(e) = creator.abort().await {
                tracing::warn!(key, error = %e, "could not drop a failed push's bytes");
            }
            return Err(err);
        }
        crate::metrics::bytes_in(received);
        Ok(Received::Created {
            size: received,
            hasher: Box::new(hasher),
            creator,
        })
    }

    /// Appends the final chunk (if any, checked like [`Self::upload_append`]),
    /// verifies the digest, publishes the blob and links it into the
    /// repository. Returns the blob's size.
    pub async fn upload_complete<S>(
        &self,
        name: &Name,
        id: &str,
        expected: &Digest,
        start: Option<u64>,
        declared: Option<u64>,
        body: S,
    ) -> Result<u64, UploadError>
    where
        S: Stream<Item = BodyChunk> + Send + Unpin,
    {
        self.upload_complete_admitted(name, id, expected, start, declared, body, |_| Ok(()))
            .await
            .map(|(size, ())| size)
    }

    /// [`Self::upload_complete`], calling `verified` as soon as the size
    /// and digest check out, before the blob is made durable and visible:
    /// a mirror fetch releases its client's last bytes then, so the client
    /// does not wait on this registry's fsyncs (the bytes it holds are the
    /// right ones whatever happens to storage next). Not called when the
    /// upload fails verification.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_complete_then<S, F>(
        &self,
        name: &Name,
        id: &str,
        expected: &Digest,
        start: Option<u64>,
        declared: Option<u64>,
        body: S,
        verified: F,
    ) -> Result<u64, UploadError>
    where
        S: Stream<Item = BodyChunk> + Send + Unpin,
        F: FnOnce() + Send,
    {
        let session = self.sessions.get(id);
        let result = self
            .complete_locked(
                &session,
                name,
                id,
                expected,
                start,
                declared,
                body,
                |_| Ok(()),
                verified,
            )
            .await
            .map(|(size, ())| size);
        if matches!(result, Err(UploadError::Unknown)) {
            self.sessions.forget_unknown(id, session);
        }
        result
    }

    /// [`Self::upload_complete`], asking `admit` (with the blob's size, once
    /// its digest is verified) whether it may be stored: refused, the
    /// session is discarded and nothing is published. What `admit` returns
    /// (a quota reservation) is held through the commit and handed back.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_complete_admitted<S, T>(
        &self,
        name: &Name,
        id: &str,
        expected: &Digest,
        start: Option<u64>,
        declared: Option<u64>,
        body: S,
        admit: impl FnOnce(u64) -> Result<T, crate::quota::Exceeded> + Send,
    ) -> Result<(u64, T), UploadError>
    where
        S: Stream<Item = BodyChunk> + Send + Unpin,
        T: Send,
    {
        let session = self.sessions.get(id);
        let result = self
            .complete_locked(
                &session,
                name,
                id,
                expected,
                start,
                declared,
                body,
                admit,
                || {},
            )
            .await;
        if matches!(result, Err(UploadError::Unknown)) {
            self.sessions.forget_unknown(id, session);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn complete_locked<S, T, F>(
        &self,
        session: &Session,
        name: &Name,
        id: &str,
        expected: &Digest,
        start: Option<u64>,
        declared: Option<u64>,
        body: S,
        admit: impl FnOnce(u64) -> Result<T, crate::quota::Exceeded> + Send,
        verified: F,
    ) -> Result<(u64, T), UploadError>
    where
        S: Stream<Item = BodyChunk> + Send + Unpin,
        T: Send,
        F: FnOnce() + Send,
    {
        let (mut cache, received) = self
            .receive_cancellable(session, name, id, Some(expected), start, declared, body)
            .await?;
        let data = layout::upload_data(name, id);
        let (size, actual, creator) = match received {
            Received::Appended(size) => {
                let actual = match cache.state.take() {
                    Some((offset, h))
                        if offset == size && h.algorithm() == expected.algorithm() =>
                    {
                        h.finish()
                    }
                    _ => self.hash_object(&data, expected.algorithm(), size).await?,
                };
                (size, actual, None)
            }
            Received::Created {
                size,
                hasher,
                creator,
            } => (size, hasher.finish(), Some(creator)),
        };
        let refused = if &actual != expected {
            Some(UploadError::DigestMismatch {
                expected: expected.clone(),
                actual,
            })
        } else {
            None
        };
        let admitted = match refused.map_or_else(|| admit(size).map_err(UploadError::from), Err) {
            Ok(a) => a,
            Err(refused) => {
                if let Some(creator) = creator
                    && let Err(e) = creator.abort().await
                {
                    tracing::warn!(upload = id, error = %e, "could not drop a refused push's bytes");
                }
                self.upload_cancel_locked(name, id).await?;
                return Err(refused);
            }
        };
        verified();
        let blob = layout::blob(expected);
        match creator {
            Some(creator) => creator
                .finish()
                .await
                .map_err(|e| StorageError::new("create", &blob, e))?,
            None => {
                if self.size(&blob).await? != Some(size) {
                    self.commit(&data, &blob).await?;
                }
            }
        }
        self.link_blob(name, expected).await?;
        self.known.remember(name, expected, size);
        self.upload_cancel_locked(name, id).await?;
        Ok((size, admitted))
    }

    /// Removes sessions idle (no bytes received) for more than `max_age`,
    /// and one-request pushes idle for more than `monolithic_max_age`:
    /// clients that vanished mid-push would otherwise hold their bytes
    /// forever. Returns how many were removed.
    pub async fn purge_stale_uploads(
        &self,
        max_age: std::time::Duration,
    ) -> Result<usize, StorageError> {
        self.purge_uploads_idle(max_age, max_age).await
    }

    /// [`Self::purge_stale_uploads`] with a separate (shorter) limit for
    /// one-request pushes, whose ids no client holds.
    pub async fn purge_uploads_idle(
        &self,
        max_age: std::time::Duration,
        monolithic_max_age: std::time::Duration,
    ) -> Result<usize, StorageError> {
        let now = std::time::SystemTime::now();
        let mut purged = 0;
        for repo in self.repositories_with_uploads().await? {
            let Ok(name) = repo.parse::<Name>() else {
                continue;
            };
            for id in self
                .list(&format!("{}/_uploads", layout::repository(&name)))
                .await?
            {
                let started = self.get(&layout::upload_started(&name, &id)).await?;
                let started = started.as_deref().and_then(|b| std::str::from_utf8(b).ok());
                let monolithic = started.is_some_and(|s| s.contains(MONOLITHIC));
                let started = started
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(|t| std::time::UNIX_EPOCH + std::time::Duration::from_secs(t));
                // Last activity: the data's last write, else the start.
                let data = layout::upload_data(&name, &id);
                let written = self
                    .driver
                    .modified(&data)
                    .await
                    .map_err(|e| StorageError::new("stat", &data, e))?;
                let last = written.max(started);
                let limit = if monolithic {
                    monolithic_max_age
                } else {
                    max_age
                };
                // A session with no start time is a crash between its two writes: stale too.
                let stale = last.is_none_or(|t| now.duration_since(t).unwrap_or_default() > limit);
                // A request writing to it right now keeps it, however old.
                let busy = self.sessions.is_busy(&id);
                if stale && !busy {
                    self.delete(&layout::upload_dir(&name, &id)).await?;
                    self.sessions.forget(&id);
                    purged += 1;
                }
            }
        }
        Ok(purged)
    }

    /// After a crash: removes temporary files and one-request pushes last
    /// written before `before` (this process's start, so none of them is
    /// in use by it). Returns (temporaries, sessions) removed.
    pub async fn reclaim_after_crash(
        &self,
        before: std::time::SystemTime,
    ) -> Result<(usize, usize), StorageError> {
        let tmp = self
            .driver
            .reclaim_temporaries(before)
            .await
            .map_err(|e| StorageError::new("reclaim", "temporary files", e))?;
        let age = std::time::SystemTime::now()
            .duration_since(before)
            .unwrap_or_default();
        let sessions = self
            .purge_uploads_idle(std::time::Duration::MAX, age)
            .await?;
        Ok((tmp, sessions))
    }

    /// Abandons a session and its data.
    pub async fn upload_cancel(&self, name: &Name, id: &str) -> Result<(), UploadError> {
        let session = self.sessions.get(id);
        // A writer in flight (perhaps stalled) gives way to the DELETE.
        session.cancel.notify_waiters();
        let result = match tokio::time::timeout(CANCEL_WAIT, session.cache.lock()).await {
            Err(_) => Err(UploadError::Busy),
            Ok(_guard) => match self.upload_size(name, id).await {
                Ok(_) => self.upload_cancel_locked(name, id).await,
                Err(e) => Err(e),
            },
        };
        if matches!(result, Err(UploadError::Unknown)) {
            self.sessions.forget_unknown(id, session);
        }
        result
    }

    async fn upload_cancel_locked(&self, name: &Name, id: &str) -> Result<(), UploadError> {
        self.delete(&layout::upload_dir(name, id)).await?;
        self.sessions.forget(id);
        Ok(())
    }

    async fn append_locked<S>(
        &self,
        cache: &mut HashCache,
        name: &Name,
        id: &str,
        start: Option<u64>,
        declared: Option<u64>,
        mut body: S,
    ) -> Result<u64, UploadError>
    where
        S: Stream<Item = BodyChunk> + Send + Unpin,
    {
        let size = self.upload_size(name, id).await?;
        if let Some(got) = start
            && got != size
        {
            return Err(UploadError::OutOfOrder { size, got });
        }
        let data = layout::upload_data(name, id);
        let mut hasher = match cache.state.take() {
            Some((offset, h)) if offset == size => h,
            other => {
                let alg = other
                    .map(|(_, h)| h.algorithm())
                    .unwrap_or(Algorithm::Sha256);
                self.hasher_at(&data, alg, size).await?
            }
        };
        let mut appender = self
            .driver
            .appender(&data)
            .await
            .map_err(|e| StorageError::new("append", &data, e))?;
        let mut received: u64 = 0;
        let failure = loop {
            let chunk = match body.next().await {
                None => break None,
                Some(Err(e)) => break Some(UploadError::Body(e)),
                Some(Ok(c)) => c,
            };
            received += chunk.len() as u64;
            if declared.is_some_and(|want| received > want) {
                break Some(UploadError::SizeMismatch {
                    want: declared.unwrap_or(0),
                    got: received,
                });
            }
            // Owned: a driver may keep the chunk rather than copy it.
            if let Err(e) = appender.write_bytes(chunk.clone()).await {
                break Some(StorageError::new("write", &data, e).into());
            }
            hasher.update(&chunk);
        };
        let failure = failure.or(match declared {
            Some(want) if want != received => Some(UploadError::SizeMismatch {
                want,
                got: received,
            }),
            _ => None,
        });
        if let Some(err) = failure {
            // Roll the chunk back; the next request re-hashes from storage.
            if let Err(e) = appender.abort().await {
                tracing::warn!(upload = id, error = %e, "could not roll back a failed chunk");
            }
            return Err(err);
        }
        let offset = appender.offset();
        appender
            .finish()
            .await
            .map_err(|e| StorageError::new("flush", &data, e))?;
        crate::metrics::bytes_in(received);
        cache.state = Some((offset, hasher));
        Ok(offset)
    }

    /// A hasher fed with the first `len` bytes of an object.
    async fn hasher_at(&self, key: &str, alg: Algorithm, len: u64) -> Result<Hasher, StorageError> {
        let mut hasher = alg.hasher();
        if len == 0 {
            return Ok(hasher);
        }
        let err = |e| StorageError::new("read", key, e);
        let mut chunks = self
            .driver
            .stream(key, 0..len)
            .await
            .map_err(err)?
            .ok_or_else(|| StorageError::new("read", key, std::io::ErrorKind::NotFound.into()))?;
        while let Some(chunk) = chunks.next().await {
            hasher.update(&chunk.map_err(err)?);
        }
        Ok(hasher)
    }

    /// The digest of the first `len` bytes of an object.
    async fn hash_object(
        &self,
        key: &str,
        alg: Algorithm,
        len: u64,
    ) -> Result<Digest, StorageError> {
        Ok(self.hasher_at(key, alg, len).await?.finish())
    }
}
