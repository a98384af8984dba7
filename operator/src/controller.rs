//! The Registry controller: watches, `reconcile` and the error policy.
//!
//! A reconcile observes what it needs, builds the desired children with the
//! pure builders in [`crate::desired`], applies them with [`crate::apply`],
//! and writes the status computed by [`crate::status`] only when it changed.
//! Every child is watched, so a deleted or hand-edited child brings its
//! Registry back here and is put back as it should be.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_access::quota::UsageReport;
use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, ObjectReference, PersistentVolumeClaim, Pod, Secret, Service,
    ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::apply;
use crate::auth;
use crate::certificates;
use crate::crd::{GcStatus, NodeTrustStatus, Registry};
use crate::desired::{self, labels};
use crate::gc;
use crate::metrics::Metrics;
use crate::names::{self, Names};
use crate::node_agent::report;
use crate::pki;
use crate::quota;
use crate::readiness;
use crate::status::{self, NodeTrustState, Observed, ServingState, StorageState, WorkloadState};
use crate::trust::{self, Reports};

/// With nothing else to wake it, a Registry is looked at again after this
/// long (or at its certificate's renewal time, if sooner): a safety net for
/// missed watch events; every object a Registry reads is watched.
pub const RESYNC: Duration = Duration::from_secs(3600);

/// Operator-wide settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub cluster_domain: String,
    /// The registry image for Registries that name none.
    pub default_image: String,
    /// Where the node agents report; `None`: reports are not read, and
    /// NodeTrustReady stays AwaitingNodeAgents.
    pub node_agent: Option<NodeAgentRef>,
    /// The operator runs in the cluster, so Service addresses are
    /// reachable and a `/v2/` probe that gets no answer holds Ready back;
    /// outside (tests) an unreachable address skips the probe.
    pub in_cluster: bool,
}

/// The node agents' report Leases, and their DaemonSet.
#[derive(Clone, Debug)]
pub struct NodeAgentRef {
    /// The namespace of the report Leases (and the DaemonSet).
    pub namespace: String,
    /// The agent DaemonSet, whose `desiredNumberScheduled` says how many
    /// agents should report; `None`: count the reports only.
    pub daemonset: Option<String>,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per Registry (`namespace/name`), for backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, config: Config, metrics: Arc<Metrics>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: apply::FIELD_MANAGER.into(),
                instance: None,
            },
        );
        Self {
            client,
            config,
            recorder,
            metrics,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn record_failure(&self, key: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    fn clear_failures(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

pub use crate::Error;
pub(crate) use crate::kube_err;

/// How long to wait before retrying after `failures` consecutive failures:
/// 5 s doubling to at most 5 minutes, so a transient error is retried soon
/// and a persistent one does not hammer the apiserver.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs(5 * (1 << exp)).min(Duration::from_secs(300))
}

fn key(registry: &Registry) -> String {
    format!(
        "{}/{}",
        registry.namespace().unwrap_or_default(),
        registry.name_any()
    )
}

pub fn error_policy(registry: Arc<Registry>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&key(&registry));
    ctx.metrics.failed(error.kind());
    let delay = backoff(failures);
    tracing::warn!(registry = %key(&registry), error = %error, failures, retry_in = ?delay, "reconcile failed");
    let note = error.to_string();
    let ctx = ctx.clone();
    tokio::spawn(async move {
        publish(
            &ctx,
            &registry,
            EventType::Warning,
            "ReconcileFailed",
            "Reconcile",
            note,
        )
        .await;
    });
    Action::requeue(delay)
}

pub(crate) async fn publish(
    ctx: &Context,
    registry: &Registry,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    publish_related(ctx, registry, type_, reason, action, note, None).await;
}

/// [`publish`] with a related object (the Event's `related`).
async fn publish_related(
    ctx: &Context,
    registry: &Registry,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: related,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&event, &registry.object_ref(&()))
        .await
    {
        tracing::warn!(error = %e, reason, "publishing an event failed");
    }
}

pub async fn reconcile(registry: Arc<Registry>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&registry, &ctx).await;
    ctx.metrics.reconciled(started.elapsed());
    if result.is_ok() {
        ctx.clear_failures(&key(&registry));
    }
    result
}

