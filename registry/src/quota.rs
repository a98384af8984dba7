//! Storage quotas per namespace (`--quota-config`, the operator's
//! `spec.quotas`): a push that would take a namespace past its byte limit
//! is refused with `DENIED` (403) and a message naming the namespace, its
//! quota and its usage, and what to do.
//!
//! Usage is [`crate::usage`]'s: the distinct blobs and manifests the
//! namespace's repositories hold. A push is checked where its size is
//! known and before anything becomes visible: an upload when its bytes are
//! verified, just before the commit (a monolithic POST, or the PUT ending
//! a session); a cross-repository mount before the link; a manifest PUT
//! before it is written. Content the namespace holds already adds nothing,
//! so a re-push is never refused. The check and the count of what it lets
//! through are one step ([`crate::usage::Usage::try_add`]), so concurrent
//! pushes cannot all take the last room; several replicas each check
//! against their own count, which sees the others' pushes at its next
//! walk (a minute at most): together they may overshoot by what they
//! accept within that minute. Cheap checks come first: a new upload into a
//! namespace already at its quota is refused at its POST, and one whose
//! declared size cannot fit before its body is read. A refusal removes
//! only the refused upload's own session: nothing stored is touched.
//!
//! The config file is re-read when it changes (checked every
//! [`RELOAD_EVERY`]): a quota raised in the Registry's spec applies without
//! a restart, once the kubelet has updated the mounted ConfigMap.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use berth_access::quota::{NamespaceUsage as ReportedUsage, QuotaConfig, UsageReport};
use berth_access::repository::namespace_of;

use crate::error::{Code, Error};
use crate::oci::{Digest, Name};
use crate::ui::layout::size;
use crate::usage::{Objects, Reservation, Usage};

/// How often the config file is looked at for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// A push refused: it would take `namespace` past its quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Exceeded {
    pub namespace: String,
    pub quota: u64,
    pub used: u64,
    /// What the push adds, when known (an upload's POST refused early
    /// knows only that the namespace is full).
    pub adding: Option<u64>,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ns = if self.namespace.is_empty() {
            "(no namespace)"
        } else {
            &self.namespace
        };
        match self.adding {
            Some(adding) => write!(
                f,
                "this push would take namespace {ns} past its storage quota: it adds {} to the {} ({} bytes) stored of its {} quota ({} bytes)",
                size(adding),
                size(self.used),
                self.used,
                size(self.quota),
                self.quota,
            )?,
            None => write!(
                f,
                "namespace {ns} has used its storage quota: {} ({} bytes) stored of {} ({} bytes)",
                size(self.used),
                self.used,
                size(self.quota),
                self.quota,
            )?,
        }
        write!(
            f,
            "; delete images from {ns} (their space is freed when garbage collection next runs) or ask for a larger quota for {ns} in the Registry's spec.quotas"
        )
    }
}

impl From<Exceeded> for Error {
    fn from(e: Exceeded) -> Self {
        tracing::info!(
            namespace = e.namespace,
            quota = e.quota,
            used = e.used,
            adding = e.adding,
            "push refused: over the namespace's quota"
        );
        crate::metrics::refusal("quota");
        Error::new(Code::Denied, e.to_string())
    }
}

/// The decision on a push adding `adding` bytes to `namespace`, which holds
/// `used` and may hold `limit`: refused only if something new would go past
/// the limit (adding nothing, as a re-push does, always fits).
pub fn decide(namespace: &str, used: u64, adding: u64, limit: Option<u64>) -> Result<(), Exceeded> {
    match limit {
        Some(quota) if adding > 0 && used.saturating_add(adding) > quota => Err(Exceeded {
            namespace: namespace.to_owned(),
            quota,
            used,
            adding: Some(adding),
        }),
        _ => Ok(()),
    }
}

/// The early decision on a new upload of unknown size: refused once the
/// namespace has no room left at all.
pub fn room(namespace: &str, used: u64, limit: Option<u64>) -> Result<(), Exceeded> {
    match limit {
        Some(quota) if used >= quota => Err(Exceeded {
            namespace: namespace.to_owned(),
            quota,
            used,
            adding: None,
        }),
        _ => Ok(()),
    }
}

/// The quota file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the quota config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the quota config {path} is not a berth quota config (JSON: {{\"defaultBytes\": 10737418240, \"namespaces\": {{\"team\": 53687091200}}}}): {source}"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The limits in force and the usage they are checked against.
pub struct Quotas {
    usage: Arc<Usage>,
    config: RwLock<Arc<QuotaConfig>>,
    /// The file re-read when it changes, and the bytes last read from it.
    file: Option<(PathBuf, Mutex<Vec<u8>>)>,
}

