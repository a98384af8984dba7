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

use berth_access::{Action, AuthConfig, Mode, Verifier};
use berth_operator::controller::{self, Config, Context, NodeAgentRef};
use berth_operator::crd::{Registry, RegistrySpec};
use berth_operator::metrics::Metrics;
use berth_operator::node_agent::report::{self, NodeReport, RegistryReport};
use berth_operator::pki;
use berth_operator::status;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
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

    // This test is the only operator: one installed by the chart (a demo
    // left running) would reconcile the same Registries with its own image.
    let operators = Api::<Deployment>::all(client.clone())
        .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
        .await
        .expect("list deployments");
    let running: Vec<String> = operators
        .iter()
        .filter(|d| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) > 0)
        .map(|d| format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()))
        .collect();
    assert!(
        running.is_empty(),
        "a berth operator already runs on this cluster ({running:?}); `helm uninstall` it or start from `e2e/cluster up --fresh`"
    );

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
        // The test plays the node agent: it writes report Leases here.
        node_agent: Some(NodeAgentRef {
            namespace: ns.clone(),
            daemonset: None,
        }),
        // The test runs outside the cluster.
        in_cluster: false,
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

    // Auth is on by default: the registry's account, its auth delegation
    // binding, the config file and the token keys.
    assert!(
        reconciled
            .finalizers()
            .iter()
            .any(|f| f == berth_operator::auth::FINALIZER),
        "the cleanup finalizer is set"
    );
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let account = accounts
        .get("hub-registry")
        .await
        .expect("registry account");
    assert!(owned_by_hub(&account.metadata));
    let pod_spec = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    assert_eq!(
        pod_spec.service_account_name.as_deref(),
        Some("hub-registry")
    );
    assert_eq!(pod_spec.automount_service_account_token, Some(true));
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding_name = format!("berth-registry:{ns}:hub");
    let binding = bindings
        .get(&binding_name)
        .await
        .expect("auth delegation binding");
    assert_eq!(binding.role_ref.name, "system:auth-delegator");
    let subject = &binding.subjects.clone().expect("subjects")[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        ("hub-registry", Some(ns.as_str()))
    );
    let auth_cm = config_maps.get("hub-auth").await.expect("auth config");
    let auth_config: AuthConfig =
        serde_json::from_str(&auth_cm.data.as_ref().expect("data")["config.json"])
            .expect("the auth config parses as the registry reads it");
    assert_eq!(auth_config.mode, Mode::Kubernetes);
    let service = berth_access::config::service_name(&ns, "hub");
    assert_eq!(auth_config.service, service);
    let keys = secrets.get("hub-token-keys").await.expect("token keys");
    assert!(owned_by_hub(&keys.metadata));
    let keys_data = keys.data.clone().expect("data");
    let verify_pem = keys_data["verify.pem"].0.clone();
    let signer = berth_access::Signer::from_pem(&keys_data["signing.key"].0).expect("signing key");
    assert_eq!(
        Verifier::from_pem(&verify_pem).expect("verify.pem").kids(),
        vec![signer.kid().to_owned()]
    );
    let auth_ready = condition(status::AUTH_READY);
    assert_eq!(
        (auth_ready.status.as_str(), auth_ready.reason.as_str()),
        ("True", "Enabled")
    );

    // What node agents are told, and how their reports are counted.
    let published = status.node_trust.clone().expect("status.nodeTrust");
    assert_eq!(published.upstream, format!("https://{cluster_ip}:443"));
    assert_eq!(published.hosts[0], format!("hub.{ns}.svc.cluster.local"));
    assert_eq!(published.ca_bundle, ca_pem);
    assert_eq!(
        condition(status::NODE_TRUST_READY).reason,
        "AwaitingNodeAgents"
    );
    let ca_fingerprint = pki::parse_cert(&ca_pem, "ca").expect("ca").fingerprint;
    report_trust(&client, &ns, &uid, std::slice::from_ref(&ca_fingerprint)).await;
    eventually("the node report to be counted", || async {
        let s = registries.get("hub").await.ok()?.status?;
        let nodes = s.nodes?;
        let ready = s
            .conditions
            .iter()
            .any(|c| c.type_ == status::NODE_TRUST_READY && c.status == "True");
        (nodes.trusted == 1 && nodes.total == 1 && ready).then_some(())
    })
    .await;

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
            "secret/token-keys",
            secrets
                .get("hub-token-keys")
                .await
                .expect("keys")
                .resource_version(),
        );
        v.insert(
            "configmap/auth",
            config_maps
                .get("hub-auth")
                .await
                .expect("auth cm")
                .resource_version(),
        );
        v.insert(
            "serviceaccount",
            Api::<ServiceAccount>::namespaced(client.clone(), &ns)
                .get("hub-registry")
                .await
                .expect("sa")
                .resource_version(),
        );
        v.insert(
            "clusterrolebinding",
            Api::<ClusterRoleBinding>::all(client.clone())
                .get(&format!("berth-registry:{ns}:hub"))
                .await
                .expect("crb")
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

    // CA rotation: plant a CA within a year of expiry. The operator makes a
    // new CA, publishes both, and keeps serving from the old one until the
    // node reports the new one.
    let nine_and_a_half_years = jiff::SignedDuration::from_hours(24 * (3650 - 180));
    let planted = pki::issue_ca(
        "planted old CA",
        jiff::Timestamp::now()
            .checked_sub(nine_and_a_half_years)
            .expect("ts"),
    )
    .expect("ca");
    let planted_secret = Secret {
        data: Some(
            [
                (
                    "tls.crt".to_owned(),
                    ByteString(planted.cert_pem.clone().into_bytes()),
                ),
                (
                    "tls.key".to_owned(),
                    ByteString(planted.key_pem.clone().into_bytes()),
                ),
            ]
            .into(),
        ),
        ..Secret::default()
    };
    secrets
        .patch(
            "hub-ca-key",
            &PatchParams::default(),
            &Patch::Merge(serde_json::to_value(&planted_secret).expect("json")),
        )
        .await
        .expect("plant an expiring CA");
    let tls_pem = || async {
        let tls = secrets.get("hub-tls").await.ok()?;
        String::from_utf8(tls.data?.get("tls.crt")?.0.clone()).ok()
    };
    let new_fingerprint = eventually("a new CA, published beside the old one", || async {
        let s = registries.get("hub").await.ok()?.status?;
        let fingerprint = s.certificate?.ca_fingerprint?;
        (fingerprint != ca_fingerprint && s.node_trust?.ca_bundle.contains(planted.cert_pem.trim()))
            .then_some(fingerprint)
    })
    .await;
    let leaf = eventually("the serving certificate from the old CA", || async {
        let leaf = tls_pem().await?;
        pki::is_signed_by(&leaf, &planted.cert_pem).then_some(leaf)
    })
    .await;
    let ca_secret = secrets.get("hub-ca-key").await.expect("ca secret");
    assert!(
        ca_secret
            .data
            .as_ref()
            .expect("data")
            .contains_key("previous.crt"),
        "the previous CA is kept while it signs"
    );
    let s = registries
        .get("hub")
        .await
        .expect("hub")
        .status
        .expect("status");
    let trust = s
        .conditions
        .iter()
        .find(|c| c.type_ == status::NODE_TRUST_READY)
        .expect("condition");
    assert_eq!(
        (trust.status.as_str(), trust.message.as_str()),
        ("False", "0 of 1 nodes trust the current CA")
    );
    // Still from the old CA a moment later: the operator is waiting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(tls_pem().await.as_deref(), Some(leaf.as_str()));
    report_trust(
        &client,
        &ns,
        &uid,
        &[new_fingerprint.clone(), ca_fingerprint.clone()],
    )
    .await;
    eventually("the serving certificate from the new CA", || async {
        let leaf = tls_pem().await?;
        let bundle = registries
            .get("hub")
            .await
            .ok()?
            .status?
            .node_trust?
            .ca_bundle;
        let new_ca = pki::parse_bundle(&bundle, "bundle").ok()?;
        (new_ca[0].fingerprint == new_fingerprint
            && !pki::is_signed_by(&leaf, &planted.cert_pem)
            && pki::is_signed_by(&leaf, &bundle))
        .then_some(())
    })
    .await;
    eventually(
        "the previous CA to be dropped from the CA Secret",
        || async {
            let data = secrets.get("hub-ca-key").await.ok()?.data?;
            (!data.contains_key("previous.crt")).then_some(())
        },
    )
    .await;

    // Pull secrets: a namespace labelled to match gets one whose robot
    // token the registry's keys verify, for pulls of that namespace only.
    let app_ns = format!("{ns}-app");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &app_ns,
            &PatchParams::apply("berth-tests"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": app_ns, "labels": {"berth-it-pull": ns}}})),
        )
        .await
        .expect("app namespace");
    registries
        .patch(
            "hub",
            &PatchParams::apply("berth-tests"),
            &Patch::Apply(registry(
                "hub",
                json!({"auth": {"pullSecrets": {"namespaceSelector": {"matchLabels": {"berth-it-pull": ns}}}}}),
            )),
        )
        .await
        .expect("ask for pull secrets");
    let app_secrets: Api<Secret> = Api::namespaced(client.clone(), &app_ns);
    let pull = eventually("a pull secret in the selected namespace", || async {
        app_secrets.get_opt("berth-pull").await.ok().flatten()
    })
    .await;
    assert_eq!(
        pull.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    let docker_config: serde_json::Value =
        serde_json::from_slice(&pull.data.as_ref().expect("data")[".dockerconfigjson"].0)
            .expect("docker config json");
    let auths = docker_config["auths"].as_object().expect("auths");
    assert!(
        auths.contains_key(&format!("hub.{ns}.svc.cluster.local")),
        "{:?}",
        auths.keys()
    );
    assert!(auths.contains_key(&cluster_ip), "{:?}", auths.keys());
    let token = auths
        .values()
        .next()
        .and_then(|a| a["password"].as_str())
        .expect("password");
    let verify_pem = secrets
        .get("hub-token-keys")
        .await
        .expect("keys")
        .data
        .expect("data")["verify.pem"]
        .0
        .clone();
    let robot = Verifier::from_pem(&verify_pem)
        .expect("verify.pem")
        .verify(token, &service, &service)
        .expect("the robot token verifies with the registry's keys");
    assert_eq!(robot.kind, berth_access::TokenKind::Robot);
    assert!(robot.allows(&format!("{app_ns}/x"), Action::Pull));
    assert!(!robot.allows(&format!("{app_ns}/x"), Action::Push));
    assert!(!robot.allows(&format!("{ns}/x"), Action::Pull));
    // A second look keeps the token.
    let again = Arc::new(registries.get("hub").await.expect("registry"));
    controller::reconcile(again, ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(
        app_secrets
            .get("berth-pull")
            .await
            .expect("pull secret")
            .resource_version(),
        pull.resource_version(),
        "an unchanged pull secret is not rewritten"
    );
    // The namespace stops matching: its pull secret goes.
    namespaces
        .patch(
            &app_ns,
            &PatchParams::apply("berth-tests"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": app_ns, "labels": {}}})),
        )
        .await
        .expect("unlabel app namespace");
    eventually("the pull secret to go with the label", || async {
        app_secrets
            .get_opt("berth-pull")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    // Mode None is an explicit choice, and says what it means.
    registries
        .patch(
            "open",
            &PatchParams::apply("berth-tests"),
            &Patch::Apply(registry("open", json!({"auth": {"mode": "None"}}))),
        )
        .await
        .expect("apply open Registry");
    eventually("mode None to be reported on AuthReady", || async {
        let s = registries.get("open").await.ok()?.status?;
        s.conditions
            .iter()
            .any(|c| c.type_ == status::AUTH_READY && c.reason == status::AUTH_DISABLED)
            .then_some(())
    })
    .await;
    assert!(
        bindings
            .get_opt(&format!("berth-registry:{ns}:open"))
            .await
            .expect("lookup")
            .is_none(),
        "mode None needs no auth delegation"
    );
    registries
        .delete("open", &DeleteParams::default())
        .await
        .expect("delete open");

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
    eventually("the auth delegation binding to be removed", || async {
        bindings
            .get_opt(&binding_name)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    eventually("the open Registry to be gone", || async {
        registries
            .get_opt("open")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    running.stop().await;
    let _ = namespaces
        .delete(&app_ns, &DeleteParams::background())
        .await;
}

/// Write the report Lease a node agent on node `it-node` would write,
/// saying it has installed `fingerprints` for `hub`.
async fn report_trust(client: &Client, ns: &str, uid: &str, fingerprints: &[String]) {
    let node_report = NodeReport {
        node: "it-node".into(),
        registries: [(
            format!("{ns}/hub"),
            RegistryReport {
                uid: uid.to_owned(),
                selected: true,
                fingerprints: fingerprints.to_vec(),
                error: None,
            },
        )]
        .into(),
    };
    let lease = report::lease(ns, None, &node_report, jiff::Timestamp::now());
    Api::<Lease>::namespaced(client.clone(), ns)
        .patch(
            &report::lease_name("it-node"),
            &PatchParams::apply(report::FIELD_MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await
        .expect("report Lease");
}
