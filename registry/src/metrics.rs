//! Prometheus metrics, served at `/metrics`: request counts and latencies by
//! route and status, bytes in and out (and how many went by sendfile),
//! storage errors, and what the limits refused or cut short (connections
//! over the cap, timeouts, a full disk, busy upload sessions), and garbage
//! collection (runs, what they reclaimed, how long the last took), and
//! webhook deliveries per endpoint (delivered, failed attempts, dropped,
//! queue length), and storage per namespace with its quota.
//!
//! One process-wide registry, so any layer can count without threading a
//! handle through every call.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointKindLabels {
    endpoint: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    mode: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    upstream: String,
    event: &'static str,
}

struct Metrics {
    registry: Registry,
    mirror: Family<MirrorLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    bytes_in: Counter,
    bytes_out: Counter,
    sendfile_bytes: Counter,
    blob_redirects: Counter,
    storage_errors: Counter,
    storage_full: Counter,
    connections_open: Gauge,
    connection_waits: Counter,
    timeouts: Family<KindLabels, Counter>,
    refusals: Family<KindLabels, Counter>,
    auth: Family<AuthLabels, Counter>,
    audit: Family<KindLabels, Counter>,
    notify: NotifyMetrics,
    gc: GcMetrics,
    namespace_bytes: Family<NamespaceLabels, Gauge>,
    namespace_quota_bytes: Family<NamespaceLabels, Gauge>,
}

/// Per webhook endpoint (labelled by its configured name, never its URL).
struct NotifyMetrics {
    events: Family<EndpointKindLabels, Counter>,
    failed_attempts: Family<EndpointLabels, Counter>,
    queue_length: Family<EndpointLabels, Gauge>,
}

impl NotifyMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = NotifyMetrics {
            events: Family::default(),
            failed_attempts: Family::default(),
            queue_length: Family::default(),
        };
        registry.register(
            "notify_events",
            "Notification events by endpoint and outcome: delivered, dropped (queue full), abandoned (attempts ran out)",
            m.events.clone(),
        );
        registry.register(
            "notify_failed_attempts",
            "Notification deliveries that failed (an error, a timeout or a non-2xx answer), by endpoint",
            m.failed_attempts.clone(),
        );
        registry.register(
            "notify_queue_length",
            "Notification events waiting for delivery, by endpoint",
            m.queue_length.clone(),
        );
        m
    }
}

