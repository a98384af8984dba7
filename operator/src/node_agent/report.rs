//! What a node tells the operator: for each Registry, whether this node is
//! selected, which CA fingerprints it has installed, and what went wrong.
//!
//! Carried by one `coordination.k8s.io` Lease per node in the release
//! namespace (`berth-node-<node>`), labelled [`REPORT_LABEL`], the report as
//! JSON in the [`REPORT_ANNOTATION`] annotation. The operator lists those
//! Leases (namespace-scoped read, no access to Nodes); each Lease is owned
//! by its Node, so the garbage collector removes the report of a node that
//! leaves the cluster.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::desired::Plan;
use super::layout::Layout;
use super::writer::{self, SyncOutcome};

pub const REPORT_LABEL: &str = "berth.dev/node-trust-report";
pub const REPORT_ANNOTATION: &str = "berth.dev/node-trust";
/// The field manager of the agent's writes.
pub const FIELD_MANAGER: &str = "berth-node-agent";
const LEASE_PREFIX: &str = "berth-node-";
/// The agent renews its report Lease this often even when nothing changed,
/// so the operator can tell a stopped agent from a quiet one.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(30);
/// A report not renewed for this long (three missed heartbeats) is stale:
/// the operator stops counting that node as trusting.
pub const LEASE_SECONDS: i32 = 90;

/// One node's report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub node: String,
    /// By `namespace/name`.
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryReport>,
}

/// One Registry on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryReport {
    pub uid: String,
    /// nodeTrust is enabled and its nodeSelector matches this node.
    pub selected: bool,
    /// `sha256:` fingerprints of the CAs every one of the Registry's host
    /// directories holds now (read back from the node after writing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fingerprints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NodeReport {
    /// The report for `node` after a pass: the plan says what was wanted,
    /// the outcome what failed, the node itself what is installed.
    pub fn build(node: &str, plan: &Plan, outcome: &SyncOutcome, layout: &Layout) -> Self {
        let mut registries = BTreeMap::new();
        for rp in &plan.registries {
            let mut errors = rp.errors.clone();
            errors.extend(
                outcome
                    .written
                    .iter()
                    .filter(|r| r.owner == rp.owner)
                    .filter_map(|r| r.error.clone()),
            );
            let fingerprints = if rp.selected && !rp.hosts.is_empty() {
                installed(plan, rp, layout)
            } else {
                Vec::new()
            };
            registries.insert(
                rp.owner.key(),
                RegistryReport {
                    uid: rp.owner.uid.clone(),
                    selected: rp.selected,
                    fingerprints,
                    error: (!errors.is_empty()).then(|| errors.join("; ")),
                },
            );
        }
        Self {
            node: node.to_owned(),
            registries,
        }
    }
}

/// The fingerprints present in every planned directory of `rp` (in the
/// order of its bundle). A directory that is missing or unreadable makes
/// the answer empty: the node trusts a CA for a Registry only when every
/// host name of it does.
fn installed(plan: &Plan, rp: &super::desired::RegistryPlan, layout: &Layout) -> Vec<String> {
    let mut common: Option<BTreeSet<String>> = None;
    let mut any = false;
    // Mirror directories hold only a hosts.toml (naming a host
    // directory's CA), so they say nothing about installed CAs.
    let with_ca = |d: &&super::desired::DirPlan| d.files.contains_key(super::desired::CA_CRT);
    for dir in plan
        .dirs
        .iter()
        .filter(|d| d.owner == rp.owner)
        .filter(with_ca)
    {
        any = true;
        let Some(base) = layout.base(dir.runtime) else {
            return Vec::new();
        };
        let found: BTreeSet<String> = writer::installed_fingerprints(base, &dir.dir)
            .unwrap_or_default()
            .into_iter()
            .collect();
        common = Some(match common {
            None => found,
            Some(c) => c.intersection(&found).cloned().collect(),
        });
    }
    if !any {
        return Vec::new();
    }
    let common = common.unwrap_or_default();
    rp.fingerprints
        .iter()
        .filter(|f| common.contains(*f))
        .cloned()
        .collect()
}

