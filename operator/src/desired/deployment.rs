//! The registry Deployment.
//!
//! One container running `berth-registry serve` over HTTPS on 5443, with the
//! TLS Secret mounted read-only (the registry re-reads the files when the
//! kubelet swaps them, so a renewed certificate needs no restart) and its
//! storage ([`storage::wiring`]). Locked down as far as a registry allows:
//! non-root, read-only root filesystem, no capabilities, the runtime's
//! default seccomp profile. On a ReadWriteOnce volume `Recreate`, because
//! one pod at a time can mount it; on object storage a rolling update that
//! keeps every replica serving, replicas spread over nodes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::{AuthMode, Registry};
use crate::desired::{
    auth, config_file, gc, labels, mirror, notify, owner, quota, storage, ui_session,
};
use crate::names::Names;

/// The port the registry listens on inside the pod (unprivileged).
pub const CONTAINER_PORT: i32 = 5443;
pub const PORT_NAME: &str = "https";
pub const TLS_DIR: &str = "/etc/berth/tls";
/// The pod template annotation holding the auth config's hash: a changed
/// config rolls the pods; rotated keys and edited users do not (the
/// registry re-reads those files).
pub const AUTH_CONFIG_HASH: &str = "berth.dev/auth-config";
/// The pod template annotation holding the notification config's hash.
pub const NOTIFY_CONFIG_HASH: &str = "berth.dev/notify-config";
/// The hash of the mirror config on the pod template.
pub const MIRROR_CONFIG_HASH: &str = "berth.dev/mirror-config";
/// The nonroot uid/gid of distroless images.
pub const RUN_AS: i64 = 65532;

