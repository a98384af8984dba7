//! Node trust as the operator sees it: the node agents' reports counted for
//! one Registry, and, during a CA rotation, which CA signs the serving
//! certificate. Pure; the controller gathers the inputs.
//!
//! A CA rotation is safe only in this order: publish the new CA beside the
//! old one, wait until every selected node has installed the new one, and
//! only then serve a certificate signed by it. Until then the serving
//! certificate stays one from the previous CA, which every node trusts.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::node_agent::report::NodeReport;
use crate::pki;
use crate::status::NodeTrustState;

/// At most this many node problems are named in the condition message.
const PROBLEMS_SHOWN: usize = 3;

/// What the node agents said, cluster-wide.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reports {
    pub nodes: Vec<NodeReport>,
    /// How many nodes the agent DaemonSet should run on
    /// (`status.desiredNumberScheduled`); `None` when not known.
    pub scheduled: Option<i32>,
    /// Set when the agent DaemonSet the operator was told about is absent.
    pub agent_missing: Option<String>,
    /// Nodes whose report Lease was not renewed in time, with when it
    /// expired: their agent stopped, so what they last said may be stale.
    pub stale: BTreeMap<String, Timestamp>,
}

/// Count the nodes that trust `fingerprint` (the current CA) for the
/// Registry `key` (`namespace/name`) with `uid`.
///
/// A node whose agent has not reported on this Registry yet counts as
/// selected and not trusting, and so does a selected node whose report is
/// stale (its agent stopped renewing the Lease): the count never looks
/// better than it is.
pub fn count(reports: &Reports, key: &str, uid: &str, fingerprint: Option<&str>) -> NodeTrustState {
    if let Some(missing) = &reports.agent_missing {
        return NodeTrustState::AgentNotInstalled(missing.clone());
    }
    if reports.nodes.is_empty() && reports.scheduled.is_none_or(|n| n > 0) {
        return NodeTrustState::NotReported;
    }
    let mut nodes: Vec<&NodeReport> = reports.nodes.iter().collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let entries: Vec<(&str, &crate::node_agent::report::RegistryReport)> = nodes
        .iter()
        .filter_map(|n| {
            n.registries
                .get(key)
                .filter(|r| r.uid == uid)
                .map(|r| (n.node.as_str(), r))
        })
        .collect();
    let agents = reports
        .scheduled
        .map_or(nodes.len(), |n| usize::try_from(n).unwrap_or(0));
    let unreported = agents.saturating_sub(entries.len());
    let selected = entries.iter().filter(|(_, r)| r.selected).count();
    let fresh = |node: &str| !reports.stale.contains_key(node);
    let trusted = entries
        .iter()
        .filter(|(node, r)| r.selected && fresh(node))
        .filter(|(_, r)| fingerprint.is_some_and(|f| r.fingerprints.iter().any(|x| x == f)))
        .count();
    let stale: Vec<(&str, Timestamp)> = entries
        .iter()
        .filter(|(_, r)| r.selected)
        .filter_map(|(node, _)| reports.stale.get(*node).map(|at| (*node, *at)))
        .collect();
    let mut problems: Vec<String> = stale
        .iter()
        .map(|(node, at)| {
            format!("node {node}: its agent stopped reporting (report Lease expired at {at}); check the berth node agent pod on that node")
        })
        .collect();
    problems.extend(
        entries
            .iter()
            .filter(|(node, _)| fresh(node))
            .filter_map(|(node, r)| r.error.as_ref().map(|e| format!("node {node}: {e}"))),
    );
    if problems.len() > PROBLEMS_SHOWN {
        let more = problems.len() - PROBLEMS_SHOWN;
        problems.truncate(PROBLEMS_SHOWN);
        problems.push(format!("and {more} more"));
    }
    let int = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    NodeTrustState::Counted {
        trusted: int(trusted),
        total: int(selected + unreported),
        unreported: int(unreported),
        stale: int(stale.len()),
        problems,
    }
}

/// Which CA issues the serving certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signer {
    Current,
    /// The CA being replaced, until every node trusts the current one.
    Previous,
}

