//! `berth-registry serve`: the command line. Every flag can also come from
//! an environment variable, which is how the operator configures it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

// musl's own allocator serialises threads; jemalloc also returns memory
// freed on another thread (a chunk read on a blocking thread, sent from a
// worker) where mimalloc held on to it.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "berth-registry",
    version,
    about = "An OCI Distribution Spec v1.1 container registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the registry API.
    Serve(Box<Serve>),
    /// Write a new token key pair into a directory (signing.key, verify.pem),
    /// as the operator keeps them: for running with --auth-config by hand.
    Keygen {
        /// The keys directory (created if missing); existing files are kept.
        dir: PathBuf,
    },
    /// Garbage-collect a data directory once: unreferenced blobs and untagged
    /// manifests older than --grace are moved to a quarantine, and what an
    /// earlier run quarantined at least --quarantine ago is deleted. Safe
    /// while registries serve the same data.
    Gc(GcArgs),
    /// Print an htpasswd line (bcrypt) for USER, the password read from stdin.
    Htpasswd {
        user: String,
        /// bcrypt cost (4..=31).
        #[arg(long, default_value_t = 10)]
        cost: u32,
    },
}

/// `host` or `host:port`, as an image reference starts.
fn node_endpoint(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a host or host:port (e.g. registry.example:5000)"
        ))
    }
}

fn duration(s: &str) -> Result<std::time::Duration, String> {
    berth_registry::storage::gc::parse_duration(s)
}

