//! The cluster side of a Registry's auth, applied on every reconcile: the
//! registry's ServiceAccount, its auth delegation binding (Kubernetes
//! mode), the auth config, the token keys and their rotation, and the pull
//! secrets in selected namespaces; and their removal when the Registry goes
//! (a finalizer, because a ClusterRoleBinding and Secrets in other
//! namespaces cannot be owned by a namespaced Registry).
//!
//! What each object holds is decided by the pure builders in
//! [`crate::desired`]; this module only observes and writes.

use std::collections::BTreeSet;

use berth_access::keys::{self, Signer};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::apply;
use crate::controller::{Context, publish};
use crate::crd::{AuthMode, Registry};
use crate::desired::pull_secret::{self, TokenVerdict};
use crate::desired::token_keys::{self, KeyPolicy};
use crate::desired::{auth, labels};
use crate::names::Names;
use crate::status::AuthState;
use crate::{Error, kube_err};

/// The finalizer that removes what a Registry has outside its namespace.
pub const FINALIZER: &str = "berth.dev/cleanup";

/// What the auth reconcile found, and when it must run again.
pub struct AuthOutcome {
    pub state: AuthState,
    pub next_step: Option<Timestamp>,
    /// The key that signs now (none with auth off): the operator's own
    /// token for the registry is signed with it.
    pub signer: Option<Signer>,
}

fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Add the finalizer if it is missing. Returns whether it was added.
pub async fn ensure_finalizer(ctx: &Context, registry: &Registry) -> Result<bool, Error> {
    if registry.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(false);
    }
    let mut finalizers = registry.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    patch_finalizers(ctx, registry, finalizers).await?;
    Ok(true)
}

async fn patch_finalizers(
    ctx: &Context,
    registry: &Registry,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let api: Api<Registry> = Api::namespaced(
        ctx.client.clone(),
        &registry.namespace().unwrap_or_default(),
    );
    // The resourceVersion makes this a compare-and-swap: a finalizer
    // someone else added meanwhile is never dropped.
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": registry.resource_version(),
    }});
    api.patch(
        &registry.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(kube_err("updating the Registry's finalizers"))?;
    Ok(())
}

/// The Registry is being deleted: remove the binding and the pull secrets,
/// then let it go.
pub async fn finalize(ctx: &Context, registry: &Registry, names: &Names) -> Result<(), Error> {
    if !registry.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    apply::delete_cluster_labelled::<ClusterRoleBinding>(
        &ctx.client,
        &names.auth_delegator_binding(),
        &labels::cross_namespace_labels(names),
    )
    .await
    .map_err(kube_err("removing the auth delegation ClusterRoleBinding"))?;
    let synced = sync_pull_secrets(ctx, registry, names, &BTreeSet::new(), None).await?;
    tracing::info!(registry = %format!("{}/{}", names.namespace, names.name), pull_secrets_removed = synced.removed, "cleaned up before deletion");
    let finalizers = registry
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    patch_finalizers(ctx, registry, finalizers).await
}

