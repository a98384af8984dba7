//! What the registry's garbage collector is handed: the ConfigMap
//! `<name>-gc` with the retention rules (`spec.gc.retention`) and the
//! images the cluster's pods run from this registry, mounted into the
//! registry pod; the registry re-reads both files before every GC run,
//! keeps every image in use (and all it references) and never lets
//! retention remove a tag one uses.
//!
//! The in-use list comes from each pod's `image:` (repository and tag, or
//! digest) and its container statuses' `imageID` (the digest the node
//! pulled), for every host name a client may write for this registry, and
//! from the pod templates of the cluster's workloads, which may start pods
//! again (see [`Workloads`]).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use berth_access::gc::{InUse, InUseImage, RetentionConfig, RetentionRule};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec};

use crate::crd::{GarbageCollection, Registry};
use crate::desired::owner;
use crate::names::Names;

/// Where the registry pod finds the ConfigMap's files.
pub const GC_DIR: &str = "/etc/berth/gc";
pub const RETENTION_FILE: &str = "retention.json";
pub const IN_USE_FILE: &str = "in-use.json";

/// The registry's retention config from `spec.gc.retention`. A rule whose
/// durations do not parse (the CRD's pattern refuses them first) is left
/// out: a repository no rule matches keeps every tag.
pub fn retention_config(gc: &GarbageCollection) -> RetentionConfig {
    let seconds = |d: &Option<String>| -> Result<Option<u64>, ()> {
        match d {
            None => Ok(None),
            Some(s) => {
                let parsed = kube::core::Duration::from_str(s).map_err(|_| ())?;
                if parsed.is_negative() {
                    return Err(());
                }
                Ok(Some(std::time::Duration::from(parsed).as_secs()))
            }
        }
    };
    let rules = gc
        .retention
        .iter()
        .filter_map(|r| {
            let (Ok(keep_within), Ok(keep_pulled_within), Ok(untagged_after)) = (
                seconds(&r.keep_within),
                seconds(&r.keep_pulled_within),
                seconds(&r.untagged_after),
            ) else {
                tracing::warn!(
                    repositories = r.repositories,
                    "a gc.retention rule has a bad duration; left out"
                );
                return None;
            };
            Some(RetentionRule {
                repositories: r.repositories.clone(),
                keep_last: r.keep_last,
                keep_within_seconds: keep_within,
                keep_pulled_within_seconds: keep_pulled_within,
                protect: r.protect.clone(),
                untagged_after_seconds: untagged_after,
            })
        })
        .collect();
    RetentionConfig { rules }
}

/// `reference` (`host/repo:tag`, `host/repo@sha256:…`, an `imageID` with a
/// `scheme://` in front) split into repository, tag and digest, if its
/// host is one of `hosts` (compared without case).
fn parse_reference(
    reference: &str,
    hosts: &BTreeSet<String>,
) -> Option<(String, Option<String>, Option<String>)> {
    let reference = reference
        .split_once("://")
        .map_or(reference, |(_, rest)| rest);
    let (name, digest) = match reference.rsplit_once('@') {
        Some((n, d)) if d.contains(':') => (n, Some(d.to_owned())),
        _ => (reference, None),
    };
    let (host, path) = name.split_once('/')?;
    if !hosts.contains(&host.to_ascii_lowercase()) {
        return None;
    }
    let (repository, tag) = match path.rsplit_once(':') {
        // A `:` after the last `/` is a tag.
        Some((r, t)) if !t.contains('/') => (r, Some(t.to_owned())),
        // Neither tag nor digest: the client pulls `latest`.
        _ if digest.is_none() => (path, Some("latest".to_owned())),
        _ => (path, None),
    };
    if repository.is_empty() {
        return None;
    }
    Some((repository.to_owned(), tag, digest))
}

