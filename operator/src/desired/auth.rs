//! What the registry needs to check who is calling: its ServiceAccount, the
//! ClusterRoleBinding that lets that account ask the apiserver (Kubernetes
//! mode), and the auth config file (`berth_access::AuthConfig`) the registry
//! reads from a ConfigMap.
//!
//! The config file is the whole contract with the registry: the operator
//! only translates `spec.auth` into it, and never restates its meaning.

use std::str::FromStr;

use berth_access::config::{
    self as access_config, AuthConfig, HtpasswdAuth, KubernetesAuth, Policy, Rule,
};
use berth_access::{Action, Mode};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::crd::{AccessPolicy, AuthMode, Registry, RepositoryAction};
use crate::desired::{config_file, labels, mirror, owner};
use crate::names::Names;

/// Where the registry pod finds the auth ConfigMap, the token keys and the
/// htpasswd file.
pub const AUTH_DIR: &str = "/etc/berth/auth";
pub const CONFIG_FILE: &str = "config.json";
pub const KEYS_DIR: &str = "/etc/berth/token-keys";
pub const HTPASSWD_DIR: &str = "/etc/berth/htpasswd";
/// The key of the user's htpasswd Secret.
pub const HTPASSWD_KEY: &str = "htpasswd";
/// The built-in ClusterRole that may create TokenReviews and
/// SubjectAccessReviews, and nothing else.
pub const AUTH_DELEGATOR: &str = "system:auth-delegator";
/// Access tokens live this long unless `auth.tokenTTL` says otherwise.
pub const DEFAULT_TOKEN_TTL_SECONDS: u64 = 300;
/// Refresh tokens (`docker login` keeps one) live this long.
pub const REFRESH_TTL_SECONDS: u64 = 86_400;

/// The ServiceAccount the registry pods run as. It never mounts its token
/// by itself: the pod template decides (only Kubernetes mode needs it).
pub fn service_account(registry: &Registry, names: &Names) -> ServiceAccount {
    ServiceAccount {
        metadata: owner::child_meta(registry, names, names.service_account(), true),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// Binds the registry's ServiceAccount to `system:auth-delegator`, so it
/// may ask TokenReview who a token is and SubjectAccessReview what they may
/// do. Cluster-scoped, so no owner reference: the labels name the Registry,
/// and the operator deletes the binding when the Registry goes (finalizer).
pub fn auth_delegator_binding(names: &Names) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(names.auth_delegator_binding()),
            labels: Some(labels::cross_namespace_labels(names)),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: AUTH_DELEGATOR.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: names.service_account(),
            namespace: Some(names.namespace.clone()),
            api_group: None,
        }]),
    }
}

/// Seconds in `auth.tokenTTL`; the default when unset or unreadable (the
/// CRD's pattern and CEL rule make the latter impossible in practice).
pub fn token_ttl_seconds(registry: &Registry) -> u64 {
    registry
        .spec
        .auth
        .token_ttl
        .as_deref()
        .and_then(|s| kube::core::Duration::from_str(s).ok())
        .filter(|d| !d.is_negative())
        .map(|d| std::time::Duration::from(d).as_secs().max(1))
        .unwrap_or(DEFAULT_TOKEN_TTL_SECONDS)
}

/// The auth config file for `registry`, or `None` in mode None (the
/// registry then runs without `--auth-config`, as it always did).
pub fn auth_config(registry: &Registry, names: &Names) -> Option<AuthConfig> {
    let auth = &registry.spec.auth;
    let mode = match auth.mode {
        AuthMode::None => return None,
        AuthMode::Kubernetes => Mode::Kubernetes,
        AuthMode::Htpasswd => Mode::Htpasswd,
    };
    let kubernetes = (auth.mode == AuthMode::Kubernetes).then(|| KubernetesAuth {
        audiences: vec![access_config::CREDENTIAL_PROVIDER_AUDIENCE.to_owned()],
        same_namespace_pull: auth
            .kubernetes
            .clone()
            .unwrap_or_default()
            .same_namespace_pull,
    });
    let htpasswd = (auth.mode == AuthMode::Htpasswd).then(|| HtpasswdAuth {
        file: format!("{HTPASSWD_DIR}/{HTPASSWD_KEY}").into(),
    });
    let policy = match (auth.mode, &auth.policy) {
        (AuthMode::Htpasswd, Some(policy)) => policy_of(policy),
        _ => Policy::default(),
    };
    Some(AuthConfig {
        mode,
        service: access_config::service_name(&names.namespace, &names.name),
        keys_dir: KEYS_DIR.into(),
        token_ttl_seconds: token_ttl_seconds(registry),
        refresh_ttl_seconds: REFRESH_TTL_SECONDS,
        kubernetes,
        htpasswd,
        policy,
        anonymous_pull: anonymous_pull(registry),
    })
}

