//! Retention: which tags a GC run removes before it marks.
//!
//! Per repository, the first rule of the [`RetentionConfig`] whose glob
//! matches decides (a repository no rule matches keeps every tag). A tag
//! stays if a `protect` glob matches it, if it is among the newest
//! `keep_last` of the unprotected tags (by when it was last pushed), if it
//! was pushed within `keep_within`, if its manifest was pulled (by any tag
//! or by digest: the last-pulled record of `pulls.rs`) within
//! `keep_pulled_within`, or if a running pod uses it (its name or its
//! digest is in the [`InUse`] list the operator keeps). Everything
//! else is removed. A removed tag is only a link: the manifest it pointed
//! at becomes unreachable and goes through GC's quarantine like any other
//! (`gc.rs`), so a push that raced the removal still gets its blobs back.
//!
//! The decision ([`decide`]) is a pure function of the rule, the tags with
//! their push and pull times and targets, and what is in use; [`Store`]
//! only reads the tags (and the repository's last-pulled record) and
//! removes what it returns, each only if the tag still points where it did
//! and was not pushed again meanwhile.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use berth_access::config::glob_match;
pub use berth_access::gc::{InUse, RetentionConfig, RetentionRule};

use super::{StorageError, Store, layout};
use crate::oci::{Digest, Name, Tag};

/// A tag as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    pub name: String,
    /// When it was last pushed; `None` (unknown) counts as just now.
    pub pushed: Option<SystemTime>,
    /// When its target was last pulled (by any tag or by digest); `None`:
    /// not since the last-pulled record began.
    pub pulled: Option<SystemTime>,
    /// What it points at; `None` if unreadable.
    pub digest: Option<String>,
}

/// What a rule does to one repository's tags.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Tags to remove, newest first.
    pub remove: Vec<String>,
    /// Tags the rule would remove but a running pod uses.
    pub kept_in_use: Vec<String>,
}

/// The in-use list, indexed: digests for every repository (a pod may name
/// the registry by any of its hosts, and a digest is the same content in
/// any repository), tags per repository.
#[derive(Debug, Default, Clone)]
pub struct InUseIndex {
    digests: HashSet<String>,
    tags: HashSet<(String, String)>,
}

impl InUseIndex {
    pub fn new(in_use: &InUse) -> Self {
        let mut index = InUseIndex::default();
        for image in &in_use.images {
            if let Some(d) = &image.digest {
                index.digests.insert(d.clone());
            }
            if let Some(t) = &image.tag {
                index.tags.insert((image.repository.clone(), t.clone()));
            }
        }
        index
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty() && self.tags.is_empty()
    }

    /// The in-use digests, parsed (unparsable entries are skipped).
    pub fn digests(&self) -> impl Iterator<Item = Digest> + '_ {
        self.digests.iter().filter_map(|d| d.parse().ok())
    }

    pub fn uses_digest(&self, digest: &str) -> bool {
        self.digests.contains(digest)
    }

    pub(super) fn uses(&self, repository: &str, tag: &TagInfo) -> bool {
        self.tags
            .contains(&(repository.to_owned(), tag.name.clone()))
            || tag.digest.as_deref().is_some_and(|d| self.uses_digest(d))
    }
}

/// Which of `repository`'s `tags` `rule` removes at `now`.
pub fn decide(
    rule: &RetentionRule,
    repository: &str,
    tags: &[TagInfo],
    now: SystemTime,
    in_use: &InUseIndex,
) -> Decision {
    let mut decision = Decision::default();
    // A rule that keeps by neither count nor age removes nothing: it may
    // be there only for `untagged_after`.
    if !rule.removes_tags() {
        return decision;
    }
    let mut candidates: Vec<&TagInfo> = tags
        .iter()
        .filter(|t| !rule.protect.iter().any(|p| glob_match(p, &t.name)))
        .collect();
    // Newest first; unknown push times as newest; ties by name, so the
    // decision does not depend on the listing's order.
    candidates.sort_by(|a, b| {
        let at = a.pushed.unwrap_or(now);
        let bt = b.pushed.unwrap_or(now);
        bt.cmp(&at).then_with(|| a.name.cmp(&b.name))
    });
    let keep_last = rule.keep_last.map_or(0, |n| n as usize);
    let window = rule.keep_within_seconds.map(Duration::from_secs);
    let pulled_window = rule.keep_pulled_within_seconds.map(Duration::from_secs);
    for (i, tag) in candidates.into_iter().enumerate() {
        if i < keep_last {
            continue;
        }
        let age = now
            .duration_since(tag.pushed.unwrap_or(now))
            .unwrap_or_default();
        if window.is_some_and(|w| age < w) {
            continue;
        }
        // A pull time in the future (another replica's clock) counts as now.
        let pulled_ago = tag
            .pulled
            .map(|p| now.duration_since(p).unwrap_or_default());
        if pulled_window.is_some_and(|w| pulled_ago.is_some_and(|a| a < w)) {
            continue;
        }
        if in_use.uses(repository, tag) {
            decision.kept_in_use.push(tag.name.clone());
        } else {
            decision.remove.push(tag.name.clone());
        }
    }
    decision
}

