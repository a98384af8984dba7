//! What the pages show, read from the store.
//!
//! Manifests and image configs are content-addressed, so they are cached
//! by digest (bounded; emptied when full); whether a repository holds one
//! is still asked of the store each time (a cheap stat), so a cached
//! manifest never shows through a repository that lacks it. Repository
//! summaries (tags, size, last push) are cached for [`SUMMARY_TTL`]: the
//! repository list reads only the summaries of the page it shows. Storage
//! by namespace is [`crate::usage`]'s, shared with quotas.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use jiff::Timestamp;
use serde_json::Value;

use crate::Store;
use crate::oci::manifest::{self, Descriptor, Kind};
use crate::oci::{Digest, Name, Reference, Tag};
use crate::storage::{StorageError, layout};

/// How long a repository's summary is reused.
pub const SUMMARY_TTL: Duration = Duration::from_secs(30);
/// Cached manifests and configs at most (each kind).
const CACHE_MAX: usize = 8192;
/// Configs larger than this are not read (images' are a few KiB).
const CONFIG_MAX: u64 = 1024 * 1024;
/// Referrer tree depth and size shown at most.
const REFERRER_DEPTH: usize = 3;
const REFERRER_MAX: usize = 200;
/// Store reads in flight for one page.
const PARALLEL: usize = 16;

/// A manifest as stored, parsed.
pub struct Image {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
    pub parsed: manifest::Manifest,
    pub json: Value,
}

impl Image {
    pub fn is_index(&self) -> bool {
        self.parsed.kind == Kind::Index
    }

    /// `os/architecture[/variant]` of each child of an index.
    pub fn child_platforms(&self) -> Vec<Option<String>> {
        self.json
            .get("manifests")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|m| platform(m.get("platform"))).collect())
            .unwrap_or_default()
    }

    /// The compressed size of what it references directly (config and
    /// layers; for an index, the child manifests' bytes only).
    pub fn own_size(&self) -> u64 {
        self.parsed.config.as_ref().map_or(0, |c| c.size)
            + self.parsed.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

/// `os/architecture[/variant]` of a platform object.
pub fn platform(p: Option<&Value>) -> Option<String> {
    let p = p?;
    let os = p.get("os")?.as_str()?;
    let arch = p.get("architecture")?.as_str()?;
    Some(match p.get("variant").and_then(Value::as_str) {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    })
}

/// One tag of a repository.
pub struct TagRow {
    pub tag: String,
    pub digest: String,
    /// image, index or artifact (an image with an artifact type).
    pub kind: &'static str,
    pub platforms: Vec<String>,
    pub size: u64,
    pub pushed: Option<Timestamp>,
    /// The last manifest GET of its digest (by this tag, another, or the
    /// digest), if any since pulls were tracked.
    pub pulled: Option<Timestamp>,
}

/// A repository at a glance.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub tags: usize,
    /// Distinct blobs of its tagged images, compressed.
    pub size: u64,
    pub pushed: Option<Timestamp>,
}

/// The namespace a repository belongs to (as storage usage counts it).
pub fn namespace(repository: &str) -> &str {
    berth_access::repository::namespace_of(repository)
}

/// A referrer and those referring to it.
pub struct Referrer {
    pub descriptor: Descriptor,
    pub children: Vec<Referrer>,
}

pub struct Inventory {
    store: Arc<Store>,
    images: Mutex<HashMap<Digest, Arc<Image>>>,
    configs: Mutex<HashMap<Digest, Arc<Value>>>,
    summaries: Mutex<HashMap<String, (Instant, Summary)>>,
}

fn cache_get<K: std::hash::Hash + Eq, V: Clone>(m: &Mutex<HashMap<K, V>>, k: &K) -> Option<V> {
    m.lock().ok()?.get(k).cloned()
}

fn cache_put<K: std::hash::Hash + Eq, V>(m: &Mutex<HashMap<K, V>>, k: K, v: V) {
    if let Ok(mut map) = m.lock() {
        if map.len() >= CACHE_MAX {
            map.clear();
        }
        map.insert(k, v);
    }
}