async fn reconcile_inner(registry: &Registry, ctx: &Context) -> Result<Action, Error> {
    let names = Names::of(registry, &ctx.config.cluster_domain).ok_or(Error::MissingMetadata)?;
    let client = &ctx.client;
    let spec = &registry.spec;
    let now = Timestamp::now();
    tracing::debug!(registry = %key(registry), "reconciling");

    if auth::deleting(registry) {
        auth::finalize(ctx, registry, &names).await?;
        return Ok(Action::await_change());
    }
    auth::ensure_finalizer(ctx, registry).await?;

    let storage = match (&spec.storage.s3, desired::pvc::data_claim(registry, &names)) {
        (Some(s3), _) => bucket_state(ctx, &names, s3).await?,
        (None, Some(claim)) => claim_state(
            &apply::apply(client, &claim)
                .await
                .map_err(kube_err("applying the data claim"))?,
        ),
        (None, None) => StorageState::Pending("storage names no backend".into()),
    };

    let service = apply_service(client, &desired::service::service(registry, &names)).await?;
    let cluster_ip = service.spec.and_then(|s| s.cluster_ip);
    let cert_names = names.certificate_names(spec, cluster_ip.as_deref());

    let auth = auth::reconcile(ctx, registry, &names, cluster_ip.as_deref(), now).await?;

    let reports = if spec.node_trust.enabled {
        observe_reports(ctx, now).await?
    } else {
        Reports::default()
    };
    let node_trust_of = |fingerprint: Option<&str>| {
        if spec.node_trust.enabled {
            let uid = registry.uid().unwrap_or_default();
            trust::count(&reports, &key(registry), &uid, fingerprint)
        } else {
            NodeTrustState::Disabled
        }
    };

    let observed = certificates::observe(client, registry, &names).await?;
    let plan = certificates::plan(
        &observed,
        registry,
        &names,
        &cert_names,
        &node_trust_of,
        now,
    )?;
    apply_certificates(ctx, registry, &plan).await?;
    let certificates::Plan {
        state: certificate,
        node_trust,
        bundle,
        wake_at: renew_at,
        ..
    } = plan;

    // Before the Deployment: its pods mount this ConfigMap.
    match desired::notify::notify_config(registry) {
        Some(config) => {
            apply::apply(
                client,
                &desired::notify::notify_config_map(registry, &names, &config),
            )
            .await
            .map_err(kube_err("applying the notification ConfigMap"))?;
        }
        None => {
            apply::delete_owned::<ConfigMap>(
                client,
                registry,
                &names.namespace,
                &names.notify_config_map(),
            )
            .await
            .map(drop)
            .map_err(kube_err("removing the notification ConfigMap"))?;
        }
    }

    // Likewise the mirror config.
    match desired::mirror::mirror_config(registry) {
        Some(config) => {
            apply::apply(
                client,
                &desired::mirror::mirror_config_map(registry, &names, &config),
            )
            .await
            .map_err(kube_err("applying the mirror ConfigMap"))?;
        }
        None => {
            apply::delete_owned::<ConfigMap>(
                client,
                registry,
                &names.namespace,
                &names.mirror_config_map(),
            )
            .await
            .map(drop)
            .map_err(kube_err("removing the mirror ConfigMap"))?;
        }
    }

    // Likewise the quota config (re-read by the registry when it changes).
    let quota_config = desired::quota::quota_config(registry);
    match &quota_config {
        Some(config) => {
            apply::apply(
                client,
                &desired::quota::quota_config_map(registry, &names, config),
            )
            .await
            .map_err(kube_err("applying the quota ConfigMap"))?;
        }
        None => {
            apply::delete_owned::<ConfigMap>(
                client,
                registry,
                &names.namespace,
                &names.quota_config_map(),
            )
            .await
            .map(drop)
            .map_err(kube_err("removing the quota ConfigMap"))?;
        }
    }

    // The UI's session key, made once: its pods mount it.
    if spec.ui.enabled {
        ensure_ui_session_key(ctx, registry, &names).await?;
    }

    let deployment = desired::deployment::deployment(registry, &names, &ctx.config.default_image);
    let workload = workload_state(
        &apply::apply(client, &deployment)
            .await
            .map_err(kube_err("applying the Deployment"))?,
        spec.replicas,
    );
    let serving = match workload {
        WorkloadState::Running { ready, .. } if ready > 0 => {
            observe_serving(ctx, &names, cluster_ip.as_deref(), spec.service.port).await?
        }
        // Ready says why from the pods; no need to look further.
        _ => ServingState::NotServing {
            reason: "PodsNotReady",
            message: "no registry pod is ready".into(),
        },
    };
    match desired::disruption_budget::disruption_budget(registry, &names) {
        Some(budget) => {
            apply::apply(client, &budget)
                .await
                .map_err(kube_err("applying the PodDisruptionBudget"))?;
        }
        None => apply::delete_owned::<PodDisruptionBudget>(
            client,
            registry,
            &names.namespace,
            &names.deployment(),
        )
        .await
        .map(drop)
        .map_err(kube_err("removing the PodDisruptionBudget"))?,
    }

    match desired::ingress::ingress(registry, &names) {
        Some(ingress) => {
            apply::apply(client, &ingress)
                .await
                .map_err(kube_err("applying the Ingress"))?;
        }
        None => {
            apply::delete_owned::<Ingress>(client, registry, &names.namespace, &names.ingress())
                .await
                .map_err(kube_err("removing the Ingress"))?;
        }
    }

    let gc = if spec.gc.is_off() {
        apply::delete_owned::<ConfigMap>(
            client,
            registry,
            &names.namespace,
            &names.gc_config_map(),
        )
        .await
        .map_err(kube_err("removing the GC ConfigMap"))?;
        None
    } else {
        Some(
            reconcile_gc(
                ctx,
                registry,
                &names,
                cluster_ip.as_deref(),
                bundle.as_deref(),
                auth.signer.as_ref(),
                &workload,
                now,
            )
            .await?,
        )
    };

    // Usage per namespace, read back from the registry with quotas on.
    let usage = match &quota_config {
        None => None,
        Some(_) => {
            let previous = registry.status.as_ref().and_then(|s| s.usage.clone());
            let serving = matches!(workload, WorkloadState::Running { ready, .. } if ready > 0);
            let upstream = cluster_ip
                .as_deref()
                .and_then(|ip| names::upstream(ip, spec.service.port));
            match (serving, upstream, bundle.as_deref()) {
                (true, Some(upstream), Some(ca)) => match gc::fetch::<UsageReport>(
                    &upstream,
                    ca,
                    &names,
                    auth.signer.as_ref(),
                    now,
                    "/berth/v1/usage",
                )
                .await
                {
                    Ok(Some(report)) => Some(quota::usage_status(&report)),
                    Ok(None) => previous,
                    Err(e) => {
                        tracing::warn!(
                            registry = %key(registry),
                            error = %e,
                            "could not read the registry's storage usage; status.usage keeps the last one seen"
                        );
                        previous
                    }
                },
                _ => previous,
            }
        }
    };
    // A Warning per namespace that newly reached its quota: pushes into
    // it are refused from now on, and whoever owns it should hear why.
    if let Some(current) = &usage {
        let previous = registry.status.as_ref().and_then(|s| s.usage.as_ref());
        for (namespace, note) in quota::reached_events(previous, current) {
            // The namespace as the related object: the recorder folds
            // Events with the same reason and objects into one series that
            // keeps the first note, which would hide a second namespace.
            let related = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Namespace".into()),
                name: Some(namespace),
                ..ObjectReference::default()
            };
            publish_related(
                ctx,
                registry,
                EventType::Warning,
                quota::QUOTA_REACHED,
                "CountUsage",
                note,
                Some(related),
            )
            .await;
        }
    }

    // What every selected node's agent installs.
    let upstream = cluster_ip
        .as_deref()
        .and_then(|ip| names::upstream(ip, spec.service.port));
    let node_trust_publish = match (spec.node_trust.enabled, upstream, bundle) {
        (true, Some(upstream), Some(ca_bundle)) => Some(NodeTrustStatus {
            hosts: names.node_trust_hosts(spec),
            upstream,
            ca_bundle,
        }),
        _ => None,
    };

    let observed = Observed {
        generation: registry.metadata.generation,
        certificate,
        storage,
        workload,
        node_trust,
        node_trust_publish,
        endpoints: names.endpoints(spec),
        auth: auth.state,
        gc,
        usage,
        serving,
    };
    let new_status = status::status(&observed, registry.status.as_ref(), now);
    if registry.status.as_ref() != Some(&new_status) {
        let was_ready = registry.status.as_ref().is_some_and(status::is_ready);
        let stored = apply::apply_status(client, registry, &new_status)
            .await
            .map_err(kube_err("writing the status"))?;
        if new_status.node_trust.is_some()
            && stored
                .status
                .as_ref()
                .and_then(|s| s.node_trust.as_ref())
                .is_none()
        {
            // The apiserver pruned a field its schema lacks: nodes would
            // never learn this registry.
            publish(
                ctx,
                registry,
                EventType::Warning,
                "CRDOutdated",
                "Reconcile",
                "the installed Registry CRD drops status.nodeTrust, so node agents cannot configure nodes; apply the CRD of this version (kubectl apply --server-side -f crds/registries.berth.dev.yaml): helm install/upgrade never updates CRDs".into(),
            )
            .await;
        }
        if status::auth_disabled(&new_status)
            && !registry.status.as_ref().is_some_and(status::auth_disabled)
        {
            publish(
                ctx,
                registry,
                EventType::Warning,
                status::AUTH_DISABLED,
                "Reconcile",
                status::AUTH_DISABLED_MESSAGE.into(),
            )
            .await;
        }
        if status::is_ready(&new_status) && !was_ready {
            let endpoint = observed.endpoints.node.clone().unwrap_or_default();
            publish(
                ctx,
                registry,
                EventType::Normal,
                "Ready",
                "Reconcile",
                format!("serving at {endpoint}"),
            )
            .await;
        }
    }

    let mut requeue = [renew_at, auth.next_step]
        .into_iter()
        .flatten()
        .map(|at| pki::until(now, at))
        .fold(RESYNC, Duration::min);
    // The in-use list follows new pods, status.gc new runs.
    if !spec.gc.is_off() || spec.quotas.is_some() {
        requeue = requeue.min(gc::REFRESH);
    }
    // Pods ready but not answering through the Service yet: usually
    // kube-proxy catching up, a matter of seconds. (No ready endpoint at
    // all is brought back by the EndpointSlice watch.)
    if let ServingState::NotServing {
        reason: "ProbeFailed",
        ..
    } = observed.serving
    {
        requeue = requeue.min(readiness::RETRY);
    }
    Ok(Action::requeue(requeue))
}

