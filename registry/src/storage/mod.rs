//! The registry's storage operations, written once over a [`Driver`].
//!
//! Every operation that makes content visible does so last: bytes are
//! written and verified first, then a small link is written atomically. A
//! crash in between leaves unreferenced bytes (for GC), never a visible
//! partial object.

pub mod buffer_budget;
pub mod cache_cap;
pub mod catalog;
pub mod driver;
pub mod file_chunks;
pub mod fs;
pub mod gc;
pub mod layout;
pub mod locks;
pub mod pulls;
pub mod references;
pub mod retention;
pub mod s3;
pub mod upload;

use std::io;
use std::sync::Arc;

use bytes::Bytes;

pub use driver::{ByteStream, Driver, Durability};
pub use upload::UploadError;

use crate::oci::manifest::{self, Descriptor};
use crate::oci::{Digest, Name, Reference, Tag};

/// An I/O failure in the storage backend, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("storage {op} of {key} failed: {source}")]
pub struct StorageError {
    op: &'static str,
    key: String,
    #[source]
    source: io::Error,
}

impl StorageError {
    pub fn new(op: &'static str, key: &str, source: io::Error) -> Self {
        StorageError {
            op,
            key: key.to_owned(),
            source,
        }
    }

    /// Whether the volume is full (or the quota spent): freeing space, not
    /// retrying, is what helps.
    pub fn is_storage_full(&self) -> bool {
        is_storage_full(&self.source)
    }

    /// Whether a manifest PUT found, just before its commit, that something
    /// it references was deleted (by GC) after the request's own checks.
    pub fn is_reference_gone(&self) -> bool {
        self.op == "verify" && self.source.kind() == io::ErrorKind::NotFound
    }
}

pub fn is_storage_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
}

/// How often a tag write is tried against concurrent writers.
const TAG_WRITE_ATTEMPTS: u32 = 16;

/// A tag object's target; `None` if unreadable (or a removal's tombstone).
fn parse_tag_target(raw: &[u8]) -> Option<Digest> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// A manifest as stored: its digest, media type and exact bytes.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// What a repository holds (see [`Store::repository_contents`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepositoryContents {
    /// Its manifest revisions.
    pub manifests: Vec<Digest>,
    /// The blobs linked into it.
    pub blobs: Vec<Digest>,
}

pub struct Store {
    driver: Arc<dyn Driver>,
    sessions: upload::Sessions,
    catalog: catalog::Catalog,
    repo_locks: locks::RepoLocks,
    /// Blobs seen in place a moment ago (see `references.rs`).
    known: references::KnownBlobs,
    /// The last write probe's answer (see [`Store::probe_storage`]).
    writable: std::sync::atomic::AtomicBool,
    /// Pulls noted since the last flush (see [`pulls`]).
    pulls: pulls::Pulls,
}

impl Store {
    pub fn new(driver: Arc<dyn Driver>) -> Self {
        Store {
            driver,
            sessions: upload::Sessions::default(),
            catalog: catalog::Catalog::default(),
            repo_locks: locks::RepoLocks::default(),
            known: references::KnownBlobs::default(),
            writable: std::sync::atomic::AtomicBool::new(true),
            pulls: pulls::Pulls::default(),
        }
    }

    /// The driver under this store, for other records kept beside the
    /// images (the audit trail).
    pub fn driver(&self) -> Arc<dyn Driver> {
        self.driver.clone()
    }