impl Inventory {
    pub fn new(store: Arc<Store>) -> Inventory {
        Inventory {
            store,
            images: Mutex::default(),
            configs: Mutex::default(),
            summaries: Mutex::default(),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The manifest `reference` names in `name`, if it is there.
    pub async fn image(
        &self,
        name: &Name,
        reference: &Reference,
    ) -> Result<Option<Arc<Image>>, StorageError> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => match self.store.tag_target(name, t).await? {
                Some(d) => d,
                None => return Ok(None),
            },
        };
        if let Some(i) = cache_get(&self.images, &digest) {
            return Ok(self
                .store
                .manifest_exists(name, &digest)
                .await?
                .then_some(i));
        }
        let Some(m) = self
            .store
            .manifest_get(name, &Reference::Digest(digest.clone()))
            .await?
        else {
            return Ok(None);
        };
        let Ok(parsed) = manifest::parse(&m.body, Some(&m.media_type)) else {
            return Ok(None);
        };
        let json = serde_json::from_slice(&m.body).unwrap_or(Value::Null);
        let image = Arc::new(Image {
            digest: m.digest,
            media_type: m.media_type,
            body: m.body,
            parsed,
            json,
        });
        cache_put(&self.images, digest, image.clone());
        Ok(Some(image))
    }

    /// An image's config as JSON, if it is a small JSON blob in `name`.
    pub async fn config(
        &self,
        name: &Name,
        image: &Image,
    ) -> Result<Option<Arc<Value>>, StorageError> {
        let Some(c) = &image.parsed.config else {
            return Ok(None);
        };
        if !c.media_type.contains("json") || c.size > CONFIG_MAX {
            return Ok(None);
        }
        if let Some(v) = cache_get(&self.configs, &c.digest) {
            return Ok(Some(v));
        }
        if self.store.blob_size(name, &c.digest).await?.is_none() {
            return Ok(None);
        }
        let key = layout::blob(&c.digest);
        let Some(raw) = self
            .store
            .driver()
            .get(&key)
            .await
            .map_err(|e| StorageError::new("read", &key, e))?
        else {
            return Ok(None);
        };
        let Ok(v) = serde_json::from_slice::<Value>(&raw) else {
            return Ok(None);
        };
        let v = Arc::new(v);
        cache_put(&self.configs, c.digest.clone(), v.clone());
        Ok(Some(v))
    }