/// GC's side of a reconcile: the `<name>-gc` ConfigMap with the retention
/// rules and the images the cluster's pods run from this registry, and
/// `status.gc` with the registry's newest run (an Event when it is new).
#[allow(clippy::too_many_arguments)]
async fn reconcile_gc(
    ctx: &Context,
    registry: &Registry,
    names: &Names,
    cluster_ip: Option<&str>,
    bundle: Option<&str>,
    signer: Option<&berth_access::Signer>,
    workload: &WorkloadState,
    now: Timestamp,
) -> Result<GcStatus, Error> {
    let spec = &registry.spec;
    let pods = Api::<Pod>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_err(
            "listing pods for the images they run, which GC must keep (the operator needs `list` on pods; see the chart's RBAC)",
        ))?;
    let workloads = list_workloads(&ctx.client).await?;
    let hosts = desired::pull_secret::registry_hosts(names, spec, cluster_ip);
    let in_use = desired::gc::in_use(&pods.items, &workloads.templates(), &hosts);
    let retention = desired::gc::retention_config(&spec.gc);
    apply::apply(
        &ctx.client,
        &desired::gc::gc_config_map(registry, names, &retention, &in_use),
    )
    .await
    .map_err(kube_err("applying the GC ConfigMap"))?;

    let previous = registry
        .status
        .as_ref()
        .and_then(|s| s.gc.as_ref())
        .and_then(|g| g.last_run.clone());
    let mut last_run = previous.clone();
    let serving = matches!(workload, WorkloadState::Running { ready, .. } if *ready > 0);
    let upstream = cluster_ip.and_then(|ip| names::upstream(ip, spec.service.port));
    if let (true, Some(upstream), Some(bundle)) = (serving, upstream, bundle) {
        match gc::fetch_last_run(&upstream, bundle, names, signer, now).await {
            Ok(Some(run)) => {
                if let Some(status) = gc::run_status(&run) {
                    if let Some((warning, reason, note)) = gc::event(previous.as_ref(), &status) {
                        let type_ = if warning {
                            EventType::Warning
                        } else {
                            EventType::Normal
                        };
                        publish(ctx, registry, type_, reason, "GarbageCollect", note).await;
                    }
                    last_run = Some(status);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                registry = %key(registry),
                error = %e,
                "could not read the registry's GC record; status.gc keeps the last one seen"
            ),
        }
    }
    Ok(GcStatus {
        images_in_use: i64::try_from(in_use.images.len()).unwrap_or(i64::MAX),
        last_run,
    })
}

