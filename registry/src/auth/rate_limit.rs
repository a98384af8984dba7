//! Slowing password guessing: after [`Limits::failures`] failed logins from
//! one client address within [`Limits::window`], that address's logins are
//! refused (429 with `Retry-After`) until the window ends.
//!
//! Memory is bounded whatever the clients do: at most
//! [`Limits::max_clients`] addresses are tracked; when the table is full of
//! live entries, new addresses share one overflow entry, so many addresses
//! (an IPv6 /64, say) still cannot guess at line speed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub failures: u32,
    pub window: Duration,
    pub max_clients: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            failures: 10,
            window: Duration::from_secs(60),
            max_clients: 10_000,
        }
    }
}

struct Entry {
    failures: u32,
    since: Instant,
}

/// `None` stands for the shared overflow entry.
type Key = Option<IpAddr>;

pub struct RateLimiter {
    limits: Limits,
    table: Mutex<HashMap<Key, Entry>>,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> RateLimiter {
        RateLimiter {
            limits,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` when `client` may not try a login now.
    pub fn check(&self, client: Option<IpAddr>) -> Result<(), Duration> {
        let now = Instant::now();
        let Ok(table) = self.table.lock() else {
            return Ok(());
        };
        let entry = table.get(&client).or_else(|| {
            // An address we do not track may be counted in the overflow.
            if table.len() >= self.limits.max_clients {
                table.get(&None)
            } else {
                None
            }
        });
        match entry {
            Some(e)
                if e.failures >= self.limits.failures
                    && now.duration_since(e.since) < self.limits.window =>
            {
                let left = self.limits.window - now.duration_since(e.since);
                Err(left.max(Duration::from_secs(1)))
            }
            _ => Ok(()),
        }
    }

    pub fn failed(&self, client: Option<IpAddr>) {
        let now = Instant::now();
        let Ok(mut table) = self.table.lock() else {
            return;
        };
        let window = self.limits.window;
        let mut key = client;
        if !table.contains_key(&key) && table.len() >= self.limits.max_clients {
            table.retain(|_, e| now.duration_since(e.since) < window);
            if table.len() >= self.limits.max_clients {
                key = None;
            }
        }
        let e = table.entry(key).or_insert(Entry {
            failures: 0,
            since: now,
        });
        if now.duration_since(e.since) >= window {
            *e = Entry {
                failures: 0,
                since: now,
            };
        }
        e.failures = e.failures.saturating_add(1);
    }

    /// A successful login forgets the address's failures.
    pub fn succeeded(&self, client: Option<IpAddr>) {
        if client.is_some()
            && let Ok(mut table) = self.table.lock()
        {
            table.remove(&client);
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(n: u32) -> Option<IpAddr> {
        Some(IpAddr::from(std::net::Ipv4Addr::from(n)))
    }

    #[test]
    fn an_address_is_refused_after_n_failures_in_the_window() {
        let r = RateLimiter::new(Limits {
            failures: 3,
            window: Duration::from_secs(60),
            max_clients: 10,
        });
        for _ in 0..3 {
            assert!(r.check(ip(1)).is_ok());
            r.failed(ip(1));
        }
        let retry = r.check(ip(1)).unwrap_err();
        assert!(retry <= Duration::from_secs(60) && retry >= Duration::from_secs(1));
        assert!(r.check(ip(2)).is_ok(), "another address is not affected");
    }

    #[test]
    fn the_window_ends_and_success_forgets() {
        let r = RateLimiter::new(Limits {
            failures: 1,
            window: Duration::from_millis(50),
            max_clients: 10,
        });
        r.failed(ip(1));
        assert!(r.check(ip(1)).is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(r.check(ip(1)).is_ok());
        r.failed(ip(1));
        r.succeeded(ip(1));
        assert!(r.check(ip(1)).is_ok());
    }

    #[test]
    fn memory_is_bounded_and_overflowing_addresses_share_a_limit() {
        let r = RateLimiter::new(Limits {
            failures: 5,
            window: Duration::from_secs(60),
            max_clients: 100,
        });
        for n in 0..10_000 {
            r.failed(ip(n));
        }
        assert!(r.tracked() <= 101);
        // Fresh addresses now land in the overflow entry, which is full.
        assert!(r.check(ip(20_000)).is_err());
    }
}
