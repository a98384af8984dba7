//! The HTTP API under `/v2/`: one pure [`parse`] from path to [`Endpoint`]
//! (repository names have any number of `/` components, so a route per
//! depth would not do), then one handler module per spec area.

mod base;
mod blobs;
mod catalog;
mod manifests;
mod mirrored;
mod referrers;
mod tags;
mod uploads;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};

use crate::AppState;
use crate::error::{Code, Error, Result};
use crate::oci::Name;
use crate::storage::upload::BodyChunk;

/// What a `/v2/...` path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Base,
    Catalog,
    Tags(Name),
    Manifest(Name, String),
    Blob(Name, String),
    UploadStart(Name),
    Upload(Name, String),
    Referrers(Name, String),
}

impl Endpoint {
    /// A low-cardinality label for metrics and logs.
    pub fn route(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags(_) => "tags",
            Endpoint::Manifest(..) => "manifest",
            Endpoint::Blob(..) => "blob",
            Endpoint::UploadStart(_) => "upload_start",
            Endpoint::Upload(..) => "upload",
            Endpoint::Referrers(..) => "referrers",
        }
    }

    /// The repository it addresses, if any.
    pub fn name(&self) -> Option<&Name> {
        match self {
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::Tags(n)
            | Endpoint::Manifest(n, _)
            | Endpoint::Blob(n, _)
            | Endpoint::UploadStart(n)
            | Endpoint::Upload(n, _)
            | Endpoint::Referrers(n, _) => Some(n),
        }
    }

    fn name_mut(&mut self) -> Option<&mut Name> {
        match self {
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::Tags(n)
            | Endpoint::Manifest(n, _)
            | Endpoint::Blob(n, _)
            | Endpoint::UploadStart(n)
            | Endpoint::Upload(n, _)
            | Endpoint::Referrers(n, _) => Some(n),
        }
    }
}

/// Maps a path (starting with `/v2`) to an endpoint. Pure: no I/O.
///
/// Segments are percent-decoded one by one, so an encoded `/` cannot make
/// a new segment; names are then validated by [`Name`]'s grammar.
pub fn parse(path: &str) -> Result<Endpoint> {
    let not_found = || {
        Error::new(Code::NameUnknown, format!("no API endpoint at {path:?}"))
            .with_status(StatusCode::NOT_FOUND)
    };
    let rest = path.strip_prefix("/v2").ok_or_else(not_found)?;
    if rest.is_empty() || rest == "/" {
        return Ok(Endpoint::Base);
    }
    let rest = rest.strip_prefix('/').ok_or_else(not_found)?;
    if rest == "_catalog" {
        return Ok(Endpoint::Catalog);
    }
    let segs: Vec<String> = rest
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let n = segs.len();
    let name = |upto: usize| -> Result<Name> {
        if upto == 0 {
            return Err(not_found());
        }
        let parts = &segs[..upto];
        if let Some(bad) = parts.iter().find(|s| s.contains('/')) {
            return Err(Error::new(
                Code::NameInvalid,
                format!("repository name component {bad:?} contains an encoded '/'"),
            ));
        }
        Ok(parts.join("/").parse::<Name>()?)
    };
    let last = segs[n - 1].clone();
    let at = |i: usize, s: &str| n > i && segs[n - 1 - i] == s;
    if at(1, "tags") && last == "list" {
        return Ok(Endpoint::Tags(name(n - 2)?));
    }
    if at(2, "blobs") && at(1, "uploads") {
        return if last.is_empty() {
            Ok(Endpoint::UploadStart(name(n - 3)?))
        } else {
            Ok(Endpoint::Upload(name(n - 3)?, last))
        };
    }
    if at(1, "blobs") && last == "uploads" {
        return Ok(Endpoint::UploadStart(name(n - 2)?));
    }
    if at(1, "manifests") {
        return Ok(Endpoint::Manifest(name(n - 2)?, last));
    }
    if at(1, "blobs") {
        return Ok(Endpoint::Blob(name(n - 2)?, last));
    }
    if at(1, "referrers") {
        return Ok(Endpoint::Referrers(name(n - 2)?, last));
    }
    Err(not_found())
}

/// The request's query parameters, decoded.
pub struct Query(Vec<(String, String)>);

