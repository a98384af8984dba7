//! Counting the operator's own requests to the apiserver, by verb and
//! resource, so its cost per reconcile and whether a no-change resync
//! writes anything can be read off `/metrics`.
//!
//! The count is taken in a tower layer under the kube `Client`, so every
//! request is seen (reconciles, watches, events, the leader Lease) without
//! each call site remembering to count.

use std::sync::Arc;

use axum::http::{Method, Request};
use kube::client::{Body, ClientBuilder};
use tower::util::MapRequestLayer;

use crate::metrics::Metrics;

/// What a request does, in the apiserver's own words (its audit verbs):
/// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
/// `deletecollection`; and what it does it to (`deployments`,
/// `registries/status`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestKind {
    pub verb: &'static str,
    pub resource: String,
}

impl RequestKind {
    /// Whether the request changes something (everything but reads).
    pub fn is_write(&self) -> bool {
        !matches!(self.verb, "get" | "list" | "watch")
    }
}

/// Classify a request from its method, path and query. Paths that name no
/// resource (discovery, `/version`) count under resource `""`.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> RequestKind {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest: &[&str] = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => &[],
    };
    // namespaces/<ns>/<resource>/<name>/<sub>, unless the namespace itself
    // is the object (namespaces/<ns>, namespaces/<ns>/status).
    let rest = match rest {
        ["namespaces", _ns, resource, more @ ..]
            if *resource != "status" && *resource != "finalize" =>
        {
            let mut v = vec![*resource];
            v.extend_from_slice(more);
            v
        }
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [] => (String::new(), false),
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
    };
    let watch = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1" || kv == "watch")
    });
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    RequestKind { verb, resource }
}

/// A client like `Client::try_default`'s whose every request is counted in
/// `metrics`.
pub async fn counted_client(metrics: Arc<Metrics>) -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let layer = MapRequestLayer::new(move |request: Request<Body>| {
        let kind = classify(
            request.method(),
            request.uri().path(),
            request.uri().query(),
        );
        metrics.api_request(&kind);
        request
    });
    Ok(ClientBuilder::try_from(config)?.with_layer(&layer).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(method: Method, uri: &str) -> (&'static str, String) {
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        let k = classify(&method, path, query);
        (k.verb, k.resource)
    }

    #[test]
    fn reads_are_told_apart_by_name_and_watch() {
        assert_eq!(
            kind(Method::GET, "/apis/apps/v1/namespaces/team/deployments/hub"),
            ("get", "deployments".into())
        );
        assert_eq!(
            kind(Method::GET, "/api/v1/pods?labelSelector=a%3Db"),
            ("list", "pods".into())
        );
        assert_eq!(
            kind(
                Method::GET,
                "/api/v1/secrets?allowWatchBookmarks=true&resourceVersion=5&watch=true"
            ),
            ("watch", "secrets".into())
        );
        assert_eq!(
            kind(Method::GET, "/api/v1/namespaces/team"),
            ("get", "namespaces".into())
        );
        assert_eq!(
            kind(Method::GET, "/api/v1/namespaces"),
            ("list", "namespaces".into())
        );
    }

    #[test]
    fn writes_name_their_verb_and_subresource() {
        let status = kind(
            Method::PATCH,
            "/apis/berth.dev/v1alpha1/namespaces/team/registries/hub/status?fieldManager=berth-operator&force=true",
        );
        assert_eq!(status, ("patch", "registries/status".into()));
        assert_eq!(
            kind(
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/berth-system/leases/berth"
            ),
            ("update", "leases".into())
        );
        assert_eq!(
            kind(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/team/events"
            ),
            ("create", "events".into())
        );
        assert_eq!(
            kind(Method::DELETE, "/api/v1/namespaces/team/configmaps/hub-gc"),
            ("delete", "configmaps".into())
        );
        assert_eq!(
            kind(
                Method::PATCH,
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/berth:team:hub"
            ),
            ("patch", "clusterrolebindings".into())
        );
    }

    #[test]
    fn only_reads_are_not_writes() {
        let read = classify(&Method::GET, "/api/v1/namespaces/team/secrets/x", None);
        let write = classify(&Method::PATCH, "/api/v1/namespaces/team/secrets/x", None);
        assert!(!read.is_write());
        assert!(write.is_write());
    }

    #[test]
    fn paths_outside_resources_count_without_one() {
        assert_eq!(kind(Method::GET, "/version"), ("list", String::new()));
        assert_eq!(kind(Method::GET, "/apis"), ("list", String::new()));
    }
}
