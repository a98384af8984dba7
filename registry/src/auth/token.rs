//! The token endpoint (Distribution's `docs/content/spec/auth/token.md`
//! and `oauth.md`):
//!
//! - `GET /token?service=&scope=…&offline_token=true&account=` with Basic
//!   credentials, or none (a token holding only what anonymous pull allows,
//!   which docker and containerd fetch before an anonymous pull);
//! - `POST /token` (form): `grant_type=password` (`username`, `password`)
//!   or `grant_type=refresh_token` (`refresh_token`), with `scope`,
//!   `service`, `client_id`, and `access_type=offline` for a refresh token.
//!
//! Both answer `{token, access_token, expires_in, issued_at[,
//! refresh_token]}`. Each granted scope is the intersection of what was
//! asked and what the caller may do. Refresh tokens carry who the caller
//! is, never rights: every refresh is authorised afresh.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_access::keys::{TokenError, random_id};
use berth_access::{Claims, Scope, TokenKind};

use super::credentials::Credentials;
use super::{Auth, Identity, Refusal};
use crate::AppState;
use crate::error::{Code, Error};
use crate::server::Connection;

/// The largest form `POST /token` reads.
const MAX_FORM: usize = 64 * 1024;

pub async fn get(State(state): State<AppState>, req: Request) -> Response {
    let Some(auth) = state.auth.clone() else {
        return not_found();
    };
    let client = req.extensions().get::<Connection>().map(|c| c.peer.ip());
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let param = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let scopes = query
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.as_str());
    let offline = param("offline_token").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let credentials = Credentials::from_headers(req.headers());
    let tried = match &credentials {
        Credentials::Basic { user, .. } => user.clone(),
        _ => String::new(),
    };
    // The body is not Sync: the request must not live across an await.
    drop(req);
    let result = async {
        let scopes = Scope::parse_many(scopes).map_err(bad_request)?;
        let (identity, refresh_until) = match credentials {
            Credentials::Anonymous => (Identity::Anonymous, None),
            Credentials::Basic { user, password } => (
                auth.login(&user, &password, client)
                    .await
                    .map_err(|r| refused(&auth, r, &tried))?,
                auth.refresh_until(&password),
            ),
            Credentials::Bearer(_) | Credentials::Invalid => {
                auth.count("unauthorized");
                return Err(unauthorized(&auth));
            }
        };
        let refresh_until = refresh_until.filter(|_| offline);
        issue(&auth, &identity, &scopes, refresh_until).await
    }
    .await;
    if let Err(e) = &result {
        crate::audit::http::record_refusal(&state, e, client);
    }
    result.unwrap_or_else(IntoResponse::into_response)
}

pub async fn post(State(state): State<AppState>, req: Request) -> Response {
    let Some(auth) = state.auth.clone() else {
        return not_found();
    };
    let client = req.extensions().get::<Connection>().map(|c| c.peer.ip());
    let result = async {
        let body = axum::body::to_bytes(req.into_body(), MAX_FORM)
            .await
            .map_err(|_| {
                bad_request(format!(
                    "the token request form is missing or larger than {MAX_FORM} bytes"
                ))
            })?;
        let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let param = |k: &str| {
            form.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let scopes = Scope::parse_many(
            form.iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.as_str()),
        )
        .map_err(bad_request)?;
        let offline = param("access_type") == "offline";
        let (identity, refresh_until) = match param("grant_type") {
            "password" => (
                auth.login(param("username"), param("password"), client)
                    .await
                    .map_err(|r| refused(&auth, r, param("username")))?,
                auth.refresh_until(param("password")).filter(|_| offline),
            ),
            // The client keeps the refresh token it has: no new one, so a
            // refresh token never outlives the first.
            "refresh_token" => (
                auth.refresh(param("refresh_token"), client)
                    .map_err(|r| refused(&auth, r, ""))?,
                None,
            ),
            other => {
                return Err(bad_request(format!(
                    "grant_type {other:?} is not supported; use password or refresh_token"
                )));
            }
        };
        issue(&auth, &identity, &scopes, refresh_until).await
    }
    .await;
    if let Err(e) = &result {
        crate::audit::http::record_refusal(&state, e, client);
    }
    result.unwrap_or_else(IntoResponse::into_response)
}

impl Auth {
    /// Until when a refresh token for a login with `password` may live, or
    /// None for no refresh token: a refresh token never outlives the
    /// credential it was given for. Htpasswd passwords do not expire (and
    /// a refresh checks that the user still exists); a Kubernetes token
    /// carries its own `exp` (read after the TokenReview accepted it; a
    /// token without one gets no refresh token); a berth token as password
    /// (robot, refresh) gets none.
    fn refresh_until(&self, password: &str) -> Option<i64> {
        let svc = &self.config.service;
        if self
            .keys
            .current()
            .verifier
            .verify(password, svc, svc)
            .is_ok()
        {
            return None;
        }
        match &self.backend {
            super::Backend::Htpasswd(_) => Some(i64::MAX),
            super::Backend::Kubernetes(_) => unverified_exp(password),
        }
    }