#[derive(clap::Args)]
struct GcArgs {
    /// The registry's data directory.
    #[arg(long, env = "BERTH_DATA", default_value = "/var/lib/registry")]
    data: PathBuf,
    /// Report what would go (each object, then totals); change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Unreferenced blobs and untagged manifests younger than this stay (e.g. 1h, 30m, 0).
    #[arg(long, default_value = "1h", value_parser = duration)]
    grace: std::time::Duration,
    /// How long quarantined objects wait before they are deleted. 0 deletes
    /// in this run, which is safe only when no registry serves the data.
    #[arg(long, default_value = "10m", value_parser = duration)]
    quarantine: std::time::Duration,
    /// Retention rules (JSON, as the operator writes them): tags they do not
    /// keep are removed before marking (with --dry-run: listed as "untag").
    #[arg(long)]
    retention: Option<PathBuf>,
    /// Images in use (JSON, as the operator writes them): roots, and tags
    /// retention keeps (listed as "keep (in use)").
    #[arg(long)]
    in_use: Option<PathBuf>,
    /// The mirror config (JSON, as for `serve`): its cache caps apply as in
    /// the online GC. Cached images pulled longer ago than `maxAgeSeconds`
    /// go, and over `maxSizeBytes` the least recently pulled go first;
    /// images in use (--in-use) always stay. Not read from the environment:
    /// a gc run in the registry's pod applies the caps only when asked to.
    #[arg(long)]
    mirror_config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct Serve {
    /// Address to listen on, e.g. 0.0.0.0:5000 or 127.0.0.1:5443.
    #[arg(long, env = "BERTH_LISTEN", default_value = "0.0.0.0:5000")]
    listen: SocketAddr,
    /// Directory holding blobs, manifests and upload sessions (created if missing).
    #[arg(long, env = "BERTH_DATA", default_value = "/var/lib/registry")]
    data: PathBuf,
    /// Keep images in this S3 bucket instead of --data. Credentials come
    /// from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a web identity
    /// or container role), as for any AWS client. The bucket must exist.
    #[arg(long, env = "BERTH_S3_BUCKET")]
    s3_bucket: Option<String>,
    /// Key prefix inside the S3 bucket (e.g. "registry"): several
    /// registries can share one bucket.
    #[arg(long, env = "BERTH_S3_PREFIX", requires = "s3_bucket")]
    s3_prefix: Option<String>,
    /// URL of an S3-compatible server (e.g. https://s3.example.com:9000);
    /// AWS when not given. Plain http:// is allowed only when given here.
    #[arg(long, env = "BERTH_S3_ENDPOINT", requires = "s3_bucket")]
    s3_endpoint: Option<String>,
    /// The bucket's region (default: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1).
    #[arg(long, env = "BERTH_S3_REGION", requires = "s3_bucket")]
    s3_region: Option<String>,
    /// Answer blob GETs with a redirect (307) to a URL of the object signed
    /// for this long (e.g. 20m), so the bytes flow from the bucket, not
    /// through the registry. Only when every client can reach the S3
    /// endpoint; off by default.
    #[arg(long, env = "BERTH_S3_REDIRECT", requires = "s3_bucket", value_parser = duration)]
    s3_redirect: Option<std::time::Duration>,
    /// PEM certificate chain; with --tls-key, serve HTTPS. Re-read when the file changes.
    #[arg(long, env = "BERTH_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert. Re-read when the file changes.
    #[arg(long, env = "BERTH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Upload sessions that received no bytes for this many hours are
    /// removed (checked every 10 minutes).
    #[arg(long, env = "BERTH_UPLOAD_MAX_AGE_HOURS", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..))]
    upload_max_age_hours: u64,
    /// Plain-HTTP blob downloads go by sendfile (zero-copy) once this many
    /// others are in flight; fewer are copied, which spreads each one over
    /// two idle cores. Default: the number of CPUs. 0: always sendfile.
    #[arg(long, env = "BERTH_SENDFILE_AFTER")]
    sendfile_after: Option<usize>,
    /// Close an HTTP/1 connection that has not sent a complete request head
    /// within this many seconds of waiting for one: idle keep-alive
    /// connections and slow headers alike.
    #[arg(long, env = "BERTH_HEADER_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_secs: u64,
    /// Cut off a request whose body sends no bytes for this many seconds;
    /// an upload chunk cut off is rolled back whole, so the client resumes.
    #[arg(long, env = "BERTH_BODY_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_secs: u64,
    /// Close a TLS connection whose handshake takes longer than this many seconds.
    #[arg(long, env = "BERTH_TLS_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    tls_handshake_timeout_secs: u64,
    /// Connections open at once; more wait in the listen backlog until one
    /// closes. Lowered at start if the open-file limit cannot hold them.
    #[arg(long, env = "BERTH_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// MiB that uploads in flight may hold in full-size write buffers
    /// (1 MiB on the filesystem, 8 MiB segments on S3); past it, uploads
    /// get small buffers (64 KiB; 256 KiB on S3), so memory stays bounded
    /// however many clients stall mid-upload.
    #[arg(long, env = "BERTH_UPLOAD_BUFFER_MIB", default_value_t = 128, value_parser = clap::value_parser!(u64).range(2..))]
    upload_buffer_mib: u64,
    /// Seconds between write probes of the storage; /readyz fails while
    /// they fail (a full volume) and recovers when they succeed.
    #[arg(long, env = "BERTH_STORAGE_PROBE_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    storage_probe_secs: u64,
    /// The auth config file (JSON, written by the operator): mode Htpasswd or
    /// Kubernetes, the token keys directory, the access policy. Without it
    /// anyone who reaches the registry may push and delete.
    #[arg(long, env = "BERTH_AUTH_CONFIG")]
    auth_config: Option<PathBuf>,
    /// The mirror config file (JSON, written by the operator): upstream
    /// registries served as a pull-through cache under their prefixes
    /// (`docker.io/library/nginx`, or containerd's `?ns=docker.io` form).
    #[arg(long, env = "BERTH_MIRROR_CONFIG")]
    mirror_config: Option<PathBuf>,
    /// The audit trail (who pushed, pulled, deleted, failed to log in or was
    /// refused): "on" keeps it in storage under _audit/ (and logs each
    /// event with target "audit"); "off" keeps nothing. Read it at
    /// GET /berth/v1/audit.
    #[arg(long, env = "BERTH_AUDIT", default_value = "on", value_parser = ["on", "off"])]
    audit: String,
    /// The web UI at /ui/ (repositories, images, referrers, deletion, the
    /// audit trail), same origin, TLS and login as the API: "on" or "off".
    #[arg(long, env = "BERTH_UI", default_value = "on", value_parser = ["on", "off"])]
    ui: String,
    /// The host (and port) pods on this cluster write in `image:` for this
    /// registry (the operator passes its `status.endpoints.node`): the UI's
    /// image pages show a pull reference with it beside the browser's host.
    #[arg(long, env = "BERTH_NODE_ENDPOINT", value_parser = node_endpoint)]
    node_endpoint: Option<String>,
    /// A file holding the key (at least 32 bytes) that signs UI session
    /// cookies, so logins survive restarts and work on every replica that
    /// reads the same file (the operator keeps it in a Secret). Without it,
    /// a random key per process: a restart logs everyone out.
    #[arg(long, env = "BERTH_UI_SESSION_KEY")]
    ui_session_key: Option<PathBuf>,
    /// Days of audit trail kept; older days are removed (checked hourly).
    #[arg(long, env = "BERTH_AUDIT_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    audit_retention_days: u32,
    /// The notification config file (JSON, written by the operator):
    /// webhook endpoints told of manifest pushes, pulls and deletes in
    /// Distribution's envelope format. Without it, no webhooks.
    #[arg(long, env = "BERTH_NOTIFY_CONFIG")]
    notify_config: Option<PathBuf>,
    /// Log format: "text" for people, "json" for log collectors.
    #[arg(long, env = "BERTH_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Run garbage collection this often (e.g. 6h, 30m), while serving;
    /// unset or 0: never. Safe with other registries on the same storage.
    #[arg(long, env = "BERTH_GC_INTERVAL", value_parser = duration)]
    gc_interval: Option<std::time::Duration>,
    /// Unreferenced blobs and untagged manifests younger than this are kept.
    #[arg(long, env = "BERTH_GC_GRACE", default_value = "1h", value_parser = duration)]
    gc_grace: std::time::Duration,
    /// How long GC keeps what it took in quarantine (a manifest push that
    /// still needs it puts it back) before deleting it; must stay far above
    /// the longest manifest PUT.
    #[arg(long, env = "BERTH_GC_QUARANTINE", default_value = "10m", value_parser = duration)]
    gc_quarantine: std::time::Duration,
    /// Retention rules (JSON: {"rules":[{"repositories":"team/*","keepLast":10,
    /// "keepWithinSeconds":604800,"protect":["latest","v*"],"untaggedAfterSeconds":86400}]}),
    /// re-read before every GC run; the tags they do not keep are removed.
    #[arg(long, env = "BERTH_GC_RETENTION")]
    gc_retention: Option<PathBuf>,
    /// Storage quotas per namespace (JSON: {"defaultBytes":10737418240,
    /// "namespaces":{"team-a":53687091200}}): a push that would take a
    /// namespace past its limit is refused with DENIED. Re-read when it
    /// changes. Without it, no namespace is limited.
    #[arg(long, env = "BERTH_QUOTA_CONFIG")]
    quota_config: Option<PathBuf>,
    /// The images running pods use (JSON: {"images":[{"repository":"team/app",
    /// "digest":"sha256:...","tag":"v1"}]}), re-read before every GC run: GC
    /// keeps them and retention never removes their tags. A run is skipped
    /// while the file cannot be read.
    #[arg(long, env = "BERTH_GC_IN_USE")]
    gc_in_use: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Serve(args) => *args,
        Command::Keygen { dir } => return keygen(&dir),
        Command::Gc(args) => return gc_once(&args),
        Command::Htpasswd { user, cost } => return htpasswd_line(&user, cost),
    };
    if let Some(n) = args.sendfile_after {
        berth_registry::zero_copy::set_sendfile_after(n);
    }
    let budget = usize::try_from(args.upload_buffer_mib << 20).unwrap_or(usize::MAX);
    berth_registry::storage::buffer_budget::set(budget);
    init_tracing(&args.log_format);
    // File I/O runs on tokio's blocking pool. Its default cap (512 threads)
    // only adds memory here: the work is short reads and writes, and past a
    // few dozen threads the disk, not the pool, is the limit.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()?;
    runtime.block_on(serve(args))
}

