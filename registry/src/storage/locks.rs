//! Serialises the manifest changes of one repository within this process.
//!
//! A manifest PUT writes its revision link then its tags; a DELETE by digest
//! removes the tags pointing at the digest then the revision. Interleaved,
//! the DELETE could list the tags before the PUT wrote its tag and remove
//! the revision after, leaving a tag that points at nothing. Both hold the
//! repository's lock for their visible steps. A fixed set of locks chosen by
//! hash keeps memory constant however many repositories there are; two
//! repositories sharing a lock only wait for each other's short writes.

use std::hash::BuildHasher;

use tokio::sync::{Mutex, MutexGuard};

use crate::oci::Name;

const STRIPES: usize = 64;

pub struct RepoLocks {
    stripes: Box<[Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for RepoLocks {
    fn default() -> Self {
        RepoLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: Default::default(),
        }
    }
}

impl RepoLocks {
    /// Waits for, then holds, the lock of `name`'s manifests and tags.
    pub async fn lock(&self, name: &Name) -> MutexGuard<'_, ()> {
        let i = (self.hasher.hash_one(name.as_str()) as usize) % self.stripes.len();
        self.stripes[i].lock().await
    }
}
