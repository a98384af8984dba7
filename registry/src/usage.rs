//! Storage by namespace: what each namespace's repositories hold, that is
//! the distinct blobs linked into them plus their manifests, each counted
//! once per namespace however many of its repositories hold it. A
//! repository's namespace is [`berth_access::repository::namespace_of`].
//! The web UI shows these figures, quotas (`quota.rs`) limit them, and
//! `GET /berth/v1/usage` and the metrics report them.
//!
//! They come from a walk of the repository tree: revisions and blob links
//! are listed; manifests are read once and cached by digest (they give
//! their blobs' sizes); a linked blob no manifest describes (uploaded for
//! a manifest not pushed yet, or left by a deleted one) is sized by a stat
//! of where it is stored, so what GC has taken no longer counts. The walk
//! is reused for [`TTL`], then done again in the background while the
//! stale figures serve; only the very first caller waits for one.
//!
//! Pushes through this process are added as they are accepted ([`Usage::try_add`]),
//! also while a walk runs (they are replayed onto its result), so a burst
//! of pushes between walks is counted. Pushes through other processes
//! sharing the storage are seen at this process's next walk: with several
//! replicas, the figures are eventually consistent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use berth_access::repository::namespace_of;
use futures_util::StreamExt;
use jiff::Timestamp;

use crate::Store;
use crate::oci::manifest;
use crate::oci::{Digest, Name, Reference};
use crate::storage::StorageError;

/// How long a walk's figures are reused before the next walk.
pub const TTL: Duration = Duration::from_secs(60);
/// Manifests whose sizes are cached at most; past it the cache is emptied.
const MANIFEST_CACHE_MAX: usize = 65_536;
/// Repositories read at once by a walk.
const PARALLEL: usize = 16;

/// A namespace's storage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceUsage {
    pub repositories: usize,
    /// Distinct blobs and manifests, in bytes.
    pub size: u64,
}

/// Content (digest, bytes) a push adds to a repository.
pub type Objects = [(Digest, u64)];

/// The bytes `objects` add to a namespace holding `held`: each digest
/// once, and none it holds already (a re-push, or a layer another of its
/// repositories has, adds nothing).
pub fn new_bytes(held: &HashMap<Digest, u64>, objects: &Objects) -> u64 {
    let mut seen = std::collections::HashSet::new();
    objects
        .iter()
        .filter(|(d, _)| !held.contains_key(d) && seen.insert(d))
        .map(|(_, n)| *n)
        .sum()
}

pub struct Usage {
    store: Arc<Store>,
    state: Mutex<State>,
    /// Held while a walk runs: one at a time.
    walking: Arc<tokio::sync::Mutex<()>>,
    manifests: Mutex<HashMap<Digest, Arc<ManifestSize>>>,
}

/// A manifest's own bytes and the blobs it describes.
struct ManifestSize {
    bytes: u64,
    blobs: Vec<(Digest, u64)>,
}

#[derive(Default)]
struct State {
    namespaces: BTreeMap<String, Namespace>,
    /// When the last walk finished.
    computed: Option<(Instant, Timestamp)>,
    /// While a walk runs: the changes made meanwhile, replayed onto its result.
    journal: Option<Vec<Change>>,
}

#[derive(Default, Clone, Debug)]
struct Namespace {
    repositories: BTreeSet<String>,
    objects: HashMap<Digest, u64>,
    bytes: u64,
}

impl Namespace {
    fn add(&mut self, repository: &str, objects: &Objects) -> Vec<Digest> {
        if !self.repositories.contains(repository) {
            self.repositories.insert(repository.to_owned());
        }
        let mut inserted = Vec::new();
        for (d, n) in objects {
            if !self.objects.contains_key(d) {
                self.objects.insert(d.clone(), *n);
                self.bytes += n;
                inserted.push(d.clone());
            }
        }
        inserted
    }

    fn remove(&mut self, digests: &[Digest]) {
        for d in digests {
            if let Some(n) = self.objects.remove(d) {
                self.bytes -= n;
            }
        }
    }
}

