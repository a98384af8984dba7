//! When a cached tag must be checked against the upstream again: each tag
//! is trusted for the upstream's freshness window after the upstream last
//! confirmed it. Kept in memory: after a restart (or on another replica)
//! the first pull of a tag checks it once, which costs one HEAD.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// More tags than this: the oldest confirmations are forgotten (which
/// only costs a HEAD each).
const MAX_ENTRIES: usize = 100_000;

pub struct Freshness {
    window: Duration,
    confirmed: Mutex<HashMap<String, Instant>>,
}

impl Freshness {
    pub fn new(window: Duration) -> Self {
        Freshness {
            window,
            confirmed: Mutex::new(HashMap::new()),
        }
    }

    fn key(repository: &str, tag: &str) -> String {
        format!("{repository}:{tag}")
    }

    /// Whether the upstream confirmed `repository:tag` within the window.
    pub fn is_fresh(&self, repository: &str, tag: &str) -> bool {
        self.is_fresh_at(repository, tag, Instant::now())
    }

    fn is_fresh_at(&self, repository: &str, tag: &str, now: Instant) -> bool {
        let map = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&Self::key(repository, tag))
            .is_some_and(|t| now.saturating_duration_since(*t) < self.window)
    }

    /// The upstream just said what `repository:tag` points at.
    pub fn confirm(&self, repository: &str, tag: &str) {
        self.confirm_at(repository, tag, Instant::now());
    }

    fn confirm_at(&self, repository: &str, tag: &str, now: Instant) {
        let mut map = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            let window = self.window;
            map.retain(|_, t| now.saturating_duration_since(*t) < window);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(Self::key(repository, tag), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_fresh_for_its_window_after_confirmation_only() {
        let f = Freshness::new(Duration::from_secs(300));
        let t0 = Instant::now();
        assert!(!f.is_fresh_at("docker.io/library/nginx", "1.27", t0));
        f.confirm_at("docker.io/library/nginx", "1.27", t0);
        assert!(f.is_fresh_at(
            "docker.io/library/nginx",
            "1.27",
            t0 + Duration::from_secs(299)
        ));
        assert!(!f.is_fresh_at(
            "docker.io/library/nginx",
            "1.27",
            t0 + Duration::from_secs(300)
        ));
        assert!(!f.is_fresh_at("docker.io/library/nginx", "latest", t0));
    }

    #[test]
    fn a_zero_window_always_checks() {
        let f = Freshness::new(Duration::ZERO);
        let t0 = Instant::now();
        f.confirm_at("r", "t", t0);
        assert!(!f.is_fresh_at("r", "t", t0));
    }
}
