//! Online garbage collection: mark and sweep while the registry serves
//! pushes and pulls, with several registry processes sharing one store and
//! no lock between them (object storage has none to share).
//!
//! # What goes
//!
//! Per repository, the roots are its tags and its revisions younger than
//! the grace period. A manifest is reachable from a root, from a reachable
//! index (its `manifests`), or as a referrer whose subject is reachable (read
//! from the referrer's own `subject` field, so a lost `_referrers` entry
//! cannot orphan a signature). Unreachable revisions older than the grace
//! go; so do blobs (layers, configs, manifest bytes) that no reachable
//! manifest of any repository references and that are older than the grace.
//! A referrer goes with its subject (it is reachable exactly while its
//! subject is), never before. Upload sessions (`_uploads`) are never
//! touched: their bytes are not blobs until the upload completes. Layer
//! links whose blob is gone everywhere are removed, and so is the
//! `_referrers` entry of a revision that is gone.
//!
//! # Retention and images in use
//!
//! Before a repository is marked, its retention rule (if any, see
//! `retention.rs`) removes tags: the manifests they alone reached become
//! unreachable and take the same path as any other (quarantine, then
//! delete), so the guarantee below holds for them too. Digests in the
//! operator's in-use list are roots in every repository that holds them,
//! with everything they reference, however old and untagged. The
//! pull-through cache's size caps (`cache_cap.rs`) span repositories, so
//! they are decided before any repository is marked, and the tags they
//! remove go with that repository's retention.
//!
//! # The race, and why it cannot happen here
//!
//! Distribution and Harbor lose layers this way: a client learns a blob
//! exists (HEAD, a mount, an upload of bytes already stored), GC decides
//! the blob is unreferenced and old and deletes it, then the client's
//! manifest PUT commits a manifest that references it. berth never deletes
//! in one step. A run of GC:
//!
//! 1. takes its start time `s`, then marks (reading each repository after `s`);
//! 2. **settles the quarantine**: every quarantined object that the mark
//!    found reachable is moved back; one that is unreachable and whose batch
//!    `b` satisfies `b + Q <= s` (Q, the quarantine) is deleted for good;
//! 3. **quarantines** what is unreachable and older than the grace: it is
//!    *moved* (never deleted) to `_gc/trash/<batch>/<key>`, `<batch>` being
//!    the unix millis when the batch began; a batch takes objects for at
//!    most Q/4 (ε), then a new one starts.
//!
//! Links are never quarantined: a repository keeps its layer links while
//! the blob is in quarantine. Every reader that follows a link and finds
//! the object gone looks in the quarantine and moves it back (blob
//! HEAD/GET, mount, manifest GET, the checks of a manifest PUT). A manifest
//! PUT of `M` checks (`t_c`, `references.rs`), before it writes anything,
//! that everything `M` references transitively (blobs, child manifests,
//! their blobs) is in place, moving back what is quarantined (a blob seen in
//! place a moment before counts only while nothing is quarantined: see
//! `references.rs` for why that is the same); writes `M` (`t_w`); then checks
//! the same closure again, moving back what was quarantined meanwhile, and
//! only then answers 201 (`t_r`). Moves are atomic (a rename; a copy then a
//! delete on object storage): a move back and a final delete of one
//! quarantined object cannot both succeed, and a move back that loses makes
//! the PUT fail rather than succeed.
//!
//! **Invariant.** If a manifest PUT of `M` in repository `R` answered 201,
//! then no object `X` in `M`'s closure is deleted for good while `M` is
//! reachable. Assume D + ε + skew <= Q, where D bounds one PUT's time from
//! `t_c` to `t_r` (milliseconds; the default Q is 10 minutes) and skew the
//! clock difference between registry processes.
//!
//! *Proof.* Suppose run `j` (start `s_j`) deletes quarantined copy `E` of
//! `X`, made at `t_E` in batch `b` (`b <= t_E <= b + ε`), so `b + Q <= s_j`
//! and `X` is unreachable in `j`'s mark.
//! - If `t_E < t_c`: at `t_c` the PUT found `X` in place, or moved it back.
//!   A move back consumes a quarantined copy: either `E` (then `E` is not
//!   there to delete) or another one, and then `X` is in place and deleting
//!   `E` removes a duplicate. If `X` was in place beside `E` (stored again
//!   by an upload), deleting `E` removes a duplicate too. `X` leaves its
//!   place again only by a later quarantine move, a copy with its own
//!   `t_E' > t_c`: the next case.
//! - If `t_c < t_E < t_r`: the second check finds `X` gone and moves it back
//!   before `t_r`. `E` still exists then, since
//!   `t_d > s_j >= b + Q >= t_E - ε + Q > t_c - ε + Q >= t_r - D - ε + Q >= t_r`.
//! - If `t_E > t_r`: then `s_j >= b + Q >= t_E - ε + Q > t_r >= t_w`, so run
//!   `j` read `R` after `M` was written, found `M` reachable and `X` with
//!   it (the mark reads quarantined manifests too): it would have moved `E`
//!   back, not deleted it. Contradiction.
//!
//! So a 201 manifest's closure is always in place or in quarantine, and a
//! reader that reaches a quarantined part moves it back. A link GC removes
//! (the layer link of a blob gone everywhere, the referrer entry of a
//! revision gone everywhere) is checked again after removal and written
//! back if what it points at reappeared; the PUT writes its own referrer
//! entry back if it finds it missing after its commit, and the mark writes
//! back the layer links of reachable manifests, so even a GC killed between
//! the removal and the check leaves a store the next run repairs.
//!
//! Grace protects fresh pushes from being quarantined at all (fewer moves
//! back); safety comes from the quarantine alone, so a grace of zero is
//! correct, and a quarantine of zero is correct only when no registry is
//! serving the store (the offline `berth-registry gc --quarantine 0`).
//!
//! # Cost
//!
//! Memory: one set of 32-byte digest keys for the whole store (live blobs),
//! plus, one repository at a time, its manifests' digests and references;
//! never manifest bodies. Storage calls: a list per directory, two small
//! reads per manifest, a stat per unreferenced blob; no per-blob scan of
//! anything.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_access::config::glob_match;
use berth_access::gc::GcRun;
use berth_access::mirror::CacheSizeCap;
use bytes::Bytes;

use super::cache_cap::{self, CachedTag};
use super::retention::{self, InUse, InUseIndex, RetentionConfig, RetentionRule, TagInfo};
use super::{StorageError, Store, layout};
use crate::oci::manifest::{self, Descriptor};
use crate::oci::{Digest, Name};

/// A digest compacted for the mark sets: its first 32 bytes (all of a
/// sha256, a 256-bit prefix of a sha512: collisions stay out of reach).
pub(super) type Key = [u8; 32];

