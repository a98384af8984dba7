//! Manifest and blob reads of repositories under a mirror prefix: the
//! mirror makes sure what is asked for is in storage (or streams it in),
//! then the ordinary handlers serve it. Pushes there are refused.

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;

use super::blobs::hv;
use super::{Ctx, DOCKER_CONTENT_DIGEST, blobs, manifests};
use crate::error::{Code, Error, Result};
use crate::mirror::fetch::{self, Begun, Fetch, Joined, State};
use crate::mirror::{Kind, Mirror, Route, STALE_WARNING, Served};
use crate::oci::{Digest, Name, Reference};
use crate::storage::Store;

pub async fn manifest(
    store: &Store,
    mirror: &Mirror,
    route: &Route,
    name: &Name,
    reference: &str,
    ctx: &Ctx,
) -> Result<Response> {
    let parsed: Reference = reference.parse()?;
    let served = mirror.manifest(store, route, name, &parsed).await?;
    let mut resp = manifests::get(store, name, reference, ctx).await?;
    if served == Served::Stale {
        resp.headers_mut()
            .insert(header::WARNING, HeaderValue::from_static(STALE_WARNING));
    }
    Ok(resp)
}

pub async fn blob(
    store: &std::sync::Arc<Store>,
    mirror: &Mirror,
    route: &Route,
    name: &Name,
    digest: &str,
    ctx: &Ctx,
) -> Result<Response> {
    crate::mirror::allowed(route)?;
    let parsed: Digest = digest.parse()?;
    if store.blob_size(name, &parsed).await?.is_some() {
        route_count(route, "hit");
        return blobs::get(store, name, digest, ctx).await;
    }
    if ctx.method == Method::HEAD {
        let size = mirror.blob_head(store, route, name, &parsed).await?;
        return Ok(blob_head(&parsed, size));
    }
    let lead = match route.upstream.flights.join(name, &parsed) {
        Joined::Wait(rx) => {
            fetch::wait(rx)
                .await
                .map_err(|e| fetch_error(route, &parsed, e))?;
            route_count(route, "hit");
            return blobs::get(store, name, digest, ctx).await;
        }
        Joined::Lead(lead) => lead,
    };
    // A fetch may have committed between the check above and the join.
    if store.blob_size(name, &parsed).await?.is_some() {
        lead.finish(State::Stored);
        route_count(route, "hit");
        return blobs::get(store, name, digest, ctx).await;
    }
    // A range is served from storage once the whole blob is there.
    let tee = ctx.header(header::RANGE).is_none();
    let begun = fetch::lead(
        Fetch {
            store: store.clone(),
            client: route.upstream.client.clone(),
            remote: route.remote.clone(),
            name: name.clone(),
            digest: parsed.clone(),
        },
        lead,
        tee,
    )
    .await
    .map_err(|e| fetch_error(route, &parsed, e))?;
    route_count(route, "miss");
    match begun {
        Begun::Stored => blobs::get(store, name, digest, ctx).await,
        Begun::Streaming { size, body } => {
            let chunks = futures_util::stream::unfold(body, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            let mut resp = Response::new(Body::from_stream(chunks));
            let h = resp.headers_mut();
            if let Some(size) = size {
                h.insert(header::CONTENT_LENGTH, hv(&size.to_string()));
                crate::metrics::bytes_out(size);
            }
            blob_headers(h, &parsed);
            Ok(resp)
        }
    }
}

/// Pushes, upload requests and the like under a mirror prefix.
pub fn refuse_write(route: &Route, name: &Name) -> Error {
    Error::new(
        Code::Denied,
        format!(
            "{name} is a mirror of {} (repository {}): it is read-only; push to a repository outside the mirror prefixes ({})",
            route.upstream.client.url(),
            route.remote,
            route.prefix()
        ),
    )
}

fn route_count(route: &Route, event: &'static str) {
    crate::metrics::mirror(route.prefix(), event);
}

fn fetch_error(route: &Route, digest: &Digest, e: fetch::FetchError) -> Error {
    match e {
        fetch::FetchError::Upstream(u) => {
            route_count(route, "upstream_error");
            crate::mirror::upstream_error(route, Kind::Blob, &digest.to_string(), &u)
        }
        fetch::FetchError::Verify { .. } => {
            Error::new(Code::Unknown, e.to_string()).with_status(StatusCode::BAD_GATEWAY)
        }
        fetch::FetchError::Storage(_) => Error::new(
            Code::Unknown,
            format!(
                "blob {digest} could not be cached: {e}; retry, and tell the operator if it persists"
            ),
        ),
    }
}

fn blob_head(digest: &Digest, size: u64) -> Response {
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, hv(&size.to_string()));
    blob_headers(h, digest);
    resp
}

fn blob_headers(h: &mut axum::http::HeaderMap, digest: &Digest) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(DOCKER_CONTENT_DIGEST, hv(&digest.to_string()));
    h.insert(header::ETAG, hv(&format!("\"{digest}\"")));
}
