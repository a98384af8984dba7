//! `/ui/r/<name>/-/raw/<digest>`: a manifest's JSON, or a config blob's,
//! as stored (served as JSON with `nosniff`, so a browser shows it and
//! runs nothing in it).

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::allowed_visitor;
use crate::oci::{Digest, Name, Reference};
use crate::storage::{StorageError, layout};
use crate::ui::{PageError, Ui, Visitor, not_found};

/// Blobs larger than this are not shown (configs are a few KiB).
const MAX: u64 = 4 * 1024 * 1024;

pub async fn get(ui: &Ui, name: &Name, digest: &str, req: Request) -> Result<Response, PageError> {
    let visitor = Visitor::from_request(ui, &req);
    allowed_visitor(ui, visitor, name).await?;
    let gone = || not_found(&format!("{name} holds no JSON document {digest}."));
    let d: Digest = digest.parse().map_err(|_| gone())?;
    let json = |body: bytes::Bytes| {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            )],
            body,
        )
            .into_response()
    };
    if let Some(image) = ui
        .inventory
        .image(name, &Reference::Digest(d.clone()))
        .await?
    {
        return Ok(json(image.body.clone()));
    }
    let store = ui.inventory.store();
    match store.blob_size(name, &d).await? {
        Some(size) if size <= MAX => {}
        _ => return Err(gone()),
    }
    let key = layout::blob(&d);
    let Some(body) = store
        .driver()
        .get(&key)
        .await
        .map_err(|e| StorageError::new("read", &key, e))?
    else {
        return Err(gone());
    };
    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        return Err(not_found(&format!(
            "{digest} in {name} is not JSON (a layer?); pull it with `crane blob` or `oras blob fetch`."
        )));
    }
    Ok(json(body))
}
