//! The operator survives its own faults, against the real e2e cluster:
//!
//! 1. killed (SIGKILL) in a loop while five Registries are created and
//!    edited: every CA Secret ever seen holds one CA per Registry, no other
//!    CA is ever published, every child exists exactly once, none orphaned;
//! 2. the apiserver unreachable for 60 s (`BERTH_FAULTS_OUTAGE_SECONDS`)
//!    while Registries are created, edited and deleted: everything
//!    converges afterwards, and the operator never exits (it loses its
//!    leader Lease, stops reconciling and waits to lead again);
//! 3. every watch stream cut, and a 5 s outage with an edit made during
//!    it: the edit is reconciled within 30 s, and the operator never exits;
//! 4. the node agent killed in a loop while it rewrites certs.d for
//!    changing host names: no file containerd or docker reads is ever seen
//!    partial, no temp file is left, and the restarted agent converges.
//!
//! The operator and node agent are the real binary, run out of cluster.
//! The operator talks to the apiserver through a TCP proxy on loopback that
//! the test owns, so "apiserver unreachable" and "watch cut" are done to
//! this operator alone and the shared cluster stays up for everyone else.
//!
//! Opt in with a cluster up (see e2e/cluster.md):
//!   eval "$(e2e/cluster env)"; BERTH_TEST_CLUSTER=1 cargo test -p berth-operator --test faults -- --nocapture
//! Without `BERTH_TEST_CLUSTER=1` the test says it was skipped and passes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_operator::crd::Registry;
use berth_operator::desired::labels::REGISTRY_LABEL;
use berth_operator::names::Names;
use berth_operator::node_agent::desired;
use berth_operator::node_agent::layout::Layout;
use berth_operator::pki;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};

fn log(message: impl AsRef<str>) {
    eprintln!("# {} {}", jiff::Timestamp::now(), message.as_ref());
}

/// A small xorshift, so kill times vary without a new dependency.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = jiff::Timestamp::now().as_nanosecond() as u64 | 1;
        log(format!("random seed {seed}"));
        Self(seed)
    }
    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let span = (high - low).as_millis() as u64;
        low + Duration::from_millis(self.0 % span.max(1))
    }
}

// --- the proxy between the operator and the apiserver ---------------------

/// TCP on 127.0.0.1:`port` to the apiserver. `down` closes the listener
/// (connection refused) and every open connection; `cut` closes the open
/// connections only (every watch stream breaks).
struct Proxy {
    port: u16,
    up: watch::Sender<bool>,
    cut: broadcast::Sender<()>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (up, _) = watch::channel(true);
        let (cut, _) = broadcast::channel(4);
        let mut up_rx = up.subscribe();
        let cut_tx = cut.clone();
        tokio::spawn(async move {
            let mut listener = Some(listener);
            loop {
                let _ = up_rx.wait_for(|up| *up).await;
                let bound = match listener.take() {
                    Some(l) => l,
                    None => match TcpListener::bind(("127.0.0.1", port)).await {
                        Ok(l) => l,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                loop {
                    tokio::select! {
                        accepted = bound.accept() => {
                            let Ok((mut inbound, _)) = accepted else { continue };
                            let target = target.clone();
                            let mut cut = cut_tx.subscribe();
                            tokio::spawn(async move {
                                let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                    _ = cut.recv() => {}
                                }
                            });
                        }
                        _ = up_rx.wait_for(|up| !*up) => break,
                    }
                }
            }
        });
        Self { port, up, cut }
    }

    fn down(&self) {
        self.up.send_replace(false);
        let _ = self.cut.send(());
    }

    fn up(&self) {
        self.up.send_replace(true);
    }

    fn cut(&self) {
        let _ = self.cut.send(());
    }
}

// --- supervised processes ---------------------------------------------------

