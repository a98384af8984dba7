//! The checks of a manifest PUT: everything it references is in the
//! repository, with the sizes its descriptors say, and in place (moved back
//! from GC's quarantine if need be), in as few storage calls as possible.
//!
//! On object storage each call is a network round trip, so the checks run
//! concurrently ([`PARALLEL`] at a time), and blobs this process saw in the
//! repository a moment ago (a HEAD, an upload, a mount) are not asked about
//! again ([`KnownBlobs`]).
//!
//! # Why remembering is safe against GC
//!
//! A remembered blob is trusted only while GC's quarantine is empty (no
//! batch listed when the PUT checks, `t_c`), and only for a while `L` (at
//! most a quarter of the quarantine `Q`, see `gc.rs`). A blob seen in place
//! at `T >= t_c - L` and gone at `t_c` was moved to a batch `b >= T - ε`
//! (ε = Q/4) that is deleted no earlier than `b + Q >= t_c - L - ε + Q > t_c`:
//! the quarantine would not be empty. So with an empty quarantine at `t_c`,
//! what was seen at `T` is in place at `t_c`, as if checked then, and the
//! proof in `gc.rs` holds as written. With anything quarantined, every
//! reference is checked (and moved back) for real.
//!
//! A layer link removed by a blob DELETE through another process may be
//! trusted for up to `L` after; the manifest is then accepted as if pushed
//! just before the DELETE, and GC's mark writes the link back.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _, TryStreamExt as _};

use super::{StorageError, Store, layout};
use crate::oci::manifest::{self, Descriptor};
use crate::oci::{Digest, Name};

/// Storage calls a PUT's check keeps in flight at once.
pub const PARALLEL: usize = 16;

/// The most blobs remembered; past it the oldest half is forgotten.
const CAPACITY: usize = 16_384;

/// The longest a seen blob is trusted, whatever the quarantine.
pub const MAX_REMEMBER: Duration = Duration::from_secs(60);

/// Why a manifest cannot be stored as it is.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("blob {digest} is not in repository {name}; push it before the manifest")]
    BlobUnknown { name: String, digest: Digest },
    #[error(
        "descriptor for blob {digest} says {declared} bytes but the stored blob has {stored}; fix the size in the manifest"
    )]
    SizeMismatch {
        digest: Digest,
        declared: u64,
        stored: u64,
    },
    #[error("manifest {digest} is not in repository {name}; push it before the index")]
    ManifestUnknown { name: String, digest: Digest },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Proof that a manifest's references were checked, and when: what
/// [`Store::manifest_put`] needs (the time bounds GC's quarantine).
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    pub(super) began: Instant,
}

/// Blobs this process saw linked into a repository and in place, with
/// their sizes and when.
#[derive(Default)]
pub struct KnownBlobs {
    /// How long an entry is trusted; zero (the default) remembers nothing.
    ttl_millis: std::sync::atomic::AtomicU64,
    seen: Mutex<HashMap<(String, String), (u64, Instant)>>,
}

impl KnownBlobs {
    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_millis.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub(super) fn set_ttl(&self, ttl: Duration) {
        let ttl = ttl.min(MAX_REMEMBER);
        self.ttl_millis.store(
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub(super) fn remember(&self, name: &Name, digest: &Digest, size: u64) {
        if self.ttl().is_zero() {
            return;
        }
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.len() >= CAPACITY {
            let ttl = self.ttl();
            seen.retain(|_, (_, at)| at.elapsed() < ttl);
            if seen.len() >= CAPACITY {
                seen.clear();
            }
        }
        seen.insert(
            (name.to_string(), digest.to_string()),
            (size, Instant::now()),
        );
    }

    pub(super) fn forget(&self, name: &Name, digest: &Digest) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(&(name.to_string(), digest.to_string()));
        }
    }

    /// The size of a blob seen recently enough.
    fn recall(&self, name: &Name, digest: &Digest) -> Option<u64> {
        let ttl = self.ttl();
        if ttl.is_zero() {
            return None;
        }
        let seen = self.seen.lock().ok()?;
        let (size, at) = seen.get(&(name.to_string(), digest.to_string()))?;
        (at.elapsed() < ttl).then_some(*size)
    }
}