/// Every workload in the cluster whose pod template GC must keep runnable
/// (see [`desired::gc::Workloads`]).
async fn list_workloads(client: &kube::Client) -> Result<desired::gc::Workloads, Error> {
    async fn all<K>(client: &kube::Client, what: &'static str) -> Result<Vec<K>, Error>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned,
        K::DynamicType: Default,
    {
        Ok(Api::<K>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(kube_err(what))?
            .items)
    }
    Ok(desired::gc::Workloads {
        deployments: all(client, "listing Deployments for the images their pods will run, which GC must keep (the operator needs `list` on deployments; see the chart's RBAC)").await?,
        replica_sets: all(client, "listing ReplicaSets for the images a rollback would run, which GC must keep (the operator needs `list` on replicasets; see the chart's RBAC)").await?,
        stateful_sets: all(client, "listing StatefulSets for the images their pods will run, which GC must keep (the operator needs `list` on statefulsets; see the chart's RBAC)").await?,
        daemon_sets: all(client, "listing DaemonSets for the images their pods will run, which GC must keep (the operator needs `list` on daemonsets; see the chart's RBAC)").await?,
        jobs: all(client, "listing Jobs for the images their pods will run, which GC must keep (the operator needs `list` on jobs; see the chart's RBAC)").await?,
        cron_jobs: all(client, "listing CronJobs for the images their next runs need, which GC must keep (the operator needs `list` on cronjobs; see the chart's RBAC)").await?,
    })
}

/// Apply the Service, and put back its ports when a hand edit left an
/// entry server-side apply cannot remove (see
/// [`desired::service::repaired_ports`]).
async fn apply_service(client: &Client, desired: &Service) -> Result<Service, Error> {
    let namespace = desired.namespace().unwrap_or_default();
    let name = desired.name_any();
    let observed = match apply::apply(client, desired).await {
        Ok(applied) => applied,
        // The merged port list is invalid (two ports named https): read
        // the Service as it is and repair it below.
        Err(kube::Error::Api(status)) if status.code == 422 => {
            Api::<Service>::namespaced(client.clone(), &namespace)
                .get(&name)
                .await
                .map_err(kube_err("reading the Service"))?
        }
        Err(e) => return Err(kube_err("applying the Service")(e)),
    };
    let Some(ports) = desired::service::repaired_ports(desired, &observed) else {
        return Ok(observed);
    };
    tracing::info!(service = %format!("{namespace}/{name}"), "putting back the Service's ports (edited by hand)");
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": observed.resource_version() },
        "spec": { "ports": ports },
    });
    apply::merge_patch::<Service>(client, &namespace, &name, &patch)
        .await
        .map_err(kube_err("putting back the Service's ports"))?;
    apply::apply(client, desired)
        .await
        .map_err(kube_err("applying the Service"))
}

