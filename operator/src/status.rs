//! The Registry's status as a pure function of what the controller observed.
//!
//! Conditions follow the Kubernetes conventions: one entry per type, a
//! CamelCase reason, a sentence for people, the generation it describes,
//! and a `lastTransitionTime` that moves only when the status flips. The
//! last rule is what makes a reconcile with nothing new write nothing: the
//! computed status equals the stored one.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{
    CertificateStatus, Endpoints, GcStatus, NodeCounts, NodeTrustStatus, RegistryStatus,
    UsageStatus,
};

pub const READY: &str = "Ready";
pub const CERTIFICATE_READY: &str = "CertificateReady";
pub const STORAGE_READY: &str = "StorageReady";
pub const NODE_TRUST_READY: &str = "NodeTrustReady";
pub const AUTH_READY: &str = "AuthReady";
/// The AuthReady reason for mode None.
pub const AUTH_DISABLED: &str = "AuthDisabled";

/// The serving certificate, as the controller found or made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertState {
    Issued {
        not_after: Timestamp,
        renewal_time: Timestamp,
        ca_fingerprint: String,
    },
    /// Waiting on something outside the operator (a user's Secret, cert-manager).
    Pending {
        reason: &'static str,
        message: String,
    },
    Failed {
        reason: &'static str,
        message: String,
    },
}

/// The storage backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageState {
    /// The data claim is bound.
    Bound,
    /// The claim exists but is not bound yet (phase, or "not found yet").
    Pending(String),
    /// The claim lost its volume.
    Lost,
    /// Object storage: the credentials Secret holds both keys (whether the
    /// bucket answers, the pods' readiness tells).
    Bucket,
    /// Object storage whose credentials Secret is missing or incomplete.
    CredentialsMissing(String),
}

/// The registry pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadState {
    Running {
        ready: i32,
        wanted: i32,
    },
    /// `replicas: 0`.
    ScaledToZero,
}

/// Node trust, as reported by the node agents (see [`crate::trust::count`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeTrustState {
    Disabled,
    /// No node agent has reported yet.
    NotReported,
    /// The node agent DaemonSet is not there; the message says which.
    AgentNotInstalled(String),
    Counted {
        /// Selected nodes that have installed the current CA.
        trusted: i32,
        /// Selected nodes, counting agents that have not reported.
        total: i32,
        /// Agents that have not reported on this Registry yet.
        unreported: i32,
        /// Selected nodes whose agent stopped renewing its report Lease;
        /// counted in `total`, never in `trusted`.
        stale: i32,
        /// What agents said went wrong, by node.
        problems: Vec<String>,
    },
}

impl NodeTrustState {
    /// Whether no selected node is left that might not trust the current CA.
    pub fn every_node_trusts(&self) -> bool {
        match self {
            Self::Disabled => true,
            Self::Counted {
                trusted,
                total,
                unreported,
                ..
            } => trusted >= total && *unreported == 0,
            Self::NotReported | Self::AgentNotInstalled(_) => false,
        }
    }
}

/// Whether the registry answers through its Service (see
/// [`crate::readiness`]): what Ready adds to ready pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServingState {
    /// Ready endpoints, and `/v2/` answered through the Service (or could
    /// not be probed from where the operator runs: `note` says so).
    Serving { endpoints: usize, note: String },
    /// Not serving yet; `message` says what is missing.
    NotServing {
        reason: &'static str,
        message: String,
    },
}

impl ServingState {
    pub fn is_serving(&self) -> bool {
        matches!(self, Self::Serving { .. })
    }
}

/// Who may push and pull, as the operator set it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthState {
    /// Kubernetes or Htpasswd: the config, keys and (Kubernetes mode) the
    /// auth delegation binding are in place.
    Enabled { mode: &'static str },
    /// Mode None: anyone who reaches the registry may push.
    Disabled,
    /// Something the registry needs is missing (a user's htpasswd Secret).
    Pending {
        reason: &'static str,
        message: String,
    },
}