/// The Deployment for `registry`; `default_image` is used when the spec
/// names none.
pub fn deployment(registry: &Registry, names: &Names, default_image: &str) -> Deployment {
    let spec = &registry.spec;
    let image = spec
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| default_image.to_owned());
    let selector = labels::selector(names);
    let tls_args = [
        "--tls-cert".to_owned(),
        format!("{TLS_DIR}/tls.crt"),
        "--tls-key".to_owned(),
        format!("{TLS_DIR}/tls.key"),
    ];
    let auth_config = auth::auth_config(registry, names);
    let auth_args = auth_config.as_ref().map(|_| {
        [
            "--auth-config".to_owned(),
            format!("{}/{}", auth::AUTH_DIR, auth::CONFIG_FILE),
        ]
    });
    let notify_config = notify::notify_config(registry);
    let mirror_config = mirror::mirror_config(registry);
    let quota_config = quota::quota_config(registry);
    let storage = storage::wiring(registry, names);
    let args = ["serve", "--listen"]
        .into_iter()
        .map(String::from)
        .chain([format!("0.0.0.0:{CONTAINER_PORT}")])
        .chain(storage.args)
        .chain(gc_args(registry))
        .chain(ui_args(registry, names))
        .chain(ui_session::args(registry))
        .chain(tls_args)
        .chain(auth_args.into_iter().flatten())
        .chain(notify::args(notify_config.as_ref()))
        .chain(mirror::args(mirror_config.as_ref()))
        .chain(quota::args(quota_config.as_ref()))
        .collect();
    let (auth_mounts, auth_volumes) = auth_volumes(registry, names, auth_config.is_some());
    let (gc_mounts, gc_volumes) = gc_volumes(registry, names);
    let (notify_mounts, notify_volumes) = notify::volumes(registry, names);
    let (mirror_mounts, mirror_volumes) = mirror::volumes(registry, names);
    let (quota_mounts, quota_volumes) = quota::volumes(registry, names);
    let (session_mounts, session_volumes) = ui_session::volumes(registry, names);
    let template_annotations: BTreeMap<String, String> = auth_config
        .as_ref()
        .map(|c| (AUTH_CONFIG_HASH.to_owned(), config_file::hash(c)))
        .into_iter()
        .chain(
            notify_config
                .as_ref()
                .map(|c| (NOTIFY_CONFIG_HASH.to_owned(), config_file::hash(c))),
        )
        .chain(
            mirror_config
                .as_ref()
                .map(|c| (MIRROR_CONFIG_HASH.to_owned(), config_file::hash(c))),
        )
        .collect();
    let template_annotations = Some(template_annotations).filter(|a| !a.is_empty());

    let container = Container {
        name: "registry".to_owned(),
        image: Some(image),
        image_pull_policy: Some(spec.image_pull_policy.as_str().to_owned()),
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_owned()),
            container_port: CONTAINER_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        // Ready only while storage takes writes (a full volume takes the
        // pod out of the Service); alive as long as the process answers.
        readiness_probe: Some(health_probe("/readyz", 5, 3)),
        liveness_probe: Some(health_probe("/healthz", 20, 6)),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(
            storage
                .mounts
                .into_iter()
                .chain([
                    VolumeMount {
                        name: "tls".into(),
                        mount_path: TLS_DIR.into(),
                        read_only: Some(true),
                        ..VolumeMount::default()
                    },
                    VolumeMount {
                        name: "tmp".into(),
                        mount_path: "/tmp".into(),
                        ..VolumeMount::default()
                    },
                ])
                .chain(auth_mounts)
                .chain(gc_mounts)
                .chain(notify_mounts)
                .chain(mirror_mounts)
                .chain(quota_mounts)
                .chain(session_mounts)
                .collect(),
        ),
        env: Some(storage.env).filter(|e| !e.is_empty()),
        ..Container::default()
    };

    Deployment {
        metadata: owner::child_meta(registry, names, names.deployment(), true),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            },
            strategy: Some(strategy(storage.shared)),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels::labels(names)),
                    annotations: template_annotations,
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    service_account_name: Some(names.service_account()),
                    // Only Kubernetes mode calls the Kubernetes API
                    // (TokenReview, SubjectAccessReview).
                    automount_service_account_token: Some(spec.auth.mode == AuthMode::Kubernetes),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        // Makes the data volume writable by the registry's gid.
                        fs_group: Some(RUN_AS),
                        fs_group_change_policy: Some("OnRootMismatch".to_owned()),
                        seccomp_profile: Some(runtime_default()),
                        ..PodSecurityContext::default()
                    }),
                    topology_spread_constraints: (spec.replicas > 1).then(|| {
                        vec![TopologySpreadConstraint {
                            max_skew: 1,
                            topology_key: "kubernetes.io/hostname".into(),
                            // Spread when nodes allow; a one-node cluster still runs them all.
                            when_unsatisfiable: "ScheduleAnyway".into(),
                            label_selector: Some(LabelSelector {
                                match_labels: Some(labels::selector(names)),
                                match_expressions: None,
                            }),
                            ..TopologySpreadConstraint::default()
                        }]
                    }),
                    volumes: Some(
                        storage
                            .volumes
                            .into_iter()
                            .chain([
                                Volume {
                                    name: "tls".into(),
                                    secret: Some(SecretVolumeSource {
                                        secret_name: Some(names.serving_secret(spec)),
                                        default_mode: Some(0o440),
                                        ..SecretVolumeSource::default()
                                    }),
                                    ..Volume::default()
                                },
                                Volume {
                                    name: "tmp".into(),
                                    empty_dir: Some(EmptyDirVolumeSource {
                                        size_limit: Some(Quantity("1Gi".into())),
                                        medium: None,
                                    }),
                                    ..Volume::default()
                                },
                            ])
                            .chain(auth_volumes)
                            .chain(gc_volumes)
                            .chain(notify_volumes)
                            .chain(mirror_volumes)
                            .chain(quota_volumes)
                            .chain(session_volumes)
                            .collect(),
                    ),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// `--ui off` when the Registry turns its web UI off (on is the default);
/// with it on, `--node-endpoint` with what `status.endpoints.node` says,
/// for the pull references the UI shows for pods.
fn ui_args(registry: &Registry, names: &Names) -> Vec<String> {
    if !registry.spec.ui.enabled {
        return vec!["--ui".to_owned(), "off".to_owned()];
    }
    names
        .endpoints(&registry.spec)
        .node
        .map(|node| vec!["--node-endpoint".to_owned(), node])
        .unwrap_or_default()
}

