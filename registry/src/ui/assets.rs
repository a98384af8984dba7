//! The stylesheet and script, compiled into the binary: no build step, no
//! other origin. Their paths carry a version so browsers may cache them.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");

pub const CSS_PATH: &str = concat!("/ui/assets/app-", env!("CARGO_PKG_VERSION"), ".css");
pub const JS_PATH: &str = concat!("/ui/assets/app-", env!("CARGO_PKG_VERSION"), ".js");

/// `GET /ui/assets/{file}`.
pub async fn get(Path(file): Path<String>) -> Response {
    let (body, kind) = if Some(file.as_str()) == CSS_PATH.strip_prefix("/ui/assets/") {
        (CSS, "text/css; charset=utf-8")
    } else if Some(file.as_str()) == JS_PATH.strip_prefix("/ui/assets/") {
        (JS, "text/javascript; charset=utf-8")
    } else {
        return super::not_found("No such asset.").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
        ],
        body,
    )
        .into_response()
}
