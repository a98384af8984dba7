//! `GET /berth/v1/audit?repository=&subject=&since=&until=&limit=`: the
//! stored trail, newest first, as a JSON array of events.
//!
//! Who may read it (who did what is an administrator's business):
//! - with `repository=`: a caller with delete on that repository;
//! - without: a registry-wide administrator sees everything (see
//!   [`crate::auth::Auth::may_audit`]); anyone else sees only the events of
//!   repositories they may delete, and none without a repository (failed
//!   logins), so the answer never shows more than their rights;
//! - no credentials: 401 (anonymous callers delete nothing);
//! - auth off: loopback clients only. Anyone may push there, but the trail
//!   also holds other clients' addresses; reading it from the node or
//!   through `kubectl port-forward` proves access to the host.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;

use super::{Audit, Event, Filter};
use crate::AppState;
use crate::auth::{Auth, Identity};
use crate::error::{Code, Error};
use crate::server::Connection;

/// Events answered when the query names no limit.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit`.
pub const MAX_LIMIT: usize = 10_000;

pub async fn get(State(state): State<AppState>, req: Request) -> Response {
    match answer(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn answer(state: &AppState, req: Request) -> Result<Response, Error> {
    let Some(audit) = state.audit.clone() else {
        return Err(Error::new(
            Code::Unsupported,
            "the audit trail is off on this registry; start it without `--audit off` to keep one",
        )
        .with_status(StatusCode::NOT_FOUND));
    };
    let conn = req.extensions().get::<Connection>().copied();
    let client = conn.map(|c| c.peer.ip());
    let params: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let (filter, limit) = parse(&params)?;
    let headers = req.headers().clone();
    drop(req);

    // Whether the caller sees only the repositories it may delete.
    let mut per_repository = false;
    let caller = match &state.auth {
        None => {
            if !client.is_some_and(|c| c.is_loopback()) {
                return Err(Error::new(
                    Code::Denied,
                    "with auth off the audit trail is served to loopback clients only; read it on the node or through `kubectl port-forward`",
                ));
            }
            None
        }
        Some(auth) => {
            let caller = match auth.identify(&headers, conn.as_ref()).await {
                Ok(c) => c,
                Err(e) => {
                    record_refusal(state, &e, client);
                    return Err(e);
                }
            };
            if matches!(caller.identity, crate::auth::Identity::Anonymous) {
                return Err(Error::new(
                    Code::Unauthorized,
                    "the audit trail needs credentials: a user with delete rights on the repositories asked about",
                )
                .with_header(
                    header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Basic realm=\"berth\""),
                ));
            }
            let may = auth
                .may_audit(&caller.identity, filter.repository.as_deref())
                .await
                .map_err(|e| unavailable(&e))?;
            match (&filter.repository, may) {
                (_, true) => {}
                (Some(r), false) => {
                    let subject = caller.identity.audit_name();
                    let e = Error::new(
                        Code::Denied,
                        format!(
                            "{subject} may not read the audit trail of {r}: it takes delete rights on the repository"
                        ),
                    )
                    .refusing(subject, false);
                    let mut ev = Event::now("audit", &caller.identity.audit_name(), client, 403);
                    ev.repository = Some(r.clone());
                    audit.record(ev);
                    return Err(e);
                }
                (None, false) => per_repository = true,
            }
            Some((auth.clone(), caller))
        }
    };

    let reader = match (per_repository, &caller) {
        (true, Some((auth, caller))) => Some((auth, &caller.identity)),
        _ => None,
    };
    let out = events_for(&audit, reader, &filter, limit).await?;
    let body = serde_json::to_string(&out).unwrap_or_else(|_| "[]".to_owned());
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

/// Of the stored events matching `filter`, newest first and at most
/// `limit`, those `reader` may see: `None` sees all (auth off, or a
/// registry-wide administrator); `Some` sees the events of repositories it
/// may delete and none without a repository. Shared by the API and the web
/// UI's audit page.
pub(crate) async fn events_for(
    audit: &Audit,
    reader: Option<(&Arc<Auth>, &Identity)>,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<Event>, Error> {
    // What was recorded up to this request is in storage before reading.
    audit.flush().await;
    let events = audit.query(filter).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot read the audit trail");
        Error::new(
            Code::Unknown,
            "the audit trail cannot be read from storage right now; retry, and see the registry's log",
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
    })?;
    let mut seen: HashMap<String, bool> = HashMap::new();
    let mut out: Vec<Event> = Vec::with_capacity(limit.min(events.len()));
    for e in events {
        if out.len() >= limit {
            break;
        }
        if let Some((auth, identity)) = reader {
            let Some(repo) = &e.repository else { continue };
            let may = match seen.get(repo) {
                Some(m) => *m,
                None => {
                    let m = auth
                        .may_audit(identity, Some(repo))
                        .await
                        .map_err(|e| unavailable(&e))?;
                    seen.insert(repo.clone(), m);
                    m
                }
            };
            if !may {
                continue;
            }
        }
        out.push(e);
    }
    Ok(out)
}

/// The filter and limit of a query string.
pub(crate) fn parse(params: &[(String, String)]) -> Result<(Filter, usize), Error> {
    let param = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let bad = |m: String| Error::new(Code::Unsupported, m).with_status(StatusCode::BAD_REQUEST);
    let time = |k: &str| {
        param(k)
            .map(|v| {
                v.parse::<Timestamp>().map_err(|_| {
                    bad(format!(
                        "{k}={v:?} is not a time; use RFC 3339, e.g. 2026-11-30T10:00:00Z"
                    ))
                })
            })
            .transpose()
    };
    let repository = param("repository")
        .map(|r| {
            r.parse::<crate::oci::Name>()
                .map(|n| n.to_string())
                .map_err(Error::from)
        })
        .transpose()?;
    let limit = match param("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(bad(format!(
                    "limit={v:?} is not a number of events from 1 to {MAX_LIMIT}"
                )));
            }
        },
    };
    Ok((
        Filter {
            repository,
            subject: param("subject").map(str::to_owned),
            since: time("since")?,
            until: time("until")?,
        },
        limit,
    ))
}

/// Records a refused credential check at an endpoint outside `/v2/`.
pub(crate) fn record_refusal(state: &AppState, e: &Error, client: Option<IpAddr>) {
    if let (Some(audit), Some(r)) = (&state.audit, &e.refused) {
        let action = if r.login_failed { "login" } else { "denied" };
        audit.record(Event::now(action, &r.subject, client, e.status().as_u16()));
    }
}

fn unavailable(e: &crate::auth::Unavailable) -> Error {
    tracing::warn!(error = %e, "cannot decide who may read the audit trail");
    Error::new(
        Code::Unknown,
        "the registry cannot check permissions right now (the Kubernetes apiserver does not answer); retry shortly",
    )
    .with_status(StatusCode::SERVICE_UNAVAILABLE)
}