/// Everything status is computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub generation: Option<i64>,
    pub certificate: CertState,
    pub storage: StorageState,
    pub workload: WorkloadState,
    pub node_trust: NodeTrustState,
    /// What the node agents should install (`status.nodeTrust`); `None`
    /// when it is not known yet (no ClusterIP or CA) or node trust is off.
    pub node_trust_publish: Option<NodeTrustStatus>,
    pub endpoints: Endpoints,
    pub auth: AuthState,
    /// `status.gc`: `None` when GC is off.
    pub gc: Option<GcStatus>,
    /// `status.usage`: `None` without quotas.
    pub usage: Option<UsageStatus>,
    pub serving: ServingState,
}

struct Verdict {
    status: bool,
    reason: &'static str,
    message: String,
}

fn verdict(status: bool, reason: &'static str, message: impl Into<String>) -> Verdict {
    Verdict {
        status,
        reason,
        message: message.into(),
    }
}

fn certificate(obs: &Observed) -> Verdict {
    match &obs.certificate {
        CertState::Issued {
            not_after,
            renewal_time,
            ..
        } => verdict(
            true,
            "Issued",
            format!("serving certificate valid until {not_after}, renewed at {renewal_time}"),
        ),
        CertState::Pending { reason, message } | CertState::Failed { reason, message } => {
            verdict(false, reason, message)
        }
    }
}

fn storage(obs: &Observed) -> Verdict {
    match &obs.storage {
        StorageState::Bound => verdict(true, "Bound", "the data volume is bound"),
        StorageState::Pending(phase) => verdict(
            false,
            "ClaimPending",
            format!("the data volume is not bound yet: {phase}"),
        ),
        StorageState::Lost => verdict(
            false,
            "ClaimLost",
            "the data volume's PersistentVolume is gone",
        ),
        StorageState::Bucket => verdict(
            true,
            "Bucket",
            "object storage: the credentials are in place; the pods check the bucket",
        ),
        StorageState::CredentialsMissing(message) => {
            verdict(false, "CredentialsMissing", message.clone())
        }
    }
}

fn node_trust(obs: &Observed) -> Verdict {
    match &obs.node_trust {
        NodeTrustState::Disabled => verdict(
            true,
            "Disabled",
            "nodeTrust.enabled is false: nodes are not configured",
        ),
        NodeTrustState::NotReported => verdict(
            false,
            "AwaitingNodeAgents",
            "no node agent has reported trusting this registry's CA yet",
        ),
        NodeTrustState::AgentNotInstalled(message) => {
            verdict(false, "NodeAgentNotInstalled", message.clone())
        }
        NodeTrustState::Counted { total: 0, .. } => verdict(
            false,
            "NoNodesSelected",
            "no node running the berth node agent matches nodeTrust.nodeSelector",
        ),
        NodeTrustState::Counted {
            trusted,
            total,
            unreported,
            stale,
            problems,
        } => {
            let mut message = format!("{trusted} of {total} nodes trust the current CA");
            if *unreported > 0 {
                message.push_str(&format!(
                    "; {unreported} node agent(s) have not reported yet"
                ));
            }
            if *stale > 0 {
                message.push_str(&format!(
                    "; {stale} node(s) stale: their agent stopped reporting"
                ));
            }
            if !problems.is_empty() {
                message.push_str(&format!("; {}", problems.join("; ")));
            }
            if obs.node_trust.every_node_trusts() {
                verdict(true, "AllNodesTrust", message)
            } else {
                verdict(false, "NodesPending", message)
            }
        }
    }
}

/// The sentence for mode None, on AuthReady and appended to Ready.
pub const AUTH_DISABLED_MESSAGE: &str = "auth.mode is None: anyone who can reach this registry can push, overwrite and delete every image; set auth.mode Kubernetes (the default) to require a login";