/// The Lease name for `node`: `berth-node-<node>`, or, when that would be
/// longer than an object name may be, a shortened name with a hash.
pub fn lease_name(node: &str) -> String {
    let name = format!("{LEASE_PREFIX}{node}");
    if name.len() <= 253 {
        return name;
    }
    let digest = Sha256::digest(node.as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let keep = 253 - LEASE_PREFIX.len() - 1 - hash.len();
    let mut cut = node[..keep].to_owned();
    while cut.ends_with(['.', '-']) {
        cut.pop();
    }
    format!("{LEASE_PREFIX}{cut}-{hash}")
}

/// The Lease that carries `report`, owned by the Node (name and uid).
pub fn lease(
    namespace: &str,
    node_uid: Option<&str>,
    report: &NodeReport,
    now: jiff::Timestamp,
) -> Lease {
    let owner = node_uid.map(|uid| {
        vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: report.node.clone(),
            uid: uid.to_owned(),
            ..OwnerReference::default()
        }]
    });
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(&report.node)),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (REPORT_LABEL.to_owned(), "true".to_owned()),
                (
                    "app.kubernetes.io/component".to_owned(),
                    "node-agent".to_owned(),
                ),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    FIELD_MANAGER.to_owned(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(
                REPORT_ANNOTATION.to_owned(),
                serde_json::to_string(report).unwrap_or_default(),
            )])),
            owner_references: owner,
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(report.node.clone()),
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(LEASE_SECONDS),
            ..LeaseSpec::default()
        }),
    }
}

/// The report a Lease carries, if it is one.
pub fn parse(lease: &Lease) -> Option<NodeReport> {
    let text = lease
        .metadata
        .annotations
        .as_ref()?
        .get(REPORT_ANNOTATION)?;
    serde_json::from_str(text).ok()
}

/// When the report in `lease` goes stale unless renewed: its renewTime
/// plus its duration. `None` for a Lease without both (an agent from before
/// heartbeats, which is never judged stale).
pub fn expiry(lease: &Lease) -> Option<jiff::Timestamp> {
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref()?.0;
    let seconds = spec.lease_duration_seconds?;
    renewed
        .checked_add(jiff::SignedDuration::from_secs(i64::from(seconds)))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> NodeReport {
        NodeReport {
            node: "berth-node".into(),
            registries: BTreeMap::from([(
                "team/hub".to_owned(),
                RegistryReport {
                    uid: "u1".into(),
                    selected: true,
                    fingerprints: vec!["sha256:aa".into()],
                    error: None,
                },
            )]),
        }
    }

    #[test]
    fn a_report_round_trips_through_its_lease() {
        let now = "2026-11-24T12:00:00Z".parse().expect("ts");
        let lease = lease("berth-system", Some("node-uid"), &report(), now);
        assert_eq!(
            lease.metadata.name.as_deref(),
            Some("berth-node-berth-node")
        );
        assert_eq!(lease.metadata.namespace.as_deref(), Some("berth-system"));
        let owner = &lease.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Node", "node-uid")
        );
        assert_eq!(
            lease
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REPORT_LABEL))
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(parse(&lease), Some(report()));
        let text = &lease.metadata.annotations.as_ref().expect("a")[REPORT_ANNOTATION];
        assert_eq!(
            text,
            r#"{"node":"berth-node","registries":{"team/hub":{"uid":"u1","selected":true,"fingerprints":["sha256:aa"]}}}"#
        );
    }

    #[test]
    fn a_report_expires_three_heartbeats_after_its_renewal() {
        let now: jiff::Timestamp = "2026-11-24T12:00:00Z".parse().expect("ts");
        let mut lease = lease("berth-system", None, &report(), now);
        assert_eq!(
            expiry(&lease),
            Some("2026-11-24T12:01:30Z".parse().expect("ts"))
        );
        assert!(i64::from(LEASE_SECONDS) >= 3 * HEARTBEAT.as_secs() as i64);
        // Written by an agent from before heartbeats: never stale.
        lease.spec.as_mut().expect("spec").lease_duration_seconds = None;
        assert_eq!(expiry(&lease), None);
    }

    #[test]
    fn long_node_names_still_make_a_valid_lease_name() {
        let node = format!("{}.example", "a".repeat(250));
        let name = lease_name(&node);
        assert!(name.len() <= 253, "{}", name.len());
        assert!(name.starts_with("berth-node-aaa"));
        assert_ne!(lease_name(&format!("{}.other", "a".repeat(250))), name);
        assert_eq!(lease_name("n1"), "berth-node-n1");
    }
}