/// Whether the registry answers through its Service: ready endpoints, then
/// `/v2/` at the ClusterIP (see [`readiness`]).
async fn observe_serving(
    ctx: &Context,
    names: &Names,
    cluster_ip: Option<&str>,
    port: i32,
) -> Result<ServingState, Error> {
    let endpoints =
        readiness::observe_endpoints(&ctx.client, &names.namespace, &names.service()).await?;
    let ip = cluster_ip.and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
    let port = u16::try_from(port).ok();
    let (probe, address) = match (&endpoints, ip, port) {
        (readiness::Endpoints::Ready(_), Some(ip), Some(port)) => (
            readiness::probe(ip, port, ctx.config.in_cluster).await,
            std::net::SocketAddr::new(ip, port).to_string(),
        ),
        _ => (readiness::Probe::NotTried, String::new()),
    };
    Ok(readiness::serving(&endpoints, &probe, &address))
}

/// Makes the Secret holding the UI session key unless it holds a usable
/// one (a new key would log everyone out).
async fn ensure_ui_session_key(
    ctx: &Context,
    registry: &Registry,
    names: &Names,
) -> Result<(), Error> {
    use desired::ui_session;
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &names.namespace);
    let stored = secrets
        .get_opt(&names.ui_session_secret())
        .await
        .map_err(kube_err("reading the UI session key Secret"))?;
    if ui_session::usable(stored.as_ref()) {
        return Ok(());
    }
    let key = ui_session::new_key()?;
    apply::apply(&ctx.client, &ui_session::secret(registry, names, &key))
        .await
        .map_err(kube_err("storing the UI session key"))?;
    tracing::info!(secret = %names.ui_session_secret(), "made the UI session key");
    Ok(())
}

/// Object storage is usable once its credentials Secret holds both keys;
/// whether the bucket answers is the pods' readiness (`/readyz` writes to it).
async fn bucket_state(
    ctx: &Context,
    names: &Names,
    s3: &crate::crd::S3Storage,
) -> Result<StorageState, Error> {
    use desired::storage::{ACCESS_KEY_ID, SECRET_ACCESS_KEY};
    let secret_name = &s3.credentials_secret.name;
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &names.namespace)
        .get_opt(secret_name)
        .await
        .map_err(kube_err("reading the object storage credentials"))?;
    let Some(secret) = secret else {
        return Ok(StorageState::CredentialsMissing(format!(
            "Secret {secret_name} (storage.s3.credentialsSecret) is not in namespace {}: create it with keys {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY}",
            names.namespace
        )));
    };
    let data = secret.data.unwrap_or_default();
    let missing: Vec<&str> = [ACCESS_KEY_ID, SECRET_ACCESS_KEY]
        .into_iter()
        .filter(|k| data.get(*k).is_none_or(|v| v.0.is_empty()))
        .collect();
    if !missing.is_empty() {
        return Ok(StorageState::CredentialsMissing(format!(
            "Secret {secret_name} has no {}: add the bucket's access key id and secret access key",
            missing.join(" and ")
        )));
    }
    Ok(StorageState::Bucket)
}

fn claim_state(claim: &PersistentVolumeClaim) -> StorageState {
    match claim.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Bound") => StorageState::Bound,
        Some("Lost") => StorageState::Lost,
        Some(phase) => StorageState::Pending(format!("claim phase {phase}")),
        None => StorageState::Pending("the claim has no phase yet".into()),
    }
}

fn workload_state(deployment: &Deployment, wanted: i32) -> WorkloadState {
    if wanted == 0 {
        return WorkloadState::ScaledToZero;
    }
    let status = deployment.status.clone().unwrap_or_default();
    // Only pods of the current template count, once the Deployment
    // controller has seen the current generation.
    let current = status.observed_generation >= deployment.metadata.generation;
    let ready = if current {
        status
            .updated_replicas
            .unwrap_or(0)
            .min(status.available_replicas.unwrap_or(0))
    } else {
        0
    };
    WorkloadState::Running { ready, wanted }
}

