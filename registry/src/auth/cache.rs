//! A small cache of successful logins, so Basic credentials sent with every
//! request (some clients never follow the challenge) cost one bcrypt check
//! a minute, not one per request.
//!
//! Keyed by the SHA-256 of the credentials, never the credentials; bounded
//! in size (the oldest entry goes first) and time; emptied when the users
//! change.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub struct LoginCache<V> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], (Instant, V)>>,
}

impl<V: Clone> LoginCache<V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        LoginCache {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The key of `user` with `password`.
    pub fn key(user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    pub fn insert(&self, key: [u8; 32], value: V) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= self.capacity {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(key, (Instant::now(), value));
    }

    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_size_is_bounded() {
        let c = LoginCache::new(Duration::from_millis(40), 3);
        for i in 0..10u8 {
            c.insert(LoginCache::<u8>::key("u", &i.to_string()), i);
        }
        assert!(c.entries.lock().unwrap().len() <= 3);
        let k = LoginCache::<u8>::key("u", "9");
        assert_eq!(c.get(&k), Some(9));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(c.get(&k), None);
    }

    #[test]
    fn the_key_separates_user_from_password() {
        assert_ne!(
            LoginCache::<()>::key("ab", "c"),
            LoginCache::<()>::key("a", "bc")
        );
    }
}
