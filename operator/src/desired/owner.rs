//! Owner references and the metadata common to every child object.
//!
//! The owner reference makes the garbage collector delete a child when its
//! Registry goes, and lets the controller map a child's change back to its
//! Registry (`.owns()`), so a deleted or edited child is repaired.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::crd::Registry;
use crate::desired::labels;
use crate::names::Names;

/// The controller owner reference to `registry`. `None` for an object that
/// was never stored (it has no uid), which only happens in tests.
pub fn owner_reference(registry: &Registry) -> Option<OwnerReference> {
    registry.controller_owner_ref(&())
}

/// Metadata for a child named `name`: the Registry's namespace, the common
/// labels and, when `owned`, the controller owner reference.
pub fn child_meta(registry: &Registry, names: &Names, name: String, owned: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels::labels(names)),
        owner_references: if owned {
            owner_reference(registry).map(|o| vec![o])
        } else {
            None
        },
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn children_are_owned_by_their_registry_as_controller() {
        let registry = fixtures::registry();
        let names = fixtures::names();
        let meta = child_meta(&registry, &names, "hub-tls".into(), true);
        let owner = &meta.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Registry", "hub")
        );
        assert_eq!(owner.api_version, "berth.dev/v1alpha1");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("team"));
    }

    #[test]
    fn an_unowned_child_still_carries_the_labels() {
        let meta = child_meta(
            &fixtures::registry(),
            &fixtures::names(),
            "hub-data".into(),
            false,
        );
        assert_eq!(meta.owner_references, None);
        assert!(
            meta.labels
                .expect("labels")
                .contains_key(labels::REGISTRY_LABEL)
        );
    }
}
