//! `berth-operator`: `run` the controller, run the `node-agent`, or print
//! the `crd`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use berth_operator::controller::{self, Config, Context, NodeAgentRef};
use berth_operator::crd::Registry;
use berth_operator::http::{self, Health};
use berth_operator::leader::{self, LeaseConfig};
use berth_operator::node_agent::{self, AgentConfig, layout::Layout};
use clap::{Args, Parser, Subcommand};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, ListParams};
use tokio::sync::watch;

/// The berth operator: deploys private container registries every node trusts.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the Registry CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller.
    Run(RunArgs),
    /// Run the node agent (one per node, as a DaemonSet): write each
    /// Registry's CA and host mapping into this node's containerd and docker
    /// trust directories, and report what is installed.
    NodeAgent(NodeAgentArgs),
}

#[derive(Args)]
struct NodeAgentArgs {
    /// This node's name (the chart sets it from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// containerd's `config_path` on the host (k3s:
    /// /var/lib/rancher/k3s/agent/etc/containerd/certs.d). Empty: skip containerd.
    #[arg(
        long,
        env = "BERTH_CONTAINERD_CERTS_DIR",
        default_value = "/etc/containerd/certs.d"
    )]
    containerd_certs_dir: String,
    /// docker's certs.d on the host. Empty: skip docker.
    #[arg(
        long,
        env = "BERTH_DOCKER_CERTS_DIR",
        default_value = "/etc/docker/certs.d"
    )]
    docker_certs_dir: String,
    /// Where the host's filesystem is seen from here: files are written to
    /// <host-root>/<certs dir>, while hosts.toml names the host's own path.
    #[arg(long, env = "BERTH_HOST_ROOT", default_value = "/")]
    host_root: PathBuf,
    /// Namespace of the per-node report Lease. Empty: do not report.
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    report_namespace: String,
    /// Seconds between passes when nothing changes (repairs files removed
    /// on the host).
    #[arg(long, env = "BERTH_RESYNC_SECONDS", default_value_t = 60)]
    resync_seconds: u64,
}

#[derive(Args)]
struct RunArgs {
    /// The cluster's DNS domain, used in the Service names certificates carry.
    #[arg(long, env = "BERTH_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// The registry image for Registries that name none.
    #[arg(long, env = "BERTH_REGISTRY_IMAGE", default_value_t = berth_operator::desired::default_image())]
    registry_image: String,
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(long, env = "BERTH_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Take a Lease before reconciling, so replicas never act at once.
    #[arg(long, env = "BERTH_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "berth-system")]
    lease_namespace: String,
    #[arg(long, env = "BERTH_LEASE_NAME", default_value = "berth-operator")]
    lease_name: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Read the node agents' report Leases (in --node-agent-namespace) to
    /// count trusting nodes and pace CA rotations.
    #[arg(long, env = "BERTH_NODE_REPORTS", default_value_t = true, action = clap::ArgAction::Set)]
    node_reports: bool,
    /// Namespace of the node agents' report Leases and DaemonSet. Unset:
    /// the --lease-namespace.
    #[arg(long, env = "BERTH_NODE_AGENT_NAMESPACE")]
    node_agent_namespace: Option<String>,
    /// The node agent DaemonSet, to know how many nodes should report.
    /// Unset: count the reports only.
    #[arg(long, env = "BERTH_NODE_AGENT_DAEMONSET")]
    node_agent_daemonset: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!(
                "{}",
                berth_operator::crdgen::crd_yaml().context("rendering the CRD")?
            );
            Ok(())
        }
        Command::Run(args) => run(args).await,
        Command::NodeAgent(args) => node_agent(args).await,
    }
}

fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .json()
        .init();
}

