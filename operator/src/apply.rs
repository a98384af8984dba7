//! The only module that changes objects in the cluster (events and the
//! leader Lease aside): server-side apply under one field manager, deletes
//! of children that are no longer wanted, and the status subresource.
//!
//! Server-side apply with the complete desired object makes every write
//! idempotent: when the object already matches, the apiserver stores
//! nothing (the resourceVersion does not move). `force` takes ownership of
//! fields someone edited by hand, which is how drift is repaired.
//!
//! A no-op apply is still a write request, and with a hundred Registries
//! every resync would send hundreds of them. So each applied object carries
//! a hash of what was applied ([`APPLIED_HASH_ANNOTATION`]), the live object
//! is read first, and the apply is skipped when the hash matches and nobody
//! but the cluster's own controllers changed the object since (see
//! [`up_to_date`]). The decision needs no memory of earlier reconciles, so
//! a restarted or newly elected operator writes nothing either.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::crd::{Registry, RegistryStatus};

/// The one field manager every write uses.
pub const FIELD_MANAGER: &str = "berth-operator";

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// The hash of the applied object, on the object itself.
pub const APPLIED_HASH_ANNOTATION: &str = "berth.dev/applied-hash";

/// Managers whose changes are the cluster doing its job, not drift: the
/// Deployment controller's revision annotation, the volume binder's and the
/// scheduler's annotations on a claim.
const CLUSTER_MANAGERS: [&str; 3] = ["kube-controller-manager", "kube-scheduler", "kubelet"];

/// `object` with [`APPLIED_HASH_ANNOTATION`] set to the hash of the rest of
/// it, and that hash.
fn with_hash<K>(object: &K) -> Result<(K, String), kube::Error>
where
    K: Resource + Serialize + Clone,
{
    let mut object = object.clone();
    let meta = object.meta_mut();
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(APPLIED_HASH_ANNOTATION);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
    // k8s-openapi serializes fields in a fixed order and maps sorted, so
    // equal objects give equal bytes.
    let bytes = serde_json::to_vec(&object).map_err(kube::Error::SerdeError)?;
    let digest = Sha256::digest(&bytes);
    let hash: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    object
        .annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.to_owned(), hash.clone());
    Ok((object, hash))
}

/// Whether `live` is what berth last applied with hash `hash`, unchanged
/// since by anyone but berth and the cluster's own controllers (status
/// writers included). A hand edit, a `kubectl apply` or another tool's
/// write after berth's last apply makes it stale, so drift is repaired.
pub fn up_to_date(live: &ObjectMeta, hash: &str) -> bool {
    if live.deletion_timestamp.is_some() {
        return false;
    }
    let annotated = live
        .annotations
        .as_ref()
        .and_then(|a| a.get(APPLIED_HASH_ANNOTATION))
        .is_some_and(|h| h == hash);
    if !annotated {
        return false;
    }
    let fields = live.managed_fields.as_deref().unwrap_or_default();
    let main_resource = |f: &&ManagedFieldsEntry| f.subresource.as_deref().unwrap_or("").is_empty();
    let Some(ours) = fields
        .iter()
        .filter(main_resource)
        .filter(|f| f.manager.as_deref() == Some(FIELD_MANAGER))
        .filter_map(|f| f.time.as_ref().map(|t| t.0))
        .max()
    else {
        return false;
    };
    !fields.iter().any(|f| {
        let manager = f.manager.as_deref().unwrap_or("");
        manager != FIELD_MANAGER
            && !CLUSTER_MANAGERS.contains(&manager)
            && f.subresource.as_deref() != Some("status")
            // managedFields times have whole seconds: an edit in the same
            // second as berth's apply may be after it, so it counts.
            && f.time.as_ref().is_some_and(|t| t.0 >= ours)
    })
}

