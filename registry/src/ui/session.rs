//! Login, the session cookie and CSRF tokens.
//!
//! A session is an opaque random id (two v4 UUIDs: 244 random bits from
//! the OS) naming an entry in memory: the identity, its CSRF token and its
//! expiry. The cookie is `HttpOnly`, `SameSite=Strict`, `Path=/ui` and
//! `Secure` on TLS connections. Logging in checks the credentials with the
//! API's own code ([`crate::auth::Auth::login`]: htpasswd users, Kubernetes
//! or robot tokens as the password, throttled per address) and starts a new
//! session, so an id known before login is worth nothing after.
//!
//! Every POST form carries the session's CSRF token, compared in constant
//! time. Visitors without a login get an anonymous session when a page has
//! a form (the login form itself, or delete with auth off).
//!
//! Sessions live in this process: a restart logs everyone out, and with
//! several replicas a browser must stick to one (the Service's
//! `sessionAffinity`) or log in again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::{PageError, Ui, Visitor, form, layout, param, query};
use crate::auth::{Identity, Refusal};

pub const COOKIE: &str = "berth_session";
/// How long a login lasts.
const LOGIN_TTL: Duration = Duration::from_secs(8 * 3600);
/// How long an anonymous session (a CSRF token) lasts.
const ANONYMOUS_TTL: Duration = Duration::from_secs(3600);
/// Sessions kept at most; past it, expired ones go, then the oldest.
const CAPACITY: usize = 10_000;

#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    pub identity: Identity,
    pub csrf: String,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// The live session `id` names.
    pub fn get(&self, id: &str) -> Option<Session> {
        let map = self.map.lock().ok()?;
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    /// Starts a session for `identity`.
    pub fn start(&self, identity: Identity) -> Session {
        let ttl = match identity {
            Identity::Anonymous => ANONYMOUS_TTL,
            _ => LOGIN_TTL,
        };
        let session = Session {
            id: random(),
            identity,
            csrf: random(),
            expires: Instant::now() + ttl,
        };
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= CAPACITY {
                let now = Instant::now();
                map.retain(|_, s| s.expires > now);
            }
            if map.len() >= CAPACITY
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
            map.insert(session.id.clone(), session.clone());
        }
        session
    }

    pub fn end(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }
}

/// 244 random bits, hex (v4 UUIDs come from the OS's generator).
fn random() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The session id the request's cookie names.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value for a session (or, with None, one that ends it).
pub fn set_cookie(session: Option<&Session>, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    let value = match session {
        Some(s) => {
            let age = match s.identity {
                Identity::Anonymous => ANONYMOUS_TTL,
                _ => LOGIN_TTL,
            };
            format!(
                "{COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                s.id,
                age.as_secs()
            )
        }
        None => format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(""))
}

/// The visitor's session, started (anonymous) if it has none: a page with
/// a form needs its CSRF token. Returns the cookie to set, if new.
pub fn ensure(ui: &Ui, visitor: &mut Visitor) -> Option<HeaderValue> {
    if visitor.session.is_some() {
        return None;
    }
    let s = ui.sessions.start(Identity::Anonymous);
    let cookie = set_cookie(Some(&s), visitor.tls);
    visitor.session = Some(s);
    Some(cookie)
}