impl Store {
    /// The tags of `name` with when each was last pushed, when its target
    /// was last pulled, and its target.
    pub(super) async fn tag_infos(&self, name: &Name) -> Result<Vec<TagInfo>, StorageError> {
        let pulls = self.last_pulled_all(name).await?;
        let mut out = Vec::new();
        for tag in self.list(&layout::tags_dir(name)).await? {
            let Ok(t) = tag.parse::<Tag>() else { continue };
            let key = layout::tag(name, &t);
            let pushed = self
                .driver
                .modified(&key)
                .await
                .map_err(|e| StorageError::new("stat", &key, e))?;
            let digest = self.tag_target(name, &t).await?.map(|d| d.to_string());
            let pulled = digest
                .as_ref()
                .and_then(|d| pulls.get(d))
                .and_then(|s| u64::try_from(*s).ok())
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
            out.push(TagInfo {
                name: tag,
                pushed,
                pulled,
                digest,
            });
        }
        Ok(out)
    }

    /// Removes `tag` if it still is as retention saw it (same target, not
    /// pushed since): a push of that tag between the decision and now wins.
    /// Returns whether it was removed.
    pub(super) async fn remove_tag_if_unchanged(
        &self,
        name: &Name,
        seen: &TagInfo,
    ) -> Result<bool, StorageError> {
        let Ok(tag) = seen.name.parse::<Tag>() else {
            return Ok(false);
        };
        let key = layout::tag(name, &tag);
        // The lock keeps this process's own pushes of the tag out; pushes
        // through other replicas are caught by the version (which every
        // write of the tag changes, or, on object storage, every write of
        // another target) and the push time.
        let _repo = self.repo_locks.lock(name).await;
        let Some((raw, version)) = self.get_versioned(&key).await? else {
            return Ok(false);
        };
        let target = super::parse_tag_target(&raw).map(|d| d.to_string());
        let pushed = self
            .driver
            .modified(&key)
            .await
            .map_err(|e| StorageError::new("stat", &key, e))?;
        if target != seen.digest || pushed != seen.pushed {
            return Ok(false);
        }
        // Compare-and-swap: a push of the tag through another process
        // after the read above keeps its tag.
        self.driver
            .delete_if(&key, &version)
            .await
            .map_err(|e| StorageError::new("delete", &key, e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use berth_access::gc::InUseImage;

    const NOW: u64 = 1_000_000;

    fn tag(name: &str, age_secs: u64, digest: &str) -> TagInfo {
        TagInfo {
            name: name.into(),
            pushed: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(NOW - age_secs)),
            pulled: None,
            digest: Some(format!("sha256:{digest}")),
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn rule() -> RetentionRule {
        RetentionRule {
            repositories: "*".into(),
            ..RetentionRule::default()
        }
    }

    fn tags() -> Vec<TagInfo> {
        vec![
            tag("b1", 500, "1"),
            tag("b2", 400, "2"),
            tag("b3", 300, "3"),
            tag("latest", 1000, "3"),
            tag("v1.0", 2000, "0"),
            tag("b4", 100, "4"),
        ]
    }

    #[test]
    fn keep_last_keeps_the_newest_unprotected_tags_and_removes_the_rest() {
        let r = RetentionRule {
            keep_last: Some(2),
            protect: vec!["latest".into(), "v*".into()],
            ..rule()
        };
        let d = decide(&r, "team/app", &tags(), now(), &InUseIndex::default());
        assert_eq!(d.remove, vec!["b2", "b1"]);
        assert!(d.kept_in_use.is_empty());
    }

    #[test]
    fn without_protection_keep_last_counts_every_tag() {
        let r = RetentionRule {
            keep_last: Some(3),
            ..rule()
        };
        let d = decide(&r, "team/app", &tags(), now(), &InUseIndex::default());
        assert_eq!(d.remove, vec!["b1", "latest", "v1.0"]);
    }

    #[test]
    fn keep_within_keeps_tags_pushed_inside_the_window() {
        let r = RetentionRule {
            keep_within_seconds: Some(350),
            ..rule()
        };
        let d = decide(&r, "team/app", &tags(), now(), &InUseIndex::default());
        assert_eq!(d.remove, vec!["b2", "b1", "latest", "v1.0"]);
    }

    #[test]
    fn keep_last_and_keep_within_each_keep_what_they_keep() {
        let r = RetentionRule {
            keep_last: Some(1),
            keep_within_seconds: Some(450),
            ..rule()
        };
        let d = decide(&r, "team/app", &tags(), now(), &InUseIndex::default());
        assert_eq!(d.remove, vec!["b1", "latest", "v1.0"]);
    }

    #[test]
    fn a_rule_with_no_keep_removes_nothing() {
        let r = RetentionRule {
            untagged_after_seconds: Some(60),
            protect: vec!["latest".into()],
            ..rule()
        };
        let d = decide(&r, "team/app", &tags(), now(), &InUseIndex::default());
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn tags_a_pod_runs_by_digest_or_by_name_are_kept_and_reported() {
        let r = RetentionRule {
            keep_last: Some(1),
            ..rule()
        };
        let in_use = InUseIndex::new(&InUse {
            images: vec![
                InUseImage {
                    repository: "elsewhere/app".into(),
                    digest: Some("sha256:1".into()),
                    tag: None,
                },
                InUseImage {
                    repository: "team/app".into(),
                    digest: None,
                    tag: Some("v1.0".into()),
                },
                InUseImage {
                    repository: "other/app".into(),
                    digest: None,
                    tag: Some("b2".into()),
                },
            ],
        });
        let d = decide(&r, "team/app", &tags(), now(), &in_use);
        // b1 by its digest (whatever repository named it), v1.0 by its name
        // in this repository; b2 is named in another repository only.
        assert_eq!(d.kept_in_use, vec!["b1", "v1.0"]);
        assert_eq!(d.remove, vec!["b3", "b2", "latest"]);
    }

    #[test]
    fn a_tag_of_unknown_age_counts_as_just_pushed() {
        let mut t = tags();
        t.push(TagInfo {
            name: "mystery".into(),
            pushed: None,
            pulled: None,
            digest: None,
        });
        let r = RetentionRule {
            keep_within_seconds: Some(10),
            ..rule()
        };
        let d = decide(&r, "team/app", &t, now(), &InUseIndex::default());
        assert!(!d.remove.contains(&"mystery".to_owned()));
        assert_eq!(d.remove.len(), 6);
    }

    #[test]
    fn the_decision_does_not_depend_on_listing_order() {
        let r = RetentionRule {
            keep_last: Some(2),
            ..rule()
        };
        let mut t = tags();
        let a = decide(&r, "x", &t, now(), &InUseIndex::default());
        t.reverse();
        let b = decide(&r, "x", &t, now(), &InUseIndex::default());
        assert_eq!(a, b);
    }

    fn pulled(mut t: TagInfo, ago_secs: u64) -> TagInfo {
        t.pulled = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(NOW - ago_secs));
        t
    }

    #[test]
    fn keep_pulled_within_keeps_tags_pulled_inside_the_window_however_old() {
        let r = RetentionRule {
            keep_pulled_within_seconds: Some(3600),
            ..rule()
        };
        let t = vec![
            // Pushed long ago, pulled a minute ago: stays.
            pulled(tag("old-but-pulled", 90_000, "1"), 60),
            // Pulled, but before the window: goes.
            pulled(tag("pulled-long-ago", 90_000, "2"), 7200),
            // Never pulled since the record began: goes, however fresh.
            tag("never-pulled", 10, "3"),
        ];
        let d = decide(&r, "team/app", &t, now(), &InUseIndex::default());
        assert_eq!(d.remove, vec!["never-pulled", "pulled-long-ago"]);
    }

    #[test]
    fn pushed_or_pulled_within_keeps_either_and_a_future_pull_counts_as_now() {
        let r = RetentionRule {
            keep_within_seconds: Some(300),
            keep_pulled_within_seconds: Some(300),
            ..rule()
        };
        let mut ahead = tag("pulled-by-a-fast-clock", 5000, "4");
        ahead.pulled = Some(now() + Duration::from_secs(30));
        let t = vec![
            tag("pushed-now", 10, "1"),
            pulled(tag("pulled-now", 5000, "2"), 10),
            pulled(tag("neither", 5000, "3"), 5000),
            ahead,
        ];
        let d = decide(&r, "team/app", &t, now(), &InUseIndex::default());
        assert_eq!(d.remove, vec!["neither"]);
    }

    #[test]
    fn an_unpulled_tag_a_pod_runs_is_kept_and_reported() {
        let r = RetentionRule {
            keep_pulled_within_seconds: Some(60),
            ..rule()
        };
        let in_use = InUseIndex::new(&InUse {
            images: vec![InUseImage {
                repository: "team/app".into(),
                digest: Some("sha256:1".into()),
                tag: None,
            }],
        });
        let t = vec![tag("a", 100, "1"), tag("b", 100, "2")];
        let d = decide(&r, "team/app", &t, now(), &in_use);
        assert_eq!(d.kept_in_use, vec!["a"]);
        assert_eq!(d.remove, vec!["b"]);
    }
}
