//! Prometheus metrics, served at `/metrics`: request counts and latencies by
//! route and status, bytes in and out (and how many went by sendfile),
//! storage errors.
//!
//! One process-wide registry, so any layer can count without threading a
//! handle through every call.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    mode: &'static str,
    outcome: &'static str,
}

struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    bytes_in: Counter,
    bytes_out: Counter,
    sendfile_bytes: Counter,
    storage_errors: Counter,
    auth: Family<AuthLabels, Counter>,
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
        registry.register(
            "storage_errors",
            "Storage operations that failed",
            storage_errors.clone(),
        );
        let auth = Family::<AuthLabels, Counter>::default();
        registry.register(
            "auth_decisions",
            "Auth outcomes by mode: granted, denied, unauthorized, rate_limited, unavailable, token_issued",
            auth.clone(),
        );
        Metrics {
            auth,
            registry,
            requests,
            latency,
            bytes_in,
            bytes_out,
            sendfile_bytes,
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

pub fn storage_error() {
    metrics().storage_errors.inc();
}

/// One auth outcome (never a user or token label: those are unbounded and secret).
pub fn auth(mode: &'static str, outcome: &'static str) {
    metrics()
        .auth
        .get_or_create(&AuthLabels { mode, outcome })
        .inc();
}

/// The text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &metrics().registry).is_err() {
        out.clear();
    }
    out
}