impl Quotas {
    pub fn new(usage: Arc<Usage>, config: QuotaConfig) -> Arc<Quotas> {
        Arc::new(Quotas {
            usage,
            config: RwLock::new(Arc::new(config)),
            file: None,
        })
    }

    /// Limits read from `path` (re-read by [`Self::reload`]).
    pub fn from_file(usage: Arc<Usage>, path: &Path) -> Result<Arc<Quotas>, ConfigError> {
        let (raw, config) = read(path)?;
        Ok(Arc::new(Quotas {
            usage,
            config: RwLock::new(Arc::new(config)),
            file: Some((path.to_owned(), Mutex::new(raw))),
        }))
    }

    /// Re-reads the file if it changed; returns whether the limits did.
    /// An unusable file leaves the limits as they were.
    pub fn reload(&self) -> Result<bool, ConfigError> {
        let Some((path, last)) = &self.file else {
            return Ok(false);
        };
        let raw = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if *last == raw {
            return Ok(false);
        }
        let config = parse(path, &raw)?;
        *last = raw;
        let changed = *self.config() != config;
        self.set(config);
        Ok(changed)
    }

    /// Replaces the limits.
    pub fn set(&self, config: QuotaConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        self.publish_metrics();
    }

    pub fn config(&self) -> Arc<QuotaConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The limit of `namespace`, if any.
    pub fn limit(&self, namespace: &str) -> Option<u64> {
        self.config().limit(namespace)
    }

    pub fn usage(&self) -> &Arc<Usage> {
        &self.usage
    }

    /// A cheap check before a push's bytes arrive: with `digest` (and the
    /// size the client declared, if any), refused if the namespace does not
    /// hold it and it cannot fit; without, refused if the namespace has no
    /// room left.
    pub async fn precheck(
        &self,
        name: &Name,
        digest: Option<&Digest>,
        declared: Option<u64>,
    ) -> Result<(), Exceeded> {
        let namespace = namespace_of(name.as_str());
        let Some(limit) = self.limit(namespace) else {
            return Ok(());
        };
        if !self.usage.ensure().await {
            // Storage cannot be walked: pushes are let through rather
            // than refused for want of a count (logged by the walk).
            return Ok(());
        }
        if let Some(d) = digest
            && self.usage.holds(namespace, d)
        {
            return Ok(());
        }
        let used = self.usage.bytes(namespace);
        match (digest, declared) {
            (Some(_), Some(n)) => decide(namespace, used, n, Some(limit)),
            _ => room(namespace, used, Some(limit)),
        }
    }

    /// Checks `objects` pushed to `name` against its namespace's quota and,
    /// if they fit, counts them: [`Reservation::keep`] once they are
    /// stored. Waits for the first walk of storage if none is done yet.
    pub async fn admit(&self, name: &Name, objects: &Objects) -> Result<Reservation, Exceeded> {
        self.usage.ensure().await;
        self.admit_now(name, objects)
    }

    /// [`Self::admit`] without waiting for a walk (for a commit that
    /// already passed [`Self::precheck`], which waited).
    pub fn admit_now(&self, name: &Name, objects: &Objects) -> Result<Reservation, Exceeded> {
        let namespace = namespace_of(name.as_str());
        let limit = self.limit(namespace);
        self.usage.try_add(name, objects, |used, adding| {
            decide(namespace, used, adding, limit)
        })
    }

    /// Usage and quota per namespace (see [`report`]).
    pub fn report(&self) -> UsageReport {
        report(&self.usage, &self.config())
    }

    /// The quota gauges, one per namespace reported.
    pub fn publish_metrics(&self) {
        for ns in self.report().namespaces {
            crate::metrics::namespace_quota(&ns.namespace, ns.quota_bytes);
        }
    }
}

/// Usage and quota per namespace: every namespace that holds anything,
/// and every one with a quota of its own, as the figures are now.
pub fn report(usage: &Usage, config: &QuotaConfig) -> UsageReport {
    let (computed, figures) = usage.snapshot();
    let mut namespaces: std::collections::BTreeMap<String, ReportedUsage> = figures
        .into_iter()
        .map(|(ns, u)| {
            let quota_bytes = config.limit(&ns);
            (
                ns.clone(),
                ReportedUsage {
                    namespace: ns,
                    repositories: u.repositories as u64,
                    bytes: u.size,
                    quota_bytes,
                },
            )
        })
        .collect();
    for (ns, limit) in &config.namespaces {
        namespaces
            .entry(ns.clone())
            .or_insert_with(|| ReportedUsage {
                namespace: ns.clone(),
                repositories: 0,
                bytes: 0,
                quota_bytes: Some(*limit),
            });
    }
    UsageReport {
        computed: computed.map(|t| t.to_string()).unwrap_or_default(),
        namespaces: namespaces.into_values().collect(),
    }
}

