//! One endpoint's delivery: a bounded queue that never waits (full: the
//! event is dropped and counted), drained by one task that sends what is
//! queued as one envelope and retries it with exponential backoff and
//! jitter until the endpoint answers 2xx or the attempts run out. An event
//! answered 2xx is never sent again.

use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use tokio::sync::mpsc;

use super::config::Target;
use super::envelope::{Envelope, Event, MEDIA_TYPE};

/// The most events one delivery carries.
const BATCH_MAX: usize = 64;
/// The first retry waits about this long; each next one twice as long.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// ... up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The sending side of one endpoint's queue.
pub struct Queue {
    pub(super) target: Arc<Target>,
    tx: mpsc::Sender<Event>,
}

impl Queue {
    /// Starts the endpoint's delivery task (on the current Tokio runtime);
    /// it ends when the queue is dropped and what it holds is delivered or
    /// given up.
    pub fn start(target: Target) -> Queue {
        let target = Arc::new(target);
        let (tx, rx) = mpsc::channel(target.endpoint.queue);
        crate::metrics::notify_queue_length(&target.endpoint.name, 0);
        tokio::spawn(deliver_loop(rx, target.clone()));
        Queue { target, tx }
    }

    /// Queues `event`; never waits. A full queue drops it (counted).
    pub fn push(&self, event: Event) {
        let name = &self.target.endpoint.name;
        if self.tx.try_send(event).is_err() {
            crate::metrics::notify_events(name, "dropped", 1);
            return;
        }
        let waiting = self.tx.max_capacity() - self.tx.capacity();
        crate::metrics::notify_queue_length(name, waiting);
    }
}

async fn deliver_loop(mut rx: mpsc::Receiver<Event>, target: Arc<Target>) {
    let name = target.endpoint.name.as_str();
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while rx.recv_many(&mut batch, BATCH_MAX).await > 0 {
        crate::metrics::notify_queue_length(name, rx.len());
        let n = batch.len() as u64;
        let envelope = Envelope {
            events: std::mem::take(&mut batch),
        };
        let body = match serde_json::to_vec(&envelope) {
            Ok(b) => bytes::Bytes::from(b),
            Err(e) => {
                tracing::warn!(endpoint = name, error = %e, "could not encode a notification");
                crate::metrics::notify_events(name, "abandoned", n);
                continue;
            }
        };
        let mut attempt = 1;
        loop {
            match send(&target, body.clone()).await {
                Ok(()) => {
                    crate::metrics::notify_events(name, "delivered", n);
                    break;
                }
                Err(reason) => {
                    crate::metrics::notify_failed_attempt(name);
                    if attempt >= target.endpoint.max_attempts {
                        tracing::warn!(
                            endpoint = name,
                            events = n,
                            attempts = attempt,
                            error = %reason,
                            "gave up delivering notifications; check the endpoint is up and accepts them"
                        );
                        crate::metrics::notify_events(name, "abandoned", n);
                        break;
                    }
                    let wait = backoff(attempt);
                    tracing::debug!(endpoint = name, attempt, error = %reason, wait_ms = wait.as_millis() as u64, "notification delivery failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// One attempt; the reason it failed, without the URL (it may hold
/// credentials) or the header.
async fn send(target: &Target, body: bytes::Bytes) -> Result<(), String> {
    let mut req = target
        .client
        .post(&target.endpoint.url)
        .header(header::CONTENT_TYPE, MEDIA_TYPE)
        .body(body);
    if let Some(h) = &target.header {
        req = req.header(&h.name, h.current().await);
    }
    match req.send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("the endpoint answered {}", resp.status())),
        Err(e) => Err(e.without_url().to_string()),
    }
}

/// The wait after failed attempt `attempt` (1-based): doubling from
/// [`BACKOFF_FIRST`] up to [`BACKOFF_MAX`], half of it random, so
/// registries retrying against one endpoint spread out.
fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF_FIRST
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let half = full / 2;
    let random = (uuid::Uuid::new_v4().as_u128() % 1_000) as u32;
    half + half * random / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        for attempt in 1..30 {
            let full = BACKOFF_FIRST
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_MAX);
            let b = backoff(attempt);
            assert!(b >= full / 2 && b <= full, "attempt {attempt}: {b:?}");
        }
        assert!(backoff(30) <= BACKOFF_MAX);
    }
}
