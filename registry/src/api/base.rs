//! `GET /v2/`: the version check clients make before anything else.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

pub fn get() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response()
}
