//! The registry's mirror config file: the upstream registries it caches
//! (pull-through), which the operator writes from a `Registry`'s
//! `spec.mirrors` and `berth-registry serve --mirror-config FILE` reads.
//! JSON, like [`crate::config::AuthConfig`], so both sides share the types.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::glob_match;

/// The file: a list of upstreams.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorConfig {
    pub upstreams: Vec<Upstream>,
}

impl MirrorConfig {
    /// Every upstream's age cap, as retention rules for GC.
    pub fn cache_rules(&self) -> Vec<crate::gc::RetentionRule> {
        self.upstreams
            .iter()
            .filter_map(Upstream::cache_rule)
            .collect()
    }

    /// Every upstream's size cap, for GC.
    pub fn cache_size_caps(&self) -> Vec<CacheSizeCap> {
        self.upstreams
            .iter()
            .filter_map(Upstream::cache_size_cap)
            .collect()
    }
}

/// One upstream registry, served under `<prefix>/...`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Upstream {
    /// The first component of the mirrored repositories' names, and the
    /// `ns` a containerd mirror request names: `docker.io`, `ghcr.io`.
    pub prefix: String,
    /// The upstream's base URL: `https://registry-1.docker.io`.
    pub url: String,
    /// A file holding the user name for the upstream (a mounted Secret);
    /// without it, anonymous (tokens are still fetched when asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_file: Option<PathBuf>,
    /// A file holding the password or token for the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Upstream repository patterns that may be fetched (`*` any run of
    /// characters, `?` one), matched against the upstream name
    /// (`library/nginx`); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
    /// Seconds a tag fetched from the upstream is served before it is
    /// checked again (a HEAD, which spares rate limits).
    #[serde(default = "default_tag_freshness")]
    pub tag_freshness_seconds: u64,
    /// A PEM file of CA certificates the upstream's certificate chains to,
    /// for a private upstream; added to the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The cache's age cap: a cached tag neither fetched nor pulled (a
    /// manifest GET by the tag, another tag or its digest, as the
    /// registry's last-pulled record has it) in this many seconds is
    /// removed by GC (its content then goes as GC removes any unreferenced
    /// content), unless a running pod uses it. Unset: kept until
    /// retention or a delete removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u64>,
    /// The cache's size cap: when the cached repositories' tags reference
    /// more than this many bytes (each blob once), GC removes cached tags
    /// least recently pulled first until they fit, never one a running
    /// pod uses. Unset: no size cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size_bytes: Option<u64>,
}

/// A size cap over the cached repositories of one upstream, for GC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheSizeCap {
    /// The repositories it covers, as a glob (`docker.io/*`).
    pub repositories: String,
    /// Bytes their tags may reference, each blob counted once.
    pub max_bytes: u64,
}

/// Five minutes: a tag moved upstream is seen within that.
pub const DEFAULT_TAG_FRESHNESS_SECONDS: u64 = 300;

fn default_tag_freshness() -> u64 {
    DEFAULT_TAG_FRESHNESS_SECONDS
}

/// What is wrong with a mirror config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorConfigError {
    #[error(
        "mirror prefix {0:?} is not a registry host name (lower-case DNS labels joined by dots, no port, e.g. docker.io)"
    )]
    Prefix(String),
    #[error("mirror prefix {0:?} is listed twice; give each upstream one entry")]
    Duplicate(String),
    #[error("mirror {prefix:?}: url {url:?} must start with https:// or http://")]
    Url { prefix: String, url: String },
    #[error("mirror {0:?}: give both usernameFile and passwordFile, or neither")]
    HalfCredentials(String),
    #[error(
        "mirror {0:?}: maxAgeSeconds must be above zero (zero would drop every cached image at each GC run); leave it out to keep them"
    )]
    ZeroMaxAge(String),
    #[error(
        "mirror {0:?}: maxSizeBytes must be above zero (zero would drop every cached image at each GC run); leave it out for no size cap"
    )]
    ZeroMaxSize(String),
}

