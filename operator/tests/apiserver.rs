//! The operator against a real kube-apiserver (the e2e cluster), one
//! behaviour per test: children and status of a Registry, node reports
//! counted and stale ones not, a no-change reconcile writes nothing,
//! hand-made drift (children, a Service port) is repaired, a renewed user
//! TLS Secret is picked up within seconds, CA rotation waits for nodes,
//! pull secrets follow their selector, mode None says what it means, bad
//! specs are refused, deletion removes what the operator made and keeps
//! the data volume.
//!
//! Opt in with a cluster up (see e2e/cluster.md):
//!   eval "$(e2e/cluster env)"; BERTH_TEST_CLUSTER=1 cargo test -p berth-operator --test apiserver
//! Without `BERTH_TEST_CLUSTER=1` each test says it was skipped and passes.
//! Each test works in a namespace of its own with its own controller, one
//! test at a time (the controller watches every namespace), and removes
//! the namespace afterwards; the CRD is applied (server-side) from the Rust
//! types.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(60);

/// One test at a time: every test's controller watches all namespaces.
static ONE_AT_A_TIME: LazyLock<tokio::sync::Mutex<()>> =
    LazyLock::new(|| tokio::sync::Mutex::new(()));

async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    within(WAIT, what, probe).await
}

async fn within<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
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

/// A test's namespace, client and (running) controller.
struct Env {
    client: Client,
    ns: String,
    ctx: Arc<Context>,
    registries: Api<Registry>,
    deployments: Api<Deployment>,
    services: Api<Service>,
    secrets: Api<Secret>,
    config_maps: Api<ConfigMap>,
    claims: Api<PersistentVolumeClaim>,
    bindings: Api<ClusterRoleBinding>,
}

