//! The data volume (`<name>-data`, ReadWriteOnce unless the Registry asks
//! for ReadWriteMany) for filesystem storage.
//!
//! With `reclaimPolicy: Retain` (the default) the claim has no owner
//! reference, so deleting the Registry leaves the images in place and a
//! Registry of the same name picks them up again. With `Delete` it is owned
//! and goes with the Registry.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::crd::{ReclaimPolicy, Registry};
use crate::desired::owner;
use crate::names::Names;

/// The claim, or `None` when the Registry does not use filesystem storage.
pub fn data_claim(registry: &Registry, names: &Names) -> Option<PersistentVolumeClaim> {
    let fs = registry.spec.storage.filesystem.as_ref()?;
    let owned = fs.reclaim_policy == ReclaimPolicy::Delete;
    Some(PersistentVolumeClaim {
        metadata: owner::child_meta(registry, names, names.data_claim(), owned),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![fs.access_mode.as_str().to_owned()]),
            storage_class_name: fs.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(fs.size.clone()),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{S3Storage, SecretName};
    use crate::fixtures;

    #[test]
    fn a_default_registry_claims_20gi_read_write_once_and_keeps_it_on_delete() {
        let pvc = data_claim(&fixtures::registry(), &fixtures::names()).expect("claim");
        assert_eq!(pvc.metadata.name.as_deref(), Some("hub-data"));
        assert_eq!(
            pvc.metadata.owner_references, None,
            "a retained claim must not be garbage collected"
        );
        let spec = pvc.spec.expect("spec");
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
        let requests = spec.resources.and_then(|r| r.requests).expect("requests");
        assert_eq!(requests.get("storage"), Some(&Quantity("20Gi".into())));
        assert_eq!(spec.storage_class_name, None);
    }

    #[test]
    fn reclaim_policy_delete_makes_the_claim_owned() {
        let registry = fixtures::registry_with(|s| {
            if let Some(fs) = s.storage.filesystem.as_mut() {
                fs.reclaim_policy = ReclaimPolicy::Delete;
                fs.storage_class_name = Some("fast".into());
            }
        });
        let pvc = data_claim(&registry, &fixtures::names()).expect("claim");
        assert_eq!(pvc.metadata.owner_references.map(|o| o.len()), Some(1));
        assert_eq!(
            pvc.spec.and_then(|s| s.storage_class_name).as_deref(),
            Some("fast")
        );
    }

    #[test]
    fn a_read_write_many_registry_claims_a_read_write_many_volume() {
        let registry = fixtures::registry_with(|s| {
            s.replicas = 2;
            if let Some(fs) = s.storage.filesystem.as_mut() {
                fs.access_mode = crate::crd::VolumeAccessMode::ReadWriteMany;
            }
        });
        let pvc = data_claim(&registry, &fixtures::names()).expect("claim");
        assert_eq!(
            pvc.spec.and_then(|s| s.access_modes),
            Some(vec!["ReadWriteMany".to_owned()])
        );
    }

    #[test]
    fn object_storage_needs_no_claim() {
        let registry = fixtures::registry_with(|s| {
            s.storage.filesystem = None;
            s.storage.s3 = Some(S3Storage {
                bucket: "images".into(),
                region: "us-east-1".into(),
                endpoint: None,
                prefix: None,
                credentials_secret: SecretName { name: "s3".into() },
                redirect: None,
            });
        });
        assert_eq!(data_claim(&registry, &fixtures::names()), None);
    }
}