impl MirrorConfig {
    /// Checks every upstream; the registry refuses to start on an error.
    pub fn validate(&self) -> Result<(), MirrorConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for u in &self.upstreams {
            if !is_host(&u.prefix) {
                return Err(MirrorConfigError::Prefix(u.prefix.clone()));
            }
            if !seen.insert(u.prefix.as_str()) {
                return Err(MirrorConfigError::Duplicate(u.prefix.clone()));
            }
            let rest = u
                .url
                .strip_prefix("https://")
                .or_else(|| u.url.strip_prefix("http://"));
            if rest.is_none_or(|r| r.trim_end_matches('/').is_empty()) {
                return Err(MirrorConfigError::Url {
                    prefix: u.prefix.clone(),
                    url: u.url.clone(),
                });
            }
            if u.username_file.is_some() != u.password_file.is_some() {
                return Err(MirrorConfigError::HalfCredentials(u.prefix.clone()));
            }
            if u.max_age_seconds == Some(0) {
                return Err(MirrorConfigError::ZeroMaxAge(u.prefix.clone()));
            }
            if u.max_size_bytes == Some(0) {
                return Err(MirrorConfigError::ZeroMaxSize(u.prefix.clone()));
            }
        }
        Ok(())
    }

    /// The upstream serving repository `name` (`<prefix>/<rest>`), with
    /// the upstream's name for it; `None` when no prefix matches.
    pub fn route<'a>(&'a self, name: &str) -> Option<(&'a Upstream, String)> {
        let (prefix, rest) = name.split_once('/')?;
        let u = self.upstreams.iter().find(|u| u.prefix == prefix)?;
        Some((u, u.upstream_name(rest)))
    }
}

impl Upstream {
    /// The upstream's name for `rest`: Docker Hub keeps its official
    /// images under `library/`, which clients leave out (`nginx`).
    pub fn upstream_name(&self, rest: &str) -> String {
        if self.prefix == "docker.io" && !rest.contains('/') {
            format!("library/{rest}")
        } else {
            rest.to_owned()
        }
    }

    /// The age cap as a retention rule over `<prefix>/*`, for GC; `None`
    /// without one. A tag stays if it was cached (or its pull re-checked
    /// it upstream, which rewrites the tag) or pulled within
    /// `max_age_seconds`: the least recently used go.
    pub fn cache_rule(&self) -> Option<crate::gc::RetentionRule> {
        self.max_age_seconds.map(|age| crate::gc::RetentionRule {
            repositories: self.cached_repositories(),
            keep_within_seconds: Some(age),
            keep_pulled_within_seconds: Some(age),
            ..crate::gc::RetentionRule::default()
        })
    }

    /// The size cap over `<prefix>/*`, for GC; `None` without one.
    pub fn cache_size_cap(&self) -> Option<CacheSizeCap> {
        self.max_size_bytes.map(|max_bytes| CacheSizeCap {
            repositories: self.cached_repositories(),
            max_bytes,
        })
    }

    /// The glob of the repositories this upstream's cache holds.
    fn cached_repositories(&self) -> String {
        format!("{}/*", self.prefix)
    }

    /// Whether the upstream repository `name` may be fetched.
    pub fn allows(&self, name: &str) -> bool {
        self.repositories.is_empty() || self.repositories.iter().any(|p| glob_match(p, name))
    }
}

