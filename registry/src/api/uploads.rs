//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (monolithic with
//! `?digest=`, cross-repository mount with `?mount=&from=`, or a session),
//! then `PATCH` chunks, `PUT ?digest=` to finish, `GET` status, `DELETE`.

use axum::body::Body;
use axum::http::{HeaderName, StatusCode, header};
use axum::response::Response;

use super::blobs::hv;
use super::{Ctx, DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID, empty};
use crate::error::{Code, Error, Result};
use crate::oci::range::{content_range_len, parse_content_range};
use crate::oci::{Algorithm, Digest, Name};
use crate::quota::Quotas;
use crate::storage::upload::BodyChunk;
use crate::storage::{Store, UploadError};

pub async fn start(
    store: &Store,
    quota: Option<&Quotas>,
    name: &Name,
    ctx: &Ctx,
    body: Body,
) -> Result<Response> {
    if let Some(mount) = ctx.query.get("mount") {
        let digest: Digest = mount.parse()?;
        // A source we cannot parse is a source we cannot mount from: fall back to an upload.
        let from = ctx.query.get("from").map(|f| f.parse::<Name>());
        let source = match &from {
            Some(Ok(source)) => Some(Some(source)),
            Some(Err(_)) => None,
            None => Some(None),
        };
        if let Some(source) = source
            && mount_blob(store, quota, name, &digest, source).await?
        {
            return Ok(created(name, &digest));
        }
    }
    let digest: Option<Digest> = ctx.query.get("digest").map(str::parse).transpose()?;
    let algorithm = digest.as_ref().map(Digest::algorithm).or_else(|| {
        ctx.query.get("digest-algorithm").and_then(|a| match a {
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        })
    });
    // Before any byte is received: a namespace at its quota takes no new
    // upload, nor one whose declared size cannot fit.
    let declared = ctx.content_length();
    if let Some(q) = quota {
        q.precheck(name, digest.as_ref(), declared.filter(|_| digest.is_some()))
            .await?;
    }
    let Some(digest) = digest else {
        let id = store.upload_start(name, algorithm).await?;
        return Ok(session(StatusCode::ACCEPTED, name, &id, 0));
    };
    let id = store.upload_start_monolithic(name, algorithm).await?;
    // Monolithic: the whole blob is this request's body.
    let body = ctx.body_stream(body);
    if let Err(e) = complete(store, quota, name, &id, &digest, None, declared, body).await {
        // The session was this request's alone: leave nothing behind.
        if let Err(cleanup) = store.upload_cancel(name, &id).await {
            tracing::debug!(upload = id, error = %cleanup, "monolithic upload already cleaned up");
        }
        return Err(upload_error(e, name, &id));
    }
    Ok(created(name, &digest))
}

/// A cross-repository mount; false when there is nothing to mount (the
/// client then uploads). With quotas, the blob counts in `name`'s
/// namespace like an upload of it.
async fn mount_blob(
    store: &Store,
    quota: Option<&Quotas>,
    name: &Name,
    digest: &Digest,
    source: Option<&Name>,
) -> Result<bool> {
    let Some(q) = quota else {
        return Ok(store.blob_mount(name, digest, source).await?.is_some());
    };
    let Some(size) = store.blob_mount_size(digest, source).await? else {
        return Ok(false);
    };
    let reservation = q.admit(name, &[(digest.clone(), size)]).await?;
    let mounted = store.blob_mount(name, digest, source).await?.is_some();
    if mounted {
        reservation.keep();
    }
    Ok(mounted)
}

/// Finishes an upload; with quotas, the verified blob is checked against
/// its namespace's just before it is committed.
#[allow(clippy::too_many_arguments)]
async fn complete(
    store: &Store,
    quota: Option<&Quotas>,
    name: &Name,
    id: &str,
    digest: &Digest,
    start: Option<u64>,
    declared: Option<u64>,
    body: impl futures_util::Stream<Item = BodyChunk> + Send + Unpin,
) -> std::result::Result<(), UploadError> {
    match quota {
        None => store
            .upload_complete(name, id, digest, start, declared, body)
            .await
            .map(drop),
        Some(q) => {
            let (_, reservation) = store
                .upload_complete_admitted(name, id, digest, start, declared, body, |size| {
                    q.admit_now(name, &[(digest.clone(), size)])
                })
                .await?;
            reservation.keep();
            Ok(())
        }
    }
}

pub async fn status(store: &Store, name: &Name, id: &str) -> Result<Response> {
    check_id(id)?;
    let size = store
        .upload_size(name, id)
        .await
        .map_err(|e| upload_error(e, name, id))?;
    Ok(session(StatusCode::NO_CONTENT, name, id, size))
}

pub async fn patch(
    store: &Store,
    name: &Name,
    id: &str,
    ctx: &Ctx,
    body: Body,
) -> Result<Response> {
    check_id(id)?;
    let (start, declared) = chunk_bounds(ctx)?;
    let body = ctx.body_stream(body);
    let size = store
        .upload_append(name, id, start, declared, body)
        .await
        .map_err(|e| upload_error(e, name, id))?;
    Ok(session(StatusCode::ACCEPTED, name, id, size))
}

