//! berth's registry: the OCI Distribution Spec v1.1 over HTTP(S).
//!
//! [`router`] builds the whole HTTP application from a [`Store`], so tests
//! drive it in process; [`server`] puts it on a socket, with or without TLS.

pub mod api;
pub mod auth;
pub mod error;
pub mod metrics;
pub mod oci;
pub mod page_cache;
pub mod server;
pub mod storage;
pub mod tls;
pub mod zero_copy;

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

pub use storage::Store;

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    /// None: no auth, anyone may do anything.
    pub auth: Option<Arc<auth::Auth>>,
}

/// The application: `/v2/...` (the distribution API), `/healthz`, `/metrics`.
pub fn router(store: Arc<Store>) -> Router {
    router_with_auth(store, None)
}

/// The application with `auth` deciding every `/v2/...` request, and its
/// token endpoint at `/token`.
pub fn router_with_auth(store: Arc<Store>, auth: Option<Arc<auth::Auth>>) -> Router {
    let token_endpoint = auth.is_some();
    let state = AppState { store, auth };
    let router = Router::new();
    let router = if token_endpoint {
        router.route("/token", get(auth::token::get).post(auth::token::post))
    } else {
        router
    };
    router
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics::render(),
                )
                    .into_response()
            }),
        )
        .fallback(api::handle)
        .with_state(state)
}

/// A store on the local filesystem under `root`.
pub fn filesystem_store(root: &std::path::Path) -> std::io::Result<Arc<Store>> {
    Ok(Arc::new(Store::new(Arc::new(storage::fs::FsDriver::new(
        root,
    )?))))
}
