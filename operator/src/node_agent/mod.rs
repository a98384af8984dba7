//! The node agent (`berth-operator node-agent`, a DaemonSet): makes this
//! node's container runtimes trust every Registry that selects it, and
//! reports what it installed.
//!
//! One loop: watch Registries (a reflector, so a pass reads memory), and on
//! any change, or every `resync` to repair drift on the host, run a pass:
//! read this Node's labels, plan ([`desired`]), write ([`writer`]), and
//! publish the report ([`report`]) when it changed. The agent needs to read
//! Registries and its own Node, and to write its own Lease; everything it
//! writes on the node comes from `status.nodeTrust`, which the operator
//! publishes, so it reads no Secrets, ConfigMaps or Services.
//!
//! When the chart enables it, each pass also keeps berth's image credential
//! provider installed in the kubelet's plugin directory
//! ([`credential_plugin`]).

pub mod credential_plugin;
pub mod desired;
pub mod hosts_toml;
pub mod layout;
pub mod marker;
pub mod report;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};

use crate::crd::Registry;
use credential_plugin::{Installer, PluginInstall};
use layout::Layout;
use report::NodeReport;

/// After a Registry event, wait this long for more before a pass, so a
/// burst of changes makes one pass.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// A pass this close to the heartbeat renews the Lease, so a pass that runs
/// a moment early does not skip a whole heartbeat.
const HEARTBEAT_SLACK: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This node's name (the downward API's `spec.nodeName`).
    pub node_name: String,
    pub layout: Layout,
    /// Where the report Lease goes; `None`: no report.
    pub report_namespace: Option<String>,
    /// A pass at least this often, to put back files removed on the host.
    pub resync: Duration,
    /// Install berth's image credential provider on this node; `None`: off.
    pub credential_plugin: Option<PluginInstall>,
}

/// What this node knows about itself.
#[derive(Clone, Debug, Default)]
struct NodeFacts {
    labels: Option<BTreeMap<String, String>>,
    uid: Option<String>,
}

/// State kept between passes, so logs and the report change only when
/// something did.
#[derive(Default)]
struct Memory {
    /// The report last written, with the Node uid its Lease is owned by.
    reported: Option<(NodeReport, Option<String>)>,
    /// When the report Lease was last written: it is renewed every
    /// [`report::HEARTBEAT`] even when nothing changed.
    reported_at: Option<std::time::Instant>,
    problems: BTreeSet<String>,
    /// Shared with the blocking task that copies files.
    installer: Option<Arc<std::sync::Mutex<Installer>>>,
}

/// Run until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> crate::Result<()> {
    let (reader, writer) = reflector::store::<Registry>();
    let changed = Arc::new(tokio::sync::Notify::new());
    let stream = reflector(
        writer,
        watcher(
            Api::<Registry>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    let watch = {
        let changed = changed.clone();
        tokio::spawn(stream.for_each(move |event| {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watching Registries");
            }
            changed.notify_one();
            std::future::ready(())
        }))
    };

    // The credential provider does not depend on any Registry: install it
    // before the first list, which waits for the CRD.
    let mut memory = Memory {
        installer: config
            .credential_plugin
            .clone()
            .map(|install| Arc::new(std::sync::Mutex::new(Installer::new(install)))),
        ..Memory::default()
    };
    if let Some(install) = &config.credential_plugin {
        tracing::info!(
            bin_dir = %install.bin_dir.host.display(),
            config = install.config.as_ref().map(|(path, _)| path.host.display().to_string()).unwrap_or_default(),
            "installing the image credential provider"
        );
        if let Some(problem) = install_plugin(memory.installer.clone()).await {
            tracing::error!(problem = %problem, "node trust");
            memory.problems.insert(problem);
        }
    }

    tokio::pin!(shutdown);
    tokio::select! {
        ready = reader.wait_until_ready() => ready.map_err(|_| crate::Error::WatchStopped("Registries"))?,
        () = &mut shutdown => { watch.abort(); return Ok(()); }
    }
    tracing::info!(
        node = %config.node_name,
        bases = ?config.layout.bases.iter().map(|b| (b.runtime.as_str(), b.host_dir.display().to_string())).collect::<Vec<_>>(),
        "node agent started"
    );

    loop {
        let registries: Vec<Registry> = reader.state().iter().map(|r| (**r).clone()).collect();
        pass(&client, &config, registries, &mut memory).await;
        tokio::select! {
            () = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
            () = tokio::time::sleep(config.resync.min(report::HEARTBEAT)) => {}
            () = &mut shutdown => break,
        }
    }
    watch.abort();
    Ok(())
}

