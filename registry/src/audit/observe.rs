//! Which `/v2/` requests make an event, and what it says.
//!
//! Recorded: manifest pushes, pulls (GET, not HEAD: HEAD is how clients
//! check before pushing, and recording it would double every push's
//! events), deletes and completed blob uploads and mounts, when they
//! succeed; failed logins (401/429 naming who tried); and every 403. A 401
//! without credentials, or with a token that merely needs renewing, is the
//! normal start of the token dance and is not recorded.

use std::net::IpAddr;

use axum::http::{HeaderMap, Method, StatusCode};

use super::Event;
use crate::api::Endpoint;
use crate::error::Refused;

/// A request as seen before it is handled.
pub struct Seen {
    action: &'static str,
    /// Recorded when it succeeds, not only when refused.
    routine: bool,
    repository: Option<String>,
    reference: Option<String>,
    subject: String,
    client: Option<IpAddr>,
}

impl Seen {
    pub fn of(
        method: &Method,
        endpoint: &Endpoint,
        mount: bool,
        subject: String,
        client: Option<IpAddr>,
    ) -> Seen {
        use Method as M;
        let (action, routine, repository, reference) = match (endpoint, method) {
            (Endpoint::Manifest(n, r), &M::GET) => ("pull", true, Some(n), Some(r)),
            (Endpoint::Manifest(n, r), &M::HEAD) => ("head", false, Some(n), Some(r)),
            (Endpoint::Manifest(n, r), &M::PUT) => ("push", true, Some(n), Some(r)),
            (Endpoint::Manifest(n, r), &M::DELETE) => ("delete", true, Some(n), Some(r)),
            (Endpoint::Manifest(n, r), _) => ("manifest", false, Some(n), Some(r)),
            (Endpoint::Blob(n, d), &M::DELETE) => ("delete_blob", true, Some(n), Some(d)),
            (Endpoint::Blob(n, d), _) => ("pull_blob", false, Some(n), Some(d)),
            (Endpoint::UploadStart(n), &M::POST) if mount => ("mount_blob", true, Some(n), None),
            (Endpoint::UploadStart(n), &M::POST) => ("push_blob", true, Some(n), None),
            (Endpoint::Upload(n, _), &M::PUT) => ("push_blob", true, Some(n), None),
            (Endpoint::UploadStart(n) | Endpoint::Upload(n, _), _) => {
                ("upload", false, Some(n), None)
            }
            (Endpoint::Tags(n), _) => ("tags", false, Some(n), None),
            (Endpoint::Referrers(n, d), _) => ("referrers", false, Some(n), Some(d)),
            (Endpoint::Catalog, _) => ("catalog", false, None, None),
            (Endpoint::Base, _) => ("ping", false, None, None),
        };
        Seen {
            action,
            routine,
            repository: repository.map(|n| n.to_string()),
            reference: reference.cloned(),
            subject,
            client,
        }
    }
}

/// The event for `seen`, if its outcome is one the trail keeps (the
/// caller records it, and hands it to notifications).
pub fn observe(
    seen: Seen,
    status: StatusCode,
    headers: &HeaderMap,
    refused: Option<&Refused>,
) -> Option<Event> {
    let code = status.as_u16();
    let (action, subject) = match refused {
        Some(r) if r.login_failed => ("login", r.subject.clone()),
        Some(r) => (seen.action, r.subject.clone()),
        None if code == 403 => (seen.action, seen.subject),
        None if seen.routine && completed(seen.action, status) => (seen.action, seen.subject),
        None => return None,
    };
    let mut e = Event::now(action, &subject, seen.client, code);
    e.digest = headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| seen.reference.clone().filter(|r| r.contains(':')));
    e.repository = seen.repository;
    e.reference = seen.reference;
    Some(e)
}

/// Whether a routine action's status means it happened (an upload start
/// answered 202 only opened a session).
fn completed(action: &str, status: StatusCode) -> bool {
    match action {
        "push_blob" | "mount_blob" => status == StatusCode::CREATED,
        _ => status.is_success(),
    }
}
