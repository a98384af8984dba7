//! When each manifest was last pulled, per repository.
//!
//! A manifest GET (by tag or digest) notes `(repository, digest, now)` in
//! memory: one short lock around a map insert, no I/O on the request
//! path. [`Store::flush_pulls`] (every [`FLUSH_EVERY`] from `serve`, and on
//! shutdown) merges what was noted into one small JSON object per
//! repository, written through the [`super::Driver`] so it works on the
//! filesystem and on object storage alike:
//!
//! ```text
//! repositories/<name>/_pulls/last.json    {"sha256:…": <unix seconds>, …}
//! ```
//!
//! Merging keeps the later time of each digest, so replicas sharing a
//! bucket converge; two replicas flushing the same repository at the same
//! instant may lose one's update until its next pull (best effort: a
//! last-pulled time, not an audit record — the audit trail has every pull).
//! `_pulls` starts with `_`, so it never reads as a nested repository and
//! does not make a repository exist.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;

use super::{Durability, StorageError, Store, layout};
use crate::oci::{Digest, Name};

/// How often `serve` writes noted pulls to storage.
pub const FLUSH_EVERY: Duration = Duration::from_secs(30);
/// Pulls noted and not yet flushed at most (distinct repository and
/// digest pairs); past it new ones wait for the next flush to make room.
const PENDING_MAX: usize = 100_000;

/// A repository's last-pulled times: digest → unix seconds.
pub type LastPulled = BTreeMap<String, i64>;

/// Pulls noted in memory since the last flush.
#[derive(Default)]
pub struct Pulls {
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    by_repo: HashMap<String, LastPulled>,
    len: usize,
}

impl Pending {
    fn note(&mut self, repository: &str, digest: &str, at: i64) {
        let repo = match self.by_repo.get_mut(repository) {
            Some(r) => r,
            None => self.by_repo.entry(repository.to_owned()).or_default(),
        };
        match repo.get_mut(digest) {
            Some(t) => *t = (*t).max(at),
            None => {
                if self.len >= PENDING_MAX {
                    return;
                }
                repo.insert(digest.to_owned(), at);
                self.len += 1;
            }
        }
    }
}

impl Pulls {
    /// Notes a pull of `digest` from `repository` now.
    pub fn note(&self, repository: &str, digest: &str) {
        self.note_at(repository, digest, Timestamp::now().as_second());
    }

    fn note_at(&self, repository: &str, digest: &str, at: i64) {
        if let Ok(mut p) = self.pending.lock() {
            p.note(repository, digest, at);
        }
    }

    /// What was noted for `repository` and not flushed yet.
    fn pending_of(&self, repository: &str) -> Option<LastPulled> {
        self.pending.lock().ok()?.by_repo.get(repository).cloned()
    }

    fn take(&self) -> HashMap<String, LastPulled> {
        match self.pending.lock() {
            Ok(mut p) => {
                p.len = 0;
                std::mem::take(&mut p.by_repo)
            }
            Err(_) => HashMap::new(),
        }
    }

    /// Puts back what a failed flush could not write (the later time wins).
    fn restore(&self, repository: &str, times: &LastPulled) {
        if let Ok(mut p) = self.pending.lock() {
            for (d, t) in times {
                p.note(repository, d, *t);
            }
        }
    }
}

/// Where a repository's last-pulled times are kept.
pub fn key(name: &str) -> String {
    format!("{}/{name}/_pulls/last.json", layout::REPOSITORIES)
}

fn merge(into: &mut LastPulled, from: &LastPulled) {
    for (d, t) in from {
        let e = into.entry(d.clone()).or_insert(*t);
        *e = (*e).max(*t);
    }
}

impl Store {
    /// Notes that `digest` was pulled from `name` (a manifest GET): memory
    /// only, written by the next [`Store::flush_pulls`].
    pub fn note_pull(&self, name: &Name, digest: &Digest) {
        self.pulls.note(name.as_str(), &digest.to_string());
    }

    /// The last-pulled times stored for `name`, with what this process
    /// noted since its last flush.
    pub async fn last_pulled_all(&self, name: &Name) -> Result<LastPulled, StorageError> {
        let mut times = self.stored_pulls(name.as_str()).await?;
        if let Some(p) = self.pulls.pending_of(name.as_str()) {
            merge(&mut times, &p);
        }
        Ok(times)
    }