const ALGORITHMS: [&str; 2] = ["sha256", "sha512"];

/// How deep indexes may nest before the checks of a PUT stop following them.
const MAX_DEPTH: usize = 8;

fn key_of_hex(hex: &str) -> Option<Key> {
    let bytes = hex.as_bytes();
    if bytes.len() < 64 {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, out) in k.iter_mut().enumerate() {
        let nib = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        *out = (nib(bytes[2 * i])? << 4) | nib(bytes[2 * i + 1])?;
    }
    Some(k)
}

pub(super) fn key(d: &Digest) -> Key {
    key_of_hex(d.hex()).unwrap_or([0; 32])
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced blobs and untagged revisions younger than this stay.
    pub grace: Duration,
    /// How long a quarantined object waits before it may be deleted; must
    /// exceed the longest a manifest PUT takes (see the module doc).
    pub quarantine: Duration,
    /// Decide, report, change nothing.
    pub dry_run: bool,
    /// Record every object acted on in [`GcReport::items`].
    pub list: bool,
    /// Tags removed before marking, per repository glob.
    pub retention: RetentionConfig,
    /// Images running pods use: roots, and tags retention keeps.
    pub in_use: InUse,
    /// The pull-through cache's caps, one rule per capped mirror prefix
    /// (`Upstream::cache_rule`): applied to the repositories they match
    /// on top of `retention`, a tag going if either removes it.
    pub cache_rules: Vec<RetentionRule>,
    /// The pull-through cache's size caps, one per capped mirror prefix
    /// (`Upstream::cache_size_cap`): over one, its least recently pulled
    /// cached tags go until the rest fit.
    pub cache_size_caps: Vec<CacheSizeCap>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(3600),
            quarantine: DEFAULT_QUARANTINE,
            dry_run: false,
            list: false,
            retention: RetentionConfig::default(),
            in_use: InUse::default(),
            cache_rules: Vec::new(),
            cache_size_caps: Vec::new(),
        }
    }
}

/// A multipart upload (a blob's commit on object storage) begun longer
/// ago than this (or than the grace, if longer) was abandoned.
pub const ABANDONED_WRITES_AFTER: Duration = Duration::from_secs(3600);

/// The default quarantine: far above any manifest PUT's time.
pub const DEFAULT_QUARANTINE: Duration = Duration::from_secs(600);

/// What a run did (or, dry, would do).
#[derive(Debug, Default, Clone)]
pub struct GcReport {
    pub dry_run: bool,
    pub repositories: usize,
    /// Multipart uploads aborted: left by a process killed mid-commit.
    pub uploads_aborted: usize,
    /// Manifests found reachable.
    pub manifests_kept: usize,
    /// Blobs referenced by reachable manifests (manifest bytes included).
    pub blobs_kept: usize,
    pub manifests_quarantined: usize,
    pub blobs_quarantined: usize,
    pub bytes_quarantined: u64,
    /// Revisions deleted for good.
    pub manifests_deleted: usize,
    /// Blobs deleted for good.
    pub blobs_deleted: usize,
    pub bytes_reclaimed: u64,
    /// Layer links and referrer entries removed with what they pointed at.
    pub links_removed: usize,
    /// Quarantined objects moved back because they are referenced again.
    pub restored: usize,
    /// Links of reachable manifests written back.
    pub links_repaired: usize,
    /// Tags removed (dry: that would be removed) by retention.
    pub tags_removed: usize,
    /// Tags retention would remove, kept because a running pod uses them.
    pub tags_kept_in_use: usize,
    /// Manifests kept only because a running pod uses them.
    pub manifests_kept_in_use: usize,
    pub duration: Duration,
    /// With [`GcOptions::list`]: each object acted on.
    pub items: Vec<GcItem>,
}

impl GcReport {
    /// Objects deleted for good (blobs, revisions, links).
    pub fn objects_reclaimed(&self) -> usize {
        self.blobs_deleted + self.manifests_deleted + self.links_removed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcAction {
    /// Moved (dry: would be moved) to the quarantine.
    Quarantine,
    /// Deleted (dry: would be deleted) for good.
    Delete,
    /// Moved back from the quarantine.
    Restore,
    /// A tag removed (dry: that would be removed) by retention.
    Untag,
    /// Kept only because a running pod uses it (a tag retention would
    /// remove, a manifest nothing else reaches).
    KeepInUse,
}

#[derive(Debug, Clone)]
pub struct GcItem {
    pub action: GcAction,
    /// The storage key (`blobs/...`, `repositories/<name>/_manifests/...`).
    pub key: String,
    pub bytes: Option<u64>,
}

impl std::fmt::Display for GcItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let action = match self.action {
            GcAction::Quarantine => "quarantine",
            GcAction::Delete => "delete",
            GcAction::Restore => "restore",
            GcAction::Untag => "untag",
            GcAction::KeepInUse => "keep (in use)",
        };
        match self.bytes {
            Some(n) => write!(f, "{action} {} ({n} bytes)", self.key),
            None => write!(f, "{action} {}", self.key),
        }
    }
}

/// A manifest of the repository being marked: only digests, never its body.
#[derive(Default)]
struct Node {
    digest: Option<Digest>,
    in_place: bool,
    /// Quarantine batches holding a copy of its revision link.
    trashed: Vec<u64>,
    children: Vec<Digest>,
    subject: Option<Key>,
    /// Blobs that must be in the repository (config, distributable layers).
    blobs: Vec<Digest>,
    /// Its `_referrers` entry (key, descriptor JSON), if it has a subject.
    entry: Option<(String, Bytes)>,
}

/// One repository's manifests as the mark sees them.
struct Graph<'a> {
    nodes: HashMap<Key, Node>,
    /// Subject → referrers, from the referrers' own `subject` fields.
    referrers: HashMap<Key, Vec<Digest>>,
    /// Subject → its `_referrers` directory.
    indexed: HashMap<Key, String>,
    reachable: &'a mut HashSet<Key>,
}

/// One run's state.
struct Run<'a> {
    opts: &'a GcOptions,
    /// Start of the run (unix millis): batches up to `start - quarantine` are settled.
    start: u64,
    /// Batches that existed when the run started, newest first.
    batches: Vec<u64>,
    /// The batch this run quarantines into, and when it began.
    batch: Option<u64>,
    live: HashSet<Key>,
    in_use: InUseIndex,
    /// Per repository, the tags the size caps remove (as the cap saw
    /// them) and the ones they would remove but a pod uses.
    capped: HashMap<String, Vec<TagInfo>>,
    capped_in_use: HashMap<String, Vec<String>>,
    report: GcReport,
}

