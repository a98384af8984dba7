//! Prometheus metrics: reconcile counts, durations and failures, and whether
//! this replica leads. Kept apart from the reconcile logic, which only calls
//! [`Metrics::reconciled`] and [`Metrics::failed`].

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error's kind (`crate::Error::kind`), not its text,
    /// so the series stay few.
    pub error: String,
}

/// One series per (verb, resource) the operator sends to the apiserver.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
}

pub struct Metrics {
    registry: Registry,
    api_requests: Family<RequestLabels, Counter>,
    reconciles: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("berth_operator");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let leader = Gauge::default();
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "apiserver_requests",
            "Requests sent to the apiserver, by verb (get, list, watch, create, update, patch, delete) and resource",
            api_requests.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles of Registry objects",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that ended in an error, by kind",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles took",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Self {
            registry,
            api_requests,
            reconciles,
            failures,
            duration,
            leader,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn failed(&self, kind: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: kind.to_owned(),
            })
            .inc();
    }

    pub fn api_request(&self, kind: &crate::api_requests::RequestKind) {
        self.api_requests
            .get_or_create(&RequestLabels {
                verb: kind.verb.to_owned(),
                resource: kind.resource.clone(),
            })
            .inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_failures_appear_in_the_exposition() {
        let metrics = Metrics::default();
        metrics.reconciled(Duration::from_millis(30));
        metrics.failed("Kube");
        metrics.set_leader(true);
        metrics.api_request(&crate::api_requests::RequestKind {
            verb: "patch",
            resource: "deployments".into(),
        });
        let text = metrics.encode().expect("encode");
        assert!(text.contains("berth_operator_reconciles_total 1"), "{text}");
        assert!(
            text.contains("berth_operator_reconcile_failures_total{error=\"Kube\"} 1"),
            "{text}"
        );
        assert!(text.contains("berth_operator_leader 1"), "{text}");
        assert!(
            text.contains(
                "berth_operator_apiserver_requests_total{verb=\"patch\",resource=\"deployments\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("berth_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