/// `auth.anonymousPull`, plus `<prefix>/*` for each mirror: containerd
/// sends no credentials to a `hosts.toml` mirror, so nodes can only pull
/// mirrored images anonymously (in either mode).
fn anonymous_pull(registry: &Registry) -> Vec<String> {
    let mut patterns = registry.spec.auth.anonymous_pull.clone();
    for p in mirror::anonymous_pull_patterns(registry) {
        if !patterns.contains(&p) {
            patterns.push(p);
        }
    }
    patterns
}

fn action(a: RepositoryAction) -> Action {
    match a {
        RepositoryAction::Pull => Action::Pull,
        RepositoryAction::Push => Action::Push,
        RepositoryAction::Delete => Action::Delete,
    }
}

/// `spec.auth.policy` as the registry reads it: field for field.
pub fn policy_of(policy: &AccessPolicy) -> Policy {
    Policy {
        groups: policy.groups.clone(),
        rules: policy
            .rules
            .iter()
            .map(|r| Rule {
                repositories: r.repositories.clone(),
                users: r.users.clone(),
                groups: r.groups.clone(),
                actions: r.actions.iter().copied().map(action).collect(),
            })
            .collect(),
        authenticated: policy.authenticated.iter().copied().map(action).collect(),
    }
}

/// The ConfigMap `<name>-auth` holding [`CONFIG_FILE`].
pub fn auth_config_map(registry: &Registry, names: &Names, config: &AuthConfig) -> ConfigMap {
    config_file::config_map(
        registry,
        names,
        names.auth_config_map(),
        CONFIG_FILE,
        config,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AccessRule, HtpasswdAuth as SpecHtpasswd, KubernetesAuth as SpecK8s};
    use crate::fixtures;
    use std::collections::BTreeMap;

    #[test]
    fn the_default_registry_runs_in_kubernetes_mode_with_the_credential_provider_audience() {
        let config = auth_config(&fixtures::registry(), &fixtures::names()).expect("config");
        assert_eq!(config.mode, Mode::Kubernetes);
        assert_eq!(config.service, "hub.team.registry.berth.dev");
        assert_eq!(config.keys_dir, std::path::PathBuf::from(KEYS_DIR));
        assert_eq!(config.token_ttl_seconds, 300);
        let k8s = config.kubernetes.expect("kubernetes");
        assert_eq!(k8s.audiences, vec!["berth.dev".to_owned()]);
        assert!(k8s.same_namespace_pull);
        assert_eq!(config.htpasswd, None);
        assert_eq!(config.policy, Policy::default());
    }

    #[test]
    fn mirror_prefixes_join_anonymous_pull_because_nodes_send_no_credentials_to_a_mirror() {
        let mirror = |prefix: &str| fixtures::mirror(prefix, &format!("https://{prefix}"));
        let r = fixtures::registry_with(|s| {
            s.auth.anonymous_pull = vec!["public/*".into(), "ghcr.io/*".into()];
            s.mirrors = vec![mirror("docker.io"), mirror("ghcr.io")];
        });
        let config = auth_config(&r, &fixtures::names()).expect("config");
        assert_eq!(
            config.anonymous_pull,
            ["public/*", "ghcr.io/*", "docker.io/*"],
            "the user's patterns first, no duplicates"
        );
        assert!(config.anonymous_pull("docker.io/library/nginx"));
        assert!(!config.anonymous_pull("team/app"));
        let htpasswd = fixtures::registry_with(|s| {
            s.auth.mode = AuthMode::Htpasswd;
            s.auth.htpasswd = Some(SpecHtpasswd {
                secret_name: "users".into(),
            });
            s.mirrors = vec![mirror("quay.io")];
        });
        let config = auth_config(&htpasswd, &fixtures::names()).expect("config");
        assert_eq!(config.anonymous_pull, ["quay.io/*"]);
    }

    #[test]
    fn same_namespace_pull_can_be_turned_off() {
        let r = fixtures::registry_with(|s| {
            s.auth.kubernetes = Some(SpecK8s {
                same_namespace_pull: false,
            })
        });
        let config = auth_config(&r, &fixtures::names()).expect("config");
        assert!(!config.kubernetes.expect("kubernetes").same_namespace_pull);
    }

    #[test]
    fn mode_none_has_no_config_file() {
        let r = fixtures::registry_with(|s| s.auth.mode = AuthMode::None);
        assert_eq!(auth_config(&r, &fixtures::names()), None);
    }

    #[test]
    fn htpasswd_mode_points_at_the_mounted_file_and_carries_the_policy() {
        let r = fixtures::registry_with(|s| {
            s.auth.mode = AuthMode::Htpasswd;
            s.auth.htpasswd = Some(SpecHtpasswd {
                secret_name: "users".into(),
            });
            s.auth.policy = Some(AccessPolicy {
                groups: BTreeMap::from([("devs".into(), vec!["bob".into()])]),
                rules: vec![AccessRule {
                    repositories: "team/*".into(),
                    users: vec!["alice".into()],
                    groups: vec!["devs".into()],
                    actions: vec![RepositoryAction::Pull, RepositoryAction::Push],
                }],
                authenticated: vec![RepositoryAction::Pull],
            });
            s.auth.anonymous_pull = vec!["public/*".into()];
            s.auth.token_ttl = Some("10m".into());
        });
        let config = auth_config(&r, &fixtures::names()).expect("config");
        assert_eq!(config.mode, Mode::Htpasswd);
        assert_eq!(config.kubernetes, None);
        assert_eq!(
            config.htpasswd.expect("htpasswd").file,
            std::path::PathBuf::from("/etc/berth/htpasswd/htpasswd")
        );
        assert_eq!(config.token_ttl_seconds, 600);
        assert_eq!(config.anonymous_pull, vec!["public/*".to_owned()]);
        let bob = config.policy.groups_of("bob");
        assert_eq!(
            config.policy.actions("bob", &bob, "team/app"),
            berth_access::Actions::of(&[Action::Pull, Action::Push])
        );
        assert_eq!(
            config.policy.actions("carol", &[], "team/app"),
            berth_access::Actions::of(&[Action::Pull])
        );
    }

    #[test]
    fn the_config_map_holds_json_the_registry_can_read_back() {
        let r = fixtures::registry();
        let config = auth_config(&r, &fixtures::names()).expect("config");
        let cm = auth_config_map(&r, &fixtures::names(), &config);
        assert_eq!(cm.metadata.name.as_deref(), Some("hub-auth"));
        assert!(cm.metadata.owner_references.is_some());
        let text = &cm.data.expect("data")[CONFIG_FILE];
        let back: AuthConfig = serde_json::from_str(text).expect("json");
        assert_eq!(back, config);
    }

    #[test]
    fn the_config_hash_changes_with_the_config_only() {
        let names = fixtures::names();
        let a = auth_config(&fixtures::registry(), &names).expect("a");
        let b = auth_config(&fixtures::registry(), &names).expect("b");
        assert_eq!(config_file::hash(&a), config_file::hash(&b));
        let c = auth_config(
            &fixtures::registry_with(|s| s.auth.anonymous_pull = vec!["public/*".into()]),
            &names,
        )
        .expect("c");
        assert_ne!(config_file::hash(&a), config_file::hash(&c));
        assert!(config_file::hash(&a).starts_with("sha256:"));
    }

    #[test]
    fn the_binding_gives_the_registry_account_auth_delegation_only() {
        let b = auth_delegator_binding(&fixtures::names());
        assert_eq!(b.metadata.name.as_deref(), Some("berth-registry:team:hub"));
        assert_eq!(b.role_ref.kind, "ClusterRole");
        assert_eq!(b.role_ref.name, "system:auth-delegator");
        let subject = &b.subjects.expect("subjects")[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", "hub-registry", Some("team"))
        );
        let labels = b.metadata.labels.expect("labels");
        assert_eq!(labels[labels::REGISTRY_LABEL], "hub");
        assert_eq!(labels[labels::REGISTRY_NAMESPACE_LABEL], "team");
        assert_eq!(b.metadata.owner_references, None);
    }

    #[test]
    fn the_service_account_does_not_mount_its_token_by_itself() {
        let sa = service_account(&fixtures::registry(), &fixtures::names());
        assert_eq!(sa.metadata.name.as_deref(), Some("hub-registry"));
        assert_eq!(sa.automount_service_account_token, Some(false));
        assert!(sa.metadata.owner_references.is_some());
    }
}