pub async fn put(
    store: &Store,
    quota: Option<&Quotas>,
    name: &Name,
    id: &str,
    ctx: &Ctx,
    body: Body,
) -> Result<Response> {
    check_id(id)?;
    let digest: Digest = ctx
        .query
        .get("digest")
        .ok_or_else(|| {
            Error::new(
                Code::DigestInvalid,
                "finishing an upload needs ?digest=<algorithm>:<hex> of the whole blob",
            )
        })?
        .parse()?;
    let (start, declared) = chunk_bounds(ctx)?;
    if let Some(q) = quota {
        // What is held already plus what this request declares: refused
        // before the body is read if that cannot fit.
        let held = store
            .upload_size(name, id)
            .await
            .map_err(|e| upload_error(e, name, id))?;
        if let Err(refused) = q
            .precheck(
                name,
                Some(&digest),
                Some(held.saturating_add(declared.unwrap_or(0))),
            )
            .await
        {
            discard(store, name, id).await;
            return Err(refused.into());
        }
    }
    let body = ctx.body_stream(body);
    complete(store, quota, name, id, &digest, start, declared, body)
        .await
        .map_err(|e| upload_error(e, name, id))?;
    Ok(created(name, &digest))
}

/// Removes a refused upload's session (its bytes are no blob yet).
async fn discard(store: &Store, name: &Name, id: &str) {
    if let Err(e) = store.upload_cancel(name, id).await {
        tracing::debug!(upload = id, error = %e, "refused upload already gone");
    }
}

pub async fn cancel(store: &Store, name: &Name, id: &str) -> Result<Response> {
    check_id(id)?;
    store
        .upload_cancel(name, id)
        .await
        .map_err(|e| upload_error(e, name, id))?;
    Ok(empty(StatusCode::NO_CONTENT, &[]))
}

/// Session ids are UUIDs we minted; anything else names no session (and
/// must never reach storage as a path component).
fn check_id(id: &str) -> Result<()> {
    match uuid::Uuid::try_parse(id) {
        Ok(u) if u.hyphenated().to_string() == id => Ok(()),
        _ => Err(Error::new(
            Code::BlobUploadUnknown,
            format!("upload {id:?} does not exist"),
        )),
    }
}

/// Where a chunk claims to start and how long it claims to be, from
/// `Content-Range` and `Content-Length` (which must agree).
fn chunk_bounds(ctx: &Ctx) -> Result<(Option<u64>, Option<u64>)> {
    let length = ctx.content_length();
    let Some(raw) = ctx.header(header::CONTENT_RANGE) else {
        return Ok((None, length));
    };
    let range = parse_content_range(raw).ok_or_else(|| {
        Error::new(
            Code::RangeInvalid,
            format!("Content-Range {raw:?} is not <start>-<end> with start <= end and a length that fits in 64 bits"),
        )
    })?;
    let len = content_range_len(&range);
    if length.is_some_and(|l| l != len) {
        return Err(Error::new(
            Code::RangeInvalid,
            format!(
                "Content-Range {raw:?} covers {len} bytes but Content-Length is {}",
                length.unwrap_or(0)
            ),
        ));
    }
    Ok((Some(*range.start()), Some(len)))
}

fn location(name: &Name, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// The `Range` header of an upload holding `size` bytes.
fn range_header(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

fn session(status: StatusCode, name: &Name, id: &str, size: u64) -> Response {
    empty(
        status,
        &[
            (header::LOCATION, location(name, id)),
            (header::RANGE, range_header(size)),
            (DOCKER_UPLOAD_UUID, id.to_owned()),
        ],
    )
}

fn created(name: &Name, digest: &Digest) -> Response {
    empty(
        StatusCode::CREATED,
        &[
            (header::LOCATION, format!("/v2/{name}/blobs/{digest}")),
            (DOCKER_CONTENT_DIGEST, digest.to_string()),
        ],
    )
}

fn upload_error(e: UploadError, name: &Name, id: &str) -> Error {
    let msg = e.to_string();
    match e {
        UploadError::Unknown => Error::new(Code::BlobUploadUnknown, msg),
        UploadError::OutOfOrder { size, .. } => Error::new(Code::RangeInvalid, msg)
            .with_header(header::LOCATION, hv(&location(name, id)))
            .with_header(header::RANGE, hv(&range_header(size)))
            .with_header(HeaderName::from_static("docker-upload-uuid"), hv(id)),
        UploadError::SizeMismatch { .. } => Error::new(Code::SizeInvalid, msg),
        UploadError::DigestMismatch { .. } => Error::new(Code::DigestInvalid, msg),
        UploadError::Body(_) => Error::new(Code::BlobUploadInvalid, msg),
        // 416 makes clients ask for the range and resume, which is right
        // once the other request is done.
        UploadError::Busy => {
            crate::metrics::refusal("upload_busy");
            Error::new(Code::BlobUploadInvalid, msg)
                .with_status(axum::http::StatusCode::RANGE_NOT_SATISFIABLE)
                .with_header(header::LOCATION, hv(&location(name, id)))
        }
        UploadError::Cancelled => Error::new(Code::BlobUploadUnknown, msg),
        UploadError::OverQuota(refused) => refused.into(),
        UploadError::Storage(s) => s.into(),
    }
}