/// A registry host name that can also be a repository name's first
/// component: DNS labels joined by dots (`docker.io`, `registry.k8s.io`).
/// No port: `:` cannot appear in a repository name.
fn is_host(s: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (s.contains('.') || s == "localhost") && s.split('.').all(label)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn upstream(prefix: &str) -> Upstream {
        Upstream {
            prefix: prefix.into(),
            url: "https://registry-1.docker.io".into(),
            username_file: None,
            password_file: None,
            repositories: vec![],
            tag_freshness_seconds: 300,
            ca_file: None,
            max_age_seconds: None,
            max_size_bytes: None,
        }
    }

    #[test]
    fn docker_hub_official_images_gain_library() {
        let c = MirrorConfig {
            upstreams: vec![upstream("docker.io"), upstream("ghcr.io")],
        };
        assert_eq!(c.route("docker.io/nginx").unwrap().1, "library/nginx");
        assert_eq!(
            c.route("docker.io/bitnami/redis").unwrap().1,
            "bitnami/redis"
        );
        assert_eq!(c.route("ghcr.io/app").unwrap().1, "app");
        assert!(c.route("team/app").is_none());
        assert!(c.route("docker.io").is_none());
    }

    #[test]
    fn the_file_reads_with_defaults_and_refuses_unknown_fields() {
        let c: MirrorConfig = serde_json::from_str(
            r#"{"upstreams":[{"prefix":"docker.io","url":"https://registry-1.docker.io"}]}"#,
        )
        .unwrap();
        assert_eq!(c.upstreams[0].tag_freshness_seconds, 300);
        c.validate().unwrap();
        assert!(
            serde_json::from_str::<MirrorConfig>(
                r#"{"upstreams":[{"prefix":"docker.io","url":"https://x","tls":1}]}"#
            )
            .is_err()
        );
        let back: MirrorConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_prefixes_urls_and_half_credentials_are_refused() {
        for p in ["team", "Docker.io", "-a.io", "a..io", "a.io:5000"] {
            let c = MirrorConfig {
                upstreams: vec![upstream(p)],
            };
            assert!(c.validate().is_err(), "{p}");
        }
        for p in ["docker.io", "registry.k8s.io", "127.0.0.1", "localhost"] {
            let c = MirrorConfig {
                upstreams: vec![upstream(p)],
            };
            assert!(c.validate().is_ok(), "{p}");
        }
        let mut u = upstream("quay.io");
        u.url = "ftp://quay.io".into();
        assert!(MirrorConfig { upstreams: vec![u] }.validate().is_err());
        let mut u = upstream("quay.io");
        u.username_file = Some("/u".into());
        assert!(MirrorConfig { upstreams: vec![u] }.validate().is_err());
        let c = MirrorConfig {
            upstreams: vec![upstream("quay.io"), upstream("quay.io")],
        };
        assert!(c.validate().is_err());
        let mut u = upstream("quay.io");
        u.max_age_seconds = Some(0);
        assert_eq!(
            MirrorConfig { upstreams: vec![u] }.validate(),
            Err(MirrorConfigError::ZeroMaxAge("quay.io".into()))
        );
    }

    #[test]
    fn a_max_size_becomes_a_size_cap_over_the_prefix_and_zero_is_refused() {
        let mut u = upstream("ghcr.io");
        assert_eq!(u.cache_size_cap(), None);
        u.max_size_bytes = Some(20 << 30);
        assert_eq!(
            u.cache_size_cap(),
            Some(CacheSizeCap {
                repositories: "ghcr.io/*".into(),
                max_bytes: 20 << 30,
            })
        );
        let c: MirrorConfig = serde_json::from_str(
            r#"{"upstreams":[{"prefix":"ghcr.io","url":"https://ghcr.io","maxSizeBytes":0}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.validate(),
            Err(MirrorConfigError::ZeroMaxSize("ghcr.io".into()))
        );
    }

    #[test]
    fn a_max_age_becomes_a_keep_within_rule_over_the_prefix_only() {
        let mut u = upstream("docker.io");
        assert_eq!(u.cache_rule(), None);
        u.max_age_seconds = Some(86_400);
        let rule = u.cache_rule().unwrap();
        assert_eq!(rule.repositories, "docker.io/*");
        assert_eq!(rule.keep_within_seconds, Some(86_400));
        assert_eq!(rule.keep_pulled_within_seconds, Some(86_400));
        assert_eq!(rule.keep_last, None);
        assert!(glob_match(&rule.repositories, "docker.io/library/nginx"));
        assert!(!glob_match(&rule.repositories, "team/docker.io"));
        let c: MirrorConfig = serde_json::from_str(
            r#"{"upstreams":[{"prefix":"docker.io","url":"https://h","maxAgeSeconds":60}]}"#,
        )
        .unwrap();
        assert_eq!(c.upstreams[0].max_age_seconds, Some(60));
    }

    #[test]
    fn repository_patterns_limit_what_is_fetched() {
        let mut u = upstream("docker.io");
        assert!(u.allows("anything/at/all"));
        u.repositories = vec!["library/*".into()];
        assert!(u.allows("library/nginx"));
        assert!(!u.allows("evil/nginx"));
    }
}
