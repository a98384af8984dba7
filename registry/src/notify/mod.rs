//! Notifications: webhooks told of manifest pushes, pulls and deletes, in
//! Distribution's envelope format, so scanners and CI can react.
//!
//! The events are the audit trail's ([`crate::audit::observe`] decides
//! what happened); [`envelope`] turns one into Distribution's event;
//! [`queue`] delivers, per endpoint, from a bounded queue that never makes
//! a request wait; [`config`] reads `--notify-config`. Header values
//! (credentials) are read from files, marked sensitive, and never logged;
//! endpoint URLs are not logged either (they may carry credentials): logs
//! and metrics name endpoints by their `name`.

pub mod config;
pub mod envelope;
pub mod queue;

use std::sync::Arc;

use axum::http::HeaderMap;
use berth_access::Action;

pub use config::{ConfigError, HeaderSource, Target, load};
pub use envelope::Seen;

use crate::audit::Event as AuditEvent;

/// Every endpoint's queue.
pub struct Notifier {
    queues: Vec<queue::Queue>,
    source: envelope::Source,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("endpoints", &self.queues.len())
            .finish()
    }
}

impl Notifier {
    /// Starts a delivery task per target (on the current Tokio runtime).
    /// `source_addr` names this registry in events (host name and port).
    pub fn start(targets: Vec<Target>, source_addr: String) -> Arc<Notifier> {
        Arc::new(Notifier {
            queues: targets.into_iter().map(queue::Queue::start).collect(),
            source: envelope::Source {
                addr: source_addr,
                instance_id: uuid::Uuid::new_v4().to_string(),
            },
        })
    }

    /// The endpoints' names.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.queues.iter().map(|q| q.target.endpoint.name.as_str())
    }

    /// Queues `event` for each endpoint that wants it; never waits.
    pub fn publish(&self, event: &AuditEvent, seen: &Seen, response: &HeaderMap) {
        let (Some(action), Some(repository)) =
            (Action::parse(&event.action), event.repository.as_deref())
        else {
            return;
        };
        let mut wanted = self
            .queues
            .iter()
            .filter(|q| q.target.endpoint.wants(action, repository))
            .peekable();
        if wanted.peek().is_none() {
            return;
        }
        let Some(e) = envelope::event(event, seen, response, &self.source) else {
            return;
        };
        for q in wanted {
            q.push(e.clone());
        }
    }
}