impl Store {
    /// Lets manifest PUTs trust, for `ttl`, that a blob this process saw in
    /// a repository is still there (see the module doc). `ttl` must be at
    /// most a quarter of GC's quarantine; it is capped at [`MAX_REMEMBER`].
    /// Zero (the default) checks every reference every time.
    pub fn remember_blobs_for(&self, ttl: Duration) {
        self.known.set_ttl(ttl);
    }

    /// Checks a manifest's references before [`Store::manifest_put`]: every
    /// blob linked into `name` with its descriptor's size, every child
    /// manifest in `name`, all in place (moved back from GC's quarantine).
    pub async fn check_references(
        &self,
        name: &Name,
        parsed: &manifest::Manifest,
    ) -> Result<Checked, ReferenceError> {
        let began = Instant::now();
        let batches = self.trash_batches().await?;
        let quarantine_empty = batches.is_empty();
        let mut distinct = HashSet::new();
        let blobs: Vec<&Descriptor> = parsed
            .required_blobs()
            .filter(|d| distinct.insert(d.digest.clone()))
            .collect();
        let batches = &batches;
        // Named, boxed futures: closures over borrowed data in a stream
        // trip the compiler's `Send` inference in the router.
        let checks: Vec<BoxFuture<'_, Result<(), ReferenceError>>> = blobs
            .into_iter()
            .map(|d| self.check_blob(name, d, batches, quarantine_empty).boxed())
            .collect();
        futures_util::stream::iter(checks)
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        let children: Vec<BoxFuture<'_, Result<(), ReferenceError>>> = parsed
            .required_manifests()
            .filter(|d| distinct.insert(d.digest.clone()))
            .map(|d| self.check_child(name, d, batches).boxed())
            .collect();
        futures_util::stream::iter(children)
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        if !batches.is_empty() && parsed.required_manifests().next().is_some() {
            // What the children reference, transitively, is secured too;
            // the blobs checked above are not asked about again.
            let mut seen = parsed
                .required_blobs()
                .map(|d| super::gc::key(&d.digest))
                .collect();
            self.closure_in_place("verify", name, parsed, batches, 0, &mut seen)
                .await?;
        }
        Ok(Checked { began })
    }
}

impl Store {
    /// One blob of [`Store::check_references`].
    async fn check_blob(
        &self,
        name: &Name,
        d: &Descriptor,
        batches: &[u64],
        quarantine_empty: bool,
    ) -> Result<(), ReferenceError> {
        if quarantine_empty && let Some(stored) = self.known.recall(name, &d.digest) {
            return size_matches(d, stored);
        }
        let blob = layout::blob(&d.digest);
        let link = layout::layer_link(name, &d.digest);
        let (link, size) = futures_util::join!(self.size(&link), self.size(&blob));
        let unknown = || ReferenceError::BlobUnknown {
            name: name.to_string(),
            digest: d.digest.clone(),
        };
        if link?.is_none() {
            return Err(unknown());
        }
        let mut stored = size?;
        // Linked but quarantined by GC: the link says it is wanted.
        if stored.is_none() && !batches.is_empty() && self.restore_from(batches, &blob).await? {
            stored = self.size(&blob).await?;
        }
        let stored = stored.ok_or_else(unknown)?;
        self.known.remember(name, &d.digest, stored);
        size_matches(d, stored)
    }

    /// One child manifest of [`Store::check_references`].
    async fn check_child(
        &self,
        name: &Name,
        d: &Descriptor,
        batches: &[u64],
    ) -> Result<(), ReferenceError> {
        let rev = layout::manifest_revision(name, &d.digest);
        let there = match self.size(&rev).await? {
            Some(_) => true,
            None => !batches.is_empty() && self.restore_from(batches, &rev).await?,
        };
        if there {
            Ok(())
        } else {
            Err(ReferenceError::ManifestUnknown {
                name: name.to_string(),
                digest: d.digest.clone(),
            })
        }
    }
}

fn size_matches(d: &Descriptor, stored: u64) -> Result<(), ReferenceError> {
    // A client trusting the descriptor would read past the blob's end or
    // stop short of it.
    if stored == d.size {
        Ok(())
    } else {
        Err(ReferenceError::SizeMismatch {
            digest: d.digest.clone(),
            declared: d.size,
            stored,
        })
    }
}