    /// The platforms an image or index is for.
    pub async fn platforms(&self, name: &Name, image: &Image) -> Vec<String> {
        if image.is_index() {
            return image.child_platforms().into_iter().flatten().collect();
        }
        match self.config(name, image).await {
            Ok(Some(c)) => platform(Some(&c)).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// The distinct blobs (digest → size) an image or index references,
    /// its children's included.
    pub async fn blobs(
        &self,
        name: &Name,
        image: &Image,
        into: &mut HashMap<Digest, u64>,
    ) -> Result<(), StorageError> {
        let mut add = |i: &Image| {
            for d in i.parsed.config.iter().chain(&i.parsed.layers) {
                into.insert(d.digest.clone(), d.size);
            }
        };
        add(image);
        for child in &image.parsed.manifests {
            if let Some(c) = self
                .image(name, &Reference::Digest(child.digest.clone()))
                .await?
            {
                add(&c);
            }
        }
        Ok(())
    }

    /// The compressed size of an image, or of all of an index's images.
    pub async fn size(&self, name: &Name, image: &Image) -> Result<u64, StorageError> {
        if !image.is_index() {
            return Ok(image.own_size());
        }
        let mut blobs = HashMap::new();
        self.blobs(name, image, &mut blobs).await?;
        Ok(blobs.values().sum())
    }

    /// When a tag was last pointed (its link's modification time).
    pub async fn pushed(&self, name: &Name, tag: &Tag) -> Option<Timestamp> {
        let t = self
            .store
            .driver()
            .modified(&layout::tag(name, tag))
            .await
            .ok()??;
        Timestamp::try_from(t).ok()
    }

    /// The repository's tags with what each points at.
    pub async fn tags(&self, name: &Name) -> Result<Option<Vec<TagRow>>, StorageError> {
        let Some(tags) = self.store.tags(name).await? else {
            return Ok(None);
        };
        let rows = futures_util::stream::iter(tags)
            .map(|t| self.tag_row(name, t))
            .buffered(PARALLEL)
            .collect::<Vec<_>>()
            .await;
        // One small read for the whole table; a failure only hides the column.
        let pulled = self.store.last_pulled_all(name).await.unwrap_or_else(|e| {
            tracing::warn!(repository = %name, error = %e, "ui: cannot read last-pulled times");
            Default::default()
        });
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            if let Some(mut r) = r? {
                r.pulled = pulled
                    .get(&r.digest)
                    .and_then(|s| Timestamp::from_second(*s).ok());
                out.push(r);
            }
        }
        Ok(Some(out))
    }

    async fn tag_row(&self, name: &Name, tag: String) -> Result<Option<TagRow>, StorageError> {
        let Ok(t) = tag.parse::<Tag>() else {
            return Ok(None);
        };
        let Some(image) = self.image(name, &Reference::Tag(t.clone())).await? else {
            // Deleted while listing.
            return Ok(None);
        };
        let kind = if image.is_index() {
            "index"
        } else if image.parsed.effective_artifact_type().is_some_and(|a| {
            !a.starts_with("application/vnd.oci.image.config")
                && !a.starts_with("application/vnd.docker.container.image")
        }) {
            "artifact"
        } else {
            "image"
        };
        Ok(Some(TagRow {
            digest: image.digest.to_string(),
            kind,
            platforms: self.platforms(name, &image).await,
            size: self.size(name, &image).await?,
            pushed: self.pushed(name, &t).await,
            pulled: None,
            tag,
        }))
    }

    /// A repository's summary, cached for [`SUMMARY_TTL`].
    pub async fn summary(&self, repository: &str) -> Result<Summary, StorageError> {
        if let Some((at, s)) = cache_get(&self.summaries, &repository.to_owned())
            && at.elapsed() < SUMMARY_TTL
        {
            return Ok(s);
        }
        let Ok(name) = repository.parse::<Name>() else {
            return Ok(Summary::default());
        };
        let tags = self.store.tags(&name).await?.unwrap_or_default();
        let mut blobs = HashMap::new();
        let mut pushed: Option<Timestamp> = None;
        for tag in &tags {
            let Ok(t) = tag.parse::<Tag>() else { continue };
            self.tag_blobs(&name, &t, &mut blobs).await?;
            let p = self.pushed(&name, &t).await;
            pushed = pushed.max(p);
        }
        let s = Summary {
            tags: tags.len(),
            size: blobs.values().sum(),
            pushed,
        };
        cache_put(
            &self.summaries,
            repository.to_owned(),
            (Instant::now(), s.clone()),
        );
        Ok(s)
    }

    /// Adds the blobs of what `tag` points at to `into`.
    async fn tag_blobs(
        &self,
        name: &Name,
        tag: &Tag,
        into: &mut HashMap<Digest, u64>,
    ) -> Result<(), StorageError> {
        if let Some(image) = self.image(name, &Reference::Tag(tag.clone())).await? {
            self.blobs(name, &image, into).await?;
        }
        Ok(())
    }

    /// Summaries of several repositories, read in parallel.
    pub async fn summaries(&self, repositories: &[String]) -> BTreeMap<String, Summary> {
        futures_util::stream::iter(repositories.iter().cloned())
            .map(|r| async move {
                let s = match self.summary(&r).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(repository = %r, error = %e, "ui: cannot summarise a repository");
                        Summary::default()
                    }
                };
                (r, s)
            })
            .buffered(PARALLEL)
            .collect()
            .await
    }

    /// Forgets a repository's summary (after a delete).
    pub fn forget(&self, repository: &str) {
        if let Ok(mut m) = self.summaries.lock() {
            m.remove(repository);
        }
    }

    /// The referrers of `subject`, and theirs, a few levels deep.
    fn referrers<'a>(
        &'a self,
        name: &'a Name,
        subject: Digest,
        depth: usize,
        budget: &'a mut usize,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Referrer>, StorageError>> + Send + 'a>> {
        Box::pin(async move {
            if depth >= REFERRER_DEPTH || *budget == 0 {
                return Ok(Vec::new());
            }
            let mut out = Vec::new();
            for d in self.store.referrers(name, &subject).await? {
                if *budget == 0 {
                    break;
                }
                *budget -= 1;
                let children = self
                    .referrers(name, d.digest.clone(), depth + 1, &mut *budget)
                    .await?;
                out.push(Referrer {
                    descriptor: d,
                    children,
                });
            }
            Ok(out)
        })
    }

    /// The referrer tree of `subject`.
    pub async fn referrer_tree(
        &self,
        name: &Name,
        subject: &Digest,
    ) -> Result<Vec<Referrer>, StorageError> {
        let mut budget = REFERRER_MAX;
        self.referrers(name, subject.clone(), 0, &mut budget).await
    }
}

/// Every referrer of a tree, depth first (the order to delete them in:
/// deepest first is the reverse).
pub fn flatten(tree: &[Referrer], out: &mut Vec<Descriptor>) {
    for r in tree {
        out.push(r.descriptor.clone());
        flatten(&r.children, out);
    }
}
