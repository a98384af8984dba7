//! Storage quotas, the operator's side: the registry enforces the limits
//! it is handed (see [`crate::desired::quota`]); the operator reads back
//! its usage per namespace (`GET /berth/v1/usage`, as the GC record is
//! read: [`crate::gc::fetch`]) into `status.usage`.

use berth_access::quota::{NamespaceUsage, UsageReport};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{NamespaceUsageStatus, UsageStatus};

/// Namespaces listed in `status.usage` at most (the status stays small).
pub const MAX_LISTED: usize = 100;

/// `status.usage` from the registry's report: the [`MAX_LISTED`] fullest
/// namespaces (against their quota; those without one by bytes, after),
/// by name.
pub fn usage_status(report: &UsageReport) -> UsageStatus {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut namespaces: Vec<&NamespaceUsage> = report.namespaces.iter().collect();
    // Fullest first: a fraction of the quota, then bytes.
    let fullness = |u: &NamespaceUsage| match u.quota_bytes {
        Some(0) => f64::INFINITY,
        Some(q) => u.bytes as f64 / q as f64,
        None => -1.0,
    };
    namespaces.sort_by(|a, b| {
        fullness(b)
            .total_cmp(&fullness(a))
            .then(b.bytes.cmp(&a.bytes))
    });
    let omitted = namespaces.len().saturating_sub(MAX_LISTED);
    namespaces.truncate(MAX_LISTED);
    namespaces.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    UsageStatus {
        time: report.computed.parse::<Timestamp>().ok().map(Time),
        namespaces: namespaces
            .into_iter()
            .map(|u| NamespaceUsageStatus {
                namespace: u.namespace.clone(),
                repositories: n(u.repositories),
                used_bytes: n(u.bytes),
                quota_bytes: u.quota_bytes.map(n),
            })
            .collect(),
        omitted: n(omitted as u64),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ns(name: &str, bytes: u64, quota: Option<u64>) -> NamespaceUsage {
        NamespaceUsage {
            namespace: name.into(),
            repositories: 1,
            bytes,
            quota_bytes: quota,
        }
    }

    #[test]
    fn the_report_becomes_the_status_by_name() {
        let report = UsageReport {
            computed: "2026-11-30T10:00:00Z".into(),
            namespaces: vec![ns("b", 10, Some(100)), ns("a", 5, None)],
        };
        let s = usage_status(&report);
        assert_eq!(s.time.unwrap().0.to_string(), "2026-11-30T10:00:00Z");
        let names: Vec<&str> = s.namespaces.iter().map(|n| n.namespace.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(s.namespaces[1].used_bytes, 10);
        assert_eq!(s.namespaces[1].quota_bytes, Some(100));
        assert_eq!(s.namespaces[0].quota_bytes, None);
        assert_eq!(s.omitted, 0);
    }

    #[test]
    fn past_the_cap_the_fullest_namespaces_are_kept() {
        let mut namespaces: Vec<NamespaceUsage> =
            (0..150).map(|i| ns(&format!("n{i:03}"), i, None)).collect();
        namespaces.push(ns("nearly-full", 99, Some(100)));
        let s = usage_status(&UsageReport {
            computed: String::new(),
            namespaces,
        });
        assert_eq!(s.namespaces.len(), MAX_LISTED);
        assert_eq!(s.omitted, 51);
        assert!(s.namespaces.iter().any(|n| n.namespace == "nearly-full"));
        // Without quotas, the largest stay.
        assert!(s.namespaces.iter().any(|n| n.namespace == "n149"));
        assert!(!s.namespaces.iter().any(|n| n.namespace == "n000"));
        assert!(s.time.is_none());
    }
}