enum Change {
    Add {
        namespace: String,
        repository: String,
        objects: Vec<(Digest, u64)>,
    },
    Remove {
        namespace: String,
        digests: Vec<Digest>,
    },
}

impl Change {
    fn apply(self, namespaces: &mut BTreeMap<String, Namespace>) {
        match self {
            Change::Add {
                namespace,
                repository,
                objects,
            } => {
                namespaces
                    .entry(namespace)
                    .or_default()
                    .add(&repository, &objects);
            }
            Change::Remove { namespace, digests } => {
                if let Some(ns) = namespaces.get_mut(&namespace) {
                    ns.remove(&digests);
                }
            }
        }
    }
}

/// Content added to a namespace for a push in progress: dropped, it is
/// taken out again (the push failed); [`Reservation::keep`] once the push
/// is stored.
#[must_use = "a reservation dropped is released"]
pub struct Reservation {
    usage: Arc<Usage>,
    namespace: String,
    inserted: Vec<Digest>,
    kept: bool,
}

impl Reservation {
    /// The push is stored: its content stays counted.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.kept && !self.inserted.is_empty() {
            self.usage
                .remove(&self.namespace, std::mem::take(&mut self.inserted));
        }
    }
}

impl Usage {
    pub fn new(store: Arc<Store>) -> Arc<Usage> {
        Arc::new(Usage {
            store,
            state: Mutex::default(),
            walking: Arc::new(tokio::sync::Mutex::new(())),
            manifests: Mutex::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether figures are available: the first call walks (and waits);
    /// stale figures start a walk in the background and are used meanwhile.
    /// False only while storage cannot be walked at all.
    pub async fn ensure(self: &Arc<Self>) -> bool {
        let computed = self.state().computed.map(|(at, _)| at);
        match computed {
            Some(at) if at.elapsed() < TTL => true,
            Some(_) => {
                if let Ok(guard) = self.walking.clone().try_lock_owned() {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _walking = guard;
                        if let Err(e) = me.walk().await {
                            tracing::warn!(error = %e, "cannot walk storage for its usage by namespace; the last figures stay");
                        }
                    });
                }
                true
            }
            None => {
                let _walking = self.walking.lock().await;
                if self.state().computed.is_some() {
                    return true;
                }
                match self.walk().await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot walk storage for its usage by namespace");
                        false
                    }
                }
            }
        }
    }

    /// Walks now (after a walk under way, if any): for a periodic refresh,
    /// and for tests.
    pub async fn refresh(&self) -> Result<(), StorageError> {
        let _walking = self.walking.lock().await;
        self.walk().await
    }

    /// Every namespace's storage, walking first if need be (see [`Self::ensure`]).
    pub async fn by_namespace(self: &Arc<Self>) -> Option<BTreeMap<String, NamespaceUsage>> {
        if !self.ensure().await {
            return None;
        }
        Some(self.snapshot().1)
    }

    /// The figures as they are (no walk), and when the last walk finished.
    pub fn snapshot(&self) -> (Option<Timestamp>, BTreeMap<String, NamespaceUsage>) {
        let state = self.state();
        let figures = state
            .namespaces
            .iter()
            .map(|(ns, u)| {
                (
                    ns.clone(),
                    NamespaceUsage {
                        repositories: u.repositories.len(),
                        size: u.bytes,
                    },
                )
            })
            .collect();
        (state.computed.map(|(_, t)| t), figures)
    }

    /// A namespace's bytes now (no walk).
    pub fn bytes(&self, namespace: &str) -> u64 {
        self.state()
            .namespaces
            .get(namespace)
            .map_or(0, |n| n.bytes)
    }

    /// Whether `namespace` holds `digest` now (no walk).
    pub fn holds(&self, namespace: &str, digest: &Digest) -> bool {
        self.state()
            .namespaces
            .get(namespace)
            .is_some_and(|n| n.objects.contains_key(digest))
    }

    /// The bytes `objects` would add to `namespace` now (no walk).
    pub fn would_add(&self, namespace: &str, objects: &Objects) -> u64 {
        let state = self.state();
        match state.namespaces.get(namespace) {
            Some(n) => new_bytes(&n.objects, objects),
            None => new_bytes(&HashMap::new(), objects),
        }
    }

    /// Adds `objects`, pushed to `repository`, to its namespace if `admit`
    /// agrees, given the namespace's bytes and those the push adds; checked
    /// and added at once, so concurrent pushes cannot both take the last
    /// room.
    pub fn try_add<E>(
        self: &Arc<Self>,
        repository: &Name,
        objects: &Objects,
        admit: impl FnOnce(u64, u64) -> Result<(), E>,
    ) -> Result<Reservation, E> {
        let repository = repository.as_str();
        let namespace = namespace_of(repository).to_owned();
        let mut state = self.state();
        let ns = state.namespaces.entry(namespace.clone()).or_default();
        admit(ns.bytes, new_bytes(&ns.objects, objects))?;
        let inserted = ns.add(repository, objects);
        let bytes = ns.bytes;
        if let Some(journal) = &mut state.journal {
            journal.push(Change::Add {
                namespace: namespace.clone(),
                repository: repository.to_owned(),
                objects: objects.to_vec(),
            });
        }
        drop(state);
        crate::metrics::namespace_bytes(&namespace, bytes);
        Ok(Reservation {
            usage: self.clone(),
            namespace,
            inserted,
            kept: false,
        })
    }

    fn remove(&self, namespace: &str, digests: Vec<Digest>) {
        let mut state = self.state();
        let bytes = state.namespaces.get_mut(namespace).map(|ns| {
            ns.remove(&digests);
            ns.bytes
        });
        if let Some(journal) = &mut state.journal {
            journal.push(Change::Remove {
                namespace: namespace.to_owned(),
                digests,
            });
        }
        drop(state);
        if let Some(bytes) = bytes {
            crate::metrics::namespace_bytes(namespace, bytes);
        }
    }

    /// One walk (the caller holds `walking`); its result replaces the
    /// figures, with the changes made meanwhile replayed onto it.
    async fn walk(&self) -> Result<(), StorageError> {
        self.state().journal = Some(Vec::new());
        let result = self.compute().await;
        let mut state = self.state();
        let journal = state.journal.take().unwrap_or_default();
        let mut namespaces = result?;
        for change in journal {
            change.apply(&mut namespaces);
        }
        let gone: Vec<String> = state
            .namespaces
            .keys()
            .filter(|ns| !namespaces.contains_key(*ns))
            .cloned()
            .collect();
        state.namespaces = namespaces;
        state.computed = Some((Instant::now(), Timestamp::now()));
        let figures: Vec<(String, u64)> = state
            .namespaces
            .iter()
            .map(|(ns, u)| (ns.clone(), u.bytes))
            .collect();
        drop(state);
        for ns in gone {
            crate::metrics::namespace_gone(&ns);
        }
        for (ns, bytes) in figures {
            crate::metrics::namespace_bytes(&ns, bytes);
        }
        Ok(())
    }

    async fn compute(&self) -> Result<BTreeMap<String, Namespace>, StorageError> {
        let repositories = self.store.repositories().await?;
        let held = futures_util::stream::iter(repositories)
            .map(|r| async move {
                let objects = self.repository_objects(&r).await;
                (r, objects)
            })
            .buffer_unordered(PARALLEL)
            .collect::<Vec<_>>()
            .await;
        let mut namespaces: BTreeMap<String, Namespace> = BTreeMap::new();
        for (repository, objects) in held {
            let ns = namespaces
                .entry(namespace_of(&repository).to_owned())
                .or_default();
            match objects {
                Ok(objects) => {
                    ns.add(&repository, &objects);
                }
                Err(e) => {
                    ns.add(&repository, &[]);
                    tracing::warn!(repository, error = %e, "cannot size a repository; its namespace's usage is low until the next walk");
                }
            }
        }
        Ok(namespaces)
    }

    /// What a repository holds: its manifests and the blobs linked into it.
    async fn repository_objects(
        &self,
        repository: &str,
    ) -> Result<Vec<(Digest, u64)>, StorageError> {
        let Ok(name) = repository.parse::<Name>() else {
            return Ok(Vec::new());
        };
        let contents = self.store.repository_contents(&name).await?;
        let mut objects = Vec::with_capacity(contents.manifests.len() + contents.blobs.len());
        let mut described: HashMap<Digest, u64> = HashMap::new();
        for digest in contents.manifests {
            if let Some(m) = self.manifest_size(&name, &digest).await? {
                described.extend(m.blobs.iter().cloned());
                objects.push((digest, m.bytes));
            }
        }
        for digest in contents.blobs {
            let size = match described.get(&digest) {
                Some(n) => Some(*n),
                None => self.store.blob_stored_size(&digest).await?,
            };
            if let Some(n) = size {
                objects.push((digest, n));
            }
        }
        Ok(objects)
    }

    async fn manifest_size(
        &self,
        name: &Name,
        digest: &Digest,
    ) -> Result<Option<Arc<ManifestSize>>, StorageError> {
        let cached = self
            .manifests
            .lock()
            .ok()
            .and_then(|m| m.get(digest).cloned());
        if let Some(m) = cached {
            return Ok(Some(m));
        }
        let Some(stored) = self
            .store
            .manifest_get(name, &Reference::Digest(digest.clone()))
            .await?
        else {
            // Deleted while walking.
            return Ok(None);
        };
        let blobs = manifest::parse(&stored.body, Some(&stored.media_type))
            .map(|m| stored_blobs(&m))
            .unwrap_or_default();
        let size = Arc::new(ManifestSize {
            bytes: stored.body.len() as u64,
            blobs,
        });
        if let Ok(mut cache) = self.manifests.lock() {
            if cache.len() >= MANIFEST_CACHE_MAX {
                cache.clear();
            }
            cache.insert(digest.clone(), size.clone());
        }
        Ok(Some(size))
    }
}