fn auth(obs: &Observed) -> Verdict {
    match &obs.auth {
        AuthState::Enabled { mode } => verdict(
            true,
            "Enabled",
            match *mode {
                "Kubernetes" => "pushes and pulls need a Kubernetes token; RBAC on repositories.berth.dev in the repository's namespace decides".to_owned(),
                other => format!("pushes and pulls need a login ({other} mode)"),
            },
        ),
        AuthState::Disabled => verdict(false, AUTH_DISABLED, AUTH_DISABLED_MESSAGE),
        AuthState::Pending { reason, message } => verdict(false, reason, message.clone()),
    }
}

/// Ready means: a client can push and pull now. Node trust is reported on
/// its own condition and does not hold Ready back.
fn ready(obs: &Observed, cert: &Verdict, storage: &Verdict) -> Verdict {
    let mut v = ready_ignoring_auth_mode(obs, cert, storage);
    if v.status && obs.auth == AuthState::Disabled {
        v.message.push_str("; ");
        v.message.push_str(AUTH_DISABLED_MESSAGE);
    }
    v
}

fn ready_ignoring_auth_mode(obs: &Observed, cert: &Verdict, storage: &Verdict) -> Verdict {
    if !cert.status {
        return verdict(false, "CertificateNotReady", cert.message.clone());
    }
    if !storage.status {
        return verdict(false, "StorageNotReady", storage.message.clone());
    }
    if let AuthState::Pending { message, .. } = &obs.auth {
        return verdict(false, "AuthNotReady", message.clone());
    }
    match obs.workload {
        WorkloadState::ScaledToZero => {
            verdict(false, "ScaledToZero", "replicas is 0: no registry pod runs")
        }
        WorkloadState::Running { ready, wanted } if ready >= wanted && ready > 0 => {
            match &obs.serving {
                ServingState::Serving { endpoints, note } => verdict(
                    true,
                    "Available",
                    format!(
                        "{ready} of {wanted} registry pods ready; the Service has {endpoints} ready endpoint(s); {note}"
                    ),
                ),
                ServingState::NotServing { reason, message } => verdict(
                    false,
                    reason,
                    format!("{ready} of {wanted} registry pods ready, but {message}"),
                ),
            }
        }
        WorkloadState::Running { ready, wanted } => verdict(
            false,
            "PodsNotReady",
            format!("{ready} of {wanted} registry pods ready"),
        ),
    }
}

/// The conditions for `obs`, keeping each condition's `lastTransitionTime`
/// from `previous` when its status did not change.
pub fn conditions(obs: &Observed, previous: &[Condition], now: Timestamp) -> Vec<Condition> {
    let cert = certificate(obs);
    let storage = storage(obs);
    let ready = ready(obs, &cert, &storage);
    let trust = node_trust(obs);
    let auth = auth(obs);
    [
        (READY, ready),
        (CERTIFICATE_READY, cert),
        (STORAGE_READY, storage),
        (NODE_TRUST_READY, trust),
        (AUTH_READY, auth),
    ]
    .into_iter()
    .map(|(type_, v)| {
        let status = if v.status { "True" } else { "False" };
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: v.reason.to_owned(),
            message: v.message,
            observed_generation: obs.generation,
            last_transition_time,
        }
    })
    .collect()
}

/// The whole status for `obs`, given the stored one.
pub fn status(obs: &Observed, previous: Option<&RegistryStatus>, now: Timestamp) -> RegistryStatus {
    let previous_conditions = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let certificate = match &obs.certificate {
        CertState::Issued {
            not_after,
            renewal_time,
            ca_fingerprint,
        } => Some(CertificateStatus {
            not_after: Some(Time(*not_after)),
            renewal_time: Some(Time(*renewal_time)),
            ca_fingerprint: Some(ca_fingerprint.clone()),
        }),
        _ => previous.and_then(|s| s.certificate.clone()),
    };
    let nodes = match obs.node_trust {
        NodeTrustState::Counted { trusted, total, .. } => Some(NodeCounts { trusted, total }),
        _ => None,
    };
    // Keep what nodes were told while the CA is briefly unknown (a user's
    // Secret being replaced), so agents do not remove working trust.
    let node_trust = match (&obs.node_trust, &obs.node_trust_publish) {
        (NodeTrustState::Disabled, _) => None,
        (_, Some(publish)) => Some(publish.clone()),
        (_, None) => previous.and_then(|s| s.node_trust.clone()),
    };
    RegistryStatus {
        observed_generation: obs.generation,
        conditions: conditions(obs, previous_conditions, now),
        endpoints: Some(obs.endpoints.clone()),
        certificate,
        nodes,
        node_trust,
        gc: obs.gc.clone(),
        usage: obs.usage.clone(),
    }
}

