//! Storage quotas, the operator's side: the registry enforces the limits
//! it is handed (see [`crate::desired::quota`]); the operator reads back
//! its usage per namespace (`GET /berth/v1/usage`, as the GC record is
//! read: [`crate::gc::fetch`]) into `status.usage`, with a Warning Event
//! when a namespace reaches its quota.

use berth_access::quota::{NamespaceUsage, UsageReport, size};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{NamespaceUsageStatus, UsageStatus};

/// The reason of the Warning Event for a namespace that reached its quota.
pub const QUOTA_REACHED: &str = "QuotaReached";

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

/// At or over its quota: the registry refuses whatever would add to it.
fn at_quota(n: &NamespaceUsageStatus) -> bool {
    n.quota_bytes.is_some_and(|q| n.used_bytes >= q)
}

/// The [`QUOTA_REACHED`] Events to publish, as (namespace, note): one per
/// namespace at or over its quota in `current` that was not in `previous`
/// (under it, not listed, or no usage read yet). A namespace that stays
/// full is not reported again on every refresh; one that went under and
/// filled up again is.
pub fn reached_events(
    previous: Option<&UsageStatus>,
    current: &UsageStatus,
) -> Vec<(String, String)> {
    let was_full = |namespace: &str| {
        previous
            .and_then(|p| p.namespaces.iter().find(|n| n.namespace == namespace))
            .is_some_and(at_quota)
    };
    current
        .namespaces
        .iter()
        .filter(|n| at_quota(n) && !was_full(&n.namespace))
        .map(|n| {
            let used = u64::try_from(n.used_bytes).unwrap_or(0);
            let quota = u64::try_from(n.quota_bytes.unwrap_or(0)).unwrap_or(0);
            let note = format!(
                "namespace {ns} has reached its storage quota: {} ({used} bytes) stored of {} ({quota} bytes), so pushes that add to it are refused; delete images from {ns} it no longer needs (their space is freed when garbage collection next runs) or raise its quota in spec.quotas",
                size(used),
                size(quota),
                ns = n.namespace,
            );
            (n.namespace.clone(), note)
        })
        .collect()
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
    fn listed(namespaces: Vec<NamespaceUsageStatus>) -> UsageStatus {
        UsageStatus {
            time: None,
            namespaces,
            omitted: 0,
        }
    }

    fn status(name: &str, used: i64, quota: Option<i64>) -> NamespaceUsageStatus {
        NamespaceUsageStatus {
            namespace: name.into(),
            repositories: 1,
            used_bytes: used,
            quota_bytes: quota,
        }
    }

    #[test]
    fn a_namespace_reaching_its_quota_is_one_event_naming_it_and_what_to_do() {
        let before = listed(vec![
            status("team-a", 900, Some(1024)),
            status("team-b", 10, None),
        ]);
        let after = listed(vec![
            status("team-a", 1536, Some(1024)),
            status("team-b", 1 << 40, None),
        ]);
        let notes = reached_events(Some(&before), &after);
        assert_eq!(notes.len(), 1, "{notes:?}");
        let (namespace, note) = &notes[0];
        assert_eq!(namespace, "team-a");
        assert!(
            note.starts_with("namespace team-a has reached its storage quota: 1.5 KiB (1536 bytes) stored of 1.0 KiB (1024 bytes)"),
            "{note}"
        );
        assert!(note.contains("delete images from team-a"), "{note}");
        assert!(note.contains("spec.quotas"), "{note}");
    }

    #[test]
    fn a_namespace_that_stays_full_is_not_reported_again() {
        let full = listed(vec![status("team-a", 1024, Some(1024))]);
        let fuller = listed(vec![status("team-a", 2048, Some(1024))]);
        assert!(reached_events(Some(&full), &full).is_empty());
        assert!(reached_events(Some(&full), &fuller).is_empty());
    }

    #[test]
    fn exactly_at_the_quota_counts_as_reached() {
        let under = listed(vec![status("team-a", 1023, Some(1024))]);
        let at = listed(vec![status("team-a", 1024, Some(1024))]);
        assert!(reached_events(Some(&under), &under).is_empty());
        assert_eq!(reached_events(Some(&under), &at).len(), 1);
    }

    #[test]
    fn full_at_the_first_count_or_newly_listed_is_reported() {
        let full = listed(vec![status("team-a", 2048, Some(1024))]);
        assert_eq!(reached_events(None, &full).len(), 1);
        let other = listed(vec![status("team-b", 1, Some(1024))]);
        assert_eq!(reached_events(Some(&other), &full).len(), 1);
    }

    #[test]
    fn freed_and_full_again_is_reported_again() {
        let full = listed(vec![status("team-a", 2048, Some(1024))]);
        let freed = listed(vec![status("team-a", 100, Some(1024))]);
        assert!(reached_events(Some(&full), &freed).is_empty());
        assert_eq!(reached_events(Some(&freed), &full).len(), 1);
    }

    #[test]
    fn a_lowered_quota_below_the_usage_is_reported() {
        let before = listed(vec![status("team-a", 2048, Some(4096))]);
        let after = listed(vec![status("team-a", 2048, Some(1024))]);
        assert_eq!(reached_events(Some(&before), &after).len(), 1);
    }
}
