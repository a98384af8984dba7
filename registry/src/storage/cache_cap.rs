//! The pull-through cache's size cap: which cached tags a GC run removes
//! so that one upstream's cached repositories fit in `max_bytes`.
//!
//! The size is what the cached tags reference (manifest bytes, configs,
//! layers, an index's child manifests and theirs), each blob once however
//! many tags share it. Over the cap, tags go least recently used first
//! (the later of their last push, i.e. fetch or re-check, and their last
//! pull), each freeing the blobs no remaining tag references, until the
//! rest fits. A tag a running pod uses is never removed: it is reported
//! and the next one goes instead. A removed tag is only a link, as with
//! retention (`retention.rs`): its content goes through GC's quarantine.
//!
//! [`decide`] is pure; [`Store::image_blobs`] reads what it needs. The
//! whole cap is decided before GC marks any repository, since it spans
//! several.

use std::collections::HashMap;
use std::time::SystemTime;

use super::retention::{InUseIndex, TagInfo};
use super::{StorageError, Store, layout};
use crate::oci::manifest;
use crate::oci::{Digest, Name};

/// How deep indexes may nest before their children are no longer counted.
const MAX_DEPTH: usize = 8;

/// A cached tag as the size cap sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedTag {
    pub repository: String,
    pub tag: TagInfo,
    /// The blobs its image is made of (digest, bytes), each once.
    pub blobs: Vec<(String, u64)>,
}

/// What the cap does to the cached tags.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SizeDecision {
    /// Bytes the cached tags referenced before.
    pub bytes: u64,
    /// Bytes the tags that stay reference.
    pub bytes_after: u64,
    /// (repository, tag) to remove, least recently used first.
    pub remove: Vec<(String, String)>,
    /// (repository, tag) the cap reached but a running pod uses.
    pub kept_in_use: Vec<(String, String)>,
}

/// Which of `tags` go so that the rest reference at most `max_bytes`.
/// Unknown push times count as `now`, as in retention.
pub fn decide(
    max_bytes: u64,
    tags: &[CachedTag],
    now: SystemTime,
    in_use: &InUseIndex,
) -> SizeDecision {
    // Per blob: its size and how many tags reference it.
    let mut refs: HashMap<&str, (u64, usize)> = HashMap::new();
    for t in tags {
        for (digest, size) in &t.blobs {
            refs.entry(digest.as_str()).or_insert((*size, 0)).1 += 1;
        }
    }
    let bytes: u64 = refs.values().map(|(size, _)| size).sum();
    let mut decision = SizeDecision {
        bytes,
        bytes_after: bytes,
        ..SizeDecision::default()
    };
    let last_used = |t: &CachedTag| {
        let pushed = t.tag.pushed.unwrap_or(now);
        t.tag.pulled.map_or(pushed, |p| p.max(pushed))
    };
    let mut order: Vec<&CachedTag> = tags.iter().collect();
    // Least recently used first; ties by name, so the decision does not
    // depend on the listing's order.
    order.sort_by(|a, b| {
        last_used(a)
            .cmp(&last_used(b))
            .then_with(|| a.repository.cmp(&b.repository))
            .then_with(|| a.tag.name.cmp(&b.tag.name))
    });
    for t in order {
        if decision.bytes_after <= max_bytes {
            break;
        }
        let id = (t.repository.clone(), t.tag.name.clone());
        if in_use.uses(&t.repository, &t.tag) {
            decision.kept_in_use.push(id);
            continue;
        }
        for (digest, _) in &t.blobs {
            if let Some((size, count)) = refs.get_mut(digest.as_str()) {
                *count -= 1;
                if *count == 0 {
                    decision.bytes_after -= *size;
                }
            }
        }
        decision.remove.push(id);
    }
    decision
}