/// `--gc-interval` and `--gc-grace` when GC is on, and the files of the
/// `<name>-gc` ConfigMap (retention rules, images in use).
fn gc_args(registry: &Registry) -> Vec<String> {
    let gc = &registry.spec.gc;
    let Some(interval) = &gc.interval else {
        return Vec::new();
    };
    let mut args = vec!["--gc-interval".to_owned(), interval.clone()];
    if let Some(grace) = &gc.grace {
        args.extend(["--gc-grace".to_owned(), grace.clone()]);
    }
    args.extend([
        "--gc-retention".to_owned(),
        format!("{}/{}", gc::GC_DIR, gc::RETENTION_FILE),
        "--gc-in-use".to_owned(),
        format!("{}/{}", gc::GC_DIR, gc::IN_USE_FILE),
    ]);
    args
}

/// The `<name>-gc` ConfigMap, read-only, when GC is on. Optional: until the
/// operator has listed the pods once, the registry skips its GC runs (it
/// never collects without knowing what runs) rather than not starting.
fn gc_volumes(registry: &Registry, names: &Names) -> (Vec<VolumeMount>, Vec<Volume>) {
    if registry.spec.gc.is_off() {
        return (Vec::new(), Vec::new());
    }
    (
        vec![VolumeMount {
            name: "gc".into(),
            mount_path: gc::GC_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }],
        vec![Volume {
            name: "gc".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.gc_config_map(),
                optional: Some(true),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }],
    )
}

/// `Recreate` for a volume one pod at a time can mount; otherwise a new
/// pod is Ready before an old one goes, so a rollout never stops pulls.
fn strategy(shared_storage: bool) -> DeploymentStrategy {
    if !shared_storage {
        return DeploymentStrategy {
            type_: Some("Recreate".to_owned()),
            rolling_update: None,
        };
    }
    DeploymentStrategy {
        type_: Some("RollingUpdate".to_owned()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(1)),
            max_unavailable: Some(IntOrString::Int(0)),
        }),
    }
}

/// The auth ConfigMap, the token keys and (Htpasswd mode) the user's
/// htpasswd Secret, read-only; nothing when auth is off.
fn auth_volumes(
    registry: &Registry,
    names: &Names,
    enabled: bool,
) -> (Vec<VolumeMount>, Vec<Volume>) {
    if !enabled {
        return (Vec::new(), Vec::new());
    }
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let secret = |name: &str, secret_name: String, items: Option<Vec<KeyToPath>>| Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name),
            default_mode: Some(0o440),
            items,
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mut mounts = vec![
        mount("auth", auth::AUTH_DIR),
        mount("token-keys", auth::KEYS_DIR),
    ];
    let mut volumes = vec![
        Volume {
            name: "auth".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.auth_config_map(),
                default_mode: Some(0o444),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        secret("token-keys", names.token_keys_secret(), None),
    ];
    if let (AuthMode::Htpasswd, Some(htpasswd)) =
        (registry.spec.auth.mode, &registry.spec.auth.htpasswd)
    {
        mounts.push(mount("htpasswd", auth::HTPASSWD_DIR));
        volumes.push(secret(
            "htpasswd",
            htpasswd.secret_name.clone(),
            Some(vec![KeyToPath {
                key: auth::HTPASSWD_KEY.into(),
                path: auth::HTPASSWD_KEY.into(),
                mode: None,
            }]),
        ));
    }
    (mounts, volumes)
}

