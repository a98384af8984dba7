//! Login, the session cookie and CSRF tokens.
//!
//! A session is a signed cookie, not server state: the subject and the
//! basis the login's rights are decided on (an htpasswd or Kubernetes
//! user's name, uid and groups; a robot token's claims), a random session
//! id and CSRF token, and when it was issued and expires, as JSON signed
//! with HMAC-SHA256 (`v1.<payload>.<mac>`, base64url). Any replica that
//! holds the same key (`--ui-session-key`, a Secret the operator makes once)
//! accepts it, and it survives restarts; without a key file each process
//! makes a random one (a restart logs everyone out).
//!
//! A login cookie expires after [`LOGIN_IDLE`] and is renewed (same
//! session id) on a page view once half of that has passed, up to
//! [`LOGIN_MAX`] after the login; then one logs in again. Logging out
//! clears the cookie and puts its session id on this process's revocation
//! list until it could no longer be renewed; another replica (or this one
//! after a restart) still honours a copy of the cookie until it expires,
//! at most [`LOGIN_IDLE`] later, unless renewed elsewhere: the price of
//! sessions without shared state, kept small by the short idle expiry.
//!
//! The cookie is `HttpOnly`, `SameSite=Strict`, `Path=/ui` and `Secure` on
//! TLS connections. Logging in checks the credentials with the API's own
//! code ([`crate::auth::Auth::login`]: htpasswd users, Kubernetes or robot
//! tokens as the password, throttled per address) and starts a new session,
//! so a cookie known before login is worth nothing after.
//!
//! Every POST form carries the session's CSRF token, compared in constant
//! time. Visitors without a login get an anonymous session when a page has
//! a form (the login form itself, or delete with auth off).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use aws_lc_rs::hmac;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use berth_access::Claims;
use jiff::Timestamp;
use maud::html;
use serde::{Deserialize, Serialize};

use super::{PageError, Ui, Visitor, form, layout, param, query};
use crate::auth::{Identity, Refusal};

pub const COOKIE: &str = "berth_session";
/// A login cookie lasts this long without a page view.
pub const LOGIN_IDLE: Duration = Duration::from_secs(30 * 60);
/// A login lasts at most this long, however active.
pub const LOGIN_MAX: Duration = Duration::from_secs(8 * 3600);
/// How long an anonymous session (a CSRF token) lasts.
const ANONYMOUS_TTL: Duration = Duration::from_secs(3600);
/// Browsers keep cookies up to about 4 KiB.
const COOKIE_MAX: usize = 4000;
/// The shortest key accepted from a file.
const KEY_MIN: usize = 32;

/// Why a session key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the UI session key {path}: {source}; check the path and its permissions")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the UI session key {path} holds {len} bytes; it needs at least {KEY_MIN} (e.g. `head -c 32 /dev/urandom | base64 > {path}`)"
    )]
    TooShort { path: String, len: usize },
}

/// The key session cookies are signed with.
#[derive(Clone)]
pub struct Key(hmac::Key);

impl Key {
    /// The key in `path` (its bytes, surrounding whitespace trimmed).
    pub fn from_file(path: &Path) -> Result<Key, KeyError> {
        let raw = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let trimmed = raw.trim_ascii();
        if trimmed.len() < KEY_MIN {
            return Err(KeyError::TooShort {
                path: path.display().to_string(),
                len: trimmed.len(),
            });
        }
        Ok(Key::from_bytes(trimmed))
    }

    pub fn from_bytes(bytes: &[u8]) -> Key {
        Key(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// A random key for this process only.
    pub fn random() -> Key {
        let mut bytes = [0u8; 32];
        if aws_lc_rs::rand::fill(&mut bytes).is_err() {
            // The OS generator failed; UUIDs come from it too, by another path.
            bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        }
        Key::from_bytes(&bytes)
    }
}

/// What a session is about, as the cookie carries it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Basis {
    Anonymous,
    User {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        groups: Vec<String>,
    },
    Robot {
        claims: Box<Claims>,
    },
}

impl Basis {
    fn of(identity: &Identity) -> Basis {
        match identity {
            Identity::Anonymous => Basis::Anonymous,
            Identity::User { name, uid, groups } => Basis::User {
                name: name.clone(),
                uid: uid.clone(),
                groups: groups.clone(),
            },
            Identity::Robot(c) => Basis::Robot { claims: c.clone() },
        }
    }