impl Store {
    /// The blobs the image `digest` of `name` is made of, with their
    /// sizes: its manifest bytes, and, followed through index children,
    /// every manifest's and its config and layers. What is not in place
    /// (quarantined, unreadable) counts nothing: GC is taking it already.
    /// `sizes` memoizes blob sizes across calls.
    pub(super) async fn image_blobs(
        &self,
        name: &Name,
        digest: &Digest,
        sizes: &mut HashMap<String, u64>,
    ) -> Result<Vec<(String, u64)>, StorageError> {
        let mut out: Vec<(String, u64)> = Vec::new();
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut queue = vec![(digest.clone(), 0usize)];
        while let Some((d, depth)) = queue.pop() {
            if !seen.insert(d.to_string()) {
                continue;
            }
            let key = layout::blob(&d);
            let Some(body) = self.get(&key).await? else {
                continue;
            };
            sizes.insert(d.to_string(), body.len() as u64);
            out.push((d.to_string(), body.len() as u64));
            let media_type = self
                .get(&layout::manifest_revision(name, &d))
                .await?
                .map(|m| String::from_utf8_lossy(&m).into_owned());
            let Ok(parsed) = manifest::parse(&body, media_type.as_deref()) else {
                continue;
            };
            if depth < MAX_DEPTH {
                queue.extend(
                    parsed
                        .manifests
                        .iter()
                        .map(|c| (c.digest.clone(), depth + 1)),
                );
            }
            for b in parsed.required_blobs() {
                let id = b.digest.to_string();
                if !seen.insert(id.clone()) {
                    continue;
                }
                let size = match sizes.get(&id) {
                    Some(s) => *s,
                    None => {
                        let s = self.size(&layout::blob(&b.digest)).await?.unwrap_or(0);
                        sizes.insert(id.clone(), s);
                        s
                    }
                };
                out.push((id, size));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use berth_access::gc::{InUse, InUseImage};
    use std::time::Duration;

    const NOW: u64 = 1_000_000;

    fn at(ago: u64) -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(NOW - ago))
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }

    /// A tag of `repo` pushed `pushed_ago` and pulled `pulled_ago` seconds
    /// ago, made of `blobs` (digest, bytes).
    fn cached(
        repo: &str,
        tag: &str,
        pushed_ago: u64,
        pulled_ago: Option<u64>,
        blobs: &[(&str, u64)],
    ) -> CachedTag {
        CachedTag {
            repository: repo.into(),
            tag: TagInfo {
                name: tag.into(),
                pushed: at(pushed_ago),
                pulled: pulled_ago.and_then(at),
                digest: Some(format!("sha256:{repo}-{tag}")),
            },
            blobs: blobs.iter().map(|(d, n)| ((*d).to_owned(), *n)).collect(),
        }
    }

    fn cache() -> Vec<CachedTag> {
        vec![
            // Pushed (fetched) long ago but pulled a minute ago.
            cached("docker.io/nginx", "1", 9000, Some(60), &[("n", 100)]),
            // Fetched an hour ago, never pulled since.
            cached(
                "docker.io/redis",
                "7",
                3600,
                None,
                &[("r", 100), ("base", 50)],
            ),
            // Fetched and pulled two hours ago.
            cached(
                "docker.io/pg",
                "16",
                7200,
                Some(7200),
                &[("p", 100), ("base", 50)],
            ),
        ]
    }

    #[test]
    fn under_the_cap_nothing_goes_and_shared_blobs_count_once() {
        let d = decide(350, &cache(), now(), &InUseIndex::default());
        assert_eq!(d.bytes, 350);
        assert_eq!(d.bytes_after, 350);
        assert!(d.remove.is_empty() && d.kept_in_use.is_empty());
    }

    #[test]
    fn over_the_cap_the_least_recently_used_go_until_the_rest_fits() {
        // pg goes first (used 2h ago) but frees only its own 100 bytes:
        // `base` stays with redis. Still over, so redis (1h ago) goes too.
        let d = decide(200, &cache(), now(), &InUseIndex::default());
        assert_eq!(
            d.remove,
            vec![
                ("docker.io/pg".to_owned(), "16".to_owned()),
                ("docker.io/redis".to_owned(), "7".to_owned())
            ]
        );
        assert_eq!(d.bytes_after, 100);
        let d = decide(250, &cache(), now(), &InUseIndex::default());
        assert_eq!(d.remove.len(), 1);
        assert_eq!(d.bytes_after, 250);
    }

    #[test]
    fn a_tag_a_pod_runs_is_kept_reported_and_the_next_goes_instead() {
        let in_use = InUseIndex::new(&InUse {
            images: vec![InUseImage {
                repository: "docker.io/pg".into(),
                digest: None,
                tag: Some("16".into()),
            }],
        });
        let d = decide(250, &cache(), now(), &in_use);
        assert_eq!(
            d.kept_in_use,
            vec![("docker.io/pg".to_owned(), "16".to_owned())]
        );
        assert_eq!(
            d.remove,
            vec![("docker.io/redis".to_owned(), "7".to_owned())]
        );
        assert_eq!(d.bytes_after, 250);
    }

    #[test]
    fn a_cap_nothing_can_meet_removes_everything_not_in_use() {
        let in_use = InUseIndex::new(&InUse {
            images: vec![InUseImage {
                repository: "elsewhere".into(),
                digest: Some("sha256:docker.io/nginx-1".into()),
                tag: None,
            }],
        });
        let d = decide(1, &cache(), now(), &in_use);
        assert_eq!(d.remove.len(), 2);
        assert_eq!(d.kept_in_use.len(), 1);
        assert_eq!(d.bytes_after, 100);
    }

    #[test]
    fn the_decision_does_not_depend_on_listing_order() {
        let mut tags = cache();
        tags.push(cached("docker.io/a", "x", 7200, Some(7200), &[("x", 10)]));
        let a = decide(200, &tags, now(), &InUseIndex::default());
        tags.reverse();
        let b = decide(200, &tags, now(), &InUseIndex::default());
        assert_eq!(a, b);
    }
}