impl Run<'_> {
    fn settled(&self, batch: u64) -> bool {
        batch.saturating_add(millis(self.opts.quarantine)) <= self.start
    }

    /// The batch to quarantine into now: a new one once the current one is
    /// ε = Q/4 old, so every copy is made within ε of its batch's time.
    fn batch_now(&mut self) -> u64 {
        let now = now_millis();
        let epsilon = (millis(self.opts.quarantine) / 4).max(1);
        match self.batch {
            Some(b) if now.saturating_sub(b) < epsilon => b,
            _ => {
                self.batch = Some(now);
                now
            }
        }
    }

    fn item(&mut self, action: GcAction, key: &str, bytes: Option<u64>) {
        tracing::debug!(?action, key, bytes, dry_run = self.opts.dry_run, "gc");
        if self.opts.list {
            self.report.items.push(GcItem {
                action,
                key: key.to_owned(),
                bytes,
            });
        }
    }
}

/// Something a manifest references is gone: before its commit ("verify",
/// the push is refused), or after it ("confirm": the quarantine was
/// shorter than the push took, which the module doc rules out).
fn not_found(op: &'static str, key: &str, what: &str) -> StorageError {
    if op == "confirm" {
        tracing::error!(
            key,
            "{what} after a manifest's commit: raise the GC quarantine well above the longest manifest PUT"
        );
    }
    StorageError::new(
        op,
        key,
        io::Error::new(io::ErrorKind::NotFound, what.to_owned()),
    )
}

impl Store {
    /// One garbage collection run (see the module doc). Safe to run while
    /// this and other processes serve the same storage, and to interrupt:
    /// the next run finishes what one left.
    pub async fn gc(&self, opts: &GcOptions) -> Result<GcReport, StorageError> {
        let began = Instant::now();
        let start = now_millis();
        let mut run = Run {
            opts,
            start,
            batches: self.trash_batches().await?,
            batch: None,
            live: HashSet::new(),
            in_use: InUseIndex::new(&opts.in_use),
            capped: HashMap::new(),
            capped_in_use: HashMap::new(),
            report: GcReport {
                dry_run: opts.dry_run,
                ..GcReport::default()
            },
        };
        let repos = self.gc_repositories(&run.batches).await?;
        run.report.repositories = repos.len();
        self.decide_size_caps(&mut run, &repos).await?;
        for name in &repos {
            self.mark_repository(&mut run, name).await?;
        }
        run.report.blobs_kept = run.live.len();
        self.settle_blobs(&mut run).await?;
        self.quarantine_blobs(&mut run).await?;
        for name in &repos {
            self.remove_dangling_links(&mut run, name).await?;
        }
        if !opts.dry_run {
            // Multipart uploads a killed process left (s3.rs): none is this
            // old while running.
            let before = SystemTime::now() - opts.grace.max(ABANDONED_WRITES_AFTER);
            run.report.uploads_aborted = self
                .driver
                .abort_abandoned_writes(before)
                .await
                .map_err(|e| StorageError::new("abort", "abandoned multipart uploads", e))?;
            if run.report.uploads_aborted > 0 {
                tracing::info!(
                    count = run.report.uploads_aborted,
                    "aborted multipart uploads left by a killed process"
                );
            }
            // Every copy in a settled batch was moved back or deleted above.
            for &b in run.batches.iter().filter(|&&b| run.settled(b)) {
                self.delete(&layout::trash_batch(b)).await?;
            }
        }
        run.report.duration = began.elapsed();
        Ok(run.report)
    }

    /// Quarantine batches, newest first.
    pub(super) async fn trash_batches(&self) -> Result<Vec<u64>, StorageError> {
        let mut batches: Vec<u64> = self
            .list(layout::TRASH)
            .await?
            .iter()
            .filter_map(|b| b.parse().ok())
            .collect();
        batches.sort_unstable_by(|a, b| b.cmp(a));
        Ok(batches)
    }

    /// Moves `key` back from the newest quarantine batch holding it; true
    /// if `key` is in place afterwards.
    pub(super) async fn restore_from(
        &self,
        batches: &[u64],
        key: &str,
    ) -> Result<bool, StorageError> {
        for &b in batches {
            let copy = layout::trash(b, key);
            if self.size(&copy).await?.is_none() {
                continue;
            }
            match self.driver.commit(&copy, key).await {
                Ok(()) => {
                    tracing::info!(key, "moved back from GC quarantine: it is referenced");
                    crate::metrics::gc_restored(1);
                    return Ok(true);
                }
                // Another process moved it back, or GC deleted it: see below.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::new("restore", key, e)),
            }
        }
        Ok(self.size(key).await?.is_some())
    }

    /// The size of `key`, moved back from the quarantine first if GC took
    /// it: for readers that followed a link to it.
    pub(super) async fn size_or_restore(&self, key: &str) -> Result<Option<u64>, StorageError> {
        if let Some(n) = self.size(key).await? {
            return Ok(Some(n));
        }
        let batches = self.trash_batches().await?;
        if batches.is_empty() || !self.restore_from(&batches, key).await? {
            return Ok(None);
        }
        self.size(key).await
    }

    /// [`Self::size_or_restore`] for a small object read whole.
    pub(super) async fn get_or_restore(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        if let Some(b) = self.get(key).await? {
            return Ok(Some(b));
        }
        let batches = self.trash_batches().await?;
        if batches.is_empty() || !self.restore_from(&batches, key).await? {
            return Ok(None);
        }
        self.get(key).await
    }

    /// After a manifest is written: its closure is checked again (GC may
    /// have quarantined part of it since [`Store::check_references`]), and
    /// its own revision, bytes and referrer entry are in place.
    pub(super) async fn confirm_references(
        &self,
        name: &Name,
        digest: &Digest,
        parsed: &manifest::Manifest,
        entry: Option<(&str, Bytes)>,
        began: Instant,
    ) -> Result<(), StorageError> {
        let batches = self.trash_batches().await?;
        if !batches.is_empty() {
            for k in [
                layout::manifest_revision(name, digest),
                layout::blob(digest),
            ] {
                if self.size(&k).await?.is_none() && !self.restore_from(&batches, &k).await? {
                    return Err(not_found("confirm", &k, "a manifest just written vanished"));
                }
            }
            self.closure_in_place("confirm", name, parsed, &batches, 0, &mut HashSet::new())
                .await?;
        }
        if let Some((key, json)) = entry
            && self.size(key).await?.is_none()
        {
            // GC removed it while the revision was gone: this push is back.
            self.put(key, json).await?;
        }
        let took = began.elapsed();
        if took > DEFAULT_QUARANTINE / 8 {
            tracing::warn!(
                seconds = took.as_secs_f64(),
                "a manifest PUT took long between its reference check and its commit; GC's quarantine must stay well above this"
            );
        }
        Ok(())
    }