    fn identity(self) -> Identity {
        match self {
            Basis::Anonymous => Identity::Anonymous,
            Basis::User { name, uid, groups } => Identity::User { name, uid, groups },
            Basis::Robot { claims } => Identity::Robot(claims),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Payload {
    sid: String,
    csrf: String,
    /// Unix seconds: issued (at login), expires.
    iat: i64,
    exp: i64,
    who: Basis,
}

#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    pub identity: Identity,
    pub csrf: String,
    issued: i64,
    expires: i64,
}

impl Session {
    fn is_login(&self) -> bool {
        !matches!(self.identity, Identity::Anonymous)
    }

    /// The latest a session may be renewed to.
    fn limit(&self) -> i64 {
        let max = if self.is_login() {
            LOGIN_MAX
        } else {
            ANONYMOUS_TTL
        };
        let mut limit = self.issued + secs(max);
        // A robot's login is worth no more than its token.
        if let Identity::Robot(c) = &self.identity {
            limit = limit.min(c.exp);
        }
        limit
    }

    /// How long a cookie of this session lives from `now`.
    fn next_expiry(&self, now: i64) -> i64 {
        let idle = if self.is_login() {
            LOGIN_IDLE
        } else {
            ANONYMOUS_TTL
        };
        (now + secs(idle)).min(self.limit())
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn now() -> i64 {
    Timestamp::now().as_second()
}

/// Issues and checks session cookies; remembers logouts (this process).
pub struct Sessions {
    key: Key,
    /// Session id → when it could no longer be renewed anyway.
    revoked: Mutex<HashMap<String, i64>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new(None)
    }
}

impl Sessions {
    /// Sessions signed with `key`, or a random key for this process.
    pub fn new(key: Option<Key>) -> Sessions {
        Sessions {
            key: key.unwrap_or_else(Key::random),
            revoked: Mutex::default(),
        }
    }

    /// The live session a cookie value carries.
    pub fn get(&self, cookie: &str) -> Option<Session> {
        let rest = cookie.strip_prefix("v1.")?;
        let (payload, mac) = rest.split_once('.')?;
        let mac = B64.decode(mac).ok()?;
        hmac::verify(&self.key.0, payload.as_bytes(), &mac).ok()?;
        let p: Payload = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        if p.exp <= now() {
            return None;
        }
        if self
            .revoked
            .lock()
            .ok()
            .is_some_and(|r| r.contains_key(&p.sid))
        {
            return None;
        }
        let session = Session {
            id: p.sid,
            identity: p.who.identity(),
            csrf: p.csrf,
            issued: p.iat,
            expires: p.exp,
        };
        (p.exp <= session.limit()).then_some(session)
    }

    /// Starts a session for `identity`.
    pub fn start(&self, identity: Identity) -> Session {
        let now = now();
        let mut s = Session {
            id: random(),
            identity,
            csrf: random(),
            issued: now,
            expires: now,
        };
        s.expires = s.next_expiry(now);
        s
    }

    /// The cookie value of `session`.
    pub fn seal(&self, session: &Session) -> String {
        let payload = Payload {
            sid: session.id.clone(),
            csrf: session.csrf.clone(),
            iat: session.issued,
            exp: session.expires,
            who: Basis::of(&session.identity),
        };
        let json = serde_json::to_vec(&payload).unwrap_or_default();
        let body = B64.encode(json);
        let mac = hmac::sign(&self.key.0, body.as_bytes());
        format!("v1.{body}.{}", B64.encode(mac.as_ref()))
    }

    /// Ends a session on this process (see the module doc for replicas).
    pub fn end(&self, session: &Session) {
        if let Ok(mut r) = self.revoked.lock() {
            let now = now();
            r.retain(|_, until| *until > now);
            r.insert(session.id.clone(), session.limit());
        }
    }

    /// The session renewed, when over half of its idle time has passed
    /// and it may still be.
    fn renewed(&self, session: &Session) -> Option<Session> {
        let now = now();
        let next = session.next_expiry(now);
        let remaining = session.expires - now;
        let lifetime = next - now;
        (remaining * 2 < lifetime && next > session.expires).then(|| Session {
            expires: next,
            ..session.clone()
        })
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

/// The session cookie's value in a request.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
        .filter(|v| {
            v.len() <= COOKIE_MAX
                && v.starts_with("v1.")
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
}

/// The `Set-Cookie` value for a session (or, with None, one that ends it).
pub fn set_cookie(ui: &Ui, session: Option<&Session>, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    let value = match session {
        Some(s) => format!(
            "{COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            ui.sessions.seal(s),
            (s.expires - now()).max(0)
        ),
        None => format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(""))
}

/// Renews a session cookie past half its idle time, on any UI response
/// that does not set the cookie itself.
pub async fn renew(State(ui): State<Ui>, req: Request, next: Next) -> Response {
    let renewed = cookie(req.headers())
        .and_then(|c| ui.sessions.get(&c))
        .and_then(|s| ui.sessions.renewed(&s));
    let tls = super::connection(&req).is_some_and(|c| c.tls);
    let mut resp = next.run(req).await;
    if let Some(s) = renewed
        && !resp.headers().contains_key(header::SET_COOKIE)
    {
        resp.headers_mut()
            .append(header::SET_COOKIE, set_cookie(&ui, Some(&s), tls));
    }
    resp
}

/// The visitor's session, started (anonymous) if it has none: a page with
/// a form needs its CSRF token. Returns the cookie to set, if new.
pub fn ensure(ui: &Ui, visitor: &mut Visitor) -> Option<HeaderValue> {
    if visitor.session.is_some() {
        return None;
    }
    let s = ui.sessions.start(Identity::Anonymous);
    let cookie = set_cookie(ui, Some(&s), visitor.tls);
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
                ui.sessions.end(old);
            }
            let session = ui.sessions.start(identity);
            let cookie = set_cookie(&ui, Some(&session), visitor.tls);
            if cookie.len() > COOKIE_MAX {
                tracing::warn!(user = %session.identity.audit_name(), bytes = cookie.len(), "ui: login too large for a session cookie");
                return render_login(
                    &ui,
                    &visitor,
                    &next,
                    Some(
                        "This identity carries too many groups (or a token too large) to fit in a browser session; use the API (docker login) instead.",
                    ),
                    StatusCode::UNPROCESSABLE_ENTITY,
                );
            }
            tracing::info!(user = %session.identity.audit_name(), "ui: logged in");
            let mut resp = Redirect::to(&next).into_response();
            resp.headers_mut().append(header::SET_COOKIE, cookie);
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
        ui.sessions.end(s);
    }
    let mut resp = Redirect::to("/ui/").into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(&ui, None, visitor.tls));
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
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; berth_session=v1.abc-_.def"),
        );
        assert_eq!(cookie(&h).as_deref(), Some("v1.abc-_.def"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("berth_session=short"),
        );
        assert_eq!(cookie(&h), None);
    }

    fn user() -> Identity {
        Identity::User {
            name: "alice".into(),
            uid: Some("u-1".into()),
            groups: vec!["devs".into()],
        }
    }

    #[test]
    fn a_signed_session_carries_its_basis_and_survives_a_new_process_with_the_key() {
        let key = Key::from_bytes(&[7u8; 32]);
        let one = Sessions::new(Some(key.clone()));
        let s = one.start(user());
        let sealed = one.seal(&s);
        // Another replica (or a restart) with the same key.
        let two = Sessions::new(Some(key));
        let back = two.get(&sealed).expect("accepted with the same key");
        assert_eq!(back.id, s.id);
        assert_eq!(back.csrf, s.csrf);
        match back.identity {
            Identity::User { name, uid, groups } => {
                assert_eq!(name, "alice");
                assert_eq!(uid.as_deref(), Some("u-1"));
                assert_eq!(groups, ["devs"]);
            }
            other => panic!("not the user: {other:?}"),
        }
        // Another key (a process without the key file) refuses it.
        assert!(Sessions::default().get(&sealed).is_none());
    }

    #[test]
    fn a_tampered_or_expired_cookie_is_refused() {
        let sessions = Sessions::default();
        let mut s = sessions.start(user());
        let sealed = sessions.seal(&s);
        let (head, mac) = sealed.rsplit_once('.').unwrap_or_default();
        let forged = Sessions::new(None).seal(&Session {
            identity: Identity::User {
                name: "root".into(),
                uid: None,
                groups: vec![],
            },
            ..s.clone()
        });
        let forged_body = forged.rsplit_once('.').map(|(b, _)| b).unwrap_or_default();
        assert!(sessions.get(&format!("{forged_body}.{mac}")).is_none());
        assert!(sessions.get(&format!("{head}.AAAA")).is_none());
        s.expires = now() - 1;
        assert!(sessions.get(&sessions.seal(&s)).is_none());
        // Past the login's maximum, even if the expiry says otherwise.
        s.issued = now() - secs(LOGIN_MAX) - 10;
        s.expires = now() + 60;
        assert!(sessions.get(&sessions.seal(&s)).is_none());
    }

    #[test]
    fn logout_revokes_the_session_on_this_process() {
        let s = Sessions::default();
        let a = s.start(Identity::Anonymous);
        let sealed = s.seal(&a);
        assert!(s.get(&sealed).is_some());
        assert_ne!(a.id, a.csrf);
        s.end(&a);
        assert!(s.get(&sealed).is_none());
    }

    #[test]
    fn a_session_is_renewed_past_half_its_idle_time_up_to_its_maximum() {
        let s = Sessions::default();
        let fresh = s.start(user());
        assert!(s.renewed(&fresh).is_none());
        let mut old = fresh.clone();
        old.expires = now() + 60;
        let r = s.renewed(&old).expect("renewed");
        assert!(r.expires > old.expires);
        assert_eq!(r.id, old.id);
        let mut ending = fresh;
        ending.issued = now() - secs(LOGIN_MAX) + 30;
        ending.expires = now() + 30;
        assert!(s.renewed(&ending).is_none());
    }
}