struct GcMetrics {
    runs: Family<OutcomeLabels, Counter>,
    reclaimed_objects: Counter,
    reclaimed_bytes: Counter,
    quarantined_objects: Counter,
    restored_objects: Counter,
    retention_tags_removed: Counter,
    retention_tags_kept_in_use: Counter,
    last_duration: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl GcMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = GcMetrics {
            runs: Family::default(),
            reclaimed_objects: Counter::default(),
            reclaimed_bytes: Counter::default(),
            quarantined_objects: Counter::default(),
            restored_objects: Counter::default(),
            retention_tags_removed: Counter::default(),
            retention_tags_kept_in_use: Counter::default(),
            last_duration: Gauge::default(),
        };
        registry.register(
            "gc_runs",
            "Garbage collection runs by outcome (ok, failed)",
            m.runs.clone(),
        );
        registry.register(
            "gc_reclaimed_objects",
            "Blobs, manifest revisions and links garbage collection deleted for good",
            m.reclaimed_objects.clone(),
        );
        registry.register(
            "gc_reclaimed_bytes",
            "Blob bytes garbage collection deleted for good",
            m.reclaimed_bytes.clone(),
        );
        registry.register(
            "gc_quarantined_objects",
            "Unreferenced blobs and revisions moved to the GC quarantine",
            m.quarantined_objects.clone(),
        );
        registry.register(
            "gc_restored_objects",
            "Quarantined objects moved back because something referenced them again",
            m.restored_objects.clone(),
        );
        registry.register(
            "gc_retention_tags_removed",
            "Tags removed by retention rules",
            m.retention_tags_removed.clone(),
        );
        registry.register(
            "gc_retention_tags_kept_in_use",
            "Tags retention would have removed, kept because a running pod uses them (counted per run)",
            m.retention_tags_kept_in_use.clone(),
        );
        registry.register(
            "gc_last_duration_seconds",
            "How long the last garbage collection run took",
            m.last_duration.clone(),
        );
        m
    }
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::with_prefix("berth_registry");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let (bytes_in, bytes_out, sendfile_bytes, storage_errors) = (
            Counter::default(),
            Counter::default(),
            Counter::default(),
            Counter::default(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to produce a response's headers",
            latency.clone(),
        );
        registry.register(
            "received_bytes",
            "Blob bytes received in uploads",
            bytes_in.clone(),
        );
        registry.register("sent_bytes", "Blob bytes served", bytes_out.clone());
        registry.register(
            "sendfile_bytes",
            "Blob bytes the kernel sent straight from the page cache (plain HTTP/1.x)",
            sendfile_bytes.clone(),
        );
        let blob_redirects = Counter::default();
        registry.register(
            "blob_redirects",
            "Blob GETs answered with a redirect to a signed object storage URL (--s3-redirect)",
            blob_redirects.clone(),
        );
        registry.register(
            "storage_errors",
            "Storage operations that failed",
            storage_errors.clone(),
        );
        let storage_full = Counter::default();
        registry.register(
            "storage_full",
            "Writes refused because the storage volume is full (ENOSPC/EDQUOT)",
            storage_full.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        let connection_waits = Counter::default();
        registry.register(
            "connection_limit_waits",
            "Times a new connection had to wait because --max-connections were open",
            connection_waits.clone(),
        );
        let timeouts = Family::<KindLabels, Counter>::default();
        registry.register(
            "timeouts",
            "Connections or requests cut short by a timeout (kind: header, body, tls)",
            timeouts.clone(),
        );
        let refusals = Family::<KindLabels, Counter>::default();
        registry.register(
            "refusals",
            "Requests refused by a limit (kind: upload_busy, uri_too_long, headers_too_large, upload_buffer_budget, quota)",
            refusals.clone(),
        );
        let auth = Family::<AuthLabels, Counter>::default();
        registry.register(
            "auth_decisions",
            "Auth outcomes by mode: granted, denied, unauthorized, rate_limited, unavailable, token_issued",
            auth.clone(),
        );
        let audit = Family::<KindLabels, Counter>::default();
        registry.register(
            "audit_events",
            "Audit trail events by outcome: written, dropped (queue full), write_failed (storage refused the segment)",
            audit.clone(),
        );
        let mirror = Family::<MirrorLabels, Counter>::default();
        registry.register(
            "mirror_events",
            "Pull-through cache events by upstream prefix: hit (served from the cache), miss (fetched from the upstream), stale (the upstream failed; the cached copy was served), upstream_error (the upstream failed)",
            mirror.clone(),
        );
        let gc = GcMetrics::register(&mut registry);
        let notify = NotifyMetrics::register(&mut registry);
        let namespace_bytes = Family::<NamespaceLabels, Gauge>::default();
        registry.register(
            "namespace_bytes",
            "Bytes a namespace's repositories hold: distinct blobs and manifests, each once per namespace (what quotas limit)",
            namespace_bytes.clone(),
        );
        let namespace_quota_bytes = Family::<NamespaceLabels, Gauge>::default();
        registry.register(
            "namespace_quota_bytes",
            "A namespace's storage quota in bytes (only namespaces that have one)",
            namespace_quota_bytes.clone(),
        );
        Metrics {
            namespace_bytes,
            namespace_quota_bytes,
            gc,
            mirror,
            notify,
            auth,
            audit,
            registry,
            storage_full,
            connections_open,
            connection_waits,
            timeouts,
            refusals,
            requests,
            latency,
            bytes_in,
            bytes_out,
            sendfile_bytes,
            blob_redirects,
            storage_errors,
        }
    })
}

pub fn request(route: &'static str, method: &str, status: u16, elapsed: Duration) {
    let m = metrics();
    m.requests
        .get_or_create(&RequestLabels {
            route,
            method: method.to_owned(),
            status,
        })
        .inc();
    m.latency
        .get_or_create(&RouteLabels {
            route,
            method: method.to_owned(),
        })
        .observe(elapsed.as_secs_f64());
}

pub fn bytes_in(n: u64) {
    metrics().bytes_in.inc_by(n);
}

pub fn bytes_out(n: u64) {
    metrics().bytes_out.inc_by(n);
}

pub fn sendfile_bytes(n: u64) {
    metrics().sendfile_bytes.inc_by(n);
}

pub fn blob_redirect() {
    metrics().blob_redirects.inc();
}

pub fn storage_error() {
    metrics().storage_errors.inc();
}

pub fn storage_full() {
    metrics().storage_full.inc();
}

/// Counts a connection open until the returned guard is dropped.
pub fn connection_opened() -> ConnectionGuard {
    metrics().connections_open.inc();
    ConnectionGuard(())
}

