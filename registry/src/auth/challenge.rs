//! What a `/v2/...` request needs, and the challenge that tells a client
//! where to get it (Distribution's `docs/content/spec/auth/token.md`).
//!
//! The realm is built from the address the client used, so the token flow
//! works alike through a Service name, a node port, an Ingress host and a
//! `kubectl port-forward` to 127.0.0.1.

use axum::http::{HeaderMap, Method, Uri, header};
use berth_access::{Actions, Scope};

use crate::api::Endpoint;

/// The right a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// `/v2/`: any valid credentials.
    Base,
    /// `/v2/_catalog`: `registry:catalog:*`.
    Catalog,
    /// Actions on one repository.
    Repository(String, Actions),
}

impl Need {
    /// What `method` on `endpoint` needs: GET/HEAD pull; PUT/POST/PATCH
    /// pull and push (a push reads back what it wrote); DELETE delete.
    /// Upload sessions are a push's, whatever the method (status and
    /// cancel too), as in Distribution.
    pub fn of(method: &Method, endpoint: &Endpoint) -> Need {
        let name = match endpoint {
            Endpoint::Base => return Need::Base,
            Endpoint::Catalog => return Need::Catalog,
            Endpoint::UploadStart(n) | Endpoint::Upload(n, _) => {
                return Need::Repository(n.to_string(), actions_for(&Method::POST));
            }
            Endpoint::Tags(n)
            | Endpoint::Manifest(n, _)
            | Endpoint::Blob(n, _)
            | Endpoint::Referrers(n, _) => n.to_string(),
        };
        Need::Repository(name, actions_for(method))
    }

    /// The scope a token must carry for this need (none for `/v2/`).
    pub fn scope(&self) -> Option<Scope> {
        match self {
            Need::Base => None,
            Need::Catalog => Some(Scope::catalog()),
            Need::Repository(name, actions) => Some(Scope::repository(name, *actions)),
        }
    }
}

/// The repository actions an HTTP method stands for.
pub fn actions_for(method: &Method) -> Actions {
    use berth_access::Action as A;
    match *method {
        Method::GET | Method::HEAD => Actions::of(&[A::Pull]),
        Method::DELETE => Actions::of(&[A::Delete]),
        // PUT, POST, PATCH and anything unknown: the strongest ordinary
        // right, so an unexpected method is never cheaper than a push.
        _ => Actions::of(&[A::Pull, A::Push]),
    }
}

/// The `<scheme>://<host>` a client used to reach us.
///
/// Host from `Forwarded: host=`, `X-Forwarded-Host`, `Host`, or the URI's
/// authority (HTTP/2 `:authority`), in that order; scheme from `Forwarded:
/// proto=` or `X-Forwarded-Proto`, else https on a TLS connection. The
/// forwarded headers only choose the address the client is sent back to:
/// a client that forges them only redirects its own token request.
pub fn origin(headers: &HeaderMap, uri: &Uri, tls: bool) -> String {
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(parse_forwarded)
        .unwrap_or_default();
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let host = forwarded
        .host
        .or_else(|| first("x-forwarded-host"))
        .or_else(|| first("host"))
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .filter(|h| is_host(h))
        .unwrap_or_else(|| "localhost".to_owned());
    let scheme = forwarded
        .proto
        .or_else(|| first("x-forwarded-proto"))
        .map(|p| p.to_ascii_lowercase())
        .filter(|p| p == "http" || p == "https")
        .unwrap_or_else(|| if tls { "https" } else { "http" }.to_owned());
    format!("{scheme}://{host}")
}

#[derive(Default)]
struct Forwarded {
    host: Option<String>,
    proto: Option<String>,
}

/// The `host` and `proto` of one `Forwarded` element (RFC 7239).
fn parse_forwarded(element: &str) -> Forwarded {
    let mut f = Forwarded::default();
    for pair in element.split(';') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "host" if !v.is_empty() => f.host = Some(v),
            "proto" if !v.is_empty() => f.proto = Some(v),
            _ => {}
        }
    }
    f
}

