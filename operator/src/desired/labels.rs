//! The labels every object made for a Registry carries, in one place.
//!
//! `selector` is the subset used by the Deployment's selector and the
//! Service: it must never change for the life of a Registry (a Deployment's
//! selector is immutable), so it holds only the Registry's name and the app.

use std::collections::BTreeMap;

use crate::names::Names;

pub const APP: &str = "berth-registry";
pub const MANAGED_BY: &str = "berth-operator";
/// Names the owning Registry on every child, including ones without an
/// owner reference (a retained data volume).
pub const REGISTRY_LABEL: &str = "berth.dev/registry";

/// The namespace of the owning Registry, on children outside its namespace
/// (a pull secret in a team's namespace, a ClusterRoleBinding), which have
/// no owner reference and cannot be found by their own namespace.
pub const REGISTRY_NAMESPACE_LABEL: &str = "berth.dev/registry-namespace";

/// Labels for the pods' selector and the Service's selector.
pub fn selector(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), names.name.clone()),
    ])
}

/// Labels for every child object.
pub fn labels(names: &Names) -> BTreeMap<String, String> {
    let mut labels = selector(names);
    labels.insert(
        "app.kubernetes.io/component".to_owned(),
        "registry".to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        MANAGED_BY.to_owned(),
    );
    labels.insert(REGISTRY_LABEL.to_owned(), names.name.clone());
    labels
}

/// Labels for a child outside the Registry's namespace.
pub fn cross_namespace_labels(names: &Names) -> BTreeMap<String, String> {
    let mut labels = labels(names);
    labels.insert(REGISTRY_NAMESPACE_LABEL.to_owned(), names.namespace.clone());
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selector_is_a_subset_of_the_labels() {
        let names = Names::new("hub", "team", "cluster.local");
        let labels = labels(&names);
        for (key, value) in selector(&names) {
            assert_eq!(labels.get(&key), Some(&value));
        }
        assert_eq!(labels.get(REGISTRY_LABEL).map(String::as_str), Some("hub"));
    }
}