pub struct ConnectionGuard(());

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        metrics().connections_open.dec();
    }
}

pub fn connection_wait() {
    metrics().connection_waits.inc();
}

/// `kind`: header, body or tls.
pub fn timeout(kind: &'static str) {
    metrics().timeouts.get_or_create(&KindLabels { kind }).inc();
}

/// `kind`: what refused the request.
pub fn refusal(kind: &'static str) {
    metrics().refusals.get_or_create(&KindLabels { kind }).inc();
}

/// An upload got a small write buffer: the buffer budget was spent.
pub fn upload_buffer_budget_spent() {
    refusal("upload_buffer_budget");
}

/// One auth outcome (never a user or token label: those are unbounded and secret).
pub fn auth(mode: &'static str, outcome: &'static str) {
    metrics()
        .auth
        .get_or_create(&AuthLabels { mode, outcome })
        .inc();
}

/// One pull-through cache event for the upstream `upstream` (its prefix,
/// from the config: bounded): hit, miss, stale, upstream_error.
pub fn mirror(upstream: &str, event: &'static str) {
    metrics()
        .mirror
        .get_or_create(&MirrorLabels {
            upstream: upstream.to_owned(),
            event,
        })
        .inc();
}

/// Audit trail events by `kind`: written, dropped, write_failed.
pub fn audit(kind: &'static str, n: u64) {
    metrics()
        .audit
        .get_or_create(&KindLabels { kind })
        .inc_by(n);
}

/// Notification events for `endpoint` by `kind`: delivered, dropped, abandoned.
pub fn notify_events(endpoint: &str, kind: &'static str, n: u64) {
    metrics()
        .notify
        .events
        .get_or_create(&EndpointKindLabels {
            endpoint: endpoint.to_owned(),
            kind,
        })
        .inc_by(n);
}

/// A delivery attempt to `endpoint` failed.
pub fn notify_failed_attempt(endpoint: &str) {
    metrics()
        .notify
        .failed_attempts
        .get_or_create(&EndpointLabels {
            endpoint: endpoint.to_owned(),
        })
        .inc();
}

/// Events waiting for `endpoint` now.
pub fn notify_queue_length(endpoint: &str, n: usize) {
    metrics()
        .notify
        .queue_length
        .get_or_create(&EndpointLabels {
            endpoint: endpoint.to_owned(),
        })
        .set(i64::try_from(n).unwrap_or(i64::MAX));
}

/// A garbage collection run ended (`ok`: whether it completed).
pub fn gc_run(ok: bool, report: &crate::storage::gc::GcReport, took: Duration) {
    let m = &metrics().gc;
    let outcome = if ok { "ok" } else { "failed" };
    m.runs.get_or_create(&OutcomeLabels { outcome }).inc();
    if !report.dry_run {
        m.reclaimed_objects
            .inc_by(report.objects_reclaimed() as u64);
        m.reclaimed_bytes.inc_by(report.bytes_reclaimed);
        m.quarantined_objects
            .inc_by((report.blobs_quarantined + report.manifests_quarantined) as u64);
        m.retention_tags_removed.inc_by(report.tags_removed as u64);
        m.retention_tags_kept_in_use
            .inc_by(report.tags_kept_in_use as u64);
    }
    m.last_duration.set(took.as_secs_f64());
}

/// Quarantined objects moved back (by GC or by a reader that needed them).
pub fn gc_restored(n: u64) {
    metrics().gc.restored_objects.inc_by(n);
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The bytes `namespace` holds now.
pub fn namespace_bytes(namespace: &str, bytes: u64) {
    metrics()
        .namespace_bytes
        .get_or_create(&NamespaceLabels {
            namespace: namespace.to_owned(),
        })
        .set(gauge_value(bytes));
}

/// `namespace`'s quota, or none.
pub fn namespace_quota(namespace: &str, quota: Option<u64>) {
    let labels = NamespaceLabels {
        namespace: namespace.to_owned(),
    };
    let family = &metrics().namespace_quota_bytes;
    match quota {
        Some(q) => {
            family.get_or_create(&labels).set(gauge_value(q));
        }
        None => {
            family.remove(&labels);
        }
    }
}

/// `namespace` holds nothing any more: its gauges go.
pub fn namespace_gone(namespace: &str) {
    let labels = NamespaceLabels {
        namespace: namespace.to_owned(),
    };
    metrics().namespace_bytes.remove(&labels);
    metrics().namespace_quota_bytes.remove(&labels);
}

/// The text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &metrics().registry).is_err() {
        out.clear();
    }
    out
}
