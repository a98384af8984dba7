//! The list of repositories, kept in memory so `/v2/_catalog` does not walk
//! the whole tree on every request.
//!
//! Filled by one walk of storage on first use, extended as this process
//! creates repositories, and re-walked after [`REFRESH`] so that a
//! repository created by another process sharing the storage shows up too.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::sync::RwLock;

use crate::oci::Name;

/// How long a walk's result is trusted before the next request walks again.
pub const REFRESH: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Catalog {
    state: RwLock<Option<(Instant, BTreeSet<String>)>>,
}

impl Catalog {
    /// The cached list, if it is fresh.
    pub async fn fresh(&self) -> Option<Vec<String>> {
        let state = self.state.read().await;
        let (at, repos) = state.as_ref()?;
        (at.elapsed() < REFRESH).then(|| repos.iter().cloned().collect())
    }

    /// Replaces the list with the result of a walk.
    pub async fn replace(&self, repos: &[String]) {
        *self.state.write().await = Some((Instant::now(), repos.iter().cloned().collect()));
    }

    /// Records a repository this process just wrote to.
    pub async fn insert(&self, name: &Name) {
        if let Some((_, repos)) = self.state.write().await.as_mut() {
            repos.insert(name.as_str().to_owned());
        }
    }
}
