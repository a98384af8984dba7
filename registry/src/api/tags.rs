//! `GET /v2/<name>/tags/list` with `n`/`last` pagination.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Ctx, paginate};
use crate::error::{Code, Error, Result};
use crate::oci::Name;
use crate::storage::Store;

pub async fn get(store: &Store, name: &Name, ctx: &Ctx) -> Result<Response> {
    let tags = store.tags(name).await?.ok_or_else(|| {
        Error::new(
            Code::NameUnknown,
            format!("repository {name} is not known to this registry"),
        )
    })?;
    let (page, link) = paginate(tags, &ctx.query, &format!("/v2/{name}/tags/list"))?;
    let body = serde_json::json!({ "name": name.as_str(), "tags": page }).to_string();
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let Some(link) = link {
        resp.headers_mut()
            .insert(header::LINK, super::blobs::hv(&link));
    }
    Ok(resp)
}