/// The node agents' reports and how many agents there should be.
async fn observe_reports(ctx: &Context, now: Timestamp) -> Result<Reports, Error> {
    let Some(agent) = &ctx.config.node_agent else {
        return Ok(Reports::default());
    };
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &agent.namespace);
    let listed = leases
        .list(&ListParams::default().labels(&format!("{}=true", report::REPORT_LABEL)))
        .await
        .map_err(kube_err("listing the node agents' report Leases"))?;
    let nodes = listed.items.iter().filter_map(report::parse).collect();
    let mut reports = Reports {
        nodes,
        scheduled: None,
        agent_missing: None,
        stale: stale_nodes(&listed.items, now),
    };
    if let Some(name) = &agent.daemonset {
        let daemonsets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &agent.namespace);
        match daemonsets
            .get_opt(name)
            .await
            .map_err(kube_err("reading the node agent DaemonSet"))?
        {
            Some(ds) => reports.scheduled = ds.status.map(|s| s.desired_number_scheduled),
            None => {
                reports.agent_missing = Some(format!(
                    "the node agent DaemonSet {}/{name} does not exist: install the chart with nodeAgent.enabled=true",
                    agent.namespace
                ));
            }
        }
    }
    Ok(reports)
}

/// The nodes whose report Lease expired by `now`, with when it did.
fn stale_nodes(leases: &[Lease], now: Timestamp) -> std::collections::BTreeMap<String, Timestamp> {
    leases
        .iter()
        .filter_map(|lease| Some((report::parse(lease)?.node, report::expiry(lease)?)))
        .filter(|(_, expiry)| *expiry <= now)
        .collect()
}

/// Yields each time the set of stale nodes changes: an agent that stops
/// writes nothing, so only a clock can notice it. Reads only (one list per
/// heartbeat); every Registry is then looked at again, which is rare.
fn stale_changes(client: Client, namespace: String) -> impl futures_util::Stream<Item = ()> {
    let leases: Api<Lease> = Api::namespaced(client, &namespace);
    futures_util::stream::unfold(
        (leases, std::collections::BTreeSet::<String>::new()),
        |(leases, mut known)| async move {
            loop {
                tokio::time::sleep(report::HEARTBEAT).await;
                let listed = match leases
                    .list(&ListParams::default().labels(&format!("{}=true", report::REPORT_LABEL)))
                    .await
                {
                    Ok(listed) => listed,
                    Err(e) => {
                        tracing::debug!(error = %e, "listing report Leases for staleness");
                        continue;
                    }
                };
                let stale: std::collections::BTreeSet<String> =
                    stale_nodes(&listed.items, Timestamp::now())
                        .into_keys()
                        .collect();
                if stale != known {
                    for node in stale.difference(&known) {
                        tracing::warn!(node = %node, "a node agent stopped renewing its report Lease; the node no longer counts as trusting");
                    }
                    known = stale;
                    return Some(((), (leases, known)));
                }
            }
        },
    )
}

/// Carry out a certificate plan: the CA Secret first (a new CA is kept
/// before anything publishes it), then its Events, then the objects that
/// publish and serve it.
async fn apply_certificates(
    ctx: &Context,
    registry: &Registry,
    plan: &certificates::Plan,
) -> Result<(), Error> {
    let client = &ctx.client;
    if let Some(write) = &plan.ca_secret {
        store_ca(client, write).await?;
    }
    for event in &plan.events {
        publish(
            ctx,
            registry,
            event.type_,
            event.reason,
            event.action,
            event.note.clone(),
        )
        .await;
    }
    if plan.serving_from_previous {
        tracing::info!(registry = %key(registry), "serving from the previous CA until every node trusts the new one");
    }
    if let Some(certificate) = &plan.certificate {
        apply::apply_dynamic(client, &desired::certificate::api_resource(), certificate)
            .await
            .map_err(kube_err("applying the cert-manager Certificate"))?;
    }
    if let Some(bundle) = &plan.ca_bundle {
        apply::apply(client, bundle)
            .await
            .map_err(kube_err("applying the CA bundle"))?;
    }
    if let Some(secret) = &plan.serving_secret {
        apply::apply(client, secret)
            .await
            .map_err(kube_err("applying the TLS Secret"))?;
    }
    Ok(())
}

