//! Storage quotas per namespace: the config file the operator writes from
//! a `Registry`'s `spec.quotas` (`berth-registry serve --quota-config FILE`
//! re-reads it when it changes), and the usage report the registry serves
//! at `GET /berth/v1/usage`, which the operator copies into
//! `status.usage`. JSON, so both sides share these types.
//!
//! A repository's namespace is its first path component
//! ([`crate::repository::namespace_of`]), the same rule RBAC uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bytes as a short human size in binary units (`512 B`, `1.5 KiB`,
/// `10.0 GiB`): how the registry's refusals, its UI and the operator's
/// Events all write sizes.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The quota file: byte limits per namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaConfig {
    /// The limit of every namespace not in `namespaces`; unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_bytes: Option<u64>,
    /// Limits of single namespaces, overriding `default_bytes`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, u64>,
}

impl QuotaConfig {
    /// The byte limit of `namespace`, if it has one.
    pub fn limit(&self, namespace: &str) -> Option<u64> {
        self.namespaces
            .get(namespace)
            .copied()
            .or(self.default_bytes)
    }

    /// Whether any namespace is limited.
    pub fn is_empty(&self) -> bool {
        self.default_bytes.is_none() && self.namespaces.is_empty()
    }
}

/// What `GET /berth/v1/usage` answers: storage by namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    /// When the registry last walked its storage, RFC 3339 (pushes since
    /// are counted in as they happen).
    pub computed: String,
    /// Sorted by namespace.
    pub namespaces: Vec<NamespaceUsage>,
}

/// One namespace's storage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceUsage {
    pub namespace: String,
    /// Repositories in it.
    pub repositories: u64,
    /// Distinct blobs linked into its repositories plus their manifests,
    /// each counted once however many of its repositories hold it.
    pub bytes: u64,
    /// Its limit, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_written_in_binary_units() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(10 << 30), "10.0 GiB");
    }

    #[test]
    fn a_namespace_of_its_own_overrides_the_default() {
        let c: QuotaConfig =
            serde_json::from_str(r#"{"defaultBytes":100,"namespaces":{"team-a":500,"frozen":0}}"#)
                .unwrap();
        assert_eq!(c.limit("team-a"), Some(500));
        assert_eq!(c.limit("frozen"), Some(0));
        assert_eq!(c.limit("other"), Some(100));
        assert_eq!(QuotaConfig::default().limit("other"), None);
        assert!(QuotaConfig::default().is_empty());
    }

    #[test]
    fn an_unknown_field_is_refused() {
        assert!(serde_json::from_str::<QuotaConfig>(r#"{"default":1}"#).is_err());
    }
}