/// `GET <path>` over HTTPS (the kubelet does not verify the certificate).
fn health_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(PORT_NAME.to_owned()),
            scheme: Some("HTTPS".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(3),
        ..Probe::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

/// Enough for a small team's registry; a memory limit so a runaway upload
/// cannot take the node down.
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("50m".into())),
            ("memory".to_owned(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("512Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PullPolicy;
    use crate::fixtures;

    fn build(registry: &Registry) -> Deployment {
        deployment(
            registry,
            &fixtures::names(),
            "berth.dev/berth-registry:0.1.0",
        )
    }

    fn on_object_storage(replicas: i32) -> Registry {
        fixtures::registry_with(|s| {
            s.replicas = replicas;
            s.storage.filesystem = None;
            s.storage.s3 = Some(crate::crd::S3Storage {
                bucket: "images".into(),
                region: "us-east-1".into(),
                endpoint: None,
                prefix: None,
                credentials_secret: crate::crd::SecretName { name: "s3".into() },
                redirect: None,
            });
        })
    }

    #[test]
    fn a_volume_one_pod_mounts_is_replaced_not_rolled() {
        let d = build(&fixtures::registry());
        let strategy = d.spec.and_then(|s| s.strategy).expect("strategy");
        assert_eq!(strategy.type_.as_deref(), Some("Recreate"));
    }

    #[test]
    fn replicas_on_object_storage_roll_one_at_a_time_and_spread_over_nodes() {
        let d = build(&on_object_storage(2));
        let spec = d.spec.expect("spec");
        let strategy = spec.strategy.expect("strategy");
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        let rolling = strategy.rolling_update.expect("rolling update");
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
        let pod = spec.template.spec.expect("pod");
        let spread = pod.topology_spread_constraints.expect("spread");
        assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
        assert!(
            pod.volumes
                .unwrap_or_default()
                .iter()
                .all(|v| v.persistent_volume_claim.is_none()),
            "no data claim"
        );
        let container = &pod.containers[0];
        let args = container.args.clone().unwrap_or_default();
        assert!(args.windows(2).any(|w| w == ["--s3-bucket", "images"]));
        assert!(!args.contains(&"--data".to_owned()));
        assert_eq!(container.env.as_ref().map(Vec::len), Some(2));
    }

    #[test]
    fn garbage_collection_runs_only_when_an_interval_is_set() {
        let args = |r: &Registry| {
            build(r)
                .spec
                .and_then(|s| s.template.spec)
                .expect("pod")
                .containers[0]
                .args
                .clone()
                .unwrap_or_default()
        };
        assert!(
            !args(&fixtures::registry())
                .iter()
                .any(|a| a.starts_with("--gc"))
        );
        let on = fixtures::registry_with(|s| {
            s.gc.interval = Some("6h".into());
            s.gc.grace = Some("30m".into());
        });
        let a = args(&on);
        assert!(a.windows(2).any(|w| w == ["--gc-interval", "6h"]), "{a:?}");
        assert!(a.windows(2).any(|w| w == ["--gc-grace", "30m"]), "{a:?}");
    }

    #[test]
    fn the_ui_is_told_the_node_endpoint_and_its_session_key_file() {
        let args = |d: &Deployment| container(d).args.clone().unwrap_or_default();
        let mut registry = fixtures::registry();
        registry.spec.service.port = 5000;
        registry.spec.node_trust.host_name = Some("hub.berth.internal".into());
        let d = build(&registry);
        let a = args(&d);
        let names = fixtures::names();
        // The same value the operator reports in status.endpoints.node.
        assert_eq!(
            names.endpoints(&registry.spec).node.as_deref(),
            Some("hub.berth.internal:5000")
        );
        assert!(
            a.windows(2)
                .any(|w| w == ["--node-endpoint", "hub.berth.internal:5000"]),
            "{a:?}"
        );
        assert!(
            a.windows(2)
                .any(|w| w == ["--ui-session-key", "/etc/berth/ui-session/session.key"]),
            "{a:?}"
        );
        assert_eq!(
            mount_path(&d, "ui-session").as_deref(),
            Some("/etc/berth/ui-session")
        );
        let secret = volume(&d, "ui-session")
            .and_then(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.clone());
        assert_eq!(secret, Some(names.ui_session_secret()));

        registry.spec.ui.enabled = false;
        let off = build(&registry);
        let a = args(&off);
        assert!(
            !a.iter()
                .any(|x| x == "--node-endpoint" || x == "--ui-session-key"),
            "{a:?}"
        );
        assert!(volume(&off, "ui-session").is_none());
    }

    #[test]
    fn the_web_ui_is_turned_off_only_when_the_spec_says() {
        let args = |r: &Registry| {
            build(r)
                .spec
                .and_then(|s| s.template.spec)
                .expect("pod")
                .containers[0]
                .args
                .clone()
                .unwrap_or_default()
        };
        assert!(!args(&fixtures::registry()).iter().any(|a| a == "--ui"));
        let off = fixtures::registry_with(|s| s.ui.enabled = false);
        let a = args(&off);
        assert!(a.windows(2).any(|w| w == ["--ui", "off"]), "{a:?}");
    }

    #[test]
    fn with_gc_on_the_registry_reads_retention_and_images_in_use_from_the_gc_config_map() {
        let on = fixtures::registry_with(|s| s.gc.interval = Some("6h".into()));
        let d = build(&on);
        let c = container(&d);
        let a = c.args.clone().unwrap_or_default();
        assert!(
            a.windows(2)
                .any(|w| w == ["--gc-in-use", "/etc/berth/gc/in-use.json"]),
            "{a:?}"
        );
        assert!(
            a.windows(2)
                .any(|w| w == ["--gc-retention", "/etc/berth/gc/retention.json"]),
            "{a:?}"
        );
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "gc")
            .expect("gc mount");
        assert_eq!(mount.read_only, Some(true));
        let volume = pod(&d)
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "gc")
            .expect("gc volume");
        let cm = volume.config_map.as_ref().expect("a ConfigMap");
        assert_eq!(cm.name, "hub-gc");
        assert_eq!(cm.optional, Some(true));
        let off = build(&fixtures::registry());
        assert!(!pod(&off).volumes.iter().flatten().any(|v| v.name == "gc"));
    }

    #[test]
    fn with_quotas_the_registry_reads_them_from_the_quota_config_map() {
        let on = fixtures::registry_with(|s| {
            s.gc.interval = Some("6h".into());
            s.quotas = Some(crate::crd::Quotas {
                default: Some("10Gi".into()),
                namespaces: Default::default(),
            });
        });
        let d = build(&on);
        let c = container(&d);
        let a = c.args.clone().unwrap_or_default();
        assert!(
            a.windows(2)
                .any(|w| w == ["--quota-config", "/etc/berth/quota/quotas.json"]),
            "{a:?}"
        );
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "quota")
            .expect("quota mount");
        assert_eq!(mount.mount_path, "/etc/berth/quota");
        assert_eq!(mount.read_only, Some(true));
        let volume = pod(&d)
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "quota")
            .expect("quota volume");
        assert!(volume.config_map.is_some(), "{volume:?}");
        let off = build(&fixtures::registry());
        assert!(
            !pod(&off)
                .volumes
                .iter()
                .flatten()
                .any(|v| v.name == "quota")
        );
        assert!(
            !container(&off)
                .args
                .iter()
                .flatten()
                .any(|a| a == "--quota-config")
        );
    }

    #[test]
    fn one_replica_has_no_spread_constraint() {
        let d = build(&on_object_storage(1));
        let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
        assert!(pod.topology_spread_constraints.is_none());
    }

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
    }

    fn container(d: &Deployment) -> &Container {
        &pod(d).containers[0]
    }

    fn no_auth() -> Registry {
        fixtures::registry_with(|s| s.auth.mode = AuthMode::None)
    }

    fn volume<'a>(d: &'a Deployment, name: &str) -> Option<&'a Volume> {
        pod(d).volumes.as_ref()?.iter().find(|v| v.name == name)
    }

    fn mount_path(d: &Deployment, name: &str) -> Option<String> {
        container(d)
            .volume_mounts
            .as_ref()?
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.mount_path.clone())
    }

    #[test]
    fn kubernetes_mode_mounts_the_auth_config_and_keys_and_the_account_token() {
        let d = build(&fixtures::registry());
        let args = container(&d).args.clone().expect("args");
        assert_eq!(
            args[args.len() - 2..],
            ["--auth-config", "/etc/berth/auth/config.json"]
        );
        assert_eq!(
            pod(&d).service_account_name.as_deref(),
            Some("hub-registry")
        );
        assert_eq!(pod(&d).automount_service_account_token, Some(true));
        assert_eq!(
            volume(&d, "auth")
                .and_then(|v| v.config_map.as_ref())
                .map(|c| c.name.as_str()),
            Some("hub-auth")
        );
        assert_eq!(
            volume(&d, "token-keys")
                .and_then(|v| v.secret.as_ref())
                .and_then(|s| s.secret_name.as_deref()),
            Some("hub-token-keys")
        );
        assert_eq!(mount_path(&d, "auth").as_deref(), Some("/etc/berth/auth"));
        assert_eq!(
            mount_path(&d, "token-keys").as_deref(),
            Some("/etc/berth/token-keys")
        );
        assert!(volume(&d, "htpasswd").is_none());
        let annotations = d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .expect("annotations");
        assert!(annotations[AUTH_CONFIG_HASH].starts_with("sha256:"));
    }

    #[test]
    fn htpasswd_mode_mounts_the_users_and_no_account_token() {
        let r = fixtures::registry_with(|s| {
            s.auth.mode = AuthMode::Htpasswd;
            s.auth.htpasswd = Some(crate::crd::HtpasswdAuth {
                secret_name: "users".into(),
            });
        });
        let d = build(&r);
        assert_eq!(pod(&d).automount_service_account_token, Some(false));
        let secret = volume(&d, "htpasswd")
            .and_then(|v| v.secret.clone())
            .expect("htpasswd volume");
        assert_eq!(secret.secret_name.as_deref(), Some("users"));
        assert_eq!(secret.items.expect("items")[0].key.as_str(), "htpasswd");
        assert_eq!(
            mount_path(&d, "htpasswd").as_deref(),
            Some("/etc/berth/htpasswd")
        );
    }

    #[test]
    fn a_config_change_changes_the_pod_template_and_an_unchanged_one_does_not() {
        let hash = |r: &Registry| {
            build(r)
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations)
                .map(|a| a[AUTH_CONFIG_HASH].clone())
        };
        let base = hash(&fixtures::registry());
        assert_eq!(base, hash(&fixtures::registry()));
        let changed = fixtures::registry_with(|s| s.auth.anonymous_pull = vec!["public/*".into()]);
        assert_ne!(base, hash(&changed));
        assert_eq!(hash(&no_auth()), None);
    }

    #[test]
    fn mirrors_add_the_config_arg_its_volumes_and_a_hash_that_rolls_the_pods() {
        let annotation = |d: &Deployment, key: &str| {
            d.spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(key).cloned())
        };
        let plain = build(&fixtures::registry());
        let args = container(&plain).args.clone().expect("args");
        assert!(!args.contains(&"--mirror-config".to_owned()));
        assert!(volume(&plain, "mirror").is_none());
        assert_eq!(annotation(&plain, MIRROR_CONFIG_HASH), None);

        let mirrored = fixtures::registry_with(|s| {
            s.mirrors = vec![crate::crd::Mirror {
                prefix: "docker.io".into(),
                url: "https://registry-1.docker.io".into(),
                credentials_secret: Some("hub-login".into()),
                repositories: Vec::new(),
                tag_freshness: None,
                ca_secret: None,
                max_age: None,
                max_size: None,
            }];
        });
        let d = build(&mirrored);
        let args = container(&d).args.clone().expect("args");
        let at = args
            .iter()
            .position(|a| a == "--mirror-config")
            .expect("--mirror-config");
        assert_eq!(args[at + 1], "/etc/berth/mirror/config.json");
        assert_eq!(
            mount_path(&d, "mirror").as_deref(),
            Some("/etc/berth/mirror")
        );
        assert_eq!(
            mount_path(&d, "mirror-0-credentials").as_deref(),
            Some("/etc/berth/mirror-secrets/docker.io/credentials")
        );
        assert!(volume(&d, "mirror-0-credentials").is_some());
        let hash = annotation(&d, MIRROR_CONFIG_HASH).expect("hash");
        assert!(hash.starts_with("sha256:"), "{hash}");
        assert_ne!(
            annotation(&d, AUTH_CONFIG_HASH),
            annotation(&plain, AUTH_CONFIG_HASH),
            "the auth config gains anonymous pull of docker.io/*"
        );
    }

    #[test]
    fn mode_none_runs_without_auth_as_before() {
        let d = build(&no_auth());
        let args = container(&d).args.clone().expect("args");
        assert!(!args.contains(&"--auth-config".to_owned()));
        assert!(volume(&d, "auth").is_none() && volume(&d, "token-keys").is_none());
        assert_eq!(pod(&d).automount_service_account_token, Some(false));
    }

    #[test]
    fn the_registry_serves_tls_on_5443_from_the_mounted_secret() {
        let d = build(&no_auth());
        let args = container(&d).args.clone().expect("args");
        let node = fixtures::names()
            .endpoints(&no_auth().spec)
            .node
            .expect("a node endpoint");
        assert_eq!(
            args,
            [
                "serve",
                "--listen",
                "0.0.0.0:5443",
                "--data",
                "/var/lib/registry",
                "--node-endpoint",
                &node,
                "--ui-session-key",
                "/etc/berth/ui-session/session.key",
                "--tls-cert",
                "/etc/berth/tls/tls.crt",
                "--tls-key",
                "/etc/berth/tls/tls.key"
            ]
        );
        let tls = pod(&d)
            .volumes
            .as_ref()
            .expect("volumes")
            .iter()
            .find(|v| v.name == "tls")
            .expect("tls volume");
        assert_eq!(
            tls.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
            Some("hub-tls")
        );
        let data = pod(&d)
            .volumes
            .as_ref()
            .expect("volumes")
            .iter()
            .find(|v| v.name == "data")
            .expect("data volume");
        assert_eq!(
            data.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("hub-data")
        );
    }

    #[test]
    fn the_default_image_is_used_unless_the_spec_names_one() {
        assert_eq!(
            container(&build(&fixtures::registry())).image.as_deref(),
            Some("berth.dev/berth-registry:0.1.0")
        );
        let custom = fixtures::registry_with(|s| s.image = Some("corp/registry:7".into()));
        assert_eq!(
            container(&build(&custom)).image.as_deref(),
            Some("corp/registry:7")
        );
        assert_eq!(
            container(&build(&custom)).image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        let always = fixtures::registry_with(|s| s.image_pull_policy = PullPolicy::Always);
        assert_eq!(
            container(&build(&always)).image_pull_policy.as_deref(),
            Some("Always")
        );
    }

    #[test]
    fn the_container_runs_locked_down() {
        let d = build(&fixtures::registry());
        let sc = container(&d)
            .security_context
            .clone()
            .expect("security context");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.run_as_user, Some(65532));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(
            sc.seccomp_profile.map(|p| p.type_),
            Some("RuntimeDefault".to_owned())
        );
        assert_eq!(
            pod(&d).security_context.as_ref().and_then(|p| p.fs_group),
            Some(65532)
        );
    }

    #[test]
    fn readiness_checks_readyz_and_liveness_healthz_over_https() {
        let d = build(&fixtures::registry());
        for (probe, path) in [
            (container(&d).readiness_probe.clone(), "/readyz"),
            (container(&d).liveness_probe.clone(), "/healthz"),
        ] {
            let get = probe.and_then(|p| p.http_get).expect("http probe");
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
            assert_eq!(get.port, IntOrString::String("https".into()));
        }
    }

    #[test]
    fn pods_are_recreated_not_rolled_because_the_volume_is_read_write_once() {
        let d = build(&fixtures::registry());
        let spec = d.spec.expect("spec");
        assert_eq!(
            spec.strategy.and_then(|s| s.type_).as_deref(),
            Some("Recreate")
        );
        assert_eq!(spec.replicas, Some(1));
    }

    #[test]
    fn the_selector_matches_the_pod_labels() {
        let d = build(&fixtures::registry());
        let spec = d.spec.expect("spec");
        let pod_labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .expect("labels");
        for (key, value) in spec.selector.match_labels.expect("selector") {
            assert_eq!(pod_labels.get(&key), Some(&value));
        }
    }

    #[test]
    fn resources_default_and_can_be_set() {
        let d = build(&fixtures::registry());
        assert_eq!(container(&d).resources, Some(default_resources()));
        let custom = ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("2Gi".into()),
            )])),
            ..ResourceRequirements::default()
        };
        let r = fixtures::registry_with(|s| s.resources = Some(custom.clone()));
        assert_eq!(container(&build(&r)).resources, Some(custom));
    }

    #[test]
    fn the_same_registry_always_yields_the_same_deployment() {
        assert_eq!(build(&fixtures::registry()), build(&fixtures::registry()));
    }
}