/// Whether `status` says auth is off (mode None).
pub fn auth_disabled(status: &RegistryStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == AUTH_READY && c.reason == AUTH_DISABLED)
}

/// Whether the Ready condition in `status` is True.
pub fn is_ready(status: &RegistryStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn healthy() -> Observed {
        Observed {
            generation: Some(3),
            certificate: CertState::Issued {
                not_after: t("2027-02-22T12:00:00Z"),
                renewal_time: t("2027-01-23T12:00:00Z"),
                ca_fingerprint: "sha256:00".into(),
            },
            storage: StorageState::Bound,
            workload: WorkloadState::Running {
                ready: 1,
                wanted: 1,
            },
            node_trust: NodeTrustState::Counted {
                trusted: 3,
                total: 3,
                unreported: 0,
                stale: 0,
                problems: vec![],
            },
            node_trust_publish: Some(NodeTrustStatus {
                hosts: vec!["hub.team.svc.cluster.local".into()],
                upstream: "https://10.96.0.42:443".into(),
                ca_bundle: "PEM".into(),
            }),
            endpoints: Endpoints {
                internal: Some("hub.team.svc.cluster.local".into()),
                external: None,
                node: None,
                ui: None,
            },
            auth: AuthState::Enabled { mode: "Kubernetes" },
            gc: None,
            usage: None,
            serving: ServingState::Serving {
                endpoints: 1,
                note: "/v2/ answers through the Service at 10.96.0.42:443".into(),
            },
        }
    }

    #[test]
    fn ready_pods_without_a_registry_answering_through_the_service_are_not_ready() {
        let mut obs = healthy();
        obs.serving = ServingState::NotServing {
            reason: "NoReadyEndpoints",
            message: "the Service has no ready endpoint yet".into(),
        };
        let s = status(&obs, None, t("2026-11-24T12:00:00Z"));
        assert!(!is_ready(&s));
        let ready = condition(&s.conditions, READY);
        assert_eq!(ready.reason, "NoReadyEndpoints");
        assert_eq!(
            ready.message,
            "1 of 1 registry pods ready, but the Service has no ready endpoint yet"
        );
        obs.serving = ServingState::Serving {
            endpoints: 1,
            note: "/v2/ not probed: the operator runs outside the cluster and cannot reach 10.96.0.42:443".into(),
        };
        let s = status(&obs, None, t("2026-11-24T12:00:00Z"));
        assert!(is_ready(&s));
        assert!(condition(&s.conditions, READY).message.ends_with(
            "/v2/ not probed: the operator runs outside the cluster and cannot reach 10.96.0.42:443"
        ),);
    }

    fn condition<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present")
    }

    #[test]
    fn a_healthy_registry_is_ready_with_every_condition_true() {
        let now = t("2026-11-24T12:00:00Z");
        let s = status(&healthy(), None, now);
        assert!(is_ready(&s));
        for c in &s.conditions {
            assert_eq!(c.status, "True", "{c:?}");
            assert_eq!(c.observed_generation, Some(3));
            assert_eq!(c.last_transition_time, Time(now));
        }
        let types: Vec<_> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            [
                READY,
                CERTIFICATE_READY,
                STORAGE_READY,
                NODE_TRUST_READY,
                AUTH_READY
            ]
        );
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(
            s.nodes,
            Some(NodeCounts {
                trusted: 3,
                total: 3
            })
        );
        let cert = s.certificate.expect("certificate");
        assert_eq!(cert.not_after, Some(Time(t("2027-02-22T12:00:00Z"))));
        assert_eq!(cert.ca_fingerprint.as_deref(), Some("sha256:00"));
    }

    #[test]
    fn recomputing_an_unchanged_status_yields_the_stored_status() {
        let first = status(&healthy(), None, t("2026-11-24T12:00:00Z"));
        let second = status(&healthy(), Some(&first), t("2026-11-24T12:05:00Z"));
        assert_eq!(first, second);
    }

    #[test]
    fn a_flip_moves_only_that_conditions_transition_time() {
        let first = status(&healthy(), None, t("2026-11-24T12:00:00Z"));
        let mut obs = healthy();
        obs.workload = WorkloadState::Running {
            ready: 0,
            wanted: 1,
        };
        let later = t("2026-11-24T12:05:00Z");
        let second = status(&obs, Some(&first), later);
        let ready = condition(&second.conditions, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "PodsNotReady")
        );
        assert_eq!(ready.last_transition_time, Time(later));
        let cert = condition(&second.conditions, CERTIFICATE_READY);
        assert_eq!(cert.last_transition_time, Time(t("2026-11-24T12:00:00Z")));
    }

    #[test]
    fn a_pending_certificate_holds_ready_back_and_says_why() {
        let mut obs = healthy();
        obs.certificate = CertState::Pending {
            reason: "SecretNotFound",
            message: "Secret team/corp-cert not found".into(),
        };
        let s = status(&obs, None, t("2026-11-24T12:00:00Z"));
        let cert = condition(&s.conditions, CERTIFICATE_READY);
        assert_eq!(
            (cert.status.as_str(), cert.reason.as_str()),
            ("False", "SecretNotFound")
        );
        let ready = condition(&s.conditions, READY);
        assert_eq!(ready.reason, "CertificateNotReady");
        assert!(ready.message.contains("corp-cert"));
    }

    #[test]
    fn an_unbound_volume_holds_ready_back() {
        let mut obs = healthy();
        obs.storage = StorageState::Pending("Pending".into());
        let s = status(&obs, None, t("2026-11-24T12:00:00Z"));
        assert_eq!(
            condition(&s.conditions, STORAGE_READY).reason,
            "ClaimPending"
        );
        assert_eq!(condition(&s.conditions, READY).reason, "StorageNotReady");
    }

    #[test]
    fn object_storage_without_its_credentials_is_not_ready() {
        let mut obs = healthy();
        obs.storage = StorageState::CredentialsMissing("Secret s3 not found".into());
        let s = status(&obs, None, t("2026-11-24T12:00:00Z"));
        let storage = condition(&s.conditions, STORAGE_READY);
        assert_eq!(
            (storage.status.as_str(), storage.reason.as_str()),
            ("False", "CredentialsMissing")
        );
        assert_eq!(condition(&s.conditions, READY).reason, "StorageNotReady");
    }

    #[test]
    fn node_trust_does_not_hold_ready_back() {
        let mut obs = healthy();
        obs.node_trust = NodeTrustState::Counted {
            trusted: 1,
            total: 3,
            unreported: 0,
            stale: 0,
            problems: vec![],
        };
        let s = status(&obs, None, t("2026-11-24T12:00:00Z"));
        assert!(is_ready(&s));
        let trust = condition(&s.conditions, NODE_TRUST_READY);
        assert_eq!(
            (trust.status.as_str(), trust.message.as_str()),
            ("False", "1 of 3 nodes trust the current CA")
        );
    }

    #[test]
    fn node_trust_says_who_has_not_reported_and_what_failed() {
        let mut obs = healthy();
        obs.node_trust = NodeTrustState::Counted {
            trusted: 1,
            total: 3,
            unreported: 1,
            stale: 0,
            problems: vec!["node b: host name \"a/b\" contains a path separator".into()],
        };
        let s = status(&obs, None, t("2026-11-24T12:00:00Z"));
        let trust = condition(&s.conditions, NODE_TRUST_READY);
        assert_eq!(trust.reason, "NodesPending");
        assert_eq!(
            trust.message,
            "1 of 3 nodes trust the current CA; 1 node agent(s) have not reported yet; node b: host name \"a/b\" contains a path separator"
        );
        obs.node_trust = NodeTrustState::Counted {
            trusted: 0,
            total: 0,
            unreported: 0,
            stale: 0,
            problems: vec![],
        };
        let s = status(&obs, None, t("2026-11-24T12:00:00Z"));
        assert_eq!(
            condition(&s.conditions, NODE_TRUST_READY).reason,
            "NoNodesSelected"
        );
        obs.node_trust = NodeTrustState::AgentNotInstalled("no DaemonSet".into());
        let s = status(&obs, None, t("2026-11-24T12:00:00Z"));
        assert_eq!(
            condition(&s.conditions, NODE_TRUST_READY).reason,
            "NodeAgentNotInstalled"
        );
    }

    #[test]
    fn what_nodes_install_is_published_and_kept_while_unknown() {
        let first = status(&healthy(), None, t("2026-11-24T12:00:00Z"));
        assert_eq!(
            first.node_trust.as_ref().map(|n| n.upstream.as_str()),
            Some("https://10.96.0.42:443")
        );
        let mut obs = healthy();
        obs.node_trust_publish = None;
        let second = status(&obs, Some(&first), t("2026-11-24T12:05:00Z"));
        assert_eq!(second.node_trust, first.node_trust);
        obs.node_trust = NodeTrustState::Disabled;
        assert_eq!(
            status(&obs, Some(&first), t("2026-11-24T12:05:00Z")).node_trust,
            None
        );
    }

    #[test]
    fn zero_replicas_is_not_ready() {
        let mut obs = healthy();
        obs.workload = WorkloadState::ScaledToZero;
        let s = status(&obs, None, t("2026-11-24T12:00:00Z"));
        assert_eq!(condition(&s.conditions, READY).reason, "ScaledToZero");
    }

    #[test]
    fn the_last_known_certificate_facts_survive_a_failed_renewal() {
        let first = status(&healthy(), None, t("2026-11-24T12:00:00Z"));
        let mut obs = healthy();
        obs.certificate = CertState::Failed {
            reason: "IssueFailed",
            message: "boom".into(),
        };
        let second = status(&obs, Some(&first), t("2026-11-24T12:05:00Z"));
        assert_eq!(second.certificate, first.certificate);
    }

    #[test]
    fn mode_none_is_ready_but_says_anyone_can_push() {
        let mut obs = healthy();
        obs.auth = AuthState::Disabled;
        let s = status(&obs, None, t("2026-11-24T12:00:00Z"));
        assert!(is_ready(&s));
        assert!(
            condition(&s.conditions, READY)
                .message
                .contains("anyone who can reach this registry can push")
        );
        let auth = condition(&s.conditions, AUTH_READY);
        assert_eq!(
            (auth.status.as_str(), auth.reason.as_str()),
            ("False", AUTH_DISABLED)
        );
    }

    #[test]
    fn a_missing_htpasswd_secret_holds_ready_back() {
        let mut obs = healthy();
        obs.auth = AuthState::Pending {
            reason: "HtpasswdSecretNotFound",
            message: "Secret team/users does not exist".into(),
        };
        let s = status(&obs, None, t("2026-11-24T12:00:00Z"));
        assert!(!is_ready(&s));
        assert_eq!(condition(&s.conditions, READY).reason, "AuthNotReady");
        assert_eq!(
            condition(&s.conditions, AUTH_READY).reason,
            "HtpasswdSecretNotFound"
        );
    }
}
