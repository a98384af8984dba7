//! The list of repositories, kept in memory so `/v2/_catalog` does not walk
//! the whole tree on every request.
//!
//! Filled by one walk of storage (at start-up, or on first use), extended
//! as this process creates repositories, and re-walked in the background
//! once older than [`REFRESH`], so that a repository created by another
//! process sharing the storage shows up too. Requests never wait for a
//! re-walk: they get the list as it stands.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::RwLock;

use crate::oci::Name;

/// How long a walk's result is trusted before a background re-walk.
pub const REFRESH: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Catalog {
    state: RwLock<Option<(Instant, BTreeSet<String>)>>,
    refreshing: AtomicBool,
}

/// What the cache holds for a request.
pub enum Cached {
    /// Never walked: the caller must walk.
    Empty,
    /// Current enough to serve.
    Fresh(Vec<String>),
    /// Serve it, and this caller (the only one told so) starts a re-walk.
    Stale(Vec<String>),
}

impl Catalog {
    pub async fn lookup(&self) -> Cached {
        let state = self.state.read().await;
        let Some((at, repos)) = state.as_ref() else {
            return Cached::Empty;
        };
        let list = repos.iter().cloned().collect();
        if at.elapsed() >= REFRESH && !self.refreshing.swap(true, Ordering::AcqRel) {
            Cached::Stale(list)
        } else {
            Cached::Fresh(list)
        }
    }

    /// Replaces the list with the result of a walk.
    pub async fn replace(&self, repos: &[String]) {
        *self.state.write().await = Some((Instant::now(), repos.iter().cloned().collect()));
        self.refreshing.store(false, Ordering::Release);
    }

    /// A re-walk failed: let a later request try again.
    pub fn refresh_failed(&self) {
        self.refreshing.store(false, Ordering::Release);
    }

    /// Records a repository this process just wrote to.
    pub async fn insert(&self, name: &Name) {
        if let Some((_, repos)) = self.state.write().await.as_mut() {
            repos.insert(name.as_str().to_owned());
        }
    }
}
