//! The PodDisruptionBudget of a registry with several replicas: a node
//! drain takes one registry pod at a time, so pulls never stop. One
//! replica gets none (a budget that forbids evicting the only pod would
//! block every drain).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::Registry;
use crate::desired::{labels, owner};
use crate::names::Names;

pub fn disruption_budget(registry: &Registry, names: &Names) -> Option<PodDisruptionBudget> {
    (registry.spec.replicas > 1).then(|| PodDisruptionBudget {
        metadata: owner::child_meta(registry, names, names.deployment(), true),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels::selector(names)),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn several_replicas_may_lose_one_pod_at_a_time() {
        let r = fixtures::registry_with(|s| s.replicas = 3);
        let budget = disruption_budget(&r, &fixtures::names()).expect("budget");
        let spec = budget.spec.expect("spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.selector.and_then(|s| s.match_labels),
            Some(labels::selector(&fixtures::names()))
        );
    }

    #[test]
    fn one_replica_has_no_budget_to_block_drains() {
        for replicas in [0, 1] {
            let r = fixtures::registry_with(|s| s.replicas = replicas);
            assert!(disruption_budget(&r, &fixtures::names()).is_none());
        }
    }
}