    pub(super) fn closure_in_place<'a>(
        &'a self,
        op: &'static str,
        name: &'a Name,
        parsed: &'a manifest::Manifest,
        batches: &'a [u64],
        depth: usize,
        seen: &'a mut HashSet<Key>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + 'a>>
    {
        Box::pin(async move {
            for d in parsed.required_blobs() {
                let blob = layout::blob(&d.digest);
                if seen.insert(key(&d.digest))
                    && self.size(&blob).await?.is_none()
                    && !self.restore_from(batches, &blob).await?
                {
                    return Err(not_found(op, &blob, "a referenced blob is gone"));
                }
            }
            if depth >= MAX_DEPTH {
                return Ok(());
            }
            for child in parsed.required_manifests() {
                if !seen.insert(key(&child.digest)) {
                    continue;
                }
                let rev = layout::manifest_revision(name, &child.digest);
                let blob = layout::blob(&child.digest);
                let mut media_type = self.get(&rev).await?;
                if media_type.is_none() && self.restore_from(batches, &rev).await? {
                    media_type = self.get(&rev).await?;
                }
                let mut body = self.get(&blob).await?;
                if body.is_none() && self.restore_from(batches, &blob).await? {
                    body = self.get(&blob).await?;
                }
                let (Some(media_type), Some(body)) = (media_type, body) else {
                    return Err(not_found(op, &rev, "a referenced manifest is gone"));
                };
                let media_type = String::from_utf8_lossy(&media_type);
                if let Ok(child) = manifest::parse(&body, Some(&media_type)) {
                    self.closure_in_place(op, name, &child, batches, depth + 1, seen)
                        .await?;
                }
            }
            Ok(())
        })
    }

    /// A small object in place or, failing that, in any quarantine batch
    /// (read only: the mark moves nothing). A miss is tried again with the
    /// batches as they are now: the object may have been moving.
    async fn read_anywhere(
        &self,
        batches: &[u64],
        key: &str,
    ) -> Result<Option<Bytes>, StorageError> {
        let mut fresh = None;
        for _ in 0..2 {
            if let Some(b) = self.get(key).await? {
                return Ok(Some(b));
            }
            for &b in fresh.as_deref().unwrap_or(batches) {
                if let Some(bytes) = self.get(&layout::trash(b, key)).await? {
                    return Ok(Some(bytes));
                }
            }
            fresh = Some(self.trash_batches().await?);
        }
        self.get(key).await
    }

    /// Whether `key` is in place or quarantined.
    async fn anywhere(&self, batches: &[u64], key: &str) -> Result<bool, StorageError> {
        Ok(self.size(key).await?.is_some() || self.in_trash(batches, key).await?)
    }

    async fn in_trash(&self, batches: &[u64], key: &str) -> Result<bool, StorageError> {
        for &b in batches {
            if self.size(&layout::trash(b, key)).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Repositories with manifests or layers, in place or in quarantine.
    async fn gc_repositories(&self, batches: &[u64]) -> Result<Vec<Name>, StorageError> {
        let mut names: HashSet<String> = self
            .repositories_holding_under(layout::REPOSITORIES, &["_manifests", "_layers"])
            .await?
            .into_iter()
            .collect();
        for &b in batches {
            let root = layout::trash(b, layout::REPOSITORIES);
            names.extend(
                self.repositories_holding_under(&root, &["_manifests"])
                    .await?,
            );
        }
        let mut names: Vec<Name> = names.iter().filter_map(|n| n.parse().ok()).collect();
        names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(names)
    }

    /// Marks one repository: adds what its reachable manifests reference to
    /// the live set, settles its quarantined revisions, quarantines its
    /// unreachable old ones, and writes back links of reachable manifests.
    async fn mark_repository(&self, run: &mut Run<'_>, name: &Name) -> Result<(), StorageError> {
        let mut nodes: HashMap<Key, Node> = HashMap::new();
        for alg in ALGORITHMS {
            for hex in self.list(&layout::revisions_dir(name, alg)).await? {
                if let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() {
                    let node = nodes.entry(key(&d)).or_default();
                    node.in_place = true;
                    node.digest = Some(d);
                }
            }
            for &b in &run.batches {
                let dir = layout::trash(b, &layout::revisions_dir(name, alg));
                for hex in self.list(&dir).await? {
                    if let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() {
                        let node = nodes.entry(key(&d)).or_default();
                        node.trashed.push(b);
                        node.digest = Some(d);
                    }
                }
            }
        }
        for node in nodes.values_mut() {
            self.load_node(&run.batches, name, node).await?;
        }
        let mut referrers: HashMap<Key, Vec<Digest>> = HashMap::new();
        for node in nodes.values() {
            if let (Some(s), Some(d)) = (node.subject, &node.digest) {
                referrers.entry(s).or_default().push(d.clone());
            }
        }
        // Subjects with `_referrers` entries: a referrer whose revision was
        // moving while it was listed is still found through its entry.
        let mut indexed: HashMap<Key, String> = HashMap::new();
        for alg in ALGORITHMS {
            let dir = format!("{}/_referrers/{alg}", layout::repository(name));
            for hex in self.list(&dir).await? {
                if let Some(k) = key_of_hex(&hex) {
                    indexed.insert(k, format!("{dir}/{hex}"));
                }
            }
        }
        // Roots: the tags retention keeps, the images pods run, then the
        // revisions younger than the grace.
        let untagged = self.apply_retention(run, name).await?;
        let mut reachable: HashSet<Key> = HashSet::new();
        let mut queue: VecDeque<Digest> = VecDeque::new();
        for tag in self.list(&layout::tags_dir(name)).await? {
            if untagged.contains(&tag) {
                continue;
            }
            let Ok(tag) = tag.parse() else { continue };
            if let Some(d) = self.tag_target(name, &tag).await? {
                queue.push_back(d);
            }
        }
        let indexed_dirs: Vec<String> = indexed.values().cloned().collect();
        let mut graph = Graph {
            nodes,
            referrers,
            indexed,
            reachable: &mut reachable,
        };
        self.reach(name, &mut graph, &mut queue).await?;
        if !run.in_use.is_empty() {
            let used: Vec<Digest> = run.in_use.digests().collect();
            for d in used {
                let k = key(&d);
                if graph.nodes.contains_key(&k) && !graph.reachable.contains(&k) {
                    run.report.manifests_kept_in_use += 1;
                    run.item(
                        GcAction::KeepInUse,
                        &layout::manifest_revision(name, &d),
                        None,
                    );
                    queue.push_back(d);
                }
            }
            self.reach(name, &mut graph, &mut queue).await?;
        }
        let grace = run
            .opts
            .retention
            .rule_for(name.as_str())
            .and_then(|r| r.untagged_after_seconds)
            .map_or(run.opts.grace, Duration::from_secs);
        let now = SystemTime::now();
        for (k, node) in &graph.nodes {
            if graph.reachable.contains(k) || !node.in_place {
                continue;
            }
            let Some(d) = &node.digest else { continue };
            let rev = layout::manifest_revision(name, d);
            let modified = self
                .driver
                .modified(&rev)
                .await
                .map_err(|e| StorageError::new("stat", &rev, e))?;
            // Unknown age: kept, as young.
            if modified.is_none_or(|t| now.duration_since(t).unwrap_or_default() < grace) {
                queue.push_back(d.clone());
            }
        }
        self.reach(name, &mut graph, &mut queue).await?;
        let nodes = graph.nodes;

        // The repository's layer links, to write back missing ones.
        let links = if run.opts.dry_run || reachable.is_empty() {
            HashSet::new()
        } else {
            self.layer_links(name).await?
        };
        for (k, node) in &nodes {
            let Some(d) = &node.digest else { continue };
            let rev = layout::manifest_revision(name, d);
            if reachable.contains(k) {
                run.report.manifests_kept += 1;
                run.live.insert(*k);
                run.live.extend(node.children.iter().map(key));
                for b in &node.blobs {
                    run.live.insert(key(b));
                }
                self.keep_revision(run, &rev, node).await?;
                if !run.opts.dry_run {
                    self.repair_links(run, name, node, &links).await?;
                }
            } else {
                self.drop_revision(run, &rev, node).await?;
            }
        }
        self.remove_orphan_entries(run, name, &nodes, indexed_dirs)
            .await
    }

    /// The retention and cache-age rules that apply to `name` and may
    /// remove tags.
    fn tag_rules<'o>(opts: &'o GcOptions, name: &Name) -> Vec<&'o RetentionRule> {
        opts.retention
            .rule_for(name.as_str())
            .into_iter()
            .chain(
                opts.cache_rules
                    .iter()
                    .filter(|r| glob_match(&r.repositories, name.as_str())),
            )
            .filter(|r| r.removes_tags())
            .collect()
    }

