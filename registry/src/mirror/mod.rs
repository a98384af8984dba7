//! The pull-through cache: repositories under a mirror prefix
//! (`docker.io/library/nginx`) are served from storage when there, and
//! otherwise fetched from their upstream (`https://registry-1.docker.io`,
//! repository `library/nginx`) and kept.
//!
//! - [`config`]: the upstream list, from the mirror config file.
//! - [`upstream`]: the HTTP client, following the upstream's auth challenge.
//! - [`fetch`]: one fetch per blob at a time, streamed to the first client
//!   while it is written (and verified) through the upload path.
//! - [`freshness`]: when a cached tag is checked against the upstream again.
//!
//! Manifests by digest never change, so a cached one is served as is. A
//! tag is served from the cache within its freshness window; after it, a
//! HEAD asks the upstream where the tag points (a manifest GET only if it
//! moved). When the upstream fails (429, 5xx, a timeout, unreachable) and
//! a copy is cached, the copy is served with a `Warning` header.

pub mod config;
pub mod fetch;
pub mod freshness;
pub mod upstream;

use std::path::Path;
use std::sync::Arc;

use axum::http::StatusCode;
use berth_access::MirrorConfig;
use bytes::Bytes;
use reqwest::Method;

use crate::error::{Code, Error, Result};
use crate::oci::manifest::{self, MAX_MANIFEST_BYTES};
use crate::oci::{Algorithm, Digest, Name, Reference};
use crate::storage::{Store, StoredManifest};
use upstream::{SMALL_REQUEST_TIMEOUT, UpstreamError};

pub use config::{ConfigError, Upstream};

/// The upstreams this registry mirrors.
pub struct Mirror {
    upstreams: Vec<Arc<Upstream>>,
}

/// A repository under a mirror prefix: its upstream, and the upstream's
/// name for it.
#[derive(Clone)]
pub struct Route {
    pub upstream: Arc<Upstream>,
    pub remote: String,
}

impl Route {
    pub fn prefix(&self) -> &str {
        &self.upstream.config.prefix
    }

    fn count(&self, event: &'static str) {
        crate::metrics::mirror(self.prefix(), event);
    }
}

/// Where a manifest was served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The cache, fresh (or immutable: by digest).
    Cached,
    /// The upstream, just now (and cached).
    Fetched,
    /// The cache, because the upstream failed.
    Stale,
}

/// The `Warning` a stale answer carries (RFC 7234's code 110).
pub const STALE_WARNING: &str = "110 - \"response is stale\"";

impl Mirror {
    pub fn new(config: &MirrorConfig) -> Result<Arc<Mirror>, ConfigError> {
        Ok(Arc::new(Mirror {
            upstreams: config::upstreams(config)?,
        }))
    }

    /// The mirror of the config file at `path`.
    pub fn from_file(path: &Path) -> Result<Arc<Mirror>, ConfigError> {
        Self::new(&config::load(path)?)
    }

    /// The mirror prefixes (`docker.io`, ...).
    pub fn prefixes(&self) -> Vec<String> {
        self.upstreams
            .iter()
            .map(|u| u.config.prefix.clone())
            .collect()
    }

    /// The cache caps, as retention rules for GC (`GcOptions::cache_rules`).
    pub fn cache_rules(&self) -> Vec<berth_access::gc::RetentionRule> {
        self.upstreams
            .iter()
            .filter_map(|u| u.config.cache_rule())
            .collect()
    }

    /// The cache's size caps, for GC (`GcOptions::cache_size_caps`).
    pub fn cache_size_caps(&self) -> Vec<berth_access::mirror::CacheSizeCap> {
        self.upstreams
            .iter()
            .filter_map(|u| u.config.cache_size_cap())
            .collect()
    }