/// Apply `object` through `api` unless the live object is
/// [`up_to_date`]; returns the object as stored.
async fn apply_with<K>(api: &Api<K>, object: &K) -> Result<K, kube::Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let (object, hash) = with_hash(object)?;
    let name = object.name_any();
    if let Some(live) = api.get_opt(&name).await?
        && up_to_date(live.meta(), &hash)
    {
        return Ok(live);
    }
    api.patch(&name, &params(), &Patch::Apply(&object)).await
}

/// Server-side apply `object` (which carries its name and namespace) and
/// return what the apiserver stored.
pub async fn apply<K>(client: &Client, object: &K) -> Result<K, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    apply_with(&api, object).await
}

/// Server-side apply a cluster-scoped `object` (a ClusterRoleBinding).
pub async fn apply_cluster<K>(client: &Client, object: &K) -> Result<K, kube::Error>
where
    K: Resource<Scope = ClusterResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::all(client.clone());
    apply_with(&api, object).await
}

/// Delete the cluster-scoped `name` if it carries every label in `labels`
/// (objects of the same name that berth did not make are left alone).
pub async fn delete_cluster_labelled<K>(
    client: &Client,
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<bool, kube::Error>
where
    K: Resource<Scope = ClusterResourceScope, DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if !labels
        .iter()
        .all(|(k, v)| existing.labels().get(k) == Some(v))
    {
        return Ok(false);
    }
    api.delete(name, &DeleteParams::default()).await?;
    Ok(true)
}

/// Merge-patch `name` in `namespace` with `patch` (which carries the
/// resourceVersion it was computed from, so a concurrent change makes it
/// fail rather than be overwritten).
pub async fn merge_patch<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    patch: &serde_json::Value,
) -> Result<K, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    // Under berth's own manager, so the repair is not taken for a hand
    // edit by `up_to_date`.
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::Merge(patch)).await
}

/// Server-side apply a dynamic object (a kind the operator has no Rust type
/// for, such as cert-manager's Certificate).
pub async fn apply_dynamic(
    client: &Client,
    resource: &ApiResource,
    object: &DynamicObject,
) -> Result<DynamicObject, kube::Error> {
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, resource);
    api.patch(&object.name_any(), &params(), &Patch::Apply(object))
        .await
}

/// Delete `name` if it exists and is controlled by `registry`; objects of
/// the same name that berth does not own are left alone.
pub async fn delete_owned<K>(
    client: &Client,
    registry: &Registry,
    namespace: &str,
    name: &str,
) -> Result<bool, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let uid = registry.uid();
    let owned = existing
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref());
    if !owned {
        return Ok(false);
    }
    api.delete(name, &DeleteParams::default()).await?;
    Ok(true)
}

