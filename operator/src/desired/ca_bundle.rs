//! The CA bundle ConfigMap (`<name>-ca`, key `ca.crt`) in the Registry's
//! namespace: what pods, people and the node agent read to trust the
//! registry. During a CA rotation it holds the new and the old CA together.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use crate::crd::Registry;
use crate::desired::owner;
use crate::names::Names;

pub const KEY: &str = "ca.crt";
/// The fingerprint of the current (first) CA in the bundle, for the node
/// agent to report back which CA it has installed.
pub const FINGERPRINT_ANNOTATION: &str = "berth.dev/ca-fingerprint";

pub fn ca_bundle(
    registry: &Registry,
    names: &Names,
    bundle_pem: &str,
    current_fingerprint: &str,
) -> ConfigMap {
    let mut metadata = owner::child_meta(registry, names, names.ca_config_map(), true);
    metadata.annotations = Some(BTreeMap::from([(
        FINGERPRINT_ANNOTATION.to_owned(),
        current_fingerprint.to_owned(),
    )]));
    ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(KEY.to_owned(), bundle_pem.to_owned())])),
        ..ConfigMap::default()
    }
}

/// The bundle a ConfigMap read from the cluster holds.
pub fn bundle_of(config_map: &ConfigMap) -> Option<&str> {
    config_map.data.as_ref()?.get(KEY).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn the_bundle_is_under_ca_crt_with_the_current_fingerprint() {
        let cm = ca_bundle(
            &fixtures::registry(),
            &fixtures::names(),
            "PEM",
            "sha256:ab",
        );
        assert_eq!(cm.metadata.name.as_deref(), Some("hub-ca"));
        assert_eq!(bundle_of(&cm), Some("PEM"));
        let annotations = cm.metadata.annotations.expect("annotations");
        assert_eq!(
            annotations.get(FINGERPRINT_ANNOTATION).map(String::as_str),
            Some("sha256:ab")
        );
    }
}
