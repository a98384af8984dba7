//! berth's registry: the OCI Distribution Spec v1.1 over HTTP(S).
//!
//! [`router`] builds the whole HTTP application from a [`Store`], so tests
//! drive it in process; [`server`] puts it on a socket, with or without TLS.

pub mod api;
pub mod audit;
pub mod auth;
pub mod error;
pub mod gc_status;
pub mod limits;
pub mod metrics;
pub mod mirror;
pub mod notify;
pub mod oci;
pub mod page_cache;
pub mod quota;
pub mod raw_errors;
pub mod search;
pub mod server;
pub mod storage;
pub mod tls;
pub mod ui;
pub mod usage;
pub mod usage_status;
pub mod zero_copy;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

pub use storage::Store;

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    /// A request body that sends nothing for this long is cut off.
    pub body_timeout: std::time::Duration,
    /// None: no auth, anyone may do anything.
    pub auth: Option<Arc<auth::Auth>>,
    /// None: no audit trail (`--audit off`).
    pub audit: Option<Arc<audit::Audit>>,
    /// None: no repository is a pull-through cache.
    pub mirror: Option<Arc<mirror::Mirror>>,
    /// None: no webhooks (no `--notify-config`).
    pub notify: Option<Arc<notify::Notifier>>,
    /// Storage by namespace (the UI, `/berth/v1/usage`, quotas).
    pub usage: Arc<usage::Usage>,
    /// None: no namespace has a quota (no `--quota-config`).
    pub quota: Option<Arc<quota::Quotas>>,
}

/// The application: `/v2/...` (the distribution API), `/healthz`
/// (liveness), `/readyz` (readiness: storage takes writes), `/metrics`,
/// `/berth/v1/gc` and `/berth/v1/usage` (for the operator).
pub fn router(store: Arc<Store>) -> Router {
    router_full(store, None, &limits::Limits::default())
}

/// [`router`] with the request limits that apply inside a request (the
/// body-progress timeout); the server applies the rest.
pub fn router_with(store: Arc<Store>, limits: &limits::Limits) -> Router {
    router_full(store, None, limits)
}

/// The application with `auth` deciding every `/v2/...` request, and its
/// token endpoint at `/token`.
pub fn router_with_auth(store: Arc<Store>, auth: Option<Arc<auth::Auth>>) -> Router {
    router_full(store, auth, &limits::Limits::default())
}

/// The application with auth (if any) and the in-request limits.
pub fn router_full(
    store: Arc<Store>,
    auth: Option<Arc<auth::Auth>>,
    limits: &limits::Limits,
) -> Router {
    router_audited(store, auth, limits, None)
}

/// The application with auth (if any), the in-request limits and an audit
/// trail (if any), whose query API is `/berth/v1/audit`. `docker search`
/// is answered at `/v1/_ping` and `/v1/search`; the web UI at `/ui/`.
pub fn router_audited(
    store: Arc<Store>,
    auth: Option<Arc<auth::Auth>>,
    limits: &limits::Limits,
    audit: Option<Arc<audit::Audit>>,
) -> Router {
    router_features(
        store,
        auth,
        limits,
        Features {
            audit,
            ..Features::default()
        },
    )
}

/// What the application serves besides the distribution API, each chosen
/// by a flag of `serve`.
pub struct Features {
    /// The audit trail (`--audit`), queried at `/berth/v1/audit`.
    pub audit: Option<Arc<audit::Audit>>,
    /// The web UI at `/ui/` (`--ui`).
    pub ui: bool,
    /// A pull-through cache (`--mirror-config`): repositories under its
    /// prefixes are fetched from their upstreams; auth, if on, is told the
    /// prefixes (see [`auth::Auth::set_mirror_prefixes`]).
    pub mirror: Option<Arc<mirror::Mirror>>,
    /// Webhooks (`--notify-config`) told of manifest pushes, pulls and
    /// deletes.
    pub notify: Option<Arc<notify::Notifier>>,
    /// The key signing UI session cookies (`--ui-session-key`); None: a
    /// random key for this process.
    pub ui_session_key: Option<ui::session::Key>,
    /// The host pods use in `image:` (`--node-endpoint`), shown by the UI.
    pub node_endpoint: Option<String>,
    /// Storage quotas per namespace (`--quota-config`), checked on every
    /// push; their usage is also the UI's and `/berth/v1/usage`'s.
    pub quota: Option<Arc<quota::Quotas>>,
}

impl Default for Features {
    /// The UI on (as `serve` has it), nothing else.
    fn default() -> Self {
        Features {
            audit: None,
            ui: true,
            mirror: None,
            notify: None,
            ui_session_key: None,
            node_endpoint: None,
            quota: None,
        }
    }
}

/// The application with auth (if any), the in-request limits and the
/// chosen [`Features`].
pub fn router_features(
    store: Arc<Store>,
    auth: Option<Arc<auth::Auth>>,
    limits: &limits::Limits,
    features: Features,
) -> Router {
    let Features {
        audit,
        ui,
        mirror,
        notify,
        ui_session_key,
        node_endpoint,
        quota,
    } = features;
    let token_endpoint = auth.is_some();
    if let (Some(auth), Some(mirror)) = (&auth, &mirror) {
        auth.set_mirror_prefixes(mirror.prefixes());
    }
    let usage = match &quota {
        Some(q) => q.usage().clone(),
        None => usage::Usage::new(store.clone()),
    };
    let state = AppState {
        store,
        auth,
        body_timeout: limits.body_timeout,
        audit,
        mirror,
        notify,
        usage,
        quota,
    };
    let web = ui.then(|| {
        ui::router(
            state.clone(),
            ui::Options {
                session_key: ui_session_key,
                node_endpoint,
            },
        )
    });
    let router: Router<AppState> = Router::new();
    let router = if token_endpoint {
        router.route("/token", get(auth::token::get).post(auth::token::post))
    } else {
        router
    };
    let router: Router = router
        .route("/v1/_ping", get(search::ping))
        .route("/v1/search", get(search::search))
        .route("/berth/v1/audit", get(audit::http::get))
        .route("/berth/v1/gc", get(gc_status::get))
        .route("/berth/v1/usage", get(usage_status::get))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(state): State<AppState>| async move {
                if state.store.storage_writable() {
                    (StatusCode::OK, "ready").into_response()
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        error::STORAGE_FULL_OR_UNWRITABLE,
                    )
                        .into_response()
                }
            }),
        )
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
        .with_state(state);
    match web {
        Some(web) => web.merge(router),
        None => router,
    }
}

/// A store on the local filesystem under `root`.
pub fn filesystem_store(root: &std::path::Path) -> std::io::Result<Arc<Store>> {
    Ok(Arc::new(Store::new(Arc::new(storage::fs::FsDriver::new(
        root,
    )?))))
}

/// A store in memory (object_store's in-memory backend through the object
/// storage driver): for tests.
pub fn memory_store() -> Arc<Store> {
    Arc::new(Store::new(Arc::new(
        storage::s3::ObjectStoreDriver::in_memory(),
    )))
}