/// Store the CA Secret only if it is still as it was read: created when
/// there was none, else applied with the read resourceVersion as a
/// precondition. Losing the race is an error, so the retry reads and keeps
/// the CA that won: a reconcile killed half-way, or a second operator, must
/// never leave a CA whose key is lost.
async fn store_ca(client: &Client, write: &certificates::CaWrite) -> Result<Secret, Error> {
    const RACED: &str = "storing the CA (another writer stored one first; the retry keeps it)";
    let result = match write {
        certificates::CaWrite::Create(fresh) => {
            let params = PostParams {
                field_manager: Some(apply::FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            let namespace = fresh.namespace().unwrap_or_default();
            Api::<Secret>::namespaced(client.clone(), &namespace)
                .create(&params, fresh)
                .await
        }
        certificates::CaWrite::Replace(secret) => apply::apply(client, secret).await,
    };
    result.map_err(|e| match &e {
        kube::Error::Api(status) if status.code == 409 => kube_err(RACED)(e),
        _ => kube_err("storing the CA")(e),
    })
}

/// Map a labelled child back to its Registry: what `.owns()` does through
/// owner references, for children that have none (a retained data volume,
/// a Secret written by cert-manager).
fn by_label<K: Resource>(child: K) -> Option<ObjectRef<Registry>> {
    let name = child.labels().get(labels::REGISTRY_LABEL)?.clone();
    // A pull secret in a team's namespace names its Registry's namespace.
    let namespace = match child.labels().get(labels::REGISTRY_NAMESPACE_LABEL) {
        Some(ns) => ns.clone(),
        None => child.namespace()?,
    };
    Some(ObjectRef::new(&name).within(&namespace))
}

/// The Registries in `registries` that read the Secret `namespace/name`:
/// the user's TLS Secret (or cert-manager's), the object storage
/// credentials and the htpasswd Secret.
fn referencing_registries(
    registries: &[Arc<Registry>],
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<Registry>> {
    registries
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(namespace))
        .filter(|r| {
            let spec = &r.spec;
            // The cluster domain plays no part in Secret names.
            Names::new(r.name_any(), namespace, "").serving_secret(spec) == name
                || spec
                    .storage
                    .s3
                    .as_ref()
                    .is_some_and(|s3| s3.credentials_secret.name == name)
                || spec
                    .auth
                    .htpasswd
                    .as_ref()
                    .is_some_and(|h| h.secret_name == name)
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// The Registries whose entry differs between a node's previous and
/// current report (added, changed or dropped): each comes back to be counted.
fn changed_registries(
    previous: Option<&report::NodeReport>,
    current: Option<&report::NodeReport>,
) -> Vec<ObjectRef<Registry>> {
    let empty = std::collections::BTreeMap::new();
    let before = previous.map_or(&empty, |r| &r.registries);
    let after = current.map_or(&empty, |r| &r.registries);
    let mut keys: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|key| before.get(*key) != after.get(*key))
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| key.split_once('/'))
        .map(|(namespace, name)| ObjectRef::new(name).within(namespace))
        .collect()
}

/// Run the controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let children = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={}",
        labels::MANAGED_BY
    ));
    let mut controller = Controller::new(
        Api::<Registry>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .owns(Api::<Deployment>::all(client.clone()), children.clone())
    .owns(Api::<Service>::all(client.clone()), children.clone())
    .owns(Api::<ConfigMap>::all(client.clone()), children.clone())
    .owns(Api::<Ingress>::all(client.clone()), children.clone())
    .owns(Api::<ServiceAccount>::all(client.clone()), children.clone())
    .owns(
        Api::<PodDisruptionBudget>::all(client.clone()),
        children.clone(),
    )
    // Claims by label: the owned ones and the retained ones alike.
    .watches(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        children.clone(),
        by_label,
    )
    // The EndpointSlice controller copies the Service's labels: a Service
    // gaining a ready endpoint brings its Registry back to say Ready.
    .watches(
        Api::<EndpointSlice>::all(client.clone()),
        children,
        by_label,
    );
    // A namespace whose labels change may gain or lose a pull secret.
    let registries = controller.store();
    controller = controller.watches(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        move |_namespace| auth::registries_for_namespace(&registries.state()),
    );
    // Every Secret, unlabelled ones too: the user's TLS Secret (and
    // cert-manager's, the storage credentials, the htpasswd file) reaches
    // the registry within seconds of a change, not at the next resync.
    let registries = controller.store();
    controller = controller.watches(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default(),
        move |secret: Secret| {
            let mut refs: Vec<ObjectRef<Registry>> = by_label(secret.clone()).into_iter().collect();
            let namespace = secret.namespace().unwrap_or_default();
            for r in referencing_registries(&registries.state(), &namespace, &secret.name_any()) {
                if !refs.contains(&r) {
                    refs.push(r);
                }
            }
            refs
        },
    );
    if let Some(agent) = &ctx.config.node_agent {
        // A heartbeat renews a Lease without changing its report, and a
        // node that installs one more Registry changes only that entry: only
        // the Registries whose entry changed come back (with a hundred
        // Registries, bringing back every one named on each change made
        // thousands of reconciles while they were being created).
        let seen = Arc::new(Mutex::new(HashMap::<String, report::NodeReport>::new()));
        controller = controller
            .watches(
                Api::<Lease>::namespaced(client.clone(), &agent.namespace),
                watcher::Config::default().labels(&format!("{}=true", report::REPORT_LABEL)),
                move |lease: Lease| {
                    let current = report::parse(&lease);
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    let previous = match &current {
                        Some(report) => seen.insert(lease.name_any(), report.clone()),
                        None => seen.remove(&lease.name_any()),
                    };
                    changed_registries(previous.as_ref(), current.as_ref())
                },
            )
            .reconcile_all_on(stale_changes(client.clone(), agent.namespace.clone()));
    }
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(registry = %object, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use k8s_openapi::api::core::v1::PersistentVolumeClaimStatus;

    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn a_bound_claim_is_ready_storage() {
        let mut claim = PersistentVolumeClaim::default();
        assert_eq!(
            claim_state(&claim),
            StorageState::Pending("the claim has no phase yet".into())
        );
        claim.status = Some(PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            ..Default::default()
        });
        assert_eq!(claim_state(&claim), StorageState::Bound);
    }

    #[test]
    fn pods_of_an_old_generation_do_not_count_as_ready() {
        let mut deployment = Deployment::default();
        deployment.metadata.generation = Some(2);
        deployment.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            updated_replicas: Some(1),
            available_replicas: Some(1),
            ..Default::default()
        });
        assert_eq!(
            workload_state(&deployment, 1),
            WorkloadState::Running {
                ready: 0,
                wanted: 1
            }
        );
        deployment
            .status
            .as_mut()
            .expect("status")
            .observed_generation = Some(2);
        assert_eq!(
            workload_state(&deployment, 1),
            WorkloadState::Running {
                ready: 1,
                wanted: 1
            }
        );
        assert_eq!(workload_state(&deployment, 0), WorkloadState::ScaledToZero);
    }

    #[test]
    fn children_map_back_to_their_registry_by_label() {
        let mut claim = PersistentVolumeClaim::default();
        claim.metadata.namespace = Some("team".into());
        claim.metadata.labels =
            Some([(labels::REGISTRY_LABEL.to_owned(), "hub".to_owned())].into());
        assert_eq!(by_label(claim), Some(ObjectRef::new("hub").within("team")));
        assert_eq!(by_label(PersistentVolumeClaim::default()), None);
    }

    #[test]
    fn a_pull_secret_in_another_namespace_maps_back_to_its_registry() {
        let mut secret = Secret::default();
        secret.metadata.namespace = Some("app".into());
        secret.metadata.labels = Some(labels::cross_namespace_labels(&crate::fixtures::names()));
        assert_eq!(by_label(secret), Some(ObjectRef::new("hub").within("team")));
    }

    #[test]
    fn a_secret_maps_to_the_registries_that_read_it() {
        let user_tls = Arc::new(crate::fixtures::registry_with(|s| {
            s.tls.mode = crate::crd::TlsMode::Secret;
            s.tls.secret_name = Some("mine".into());
        }));
        let default = {
            let mut r = crate::fixtures::registry();
            r.metadata.name = Some("other".into());
            Arc::new(r)
        };
        let registries = [user_tls, default];
        assert_eq!(
            referencing_registries(&registries, "team", "mine"),
            [ObjectRef::new("hub").within("team")]
        );
        // The Secret the operator (or cert-manager) writes for the other.
        assert_eq!(
            referencing_registries(&registries, "team", "other-tls"),
            [ObjectRef::new("other").within("team")]
        );
        assert!(referencing_registries(&registries, "elsewhere", "mine").is_empty());
        assert!(referencing_registries(&registries, "team", "unrelated").is_empty());
    }

    #[test]
    fn only_expired_report_leases_make_a_node_stale() {
        let now: Timestamp = "2026-11-24T12:00:00Z".parse().expect("ts");
        let lease_at = |node: &str, renewed: &str| {
            let node_report = report::NodeReport {
                node: node.into(),
                registries: Default::default(),
            };
            report::lease(
                "berth-system",
                None,
                &node_report,
                renewed.parse().expect("ts"),
            )
        };
        let leases = [
            lease_at("fresh", "2026-11-24T11:59:00Z"),
            lease_at("stopped", "2026-11-24T11:50:00Z"),
        ];
        assert_eq!(
            stale_nodes(&leases, now),
            std::collections::BTreeMap::from([(
                "stopped".to_owned(),
                "2026-11-24T11:51:30Z".parse().expect("ts")
            )])
        );
    }

    #[test]
    fn only_registries_whose_report_entry_changed_come_back() {
        let entry = |fingerprint: &str| report::RegistryReport {
            fingerprints: vec![fingerprint.into()],
            ..report::RegistryReport::default()
        };
        let node_report = |entries: Vec<(&str, report::RegistryReport)>| report::NodeReport {
            node: "n1".into(),
            registries: entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        };
        let before = node_report(vec![
            ("team/hub", entry("sha256:a")),
            ("ops/cache", entry("sha256:b")),
            ("ops/gone", entry("sha256:c")),
        ]);
        let after = node_report(vec![
            ("team/hub", entry("sha256:a")),
            ("ops/cache", entry("sha256:new")),
            ("dev/added", entry("sha256:d")),
        ]);
        assert_eq!(
            changed_registries(Some(&before), Some(&after)),
            [
                ObjectRef::new("added").within("dev"),
                ObjectRef::new("cache").within("ops"),
                ObjectRef::new("gone").within("ops"),
            ]
        );
        // A heartbeat (the same report) brings nothing back.
        assert!(changed_registries(Some(&after), Some(&after)).is_empty());
        // The first report seen names everything in it; a deleted one too.
        assert_eq!(changed_registries(None, Some(&before)).len(), 3);
        assert_eq!(changed_registries(Some(&before), None).len(), 3);
    }
}
