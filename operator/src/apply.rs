//! The only module that changes objects in the cluster (events and the
//! leader Lease aside): server-side apply under one field manager, deletes
//! of children that are no longer wanted, and the status subresource.
//!
//! Server-side apply with the complete desired object makes every write
//! idempotent: when the object already matches, the apiserver stores
//! nothing (the resourceVersion does not move). `force` takes ownership of
//! fields someone edited by hand, which is how drift is repaired.

use std::fmt::Debug;

use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::crd::{Registry, RegistryStatus};

/// The one field manager every write uses.
pub const FIELD_MANAGER: &str = "berth-operator";

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
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
    api.patch(&object.name_any(), &params(), &Patch::Apply(object))
        .await
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
    api.patch(&object.name_any(), &params(), &Patch::Apply(object))
        .await
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
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
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