    /// When `digest` was last pulled from `name` by digest or by any tag
    /// (by this replica or any replica that flushed since), if ever since
    /// tracking began. For retention rules that keep what is still pulled.
    pub async fn last_pulled(
        &self,
        name: &Name,
        digest: &Digest,
    ) -> Result<Option<Timestamp>, StorageError> {
        let times = self.last_pulled_all(name).await?;
        Ok(times
            .get(&digest.to_string())
            .and_then(|s| Timestamp::from_second(*s).ok()))
    }

    async fn stored_pulls(&self, repository: &str) -> Result<LastPulled, StorageError> {
        let key = key(repository);
        Ok(match self.get(&key).await? {
            // A torn or foreign file is replaced by the next flush.
            Some(raw) => serde_json::from_slice(&raw).unwrap_or_else(|e| {
                tracing::warn!(key, error = %e, "ignoring an unreadable last-pulled record");
                LastPulled::new()
            }),
            None => LastPulled::new(),
        })
    }

    /// Writes the pulls noted since the last flush: per repository, read,
    /// merge (later time wins), write. What cannot be written is kept for
    /// the next flush. Returns the repositories written.
    pub async fn flush_pulls(&self) -> Result<usize, StorageError> {
        let pending = self.pulls.take();
        let mut written = 0;
        let mut first_error = None;
        for (repository, times) in pending {
            match self.write_pulls(&repository, &times).await {
                Ok(()) => written += 1,
                Err(e) => {
                    self.pulls.restore(&repository, &times);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    async fn write_pulls(&self, repository: &str, times: &LastPulled) -> Result<(), StorageError> {
        let mut stored = self.stored_pulls(repository).await?;
        merge(&mut stored, times);
        let key = key(repository);
        let body = serde_json::to_vec(&stored)
            .map_err(|e| StorageError::new("encode", &key, std::io::Error::other(e.to_string())))?;
        self.driver
            .put(&key, Bytes::from(body), Durability::Durable)
            .await
            .map_err(|e| StorageError::new("put", &key, e))
    }
}

/// Flushes noted pulls every `every` until the process ends (the last
/// flush is the caller's, at shutdown).
pub async fn flush_periodically(store: std::sync::Arc<Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = store.flush_pulls().await {
            tracing::warn!(error = %e, "could not record last-pulled times; retrying at the next flush");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_later_pull_wins_and_pending_is_bounded() {
        let p = Pulls::default();
        p.note_at("team/app", "sha256:a", 10);
        p.note_at("team/app", "sha256:a", 5);
        p.note_at("team/app", "sha256:b", 7);
        let got = p.pending_of("team/app").unwrap_or_default();
        assert_eq!(got.get("sha256:a"), Some(&10));
        assert_eq!(got.get("sha256:b"), Some(&7));
        let taken = p.take();
        assert_eq!(taken.len(), 1);
        assert!(p.pending_of("team/app").is_none());
        let mut pending = Pending::default();
        for i in 0..PENDING_MAX + 5 {
            pending.note("r", &format!("sha256:{i}"), 1);
        }
        assert_eq!(pending.len, PENDING_MAX);
    }

    #[tokio::test]
    async fn pulls_reach_storage_on_flush_and_merge_with_what_is_there() {
        let store = crate::memory_store();
        let name: Name = "team/app".parse().unwrap_or_else(|_| unreachable!());
        let digest = crate::oci::Algorithm::Sha256.digest(b"x");
        assert_eq!(store.last_pulled(&name, &digest).await.ok().flatten(), None);
        store.pulls.note_at("team/app", &digest.to_string(), 100);
        // Visible before the flush (from memory)...
        assert_eq!(
            store.last_pulled(&name, &digest).await.ok().flatten(),
            Timestamp::from_second(100).ok()
        );
        assert_eq!(store.flush_pulls().await.ok(), Some(1));
        // ...and after it, from storage; an older note does not go back.
        store.pulls.note_at("team/app", &digest.to_string(), 50);
        assert_eq!(store.flush_pulls().await.ok(), Some(1));
        let fresh = Store::new(store.driver());
        assert_eq!(
            fresh.last_pulled(&name, &digest).await.ok().flatten(),
            Timestamp::from_second(100).ok()
        );
    }
}
