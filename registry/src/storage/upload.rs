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
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Per-session running hashes, and a lock so one session takes one request at a time.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<HashCache>>>>,
}

#[derive(Default)]
struct HashCache {
    /// The hash of the first `offset` bytes of the session's data.
    state: Option<(u64, Hasher)>,
}

impl Sessions {
    fn get(&self, id: &str) -> Arc<tokio::sync::Mutex<HashCache>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.to_owned()).or_default().clone()
    }

    fn forget(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

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
        let id = uuid::Uuid::new_v4().to_string();
        self.put_scratch(
            &layout::upload_started(name, &id),
            Bytes::from(unix_now().to_string()),
        )
        .await?;
        self.put_scratch(&layout::upload_data(name, &id), Bytes::new())
            .await?;
        let session = self.sessions.get(&id);
        session.lock().await.state = Some((0, algorithm.unwrap_or(Algorithm::Sha256).hasher()));
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
        let mut cache = session.lock().await;
        self.append_locked(&mut cache, name, id, start, declared, body)
            .await
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
        let session = self.sessions.get(id);
        let mut cache = session.lock().await;
        let size = self
            .append_locked(&mut cache, name, id, start, declared, body)
            .await?;
        let data = layout::upload_data(name, id);
        let actual = match cache.state.take() {
            Some((offset, h)) if offset == size && h.algorithm() == expected.algorithm() => {
                h.finish()
            }
            _ => self.hash_object(&data, expected.algorithm(), size).await?,
        };
        if &actual != expected {
            self.upload_cancel_locked(name, id).await?;
            return Err(UploadError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        let blob = layout::blob(expected);
        if self.size(&blob).await? != Some(size) {
            self.commit(&data, &blob).await?;
        }
        self.link_blob(name, expected).await?;
        self.upload_cancel_locked(name, id).await?;
        Ok(size)
    }

    /// Removes sessions started more than `max_age` ago: clients that
    /// vanished mid-push would otherwise hold their bytes forever.
    /// Returns how many were removed.
    pub async fn purge_stale_uploads(
        &self,
        max_age: std::time::Duration,
    ) -> Result<usize, StorageError> {
        let now = unix_now();
        let mut purged = 0;
        for repo in self.repositories_with_uploads().await? {
            let Ok(name) = repo.parse::<Name>() else {
                continue;
            };
            for id in self
                .list(&format!("{}/_uploads", layout::repository(&name)))
                .await?
            {
                let started = self
                    .get(&layout::upload_started(&name, &id))
                    .await?
                    .and_then(|b| {
                        std::str::from_utf8(&b)
                            .ok()
                            .and_then(|s| s.trim().parse::<u64>().ok())
                    });
                // A session with no start time is a crash between its two writes: stale too.
                if started.is_none_or(|t| now.saturating_sub(t) > max_age.as_secs()) {
                    self.delete(&layout::upload_dir(&name, &id)).await?;
                    self.sessions.forget(&id);
                    purged += 1;
                }
            }
        }
        Ok(purged)
    }

    /// Abandons a session and its data.
    pub async fn upload_cancel(&self, name: &Name, id: &str) -> Result<(), UploadError> {
        let session = self.sessions.get(id);
        let _guard = session.lock().await;
        self.upload_size(name, id).await?;
        self.upload_cancel_locked(name, id).await
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
            if let Err(e) = appender.write(&chunk).await {
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