async fn node_facts(client: &Client, name: &str) -> NodeFacts {
    match Api::<Node>::all(client.clone()).get_opt(name).await {
        Ok(Some(node)) => NodeFacts {
            labels: Some(node.labels().clone()),
            uid: node.uid(),
        },
        Ok(None) => {
            tracing::warn!(
                node = name,
                "this node does not exist in the API (is NODE_NAME right?)"
            );
            NodeFacts::default()
        }
        Err(e) => {
            tracing::warn!(node = name, error = %e, "reading this node's labels failed; Registries with a nodeSelector wait");
            NodeFacts::default()
        }
    }
}

/// Keep the credential provider installed; a problem to report, if any.
async fn install_plugin(installer: Option<Arc<std::sync::Mutex<Installer>>>) -> Option<String> {
    let installer = installer?;
    let done = tokio::task::spawn_blocking(move || {
        let mut installer = installer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = installer.sync();
        (installer.install().bin_dir.host.clone(), result)
    })
    .await;
    match done {
        Ok((_, Ok(installed))) => {
            if installed.binary_written {
                tracing::info!(
                    plugin = credential_plugin::PLUGIN_NAME,
                    "installed the image credential provider"
                );
            }
            if installed.config_written {
                tracing::info!(
                    "wrote the kubelet's credential provider config (the kubelet reads it when it starts)"
                );
            }
            None
        }
        Ok((bin_dir, Err(e))) => Some(format!("credential provider in {}: {e}", bin_dir.display())),
        Err(e) => Some(format!("credential provider: the installer stopped: {e}")),
    }
}

async fn pass(
    client: &Client,
    config: &AgentConfig,
    registries: Vec<Registry>,
    memory: &mut Memory,
) {
    let facts = node_facts(client, &config.node_name).await;
    let plan = desired::plan(&registries, facts.labels.as_ref(), &config.layout);
    let layout = config.layout.clone();
    let node = config.node_name.clone();
    let done = tokio::task::spawn_blocking(move || {
        let outcome = writer::sync(&layout, &plan);
        let report = NodeReport::build(&node, &plan, &outcome, &layout);
        (outcome, report)
    })
    .await;
    let (outcome, report) = match done {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(error = %e, "the writer stopped unexpectedly");
            return;
        }
    };

    for removed in &outcome.removed {
        tracing::info!(runtime = removed.runtime.as_str(), host = %removed.dir, registry = %removed.owner.key(), "removed trust files");
    }
    let mut problems = BTreeSet::new();
    for (key, r) in &report.registries {
        if let Some(error) = &r.error {
            problems.insert(format!("{key}: {error}"));
        }
    }
    problems.extend(outcome.warnings.iter().cloned());
    if let Some(problem) = install_plugin(memory.installer.clone()).await {
        problems.insert(problem);
    }
    for problem in problems.difference(&memory.problems) {
        tracing::error!(problem = %problem, "node trust");
    }
    memory.problems = problems;

    let state = (report, facts.uid.clone());
    let unchanged = memory.reported.as_ref() == Some(&state);
    let heartbeat_due = memory
        .reported_at
        .is_none_or(|at| at.elapsed() >= report::HEARTBEAT.saturating_sub(HEARTBEAT_SLACK));
    if unchanged && !heartbeat_due {
        return;
    }
    let (report, _) = &state;
    for (key, r) in report.registries.iter().filter(|_| !unchanged) {
        tracing::info!(registry = %key, selected = r.selected, fingerprints = ?r.fingerprints, error = r.error.as_deref().unwrap_or(""), "trust installed");
    }
    let Some(namespace) = &config.report_namespace else {
        memory.reported = Some(state);
        return;
    };
    let lease = report::lease(
        namespace,
        facts.uid.as_deref(),
        report,
        jiff::Timestamp::now(),
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(report::FIELD_MANAGER).force();
    match leases
        .patch(
            &report::lease_name(&report.node),
            &params,
            &Patch::Apply(&lease),
        )
        .await
    {
        Ok(_) => {
            memory.reported = Some(state);
            memory.reported_at = Some(std::time::Instant::now());
        }
        Err(e) => {
            tracing::warn!(error = %e, namespace = %namespace, "writing the report Lease failed; retrying on the next pass")
        }
    }
}
