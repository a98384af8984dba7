//! Builders for test `Registry` objects, shaped as the apiserver returns
//! them (uid, generation, namespace set), so builders and status logic are
//! tested on realistic input.

use crate::crd::{Mirror, Registry, RegistrySpec};
use crate::names::Names;

pub const NAME: &str = "hub";
pub const NAMESPACE: &str = "team";
pub const UID: &str = "6f1c2a54-0d6e-4b43-9a8e-0b7f0c7a1e11";
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// `hub` in `team` with `spec: {}` (every default), generation 1.
pub fn registry() -> Registry {
    registry_with(|_| {})
}

/// Like [`registry`], with the spec changed by `edit`.
pub fn registry_with(edit: impl FnOnce(&mut RegistrySpec)) -> Registry {
    let mut spec = RegistrySpec::default();
    edit(&mut spec);
    let mut registry = Registry::new(NAME, spec);
    registry.metadata.namespace = Some(NAMESPACE.to_owned());
    registry.metadata.uid = Some(UID.to_owned());
    registry.metadata.generation = Some(1);
    registry
}

pub fn names() -> Names {
    Names::new(NAME, NAMESPACE, CLUSTER_DOMAIN)
}

/// A mirror of `prefix` at `url` with every option unset.
pub fn mirror(prefix: &str, url: &str) -> Mirror {
    Mirror {
        prefix: prefix.into(),
        url: url.into(),
        credentials_secret: None,
        repositories: Vec::new(),
        tag_freshness: None,
        ca_secret: None,
        max_age: None,
        max_size: None,
    }
}