/// The images `pods` run, or `templates` may start again, from a registry
/// reachable as `hosts`: each container's `image:` (its tag, or the digest
/// it names) and the digest a pod's status reports. Pods that have ended
/// are left out. Sorted, each once, so the ConfigMap changes only when the
/// set does.
pub fn in_use(pods: &[Pod], templates: &[&PodSpec], hosts: &[String]) -> InUse {
    let hosts: BTreeSet<String> = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    let mut references: Vec<&str> = Vec::new();
    for pod in pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded") | Some("Failed")) {
            continue;
        }
        if let Some(spec) = &pod.spec {
            references.extend(spec_images(spec));
        }
        if let Some(status) = &pod.status {
            for statuses in [
                &status.container_statuses,
                &status.init_container_statuses,
                &status.ephemeral_container_statuses,
            ] {
                references.extend(statuses.iter().flatten().map(|s| s.image_id.as_str()));
            }
        }
    }
    for spec in templates {
        references.extend(spec_images(spec));
    }
    let images: BTreeSet<InUseImage> = references
        .into_iter()
        .filter_map(|r| parse_reference(r, &hosts))
        .map(|(repository, tag, digest)| InUseImage {
            repository,
            // A reference with a digest pins it; its tag says nothing.
            tag: if digest.is_some() { None } else { tag },
            digest,
        })
        .collect();
    InUse {
        images: images.into_iter().collect(),
    }
}

/// Every `image:` of a pod spec: containers, init and ephemeral containers.
fn spec_images(spec: &PodSpec) -> impl Iterator<Item = &str> {
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .filter_map(|c| c.image.as_deref());
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .filter_map(|c| c.image.as_deref());
    spec.containers
        .iter()
        .filter_map(|c| c.image.as_deref())
        .chain(init)
        .chain(ephemeral)
}

/// The cluster's workloads, whose pod templates GC must keep runnable: a
/// Deployment scaled to zero, a CronJob between runs, a DaemonSet waiting
/// for its next node, or a ReplicaSet kept for `kubectl rollout undo` starts
/// pods that pull again, so the images they name stay even with no pod
/// running them now.
#[derive(Debug, Default)]
pub struct Workloads {
    pub deployments: Vec<Deployment>,
    pub replica_sets: Vec<ReplicaSet>,
    pub stateful_sets: Vec<StatefulSet>,
    pub daemon_sets: Vec<DaemonSet>,
    pub jobs: Vec<Job>,
    pub cron_jobs: Vec<CronJob>,
}