fn init_tracing(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The limits from the flags, the connection cap fitted to the open-file
/// limit (raised to its hard limit first).
fn limits(args: &Serve) -> berth_registry::limits::Limits {
    use berth_registry::limits::{FD_HEADROOM, Limits, raise_fd_limit};
    let secs = std::time::Duration::from_secs;
    let mut max_connections = args.max_connections;
    match raise_fd_limit() {
        Ok(fds) => {
            let fit = fds.saturating_sub(FD_HEADROOM).max(1);
            if max_connections > fit {
                tracing::warn!(
                    max_connections,
                    open_files = fds,
                    lowered_to = fit,
                    "the open-file limit cannot hold --max-connections; raise the hard limit (ulimit -Hn) to allow more"
                );
                max_connections = fit;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    Limits {
        header_timeout: secs(args.header_timeout_secs),
        body_timeout: secs(args.body_timeout_secs),
        tls_handshake_timeout: secs(args.tls_handshake_timeout_secs),
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        ..Limits::default()
    }
}

async fn serve(args: Serve) -> anyhow::Result<()> {
    // Anything written before this instant was written by an earlier process.
    let started = std::time::SystemTime::now();
    let limits = limits(&args);
    // Object storage may be shared with other replicas, whose uploads in
    // flight look just like a crashed process's leftovers: there, only the
    // periodic purge (by idle time) removes them.
    let shared_storage = args.s3_bucket.is_some();
    let (store, storage) = match &args.s3_bucket {
        Some(bucket) => {
            use berth_registry::storage::s3::{ObjectStoreDriver, S3Config};
            let config = S3Config {
                bucket: bucket.clone(),
                prefix: args.s3_prefix.clone().unwrap_or_default(),
                endpoint: args.s3_endpoint.clone(),
                region: args.s3_region.clone(),
                redirect: args.s3_redirect,
            };
            let driver = ObjectStoreDriver::s3(&config)?;
            driver.check(&config).await?;
            let url = format!("s3://{}/{}", config.bucket, config.prefix);
            let store =
                std::sync::Arc::new(berth_registry::Store::new(std::sync::Arc::new(driver)));
            (store, url)
        }
        None => {
            let store = berth_registry::filesystem_store(&args.data)
                .with_context(|| format!("cannot use {} as the data directory; check it exists or can be created, and is writable", args.data.display()))?;
            (store, args.data.display().to_string())
        }
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            berth_registry::tls::server_config(cert.clone(), key.clone())
                .context("cannot serve TLS")?,
        ),
        _ => None,
    };
    let auth = match &args.auth_config {
        Some(path) => {
            let text = std::fs::read(path)
                .with_context(|| format!("cannot read the auth config {}", path.display()))?;
            let config: berth_access::AuthConfig = serde_json::from_slice(&text).with_context(|| {
                format!(
                    "the auth config {} is not a valid berth auth config (JSON: mode, service, keysDir, ...)",
                    path.display()
                )
            })?;
            berth_registry::auth::Auth::start(config)
                .await
                .with_context(|| format!("cannot start auth from {}", path.display()))?
        }
        None => None,
    };
    match &auth {
        Some(a) => tracing::info!(mode = a.mode(), service = a.service(), "auth on"),
        None => tracing::warn!(
            "auth is off: anyone who reaches this registry can push, overwrite and delete images (give --auth-config to require logins)"
        ),
    }
    let mirror = match &args.mirror_config {
        Some(path) => {
            let mirror = berth_registry::mirror::Mirror::from_file(path)
                .context("cannot start the pull-through cache")?;
            tracing::info!(prefixes = ?mirror.prefixes(), "pull-through cache on");
            Some(mirror)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}; is the port free?", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        storage,
        tls = tls.is_some(),
        version = env!("CARGO_PKG_VERSION"),
        "berth-registry serving"
    );
    // Walk the repository tree now, not in the first catalog request.
    let warm = store.clone();
    tokio::spawn(async move {
        if let Err(e) = warm.repositories().await {
            tracing::warn!(error = %e, "could not list repositories at start-up");
        }
    });
    // What a crash left behind goes in the background: start-up does not wait.
    let recover = store.clone();
    tokio::spawn(async move {
        if shared_storage {
            return;
        }
        match recover.reclaim_after_crash(started).await {
            Ok((0, 0)) => {}
            Ok((tmp, sessions)) => tracing::info!(
                temporary_files = tmp,
                upload_sessions = sessions,
                "reclaimed what an earlier process left mid-write"
            ),
            Err(e) => tracing::warn!(error = %e, "could not reclaim what an earlier process left"),
        }
    });
    tokio::spawn(purge_uploads(
        store.clone(),
        std::time::Duration::from_secs(args.upload_max_age_hours * 3600),
        // A one-request push idle this long has been cut off by the body
        // timeout already: nobody can resume it.
        (limits.body_timeout * 2).max(std::time::Duration::from_secs(300)),
    ));
    tokio::spawn(probe_storage(
        store.clone(),
        std::time::Duration::from_secs(args.storage_probe_secs),
    ));
    // A manifest PUT trusts blobs seen a moment ago for a quarter of the
    // quarantine at most (storage/references.rs): every replica, and any
    // `berth-registry gc` run while serving, uses the same --gc-quarantine.
    store.remember_blobs_for(args.gc_quarantine / 4);
    match args.gc_interval.filter(|i| !i.is_zero()) {
        Some(interval) => {
            anyhow::ensure!(
                !args.gc_quarantine.is_zero(),
                "--gc-quarantine must be above zero while serving: a push that checked a blob a moment ago may still need it"
            );
            tracing::info!(
                interval_secs = interval.as_secs(),
                grace_secs = args.gc_grace.as_secs(),
                quarantine_secs = args.gc_quarantine.as_secs(),
                "garbage collection on"
            );
            let sources = berth_registry::storage::gc::GcSources {
                retention: args.gc_retention.clone(),
                in_use: args.gc_in_use.clone(),
                mirror: args.mirror_config.clone(),
            };
            // Re-read before every run; a run is skipped while one cannot be
            // used (the operator may not have written it yet).
            if let Err(e) = sources.load(&Default::default()) {
                tracing::warn!(error = %e, "GC input not usable yet: runs are skipped until it is");
            }
            tokio::spawn(berth_registry::storage::gc::run_periodically(
                store.clone(),
                interval,
                berth_registry::storage::gc::GcOptions {
                    grace: args.gc_grace,
                    quarantine: args.gc_quarantine,
                    ..Default::default()
                },
                sources,
            ));
        }
        None => {
            tracing::info!("garbage collection off (set --gc-interval to reclaim space)");
            if mirror.as_ref().is_some_and(|m| !m.cache_rules().is_empty()) {
                tracing::warn!(
                    "the mirror config caps cached images by age (maxAgeSeconds), but only GC applies the cap: set --gc-interval"
                );
            }
            if mirror
                .as_ref()
                .is_some_and(|m| !m.cache_size_caps().is_empty())
            {
                tracing::warn!(
                    "the mirror config caps the cache's size (maxSizeBytes), but only GC applies the cap: set --gc-interval"
                );
            }
        }
    }
    // Beside the images, through the same driver: on the data volume or in
    // the bucket (every replica writes its own segments).
    let audit = (args.audit == "on").then(|| {
        berth_registry::audit::Audit::start(
            store.driver(),
            berth_registry::audit::Config::new(args.audit_retention_days),
        )
    });
    tracing::info!(
        audit = audit.is_some(),
        retention_days = args.audit_retention_days,
        "audit trail"
    );
    let notify = match &args.notify_config {
        Some(path) => {
            let targets = berth_registry::notify::load(path)?;
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "registry".to_owned());
            let notifier = berth_registry::notify::Notifier::start(
                targets,
                format!("{host}:{}", args.listen.port()),
            );
            let endpoints: Vec<&str> = notifier.endpoints().collect();
            tracing::info!(?endpoints, "notifications on");
            Some(notifier)
        }
        None => None,
    };
    let ui_session_key = match &args.ui_session_key {
        Some(path) => Some(berth_registry::ui::session::Key::from_file(path)?),
        None => None,
    };
    tracing::info!(
        ui = args.ui == "on",
        sessions = if ui_session_key.is_some() {
            "signed with the key file (survive restarts, shared by replicas)"
        } else {
            "signed with a per-process key (a restart logs everyone out)"
        },
        node_endpoint = args.node_endpoint.as_deref().unwrap_or(""),
        "web UI at /ui/"
    );
    let quota = match &args.quota_config {
        Some(path) => {
            let usage = berth_registry::usage::Usage::new(store.clone());
            let quotas = berth_registry::quota::Quotas::from_file(usage, path)
                .context("cannot start with the quota config")?;
            let config = quotas.config();
            tracing::info!(
                default_bytes = config.default_bytes,
                namespaces = config.namespaces.len(),
                "storage quotas per namespace on"
            );
            tokio::spawn(berth_registry::quota::run_periodically(quotas.clone()));
            Some(quotas)
        }
        None => None,
    };
    let features = berth_registry::Features {
        audit,
        ui: args.ui == "on",
        mirror,
        notify,
        ui_session_key,
        node_endpoint: args.node_endpoint.clone(),
        quota,
    };
    tokio::spawn(berth_registry::storage::pulls::flush_periodically(
        store.clone(),
        berth_registry::storage::pulls::FLUSH_EVERY,
    ));
    let app = berth_registry::router_features(store.clone(), auth, &limits, features);
    berth_registry::server::serve_with(listener, app, tls, &limits, shutdown_signal()).await?;
    // Pulls noted since the last periodic flush are not lost on shutdown.
    match store.flush_pulls().await {
        Ok(n) => tracing::info!(repositories = n, "last-pulled times written"),
        Err(e) => tracing::warn!(error = %e, "could not write the last-pulled times at shutdown"),
    }
    Ok(())
}

/// `berth-registry gc`: one run (two with --quarantine 0: the second
/// deletes what the first quarantined), the objects and totals on stdout.
fn gc_once(args: &GcArgs) -> anyhow::Result<()> {
    use berth_registry::storage::gc::{GcOptions, GcReport, log_report};
    use std::io::Write as _;
    init_tracing("text");
    let store = berth_registry::filesystem_store(&args.data).with_context(|| {
        format!(
            "cannot use {} as the data directory; check it exists and is writable",
            args.data.display()
        )
    })?;
    let sources = berth_registry::storage::gc::GcSources {
        retention: args.retention.clone(),
        in_use: args.in_use.clone(),
        mirror: args.mirror_config.clone(),
    };
    if args.mirror_config.is_some() && args.in_use.is_none() {
        tracing::warn!(
            "--mirror-config without --in-use: the cache caps may remove cached images that running pods use; give --in-use (the operator's in-use list) to keep them"
        );
    }
    let opts = sources.load(&GcOptions {
        grace: args.grace,
        quarantine: args.quarantine,
        dry_run: args.dry_run,
        list: true,
        ..GcOptions::default()
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let reports: Vec<GcReport> = runtime
        .block_on(async {
            let first = store.gc(&opts).await?;
            let mut reports = vec![first];
            if opts.quarantine.is_zero() && !opts.dry_run {
                reports.push(store.gc(&opts).await?);
            }
            Ok::<_, berth_registry::storage::StorageError>(reports)
        })
        .context("garbage collection failed; run it again to finish (nothing is lost)")?;
    let mut out = std::io::stdout().lock();
    let verb = if args.dry_run { "would" } else { "did" };
    for r in &reports {
        log_report(r);
        for item in &r.items {
            writeln!(out, "{verb} {item}")?;
        }
    }
    let sum = |f: fn(&GcReport) -> u64| reports.iter().map(f).sum::<u64>();
    writeln!(
        out,
        "{}: {} tags removed by retention ({} kept because in use); {} objects and {} bytes reclaimed ({} manifests, {} blobs deleted); {} manifests and {} blobs ({} bytes) quarantined; {} kept manifests, {} kept blobs; {:.3} s",
        if args.dry_run { "dry run" } else { "gc" },
        sum(|r| r.tags_removed as u64),
        sum(|r| r.tags_kept_in_use as u64),
        sum(|r| r.objects_reclaimed() as u64),
        sum(|r| r.bytes_reclaimed),
        sum(|r| r.manifests_deleted as u64),
        sum(|r| r.blobs_deleted as u64),
        sum(|r| r.manifests_quarantined as u64),
        sum(|r| r.blobs_quarantined as u64),
        sum(|r| r.bytes_quarantined),
        reports.last().map_or(0, |r| r.manifests_kept),
        reports.last().map_or(0, |r| r.blobs_kept),
        reports
            .iter()
            .map(|r| r.duration.as_secs_f64())
            .sum::<f64>(),
    )?;
    Ok(())
}

fn keygen(dir: &std::path::Path) -> anyhow::Result<()> {
    use berth_access::keys::{SIGNING_KEY_FILE, VERIFY_KEYS_FILE};
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (private, public) = berth_access::keys::generate()?;
    for (name, text) in [(SIGNING_KEY_FILE, private), (VERIFY_KEYS_FILE, public)] {
        let path = dir.join(name);
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {} (is it already there?)", path.display()))?;
        f.write_all(text.as_bytes())?;
    }
    Ok(())
}

fn htpasswd_line(user: &str, cost: u32) -> anyhow::Result<()> {
    use std::io::{BufRead as _, Write as _};
    anyhow::ensure!(
        !user.is_empty() && !user.contains(':'),
        "a user name must be non-empty and hold no ':'"
    );
    let mut password = String::new();
    std::io::stdin().lock().read_line(&mut password)?;
    let password = password.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "no password on stdin");
    let hash = bcrypt::hash(password, cost).context("cannot hash the password")?;
    writeln!(std::io::stdout(), "{user}:{hash}")?;
    Ok(())
}

/// Every 10 minutes (and at start), drop upload sessions idle longer than
/// `max_age` (one-request pushes: `monolithic_max_age`).
async fn purge_uploads(
    store: std::sync::Arc<berth_registry::Store>,
    max_age: std::time::Duration,
    monolithic_max_age: std::time::Duration,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
    loop {
        tick.tick().await;
        match store.purge_uploads_idle(max_age, monolithic_max_age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "removed abandoned upload sessions"),
            Err(e) => tracing::warn!(error = %e, "could not purge abandoned upload sessions"),
        }
    }
}

/// Keeps readiness true to whether storage can be written.
async fn probe_storage(store: std::sync::Arc<berth_registry::Store>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        store.probe_storage().await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