    /// Decides the cache's size caps over the repositories they cover
    /// (see `cache_cap.rs`), counting only the tags retention and the age
    /// cap leave; [`Self::apply_retention`] removes what they decide.
    async fn decide_size_caps(
        &self,
        run: &mut Run<'_>,
        repos: &[Name],
    ) -> Result<(), StorageError> {
        let opts = run.opts;
        let now = SystemTime::now();
        let mut sizes: HashMap<String, u64> = HashMap::new();
        for cap in &opts.cache_size_caps {
            let mut cached: Vec<CachedTag> = Vec::new();
            for name in repos
                .iter()
                .filter(|n| glob_match(&cap.repositories, n.as_str()))
            {
                let tags = self.tag_infos(name).await?;
                let mut removed_by_rules: HashSet<String> = HashSet::new();
                for rule in Self::tag_rules(opts, name) {
                    let d = retention::decide(rule, name.as_str(), &tags, now, &run.in_use);
                    removed_by_rules.extend(d.remove);
                }
                for tag in tags {
                    if removed_by_rules.contains(&tag.name) {
                        continue;
                    }
                    let Some(digest) = tag.digest.as_ref().and_then(|d| d.parse::<Digest>().ok())
                    else {
                        continue;
                    };
                    let blobs = self.image_blobs(name, &digest, &mut sizes).await?;
                    cached.push(CachedTag {
                        repository: name.as_str().to_owned(),
                        tag,
                        blobs,
                    });
                }
            }
            let decision = cache_cap::decide(cap.max_bytes, &cached, now, &run.in_use);
            if decision.bytes > cap.max_bytes {
                tracing::info!(
                    repositories = cap.repositories,
                    max_bytes = cap.max_bytes,
                    bytes = decision.bytes,
                    bytes_after = decision.bytes_after,
                    tags_removed = decision.remove.len(),
                    tags_kept_in_use = decision.kept_in_use.len(),
                    dry_run = opts.dry_run,
                    "cache over its size cap: removing the least recently pulled tags"
                );
            }
            if decision.bytes_after > cap.max_bytes {
                tracing::warn!(
                    repositories = cap.repositories,
                    max_bytes = cap.max_bytes,
                    bytes_after = decision.bytes_after,
                    "the cache stays over its size cap: what is left is in use by running pods; raise maxSize"
                );
            }
            for (repository, tag) in decision.remove {
                if let Some(seen) = cached
                    .iter()
                    .find(|c| c.repository == repository && c.tag.name == tag)
                {
                    run.capped
                        .entry(repository)
                        .or_default()
                        .push(seen.tag.clone());
                }
            }
            for (repository, tag) in decision.kept_in_use {
                run.capped_in_use.entry(repository).or_default().push(tag);
            }
        }
        Ok(())
    }

    /// Removes the tags `name`'s retention rule, the cache's age cap and
    /// its size cap do not keep (dry: only counts them); returns their
    /// names, which are no roots in this run.
    async fn apply_retention(
        &self,
        run: &mut Run<'_>,
        name: &Name,
    ) -> Result<HashSet<String>, StorageError> {
        let opts = run.opts;
        let mut removed = HashSet::new();
        let rules = Self::tag_rules(opts, name);
        let capped = run.capped.remove(name.as_str()).unwrap_or_default();
        let capped_in_use = run.capped_in_use.remove(name.as_str()).unwrap_or_default();
        if rules.is_empty() && capped.is_empty() && capped_in_use.is_empty() {
            return Ok(removed);
        }
        let mut tags = if rules.is_empty() {
            Vec::new()
        } else {
            self.tag_infos(name).await?
        };
        let now = SystemTime::now();
        let mut remove: Vec<String> = Vec::new();
        let mut kept_in_use: Vec<String> = Vec::new();
        for rule in rules {
            let decision = retention::decide(rule, name.as_str(), &tags, now, &run.in_use);
            for t in decision.remove {
                if !remove.contains(&t) {
                    remove.push(t);
                }
            }
            for t in decision.kept_in_use {
                if !kept_in_use.contains(&t) {
                    kept_in_use.push(t);
                }
            }
        }
        for t in capped_in_use {
            if !kept_in_use.contains(&t) {
                kept_in_use.push(t);
            }
        }
        for seen in capped {
            if !remove.contains(&seen.name) {
                remove.push(seen.name.clone());
            }
            if !tags.iter().any(|i| i.name == seen.name) {
                tags.push(seen);
            }
        }
        for t in &kept_in_use {
            run.report.tags_kept_in_use += 1;
            run.item(
                GcAction::KeepInUse,
                &format!("{}/{t}", layout::tags_dir(name)),
                None,
            );
        }
        for t in remove {
            let Some(seen) = tags.iter().find(|i| i.name == t) else {
                continue;
            };
            if !opts.dry_run && !self.remove_tag_if_unchanged(name, seen).await? {
                tracing::debug!(repository = %name, tag = t, "pushed (or pulled through the cache) again since retention looked: kept");
                continue;
            }
            run.report.tags_removed += 1;
            run.item(
                GcAction::Untag,
                &format!("{}/{t}", layout::tags_dir(name)),
                None,
            );
            removed.insert(t);
        }
        Ok(removed)
    }

