//! `GET /berth/v1/gc`: the record of the newest garbage collection run
//! (any replica's), as JSON ([`berth_access::gc::GcRun`]); 404 before the
//! first run. The operator reads it into the Registry's `status.gc`.
//!
//! Who may read it: with auth on, any caller who logged in (a user, a
//! service account, a robot token such as the operator's); the record is
//! counts and a time, no repository or tag names. With auth off, anyone:
//! anyone may delete there anyway.

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

/// With auth on, refuses a caller who did not log in (`what` names what
/// they asked for).
pub(crate) async fn require_login(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    conn: Option<Connection>,
    what: &str,
) -> Result<(), Error> {
    if let Some(auth) = &state.auth {
        let caller = auth.identify(headers, conn.as_ref()).await?;
        if matches!(caller.identity, crate::auth::Identity::Anonymous) {
            return Err(Error::new(
                Code::Unauthorized,
                format!("{what} needs credentials: log in as any user of this registry"),
            )
            .with_header(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"berth\""),
            ));
        }
    }
    Ok(())
}

async fn answer(state: &AppState, req: Request) -> Result<Response, Error> {
    let conn = req.extensions().get::<Connection>().copied();
    require_login(state, req.headers(), conn, "the GC record").await?;
    let run = state.store.last_gc_run().await.map_err(|e| {
        tracing::warn!(error = %e, "cannot read the GC record");
        Error::new(
            Code::Unknown,
            "the GC record cannot be read from storage right now; retry, and see the registry's log",
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
    })?;
    let Some(run) = run else {
        return Err(Error::new(
            Code::Unsupported,
            "no garbage collection run is recorded yet: GC runs every --gc-interval (spec.gc.interval)",
        )
        .with_status(StatusCode::NOT_FOUND));
    };
    let body = serde_json::to_string(&run).unwrap_or_else(|_| "{}".to_owned());
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
