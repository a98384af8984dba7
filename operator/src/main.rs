//! `berth-operator`: `run` the controller, run the `node-agent`, print
//! the `crd`, or answer the kubelet as its `credential-provider` plugin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use berth_operator::controller::{self, Config, Context, NodeAgentRef};
use berth_operator::crd::Registry;
use berth_operator::credential_provider;
use berth_operator::http::{self, Health};
use berth_operator::leader::{self, LeaseConfig};
use berth_operator::node_agent::credential_plugin::{HostPath, PluginInstall};
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
    /// The kubelet's image credential provider plugin (installed on nodes as
    /// `berth-credential-provider`): reads a CredentialProviderRequest on
    /// stdin and answers the pod's service-account token as the password
    /// for the image's registry. Set BERTH_CREDENTIAL_PROVIDER_LOG to a file
    /// to log each request (token hash and claims only).
    CredentialProvider,
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
    /// The kubelet's --image-credential-provider-bin-dir on the host: copy
    /// this executable there as berth-credential-provider. Empty: do not
    /// install the credential provider.
    #[arg(long, env = "BERTH_CREDENTIAL_PROVIDER_BIN_DIR", default_value = "")]
    credential_provider_bin_dir: String,
    /// Also write the kubelet's CredentialProviderConfig (JSON) to this host
    /// path. Empty: the cluster admin writes it.
    #[arg(long, env = "BERTH_CREDENTIAL_PROVIDER_CONFIG", default_value = "")]
    credential_provider_config: String,
    /// The config's matchImages (comma-separated kubelet globs). Empty:
    /// `*.*.svc.<cluster domain>`.
    #[arg(
        long,
        env = "BERTH_CREDENTIAL_PROVIDER_MATCH_IMAGES",
        value_delimiter = ',',
        default_value = ""
    )]
    credential_provider_match_images: Vec<String>,
    /// The cluster's DNS domain, for the default matchImages.
    #[arg(long, env = "BERTH_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The plugin runs once per pull, synchronously: no runtime, no logger
    // (stdout is the kubelet's protocol; errors go to stderr).
    if let Command::CredentialProvider = cli.command {
        return credential_provider_plugin();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async_main(cli))
}

fn credential_provider_plugin() -> anyhow::Result<()> {
    let log = std::env::var_os(credential_provider::LOG_ENV)
        .filter(|path| !path.is_empty())
        .map(PathBuf::from);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    credential_provider::run(
        std::io::stdin().lock(),
        std::io::stdout().lock(),
        log.as_deref(),
        now,
    )
    .context(credential_provider::PLUGIN_NAME)
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CredentialProvider => credential_provider_plugin(),
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
    )?;
    anyhow::ensure!(
        !layout.bases.is_empty(),
        "both --containerd-certs-dir and --docker-certs-dir are empty: nothing to do"
    );
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let credential_plugin = credential_plugin_install(&args)?;
    let config = AgentConfig {
        node_name: args.node_name,
        layout,
        report_namespace: Some(args.report_namespace).filter(|n| !n.is_empty()),
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        credential_plugin,
    };
    Ok(node_agent::run(client, config, shutdown_signal()).await?)
}

/// What the agent's credential-provider flags ask it to install, if anything.
fn credential_plugin_install(args: &NodeAgentArgs) -> anyhow::Result<Option<PluginInstall>> {
    if args.credential_provider_bin_dir.is_empty() {
        return Ok(None);
    }
    let source = std::env::current_exe()
        .context("finding this executable to install it as the credential provider")?;
    let bin_dir = HostPath::new(
        std::path::Path::new(&args.credential_provider_bin_dir),
        &args.host_root,
        "--credential-provider-bin-dir",
    )?;
    let config = if args.credential_provider_config.is_empty() {
        None
    } else {
        let path = HostPath::new(
            std::path::Path::new(&args.credential_provider_config),
            &args.host_root,
            "--credential-provider-config",
        )?;
        let mut match_images: Vec<String> = args
            .credential_provider_match_images
            .iter()
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        if match_images.is_empty() {
            match_images = credential_provider::default_match_images(&args.cluster_domain);
        }
        Some((
            path,
            credential_provider::KubeletConfig {
                match_images,
                log_path: None,
            },
        ))
    };
    Ok(Some(PluginInstall {
        source,
        bin_dir,
        config,
    }))
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

    let client = berth_operator::api_requests::counted_client(health.metrics.clone())
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
            // The kubelet sets this in every container.
            in_cluster: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
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