    /// Removes `_referrers` entries whose manifest is gone everywhere (a GC
    /// killed between deleting a revision and its entry leaves them). An
    /// entry younger than the quarantine may belong to a PUT in flight
    /// (entry first, revision next) and stays.
    async fn remove_orphan_entries(
        &self,
        run: &mut Run<'_>,
        name: &Name,
        nodes: &HashMap<Key, Node>,
        dirs: Vec<String>,
    ) -> Result<(), StorageError> {
        let now = SystemTime::now();
        for dir in dirs {
            for entry in self.list(&dir).await? {
                let Some((alg, hex)) = entry.split_once('-') else {
                    continue;
                };
                let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                    continue;
                };
                if nodes.contains_key(&key(&d)) {
                    continue;
                }
                let key = format!("{dir}/{entry}");
                let modified = self
                    .driver
                    .modified(&key)
                    .await
                    .map_err(|e| StorageError::new("stat", &key, e))?;
                let old = modified.is_some_and(|t| {
                    now.duration_since(t).unwrap_or_default() >= run.opts.quarantine
                });
                let rev = layout::manifest_revision(name, &d);
                let batches = self.trash_batches().await?;
                if !old || self.anywhere(&batches, &rev).await? {
                    continue;
                }
                run.report.links_removed += 1;
                run.item(GcAction::Delete, &key, None);
                if run.opts.dry_run {
                    continue;
                }
                let Some(json) = self.get(&key).await? else {
                    continue;
                };
                self.delete(&key).await?;
                // A push of that manifest may have landed since the check.
                if self.size(&rev).await?.is_some() {
                    self.put(&key, json).await?;
                    run.report.links_removed -= 1;
                }
            }
        }
        Ok(())
    }

    /// Follows index children and referrers from the queued manifests,
    /// looking up (in place or quarantined, with fresh batch lists) any that
    /// the listing missed because it was moving at that moment.
    async fn reach(
        &self,
        name: &Name,
        graph: &mut Graph<'_>,
        queue: &mut VecDeque<Digest>,
    ) -> Result<(), StorageError> {
        while let Some(d) = queue.pop_front() {
            let k = key(&d);
            if !graph.reachable.insert(k) {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = graph.nodes.entry(k) {
                match self.find_node(name, &d).await? {
                    Some(node) => {
                        slot.insert(node);
                    }
                    None => {
                        tracing::warn!(manifest = %d, repository = %name, "a reachable manifest is gone (a tag or index points at nothing)");
                        continue;
                    }
                }
            }
            if let Some(node) = graph.nodes.get(&k) {
                queue.extend(node.children.iter().cloned());
            }
            if let Some(rs) = graph.referrers.get(&k) {
                queue.extend(rs.iter().cloned());
            }
            if let Some(dir) = graph.indexed.get(&k) {
                for entry in self.list(dir).await? {
                    if let Some((alg, hex)) = entry.split_once('-')
                        && let Ok(r) = format!("{alg}:{hex}").parse::<Digest>()
                    {
                        queue.push_back(r);
                    }
                }
            }
        }
        Ok(())
    }

    /// A manifest the listing did not show: in place or in any quarantine
    /// batch as they are now, a few times over (a move in flight).
    async fn find_node(&self, name: &Name, d: &Digest) -> Result<Option<Node>, StorageError> {
        let rev = layout::manifest_revision(name, d);
        for _ in 0..3 {
            let batches = self.trash_batches().await?;
            let mut node = Node {
                digest: Some(d.clone()),
                ..Node::default()
            };
            node.in_place = self.size(&rev).await?.is_some();
            for &b in &batches {
                if self.size(&layout::trash(b, &rev)).await?.is_some() {
                    node.trashed.push(b);
                }
            }
            if !node.in_place && self.size(&rev).await?.is_some() {
                node.in_place = true;
            }
            if node.in_place || !node.trashed.is_empty() {
                self.load_node(&batches, name, &mut node).await?;
                return Ok(Some(node));
            }
        }
        Ok(None)
    }

    /// Reads a manifest's media type and body (in place or quarantined) for
    /// its references.
    async fn load_node(
        &self,
        batches: &[u64],
        name: &Name,
        node: &mut Node,
    ) -> Result<(), StorageError> {
        let Some(d) = node.digest.clone() else {
            return Ok(());
        };
        let rev = layout::manifest_revision(name, &d);
        let Some(media_type) = self.read_anywhere(batches, &rev).await? else {
            return Ok(());
        };
        let media_type = String::from_utf8_lossy(&media_type).into_owned();
        let Some(body) = self.read_anywhere(batches, &layout::blob(&d)).await? else {
            tracing::warn!(manifest = %d, repository = %name, "a revision's manifest bytes are gone; its references cannot be kept");
            return Ok(());
        };
        let parsed = match manifest::parse(&body, Some(&media_type)) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(manifest = %d, repository = %name, error = %e, "unreadable manifest; its references cannot be kept");
                return Ok(());
            }
        };
        node.children = parsed.manifests.iter().map(|c| c.digest.clone()).collect();
        node.blobs = parsed.required_blobs().map(|b| b.digest.clone()).collect();
        if let Some(subject) = &parsed.subject {
            node.subject = Some(key(&subject.digest));
            let descriptor = Descriptor {
                media_type,
                digest: d.clone(),
                size: body.len() as u64,
                artifact_type: parsed.effective_artifact_type(),
                annotations: parsed.annotations.clone(),
                urls: Vec::new(),
                data: None,
            };
            if let Ok(json) = serde_json::to_vec(&descriptor) {
                node.entry = Some((
                    layout::referrer(name, &subject.digest, &d),
                    Bytes::from(json),
                ));
            }
        }
        Ok(())
    }

    /// A reachable revision: moved back if quarantined; quarantined
    /// duplicates in settled batches deleted.
    async fn keep_revision(
        &self,
        run: &mut Run<'_>,
        rev: &str,
        node: &Node,
    ) -> Result<(), StorageError> {
        if run.opts.dry_run {
            if !node.in_place {
                run.item(GcAction::Restore, rev, None);
            }
            return Ok(());
        }
        if !node.in_place && self.restore_from(&node.trashed, rev).await? {
            run.report.restored += 1;
            run.item(GcAction::Restore, rev, None);
        }
        for &b in node.trashed.iter().filter(|&&b| run.settled(b)) {
            self.delete(&layout::trash(b, rev)).await?;
        }
        Ok(())
    }

    /// An unreachable revision (old: young ones are roots): quarantined if
    /// in place; quarantined copies in settled batches deleted, and with the
    /// last one its referrer entry.
    async fn drop_revision(
        &self,
        run: &mut Run<'_>,
        rev: &str,
        node: &Node,
    ) -> Result<(), StorageError> {
        let dry = run.opts.dry_run;
        if node.in_place {
            run.report.manifests_quarantined += 1;
            run.item(GcAction::Quarantine, rev, None);
            if !dry {
                let b = run.batch_now();
                match self.driver.commit(rev, &layout::trash(b, rev)).await {
                    Ok(()) => {}
                    // Deleted, or quarantined by another process, meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StorageError::new("quarantine", rev, e)),
                }
            }
        }
        let settled: Vec<u64> = node
            .trashed
            .iter()
            .copied()
            .filter(|&b| run.settled(b))
            .collect();
        if settled.is_empty() {
            return Ok(());
        }
        for &b in &settled {
            if !dry {
                self.delete(&layout::trash(b, rev)).await?;
            }
        }
        let gone = !node.in_place && settled.len() == node.trashed.len();
        if !gone {
            return Ok(());
        }
        run.report.manifests_deleted += 1;
        run.item(GcAction::Delete, rev, None);
        if let Some((entry, json)) = &node.entry {
            run.report.links_removed += 1;
            run.item(GcAction::Delete, entry, None);
            if !dry {
                self.delete(entry).await?;
                // A push of the same referrer may have just written it back.
                if self.size(rev).await?.is_some() {
                    self.put(entry, json.clone()).await?;
                }
            }
        }
        Ok(())
    }

    /// The blobs linked into a repository, as keys.
    async fn layer_links(&self, name: &Name) -> Result<HashSet<Key>, StorageError> {
        let mut links = HashSet::new();
        for alg in ALGORITHMS {
            for hex in self.list(&layout::layers_dir(name, alg)).await? {
                if let Some(k) = key_of_hex(&hex) {
                    links.insert(k);
                }
            }
        }
        Ok(links)
    }

    /// Writes back what a reachable manifest needs and an interrupted GC
    /// may have removed: layer links and its referrer entry.
    async fn repair_links(
        &self,
        run: &mut Run<'_>,
        name: &Name,
        node: &Node,
        links: &HashSet<Key>,
    ) -> Result<(), StorageError> {
        for b in &node.blobs {
            if links.contains(&key(b)) {
                continue;
            }
            let blob = layout::blob(b);
            if self.anywhere(&run.batches, &blob).await? {
                self.put(&layout::layer_link(name, b), Bytes::new()).await?;
                run.report.links_repaired += 1;
            } else {
                tracing::error!(blob = %b, repository = %name, "a blob of a reachable manifest is gone");
            }
        }
        if let Some((entry, json)) = &node.entry
            && self.size(entry).await?.is_none()
        {
            self.put(entry, json.clone()).await?;
            run.report.links_repaired += 1;
        }
        Ok(())
    }

    /// Settles quarantined blobs: referenced ones go back, the others in
    /// settled batches are deleted for good.
    async fn settle_blobs(&self, run: &mut Run<'_>) -> Result<(), StorageError> {
        for b in run.batches.clone() {
            let settled = run.settled(b);
            let root = layout::trash(b, "blobs");
            for alg in self.list(&root).await? {
                for prefix in self.list(&format!("{root}/{alg}")).await? {
                    for hex in self.list(&format!("{root}/{alg}/{prefix}")).await? {
                        let Some(k) = key_of_hex(&hex) else { continue };
                        let blob = format!("blobs/{alg}/{prefix}/{hex}");
                        let copy = layout::trash(b, &blob);
                        if run.live.contains(&k) {
                            if run.opts.dry_run {
                                run.item(GcAction::Restore, &blob, None);
                            } else if self.size(&blob).await?.is_some() {
                                self.delete(&copy).await?;
                            } else {
                                match self.driver.commit(&copy, &blob).await {
                                    Ok(()) => {
                                        run.report.restored += 1;
                                        crate::metrics::gc_restored(1);
                                        run.item(GcAction::Restore, &blob, None);
                                    }
                                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                                    Err(e) => return Err(StorageError::new("restore", &blob, e)),
                                }
                            }
                        } else if settled {
                            let bytes = self.size(&copy).await?;
                            if !run.opts.dry_run {
                                self.delete(&copy).await?;
                            }
                            run.report.blobs_deleted += 1;
                            run.report.bytes_reclaimed += bytes.unwrap_or(0);
                            run.item(GcAction::Delete, &blob, bytes);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves unreferenced blobs older than the grace into the quarantine.
    async fn quarantine_blobs(&self, run: &mut Run<'_>) -> Result<(), StorageError> {
        let now = SystemTime::now();
        for alg in self.list("blobs").await? {
            for prefix in self.list(&format!("blobs/{alg}")).await? {
                for hex in self.list(&format!("blobs/{alg}/{prefix}")).await? {
                    let Some(k) = key_of_hex(&hex) else { continue };
                    if run.live.contains(&k) {
                        continue;
                    }
                    let blob = format!("blobs/{alg}/{prefix}/{hex}");
                    let modified = self
                        .driver
                        .modified(&blob)
                        .await
                        .map_err(|e| StorageError::new("stat", &blob, e))?;
                    let old = modified.is_some_and(|t| {
                        now.duration_since(t).unwrap_or_default() >= run.opts.grace
                    });
                    if !old {
                        continue;
                    }
                    let Some(bytes) = self.size(&blob).await? else {
                        continue;
                    };
                    if !run.opts.dry_run {
                        let b = run.batch_now();
                        match self.driver.commit(&blob, &layout::trash(b, &blob)).await {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(StorageError::new("quarantine", &blob, e)),
                        }
                    }
                    run.report.blobs_quarantined += 1;
                    run.report.bytes_quarantined += bytes;
                    run.item(GcAction::Quarantine, &blob, Some(bytes));
                }
            }
        }
        Ok(())
    }

    /// Removes the layer links of a repository whose blob is gone
    /// everywhere, writing one back if its blob reappears meanwhile.
    async fn remove_dangling_links(
        &self,
        run: &mut Run<'_>,
        name: &Name,
    ) -> Result<(), StorageError> {
        // This run's own batches count too.
        let batches = self.trash_batches().await?;
        for alg in ALGORITHMS {
            for hex in self.list(&layout::layers_dir(name, alg)).await? {
                let Some(k) = key_of_hex(&hex) else { continue };
                if run.live.contains(&k) {
                    continue;
                }
                let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                    continue;
                };
                let blob = layout::blob(&d);
                if self.anywhere(&batches, &blob).await? {
                    continue;
                }
                let link = layout::layer_link(name, &d);
                run.report.links_removed += 1;
                run.item(GcAction::Delete, &link, None);
                if run.opts.dry_run {
                    continue;
                }
                self.delete(&link).await?;
                // An upload of the blob may have landed since the check.
                if self.anywhere(&batches, &blob).await? {
                    self.put(&link, Bytes::new()).await?;
                    run.report.links_removed -= 1;
                }
            }
        }
        Ok(())
    }
}

/// Files GC re-reads before every run: the operator rewrites them (a
/// mounted ConfigMap) while the registry serves.
#[derive(Debug, Clone, Default)]
pub struct GcSources {
    /// A [`RetentionConfig`] (JSON).
    pub retention: Option<PathBuf>,
    /// An [`InUse`] list (JSON).
    pub in_use: Option<PathBuf>,
    /// The mirror config (`--mirror-config`, JSON): its upstreams' cache
    /// caps (`maxAgeSeconds`, `maxSizeBytes`) become
    /// [`GcOptions::cache_rules`] and [`GcOptions::cache_size_caps`], for
    /// the online GC and `berth-registry gc` alike.
    pub mirror: Option<PathBuf>,
}

/// A GC input file that cannot be used: the run is skipped, since GC must
/// not run blind to the rules or to what pods use.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "cannot read {path}: {source}; check the file is mounted (the operator's `<registry>-gc` ConfigMap)"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not valid JSON for berth's GC: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Mirror(#[from] crate::mirror::config::ConfigError),
}

impl GcSources {
    /// `base` with the rules and in-use list read from the files.
    pub fn load(&self, base: &GcOptions) -> Result<GcOptions, SourceError> {
        fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SourceError> {
            let bytes = std::fs::read(path).map_err(|source| SourceError::Read {
                path: path.to_owned(),
                source,
            })?;
            serde_json::from_slice(&bytes).map_err(|source| SourceError::Parse {
                path: path.to_owned(),
                source,
            })
        }
        let mut opts = base.clone();
        if let Some(p) = &self.retention {
            opts.retention = read(p)?;
        }
        if let Some(p) = &self.in_use {
            opts.in_use = read(p)?;
        }
        if let Some(p) = &self.mirror {
            let config = crate::mirror::config::load(p)?;
            opts.cache_rules = config.cache_rules();
            opts.cache_size_caps = config.cache_size_caps();
        }
        Ok(opts)
    }
}

impl GcReport {
    /// The record of this run, for [`Store::record_gc_run`].
    pub fn record(&self, error: Option<String>) -> GcRun {
        GcRun {
            finished: jiff::Timestamp::now().to_string(),
            duration_millis: millis(self.duration),
            error,
            tags_removed: self.tags_removed as u64,
            tags_kept_in_use: self.tags_kept_in_use as u64,
            manifests_quarantined: self.manifests_quarantined as u64,
            blobs_quarantined: self.blobs_quarantined as u64,
            bytes_quarantined: self.bytes_quarantined,
            manifests_deleted: self.manifests_deleted as u64,
            blobs_deleted: self.blobs_deleted as u64,
            bytes_reclaimed: self.bytes_reclaimed,
        }
    }
}

impl Store {
    /// Stores the record of the last run (every replica writes its own
    /// runs: the newest wins), for `GET /berth/v1/gc` and the operator.
    pub async fn record_gc_run(&self, run: &GcRun) -> Result<(), StorageError> {
        let json = serde_json::to_vec(run)
            .map_err(|e| StorageError::new("encode", layout::GC_LAST_RUN, io::Error::other(e)))?;
        self.put(layout::GC_LAST_RUN, Bytes::from(json)).await
    }

    /// The record of the last run, if any run was recorded.
    pub async fn last_gc_run(&self) -> Result<Option<GcRun>, StorageError> {
        let Some(raw) = self.get(layout::GC_LAST_RUN).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&raw).ok())
    }
}

/// Runs GC every `interval` (first run one interval after start), with the
/// rules and in-use list read from `sources` before each run; logs each
/// run, counts it in the metrics and records it in storage; runs never
/// overlap.
pub async fn run_periodically(
    store: Arc<Store>,
    interval: Duration,
    base: GcOptions,
    sources: GcSources,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let began = Instant::now();
        let outcome = match sources.load(&base) {
            Ok(opts) => store.gc(&opts).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let record = match outcome {
            Ok(report) => {
                log_report(&report);
                crate::metrics::gc_run(true, &report, report.duration);
                report.record(None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "garbage collection failed; the next run finishes what it left");
                let report = GcReport {
                    duration: began.elapsed(),
                    ..GcReport::default()
                };
                crate::metrics::gc_run(false, &report, report.duration);
                report.record(Some(e))
            }
        };
        if let Err(e) = store.record_gc_run(&record).await {
            tracing::warn!(error = %e, "could not record the garbage collection run");
        }
    }
}

/// One line for a run's results.
pub fn log_report(r: &GcReport) {
    tracing::info!(
        dry_run = r.dry_run,
        repositories = r.repositories,
        manifests_kept = r.manifests_kept,
        blobs_kept = r.blobs_kept,
        manifests_quarantined = r.manifests_quarantined,
        blobs_quarantined = r.blobs_quarantined,
        bytes_quarantined = r.bytes_quarantined,
        manifests_deleted = r.manifests_deleted,
        blobs_deleted = r.blobs_deleted,
        links_removed = r.links_removed,
        objects_reclaimed = r.objects_reclaimed(),
        bytes_reclaimed = r.bytes_reclaimed,
        restored = r.restored,
        tags_removed = r.tags_removed,
        tags_kept_in_use = r.tags_kept_in_use,
        manifests_kept_in_use = r.manifests_kept_in_use,
        links_repaired = r.links_repaired,
        duration_ms = r.duration.as_millis() as u64,
        "garbage collection finished"
    );
}

/// Parses a duration such as `90s`, `10m`, `1h`, `1h30m`, `500ms`, `2d`, or `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("{s:?} is not a duration; write e.g. 30s, 10m, 1h, 1h30m or 500ms");
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let per = match unit {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86400),
            _ => return Err(bad()),
        };
        total += per
            .checked_mul(u32::try_from(n).map_err(|_| bad())?)
            .ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn keys_are_the_digest_bytes() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let k = key_of_hex(hex).unwrap();
        assert_eq!(k[0], 0xe3);
        assert_eq!(k[31], 0x55);
        assert!(key_of_hex("zz").is_none());
    }
}