/// Apply everything auth needs for `registry`. `cluster_ip` is the
/// Service's (a pull secret names it as a host).
pub async fn reconcile(
    ctx: &Context,
    registry: &Registry,
    names: &Names,
    cluster_ip: Option<&str>,
    now: Timestamp,
) -> Result<AuthOutcome, Error> {
    let client = &ctx.client;
    let spec = &registry.spec;
    apply::apply(client, &auth::service_account(registry, names))
        .await
        .map_err(kube_err("applying the registry's ServiceAccount"))?;

    if spec.auth.mode == AuthMode::Kubernetes {
        apply::apply_cluster(client, &auth::auth_delegator_binding(names))
            .await
            .map_err(kube_err(
                "applying the ClusterRoleBinding to system:auth-delegator (the operator needs `bind` on that ClusterRole; see the chart's RBAC)",
            ))?;
    } else {
        apply::delete_cluster_labelled::<ClusterRoleBinding>(
            client,
            &names.auth_delegator_binding(),
            &labels::cross_namespace_labels(names),
        )
        .await
        .map_err(kube_err("removing the auth delegation ClusterRoleBinding"))?;
    }

    let Some(config) = auth::auth_config(registry, names) else {
        // Mode None: nothing to configure, and nothing to pull with.
        apply::delete_owned::<ConfigMap>(
            client,
            registry,
            &names.namespace,
            &names.auth_config_map(),
        )
        .await
        .map_err(kube_err("removing the auth ConfigMap"))?;
        sync_pull_secrets(ctx, registry, names, &BTreeSet::new(), None).await?;
        return Ok(AuthOutcome {
            state: AuthState::Disabled,
            next_step: None,
            signer: None,
        });
    };
    apply::apply(client, &auth::auth_config_map(registry, names, &config))
        .await
        .map_err(kube_err("applying the auth ConfigMap"))?;

    // The token keys: kept while valid, rotated with overlap.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let stored = secrets
        .get_opt(&names.token_keys_secret())
        .await
        .map_err(kube_err("reading the token keys Secret"))?;
    let policy = KeyPolicy::new(std::time::Duration::from_secs(
        config.refresh_ttl_seconds.max(config.token_ttl_seconds),
    ));
    let plan = token_keys::plan(stored.as_ref(), now, policy, &mut keys::generate)?;
    if !token_keys::is_current(stored.as_ref(), &plan) {
        apply::apply(client, &token_keys::secret(registry, names, &plan))
            .await
            .map_err(kube_err("storing the token keys"))?;
    }
    if let Some(change) = plan.change {
        let (reason, note) = change.describe();
        publish(
            ctx,
            registry,
            EventType::Normal,
            reason,
            "RotateTokenKey",
            note.into(),
        )
        .await;
    }
    let mut next_step = Some(plan.next_step);

    // Pull secrets, signed with the key that signs now.
    let signer = Signer::from_pem(plan.signing_key().as_bytes())?;
    let wanted = match &spec.auth.pull_secrets {
        Some(p) => selected_namespaces(ctx, &p.namespace_selector).await?,
        None => BTreeSet::new(),
    };
    let synced = sync_pull_secrets(
        ctx,
        registry,
        names,
        &wanted,
        Some((&signer, cluster_ip, now)),
    )
    .await?;
    next_step = earliest(next_step, synced.renew_at);

    let state = match (&spec.auth.mode, &spec.auth.htpasswd) {
        (AuthMode::Htpasswd, Some(h)) => {
            let users = secrets
                .get_opt(&h.secret_name)
                .await
                .map_err(kube_err("reading the htpasswd Secret"))?;
            match users {
                None => AuthState::Pending {
                    reason: "HtpasswdSecretNotFound",
                    message: format!(
                        "Secret {}/{} (auth.htpasswd.secretName) does not exist: create it with `kubectl create secret generic {} --from-file=htpasswd=<file written by htpasswd -B>`",
                        names.namespace, h.secret_name, h.secret_name
                    ),
                },
                Some(s)
                    if !s
                        .data
                        .as_ref()
                        .is_some_and(|d| d.contains_key(auth::HTPASSWD_KEY)) =>
                {
                    AuthState::Pending {
                        reason: "HtpasswdKeyMissing",
                        message: format!(
                            "Secret {}/{} has no `htpasswd` key: put the htpasswd file under that key",
                            names.namespace, h.secret_name
                        ),
                    }
                }
                Some(_) => AuthState::Enabled { mode: "Htpasswd" },
            }
        }
        _ => AuthState::Enabled {
            mode: spec.auth.mode.as_str(),
        },
    };
    if matches!(state, AuthState::Pending { .. }) {
        // The user's Secret is not watched (it carries none of berth's
        // labels): look again soon rather than at the hourly resync.
        next_step = earliest(
            next_step,
            now.checked_add(jiff::SignedDuration::from_secs(30)).ok(),
        );
    }
    Ok(AuthOutcome {
        state,
        next_step,
        signer: Some(signer),
    })
}