    /// Upload sessions held in memory: only those with a request in flight
    /// or a running hash to keep.
    pub fn tracked_upload_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Whether the last write probe succeeded: readiness.
    pub fn storage_writable(&self) -> bool {
        self.writable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes a small object to learn whether storage takes writes (a full
    /// volume does not), and records the answer for readiness.
    pub async fn probe_storage(&self) -> bool {
        // A few KiB: a whole block must be free, not just an inode.
        static PROBE: [u8; 4096] = [b'p'; 4096];
        let ok = match self
            .put_scratch(layout::probe(), Bytes::from_static(&PROBE))
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "storage cannot be written: not ready");
                false
            }
        };
        let was = self.writable.swap(ok, std::sync::atomic::Ordering::Relaxed);
        if ok && !was {
            tracing::info!("storage can be written again: ready");
        }
        ok
    }

    // Thin wrappers that attach the operation and key to I/O errors.

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.driver
            .get(key)
            .await
            .map_err(|e| StorageError::new("get", key, e))
    }

    /// A durable write: everything but upload bookkeeping.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.driver
            .put(key, data, Durability::Durable)
            .await
            .map_err(|e| StorageError::new("put", key, e))
    }

    /// A write that may be lost in a crash (upload session bookkeeping).
    async fn put_scratch(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.driver
            .put(key, data, Durability::Scratch)
            .await
            .map_err(|e| StorageError::new("put", key, e))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        self.driver
            .size(key)
            .await
            .map_err(|e| StorageError::new("stat", key, e))
    }

    async fn commit(&self, from: &str, to: &str) -> Result<(), StorageError> {
        self.driver
            .commit(from, to)
            .await
            .map_err(|e| StorageError::new("commit", to, e))
    }

    async fn list(&self, key: &str) -> Result<Vec<String>, StorageError> {
        self.driver
            .list(key)
            .await
            .map_err(|e| StorageError::new("list", key, e))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.driver
            .delete(key)
            .await
            .map_err(|e| StorageError::new("delete", key, e))
    }

    // Blobs.

    /// The size of a blob linked into `name`; `None` if it is not there.
    pub async fn blob_size(
        &self,
        name: &Name,
        digest: &Digest,
    ) -> Result<Option<u64>, StorageError> {
        if self
            .size(&layout::layer_link(name, digest))
            .await?
            .is_none()
        {
            return Ok(None);
        }
        // Linked but quarantined by GC: the link says it is wanted.
        let size = self.size_or_restore(&layout::blob(digest)).await?;
        if let Some(n) = size {
            self.known.remember(name, digest, n);
        }
        Ok(size)
    }

    /// Streams bytes `range` of a blob; `None` if it vanished since it was sized.
    pub async fn blob_stream(
        &self,
        digest: &Digest,
        range: std::ops::Range<u64>,
    ) -> Result<Option<ByteStream>, StorageError> {
        let key = layout::blob(digest);
        self.driver
            .stream(&key, range)
            .await
            .map_err(|e| StorageError::new("read", &key, e))
    }

    /// Where a client may fetch a blob itself (a signed object storage
    /// URL), when the driver hands those out; `None` to serve it here.
    pub async fn blob_redirect(&self, digest: &Digest) -> Result<Option<String>, StorageError> {
        let key = layout::blob(digest);
        self.driver
            .presigned_get(&key)
            .await
            .map_err(|e| StorageError::new("sign", &key, e))
    }

    /// A blob's file, when the driver keeps blobs as local files (for
    /// `sendfile`); `None` otherwise, or if it vanished since it was sized.
    pub async fn blob_file(&self, digest: &Digest) -> Result<Option<std::fs::File>, StorageError> {
        let key = layout::blob(digest);
        self.driver
            .local_file(&key)
            .await
            .map_err(|e| StorageError::new("open", &key, e))
    }

    /// The size of what [`Self::blob_mount`] would link: the blob linked
    /// into `from`, or without it, stored anywhere; `None`: nothing to mount.
    pub async fn blob_mount_size(
        &self,
        digest: &Digest,
        from: Option<&Name>,
    ) -> Result<Option<u64>, StorageError> {
        match from {
            Some(source) => self.blob_size(source, digest).await,
            None => self.size(&layout::blob(digest)).await,
        }
    }

    /// Links an existing blob into `name` without moving bytes. With `from`,
    /// the blob must be linked there; without, anywhere in the registry.
    /// Returns the blob's size, or `None` if there is nothing to mount.
    pub async fn blob_mount(
        &self,
        name: &Name,
        digest: &Digest,
        from: Option<&Name>,
    ) -> Result<Option<u64>, StorageError> {
        let size = self.blob_mount_size(digest, from).await?;
        if let Some(n) = size {
            self.link_blob(name, digest).await?;
            self.known.remember(name, digest, n);
        }
        Ok(size)
    }

    /// The size of a blob where it is stored, `None` if it is not there
    /// (never looked for in GC's quarantine, so reading it never undoes GC).
    pub async fn blob_stored_size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        self.size(&layout::blob(digest)).await
    }

    /// What `name` holds: its manifest revisions and the blobs linked into
    /// it, as listed (what GC quarantined is not there).
    pub async fn repository_contents(
        &self,
        name: &Name,
    ) -> Result<RepositoryContents, StorageError> {
        let mut contents = RepositoryContents::default();
        for alg in ["sha256", "sha512"] {
            let digests = |hexes: Vec<String>| -> Vec<Digest> {
                hexes
                    .into_iter()
                    .filter_map(|hex| format!("{alg}:{hex}").parse().ok())
                    .collect()
            };
            contents
                .manifests
                .extend(digests(self.list(&layout::revisions_dir(name, alg)).await?));
            contents
                .blobs
                .extend(digests(self.list(&layout::layers_dir(name, alg)).await?));
        }
        Ok(contents)
    }

    /// Removes a blob from a repository; the bytes stay until GC finds them
    /// unreferenced. Returns whether it was linked.
    pub async fn blob_unlink(&self, name: &Name, digest: &Digest) -> Result<bool, StorageError> {
        let link = layout::layer_link(name, digest);
        self.known.forget(name, digest);
        let existed = self.size(&link).await?.is_some();
        self.delete(&link).await?;
        Ok(existed)
    }

    // Manifests.

    /// Whether a manifest revision is in `name`.
    pub async fn manifest_exists(
        &self,
        name: &Name,
        digest: &Digest,
    ) -> Result<bool, StorageError> {
        Ok(self
            .size_or_restore(&layout::manifest_revision(name, digest))
            .await?
            .is_some())
    }

    /// Stores a verified manifest whose references were checked (and put
    /// in place, out of GC's quarantine: [`Self::check_references`]), then
    /// makes it visible: referrer entry, revision link, and last the tags.
    pub async fn manifest_put(
        &self,
        name: &Name,
        m: &StoredManifest,
        parsed: &manifest::Manifest,
        tags: &[Tag],
        checked: references::Checked,
    ) -> Result<(), StorageError> {
        let entry = self.manifest_write(name, m, parsed, tags).await?;
        // GC may have quarantined part of it since the check: put it back.
        self.confirm_references(
            name,
            &m.digest,
            parsed,
            entry.as_ref().map(|(k, j)| (k.as_str(), j.clone())),
            checked.began,
        )
        .await
    }

    /// Stores a manifest fetched from a mirror's upstream (its digest
    /// verified), before the blobs it references: those are fetched when a
    /// client asks for them, so none is required to be here.
    pub async fn manifest_put_cached(
        &self,
        name: &Name,
        m: &StoredManifest,
        parsed: &manifest::Manifest,
        tags: &[Tag],
    ) -> Result<(), StorageError> {
        self.manifest_write(name, m, parsed, tags).await.map(|_| ())
    }

    /// The writes of a manifest put: bytes, referrer entry, revision link,
    /// tags. Returns the referrer entry written (key and JSON), if any.
    async fn manifest_write(
        &self,
        name: &Name,
        m: &StoredManifest,
        parsed: &manifest::Manifest,
        tags: &[Tag],
    ) -> Result<Option<(String, Bytes)>, StorageError> {
        let blob = layout::blob(&m.digest);
        if self.size(&blob).await? != Some(m.body.len() as u64) {
            self.put(&blob, m.body.clone()).await?;
        }
        // From here the writes are what a DELETE undoes: not interleaved with one.
        let _repo = self.repo_locks.lock(name).await;
        let mut entry = None;
        if let Some(subject) = &parsed.subject {
            let descriptor = Descriptor {
                media_type: m.media_type.clone(),
                digest: m.digest.clone(),
                size: m.body.len() as u64,
                artifact_type: parsed.effective_artifact_type(),
                annotations: parsed.annotations.clone(),
                urls: Vec::new(),
                data: None,
            };
            let json = serde_json::to_vec(&descriptor)
                .map_err(|e| StorageError::new("encode", &blob, io::Error::other(e)))?;
            let key = layout::referrer(name, &subject.digest, &m.digest);
            let json = Bytes::from(json);
            self.put(&key, json.clone()).await?;
            entry = Some((key, json));
        }
        self.put(
            &layout::manifest_revision(name, &m.digest),
            Bytes::from(m.media_type.clone()),
        )
        .await?;
        self.catalog.insert(name).await;
        for tag in tags {
            self.set_tag(name, tag, &m.digest).await?;
        }
        Ok(entry)
    }

    /// Points `tag` at `digest` by compare-and-swap: another process
    /// sharing the storage may be moving or removing the same tag (a
    /// DELETE of the manifest it pointed at, retention), and a removal
    /// that read the old target must not remove this new one. The last
    /// writer wins; the tag is never lost or half-changed.
    async fn set_tag(&self, name: &Name, tag: &Tag, digest: &Digest) -> Result<(), StorageError> {
        let key = layout::tag(name, tag);
        let value = Bytes::from(digest.to_string());
        for attempt in 0..TAG_WRITE_ATTEMPTS {
            let current = self.get_versioned(&key).await?.map(|(_, v)| v);
            let written = self
                .driver
                .put_if(&key, value.clone(), current.as_ref())
                .await
                .map_err(|e| StorageError::new("put", &key, e))?;
            if written {
                return Ok(());
            }
            tracing::debug!(
                key,
                attempt,
                "tag changed by another writer meanwhile: retrying"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5 << attempt.min(6))).await;
        }
        Err(StorageError::new(
            "put",
            &key,
            io::Error::new(
                io::ErrorKind::ResourceBusy,
                "the tag kept changing under concurrent writers; push the manifest again",
            ),
        ))
    }

    /// Removes `tag` if it still points at `digest` (compare-and-swap, see
    /// [`Self::set_tag`]). Returns whether it was removed.
    async fn remove_tag_if_target(
        &self,
        name: &Name,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<bool, StorageError> {
        let key = layout::tag(name, tag);
        for _ in 0..TAG_WRITE_ATTEMPTS {
            let Some((raw, version)) = self.get_versioned(&key).await? else {
                return Ok(false);
            };
            if parse_tag_target(&raw).as_ref() != Some(digest) {
                return Ok(false);
            }
            if self
                .driver
                .delete_if(&key, &version)
                .await
                .map_err(|e| StorageError::new("delete", &key, e))?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn get_versioned(
        &self,
        key: &str,
    ) -> Result<Option<(Bytes, driver::Version)>, StorageError> {
        self.driver
            .get_versioned(key)
            .await
            .map_err(|e| StorageError::new("get", key, e))
    }

    /// Rewrites `tag`'s link if it still points at `digest`, so that its
    /// modification time says "used now": the pull-through cache calls it
    /// when a pull re-checks a cached tag, and its age cap (a retention
    /// rule, which reads that time) then removes the least recently pulled.
    /// Compare-and-swap like [`Self::set_tag`]: a tag moved meanwhile is
    /// left as it is. Returns whether it was rewritten.
    pub async fn tag_touch(
        &self,
        name: &Name,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<bool, StorageError> {
        let key = layout::tag(name, tag);
        let Some((raw, version)) = self.get_versioned(&key).await? else {
            return Ok(false);
        };
        if parse_tag_target(&raw).as_ref() != Some(digest) {
            return Ok(false);
        }
        self.driver
            .put_if(&key, Bytes::from(digest.to_string()), Some(&version))
            .await
            .map_err(|e| StorageError::new("put", &key, e))
    }

    /// The digest a tag points at.
    pub async fn tag_target(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>, StorageError> {
        let Some(raw) = self.get(&layout::tag(name, tag)).await? else {
            return Ok(None);
        };
        Ok(parse_tag_target(&raw))
    }

    /// Looks a manifest up by tag or digest.
    pub async fn manifest_get(
        &self,
        name: &Name,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>, StorageError> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => match self.tag_target(name, t).await? {
                Some(d) => d,
                None => return Ok(None),
            },
        };
        // A reader that reaches what GC quarantined puts it back (gc.rs).
        let Some(media_type) = self
            .get_or_restore(&layout::manifest_revision(name, &digest))
            .await?
        else {
            return Ok(None);
        };
        let Some(body) = self.get_or_restore(&layout::blob(&digest)).await? else {
            return Ok(None);
        };
        let media_type = String::from_utf8_lossy(&media_type).into_owned();
        Ok(Some(StoredManifest {
            digest,
            media_type,
            body,
        }))
    }

    /// Deletes a manifest revision, every tag pointing at it, and its
    /// referrer entry. Returns whether it existed.
    pub async fn manifest_delete(
        &self,
        name: &Name,
        digest: &Digest,
    ) -> Result<bool, StorageError> {
        let _repo = self.repo_locks.lock(name).await;
        let Some(m) = self
            .manifest_get(name, &Reference::Digest(digest.clone()))
            .await?
        else {
            return Ok(false);
        };
        for tag in self.tags(name).await?.unwrap_or_default() {
            let Ok(tag) = tag.parse::<Tag>() else {
                continue;
            };
            // Only while it still points here: a push moving the tag
            // meanwhile (through another process) keeps its tag.
            self.remove_tag_if_target(name, &tag, digest).await?;
        }
        self.delete(&layout::manifest_revision(name, digest))
            .await?;
        if let Ok(parsed) = manifest::parse(&m.body, Some(&m.media_type))
            && let Some(subject) = parsed.subject
        {
            self.delete(&layout::referrer(name, &subject.digest, digest))
                .await?;
        }
        Ok(true)
    }

    /// Removes a tag (the manifest stays). Returns whether it existed.
    pub async fn tag_delete(&self, name: &Name, tag: &Tag) -> Result<bool, StorageError> {
        let _repo = self.repo_locks.lock(name).await;
        let key = layout::tag(name, tag);
        let existed = self.size(&key).await?.is_some();
        self.delete(&key).await?;
        Ok(existed)
    }

    /// Whether anything was ever pushed to `name`.
    pub async fn repository_exists(&self, name: &Name) -> Result<bool, StorageError> {
        Ok(!self.list(&layout::repository(name)).await?.is_empty())
    }

    /// The repository's tags, sorted; `None` if the repository is unknown.
    pub async fn tags(&self, name: &Name) -> Result<Option<Vec<String>>, StorageError> {
        let mut tags = self.list(&layout::tags_dir(name)).await?;
        if tags.is_empty()
            && self.list(&layout::manifests_dir(name)).await?.is_empty()
            && !self.repository_exists(name).await?
        {
            return Ok(None);
        }
        tags.sort_unstable();
        Ok(Some(tags))
    }

    /// Descriptors of the manifests whose subject is `subject`.
    pub async fn referrers(
        &self,
        name: &Name,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>, StorageError> {
        let dir = layout::referrers_dir(name, subject);
        let mut entries = self.list(&dir).await?;
        entries.sort_unstable();
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let key = format!("{dir}/{entry}");
            let Some(raw) = self.get(&key).await? else {
                continue;
            };
            match serde_json::from_slice::<Descriptor>(&raw) {
                Ok(d) => out.push(d),
                Err(e) => tracing::warn!(key, error = %e, "skipping unreadable referrer entry"),
            }
        }
        Ok(out)
    }

    /// Every repository that holds a manifest or a blob, sorted.
    pub async fn repositories(self: &Arc<Self>) -> Result<Vec<String>, StorageError> {
        match self.catalog.lookup().await {
            catalog::Cached::Fresh(repos) => Ok(repos),
            catalog::Cached::Stale(repos) => {
                let store = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = store.walk_repositories().await {
                        store.catalog.refresh_failed();
                        tracing::warn!(error = %e, "could not refresh the repository list");
                    }
                });
                Ok(repos)
            }
            catalog::Cached::Empty => self.walk_repositories().await,
        }
    }

    /// Walks storage for the repository list and caches it.
    async fn walk_repositories(&self) -> Result<Vec<String>, StorageError> {
        let repos = self
            .repositories_holding(&["_manifests", "_layers"])
            .await?;
        self.catalog.replace(&repos).await;
        Ok(repos)
    }

    /// Writes a link that makes `name` hold `digest` (and so exist).
    async fn link_blob(&self, name: &Name, digest: &Digest) -> Result<(), StorageError> {
        self.put(&layout::layer_link(name, digest), Bytes::new())
            .await?;
        self.catalog.insert(name).await;
        Ok(())
    }

    /// Repositories with upload sessions (possibly nothing else yet).
    async fn repositories_with_uploads(&self) -> Result<Vec<String>, StorageError> {
        self.repositories_holding(&["_uploads"]).await
    }

    /// Walks the repository tree for directories holding any of `markers`.
    async fn repositories_holding(&self, markers: &[&str]) -> Result<Vec<String>, StorageError> {
        let mut found = self
            .repositories_holding_under(layout::REPOSITORIES, markers)
            .await?;
        found.sort_unstable();
        Ok(found)
    }

    /// Repository names under `root` (the repository tree, or its copy in a
    /// GC quarantine batch) whose directory holds any of `markers`; unsorted.
    async fn repositories_holding_under(
        &self,
        root: &str,
        markers: &[&str],
    ) -> Result<Vec<String>, StorageError> {
        let mut found = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(prefix) = stack.pop() {
            let dir = if prefix.is_empty() {
                root.to_owned()
            } else {
                format!("{root}/{prefix}")
            };
            let children = self.list(&dir).await?;
            if !prefix.is_empty() && children.iter().any(|c| markers.contains(&c.as_str())) {
                found.push(prefix.clone());
            }
            for child in children.into_iter().filter(|c| !layout::is_reserved(c)) {
                stack.push(if prefix.is_empty() {
                    child
                } else {
                    format!("{prefix}/{child}")
                });
            }
        }
        Ok(found)
    }
}