/// The blobs a manifest describes that a push stores (config and layers,
/// not foreign layers), with their sizes.
pub fn stored_blobs(m: &manifest::Manifest) -> Vec<(Digest, u64)> {
    m.config
        .iter()
        .chain(&m.layers)
        .filter(|d| !d.is_external())
        .map(|d| (d.digest.clone(), d.size))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[test]
    fn content_already_held_or_repeated_adds_nothing() {
        let held = HashMap::from([(d('a'), 10)]);
        assert_eq!(new_bytes(&held, &[(d('a'), 10)]), 0);
        assert_eq!(
            new_bytes(&held, &[(d('a'), 10), (d('b'), 5), (d('b'), 5)]),
            5
        );
        assert_eq!(new_bytes(&HashMap::new(), &[]), 0);
    }

    #[tokio::test]
    async fn a_push_counts_once_per_namespace_and_a_released_one_not_at_all() {
        let usage = Usage::new(crate::memory_store());
        let app: Name = "team/app".parse().unwrap();
        let web: Name = "team/web".parse().unwrap();
        let ok = |_, _| Ok::<(), ()>(());
        usage.try_add(&app, &[(d('a'), 10)], ok).unwrap().keep();
        // The same layer in another repository of the namespace.
        usage
            .try_add(&web, &[(d('a'), 10), (d('b'), 3)], ok)
            .unwrap()
            .keep();
        assert_eq!(usage.bytes("team"), 13);
        assert_eq!(usage.snapshot().1["team"].repositories, 2);
        // A push that fails after its reservation is taken out again.
        drop(usage.try_add(&app, &[(d('c'), 100)], ok).unwrap());
        assert_eq!(usage.bytes("team"), 13);
        // What admit refuses is not added.
        assert!(
            usage
                .try_add(&app, &[(d('c'), 100)], |used, adding| {
                    assert_eq!((used, adding), (13, 100));
                    Err(())
                })
                .is_err()
        );
        assert_eq!(usage.bytes("team"), 13);
        assert_eq!(usage.would_add("team", &[(d('b'), 3), (d('c'), 7)]), 7);
    }
}
