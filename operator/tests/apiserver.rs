//! The operator against a real kube-apiserver (the e2e cluster): apply a
//! Registry, check its children and status, a second reconcile writes
//! nothing, hand-made drift is repaired, bad specs are refused, deletion
//! removes what the operator made and keeps the data volume.
//!
//! Opt in with a cluster up (see e2e/cluster.md):
//!   eval "$(e2e/cluster env)"; BERTH_TEST_CLUSTER=1 cargo test -p berth-operator --test apiserver
//! Without `BERTH_TEST_CLUSTER=1` the test says it was skipped and passes.
//! It works in a namespace of its own and removes it afterwards; the CRD is
//! applied (server-side) from the Rust types.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_operator::controller::{self, Config, Context};
use berth_operator::crd::{Registry, RegistrySpec};
use berth_operator::metrics::Metrics;
use berth_operator::pki;
use berth_operator::status;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(60);

async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

fn start_controller(ctx: Arc<Context>) -> Running {
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(controller::run(ctx, async move {
        let _ = rx.await;
    }));
    Running {
        stop: Some(tx),
        task,
    }
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
        self.task.abort();
    }
}

fn registry(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Registry", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn a_registry_is_reconciled_against_a_real_apiserver() {
    if std::env::var("BERTH_TEST_CLUSTER").ok().as_deref() != Some("1") {
        eprintln!(
            "skipped: set BERTH_TEST_CLUSTER=1 with a cluster up (eval \"$(e2e/cluster env)\")"
        );
        return;
    }
    let client = Client::try_default().await.expect("kubeconfig");

    // The CRD, as the chart installs it.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = berth_operator::crdgen::crd().expect("crd");
    crds.patch(
        "registries.berth.dev",
        &PatchParams::apply("berth-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    let established = await_condition(
        crds.clone(),
        "registries.berth.dev",
        conditions::is_crd_established(),
    );
    tokio::time::timeout(WAIT, established)
        .await
        .expect("CRD established in time")
        .expect("CRD watch");

    let ns = format!("berth-it-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(ns.clone());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace");

    let outcome = tokio::spawn(scenario(client.clone(), ns.clone())).await;
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}

async fn scenario(client: Client, ns: String) {
    let config = Config {
        cluster_domain: "cluster.local".into(),
        default_image: "berth.dev/berth-registry:it".into(),
        node_agent: None,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        config,
        Arc::new(Metrics::default()),
    ));
    let registries: Api<Registry> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);

    // Invalid specs are refused at apply time, with the CRD's message.
    let refused = registries
        .patch(
            "bad",
            &PatchParams::apply("berth-tests"),
            &Patch::Apply(registry("bad", json!({"tls": {"mode": "Secret"}}))),
        )
        .await
        .expect_err("a Secret-mode Registry without a secret name is refused");
    assert!(
        refused
            .to_string()
            .contains("tls.mode Secret needs tls.secretName"),
        "{refused}"
    );

    // spec: {} gives every child and a status.
    let started = std::time::Instant::now();
    let running = start_controller(ctx.clone());
    registries
        .patch(
            "hub",
            &PatchParams::apply("berth-tests"),
            &Patch::Apply(registry("hub", json!({}))),
        )
        .await
        .expect("apply Registry");
    let reconciled = eventually("the status to describe generation 1", || async {
        let r = registries.get("hub").await.ok()?;
        let s = r.status.clone()?;
        (s.observed_generation == Some(1) && s.certificate.is_some()).then_some(r)
    })
    .await;
    eprintln!("first status after {:?}", started.elapsed());
    let uid = reconciled.uid().expect("uid");
    assert_eq!(
        reconciled.spec,
        RegistrySpec::default(),
        "the apiserver filled in the schema defaults"
    );

    let status = reconciled.status.clone().expect("status");
    let condition = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .cloned()
            .expect(t)
    };
    assert_eq!(condition(status::CERTIFICATE_READY).status, "True");
    let endpoints = status.endpoints.clone().expect("endpoints");
    assert_eq!(
        endpoints.node.as_deref(),
        Some(format!("hub.{ns}.svc.cluster.local").as_str())
    );

    let owned_by_hub = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.controller == Some(true))
    };
    let deployment = deployments.get("hub").await.expect("deployment");
    assert!(owned_by_hub(&deployment.metadata));
    let service = services.get("hub").await.expect("service");
    assert!(owned_by_hub(&service.metadata));
    let cluster_ip = service.spec.and_then(|s| s.cluster_ip).expect("cluster ip");
    let tls = secrets.get("hub-tls").await.expect("tls secret");
    assert!(owned_by_hub(&tls.metadata));
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
    let cert_pem =
        String::from_utf8(tls.data.as_ref().expect("data")["tls.crt"].0.clone()).expect("pem");
    let leaf = pki::parse_cert(&cert_pem, "tls.crt").expect("leaf");
    assert!(
        leaf.covers(&cluster_ip),
        "the certificate names the ClusterIP {cluster_ip}"
    );
    assert!(leaf.covers(&format!("hub.{ns}.svc")));
    let bundle = config_maps.get("hub-ca").await.expect("ca bundle");
    assert!(owned_by_hub(&bundle.metadata));
    let ca_pem = bundle.data.as_ref().expect("data")["ca.crt"].clone();
    assert!(
        pki::is_signed_by(&cert_pem, &ca_pem),
        "the leaf is signed by the published CA"
    );
    assert_eq!(
        status
            .certificate
            .as_ref()
            .and_then(|c| c.ca_fingerprint.clone()),
        Some(pki::parse_cert(&ca_pem, "ca").expect("ca").fingerprint)
    );
    let claim = claims.get("hub-data").await.expect("data claim");
    assert!(
        !owned_by_hub(&claim.metadata),
        "a retained claim has no owner reference"
    );

    // A second reconcile with nothing changed writes nothing.
    running.stop().await;
    let versions = || async {
        let mut v = BTreeMap::new();
        v.insert(
            "registry",
            registries
                .get("hub")
                .await
                .expect("registry")
                .resource_version(),
        );
        v.insert(
            "service",
            services
                .get("hub")
                .await
                .expect("service")
                .resource_version(),
        );
        v.insert(
            "secret/tls",
            secrets
                .get("hub-tls")
                .await
                .expect("tls")
                .resource_version(),
        );
        v.insert(
            "secret/ca",
            secrets
                .get("hub-ca-key")
                .await
                .expect("ca")
                .resource_version(),
        );
        v.insert(
            "configmap",
            config_maps
                .get("hub-ca")
                .await
                .expect("cm")
                .resource_version(),
        );
        v.insert(
            "deployment generation",
            deployments
                .get("hub")
                .await
                .expect("d")
                .metadata
                .generation
                .map(|g| g.to_string()),
        );
        v.insert(
            "claim",
            claims
                .get("hub-data")
                .await
                .expect("claim")
                .metadata
                .generation
                .map(|g| g.to_string()),
        );
        v
    };
    // Let the Deployment controller's own status writes settle first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let current = Arc::new(registries.get("hub").await.expect("registry"));
    controller::reconcile(current, ctx.clone())
        .await
        .expect("settling reconcile");
    let before = versions().await;
    let current = Arc::new(registries.get("hub").await.expect("registry"));
    controller::reconcile(current, ctx.clone())
        .await
        .expect("second reconcile");
    assert_eq!(
        versions().await,
        before,
        "a no-change reconcile changed something"
    );

    // Drift: a deleted child comes back, a hand edit is undone.
    let running = start_controller(ctx.clone());
    config_maps
        .delete("hub-ca", &DeleteParams::default())
        .await
        .expect("delete bundle");
    eventually("the CA bundle to come back", || async {
        config_maps.get_opt("hub-ca").await.ok().flatten()
    })
    .await;
    // Hand edits (as `kubectl edit` makes them) to fields the operator owns.
    let edit = json!({"data": {"ca.crt": "not a CA"}});
    config_maps
        .patch("hub-ca", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("edit bundle");
    eventually("the CA bundle's content to be put back", || async {
        let cm = config_maps.get("hub-ca").await.ok()?;
        (cm.data?.get("ca.crt")? == &ca_pem).then_some(())
    })
    .await;
    let edit = json!({"spec": {"template": {"spec": {"containers": [{"name": "registry", "image": "someone/else:latest"}]}}}});
    deployments
        .patch("hub", &PatchParams::default(), &Patch::Strategic(&edit))
        .await
        .expect("edit deployment");
    eventually("the registry image to be put back", || async {
        let d = deployments.get("hub").await.ok()?;
        let image = d.spec?.template.spec?.containers.first()?.image.clone()?;
        (image == "berth.dev/berth-registry:it").then_some(())
    })
    .await;
    deployments
        .delete("hub", &DeleteParams::default())
        .await
        .expect("delete deployment");
    eventually("the Deployment to come back", || async {
        deployments
            .get_opt("hub")
            .await
            .ok()
            .flatten()
            .filter(|d| d.metadata.deletion_timestamp.is_none())
    })
    .await;

    // Deletion: owned children go with the Registry, the data volume stays.
    registries
        .delete("hub", &DeleteParams::foreground())
        .await
        .expect("delete registry");
    eventually("the Registry to be gone", || async {
        registries
            .get_opt("hub")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
    eventually("the owned children to be collected", || async {
        let gone = deployments.get_opt("hub").await.ok()?.is_none()
            && services.get_opt("hub").await.ok()?.is_none()
            && secrets.get_opt("hub-tls").await.ok()?.is_none()
            && config_maps.get_opt("hub-ca").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    assert!(
        claims
            .get_opt("hub-data")
            .await
            .expect("claim lookup")
            .is_some(),
        "Retain keeps the data volume"
    );
    running.stop().await;
}
