//! `GET /v2/<name>/referrers/<digest>[?artifactType=]`: the manifests whose
//! `subject` is the digest, as an OCI image index.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Ctx, OCI_FILTERS_APPLIED};
use crate::error::Result;
use crate::oci::manifest::OCI_INDEX;
use crate::oci::{Digest, Name};
use crate::storage::Store;

pub async fn get(store: &Store, name: &Name, subject: &str, ctx: &Ctx) -> Result<Response> {
    let subject: Digest = subject.parse()?;
    let mut manifests = store.referrers(name, &subject).await?;
    let filter = ctx.query.get("artifactType");
    if let Some(t) = filter {
        manifests.retain(|d| d.artifact_type.as_deref() == Some(t));
    }
    let body =
        serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests })
            .to_string();
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, OCI_INDEX)], body).into_response();
    if filter.is_some() {
        resp.headers_mut().insert(
            OCI_FILTERS_APPLIED,
            header::HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