/// Run `test` in a fresh namespace with the CRD installed; `None` (and a
/// note) when the cluster tests are not asked for.
async fn with_cluster<F, Fut>(name: &str, test: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if std::env::var("BERTH_TEST_CLUSTER").ok().as_deref() != Some("1") {
        eprintln!(
            "skipped: set BERTH_TEST_CLUSTER=1 with a cluster up (eval \"$(e2e/cluster env)\")"
        );
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
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

    let ns = format!("berth-it-{}-{name}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(ns.clone());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace");

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
    let env = Env {
        client: client.clone(),
        ns: ns.clone(),
        ctx: ctx.clone(),
        registries: Api::namespaced(client.clone(), &ns),
        deployments: Api::namespaced(client.clone(), &ns),
        services: Api::namespaced(client.clone(), &ns),
        secrets: Api::namespaced(client.clone(), &ns),
        config_maps: Api::namespaced(client.clone(), &ns),
        claims: Api::namespaced(client.clone(), &ns),
        bindings: Api::all(client.clone()),
    };
    let outcome = tokio::spawn(test(env)).await;

    // Registries carry a finalizer: a controller must see them go before
    // the namespace can.
    let running = start_controller(ctx);
    let registries: Api<Registry> = Api::namespaced(client.clone(), &ns);
    let _ = registries
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let _ = tokio::time::timeout(WAIT, async {
        while registries
            .list(&ListParams::default())
            .await
            .map(|l| !l.items.is_empty())
            .unwrap_or(false)
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    running.stop().await;
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}

/// Apply `hub` with `spec: {}` and wait for its first full status.
async fn hub(env: &Env) -> Registry {
    env.registries
        .patch(
            "hub",
            &PatchParams::apply("berth-tests"),
            &Patch::Apply(registry("hub", json!({}))),
        )
        .await
        .expect("apply Registry");
    eventually("the status to describe generation 1", || async {
        let r = env.registries.get("hub").await.ok()?;
        let s = r.status.clone()?;
        (s.observed_generation == Some(1) && s.certificate.is_some() && s.node_trust.is_some())
            .then_some(r)
    })
    .await
}

fn owned_by(uid: &str, meta: &ObjectMeta) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

fn ca_of(env_bundle: &ConfigMap) -> String {
    env_bundle.data.as_ref().expect("data")["ca.crt"].clone()
}

#[tokio::test]
async fn invalid_specs_are_refused_with_the_crds_message() {
    with_cluster("refused", |env| async move {
        let refused = env
            .registries
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
    })
    .await;
}

#[tokio::test]
async fn an_empty_spec_gets_every_child_a_certificate_auth_and_a_status() {
    with_cluster("children", |env| async move {
        let Env {
            client,
            ns,
            registries: _,
            deployments,
            services,
            secrets,
            config_maps,
            claims,
            bindings,
            ..
        } = &env;
        let (client, ns) = (client.clone(), ns.clone());
        let started = std::time::Instant::now();
        let running = start_controller(env.ctx.clone());
        let reconciled = hub(&env).await;
        eprintln!("first status after {:?}", started.elapsed());
        let uid = reconciled.uid().expect("uid");
        let owned_by_hub = |meta: &ObjectMeta| owned_by(&uid, meta);
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
        let signer =
            berth_access::Signer::from_pem(&keys_data["signing.key"].0).expect("signing key");
        assert_eq!(
            Verifier::from_pem(&verify_pem).expect("verify.pem").kids(),
            vec![signer.kid().to_owned()]
        );
        let auth_ready = condition(status::AUTH_READY);
        assert_eq!(
            (auth_ready.status.as_str(), auth_ready.reason.as_str()),
            ("True", "Enabled")
        );

        let published = status.node_trust.clone().expect("status.nodeTrust");
        assert_eq!(published.upstream, format!("https://{cluster_ip}:443"));
        assert_eq!(published.hosts[0], format!("hub.{ns}.svc.cluster.local"));
        assert_eq!(published.ca_bundle, ca_pem);
        // No registry pod runs (the image is not pullable): not Ready, and
        // the message says why.
        assert_eq!(condition(status::READY).status, "False");
        running.stop().await;
    })
    .await;
}

#[tokio::test]
async fn node_reports_are_counted_and_a_stopped_agent_is_stale() {
    with_cluster("nodes", |env| async move {
        let running = start_controller(env.ctx.clone());
        let hub = hub(&env).await;
        let uid = hub.uid().expect("uid");
        let status = hub.status.clone().expect("status");
        assert_eq!(
            status
                .conditions
                .iter()
                .find(|c| c.type_ == status::NODE_TRUST_READY)
                .map(|c| c.reason.as_str()),
            Some("AwaitingNodeAgents")
        );
        let ca_fingerprint = status
            .certificate
            .and_then(|c| c.ca_fingerprint)
            .expect("fingerprint");
        report_trust(
            &env.client,
            &env.ns,
            &uid,
            std::slice::from_ref(&ca_fingerprint),
        )
        .await;
        eventually("the node report to be counted", || async {
            let s = env.registries.get("hub").await.ok()?.status?;
            let nodes = s.nodes?;
            let ready = s
                .conditions
                .iter()
                .any(|c| c.type_ == status::NODE_TRUST_READY && c.status == "True");
            (nodes.trusted == 1 && nodes.total == 1 && ready).then_some(())
        })
        .await;
        // The agent stops: its Lease was last renewed long ago.
        let old = jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(600))
            .expect("ts");
        report_trust_at(
            &env.client,
            &env.ns,
            &uid,
            std::slice::from_ref(&ca_fingerprint),
            old,
        )
        .await;
        // The controller notices on its next heartbeat check.
        let limit = report::HEARTBEAT + Duration::from_secs(30);
        let message = within(
            limit,
            "the stale node to stop counting as trusting",
            || async {
                let s = env.registries.get("hub").await.ok()?.status?;
                let trust = s
                    .conditions
                    .iter()
                    .find(|c| c.type_ == status::NODE_TRUST_READY)?
                    .clone();
                (trust.status == "False" && s.nodes?.trusted == 0).then_some(trust.message)
            },
        )
        .await;
        assert!(message.contains("1 node(s) stale"), "{message}");
        assert!(
            message.contains("node it-node: its agent stopped reporting"),
            "{message}"
        );
        running.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_no_change_reconcile_writes_nothing() {
    with_cluster("nowrite", |env| async move {
        let Env {
            client,
            ns,
            registries,
            deployments,
            services,
            secrets,
            config_maps,
            claims,
            ..
        } = &env;
        let (client, ns) = (client.clone(), ns.clone());
        let running = start_controller(env.ctx.clone());
        hub(&env).await;
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
                "secret/ui-session",
                secrets
                    .get("hub-ui-session")
                    .await
                    .expect("ui session key")
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
        controller::reconcile(current, env.ctx.clone())
            .await
            .expect("settling reconcile");
        let before = versions().await;
        let current = Arc::new(registries.get("hub").await.expect("registry"));
        controller::reconcile(current, env.ctx.clone())
            .await
            .expect("second reconcile");
        assert_eq!(
            versions().await,
            before,
            "a no-change reconcile changed something"
        );
    })
    .await;
}

#[tokio::test]
async fn deleted_and_hand_edited_children_are_put_back() {
    with_cluster("drift", |env| async move {
        let Env {
            deployments,
            config_maps,
            ..
        } = &env;
        let running = start_controller(env.ctx.clone());
        hub(&env).await;
        let ca_pem = ca_of(&config_maps.get("hub-ca").await.expect("bundle"));
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

        running.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_hand_edited_service_port_is_put_back() {
    with_cluster("port", |env| async move {
        let running = start_controller(env.ctx.clone());
        hub(&env).await;
        let ports = |svc: Service| {
            svc.spec
                .and_then(|s| s.ports)
                .unwrap_or_default()
                .into_iter()
                .map(|p| (p.name.unwrap_or_default(), p.port))
                .collect::<Vec<_>>()
        };
        // As `kubectl edit` would: a client-side update of the port.
        let mut edited = env.services.get("hub").await.expect("service");
        if let Some(p) = edited
            .spec
            .as_mut()
            .and_then(|s| s.ports.as_mut())
            .and_then(|p| p.first_mut())
        {
            p.port = 8443;
        }
        edited.metadata.managed_fields = None;
        env.services
            .replace("hub", &PostParams::default(), &edited)
            .await
            .expect("edit the Service port");
        within(
            Duration::from_secs(20),
            "the Service port to be put back",
            || async {
                let svc = env.services.get("hub").await.ok()?;
                (ports(svc) == [("https".to_owned(), 443)]).then_some(())
            },
        )
        .await;
        running.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_renewed_user_tls_secret_is_picked_up_within_seconds() {
    with_cluster("usertls", |env| async move {
        let running = start_controller(env.ctx.clone());
        let ns = env.ns.clone();
        let user_secret = |ca: &pki::KeyedCert, names: &[String]| {
            let pair = pki::issue_serving(ca, names, jiff::Timestamp::now(), Duration::from_secs(90 * 24 * 3600))
                .expect("issue");
            json!({
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": "mine"},
                "stringData": {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": ca.cert_pem},
            })
        };
        let secrets = env.secrets.clone();
        let put = |value: serde_json::Value| {
            let secrets = secrets.clone();
            async move {
                secrets
                    .patch(
                        "mine",
                        &PatchParams::apply("berth-tests").force(),
                        &Patch::Apply(value),
                    )
                    .await
                    .expect("user Secret");
            }
        };
        let first_ca = pki::issue_ca("user CA one", jiff::Timestamp::now()).expect("ca");
        let short_names = vec![format!("hub.{ns}.svc")];
        put(user_secret(&first_ca, &short_names)).await;
        env.registries
            .patch(
                "hub",
                &PatchParams::apply("berth-tests"),
                &Patch::Apply(registry("hub", json!({"tls": {"mode": "Secret", "secretName": "mine"}}))),
            )
            .await
            .expect("apply Registry");
        // The certificate lacks the ClusterIP the nodes dial: refused, and
        // the reconcile after that waits for an hour unless a watch sees
        // the Secret change.
        let cluster_ip = eventually("the Service's ClusterIP", || async {
            env.services.get("hub").await.ok()?.spec?.cluster_ip
        })
        .await;
        let fingerprint = || async {
            let s = env.registries.get("hub").await.ok()?.status?;
            let c = s.conditions.iter().find(|c| c.type_ == status::CERTIFICATE_READY)?.clone();
            Some((c.status, s.certificate.and_then(|c| c.ca_fingerprint)))
        };
        eventually("the incomplete certificate to be refused", || async {
            let (ready, _) = fingerprint().await?;
            (ready == "False").then_some(())
        })
        .await;
        let full_names = vec![
            format!("hub.{ns}.svc"),
            format!("hub.{ns}.svc.cluster.local"),
            format!("hub.{ns}"),
            "hub".to_owned(),
            cluster_ip.clone(),
        ];
        put(user_secret(&first_ca, &full_names)).await;
        let first = pki::parse_cert(&first_ca.cert_pem, "ca").expect("ca").fingerprint;
        within(Duration::from_secs(10), "the fixed Secret to be served", || async {
            let (ready, fp) = fingerprint().await?;
            (ready == "True" && fp.as_deref() == Some(first.as_str())).then_some(())
        })
        .await;
        // Renewed by the user under another CA: nodes must learn it now.
        let second_ca = pki::issue_ca("user CA two", jiff::Timestamp::now()).expect("ca");
        put(user_secret(&second_ca, &full_names)).await;
        let second = pki::parse_cert(&second_ca.cert_pem, "ca").expect("ca").fingerprint;
        within(Duration::from_secs(10), "the renewed Secret's CA to be published", || async {
            let r = env.registries.get("hub").await.ok()?;
            let (_, fp) = fingerprint().await?;
            let bundle = r.status?.node_trust?.ca_bundle;
            (fp.as_deref() == Some(second.as_str()) && bundle.contains(second_ca.cert_pem.trim()))
                .then_some(())
        })
        .await;
        running.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_ca_rotation_serves_from_the_old_ca_until_every_node_trusts_the_new_one() {
    with_cluster("rotation", |env| async move {
        let Env {
            client,
            ns,
            registries,
            secrets,
            config_maps,
            ..
        } = &env;
        let running = start_controller(env.ctx.clone());
        let uid = hub(&env).await.uid().expect("uid");
        let ca_pem = ca_of(&config_maps.get("hub-ca").await.expect("bundle"));
        let ca_fingerprint = pki::parse_cert(&ca_pem, "ca").expect("ca").fingerprint;
        report_trust(client, ns, &uid, std::slice::from_ref(&ca_fingerprint)).await;
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
            (fingerprint != ca_fingerprint
                && s.node_trust?.ca_bundle.contains(planted.cert_pem.trim()))
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
            client,
            ns,
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

        running.stop().await;
    })
    .await;
}

#[tokio::test]
async fn pull_secrets_follow_the_namespace_selector() {
    with_cluster("pull", |env| async move {
        let Env {
            client,
            ns,
            registries,
            secrets,
            ..
        } = &env;
        let (client, ns) = (client.clone(), ns.clone());
        let running = start_controller(env.ctx.clone());
        hub(&env).await;
        let cluster_ip = env
            .services
            .get("hub")
            .await
            .expect("service")
            .spec
            .and_then(|s| s.cluster_ip)
            .expect("cluster ip");
        let service = berth_access::config::service_name(&ns, "hub");
        let ctx = env.ctx.clone();
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

        running.stop().await;
        let _ = namespaces
            .delete(&app_ns, &DeleteParams::background())
            .await;
    })
    .await;
}

#[tokio::test]
async fn auth_mode_none_is_reported_and_needs_no_binding() {
    with_cluster("open", |env| async move {
        let Env {
            ns,
            registries,
            bindings,
            ..
        } = &env;
        let running = start_controller(env.ctx.clone());
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
    })
    .await;
}

#[tokio::test]
async fn deletion_removes_the_children_and_keeps_the_data_volume() {
    with_cluster("delete", |env| async move {
        let Env {
            ns,
            registries,
            deployments,
            services,
            secrets,
            config_maps,
            claims,
            bindings,
            ..
        } = &env;
        let running = start_controller(env.ctx.clone());
        hub(&env).await;
        let binding_name = format!("berth-registry:{ns}:hub");
        assert!(
            bindings
                .get_opt(&binding_name)
                .await
                .expect("lookup")
                .is_some()
        );
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
        running.stop().await;
    })
    .await;
}

/// Write the report Lease a node agent on node `it-node` would write,
/// saying it has installed `fingerprints` for `hub`.
async fn report_trust(client: &Client, ns: &str, uid: &str, fingerprints: &[String]) {
    report_trust_at(client, ns, uid, fingerprints, jiff::Timestamp::now()).await;
}

/// [`report_trust`], renewed at `renewed`.
async fn report_trust_at(
    client: &Client,
    ns: &str,
    uid: &str,
    fingerprints: &[String],
    renewed: jiff::Timestamp,
) {
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
    let lease = report::lease(ns, None, &node_report, renewed);
    Api::<Lease>::namespaced(client.clone(), ns)
        .patch(
            &report::lease_name("it-node"),
            &PatchParams::apply(report::FIELD_MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await
        .expect("report Lease");
}
