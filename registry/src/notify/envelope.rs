//! Distribution's notification envelope
//! (`application/vnd.docker.distribution.events.v1+json`), as its
//! webhook receivers (scanners, CI triggers) already parse it.

use std::net::SocketAddr;

use axum::http::{HeaderMap, Method, header};
use serde::{Deserialize, Serialize};

use crate::audit::Event as AuditEvent;

/// The envelope's media type (the request's Content-Type).
pub const MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// What one delivery carries.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    pub events: Vec<Event>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// Unique per event: receivers deduplicate by it (a retried delivery
    /// carries the same ids).
    pub id: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
    /// push, pull or delete.
    pub action: String,
    pub target: Target,
    pub request: Request,
    pub actor: Actor,
    pub source: Source,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// The same as `size` (Distribution sends both).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub length: u64,
    pub repository: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    pub id: String,
    /// The client's address and port.
    pub addr: String,
    /// The Host the client asked for.
    pub host: String,
    pub method: String,
    pub useragent: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    /// The user, service account or robot; "anonymous" without credentials.
    pub name: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Source {
    /// This registry: host name and port.
    pub addr: String,
    #[serde(rename = "instanceID")]
    pub instance_id: String,
}

/// What the envelope needs of a request that the audit event does not
/// keep; taken before the request is handled, and only for manifest
/// requests while notifications are on.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub method: String,
    pub peer: Option<SocketAddr>,
    pub host: String,
    pub useragent: String,
    pub tls: bool,
    /// A push's manifest media type and size (from the request).
    pub content_type: String,
    pub content_length: u64,
}

impl Seen {
    pub fn of(method: &Method, headers: &HeaderMap, peer: Option<SocketAddr>, tls: bool) -> Seen {
        let text = |h| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        Seen {
            method: method.as_str().to_owned(),
            peer,
            host: text(header::HOST),
            useragent: text(header::USER_AGENT),
            tls,
            content_type: text(header::CONTENT_TYPE),
            content_length: headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }
    }
}

/// The envelope event for an audit event, or `None` when it is not one
/// receivers get (only successful manifest push, pull and delete).
/// `response` is the registry's answer: a pull's media type and size.
pub fn event(
    audit: &AuditEvent,
    seen: &Seen,
    response: &HeaderMap,
    source: &Source,
) -> Option<Event> {
    if audit.result != "ok" || !matches!(audit.action.as_str(), "push" | "pull" | "delete") {
        return None;
    }
    let repository = audit.repository.clone()?;
    let reference = audit.reference.clone().unwrap_or_default();
    let digest = audit.digest.clone().unwrap_or_default();
    let tag = if reference.contains(':') {
        String::new()
    } else {
        reference
    };
    let (media_type, size) = match audit.action.as_str() {
        "push" => (seen.content_type.clone(), seen.content_length),
        "pull" => (
            response
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            response
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        ),
        _ => (String::new(), 0),
    };
    let url = if digest.is_empty() || seen.host.is_empty() {
        String::new()
    } else {
        let scheme = if seen.tls { "https" } else { "http" };
        format!(
            "{scheme}://{}/v2/{repository}/manifests/{digest}",
            seen.host
        )
    };
    Some(Event {
        id: uuid::Uuid::new_v4().to_string(),
        timestamp: audit.time.clone(),
        action: audit.action.clone(),
        target: Target {
            media_type,
            size,
            digest,
            length: size,
            repository,
            url,
            tag,
        },
        request: Request {
            id: uuid::Uuid::new_v4().to_string(),
            addr: seen.peer.map(|p| p.to_string()).unwrap_or_default(),
            host: seen.host.clone(),
            method: seen.method.clone(),
            useragent: seen.useragent.clone(),
        },
        actor: Actor {
            name: audit.subject.clone(),
        },
        source: source.clone(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn audit(action: &str, status: u16, reference: &str, digest: Option<&str>) -> AuditEvent {
        let mut e = AuditEvent::now(action, "alice", None, status);
        e.repository = Some("team/app".into());
        e.reference = Some(reference.into());
        e.digest = digest.map(str::to_owned);
        e
    }

    fn push_seen() -> Seen {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "reg.example:5000".parse().unwrap());
        h.insert(header::USER_AGENT, "docker/27".parse().unwrap());
        h.insert(
            header::CONTENT_TYPE,
            "application/vnd.oci.image.manifest.v1+json"
                .parse()
                .unwrap(),
        );
        h.insert(header::CONTENT_LENGTH, "512".parse().unwrap());
        Seen::of(
            &Method::PUT,
            &h,
            Some("10.0.0.7:4242".parse().unwrap()),
            true,
        )
    }

    #[test]
    fn a_push_by_tag_carries_tag_digest_media_type_size_and_actor() {
        let a = audit("push", 201, "v1", Some("sha256:ab"));
        let e = event(&a, &push_seen(), &HeaderMap::new(), &Source::default()).unwrap();
        let json = serde_json::to_value(Envelope { events: vec![e] }).unwrap();
        let ev = &json["events"][0];
        assert_eq!(ev["action"], "push");
        assert_eq!(ev["target"]["tag"], "v1");
        assert_eq!(ev["target"]["digest"], "sha256:ab");
        assert_eq!(
            ev["target"]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(ev["target"]["size"], 512);
        assert_eq!(ev["target"]["length"], 512);
        assert_eq!(
            ev["target"]["url"],
            "https://reg.example:5000/v2/team/app/manifests/sha256:ab"
        );
        assert_eq!(ev["request"]["addr"], "10.0.0.7:4242");
        assert_eq!(ev["request"]["useragent"], "docker/27");
        assert_eq!(ev["actor"]["name"], "alice");
        assert!(ev["source"].get("instanceID").is_some());
    }

    #[test]
    fn only_successful_push_pull_and_delete_are_sent() {
        let s = push_seen();
        let h = HeaderMap::new();
        let src = Source::default();
        assert!(event(&audit("push", 403, "v1", None), &s, &h, &src).is_none());
        assert!(event(&audit("push_blob", 201, "v1", None), &s, &h, &src).is_none());
        let del = event(
            &audit("delete", 202, "sha256:cd", Some("sha256:cd")),
            &s,
            &h,
            &src,
        );
        let del = del.unwrap();
        assert_eq!(del.target.tag, "");
        assert_eq!(del.target.digest, "sha256:cd");
    }
}