async fn node_agent(args: NodeAgentArgs) -> anyhow::Result<()> {
    init_logs();
    let layout = Layout::new(
        &args.containerd_certs_dir,
        &args.docker_certs_dir,
        &args.host_root,
    )
    .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        !layout.bases.is_empty(),
        "both --containerd-certs-dir and --docker-certs-dir are empty: nothing to do"
    );
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let config = AgentConfig {
        node_name: args.node_name,
        layout,
        report_namespace: Some(args.report_namespace).filter(|n| !n.is_empty()),
        resync: Duration::from_secs(args.resync_seconds.max(1)),
    };
    node_agent::run(client, config, shutdown_signal()).await
}

/// How long to wait before trying the apiserver again at start-up.
const RETRY: Duration = Duration::from_secs(5);

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logs();

    let health = Health::default();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let server = tokio::spawn(axum::serve(listener, http::router(health.clone())).into_future());

    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop_tx.send_replace(true);
    });

    // An apiserver that is away at start-up is waited for, not a reason to
    // exit: restarts would put the pod into CrashLoopBackOff and delay the
    // return by minutes once the apiserver is back.
    let registries = Api::<Registry>::all(client.clone());
    while let Err(e) = registries.list(&ListParams::default().limit(1)).await {
        tracing::warn!(error = %e, retry_in = ?RETRY, "listing Registries failed: is the apiserver reachable and the CRD installed (kubectl apply --server-side -f crds/registries.berth.dev.yaml)?");
        let mut stop = stop_rx.clone();
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            _ = stop.wait_for(|stop| *stop) => { server.abort(); return Ok(()); }
        }
    }
    health.ready.store(true, Ordering::Relaxed);
    let stopped = {
        let rx = stop_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        }
    };

    let ctx = Arc::new(Context::new(
        client.clone(),
        Config {
            cluster_domain: args.cluster_domain,
            default_image: args.registry_image,
            node_agent: args.node_reports.then(|| NodeAgentRef {
                namespace: args
                    .node_agent_namespace
                    .clone()
                    .unwrap_or_else(|| args.lease_namespace.clone()),
                daemonset: args.node_agent_daemonset.clone().filter(|n| !n.is_empty()),
            }),
        },
        health.metrics.clone(),
    ));

    if !args.leader_elect {
        health.metrics.set_leader(true);
        controller::run(ctx, stopped()).await;
        server.abort();
        return Ok(());
    }

    let identity = match args.identity {
        Some(identity) => identity,
        None => std::env::var("HOSTNAME")
            .context("no --identity, POD_NAME or HOSTNAME for the leader Lease")?,
    };
    let lease = LeaseConfig {
        namespace: args.lease_namespace,
        name: args.lease_name,
        identity,
        lease_duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(4),
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), &lease.namespace);
    // Losing the Lease (the apiserver unreachable for longer than the Lease
    // lasts) stops reconciling at once and waits to lead again, in the same
    // process: exiting would make the pod crash-loop through an outage.
    loop {
        let (leading_tx, mut leading_rx) = watch::channel(false);
        let mut election = tokio::spawn(leader::lead(leases.clone(), lease.clone(), leading_tx));
        tracing::info!(lease = %lease.name, identity = %lease.identity, "waiting for the leader Lease");
        let mut stop = stop_rx.clone();
        tokio::select! {
            _ = leading_rx.wait_for(|leading| *leading) => {}
            _ = stop.wait_for(|stop| *stop) => { election.abort(); server.abort(); return Ok(()); }
            result = &mut election => return Err(anyhow::anyhow!("leader election ended: {result:?}")),
        }
        health.metrics.set_leader(true);

        let lost = tokio::select! {
            () = controller::run(ctx.clone(), stopped()) => None,
            result = &mut election => Some(result),
        };
        health.metrics.set_leader(false);
        election.abort();
        match lost {
            Some(Ok(Err(lost))) => {
                tracing::warn!(error = %lost, "stopped reconciling; waiting to lead again");
            }
            Some(other) => {
                server.abort();
                return Err(anyhow::anyhow!("leader election ended: {other:?}"));
            }
            None => {
                if let Err(e) = leader::release(&leases, &lease).await {
                    tracing::warn!(error = %e, "releasing the leader Lease failed");
                }
                server.abort();
                return Ok(());
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