impl Query {
    fn from_request(req: &Request) -> Self {
        let raw = req.uri().query().unwrap_or("");
        Query(
            form_urlencoded::parse(raw.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Everything a handler needs from the request.
pub struct Ctx {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Query,
    /// Set on plain HTTP/1.x connections: blob bodies may be sent with
    /// `sendfile` (see [`crate::zero_copy`]).
    pub zero_copy: Option<crate::zero_copy::Regions>,
    /// A request body silent for this long is cut off.
    pub body_timeout: std::time::Duration,
    /// Who is asking, when auth is on (the catalog shows only what they
    /// may pull).
    pub caller: Option<crate::auth::Caller>,
}

impl Ctx {
    pub fn header(&self, name: HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header(header::CONTENT_LENGTH)
            .and_then(|v| v.parse().ok())
    }

    /// The body as a stream of chunks, for storage to consume; it ends in
    /// an error if the client stops sending for the body timeout.
    pub fn body_stream(&self, body: Body) -> impl Stream<Item = BodyChunk> + Send + Unpin {
        crate::limits::Progress::new(
            body.into_data_stream()
                .map(|r| r.map_err(|e| e.to_string())),
            self.body_timeout,
        )
    }
}

/// The entry point for every `/v2/...` request.
pub async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let started = std::time::Instant::now();
    if let Err(e) = within_limits(&req) {
        return e.into_response();
    }
    let method = req.method().clone();
    let mut endpoint = parse(req.uri().path());
    let route = endpoint.as_ref().map(Endpoint::route).unwrap_or("unknown");
    let mut query = Query::from_request(&req);
    // A mirrored repository's one local name, before auth decides on it.
    if let (Some(mirror), Ok(e)) = (&state.mirror, &mut endpoint)
        && let Some(name) = e.name_mut()
        && let Some(local) = mirror.local_name(name, query.get("ns"))
    {
        *name = local;
    }
    let (mut parts, body) = req.into_parts();
    let zero_copy = parts.extensions.remove::<crate::zero_copy::Regions>();
    let client = parts
        .extensions
        .get::<crate::server::Connection>()
        .map(|c| c.peer.ip());

    // Auth decides here, once: handlers receive only authorised requests.
    let caller = match (&state.auth, &endpoint) {
        (Some(auth), Ok(e)) => {
            let conn = parts.extensions.get::<crate::server::Connection>();
            let mount_from = query.get("mount").and(query.get("from"));
            match auth
                .authorize(&method, e, &parts.uri, &parts.headers, conn, mount_from)
                .await
            {
                Ok(caller) => {
                    if !caller.may_mount {
                        // Not allowed to read the source: a plain upload.
                        query.0.retain(|(k, _)| k != "mount");
                    }
                    Ok(Some(caller))
                }
                Err(e) => Err(e),
            }
        }
        _ => Ok(None),
    };
    let seen = match (state.audit.is_some() || state.notify.is_some(), &endpoint) {
        (true, Ok(e)) => {
            let subject = match &caller {
                Ok(Some(c)) => c.identity.audit_name(),
                _ => "anonymous".to_owned(),
            };
            let mount = query.get("mount").is_some();
            Some(crate::audit::Seen::of(&method, e, mount, subject, client))
        }
        _ => None,
    };
    // What a notification needs of the request (manifests only).
    let notify_seen = match (&state.notify, &endpoint) {
        (Some(_), Ok(Endpoint::Manifest(..))) => {
            let conn = parts.extensions.get::<crate::server::Connection>();
            Some(crate::notify::Seen::of(
                &method,
                &parts.headers,
                conn.map(|c| c.peer),
                conn.is_some_and(|c| c.tls),
            ))
        }
        _ => None,
    };
    let ctx = Ctx {
        method: parts.method,
        headers: parts.headers,
        query,
        zero_copy,
        body_timeout: state.body_timeout,
        caller: caller.as_ref().ok().cloned().flatten(),
    };
    // A manifest GET is a pull: its digest's last-pulled time is noted
    // (in memory; see `storage::pulls`) once it is served.
    let pulled_from = match (&endpoint, &method) {
        (Ok(Endpoint::Manifest(name, _)), &Method::GET) => Some(name.clone()),
        _ => None,
    };
    let result = match (endpoint, caller) {
        (Ok(e), Ok(_)) => dispatch(&state, e, ctx, body).await,
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let mut refused = None;
    let mut resp = match result {
        Ok(r) => r,
        Err(mut e) => {
            if e.status().is_server_error() {
                tracing::error!(route, %method, error = %e.message, "request failed");
            } else {
                tracing::debug!(route, %method, code = e.code.describe().0, error = %e.message, "request refused");
            }
            refused = e.refused.take();
            e.into_response()
        }
    };
    if let Some(name) = pulled_from
        && resp.status().is_success()
        && let Some(digest) = resp
            .headers()
            .get(DOCKER_CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<crate::oci::Digest>().ok())
    {
        state.store.note_pull(&name, &digest);
    }
    if let Some(seen) = seen
        && let Some(event) =
            crate::audit::observe(seen, resp.status(), resp.headers(), refused.as_ref())
    {
        if let (Some(notify), Some(n)) = (&state.notify, &notify_seen) {
            notify.publish(&event, n, resp.headers());
        }
        if let Some(audit) = &state.audit {
            audit.record(event);
        }
    }
    resp.headers_mut().insert(
        HeaderName::from_static("docker-distribution-api-version"),
        HeaderValue::from_static("registry/2.0"),
    );
    crate::metrics::request(
        route,
        method.as_str(),
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// Over-long request targets and heads get an OCI error body here; hyper
/// answers only those past its own (larger) limits, with a bare status.
fn within_limits(req: &Request) -> Result<()> {
    let limits = crate::limits::Limits::default();
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > limits.max_uri_bytes {
        crate::metrics::refusal("uri_too_long");
        return Err(Error::new(
            Code::NameInvalid,
            format!(
                "the request target is {uri_len} bytes; the limit is {}",
                limits.max_uri_bytes
            ),
        )
        .with_status(StatusCode::URI_TOO_LONG));
    }
    let head: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    // Auth decides first on oversized credentials (401, as it expects).
    if head > limits.max_header_bytes && !req.headers().contains_key(header::AUTHORIZATION) {
        crate::metrics::refusal("headers_too_large");
        return Err(Error::new(
            Code::Unsupported,
            format!(
                "the request headers are {head} bytes; the limit is {}",
                limits.max_header_bytes
            ),
        )
        .with_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    }
    Ok(())
}

async fn dispatch(state: &AppState, endpoint: Endpoint, ctx: Ctx, body: Body) -> Result<Response> {
    use Method as M;
    let store = &state.store;
    if let Some(mirror) = &state.mirror
        && let Some(name) = endpoint.name()
        && let Some(route) = mirror.route(name)
    {
        return match (&endpoint, ctx.method.clone()) {
            (Endpoint::Manifest(name, r), M::GET | M::HEAD) => {
                mirrored::manifest(store, mirror, &route, name, r, &ctx).await
            }
            (Endpoint::Blob(name, d), M::GET | M::HEAD) => {
                mirrored::blob(store, mirror, &route, name, d, &ctx).await
            }
            (
                Endpoint::Manifest(..) | Endpoint::UploadStart(_) | Endpoint::Upload(..),
                M::PUT | M::POST | M::PATCH,
            ) => Err(mirrored::refuse_write(&route, name)),
            // Tags, referrers and deletes act on what is cached.
            _ => dispatch_local(state, endpoint, ctx, body).await,
        };
    }
    dispatch_local(state, endpoint, ctx, body).await
}

async fn dispatch_local(
    state: &AppState,
    endpoint: Endpoint,
    ctx: Ctx,
    body: Body,
) -> Result<Response> {
    use Method as M;
    let store = &state.store;
    let quota = state.quota.as_deref();
    match (endpoint, ctx.method.clone()) {
        (Endpoint::Base, M::GET | M::HEAD) => Ok(base::get()),
        (Endpoint::Catalog, M::GET) => catalog::get(&state.store, &ctx).await,
        (Endpoint::Tags(name), M::GET) => tags::get(store, &name, &ctx).await,
        (Endpoint::Manifest(name, r), M::GET | M::HEAD) => {
            manifests::get(store, &name, &r, &ctx).await
        }
        (Endpoint::Manifest(name, r), M::PUT) => {
            manifests::put(store, quota, &name, &r, &ctx, body).await
        }
        (Endpoint::Manifest(name, r), M::DELETE) => manifests::delete(store, &name, &r).await,
        (Endpoint::Blob(name, d), M::GET | M::HEAD) => blobs::get(store, &name, &d, &ctx).await,
        (Endpoint::Blob(name, d), M::DELETE) => blobs::delete(store, &name, &d).await,
        (Endpoint::UploadStart(name), M::POST) => {
            uploads::start(store, quota, &name, &ctx, body).await
        }
        (Endpoint::Upload(name, id), M::GET) => uploads::status(store, &name, &id).await,
        (Endpoint::Upload(name, id), M::PATCH) => {
            uploads::patch(store, &name, &id, &ctx, body).await
        }
        (Endpoint::Upload(name, id), M::PUT) => {
            uploads::put(store, quota, &name, &id, &ctx, body).await
        }
        (Endpoint::Upload(name, id), M::DELETE) => uploads::cancel(store, &name, &id).await,
        (Endpoint::Referrers(name, d), M::GET) => referrers::get(store, &name, &d, &ctx).await,
        (e, m) => Err(Error::new(
            Code::Unsupported,
            format!("{m} is not supported on the {} endpoint", e.route()),
        )),
    }
}

/// A response with no body.
fn empty(status: StatusCode, headers: &[(HeaderName, String)]) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name.clone(), v);
        }
    }
    resp
}

pub(crate) const DOCKER_CONTENT_DIGEST: HeaderName =
    HeaderName::from_static("docker-content-digest");
pub(crate) const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
pub(crate) const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
pub(crate) const OCI_TAG: HeaderName = HeaderName::from_static("oci-tag");
pub(crate) const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

/// Parses the `n` page-size parameter of list endpoints.
fn page_size(q: &Query) -> Result<Option<usize>> {
    q.get("n")
        .map(|n| {
            n.parse::<usize>().map_err(|_| {
                Error::new(
                    Code::Unsupported,
                    format!("n={n:?} is not a page size; use a non-negative integer"),
                )
                .with_status(StatusCode::BAD_REQUEST)
            })
        })
        .transpose()
}

/// Applies `last` and `n` to a sorted list; returns the page and, when more
/// remain, the `Link` header value for the next page.
fn paginate(items: Vec<String>, q: &Query, base: &str) -> Result<(Vec<String>, Option<String>)> {
    let n = page_size(q)?;
    let mut items: Vec<String> = match q.get("last") {
        Some(last) => items.into_iter().filter(|i| i.as_str() > last).collect(),
        None => items,
    };
    let Some(n) = n else { return Ok((items, None)) };
    if items.len() <= n {
        return Ok((items, None));
    }
    items.truncate(n);
    let link = items.last().map(|last| {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("n", &n.to_string())
            .append_pair("last", last)
            .finish();
        format!("<{base}?{q}>; rel=\"next\"")
    });
    Ok((items, link))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        s.parse().unwrap()
    }

    #[test]
    fn routes_every_endpoint_at_any_depth() {
        assert_eq!(parse("/v2/").unwrap(), Endpoint::Base);
        assert_eq!(parse("/v2").unwrap(), Endpoint::Base);
        assert_eq!(parse("/v2/_catalog").unwrap(), Endpoint::Catalog);
        assert_eq!(
            parse("/v2/a/b/c/d/e/f/g/h/tags/list").unwrap(),
            Endpoint::Tags(name("a/b/c/d/e/f/g/h"))
        );
        assert_eq!(
            parse("/v2/x/manifests/latest").unwrap(),
            Endpoint::Manifest(name("x"), "latest".into())
        );
        assert_eq!(
            parse("/v2/x/y/blobs/sha256:ab").unwrap(),
            Endpoint::Blob(name("x/y"), "sha256:ab".into())
        );
        assert_eq!(
            parse("/v2/x/blobs/uploads/").unwrap(),
            Endpoint::UploadStart(name("x"))
        );
        assert_eq!(
            parse("/v2/x/blobs/uploads").unwrap(),
            Endpoint::UploadStart(name("x"))
        );
        assert_eq!(
            parse("/v2/x/blobs/uploads/abc").unwrap(),
            Endpoint::Upload(name("x"), "abc".into())
        );
        assert_eq!(
            parse("/v2/x/referrers/sha256:ab").unwrap(),
            Endpoint::Referrers(name("x"), "sha256:ab".into())
        );
    }

    #[test]
    fn names_may_contain_endpoint_words() {
        assert_eq!(
            parse("/v2/blobs/manifests/manifests/v1").unwrap(),
            Endpoint::Manifest(name("blobs/manifests"), "v1".into())
        );
        assert_eq!(
            parse("/v2/tags/list/tags/list").unwrap(),
            Endpoint::Tags(name("tags/list"))
        );
    }

    #[test]
    fn decodes_percent_escapes_per_segment() {
        assert_eq!(
            parse("/v2/x/blobs/sha256%3Aab").unwrap(),
            Endpoint::Blob(name("x"), "sha256:ab".into())
        );
        assert_eq!(
            parse("/v2/a%2Fb/tags/list").unwrap_err().code,
            Code::NameInvalid
        );
    }

    #[test]
    fn refuses_path_tricks_with_name_invalid() {
        for p in [
            "/v2/../etc/manifests/x",
            "/v2/a/../b/blobs/sha256:x",
            "/v2/A/tags/list",
            "/v2//manifests/x",
        ] {
            assert_eq!(parse(p).unwrap_err().code, Code::NameInvalid, "{p}");
        }
        assert_eq!(
            parse("/v2/x/unknown").unwrap_err().status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(parse("/v3/x").unwrap_err().status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn paginates_with_last_and_a_next_link() {
        let q = Query(vec![("n".into(), "2".into()), ("last".into(), "a".into())]);
        let (page, link) = paginate(
            vec!["a".into(), "b".into(), "c".into(), "d".into()],
            &q,
            "/v2/x/tags/list",
        )
        .unwrap();
        assert_eq!(page, ["b", "c"]);
        assert_eq!(
            link.as_deref(),
            Some("</v2/x/tags/list?n=2&last=c>; rel=\"next\"")
        );
        let all = Query(vec![]);
        assert_eq!(
            paginate(vec!["a".into()], &all, "/").unwrap(),
            (vec!["a".to_string()], None)
        );
    }
}