    /// `grant_type=refresh_token`: the token must be one of our refresh
    /// tokens, still valid, for a user who still exists.
    fn refresh(&self, token: &str, client: Option<std::net::IpAddr>) -> Result<Identity, Refusal> {
        if let Err(retry) = self.limiter.check(client) {
            return Err(Refusal::RateLimited(retry));
        }
        let svc = &self.config.service;
        let result = self
            .keys
            .current()
            .verifier
            .verify(token, svc, svc)
            .map_err(|e: TokenError| {
                tracing::info!(reason = %e, ?client, "refresh token refused");
                Refusal::BadCredentials("a refresh token that does not verify")
            })
            .and_then(|c| {
                if c.kind == TokenKind::Refresh {
                    self.identity_of_login_token(c)
                } else {
                    Err(Refusal::BadCredentials("not a refresh token"))
                }
            });
        match &result {
            Ok(_) => self.limiter.succeeded(client),
            Err(_) => self.limiter.failed(client),
        }
        result
    }
}

/// Signs the access token (and refresh token) and writes the answer.
async fn issue(
    auth: &Arc<Auth>,
    identity: &Identity,
    scopes: &[Scope],
    refresh_until: Option<i64>,
) -> Result<Response, Error> {
    let access = auth
        .grants(identity, scopes)
        .await
        .map_err(|e| super::unavailable(&e))?;
    let now = jiff::Timestamp::now();
    let iat = now.as_second();
    let (uid, groups) = match identity {
        Identity::User { uid, groups, .. } => (uid.clone(), groups.clone()),
        _ => (None, Vec::new()),
    };
    let ttl = auth.config.token_ttl_seconds.max(1);
    let svc = auth.config.service.clone();
    let claims = Claims {
        iss: svc.clone(),
        sub: identity.subject().to_owned(),
        aud: svc.clone(),
        exp: iat.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
        nbf: iat,
        iat,
        jti: random_id(),
        access,
        kind: TokenKind::Access,
        groups: groups.clone(),
        uid: uid.clone(),
    };
    let keys = auth.keys.current();
    let token = keys.signer.sign(&claims).map_err(sign_error)?;
    let mut body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": ttl,
        "issued_at": now.to_string(),
    });
    let refresh_exp = refresh_until.map(|until| {
        iat.saturating_add(
            i64::try_from(auth.config.refresh_ttl_seconds.max(1)).unwrap_or(i64::MAX),
        )
        .min(until)
    });
    if let (Some(exp), Identity::User { .. }) = (refresh_exp, identity)
        && exp > iat
    {
        let refresh = Claims {
            exp,
            jti: random_id(),
            access: Vec::new(),
            kind: TokenKind::Refresh,
            ..claims.clone()
        };
        body["refresh_token"] = keys.signer.sign(&refresh).map_err(sign_error)?.into();
    }
    auth.count("token_issued");
    tracing::debug!(
        sub = claims.sub,
        grants = claims.access.len(),
        refresh = body.get("refresh_token").is_some(),
        "token issued"
    );
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The answer to a failed login; `user` (the name tried, never the
/// password) is noted for the audit trail.
fn refused(auth: &Auth, r: Refusal, user: &str) -> Error {
    let subject = if user.is_empty() { "anonymous" } else { user };
    match &r {
        Refusal::BadCredentials(_) => {
            auth.count("unauthorized");
            unauthorized(auth).refusing(subject, true)
        }
        Refusal::RateLimited(_) => {
            auth.count("rate_limited");
            r.into_error(None).refusing(subject, true)
        }
        Refusal::Unavailable(_) => {
            auth.count("unavailable");
            r.into_error(None)
        }
    }
}

/// 401 at the token endpoint: a Basic challenge, the OCI error body.
fn unauthorized(auth: &Auth) -> Error {
    let mut e = Error::new(
        Code::Unauthorized,
        "invalid user name or password (or token); log in again",
    );
    if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{}\"", auth.config.service)) {
        e = e.with_header(header::WWW_AUTHENTICATE, v);
    }
    e
}

fn bad_request(e: impl ToString) -> Error {
    Error::new(Code::Unsupported, e.to_string()).with_status(StatusCode::BAD_REQUEST)
}

fn sign_error(e: berth_access::KeyError) -> Error {
    tracing::error!(error = %e, "cannot sign a token");
    Error::new(
        Code::Unknown,
        "the registry cannot sign tokens right now; tell the operator (see the registry's log)",
    )
}

fn not_found() -> Response {
    Error::new(
        Code::NameUnknown,
        "this registry has no token endpoint: auth is off",
    )
    .with_status(StatusCode::NOT_FOUND)
    .into_response()
}

/// The `exp` of a JWT, read without checking it (the caller has had it
/// checked by its issuer).
fn unverified_exp(token: &str) -> Option<i64> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_i64()
}
