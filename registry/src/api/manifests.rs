//! `GET|HEAD|PUT|DELETE /v2/<name>/manifests/<reference>`.

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;

use super::blobs::hv;
use super::{Ctx, DOCKER_CONTENT_DIGEST, OCI_SUBJECT, OCI_TAG, empty};
use crate::error::{Code, Error, Result};
use crate::oci::manifest::{self, MAX_MANIFEST_BYTES};
use crate::oci::{Algorithm, Name, Reference, Tag};
use crate::quota::Quotas;
use crate::storage::references::ReferenceError;
use crate::storage::{StorageError, Store, StoredManifest};

pub async fn get(store: &Store, name: &Name, reference: &str, ctx: &Ctx) -> Result<Response> {
    let reference: Reference = reference.parse()?;
    let m = store.manifest_get(name, &reference).await?.ok_or_else(|| {
        Error::new(
            Code::ManifestUnknown,
            format!("manifest {reference} is not in repository {name}"),
        )
    })?;
    if !acceptable(ctx, &m.media_type) {
        return Err(Error::new(
            Code::ManifestUnknown,
            format!(
                "manifest {reference} is a {}, which the request's Accept header excludes",
                m.media_type
            ),
        ));
    }
    let len = m.body.len();
    let mut resp = if ctx.method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(m.body))
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, hv(&m.media_type));
    h.insert(header::CONTENT_LENGTH, hv(&len.to_string()));
    h.insert(DOCKER_CONTENT_DIGEST, hv(&m.digest.to_string()));
    h.insert(header::ETAG, hv(&format!("\"{}\"", m.digest)));
    Ok(resp)
}

/// Content negotiation: a manifest is served unless the client listed
/// manifest media types in Accept and this one is not among them (and no
/// wildcard was given). Accept headers naming no manifest type are ignored,
/// as clients send them loosely.
fn acceptable(ctx: &Ctx, media_type: &str) -> bool {
    let offered: Vec<&str> = ctx
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .collect();
    let names_manifests = offered.iter().any(|t| manifest::MEDIA_TYPES.contains(t));
    let wildcard = offered.iter().any(|t| *t == "*/*" || *t == "application/*");
    !names_manifests || wildcard || offered.contains(&media_type)
}

pub async fn put(
    store: &Store,
    quota: Option<&Quotas>,
    name: &Name,
    reference: &str,
    ctx: &Ctx,
    body: Body,
) -> Result<Response> {
    let reference: Reference = reference.parse()?;
    let too_large = || {
        Error::new(
            Code::SizeInvalid,
            format!(
                "manifest is larger than the {} MiB limit",
                MAX_MANIFEST_BYTES >> 20
            ),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    if ctx
        .content_length()
        .is_some_and(|l| l > MAX_MANIFEST_BYTES as u64)
    {
        return Err(too_large());
    }
    let content_type = ctx.header(header::CONTENT_TYPE).map(str::to_owned);
    let mut tags: Vec<Tag> = ctx
        .query
        .all("tag")
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let tag_params = !tags.is_empty();

    let mut stream = ctx.body_stream(body);
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Error::new(
                Code::ManifestInvalid,
                format!("reading the manifest failed: {e}"),
            )
        })?;
        if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }

    let parsed = manifest::parse(&body, content_type.as_deref())?;
    let digest = match &reference {
        Reference::Digest(expected) => {
            let actual = expected.algorithm().digest(&body);
            if &actual != expected {
                return Err(Error::new(
                    Code::DigestInvalid,
                    format!("manifest digest is {actual}, not {expected} as the URL says"),
                ));
            }
            actual
        }
        Reference::Tag(tag) => {
            tags.insert(0, tag.clone());
            Algorithm::Sha256.digest(&body)
        }
    };
    // Everything it references is in this repository and in place (not
    // in GC's quarantine), checked concurrently (storage/references.rs).
    let checked = store
        .check_references(name, &parsed)
        .await
        .map_err(|e| match e {
            ReferenceError::BlobUnknown { .. } | ReferenceError::ManifestUnknown { .. } => {
                Error::new(Code::ManifestBlobUnknown, e.to_string())
            }
            ReferenceError::SizeMismatch { .. } => Error::new(Code::ManifestInvalid, e.to_string()),
            ReferenceError::Storage(e) => reference_gone_or(e),
        })?;
    // With quotas: the manifest, and what it references that its
    // namespace does not hold yet (pushed through another replica), must
    // fit; counted from here on.
    let reservation = match quota {
        Some(q) => {
            let mut objects = vec![(digest.clone(), body.len() as u64)];
            objects.extend(crate::usage::stored_blobs(&parsed));
            objects.extend(parsed.manifests.iter().map(|d| (d.digest.clone(), d.size)));
            Some(q.admit(name, &objects).await?)
        }
        None => None,
    };
    let stored = StoredManifest {
        digest: digest.clone(),
        media_type: parsed.media_type.clone(),
        body: body.into(),
    };
    store
        .manifest_put(name, &stored, &parsed, &tags, checked)
        .await
        .map_err(reference_gone_or)?;
    if let Some(r) = reservation {
        r.keep();
    }

    let mut headers = vec![
        (header::LOCATION, format!("/v2/{name}/manifests/{digest}")),
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
    ];
    if let Some(subject) = &parsed.subject {
        headers.push((OCI_SUBJECT, subject.digest.to_string()));
    }
    let mut resp = empty(StatusCode::CREATED, &headers);
    if tag_params {
        for tag in &tags {
            resp.headers_mut().append(OCI_TAG, hv(tag.as_str()));
        }
    }
    Ok(resp)
}

/// A storage error of a manifest PUT: what it references was deleted by
/// GC meanwhile (the client's to fix), or a storage failure.
fn reference_gone_or(e: StorageError) -> Error {
    if e.is_reference_gone() {
        tracing::info!(error = %e, "manifest refused: what it references was garbage-collected meanwhile");
        Error::new(
            Code::ManifestBlobUnknown,
            "a blob or manifest it references was garbage-collected while this push was checked; push it again, then the manifest",
        )
    } else {
        e.into()
    }
}

pub async fn delete(store: &Store, name: &Name, reference: &str) -> Result<Response> {
    let reference: Reference = reference.parse()?;
    let existed = match &reference {
        Reference::Digest(d) => store.manifest_delete(name, d).await?,
        Reference::Tag(t) => store.tag_delete(name, t).await?,
    };
    if !existed {
        return Err(Error::new(
            Code::ManifestUnknown,
            format!("manifest {reference} is not in repository {name}"),
        ));
    }
    Ok(empty(StatusCode::ACCEPTED, &[]))
}