/// A process restarted whenever it ends, as the kubelet restarts a
/// container; it counts the ends the test did not cause (which fail it).
struct Supervised {
    name: &'static str,
    state: Arc<Mutex<Slot>>,
    exits: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Slot {
    child: Option<Child>,
}

impl Supervised {
    fn start(
        name: &'static str,
        log_file: PathBuf,
        command: impl Fn() -> Command + Send + 'static,
    ) -> Self {
        let state = Arc::new(Mutex::new(Slot::default()));
        let exits = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, exits, stop) = (state.clone(), exits.clone(), stop.clone());
            std::thread::spawn(move || {
                loop {
                    let stopping = stop.load(Ordering::SeqCst);
                    {
                        let mut slot = state.lock().unwrap_or_else(|e| e.into_inner());
                        if stopping {
                            if let Some(mut child) = slot.child.take() {
                                let _ = child.kill();
                                let _ = child.wait();
                            }
                            return;
                        }
                        let ended = match slot.child.as_mut() {
                            Some(child) => child.try_wait().ok().flatten(),
                            None => None,
                        };
                        if let Some(status) = ended {
                            exits.fetch_add(1, Ordering::SeqCst);
                            log(format!("{name} exited by itself: {status}"));
                            slot.child = None;
                            drop(slot);
                            // A crash loop's pause, shorter than the kubelet's.
                            std::thread::sleep(Duration::from_secs(1));
                            continue;
                        }
                        if slot.child.is_none() {
                            let out = fs::OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(&log_file)
                                .expect("log file");
                            let err = out.try_clone().expect("log file");
                            match command()
                                .stdout(Stdio::from(out))
                                .stderr(Stdio::from(err))
                                .spawn()
                            {
                                Ok(child) => slot.child = Some(child),
                                Err(e) => panic!("starting {name}: {e}"),
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            name,
            state,
            exits,
            stop,
            thread: Some(thread),
        }
    }

    /// SIGKILL the process; it is started again shortly.
    fn kill(&self) {
        let mut slot = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = slot.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
            slot.child = None;
        }
    }

    fn exits(&self) -> u32 {
        self.exits.load(Ordering::SeqCst)
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        log(format!("{} stopped", self.name));
    }
}

// --- cluster helpers --------------------------------------------------------------

async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(value) => {
                log(format!(
                    "{what} after {:.1}s",
                    started.elapsed().as_secs_f64()
                ));
                return value;
            }
            Err(why) if started.elapsed() > limit => {
                panic!("not {what} within {limit:?}: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn host(ns: &str, name: &str, version: u32) -> String {
    format!("{name}-v{version}.{ns}.test")
}

fn registry_manifest(ns: &str, name: &str, version: u32) -> serde_json::Value {
    json!({
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "Registry",
        "metadata": {"name": name},
        "spec": {
            // No pods, and a claim no volume of the shared cluster binds.
            "replicas": 0,
            "storage": {"filesystem": {
                "size": "64Mi",
                "storageClassName": "berth-faults-unbound",
                "reclaimPolicy": "Delete",
            }},
            "nodeTrust": {"hostName": host(ns, name, version)},
        },
    })
}

async fn put_registry(api: &Api<Registry>, ns: &str, name: &str, version: u32) {
    api.patch(
        name,
        &PatchParams::apply("berth-faults").force(),
        &Patch::Apply(registry_manifest(ns, name, version)),
    )
    .await
    .unwrap_or_else(|e| panic!("applying Registry {name}: {e}"));
}

fn fingerprints(pem: &str) -> Vec<String> {
    pki::parse_bundle(pem, "pem")
        .map(|certs| certs.into_iter().map(|c| c.fingerprint).collect())
        .unwrap_or_default()
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// Every CA the operator stored or published, per Registry, as seen by
/// polling all along.
#[derive(Default)]
struct CaHistory {
    stored: HashMap<String, BTreeSet<String>>,
    published: HashMap<String, BTreeSet<String>>,
}

fn watch_cas(
    client: Client,
    ns: String,
    history: Arc<Mutex<CaHistory>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let config_maps: Api<ConfigMap> = Api::namespaced(client, &ns);
        let labelled = ListParams::default().labels(REGISTRY_LABEL);
        loop {
            if let (Ok(s), Ok(c)) = (
                secrets.list(&labelled).await,
                config_maps.list(&labelled).await,
            ) {
                let mut h = history.lock().unwrap_or_else(|e| e.into_inner());
                for secret in s.items {
                    let Some(name) = secret.name_any().strip_suffix("-ca-key").map(str::to_owned)
                    else {
                        continue;
                    };
                    if let Some(pem) = text(&secret, "tls.crt") {
                        h.stored.entry(name).or_default().extend(fingerprints(&pem));
                    }
                }
                for cm in c.items {
                    let Some(name) = cm.labels().get(REGISTRY_LABEL).cloned() else {
                        continue;
                    };
                    if let Some(pem) = berth_operator::desired::ca_bundle::bundle_of(&cm) {
                        h.published
                            .entry(name)
                            .or_default()
                            .extend(fingerprints(pem));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    })
}

async fn list<K>(client: &Client, ns: &str) -> Result<Vec<K>, String>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(REGISTRY_LABEL))
        .await
        .map(|l| l.items)
        .map_err(|e| e.to_string())
}

/// The names of `objects`, per Registry label, checking each is controlled
/// by the live Registry of that name (an orphan is an error).
fn children<K: Resource>(
    kind: &str,
    objects: &[K],
    uids: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for o in objects {
        let name = o.meta().name.clone().unwrap_or_default();
        let owner = o.labels().get(REGISTRY_LABEL).cloned().unwrap_or_default();
        let Some(uid) = uids.get(&owner) else {
            return Err(format!(
                "{kind} {name} is left from Registry {owner}, which is gone"
            ));
        };
        let controlled = o
            .owner_references()
            .iter()
            .any(|r| r.controller == Some(true) && &r.uid == uid);
        if !controlled {
            return Err(format!(
                "{kind} {name} is not controlled by Registry {owner} ({uid})"
            ));
        }
        out.entry(owner).or_default().insert(name);
    }
    Ok(out)
}

/// Whether the namespace holds exactly `wanted` Registries, each
/// reconciled at its generation with a certificate, and exactly its
/// children, with one CA stored and published. Returns each CA fingerprint.
async fn converged(
    client: &Client,
    ns: &str,
    wanted: &BTreeSet<String>,
) -> Result<BTreeMap<String, String>, String> {
    let registries: Vec<Registry> = Api::<Registry>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
        .items;
    let present: BTreeSet<String> = registries.iter().map(|r| r.name_any()).collect();
    if &present != wanted {
        return Err(format!("Registries {present:?}, wanted {wanted:?}"));
    }
    let uids: BTreeMap<String, String> = registries
        .iter()
        .map(|r| (r.name_any(), r.uid().unwrap_or_default()))
        .collect();
    let secrets: Vec<Secret> = list(client, ns).await?;
    let kinds = [
        ("Secret", children("Secret", &secrets, &uids)?),
        (
            "ConfigMap",
            children("ConfigMap", &list::<ConfigMap>(client, ns).await?, &uids)?,
        ),
        (
            "Service",
            children("Service", &list::<Service>(client, ns).await?, &uids)?,
        ),
        (
            "Deployment",
            children("Deployment", &list::<Deployment>(client, ns).await?, &uids)?,
        ),
        (
            "PersistentVolumeClaim",
            children(
                "PersistentVolumeClaim",
                &list::<PersistentVolumeClaim>(client, ns).await?,
                &uids,
            )?,
        ),
    ];
    let config_maps: Vec<ConfigMap> = list(client, ns).await?;
    let mut cas = BTreeMap::new();
    for r in &registries {
        let name = r.name_any();
        let names = Names::of(r, "cluster.local").ok_or("no names")?;
        let status = r.status.clone().ok_or(format!("{name}: no status"))?;
        if status.observed_generation != r.metadata.generation {
            return Err(format!(
                "{name}: status of generation {:?}, spec at {:?}",
                status.observed_generation, r.metadata.generation
            ));
        }
        let cert_ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "CertificateReady" && c.status == "True");
        if !cert_ready {
            return Err(format!("{name}: CertificateReady is not True"));
        }
        let expected: [(&str, BTreeSet<String>); 5] = [
            ("Secret", [names.ca_secret(), names.tls_secret()].into()),
            ("ConfigMap", [names.ca_config_map()].into()),
            ("Service", [names.service()].into()),
            ("Deployment", [names.deployment()].into()),
            ("PersistentVolumeClaim", [names.data_claim()].into()),
        ];
        for ((kind, found), (_, want)) in kinds.iter().zip(expected.iter()) {
            let got = found.get(&name).cloned().unwrap_or_default();
            // Names are unique per kind, so "exactly once" is "present";
            // anything else labelled passed the orphan check above.
            if !want.is_subset(&got) {
                return Err(format!("{name}: {kind}s {got:?}, wanted {want:?}"));
            }
        }
        let ca_secret = secrets
            .iter()
            .find(|s| s.name_any() == names.ca_secret())
            .ok_or("no CA Secret")?;
        let ca = fingerprints(&text(ca_secret, "tls.crt").unwrap_or_default());
        let [ca] = ca.as_slice() else {
            return Err(format!("{name}: the CA Secret holds {ca:?}"));
        };
        let status_ca = status.certificate.and_then(|c| c.ca_fingerprint);
        if status_ca.as_ref() != Some(ca) {
            return Err(format!(
                "{name}: status names CA {status_ca:?}, the Secret holds {ca}"
            ));
        }
        let bundle = config_maps
            .iter()
            .find(|c| c.name_any() == names.ca_config_map())
            .and_then(berth_operator::desired::ca_bundle::bundle_of)
            .map(fingerprints)
            .unwrap_or_default();
        if bundle != [ca.clone()] {
            return Err(format!(
                "{name}: the CA bundle holds {bundle:?}, not just {ca}"
            ));
        }
        let trust = status
            .node_trust
            .ok_or(format!("{name}: no status.nodeTrust"))?;
        if fingerprints(&trust.ca_bundle) != [ca.clone()] {
            return Err(format!("{name}: status.nodeTrust publishes another bundle"));
        }
        if !trust
            .hosts
            .iter()
            .any(|h| h.starts_with(&format!("{name}-v")))
        {
            return Err(format!(
                "{name}: status.nodeTrust.hosts {:?} is stale",
                trust.hosts
            ));
        }
        cas.insert(name, ca.clone());
    }
    Ok(cas)
}

/// Each Registry's CA never changed: one CA stored in all the polling,
/// and nothing else ever published.
fn one_ca_each(history: &Mutex<CaHistory>, cas: &BTreeMap<String, String>) {
    let h = history.lock().unwrap_or_else(|e| e.into_inner());
    for (name, ca) in cas {
        let stored = h.stored.get(name).cloned().unwrap_or_default();
        assert_eq!(
            stored,
            BTreeSet::from([ca.clone()]),
            "{name}: every CA its CA Secret ever held"
        );
        let published = h.published.get(name).cloned().unwrap_or_default();
        assert_eq!(
            published,
            BTreeSet::from([ca.clone()]),
            "{name}: every CA its bundle ever published"
        );
    }
}

// --- the test --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_and_node_agent_converge_through_their_own_faults() {
    if std::env::var("BERTH_TEST_CLUSTER").ok().as_deref() != Some("1") {
        eprintln!(
            "skipped: set BERTH_TEST_CLUSTER=1 with a cluster up (eval \"$(e2e/cluster env)\")"
        );
        return;
    }
    let client = Client::try_default().await.expect("kubeconfig");
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
    tokio::time::timeout(Duration::from_secs(60), established)
        .await
        .expect("CRD established in time")
        .expect("CRD watch");

    let ns = format!("berth-op-faults-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(ns.clone());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace");
    let dir = std::env::temp_dir().join(&ns);
    fs::create_dir_all(&dir).expect("temp dir");

    let outcome = tokio::spawn(scenario(client.clone(), ns.clone(), dir.clone())).await;
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
    match outcome {
        Ok(()) => {
            let _ = fs::remove_dir_all(&dir);
        }
        Err(panic) => {
            eprintln!("# logs kept in {}", dir.display());
            for name in ["operator.log", "node-agent.log"] {
                if let Ok(text) = fs::read_to_string(dir.join(name)) {
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!("# --- last lines of {name}");
                    for line in &lines[lines.len().saturating_sub(30)..] {
                        eprintln!("{line}");
                    }
                }
            }
            let payload = panic.into_panic();
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            eprintln!("# FAILED: {message}");
            std::panic::resume_unwind(payload);
        }
    }
}

/// Two operators (a killed leader's last requests and its successor, or
/// replicas with leader election off) reconciling a new Registry at once:
/// one CA is stored, and no other is ever published.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_first_reconciles_store_and_publish_one_ca() {
    if std::env::var("BERTH_TEST_CLUSTER").ok().as_deref() != Some("1") {
        eprintln!("skipped: set BERTH_TEST_CLUSTER=1 with a cluster up");
        return;
    }
    let client = Client::try_default().await.expect("kubeconfig");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "registries.berth.dev",
        &PatchParams::apply("berth-tests").force(),
        &Patch::Apply(&berth_operator::crdgen::crd().expect("crd")),
    )
    .await
    .expect("apply CRD");
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(
            crds,
            "registries.berth.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("CRD established in time")
    .expect("CRD watch");
    let ns = format!("berth-op-faults-race-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(ns.clone());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace");
    let outcome = tokio::spawn(race(client.clone(), ns.clone())).await;
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}

async fn race(client: Client, ns: String) {
    use berth_operator::controller::{self, Config, Context};
    let registries: Api<Registry> = Api::namespaced(client.clone(), &ns);
    put_registry(&registries, &ns, "race", 1).await;
    let registry = Arc::new(registries.get("race").await.expect("get"));
    let ctx = Arc::new(Context::new(
        client.clone(),
        Config {
            cluster_domain: "cluster.local".into(),
            default_image: "berth.dev/berth-registry:faults".into(),
            node_agent: None,
            in_cluster: false,
        },
        Arc::new(berth_operator::metrics::Metrics::default()),
    ));
    let racers: Vec<_> = (0..8)
        .map(|_| tokio::spawn(controller::reconcile(registry.clone(), ctx.clone())))
        .collect();
    let mut failed = 0;
    for racer in racers {
        if let Err(e) = racer.await.expect("reconcile task") {
            log(format!("a racing reconcile failed: {e}"));
            failed += 1;
        }
    }
    log(format!("{failed} of 8 racing reconciles failed"));
    // What the retries do: reconcile again from a fresh read.
    for _ in 0..3 {
        let fresh = Arc::new(registries.get("race").await.expect("get"));
        if controller::reconcile(fresh, ctx.clone()).await.is_ok() {
            break;
        }
    }
    let wanted = BTreeSet::from(["race".to_owned()]);
    let cas = eventually(
        "converged after racing reconciles",
        Duration::from_secs(10),
        || converged(&client, &ns, &wanted),
    )
    .await;
    log(format!("one CA: {}", cas["race"]));
}

/// The admin kubeconfig with its server replaced by the proxy.
fn proxied_kubeconfig(dir: &Path) -> (PathBuf, PathBuf, String) {
    let path = PathBuf::from(
        std::env::var("KUBECONFIG").expect("KUBECONFIG (eval \"$(e2e/cluster env)\")"),
    );
    let mut config = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
    let mut target = String::new();
    for cluster in &mut config.clusters {
        if let Some(c) = cluster.cluster.as_mut()
            && let Some(server) = c.server.as_mut()
        {
            let authority = server
                .trim_start_matches("https://")
                .split('/')
                .next()
                .unwrap_or_default();
            target = authority.to_owned();
            *server = "https://127.0.0.1:PROXY_PORT".into();
        }
    }
    assert!(!target.is_empty(), "no server in {}", path.display());
    let proxied = dir.join("proxied.kubeconfig");
    fs::write(&proxied, serde_json::to_string(&config).expect("json")).expect("write kubeconfig");
    (path, proxied, target)
}

async fn scenario(client: Client, ns: String, dir: PathBuf) {
    let bin = env!("CARGO_BIN_EXE_berth-operator");
    let (admin_kubeconfig, proxied, target) = proxied_kubeconfig(&dir);
    let proxy = Proxy::start(target).await;
    let config = fs::read_to_string(&proxied).expect("kubeconfig");
    fs::write(
        &proxied,
        config.replace("PROXY_PORT", &proxy.port.to_string()),
    )
    .expect("kubeconfig");

    let operator = {
        let (ns, proxied) = (ns.clone(), proxied.clone());
        Supervised::start("operator", dir.join("operator.log"), move || {
            let mut c = Command::new(bin);
            c.args(["run", "--listen", "127.0.0.1:0", "--lease-namespace", &ns])
                .args(["--identity", "berth-faults", "--node-agent-namespace", &ns])
                .args(["--registry-image", "berth.dev/berth-registry:faults"])
                .env("KUBECONFIG", &proxied)
                .env("RUST_LOG", "info,kube=warn");
            c
        })
    };
    let registries: Api<Registry> = Api::namespaced(client.clone(), &ns);
    let history = Arc::new(Mutex::new(CaHistory::default()));
    let poller = watch_cas(client.clone(), ns.clone(), history.clone());
    let mut rng = Rng::new();
    let mut version: BTreeMap<String, u32> = BTreeMap::new();
    let mut wanted: BTreeSet<String> = BTreeSet::new();

    // 1. Killed in a loop while five Registries are created and edited.
    log("phase 1: SIGKILL the operator 10 times while 5 Registries are created and edited");
    let names: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
    let started = Instant::now();
    let mut kills = 0;
    let mut step = 0;
    while kills < 10 {
        tokio::time::sleep(rng.between(Duration::from_millis(200), Duration::from_millis(2000)))
            .await;
        operator.kill();
        kills += 1;
        // Interleave the API traffic with the kills: a create or an edit
        // between every two kills.
        let name = &names[step % names.len()];
        let v = version.entry(name.clone()).or_insert(0);
        *v += 1;
        put_registry(&registries, &ns, name, *v).await;
        wanted.insert(name.clone());
        step += 1;
    }
    log(format!(
        "10 kills in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    let cas = eventually("converged after the kills", Duration::from_secs(90), || {
        converged(&client, &ns, &wanted)
    })
    .await;
    one_ca_each(&history, &cas);

    // 3 (first, it is short). Watch streams cut; then a 5 s outage with an
    // edit made during it.
    log("phase 3: cut every watch stream, then an edit during a 5 s outage");
    let exits_before = operator.exits();
    proxy.cut();
    let v = version.entry("r1".into()).or_default();
    *v += 1;
    put_registry(&registries, &ns, "r1", *v).await;
    eventually(
        "an edit after a watch cut reconciled",
        Duration::from_secs(30),
        || converged(&client, &ns, &wanted),
    )
    .await;
    proxy.down();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v = version.entry("r2".into()).or_default();
    *v += 1;
    put_registry(&registries, &ns, "r2", *v).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.up();
    eventually(
        "an edit made during a 5 s outage reconciled",
        Duration::from_secs(30),
        || converged(&client, &ns, &wanted),
    )
    .await;
    assert_eq!(
        operator.exits(),
        exits_before,
        "the operator exited on a short outage"
    );

    // 2. The apiserver unreachable for a minute while Registries change.
    let outage: u64 = std::env::var("BERTH_FAULTS_OUTAGE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    log(format!(
        "phase 2: the apiserver unreachable for {outage}s while Registries are created, edited, deleted"
    ));
    let exits_before = operator.exits();
    proxy.down();
    let outage_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in ["r0", "r3"] {
        let v = version.entry(name.into()).or_default();
        *v += 1;
        put_registry(&registries, &ns, name, *v).await;
    }
    put_registry(&registries, &ns, "r5", 1).await;
    version.insert("r5".into(), 1);
    wanted.insert("r5".into());
    registries
        .delete("r4", &DeleteParams::background())
        .await
        .expect("delete r4");
    wanted.remove("r4");
    tokio::time::sleep(Duration::from_secs(outage).saturating_sub(outage_started.elapsed())).await;
    proxy.up();
    log("the apiserver is reachable again");
    let after = eventually(
        "converged after the outage",
        Duration::from_secs(120),
        || converged(&client, &ns, &wanted),
    )
    .await;
    // It lost its leader Lease 15 s into the outage: it stops reconciling
    // and waits to lead again, in the same process (a pod that exited
    // would crash-loop, and come back minutes after the apiserver did).
    assert_eq!(
        operator.exits(),
        exits_before,
        "the operator exited during the outage"
    );
    for (name, ca) in &cas {
        if let Some(now) = after.get(name) {
            assert_eq!(now, ca, "{name}: the CA changed through the outage");
        }
    }
    one_ca_each(&history, &after);

    // 4. The node agent killed while it writes certs.d.
    log("phase 4: SIGKILL the node agent 20 times while host names change");
    let root = dir.join("root");
    fs::create_dir_all(&root).expect("root");
    let layout =
        Layout::new("/etc/containerd/certs.d", "/etc/docker/certs.d", &root).expect("layout");
    // The cluster's node, so the agent reads real labels; it reports into
    // this test's namespace, apart from any agent the cluster runs.
    let node = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list nodes")
        .items
        .first()
        .map(|n| n.name_any())
        .expect("a node");
    let agent = {
        let (ns, root, kubeconfig) = (ns.clone(), root.clone(), admin_kubeconfig.clone());
        Supervised::start("node-agent", dir.join("node-agent.log"), move || {
            let mut c = Command::new(bin);
            c.args(["node-agent", "--node-name", &node])
                .arg("--host-root")
                .arg(&root)
                .args(["--report-namespace", &ns, "--resync-seconds", "1"])
                .env("KUBECONFIG", &kubeconfig)
                .env("RUST_LOG", "info,kube=warn");
            c
        })
    };
    let torn = Arc::new(Mutex::new(Vec::<String>::new()));
    let reading = Arc::new(AtomicBool::new(true));
    let read = Arc::new(AtomicU32::new(0));
    let reader = {
        let (torn, reading, read, layout, ns) = (
            torn.clone(),
            reading.clone(),
            read.clone(),
            layout.clone(),
            ns.clone(),
        );
        std::thread::spawn(move || {
            while reading.load(Ordering::SeqCst) {
                for problem in torn_files(&layout, &ns, &read) {
                    torn.lock().unwrap_or_else(|e| e.into_inner()).push(problem);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    for round in 0..20 {
        tokio::time::sleep(rng.between(Duration::from_millis(100), Duration::from_millis(800)))
            .await;
        agent.kill();
        if round % 4 == 0 {
            // New host names: the agent removes directories and writes new ones.
            for name in ["r0", "r1", "r2"] {
                let v = version.entry(name.into()).or_default();
                *v += 1;
                put_registry(&registries, &ns, name, *v).await;
            }
        }
    }
    eventually(
        "converged after the node agent kills",
        Duration::from_secs(60),
        || converged(&client, &ns, &wanted),
    )
    .await;
    eventually(
        "the node's files converged",
        Duration::from_secs(60),
        || async {
            let mine: Vec<Registry> = registries
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items;
            node_converged(&layout, &ns, &mine)
        },
    )
    .await;
    reading.store(false, Ordering::SeqCst);
    let _ = reader.join();
    let torn = torn.lock().unwrap_or_else(|e| e.into_inner()).clone();
    log(format!(
        "{} reads of ca.crt and hosts.toml while the agent was killed",
        read.load(Ordering::Relaxed)
    ));
    assert!(torn.is_empty(), "files seen partial: {torn:?}");
    log(format!(
        "the node agent exited by itself {} times",
        agent.exits()
    ));
    assert_eq!(agent.exits(), 0, "the node agent exited by itself");

    drop(agent);
    drop(operator);
    poller.abort();
}

/// Files of this test's hosts that containerd or docker would read, that
/// are not whole: a ca.crt that is not a complete PEM bundle, a hosts.toml
/// that does not end with its `ca` line.
fn torn_files(layout: &Layout, ns: &str, read: &AtomicU32) -> Vec<String> {
    let mut problems = Vec::new();
    for base in &layout.bases {
        let Ok(entries) = fs::read_dir(&base.local_dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let dir = entry.file_name().to_string_lossy().into_owned();
            if !dir.contains(ns) {
                continue;
            }
            let path = entry.path();
            let ca = fs::read_to_string(path.join("ca.crt"));
            let toml = fs::read_to_string(path.join("hosts.toml"));
            read.fetch_add(
                u32::from(ca.is_ok()) + u32::from(toml.is_ok()),
                Ordering::Relaxed,
            );
            if let Ok(pem) = ca
                && (pki::parse_bundle(&pem, "ca.crt").is_err()
                    || !pem.trim_end().ends_with("-----END CERTIFICATE-----"))
            {
                problems.push(format!(
                    "{}/ca.crt: {} bytes, not a whole bundle",
                    path.display(),
                    pem.len()
                ));
            }
            if let Ok(toml) = toml {
                let last = toml.lines().last().unwrap_or_default();
                if !(toml.starts_with("# Written by")
                    && toml.ends_with("\"\n")
                    && last.starts_with("  ca = \""))
                {
                    problems.push(format!(
                        "{}/hosts.toml: {} bytes, cut short",
                        path.display(),
                        toml.len()
                    ));
                }
            }
        }
    }
    problems
}

/// The node holds exactly what the agent plans for this test's
/// Registries, nothing of their old host names, and no temp file.
fn node_converged(layout: &Layout, ns: &str, registries: &[Registry]) -> Result<(), String> {
    let plan = desired::plan(registries, None, layout);
    let mut planned: BTreeSet<(String, String)> = BTreeSet::new();
    for d in &plan.dirs {
        let base = layout
            .bases
            .iter()
            .find(|b| b.runtime == d.runtime)
            .ok_or("no base")?;
        for (file, contents) in &d.files {
            let path = base.local_dir.join(&d.dir).join(file);
            let on_disk =
                fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if &on_disk != contents {
                return Err(format!("{} is not as planned", path.display()));
            }
        }
        planned.insert((base.local_dir.display().to_string(), d.dir.clone()));
    }
    if plan.dirs.is_empty() {
        return Err("nothing planned yet".into());
    }
    for base in &layout.bases {
        let Ok(entries) = fs::read_dir(&base.local_dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let dir = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            for file in fs::read_dir(&path).into_iter().flatten().flatten() {
                let file = file.file_name().to_string_lossy().into_owned();
                if file.contains("berth-tmp") {
                    return Err(format!("{}/{file} is left over", path.display()));
                }
            }
            if dir.contains(ns)
                && !planned.contains(&(base.local_dir.display().to_string(), dir.clone()))
            {
                return Err(format!("{} is left from an old host name", path.display()));
            }
        }
    }
    Ok(())
}
