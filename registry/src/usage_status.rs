//! `GET /berth/v1/usage`: storage by namespace with each namespace's quota
//! (if any), as JSON ([`berth_access::quota::UsageReport`]). The operator
//! reads it into the Registry's `status.usage`.
//!
//! Who may read it: as `/berth/v1/gc`, any caller who logged in when auth
//! is on (namespace names and byte counts, which `/metrics` shows too; no
//! repository or tag names), anyone when it is off.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::{Code, Error};
use crate::server::Connection;

pub async fn get(State(state): State<AppState>, req: Request) -> Response {
    match answer(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn answer(state: &AppState, req: Request) -> Result<Response, Error> {
    let conn = req.extensions().get::<Connection>().copied();
    crate::gc_status::require_login(state, req.headers(), conn, "storage usage").await?;
    if !state.usage.ensure().await {
        return Err(Error::new(
            Code::Unknown,
            "storage usage cannot be computed right now (storage cannot be listed); retry, and see the registry's log",
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE));
    }
    let report = match &state.quota {
        Some(q) => q.report(),
        None => crate::quota::report(&state.usage, &Default::default()),
    };
    let body = serde_json::to_string(&report).unwrap_or_else(|_| "{}".to_owned());
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}