impl Workloads {
    /// The pod templates that may start pods again. A Job that finished
    /// starts none.
    pub fn templates(&self) -> Vec<&PodSpec> {
        let finished = |job: &Job| {
            job.status.as_ref().is_some_and(|s| {
                s.completion_time.is_some()
                    || s.conditions.iter().flatten().any(|c| {
                        (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"
                    })
            })
        };
        let mut templates: Vec<&PodSpec> = Vec::new();
        templates.extend(
            self.deployments
                .iter()
                .filter_map(|d| d.spec.as_ref()?.template.spec.as_ref()),
        );
        templates.extend(
            self.replica_sets
                .iter()
                .filter_map(|r| r.spec.as_ref()?.template.as_ref()?.spec.as_ref()),
        );
        templates.extend(
            self.stateful_sets
                .iter()
                .filter_map(|s| s.spec.as_ref()?.template.spec.as_ref()),
        );
        templates.extend(
            self.daemon_sets
                .iter()
                .filter_map(|d| d.spec.as_ref()?.template.spec.as_ref()),
        );
        templates.extend(
            self.jobs
                .iter()
                .filter(|j| !finished(j))
                .filter_map(|j| j.spec.as_ref()?.template.spec.as_ref()),
        );
        templates.extend(self.cron_jobs.iter().filter_map(|c| {
            c.spec
                .as_ref()?
                .job_template
                .spec
                .as_ref()?
                .template
                .spec
                .as_ref()
        }));
        templates
    }
}

/// The ConfigMap `<name>-gc` holding [`RETENTION_FILE`] and [`IN_USE_FILE`].
pub fn gc_config_map(
    registry: &Registry,
    names: &Names,
    retention: &RetentionConfig,
    in_use: &InUse,
) -> ConfigMap {
    // Plain types: serialising them cannot fail.
    let json = |v: serde_json::Result<String>| v.unwrap_or_else(|_| "{}".to_owned());
    ConfigMap {
        metadata: owner::child_meta(registry, names, names.gc_config_map(), true),
        data: Some(BTreeMap::from([
            (
                RETENTION_FILE.to_owned(),
                json(serde_json::to_string_pretty(retention)),
            ),
            (IN_USE_FILE.to_owned(), json(serde_json::to_string(in_use))),
        ])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crd;
    use crate::fixtures;
    use serde_json::json;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn hosts() -> Vec<String> {
        vec![
            "hub.team.svc.cluster.local".into(),
            "hub.berth.internal:5000".into(),
        ]
    }

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn image(repository: &str, digest: Option<&str>, tag: Option<&str>) -> InUseImage {
        InUseImage {
            repository: repository.into(),
            digest: digest.map(Into::into),
            tag: tag.map(Into::into),
        }
    }

    #[test]
    fn pods_give_the_digests_they_run_and_the_tags_they_name_from_this_registry_only() {
        let pods = [
            pod(json!({
                "spec": {
                    "initContainers": [{"name": "init", "image": "HUB.team.svc.cluster.local/team/init:v1"}],
                    "containers": [
                        {"name": "app", "image": "hub.team.svc.cluster.local/team/app:v2"},
                        {"name": "other", "image": "docker.io/library/nginx:1"},
                    ]
                },
                "status": {
                    "phase": "Running",
                    "containerStatuses": [
                        {"name": "app", "image": "hub.team.svc.cluster.local/team/app:v2",
                         "imageID": format!("hub.team.svc.cluster.local/team/app@{D1}"),
                         "ready": true, "restartCount": 0},
                        {"name": "other", "image": "docker.io/library/nginx:1",
                         "imageID": format!("docker.io/library/nginx@{D2}"),
                         "ready": true, "restartCount": 0},
                    ]
                }
            })),
            // Pending: no status yet; pinned by digest, through another host name.
            pod(json!({"spec": {"containers": [
                {"name": "a", "image": format!("hub.berth.internal:5000/ops/tool:v9@{D2}")},
                {"name": "b", "image": "hub.berth.internal/ops/wrong-port:v1"},
            ]}})),
            // Docker's imageID form.
            pod(json!({
                "spec": {"containers": [{"name": "a", "image": "hub.team.svc.cluster.local/x/y"}]},
                "status": {"containerStatuses": [{"name": "a", "image": "", "ready": true, "restartCount": 0,
                    "imageID": format!("docker-pullable://hub.team.svc.cluster.local/x/y@{D2}")}]}
            })),
            // Ended: runs nothing.
            pod(json!({
                "spec": {"containers": [{"name": "a", "image": "hub.team.svc.cluster.local/team/done:v1"}]},
                "status": {"phase": "Succeeded"}
            })),
        ];
        let got = in_use(&pods, &[], &hosts());
        assert_eq!(
            got.images,
            vec![
                image("ops/tool", Some(D2), None),
                image("team/app", None, Some("v2")),
                image("team/app", Some(D1), None),
                image("team/init", None, Some("v1")),
                image("x/y", None, Some("latest")),
                image("x/y", Some(D2), None),
            ]
        );
    }

    #[test]
    fn the_same_pods_give_the_same_list() {
        let p = pod(json!({"spec": {"containers": [
            {"name": "a", "image": "hub.team.svc.cluster.local/b/c:1"},
            {"name": "b", "image": "hub.team.svc.cluster.local/a/c:1"},
            {"name": "c", "image": "hub.team.svc.cluster.local/a/c:1"},
        ]}}));
        let once = in_use(std::slice::from_ref(&p), &[], &hosts());
        assert_eq!(once.images.len(), 2);
        assert_eq!(once, in_use(&[p.clone(), p], &[], &hosts()));
    }

    #[test]
    fn workload_templates_keep_images_no_pod_runs_yet_but_finished_jobs_do_not() {
        let template =
            |image: &str| json!({"spec": {"containers": [{"name": "c", "image": image}]}});
        let host = "hub.team.svc.cluster.local";
        let workloads = Workloads {
            deployments: vec![serde_json::from_value(json!({"spec": {
                "selector": {}, "replicas": 0, "template": template(&format!("{host}/team/scaled-to-zero:v1"))}}))
            .unwrap()],
            replica_sets: vec![serde_json::from_value(json!({"spec": {
                "selector": {}, "replicas": 0, "template": template(&format!("{host}/team/app:rollback"))}}))
            .unwrap()],
            stateful_sets: vec![serde_json::from_value(json!({"spec": {
                "selector": {}, "serviceName": "db", "template": template(&format!("{host}/team/db:v3"))}}))
            .unwrap()],
            daemon_sets: vec![serde_json::from_value(json!({"spec": {
                "selector": {}, "template": template(&format!("{host}/ops/agent@{D1}"))}}))
            .unwrap()],
            jobs: vec![
                serde_json::from_value(json!({"spec": {"template": template(&format!("{host}/team/migrate:v2"))}}))
                    .unwrap(),
                serde_json::from_value(json!({
                    "spec": {"template": template(&format!("{host}/team/finished:v1"))},
                    "status": {"conditions": [{"type": "Complete", "status": "True"}]}}))
                .unwrap(),
            ],
            cron_jobs: vec![serde_json::from_value(json!({"spec": {
                "schedule": "@daily",
                "jobTemplate": {"spec": {"template": template(&format!("{host}/team/nightly:v5"))}}}}))
            .unwrap()],
        };
        let got = in_use(&[], &workloads.templates(), &hosts());
        assert_eq!(
            got.images,
            vec![
                image("ops/agent", Some(D1), None),
                image("team/app", None, Some("rollback")),
                image("team/db", None, Some("v3")),
                image("team/migrate", None, Some("v2")),
                image("team/nightly", None, Some("v5")),
                image("team/scaled-to-zero", None, Some("v1")),
            ]
        );
    }

    #[test]
    fn retention_rules_become_seconds_for_the_registry() {
        let gc = GarbageCollection {
            interval: Some("6h".into()),
            grace: None,
            retention: vec![crd::RetentionRule {
                repositories: "team/*".into(),
                keep_last: Some(5),
                keep_within: Some("720h".into()),
                keep_pulled_within: Some("168h".into()),
                protect: vec!["latest".into(), "v*".into()],
                untagged_after: Some("1h30m".into()),
            }],
        };
        let config = retention_config(&gc);
        assert_eq!(
            config.rules,
            vec![RetentionRule {
                repositories: "team/*".into(),
                keep_last: Some(5),
                keep_within_seconds: Some(720 * 3600),
                keep_pulled_within_seconds: Some(168 * 3600),
                protect: vec!["latest".into(), "v*".into()],
                untagged_after_seconds: Some(5400),
            }]
        );
    }

    #[test]
    fn the_config_map_holds_files_the_registry_reads_back() {
        let r = fixtures::registry_with(|s| s.gc.interval = Some("1h".into()));
        let used = InUse {
            images: vec![image("team/app", Some(D1), None)],
        };
        let cm = gc_config_map(&r, &fixtures::names(), &retention_config(&r.spec.gc), &used);
        assert_eq!(cm.metadata.name.as_deref(), Some("hub-gc"));
        let data = cm.data.unwrap();
        let back: InUse = serde_json::from_str(&data[IN_USE_FILE]).unwrap();
        assert_eq!(back, used);
        let back: RetentionConfig = serde_json::from_str(&data[RETENTION_FILE]).unwrap();
        assert!(back.rules.is_empty());
    }
}
