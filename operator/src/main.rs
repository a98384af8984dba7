//! `berth-operator`: `run` the controller, or print the `crd`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use berth_operator::controller::{self, Config, Context};
use berth_operator::crd::Registry;
use berth_operator::http::{self, Health};
use berth_operator::leader::{self, LeaseConfig};
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
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .json()
        .init();

    let health = Health::default();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let server = tokio::spawn(axum::serve(listener, http::router(health.clone())).into_future());

    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    Api::<Registry>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .context("listing Registries: is the CRD installed (helm install berth charts/berth)?")?;
    health.ready.store(true, Ordering::Relaxed);

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop_tx.send_replace(true);
    });
    let stopped = {
        let mut rx = stop_rx.clone();
        move || async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let ctx = Arc::new(Context::new(
        client.clone(),
        Config {
            cluster_domain: args.cluster_domain,
            default_image: args.registry_image,
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
    let (leading_tx, mut leading_rx) = watch::channel(false);
    let mut election = tokio::spawn(leader::lead(leases.clone(), lease.clone(), leading_tx));

    tracing::info!(lease = %lease.name, identity = %lease.identity, "waiting for the leader Lease");
    let mut stop = stop_rx.clone();
    tokio::select! {
        _ = leading_rx.wait_for(|leading| *leading) => {}
        _ = stop.wait_for(|stop| *stop) => { election.abort(); return Ok(()); }
        result = &mut election => return Err(anyhow::anyhow!("leader election ended: {result:?}")),
    }
    health.metrics.set_leader(true);

    let outcome = tokio::select! {
        () = controller::run(ctx, stopped()) => Ok(()),
        result = &mut election => match result {
            Ok(Err(lost)) => Err(anyhow::Error::new(lost)),
            other => Err(anyhow::anyhow!("leader election ended: {other:?}")),
        },
    };
    health.metrics.set_leader(false);
    election.abort();
    if let Err(e) = leader::release(&leases, &lease).await {
        tracing::warn!(error = %e, "releasing the leader Lease failed");
    }
    server.abort();
    outcome
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