/// Server-side apply the status subresource; returns the stored Registry.
pub async fn apply_status(
    client: &Client,
    registry: &Registry,
    status: &RegistryStatus,
) -> Result<Registry, kube::Error> {
    let namespace = registry.namespace().unwrap_or_default();
    let api: Api<Registry> = Api::namespaced(client.clone(), &namespace);
    let patch = json!({
        "apiVersion": Registry::api_version(&()),
        "kind": Registry::kind(&()),
        "status": status,
    });
    api.patch_status(&registry.name_any(), &params(), &Patch::Apply(&patch))
        .await
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn config_map(value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("hub-ca".into()),
                namespace: Some("team".into()),
                ..ObjectMeta::default()
            },
            data: Some([("ca.crt".to_owned(), value.to_owned())].into()),
            ..ConfigMap::default()
        }
    }

    fn entry(manager: &str, subresource: Option<&str>, at: &str) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Update".into()),
            subresource: subresource.map(Into::into),
            time: Some(Time(at.parse().expect("timestamp"))),
            ..ManagedFieldsEntry::default()
        }
    }

    /// The live object as the apiserver returns it after berth applied
    /// `object` at 12:00:00, plus `others`' entries.
    fn live(object: &ConfigMap, others: Vec<ManagedFieldsEntry>) -> (ObjectMeta, String) {
        let (applied, hash) = with_hash(object).expect("hash");
        let mut meta = applied.metadata;
        let mut fields = vec![ManagedFieldsEntry {
            operation: Some("Apply".into()),
            ..entry(FIELD_MANAGER, None, "2026-11-30T12:00:00Z")
        }];
        fields.extend(others);
        meta.managed_fields = Some(fields);
        (meta, hash)
    }

    #[test]
    fn equal_objects_hash_alike_and_a_change_moves_the_hash() {
        let (_, a) = with_hash(&config_map("one")).expect("hash");
        let (_, again) = with_hash(&config_map("one")).expect("hash");
        let (_, b) = with_hash(&config_map("two")).expect("hash");
        assert_eq!(a, again);
        assert_ne!(a, b);
        // Hashing an object that already carries a hash gives the same one.
        let (annotated, _) = with_hash(&config_map("one")).expect("hash");
        assert_eq!(with_hash(&annotated).expect("hash").1, a);
    }

    #[test]
    fn an_object_as_berth_applied_it_needs_no_write() {
        let (meta, hash) = live(&config_map("one"), vec![]);
        assert!(up_to_date(&meta, &hash));
    }

    #[test]
    fn a_changed_desired_object_is_applied() {
        let (meta, _) = live(&config_map("one"), vec![]);
        let (_, new_hash) = with_hash(&config_map("two")).expect("hash");
        assert!(!up_to_date(&meta, &new_hash));
    }

    #[test]
    fn an_object_without_the_hash_is_applied() {
        let mut meta = config_map("one").metadata;
        meta.managed_fields = Some(vec![entry(FIELD_MANAGER, None, "2026-11-30T12:00:00Z")]);
        let (_, hash) = with_hash(&config_map("one")).expect("hash");
        assert!(!up_to_date(&meta, &hash));
    }

    #[test]
    fn a_hand_edit_after_berths_apply_is_repaired() {
        let (meta, hash) = live(
            &config_map("one"),
            vec![entry("kubectl-edit", None, "2026-11-30T12:05:00Z")],
        );
        assert!(!up_to_date(&meta, &hash));
    }

    #[test]
    fn a_hand_edit_in_the_same_second_as_berths_apply_is_repaired() {
        let (meta, hash) = live(
            &config_map("one"),
            vec![entry("kubectl-edit", None, "2026-11-30T12:00:00Z")],
        );
        assert!(!up_to_date(&meta, &hash));
    }

    #[test]
    fn an_edit_older_than_berths_apply_was_already_overwritten() {
        let (meta, hash) = live(
            &config_map("one"),
            vec![entry("kubectl-edit", None, "2026-11-30T11:00:00Z")],
        );
        assert!(up_to_date(&meta, &hash));
    }

    #[test]
    fn the_clusters_controllers_and_status_writers_are_not_drift() {
        let (meta, hash) = live(
            &config_map("one"),
            vec![
                entry("kube-controller-manager", None, "2026-11-30T12:05:00Z"),
                entry("kube-scheduler", None, "2026-11-30T12:05:00Z"),
                entry("some-controller", Some("status"), "2026-11-30T12:05:00Z"),
            ],
        );
        assert!(up_to_date(&meta, &hash));
        // A scale subresource write is a hand edit of the spec.
        let (meta, hash) = live(
            &config_map("one"),
            vec![entry("kubectl", Some("scale"), "2026-11-30T12:05:00Z")],
        );
        assert!(!up_to_date(&meta, &hash));
    }

    #[test]
    fn an_object_being_deleted_is_applied_again() {
        let (mut meta, hash) = live(&config_map("one"), vec![]);
        meta.deletion_timestamp = Some(Time("2026-11-30T12:10:00Z".parse().expect("ts")));
        assert!(!up_to_date(&meta, &hash));
    }
}