/// During a rotation (`previous_not_after` is the replaced CA's expiry,
/// `None` when there is no rotation), keep signing with the previous CA
/// until every selected node trusts the current one, or until a certificate
/// from the previous CA could no longer last `renew_before` (then waiting
/// longer would only serve a certificate that is already due).
pub fn signer(
    previous_not_after: Option<Timestamp>,
    renew_before: Duration,
    trust: &NodeTrustState,
    now: Timestamp,
) -> Signer {
    let Some(not_after) = previous_not_after else {
        return Signer::Current;
    };
    if trust.every_node_trusts() || now >= pki::renewal_time(not_after, renew_before) {
        return Signer::Current;
    }
    Signer::Previous
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::node_agent::report::RegistryReport;

    fn node(name: &str, selected: bool, fps: &[&str], error: Option<&str>) -> NodeReport {
        NodeReport {
            node: name.into(),
            registries: BTreeMap::from([(
                "team/hub".to_owned(),
                RegistryReport {
                    uid: "u1".into(),
                    selected,
                    fingerprints: fps.iter().map(|f| (*f).to_owned()).collect(),
                    error: error.map(str::to_owned),
                },
            )]),
        }
    }

    fn counted(trusted: i32, total: i32, unreported: i32, problems: &[&str]) -> NodeTrustState {
        NodeTrustState::Counted {
            trusted,
            total,
            unreported,
            stale: 0,
            problems: problems.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn nodes_with_the_current_fingerprint_are_trusted_and_unselected_nodes_do_not_count() {
        let reports = Reports {
            nodes: vec![
                node("a", true, &["sha256:new", "sha256:old"], None),
                node("b", true, &["sha256:old"], None),
                node("c", false, &[], None),
            ],
            scheduled: Some(3),
            agent_missing: None,
            stale: BTreeMap::new(),
        };
        assert_eq!(
            count(&reports, "team/hub", "u1", Some("sha256:new")),
            counted(1, 2, 0, &[])
        );
        assert_eq!(
            count(&reports, "team/hub", "u1", Some("sha256:old")),
            counted(2, 2, 0, &[])
        );
    }

    #[test]
    fn agents_that_have_not_reported_count_as_not_trusting() {
        let reports = Reports {
            nodes: vec![node("a", true, &["sha256:new"], None)],
            scheduled: Some(3),
            agent_missing: None,
            stale: BTreeMap::new(),
        };
        let state = count(&reports, "team/hub", "u1", Some("sha256:new"));
        assert_eq!(state, counted(1, 3, 2, &[]));
        assert!(!state.every_node_trusts());
        // A report about another incarnation of the Registry does not count.
        assert_eq!(
            count(&reports, "team/hub", "other-uid", Some("sha256:new")),
            counted(0, 3, 3, &[])
        );
    }

    #[test]
    fn a_node_whose_agent_stopped_is_stale_and_not_trusting() {
        let expired: Timestamp = "2026-11-24T11:57:00Z".parse().expect("ts");
        let reports = Reports {
            nodes: vec![
                node("a", true, &["sha256:new"], None),
                node("b", true, &["sha256:new"], Some("old problem")),
            ],
            scheduled: Some(2),
            agent_missing: None,
            stale: BTreeMap::from([("b".to_owned(), expired)]),
        };
        let state = count(&reports, "team/hub", "u1", Some("sha256:new"));
        assert_eq!(
            state,
            NodeTrustState::Counted {
                trusted: 1,
                total: 2,
                unreported: 0,
                stale: 1,
                problems: vec![
                    "node b: its agent stopped reporting (report Lease expired at 2026-11-24T11:57:00Z); check the berth node agent pod on that node".into()
                ],
            }
        );
        assert!(!state.every_node_trusts());
    }

    #[test]
    fn errors_are_named_by_node() {
        let reports = Reports {
            nodes: (0..5)
                .map(|i| node(&format!("n{i}"), true, &[], Some("boom")))
                .collect(),
            scheduled: None,
            agent_missing: None,
            stale: BTreeMap::new(),
        };
        let NodeTrustState::Counted { problems, .. } =
            count(&reports, "team/hub", "u1", Some("sha256:x"))
        else {
            panic!("counted");
        };
        assert_eq!(
            problems,
            [
                "node n0: boom",
                "node n1: boom",
                "node n2: boom",
                "and 2 more"
            ]
        );
    }

    #[test]
    fn no_reports_and_no_daemonset_is_not_reported_and_a_missing_daemonset_says_so() {
        assert_eq!(
            count(&Reports::default(), "team/hub", "u1", None),
            NodeTrustState::NotReported
        );
        let missing = Reports {
            agent_missing: Some("gone".into()),
            ..Reports::default()
        };
        assert_eq!(
            count(&missing, "team/hub", "u1", None),
            NodeTrustState::AgentNotInstalled("gone".into())
        );
        let nowhere = Reports {
            scheduled: Some(0),
            ..Reports::default()
        };
        assert_eq!(
            count(&nowhere, "team/hub", "u1", None),
            counted(0, 0, 0, &[])
        );
    }

    #[test]
    fn the_previous_ca_signs_until_every_node_trusts_the_new_one() {
        let now: Timestamp = "2026-11-24T12:00:00Z".parse().expect("ts");
        let old_expiry: Timestamp = "2027-11-24T12:00:00Z".parse().expect("ts");
        let month = Duration::from_secs(30 * 24 * 3600);
        let pending = counted(1, 2, 0, &[]);
        let done = counted(2, 2, 0, &[]);
        assert_eq!(signer(None, month, &pending, now), Signer::Current);
        assert_eq!(
            signer(Some(old_expiry), month, &pending, now),
            Signer::Previous
        );
        assert_eq!(
            signer(Some(old_expiry), month, &NodeTrustState::NotReported, now),
            Signer::Previous
        );
        assert_eq!(signer(Some(old_expiry), month, &done, now), Signer::Current);
        assert_eq!(
            signer(Some(old_expiry), month, &NodeTrustState::Disabled, now),
            Signer::Current
        );
        // No selected node: nothing to wait for.
        assert_eq!(
            signer(Some(old_expiry), month, &counted(0, 0, 0, &[]), now),
            Signer::Current
        );
        // Too close to the old CA's end to keep waiting.
        let late: Timestamp = "2027-11-01T12:00:00Z".parse().expect("ts");
        assert_eq!(
            signer(Some(old_expiry), month, &pending, late),
            Signer::Current
        );
    }
}
