//! The registry Deployment.
//!
//! One container running `berth-registry serve` over HTTPS on 5443, with the
//! TLS Secret mounted read-only (the registry re-reads the files when the
//! kubelet swaps them, so a renewed certificate needs no restart) and the
//! data volume at `/var/lib/registry`. Locked down as far as a registry
//! allows: non-root, read-only root filesystem, no capabilities, the
//! runtime's default seccomp profile. `Recreate`, because the ReadWriteOnce
//! volume can be mounted by one pod at a time.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::Registry;
use crate::desired::{labels, owner};
use crate::names::Names;

/// The port the registry listens on inside the pod (unprivileged).
pub const CONTAINER_PORT: i32 = 5443;
pub const PORT_NAME: &str = "https";
pub const DATA_DIR: &str = "/var/lib/registry";
pub const TLS_DIR: &str = "/etc/berth/tls";
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
    let args = ["serve", "--listen"]
        .into_iter()
        .map(String::from)
        .chain([
            format!("0.0.0.0:{CONTAINER_PORT}"),
            "--data".to_owned(),
            DATA_DIR.to_owned(),
        ])
        .chain(tls_args)
        .collect();

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
        readiness_probe: Some(health_probe(5, 3)),
        liveness_probe: Some(health_probe(20, 6)),
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
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".into(),
                mount_path: DATA_DIR.into(),
                ..VolumeMount::default()
            },
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
        ]),
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
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_owned()),
                rolling_update: None,
            }),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels::labels(names)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // The registry never calls the Kubernetes API.
                    automount_service_account_token: Some(false),
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
                    volumes: Some(vec![
                        Volume {
                            name: "data".into(),
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                claim_name: names.data_claim(),
                                read_only: None,
                            }),
                            ..Volume::default()
                        },
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
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// `GET /healthz` over HTTPS (the kubelet does not verify the certificate).
fn health_probe(period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".to_owned()),
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

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
    }

    fn container(d: &Deployment) -> &Container {
        &pod(d).containers[0]
    }

    #[test]
    fn the_registry_serves_tls_on_5443_from_the_mounted_secret() {
        let d = build(&fixtures::registry());
        let args = container(&d).args.clone().expect("args");
        assert_eq!(
            args,
            [
                "serve",
                "--listen",
                "0.0.0.0:5443",
                "--data",
                "/var/lib/registry",
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
        assert_eq!(pod(&d).automount_service_account_token, Some(false));
        assert_eq!(
            pod(&d).security_context.as_ref().and_then(|p| p.fs_group),
            Some(65532)
        );
    }

    #[test]
    fn probes_check_healthz_over_https() {
        let d = build(&fixtures::registry());
        for probe in [
            container(&d).readiness_probe.clone(),
            container(&d).liveness_probe.clone(),
        ] {
            let get = probe.and_then(|p| p.http_get).expect("http probe");
            assert_eq!(get.path.as_deref(), Some("/healthz"));
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
