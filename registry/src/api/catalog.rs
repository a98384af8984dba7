//! `GET /v2/_catalog` with `n`/`last` pagination.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Ctx, paginate};
use crate::error::Result;
use std::sync::Arc;

use crate::storage::Store;

pub async fn get(store: &Arc<Store>, ctx: &Ctx) -> Result<Response> {
    let mut repos = store.repositories().await?;
    if let Some(caller) = &ctx.caller {
        repos = caller.visible(repos).await;
    }
    let (page, link) = paginate(repos, &ctx.query, "/v2/_catalog")?;
    let body = serde_json::json!({ "repositories": page }).to_string();
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