/// The namespaces `selector` picks now.
async fn selected_namespaces(
    ctx: &Context,
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Result<BTreeSet<String>, Error> {
    let selector = Selector::try_from(selector.clone()).map_err(|e| {
        Error::InvalidSpec(format!(
            "auth.pullSecrets.namespaceSelector cannot be used: {e}"
        ))
    })?;
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let listed = api
        .list(&ListParams::default().labels_from(&selector))
        .await
        .map_err(kube_err("listing the namespaces auth.pullSecrets selects"))?;
    Ok(listed
        .items
        .into_iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter_map(|n| n.metadata.name)
        .collect())
}

/// What a pull secret sync did.
struct Synced {
    removed: usize,
    /// When the first robot token is due for renewal.
    renew_at: Option<Timestamp>,
}

/// Make the pull secrets exactly those for `wanted` (with a current robot
/// token, signed by `signing.0`), and remove every other pull secret this
/// Registry made.
async fn sync_pull_secrets(
    ctx: &Context,
    registry: &Registry,
    names: &Names,
    wanted: &BTreeSet<String>,
    signing: Option<(&Signer, Option<&str>, Timestamp)>,
) -> Result<Synced, Error> {
    let mut renew_at = None;
    let client = &ctx.client;
    let settings = registry.spec.auth.pull_secrets.clone();
    let secret_name = settings
        .as_ref()
        .map(|p| p.secret_name.clone())
        .unwrap_or_default();
    let add_to_sa = settings
        .as_ref()
        .is_some_and(|p| p.add_to_default_service_account);

    if let Some((signer, cluster_ip, now)) = signing {
        let hosts = pull_secret::registry_hosts(names, &registry.spec, cluster_ip);
        for ns in wanted {
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            let existing = api
                .get_opt(&secret_name)
                .await
                .map_err(kube_err(format!("reading pull secret {ns}/{secret_name}")))?;
            if let Some(e) = &existing
                && !pull_secret::is_ours(e, names)
            {
                tracing::warn!(namespace = %ns, secret = %secret_name, "a Secret of that name exists and was not made for this Registry; leaving it alone");
                publish(ctx, registry, EventType::Warning, "PullSecretConflict", "ProvisionPullSecret", format!("Secret {ns}/{secret_name} exists and was not made for this Registry: rename it, or set auth.pullSecrets.secretName to another name")).await;
                continue;
            }
            let token =
                match pull_secret::token_verdict(existing.as_ref(), names, ns, signer.kid(), now) {
                    TokenVerdict::Keep {
                        token,
                        renew_at: at,
                    } => {
                        renew_at = earliest(renew_at, Some(at));
                        token
                    }
                    TokenVerdict::Issue => {
                        let claims = pull_secret::robot_claims(names, ns, now, keys::random_id());
                        renew_at = earliest(renew_at, pull_secret::renewal_time(&claims));
                        signer.sign(&claims)?
                    }
                };
            let desired = pull_secret::pull_secret(
                names,
                ns,
                &secret_name,
                &pull_secret::docker_config(&hosts, &token),
            );
            if existing.as_ref().and_then(|e| e.data.as_ref()) != desired.data.as_ref()
                || existing.as_ref().and_then(|e| e.metadata.labels.as_ref())
                    != desired.metadata.labels.as_ref()
            {
                apply::apply(client, &desired)
                    .await
                    .map_err(kube_err(format!("applying pull secret {ns}/{secret_name}")))?;
            }
            if add_to_sa {
                let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
                if let Some(sa) = sas
                    .get_opt("default")
                    .await
                    .map_err(kube_err(format!("reading ServiceAccount {ns}/default")))?
                    && let Some(patch) = pull_secret::add_to_service_account(&sa, &secret_name)
                {
                    apply::merge_patch::<ServiceAccount>(client, ns, "default", &patch)
                        .await
                        .map_err(kube_err(format!(
                            "adding {secret_name} to the imagePullSecrets of ServiceAccount {ns}/default"
                        )))?;
                }
            }
        }
    }

    // Every pull secret this Registry made, anywhere, that is not wanted.
    let all: Api<Secret> = Api::all(client.clone());
    let selector = format!(
        "{}={},{}={}",
        labels::REGISTRY_LABEL,
        names.name,
        labels::REGISTRY_NAMESPACE_LABEL,
        names.namespace
    );
    let made = all
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_err("listing this Registry's pull secrets"))?;
    let mut removed = 0;
    for s in made.items {
        let (Some(ns), name) = (s.namespace(), s.name_any()) else {
            continue;
        };
        if s.type_.as_deref() != Some(pull_secret::DOCKER_CONFIG_TYPE) {
            continue;
        }
        if wanted.contains(&ns) && name == secret_name {
            continue;
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(kube_err(format!("removing pull secret {ns}/{name}"))(e)),
        }
        removed += 1;
        // Take it off the default account too, if it was put there.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        if let Ok(Some(sa)) = sas.get_opt("default").await
            && let Some(patch) = pull_secret::remove_from_service_account(&sa, &name)
            && let Err(e) =
                apply::merge_patch::<ServiceAccount>(client, &ns, "default", &patch).await
        {
            tracing::warn!(namespace = %ns, error = %e, "could not take the removed pull secret off the default ServiceAccount");
        }
    }
    Ok(Synced { removed, renew_at })
}

/// The Registries whose pull secrets a change of namespace `ns` may affect:
/// those that provision pull secrets at all (a namespace that stops
/// matching must lose its secret, so the selector cannot narrow this).
pub fn registries_for_namespace(
    registries: &[std::sync::Arc<Registry>],
) -> Vec<kube::runtime::reflector::ObjectRef<Registry>> {
    registries
        .iter()
        .filter(|r| r.spec.auth.pull_secrets.is_some())
        .map(|r| kube::runtime::reflector::ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// Whether `registry` is being deleted.
pub fn deleting(registry: &Registry) -> bool {
    registry.meta().deletion_timestamp.is_some()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::crd::PullSecrets;
    use crate::fixtures;

    #[test]
    fn a_namespace_change_wakes_only_registries_that_provision_pull_secrets() {
        let plain = Arc::new(fixtures::registry());
        let mut provisioning = fixtures::registry_with(|s| {
            s.auth.pull_secrets = Some(PullSecrets {
                namespace_selector: Default::default(),
                secret_name: "berth-pull".into(),
                add_to_default_service_account: false,
            })
        });
        provisioning.metadata.name = Some("cache".into());
        let woken = registries_for_namespace(&[plain, Arc::new(provisioning)]);
        assert_eq!(
            woken,
            [kube::runtime::reflector::ObjectRef::new("cache").within("team")]
        );
    }
}
