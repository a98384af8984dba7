//! `docker search <host>/<term>`: the Docker daemon's v1 search API.
//!
//! The daemon (20.10 checked) pings `GET /v1/_ping` over HTTPS, then HTTP
//! if the registry is insecure, and takes `X-Docker-Registry-Standalone:
//! true` to mean "not Docker Hub". It then sends `GET /v1/search?q=&n=`
//! with `X-Docker-Token: true`, which makes it add Basic credentials when
//! logged in (or, holding a refresh token, a Bearer token it fetched with
//! `registry:catalog:search`). It reads `{query, num_results, results[{name,
//! description, star_count, is_official, is_automated}]}`; nothing else.
//!
//! Only repositories the caller may pull are searched (as the catalog):
//! anonymous callers see the anonymous-pull ones; with auth off, all.
//! Names match by case-insensitive substring, and so do descriptions: the
//! `org.opencontainers.image.description` annotation of the manifest
//! tagged `latest`, else of the last tag in order.

use std::collections::HashMap;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::AppState;
use crate::error::{Code, Error};
use crate::oci::{Name, Reference};
use crate::server::Connection;

/// Results answered when the query names no `n` (as Docker Hub).
pub const DEFAULT_LIMIT: usize = 25;
/// The largest `n` (the Docker daemon refuses more itself).
pub const MAX_LIMIT: usize = 100;
/// Descriptions read per search beyond the page's own, so a search over
/// many repositories costs a bounded number of manifest reads: past it,
/// repositories match by name only.
const DESCRIPTION_SCAN_MAX: usize = 1000;
const DESCRIPTION_ANNOTATION: &str = "org.opencontainers.image.description";

const STANDALONE: HeaderName = HeaderName::from_static("x-docker-registry-standalone");

#[derive(Serialize)]
struct Results {
    query: String,
    num_results: usize,
    results: Vec<Found>,
}

#[derive(Serialize)]
struct Found {
    name: String,
    description: String,
    star_count: u32,
    is_official: bool,
    is_automated: bool,
}

/// `GET /v1/_ping`: "a standalone registry, not the Docker Hub index".
pub async fn ping() -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (STANDALONE, HeaderValue::from_static("true")),
        ],
        "{}",
    )
        .into_response()
}

/// `GET /v1/search?q=&n=`.
pub async fn search(State(state): State<AppState>, req: Request) -> Response {
    let conn = req.extensions().get::<Connection>().copied();
    let headers = req.headers().clone();
    let params: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    drop(req);
    let result = async {
        let (query, limit) = parse(&params)?;
        let caller = match &state.auth {
            Some(auth) => Some(auth.identify(&headers, conn.as_ref()).await?),
            None => None,
        };
        let mut repos = state.store.repositories().await?;
        if let Some(caller) = &caller {
            repos = caller.visible(repos).await;
        }
        let term = query.to_lowercase();
        let mut descriptions: HashMap<String, String> = HashMap::new();
        let mut matched: Vec<String> = Vec::new();
        let mut scanned = 0;
        for r in repos {
            if r.to_lowercase().contains(&term) {
                matched.push(r);
            } else if scanned < DESCRIPTION_SCAN_MAX {
                scanned += 1;
                let d = description(&state, &r).await;
                if !d.is_empty() && d.to_lowercase().contains(&term) {
                    descriptions.insert(r.clone(), d);
                    matched.push(r);
                }
            }
        }
        matched.sort_unstable();
        let num_results = matched.len();
        let mut results = Vec::with_capacity(limit.min(num_results));
        for name in matched.into_iter().take(limit) {
            let description = match descriptions.remove(&name) {
                Some(d) => d,
                None => description(&state, &name).await,
            };
            results.push(Found {
                name,
                description,
                star_count: 0,
                is_official: false,
                is_automated: false,
            });
        }
        let body = serde_json::to_string(&Results {
            query,
            num_results,
            results,
        })
        .unwrap_or_default();
        Ok::<_, Error>(
            (
                StatusCode::OK,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ),
                    (STANDALONE, HeaderValue::from_static("true")),
                ],
                body,
            )
                .into_response(),
        )
    }
    .await;
    result.unwrap_or_else(|e| {
        crate::audit::http::record_refusal(&state, &e, conn.map(|c| c.peer.ip()));
        e.into_response()
    })
}

/// The query and the page size.
fn parse(params: &[(String, String)]) -> Result<(String, usize), Error> {
    let param = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let query = param("q").unwrap_or("").trim().to_owned();
    let limit = match param("n").filter(|n| !n.is_empty()) {
        None => DEFAULT_LIMIT,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(Error::new(
                    Code::Unsupported,
                    format!("n={n:?} is not a number of results from 1 to {MAX_LIMIT}"),
                )
                .with_status(StatusCode::BAD_REQUEST));
            }
        },
    };
    Ok((query, limit))
}

/// The repository's description, or "" (none, or unreadable: a search
/// still answers).
async fn description(state: &AppState, repository: &str) -> String {
    let Ok(name) = repository.parse::<Name>() else {
        return String::new();
    };
    let Ok(Some(tags)) = state.store.tags(&name).await else {
        return String::new();
    };
    let tag = match tags.iter().find(|t| *t == "latest") {
        Some(t) => t.clone(),
        None => match tags.iter().max() {
            Some(t) => t.clone(),
            None => return String::new(),
        },
    };
    let Ok(reference) = tag.parse::<Reference>() else {
        return String::new();
    };
    let Ok(Some(m)) = state.store.manifest_get(&name, &reference).await else {
        return String::new();
    };
    serde_json::from_slice::<serde_json::Value>(&m.body)
        .ok()
        .and_then(|v| {
            v.get("annotations")?
                .get(DESCRIPTION_ANNOTATION)?
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default()
}