/// Checks a form's CSRF token against the visitor's session.
pub fn check_csrf(visitor: &Visitor, form: &[(String, String)]) -> Result<(), PageError> {
    let sent = param(form, "csrf").unwrap_or("");
    let ok = visitor
        .session
        .as_ref()
        .is_some_and(|s| constant_time_eq(s.csrf.as_bytes(), sent.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(PageError {
            status: StatusCode::FORBIDDEN,
            message: "The form's security token is missing or stale (the session may have expired). Go back, reload the page and submit it again.".to_owned(),
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where to go after logging in: a UI path only (no open redirect).
fn next_path(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.contains("//") && !n.contains('\\') => n.to_owned(),
        _ => "/ui/".to_owned(),
    }
}

/// `GET /ui/login`.
pub async fn login_page(State(ui): State<Ui>, req: Request) -> Response {
    let params = query(&req);
    let mut visitor = Visitor::from_request(&ui, &req);
    let cookie = ensure(&ui, &mut visitor);
    let next = next_path(param(&params, "next"));
    let mut resp = render_login(&ui, &visitor, &next, None, StatusCode::OK);
    if let Some(c) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

fn render_login(
    ui: &Ui,
    visitor: &Visitor,
    next: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let mode = ui.app.auth.as_ref().map(|a| a.mode());
    let body = html! {
        h1 { "Log in" }
        @if mode.is_none() {
            p { "This registry has no authentication: everyone may browse and delete without logging in." }
        }
        @if let Some(e) = error {
            p.error role="alert" { (e) }
        }
        form.login method="post" action="/ui/login" {
            input type="hidden" name="csrf" value=(visitor.csrf());
            input type="hidden" name="next" value=(next);
            label for="user" { "User name" }
            input #user type="text" name="user" autocomplete="username" autocapitalize="none" spellcheck="false";
            label for="password" {
                @if mode == Some("kubernetes") { "Kubernetes token (or password)" } @else { "Password" }
            }
            input #password type="password" name="password" autocomplete="current-password" required;
            @if mode == Some("kubernetes") {
                p.hint { "Paste a token from " code { "kubectl create token <service-account>" } "; the user name is not needed." }
            } @else {
                p.hint { "The same user name and password as " code { "docker login" } "." }
            }
            button type="submit" { "Log in" }
        }
    };
    (
        status,
        layout::page("Log in", visitor.user().as_deref(), visitor.csrf(), body),
    )
        .into_response()
}

/// `POST /ui/login`.
pub async fn login(State(ui): State<Ui>, req: Request) -> Response {
    let visitor = Visitor::from_request(&ui, &req);
    let form = match form(req).await {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check_csrf(&visitor, &form) {
        return e.into_response();
    }
    let next = next_path(param(&form, "next"));
    let Some(auth) = ui.app.auth.clone() else {
        return Redirect::to(&next).into_response();
    };
    let user = param(&form, "user").unwrap_or("").trim().to_owned();
    let password = param(&form, "password").unwrap_or("");
    match auth.login(&user, password, visitor.client).await {
        Ok(identity) => {
            if let Some(old) = &visitor.session {
                ui.sessions.end(&old.id);
            }
            let session = ui.sessions.start(identity);
            tracing::info!(user = %session.identity.audit_name(), "ui: logged in");
            let mut resp = Redirect::to(&next).into_response();
            resp.headers_mut()
                .append(header::SET_COOKIE, set_cookie(Some(&session), visitor.tls));
            resp
        }
        Err(r) => {
            let (status, message) = match &r {
                Refusal::BadCredentials(_) => (
                    StatusCode::UNAUTHORIZED,
                    "Wrong user name or password (or the token is not valid). Check them and try again.".to_owned(),
                ),
                Refusal::RateLimited(retry) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "Too many failed logins from this address; wait {} s and try again.",
                        retry.as_secs().max(1)
                    ),
                ),
                Refusal::Unavailable(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The registry cannot check credentials right now (the Kubernetes apiserver does not answer); retry shortly.".to_owned(),
                ),
            };
            if let Some(audit) = &ui.app.audit {
                let subject = if user.is_empty() { "anonymous" } else { &user };
                audit.record(crate::audit::Event::now(
                    "login",
                    subject,
                    visitor.client,
                    status.as_u16(),
                ));
            }
            render_login(&ui, &visitor, &next, Some(&message), status)
        }
    }
}

/// `POST /ui/logout`.
pub async fn logout(State(ui): State<Ui>, req: Request) -> Response {
    let visitor = Visitor::from_request(&ui, &req);
    let form = match form(req).await {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check_csrf(&visitor, &form) {
        return e.into_response();
    }
    if let Some(s) = &visitor.session {
        ui.sessions.end(&s.id);
    }
    let mut resp = Redirect::to("/ui/").into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(None, visitor.tls));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_login_only_ui_paths_are_followed() {
        assert_eq!(next_path(Some("/ui/r/team/app")), "/ui/r/team/app");
        assert_eq!(next_path(Some("https://evil.example/")), "/ui/");
        assert_eq!(next_path(Some("/ui//evil.example")), "/ui/");
        assert_eq!(next_path(Some("/v2/")), "/ui/");
        assert_eq!(next_path(None), "/ui/");
    }

    #[test]
    fn the_cookie_is_read_only_when_well_formed() {
        let mut h = HeaderMap::new();
        let id = "a".repeat(64);
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; {COOKIE}={id}"))
                .unwrap_or(HeaderValue::from_static("")),
        );
        assert_eq!(cookie(&h), Some(id));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("berth_session=short"),
        );
        assert_eq!(cookie(&h), None);
    }

    #[test]
    fn sessions_expire_and_end() {
        let s = Sessions::default();
        let a = s.start(Identity::Anonymous);
        assert!(s.get(&a.id).is_some());
        assert_ne!(a.id, a.csrf);
        s.end(&a.id);
        assert!(s.get(&a.id).is_none());
    }
}
