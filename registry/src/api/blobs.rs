//! `GET|HEAD|DELETE /v2/<name>/blobs/<digest>`.

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;

use super::{Ctx, DOCKER_CONTENT_DIGEST, empty};
use crate::error::{Code, Error, Result};
use crate::oci::range::{self, ByteRange};
use crate::oci::{Digest, Name};
use crate::storage::Store;
use crate::zero_copy;

pub async fn get(store: &Store, name: &Name, digest: &str, ctx: &Ctx) -> Result<Response> {
    let digest: Digest = digest.parse()?;
    let size = store.blob_size(name, &digest).await?.ok_or_else(|| {
        Error::new(
            Code::BlobUnknown,
            format!("blob {digest} is not in repository {name}"),
        )
    })?;
    let (status, range) = match range::resolve(ctx.header(header::RANGE), size) {
        ByteRange::Whole => (StatusCode::OK, None),
        ByteRange::Partial(r) => (StatusCode::PARTIAL_CONTENT, Some(r)),
        ByteRange::Unsatisfiable => {
            return Err(Error::new(
                Code::RangeInvalid,
                format!("the requested range is outside the blob's {size} bytes"),
            )
            .with_header(header::CONTENT_RANGE, hv(&format!("bytes */{size}"))));
        }
    };
    if ctx.method == Method::GET
        && let Some(url) = store.blob_redirect(&digest).await?
    {
        // The client follows with its Range header, if any; the bucket
        // answers it. Authorization is not sent on to another host.
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
        let h = resp.headers_mut();
        h.insert(header::LOCATION, hv(&url));
        h.insert(DOCKER_CONTENT_DIGEST, hv(&digest.to_string()));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        crate::metrics::blob_redirect();
        return Ok(resp);
    }
    let (offset, len) = match &range {
        Some(r) => (*r.start(), r.end() - r.start() + 1),
        None => (0, size),
    };
    let mut resp = if ctx.method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        let gone = || {
            Error::new(
                Code::BlobUnknown,
                format!("blob {digest} was deleted while being read"),
            )
        };
        let range = offset..offset + len;
        let download = zero_copy::Download::start();
        // Plain HTTP/1.x may sendfile (the body decides chunk by chunk).
        // Without a local file (another driver, or the blob just vanished),
        // or on a filesystem that cannot map it, the copying path serves.
        let zero_copy = match &ctx.zero_copy {
            Some(regions) => store.blob_file(&digest).await?.and_then(|file| {
                zero_copy::body(file, range.clone(), regions.clone())
                    .inspect_err(
                        |e| tracing::debug!(%digest, error = %e, "no zero-copy for this blob"),
                    )
                    .ok()
            }),
            None => None,
        };
        let chunks = match zero_copy {
            Some(chunks) => chunks,
            None => store.blob_stream(&digest, range).await?.ok_or_else(gone)?,
        };
        let chunks = download.lasting_as_long_as(chunks);
        crate::metrics::bytes_out(len);
        Response::new(Body::from_stream(chunks))
    };
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, hv(&len.to_string()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(DOCKER_CONTENT_DIGEST, hv(&digest.to_string()));
    h.insert(header::ETAG, hv(&format!("\"{digest}\"")));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000"),
    );
    if let Some(r) = range {
        h.insert(
            header::CONTENT_RANGE,
            hv(&format!("bytes {}-{}/{size}", r.start(), r.end())),
        );
    }
    Ok(resp)
}

pub async fn delete(store: &Store, name: &Name, digest: &str) -> Result<Response> {
    let digest: Digest = digest.parse()?;
    if !store.blob_unlink(name, &digest).await? {
        return Err(Error::new(
            Code::BlobUnknown,
            format!("blob {digest} is not in repository {name}"),
        ));
    }
    Ok(empty(
        StatusCode::ACCEPTED,
        &[(DOCKER_CONTENT_DIGEST, digest.to_string())],
    ))
}

/// A header value from text we built ourselves (always visible ASCII).
pub(super) fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""))
}