fn read(path: &Path) -> Result<(Vec<u8>, QuotaConfig), ConfigError> {
    let raw = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let config = parse(path, &raw)?;
    Ok((raw, config))
}

fn parse(path: &Path, raw: &[u8]) -> Result<QuotaConfig, ConfigError> {
    serde_json::from_slice(raw).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Keeps quotas current while serving: re-reads the config file when it
/// changes (every [`RELOAD_EVERY`]) and walks storage every
/// [`crate::usage::TTL`], so checks and metrics never wait for a walk.
pub async fn run_periodically(quotas: Arc<Quotas>) {
    let mut reload = tokio::time::interval(RELOAD_EVERY);
    let mut walk = tokio::time::interval(crate::usage::TTL);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    walk.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = reload.tick() => match quotas.reload() {
                Ok(true) => {
                    let c = quotas.config();
                    tracing::info!(default_bytes = c.default_bytes, namespaces = c.namespaces.len(), "quota config changed: new limits in force");
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "quota config not usable; the limits in force stay"),
            },
            _ = walk.tick() => {
                if let Err(e) = quotas.usage.refresh().await {
                    tracing::warn!(error = %e, "cannot walk storage for its usage by namespace; the last figures stay");
                }
                quotas.publish_metrics();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_push_that_fits_is_let_through_and_one_past_the_quota_is_not() {
        assert!(decide("team", 90, 10, Some(100)).is_ok());
        let e = decide("team", 90, 11, Some(100)).unwrap_err();
        assert_eq!((e.used, e.quota, e.adding), (90, 100, Some(11)));
        assert!(decide("team", 90, 1 << 40, None).is_ok());
    }

    #[test]
    fn adding_nothing_always_fits_even_over_the_quota() {
        // A re-push of what the namespace holds, after the quota was lowered.
        assert!(decide("team", 500, 0, Some(100)).is_ok());
        assert!(decide("team", 0, 0, Some(0)).is_ok());
        assert!(decide("team", 0, 1, Some(0)).is_err());
    }

    #[test]
    fn a_new_upload_is_refused_early_only_once_no_room_is_left() {
        assert!(room("team", 99, Some(100)).is_ok());
        assert!(room("team", 100, Some(100)).is_err());
        assert!(room("team", 0, Some(0)).is_err());
        assert!(room("team", 100, None).is_ok());
    }

    #[test]
    fn the_refusal_names_the_namespace_its_quota_its_usage_and_what_to_do() {
        let msg = decide("team-a", 90 << 20, 20 << 20, Some(100 << 20))
            .unwrap_err()
            .to_string();
        for part in [
            "namespace team-a",
            "adds 20.0 MiB",
            "90.0 MiB (94371840 bytes) stored",
            "100.0 MiB quota (104857600 bytes)",
            "delete images from team-a",
            "spec.quotas",
        ] {
            assert!(msg.contains(part), "{part:?} not in {msg:?}");
        }
        let full = room("team-a", 100, Some(100)).unwrap_err().to_string();
        assert!(
            full.starts_with(
                "namespace team-a has used its storage quota: 100 B (100 bytes) stored of 100 B"
            ),
            "{full}"
        );
        let e: Error = room("team-a", 100, Some(100)).unwrap_err().into();
        assert_eq!(e.code, Code::Denied);
    }

    #[test]
    fn a_changed_file_changes_the_limits_and_a_broken_one_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quotas.json");
        std::fs::write(&path, r#"{"defaultBytes":100}"#).unwrap();
        let q = Quotas::from_file(Usage::new(crate::memory_store()), &path).unwrap();
        assert_eq!(q.limit("team"), Some(100));
        assert!(!q.reload().unwrap());
        std::fs::write(&path, r#"{"defaultBytes":100,"namespaces":{"team":500}}"#).unwrap();
        assert!(q.reload().unwrap());
        assert_eq!(q.limit("team"), Some(500));
        std::fs::write(&path, "{not json").unwrap();
        assert!(q.reload().is_err());
        assert_eq!(q.limit("team"), Some(500));
    }
}