    fn upstream(&self, prefix: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.config.prefix == prefix)
    }

    /// The upstream serving `name`, if it is under a mirror prefix.
    pub fn route(&self, name: &Name) -> Option<Route> {
        let (prefix, rest) = name.as_str().split_once('/')?;
        let upstream = self.upstream(prefix)?.clone();
        let remote = upstream.config.upstream_name(rest);
        Some(Route { upstream, remote })
    }

    /// The local name a request means, when it differs from its path's:
    /// containerd's mirror form (`/v2/library/nginx/...?ns=docker.io`)
    /// names the upstream in `ns`, and Docker Hub's official images are
    /// kept under `library/` however they were asked for, so
    /// `docker.io/nginx` and `docker.io/library/nginx` are one cache entry.
    pub fn local_name(&self, name: &Name, ns: Option<&str>) -> Option<Name> {
        let mut full = name.as_str().to_owned();
        if let Some(ns) = ns
            && self.upstream(ns).is_some()
        {
            full = format!("{ns}/{full}");
        }
        if let Some((prefix, rest)) = full.split_once('/')
            && let Some(u) = self.upstream(prefix)
        {
            full = format!("{prefix}/{}", u.config.upstream_name(rest));
        }
        if full == name.as_str() {
            return None;
        }
        full.parse().ok()
    }

    /// Makes sure `reference` of `name` is in storage and, for a tag,
    /// fresh enough; says whether it is stale.
    pub async fn manifest(
        &self,
        store: &Store,
        route: &Route,
        name: &Name,
        reference: &Reference,
    ) -> Result<Served> {
        allowed(route)?;
        match reference {
            Reference::Digest(d) => {
                if store.manifest_exists(name, d).await? {
                    route.count("hit");
                    return Ok(Served::Cached);
                }
                match fetch_manifest(route, &d.to_string(), Some(d)).await {
                    Ok((m, parsed)) => {
                        store.manifest_put_cached(name, &m, &parsed, &[]).await?;
                        route.count("miss");
                        Ok(Served::Fetched)
                    }
                    Err(e) => {
                        route.count("upstream_error");
                        Err(upstream_error(route, Kind::Manifest, &d.to_string(), &e))
                    }
                }
            }
            Reference::Tag(tag) => {
                let local = match store.tag_target(name, tag).await? {
                    Some(d) if store.manifest_exists(name, &d).await? => Some(d),
                    _ => None,
                };
                let freshness = &route.upstream.freshness;
                if local.is_some() && freshness.is_fresh(name.as_str(), tag.as_str()) {
                    route.count("hit");
                    return Ok(Served::Cached);
                }
                let failure = match head_manifest(route, tag.as_str()).await {
                    Ok(Some(d)) if Some(&d) == local.as_ref() => {
                        freshness.confirm(name.as_str(), tag.as_str());
                        // Pulled now: the cache's age cap counts from here
                        // (once per freshness window, not every pull).
                        if let Err(e) = store.tag_touch(name, tag, &d).await {
                            tracing::warn!(repository = %name, tag = tag.as_str(), error = %e, "could not record the pull of a cached tag; its age cap counts from the previous one");
                        }
                        route.count("hit");
                        return Ok(Served::Cached);
                    }
                    Ok(_) => match fetch_manifest(route, tag.as_str(), None).await {
                        Ok((m, parsed)) => {
                            store
                                .manifest_put_cached(name, &m, &parsed, std::slice::from_ref(tag))
                                .await?;
                            freshness.confirm(name.as_str(), tag.as_str());
                            route.count("miss");
                            return Ok(Served::Fetched);
                        }
                        Err(e) => e,
                    },
                    Err(e) => e,
                };
                route.count("upstream_error");
                if failure.is_outage() && local.is_some() {
                    route.count("stale");
                    tracing::warn!(
                        repository = %name,
                        tag = tag.as_str(),
                        error = %failure,
                        "upstream failing: serving the cached tag"
                    );
                    return Ok(Served::Stale);
                }
                Err(upstream_error(
                    route,
                    Kind::Manifest,
                    tag.as_str(),
                    &failure,
                ))
            }
        }
    }

    /// The size of a blob the upstream holds (a HEAD); when the bytes are
    /// already stored for another repository, they are linked into `name`.
    pub async fn blob_head(
        &self,
        store: &Store,
        route: &Route,
        name: &Name,
        digest: &Digest,
    ) -> Result<u64> {
        allowed(route)?;
        let resp = route
            .upstream
            .client
            .send(
                Method::HEAD,
                &route.remote,
                &format!("blobs/{digest}"),
                &[],
                Some(SMALL_REQUEST_TIMEOUT),
            )
            .await;
        let size = resp.and_then(|r| {
            content_length(&r).ok_or_else(|| UpstreamError::Invalid {
                upstream: route.upstream.client.url().to_owned(),
                what: "a blob HEAD answer with no Content-Length".into(),
            })
        });
        let size = size.map_err(|e| {
            route.count("upstream_error");
            upstream_error(route, Kind::Blob, &digest.to_string(), &e)
        })?;
        store.blob_mount(name, digest, None).await?;
        route.count("miss");
        Ok(size)
    }
}