/// A host or host:port we are willing to echo into a header: no quotes,
/// spaces, slashes or control characters that could break the challenge.
fn is_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

/// The `WWW-Authenticate` value of a Bearer challenge.
/// Several scopes are joined by spaces (a cross-repository mount asks for
/// pull on its source too, as Distribution does).
pub fn bearer(origin: &str, service: &str, scopes: &[Scope], error: Option<&str>) -> String {
    let mut v = format!("Bearer realm=\"{origin}/token\",service=\"{service}\"");
    if !scopes.is_empty() {
        let joined: Vec<String> = scopes.iter().map(Scope::to_string).collect();
        v.push_str(&format!(",scope=\"{}\"", joined.join(" ")));
    }
    if let Some(e) = error {
        v.push_str(&format!(",error=\"{e}\""));
    }
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn methods_need_pull_push_or_delete() {
        let n = |m: Method, p: &str| Need::of(&m, &crate::api::parse(p).unwrap());
        assert_eq!(
            n(Method::GET, "/v2/team/app/manifests/v1")
                .scope()
                .unwrap()
                .to_string(),
            "repository:team/app:pull"
        );
        assert_eq!(
            n(Method::PATCH, "/v2/team/app/blobs/uploads/x")
                .scope()
                .unwrap()
                .to_string(),
            "repository:team/app:pull,push"
        );
        for m in [Method::GET, Method::DELETE] {
            assert_eq!(
                n(m, "/v2/team/app/blobs/uploads/x")
                    .scope()
                    .unwrap()
                    .to_string(),
                "repository:team/app:pull,push"
            );
        }
        assert_eq!(
            n(Method::DELETE, "/v2/team/app/manifests/v1")
                .scope()
                .unwrap()
                .to_string(),
            "repository:team/app:delete"
        );
        assert_eq!(
            n(Method::GET, "/v2/_catalog").scope().unwrap().to_string(),
            "registry:catalog:*"
        );
        assert_eq!(n(Method::GET, "/v2/").scope(), None);
    }

    #[test]
    fn the_origin_follows_forwarded_headers_then_host() {
        let uri: Uri = "/v2/".parse().unwrap();
        assert_eq!(
            origin(&headers(&[("host", "127.0.0.1:5000")]), &uri, false),
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            origin(&headers(&[("host", "hub.team.svc")]), &uri, true),
            "https://hub.team.svc"
        );
        assert_eq!(
            origin(
                &headers(&[
                    ("host", "10.0.0.1"),
                    ("x-forwarded-host", "registry.example.com"),
                    ("x-forwarded-proto", "https"),
                ]),
                &uri,
                false
            ),
            "https://registry.example.com"
        );
        assert_eq!(
            origin(
                &headers(&[
                    ("host", "10.0.0.1"),
                    (
                        "forwarded",
                        "for=1.2.3.4;host=\"r.example\";proto=https, host=x"
                    ),
                ]),
                &uri,
                false
            ),
            "https://r.example"
        );
        let h2: Uri = "https://hub:5443/v2/".parse().unwrap();
        assert_eq!(origin(&HeaderMap::new(), &h2, true), "https://hub:5443");
    }

    #[test]
    fn a_host_that_would_break_the_header_is_not_echoed() {
        let uri: Uri = "/v2/".parse().unwrap();
        assert_eq!(
            origin(&headers(&[("host", "evil\",x=\"y")]), &uri, false),
            "http://localhost"
        );
    }

    #[test]
    fn the_challenge_names_realm_service_and_scope() {
        let s = Scope::parse("repository:team/app:pull,push").unwrap();
        assert_eq!(
            bearer("https://hub", "svc", std::slice::from_ref(&s), None),
            "Bearer realm=\"https://hub/token\",service=\"svc\",scope=\"repository:team/app:pull,push\""
        );
    }
}
