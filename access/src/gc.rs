//! The files the operator hands the registry's garbage collector, and the
//! record of a GC run the registry hands back.
//!
//! The operator writes [`RetentionConfig`] (from `spec.gc.retention`) and
//! [`InUse`] (the images the cluster's pods run from this registry) into a
//! ConfigMap mounted into the registry pod; `berth-registry serve
//! --gc-retention FILE --gc-in-use FILE` re-reads both before every run.
//! The registry records each run as a [`GcRun`]. JSON, so both sides share
//! these types and nothing is parsed twice.

use serde::{Deserialize, Serialize};

/// Which tags GC removes before it marks, per repository glob.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionConfig {
    /// For each repository, the first rule whose glob matches applies; a
    /// repository no rule matches keeps every tag.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RetentionRule>,
}

/// One rule. A tag stays if any of `keep_last`, `keep_within_seconds`,
/// `keep_pulled_within_seconds` or `protect` keeps it (or a running pod
/// uses it); with none of the three `keep_*` set, the rule removes no tag.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionRule {
    /// A repository glob: `*` matches any run of characters (also `/`),
    /// `?` one character.
    pub repositories: String,
    /// Keep the newest N tags (by when each was last pushed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep tags pushed within this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within_seconds: Option<u64>,
    /// Keep tags whose manifest was pulled (by the tag, another tag or
    /// its digest) within this many seconds, as the registry's last-pulled
    /// record (`_pulls/last.json`) has it. A tag never pulled since the
    /// record began is not kept by this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_pulled_within_seconds: Option<u64>,
    /// Tag globs never removed (`latest`, `v*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protect: Vec<String>,
    /// Manifests no tag, index or subject reaches are removed once this
    /// old (instead of after the GC grace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untagged_after_seconds: Option<u64>,
}

impl RetentionRule {
    /// Whether the rule removes tags at all (it may be there only for
    /// `untagged_after_seconds`).
    pub fn removes_tags(&self) -> bool {
        self.keep_last.is_some()
            || self.keep_within_seconds.is_some()
            || self.keep_pulled_within_seconds.is_some()
    }
}

impl RetentionConfig {
    /// The rule for `repository`, if any.
    pub fn rule_for(&self, repository: &str) -> Option<&RetentionRule> {
        self.rules
            .iter()
            .find(|r| crate::config::glob_match(&r.repositories, repository))
    }
}

/// What the cluster's pods run from this registry: GC and retention treat
/// each digest (and all it references) as a root, and never remove a tag
/// named here or pointing at one of these digests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InUse {
    /// Sorted, each once.
    #[serde(default)]
    pub images: Vec<InUseImage>,
}

/// One image a pod runs: its repository on this registry, and its digest
/// (from the pod's `imageID`) and/or the tag its `image:` names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InUseImage {
    pub repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// The record of one GC run, as the registry stores it (`_gc/last-run.json`)
/// and serves it (`GET /berth/v1/gc`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcRun {
    /// When the run finished, RFC 3339.
    pub finished: String,
    pub duration_millis: u64,
    /// The run failed part way (the next run finishes what it left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub tags_removed: u64,
    /// Tags retention would have removed but a running pod uses.
    pub tags_kept_in_use: u64,
    pub manifests_quarantined: u64,
    pub blobs_quarantined: u64,
    pub bytes_quarantined: u64,
    pub manifests_deleted: u64,
    pub blobs_deleted: u64,
    pub bytes_reclaimed: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_applies() {
        let config: RetentionConfig = serde_json::from_str(
            r#"{"rules":[{"repositories":"team/ci-*","keepLast":3},{"repositories":"*","keepWithinSeconds":60}]}"#,
        )
        .unwrap();
        assert_eq!(config.rule_for("team/ci-app").unwrap().keep_last, Some(3));
        assert_eq!(
            config.rule_for("other/app").unwrap().keep_within_seconds,
            Some(60)
        );
        assert!(RetentionConfig::default().rule_for("a").is_none());
    }

    #[test]
    fn a_pulled_within_window_reads_and_makes_a_rule_remove_tags() {
        let config: RetentionConfig = serde_json::from_str(
            r#"{"rules":[{"repositories":"*","keepPulledWithinSeconds":86400}]}"#,
        )
        .unwrap();
        let rule = config.rule_for("team/app").unwrap();
        assert_eq!(rule.keep_pulled_within_seconds, Some(86_400));
        assert!(rule.removes_tags());
        let only_untagged = RetentionRule {
            repositories: "*".into(),
            untagged_after_seconds: Some(60),
            ..RetentionRule::default()
        };
        assert!(!only_untagged.removes_tags());
    }
}