/// Refuses repositories the upstream's patterns leave out.
pub fn allowed(route: &Route) -> Result<()> {
    if route.upstream.config.allows(&route.remote) {
        return Ok(());
    }
    Err(Error::new(
        Code::Denied,
        format!(
            "{} is not among the repositories the {} mirror may fetch ({}); ask the registry's operator to add it to the mirror's repository patterns",
            route.remote,
            route.prefix(),
            route.upstream.config.repositories.join(", ")
        ),
    ))
}

/// What a request asked the upstream for.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Manifest,
    Blob,
}

/// The client's error when the upstream did not deliver and nothing is
/// cached: it names the upstream and what it answered.
pub fn upstream_error(route: &Route, kind: Kind, reference: &str, e: &UpstreamError) -> Error {
    let (what, unknown) = match kind {
        Kind::Manifest => ("manifest", Code::ManifestUnknown),
        Kind::Blob => ("blob", Code::BlobUnknown),
    };
    let subject = format!(
        "{what} {reference} of {} (upstream repository {})",
        route.prefix(),
        route.remote
    );
    match e.status() {
        Some(404) => Error::new(unknown, format!("{subject} is not cached, and {e}")),
        Some(429) => Error::new(
            Code::TooManyRequests,
            format!("{subject} is not cached, and {e}: the upstream's rate limit; retry later"),
        ),
        Some(401 | 403) => Error::new(
            Code::Denied,
            format!(
                "{subject} is not cached, and {e}: the mirror may not read it there; ask the registry's operator to check the mirror's credentials"
            ),
        ),
        _ => Error::new(
            Code::Unknown,
            format!("{subject} is not cached, and {e}; retry when the upstream is back"),
        )
        .with_status(StatusCode::BAD_GATEWAY),
    }
}

/// The media types asked of the upstream: every manifest kind berth keeps.
fn accept() -> Vec<&'static str> {
    manifest::MEDIA_TYPES.to_vec()
}

/// The Content-Length header (a HEAD's body is empty, so its size hint
/// says nothing).
pub(crate) fn content_length(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Where the upstream says `tag` points; `None` if it does not say.
async fn head_manifest(route: &Route, tag: &str) -> Result<Option<Digest>, UpstreamError> {
    let resp = route
        .upstream
        .client
        .send(
            Method::HEAD,
            &route.remote,
            &format!("manifests/{tag}"),
            &accept(),
            Some(SMALL_REQUEST_TIMEOUT),
        )
        .await?;
    Ok(resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok()))
}

/// Fetches a manifest and checks it: its digest (against the reference,
/// or the upstream's `Docker-Content-Digest`), its size, that it parses.
async fn fetch_manifest(
    route: &Route,
    reference: &str,
    expected: Option<&Digest>,
) -> Result<(StoredManifest, manifest::Manifest), UpstreamError> {
    let client = &route.upstream.client;
    let invalid = |what: String| UpstreamError::Invalid {
        upstream: client.url().to_owned(),
        what,
    };
    let mut resp = client
        .send(
            Method::GET,
            &route.remote,
            &format!("manifests/{reference}"),
            &accept(),
            Some(SMALL_REQUEST_TIMEOUT),
        )
        .await?;
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let said: Option<Digest> = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if content_length(&resp).is_some_and(|l| l > MAX_MANIFEST_BYTES as u64) {
        return Err(invalid(format!(
            "a manifest larger than the {} MiB limit",
            MAX_MANIFEST_BYTES >> 20
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| client.transport(&e))? {
        if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
            return Err(invalid(format!(
                "a manifest larger than the {} MiB limit",
                MAX_MANIFEST_BYTES >> 20
            )));
        }
        body.extend_from_slice(&chunk);
    }
    let body = Bytes::from(body);
    let parsed = manifest::parse(&body, content_type.as_deref())
        .map_err(|e| invalid(format!("a manifest berth cannot read: {e}")))?;
    let algorithm = expected.map_or(Algorithm::Sha256, Digest::algorithm);
    let digest = algorithm.digest(&body);
    for claimed in expected.into_iter().chain(said.as_ref()) {
        if claimed.algorithm() == algorithm && claimed != &digest {
            return Err(invalid(format!(
                "a manifest whose digest is {digest}, not {claimed}; nothing was stored"
            )));
        }
    }
    Ok((
        StoredManifest {
            digest,
            media_type: parsed.media_type.clone(),
            body,
        },
        parsed,
    ))
}
