//! The web UI under `/ui/`, served by the registry itself (same origin,
//! TLS and auth as the API): server-rendered HTML (maud templates, checked
//! at compile time) and one small script for search-as-you-type and the
//! copy buttons.
//!
//! - [`session`]: login with the API's credentials, the session cookie and
//!   the CSRF token of every form;
//! - [`inventory`]: what the pages show, read from the store with
//!   per-process caches (manifests by digest never change);
//! - [`layout`]: the page shell and formatting helpers;
//! - [`assets`]: the stylesheet and script, embedded in the binary;
//! - [`pages`]: one module per page.
//!
//! Rights are the API's: a repository is shown only to who may pull it,
//! deletion offered only to who may delete (decided by
//! [`crate::auth::Auth::allowed`], as for `/v2/` requests).

pub mod assets;
pub mod inventory;
pub mod layout;
pub mod pages;
pub mod session;

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use berth_access::{Action, Actions};

use crate::AppState;
use crate::auth::Identity;
use crate::server::Connection;

/// The UI's state: the application's, its sessions and caches.
#[derive(Clone)]
pub struct Ui {
    pub app: AppState,
    pub sessions: Arc<session::Sessions>,
    pub inventory: Arc<inventory::Inventory>,
    /// The host pods on this cluster use in `image:` (`--node-endpoint`).
    pub node_endpoint: Option<Arc<str>>,
}

/// How the UI is set up, beyond the application's state.
#[derive(Clone, Default)]
pub struct Options {
    /// Signs session cookies; None: a random key for this process.
    pub session_key: Option<session::Key>,
    /// The host pods on this cluster use in `image:`, shown in pull
    /// commands beside the browser's host.
    pub node_endpoint: Option<String>,
}

/// The routes under `/ui/` (and `/` sending browsers there).
pub fn router(app: AppState, options: Options) -> Router {
    let ui = Ui {
        inventory: Arc::new(inventory::Inventory::new(app.store.clone())),
        sessions: Arc::new(session::Sessions::new(options.session_key)),
        node_endpoint: options.node_endpoint.map(Arc::from),
        app,
    };
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::repositories::get))
        .route("/ui/login", get(session::login_page).post(session::login))
        .route("/ui/logout", axum::routing::post(session::logout))
        .route("/ui/audit", get(pages::audit::get))
        .route("/ui/assets/{file}", get(assets::get))
        .route(
            "/ui/r/{*path}",
            get(pages::dispatch_get).post(pages::dispatch_post),
        )
        .route(
            "/ui/{*rest}",
            get(|| async { not_found("There is no page here.") }),
        )
        .layer(axum::middleware::from_fn_with_state(
            ui.clone(),
            session::renew,
        ))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(ui)
}

/// Content-Security-Policy of every UI response: nothing from another
/// origin, no inline script or style, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

async fn secure_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// Who is looking, from the request's session cookie.
#[derive(Clone)]
pub struct Visitor {
    pub identity: Identity,
    /// The session, when there is one (its CSRF token guards forms).
    pub session: Option<session::Session>,
    pub client: Option<IpAddr>,
    pub tls: bool,
    /// The registry's address as the browser named it: pull commands use it.
    pub host: String,
}

impl Visitor {
    /// The visitor of a request.
    pub fn from_request(ui: &Ui, req: &Request) -> Visitor {
        Visitor::of(
            ui,
            req.headers(),
            req.uri().authority().map(|a| a.as_str()),
            connection(req).as_ref(),
        )
    }

    /// `authority`: the request target's (HTTP/2 sends no `Host`).
    pub fn of(
        ui: &Ui,
        headers: &HeaderMap,
        authority: Option<&str>,
        conn: Option<&Connection>,
    ) -> Visitor {
        let session = session::cookie(headers).and_then(|c| ui.sessions.get(&c));
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or(authority)
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .unwrap_or("registry.example")
            .to_owned();
        Visitor {
            identity: session
                .as_ref()
                .map(|s| s.identity.clone())
                .unwrap_or(Identity::Anonymous),
            session,
            client: conn.map(|c| c.peer.ip()),
            tls: conn.is_some_and(|c| c.tls),
            host,
        }
    }

    /// The name shown in the header, or None for an anonymous visitor.
    pub fn user(&self) -> Option<String> {
        match self.identity {
            Identity::Anonymous => None,
            _ => Some(self.identity.audit_name()),
        }
    }

    pub fn csrf(&self) -> &str {
        self.session.as_ref().map_or("", |s| s.csrf.as_str())
    }
}

/// A page that could not be shown, rendered as a page with the reason.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = layout::page(
            "Error",
            None,
            "",
            maud::html! {
                h1 { (self.status.canonical_reason().unwrap_or("Error")) }
                p role="alert" { (self.message) }
                p { a href="/ui/" { "Back to the repositories" } }
            },
        );
        (self.status, page).into_response()
    }
}

pub fn not_found(message: &str) -> PageError {
    PageError {
        status: StatusCode::NOT_FOUND,
        message: message.to_owned(),
    }
}

pub fn unavailable(what: &str) -> PageError {
    PageError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: format!(
            "{what} cannot be read right now; retry shortly, and see the registry's log if it persists."
        ),
    }
}

impl From<crate::storage::StorageError> for PageError {
    fn from(e: crate::storage::StorageError) -> Self {
        tracing::warn!(error = %e, "ui: storage read failed");
        unavailable("Storage")
    }
}

impl From<crate::auth::Unavailable> for PageError {
    fn from(e: crate::auth::Unavailable) -> Self {
        tracing::warn!(error = %e, "ui: cannot decide rights");
        PageError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "The registry cannot check permissions right now (the Kubernetes apiserver does not answer); retry shortly.".to_owned(),
        }
    }
}

/// What `identity` may do on `repository`, of pull and delete; everything
/// with auth off (as the API).
pub async fn rights(
    state: &AppState,
    identity: &Identity,
    repository: &str,
) -> Result<Actions, crate::auth::Unavailable> {
    let wanted = Actions::of(&[Action::Pull, Action::Delete]);
    match &state.auth {
        None => Ok(wanted),
        Some(auth) => auth.allowed(identity, repository, wanted).await,
    }
}

/// The repositories `identity` may pull, sorted.
pub async fn visible_repositories(
    state: &AppState,
    identity: &Identity,
) -> Result<Vec<String>, PageError> {
    let repos = state.store.repositories().await?;
    Ok(match &state.auth {
        None => repos,
        Some(auth) => auth.caller(identity.clone()).visible(repos).await,
    })
}

/// The connection a request came on, if the server said.
pub fn connection(req: &Request) -> Option<Connection> {
    req.extensions().get::<Connection>().copied()
}

/// The request's query parameters, decoded.
pub fn query(req: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The first value of `key`, if not empty.
pub fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The body of a form POST, decoded (forms here are small).
pub async fn form(req: Request) -> Result<Vec<(String, String)>, PageError> {
    let body = axum::body::to_bytes(req.into_body(), 64 * 1024)
        .await
        .map_err(|_| PageError {
            status: StatusCode::BAD_REQUEST,
            message: "The form could not be read (too large or cut off); submit it again."
                .to_owned(),
        })?;
    Ok(form_urlencoded::parse(&body).into_owned().collect())
}

/// `State` for handlers that take the whole request.
pub type UiState = State<Ui>;
