//! The registry's notification config file: where to send push, pull and
//! delete events (webhooks), written by the operator from a `Registry`'s
//! `spec.notifications` and read by `berth-registry serve --notify-config
//! FILE`. Header values (credentials) are never in the file: it names a
//! file holding each (a mounted Secret).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::glob_match;
use crate::scope::Action;

/// Per endpoint, the most events waiting for delivery before new ones are
/// dropped (and counted).
pub const DEFAULT_QUEUE: usize = 1024;
/// Seconds one delivery attempt may take.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 5;
/// Attempts per batch before it is given up (and counted as failed).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyConfig {
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One webhook receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Names the endpoint in logs and metrics (never its URL, which may
    /// hold credentials).
    pub name: String,
    /// http:// or https://.
    pub url: String,
    /// A header sent with every delivery, e.g. `Authorization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<Header>,
    /// Which events: push, pull, delete. Empty: all three.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Action>,
    /// Repository globs (`*` any run, also `/`; `?` one character). Empty:
    /// every repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
    /// Seconds one delivery attempt may take.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// PEM CA certificates trusted (alone) for an https:// URL; default:
    /// the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Events waiting for delivery before new ones are dropped.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Attempts per event before it is given up.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

/// A header whose value is read from a file, so it never sits in the
/// config file (or a ConfigMap).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub name: String,
    /// Holds the value; surrounding whitespace (a trailing newline) is
    /// trimmed.
    pub value_file: PathBuf,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECONDS
}

fn default_queue() -> usize {
    DEFAULT_QUEUE
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

impl Endpoint {
    /// Whether this endpoint wants `action` on `repository`.
    pub fn wants(&self, action: Action, repository: &str) -> bool {
        (self.events.is_empty() || self.events.contains(&action))
            && (self.repositories.is_empty()
                || self.repositories.iter().any(|g| glob_match(g, repository)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_endpoint_gets_defaults_and_every_event() {
        let c: NotifyConfig =
            serde_json::from_str(r#"{"endpoints":[{"name":"ci","url":"http://ci/hook"}]}"#)
                .unwrap();
        let e = &c.endpoints[0];
        assert_eq!(e.timeout_seconds, DEFAULT_TIMEOUT_SECONDS);
        assert_eq!(e.queue, DEFAULT_QUEUE);
        assert!(e.wants(Action::Pull, "any/thing"));
        assert!(e.wants(Action::Delete, "x"));
    }

    #[test]
    fn events_and_repository_globs_filter() {
        let c: NotifyConfig = serde_json::from_str(
            r#"{"endpoints":[{"name":"ci","url":"http://ci/hook","events":["push","delete"],
                "repositories":["team/*","tools"],
                "header":{"name":"Authorization","valueFile":"/etc/x/token"}}]}"#,
        )
        .unwrap();
        let e = &c.endpoints[0];
        assert!(e.wants(Action::Push, "team/app"));
        assert!(e.wants(Action::Delete, "tools"));
        assert!(!e.wants(Action::Pull, "team/app"));
        assert!(!e.wants(Action::Push, "other/app"));
        assert_eq!(
            e.header.as_ref().unwrap().value_file,
            PathBuf::from("/etc/x/token")
        );
    }

    #[test]
    fn an_unknown_event_is_refused_with_the_choices() {
        let err = serde_json::from_str::<NotifyConfig>(
            r#"{"endpoints":[{"name":"ci","url":"http://ci","events":["tag"]}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("pull, push or delete"), "{err}");
    }
}
