//! The certificate decisions, pure: from what [`super::observe`] read, the
//! names clients dial, the spec, the node agents' counts and the clock, to
//! the objects to write, the Events to publish, the certificate's state and
//! when to look again.
//!
//! SelfSigned mode keeps (or makes) the Registry's CA, publishes the trust
//! bundle and keeps (or issues) the serving certificate. A CA close to
//! expiry is replaced and the old one kept in the CA Secret as `previous`:
//! both are published, and the serving certificate stays one from the
//! previous CA until every selected node trusts the new CA
//! ([`trust::signer`]), or until waiting longer would serve a certificate
//! that is already due (then a Warning says so).
//!
//! Secret and CertManager modes only check what someone else wrote,
//! publish its CA and report its expiry.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::runtime::events::EventType;

use super::observe::{CertManagerView, IssuerView, Observed, Parsed, ServedSecret, StoredCa};
use crate::crd::{IssuerKind, Registry};
use crate::desired::{ca_bundle, certificate, tls};
use crate::names::Names;
use crate::pki::{self, CertInfo, CertPolicy, KeyedCert, PkiError, Verdict};
use crate::status::{CertState, NodeTrustState};
use crate::trust::{self, Signer};

/// Reason of the Warning published when a CA rotation stops waiting for
/// the nodes.
pub(crate) const ROTATION_FORCED: &str = "CARotationForced";

/// How often a Registry waiting on cert-manager looks again.
pub(crate) const CERT_MANAGER_POLL: std::time::Duration = std::time::Duration::from_secs(10);

/// What to do about the certificate in one reconcile.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Stored first: a new CA must be kept before anything publishes it.
    pub ca_secret: Option<CaWrite>,
    /// cert-manager's Certificate (CertManager mode, once installed).
    pub certificate: Option<DynamicObject>,
    pub ca_bundle: Option<ConfigMap>,
    pub serving_secret: Option<Secret>,
    /// Published once the CA Secret is stored.
    pub events: Vec<PlannedEvent>,
    pub state: CertState,
    /// The nodes' trust in the CA of `state`, counted once.
    pub node_trust: NodeTrustState,
    /// The CA bundle nodes should trust (`status.nodeTrust.caBundle`).
    pub bundle: Option<String>,
    /// When the serving certificate is due for renewal.
    pub wake_at: Option<Timestamp>,
    /// A rotation is waiting for nodes: the serving certificate is the
    /// previous CA's.
    pub serving_from_previous: bool,
}

/// A write of the CA Secret, only over the CA Secret that was read: a lost
/// race fails the reconcile, and the retry keeps the CA that won.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum CaWrite {
    /// There was none: create it (fails if another writer did first).
    Create(Secret),
    /// Replace it; `metadata.resourceVersion` is the one read.
    Replace(Secret),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PlannedEvent {
    pub type_: EventType,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

impl PlannedEvent {
    fn normal(reason: &'static str, action: &'static str, note: impl Into<String>) -> Self {
        Self {
            type_: EventType::Normal,
            reason,
            action,
            note: note.into(),
        }
    }
}

impl Plan {
    /// Waiting on, or refused by, something outside the operator: nothing
    /// to write and nothing for nodes to trust yet.
    fn waiting(state: CertState, node_trust: &dyn Fn(Option<&str>) -> NodeTrustState) -> Self {
        Self {
            ca_secret: None,
            certificate: None,
            ca_bundle: None,
            serving_secret: None,
            events: Vec::new(),
            state,
            node_trust: node_trust(None),
            bundle: None,
            wake_at: None,
            serving_from_previous: false,
        }
    }
}

/// Decide. `cert_names` are the names clients dial (they change with the
/// Service's ClusterIP and the spec's host names); `node_trust` counts the
/// nodes that trust a CA fingerprint and is called exactly once.
///
/// Fails only when SelfSigned mode cannot make a certificate (an invalid
/// `tls.duration`, or key generation failing).
pub(crate) fn plan(
    observed: &Observed,
    registry: &Registry,
    names: &Names,
    cert_names: &[String],
    node_trust: &dyn Fn(Option<&str>) -> NodeTrustState,
    now: Timestamp,
) -> Result<Plan, PkiError> {
    match observed {
        Observed::SelfSigned {
            ca,
            bundle,
            serving,
        } => self_signed(
            SelfSignedInput {
                ca: ca.as_ref(),
                bundle: bundle.as_deref(),
                serving: serving.as_ref(),
            },
            registry,
            names,
            cert_names,
            node_trust,
            now,
        ),
        Observed::Secret { secret: None } => {
            let message = format!(
                "Secret {}/{} (tls.secretName) does not exist yet",
                names.namespace,
                names.serving_secret(&registry.spec)
            );
            Ok(Plan::waiting(
                CertState::Pending {
                    reason: "SecretNotFound",
                    message,
                },
                node_trust,
            ))
        }
        Observed::Secret {
            secret: Some(secret),
        } => Ok(served(
            secret,
            "SecretInvalid",
            registry,
            names,
            cert_names,
            node_trust,
            now,
        )),
        Observed::CertManager {
            installed: false, ..
        } => {
            let message = "cert-manager's Certificate API (cert-manager.io/v1) is not installed: install cert-manager, or use tls.mode SelfSigned".to_owned();
            Ok(Plan::waiting(
                CertState::Pending {
                    reason: "CertManagerNotInstalled",
                    message,
                },
                node_trust,
            ))
        }
        Observed::CertManager {
            installed: true,
            secret,
            cert_manager,
        } => {
            let awaiting = |why: String| {
                let mut plan = Plan::waiting(
                    CertState::Pending {
                        reason: "AwaitingCertManager",
                        message: format!(
                            "waiting for cert-manager to issue {}/{}{why}{}",
                            names.namespace,
                            names.tls_secret(),
                            cert_manager_says(registry, names, cert_manager.as_ref())
                        ),
                    },
                    node_trust,
                );
                // cert-manager's objects are not watched: look again soon,
                // so the message follows it and its Secret is taken up.
                plan.wake_at = now.checked_add(CERT_MANAGER_POLL).ok();
                plan
            };
            let desired = certificate::certificate(registry, names, cert_names);
            // Ready counts only for the names the Registry wants now: right
            // after a name is added, the Certificate read before this
            // reconcile applies the new one is still Ready for the old names.
            let asked = desired
                .as_ref()
                .map(|d| super::observe::requested_names(&d.data))
                .unwrap_or_default();
            let ready = cert_manager
                .as_ref()
                .is_some_and(|v| v.is_ready() && v.requested == asked);
            let mut plan = match secret {
                None => awaiting(String::new()),
                // While cert-manager works on the current spec, a Secret
                // that cannot serve it yet (a new name, a new key) is being
                // replaced, not broken: the registry keeps serving it.
                Some(secret) if !ready && check_served(secret, cert_names, now).is_err() => {
                    let why = check_served(secret, cert_names, now)
                        .err()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default();
                    awaiting(why)
                }
                Some(secret) => served(
                    secret,
                    "CertificateInvalid",
                    registry,
                    names,
                    cert_names,
                    node_trust,
                    now,
                ),
            };
            plan.certificate = desired;
            Ok(plan)
        }
    }
}

/// What cert-manager says about a Certificate that is not Ready, for a
/// Pending message: a missing or unready issuer first (the usual mistake,
/// which the Certificate itself does not name), else its Ready condition.
fn cert_manager_says(registry: &Registry, names: &Names, view: Option<&CertManagerView>) -> String {
    let Some(view) = view else {
        return String::new();
    };
    let issuer = registry.spec.tls.issuer_ref.as_ref();
    let issuer_name = || {
        issuer.map_or_else(String::new, |i| match i.kind {
            IssuerKind::Issuer => format!("Issuer {}/{}", names.namespace, i.name),
            IssuerKind::ClusterIssuer => format!("ClusterIssuer {}", i.name),
        })
    };
    match &view.issuer {
        IssuerView::Missing => {
            return format!(
                ": {} does not exist: create it, or point tls.issuerRef at one that does",
                issuer_name()
            );
        }
        IssuerView::NotReady(c) => {
            return format!(
                ": {} is not Ready ({}: {})",
                issuer_name(),
                c.reason,
                c.message
            );
        }
        IssuerView::Unchecked | IssuerView::Ready => {}
    }
    match &view.ready {
        Some(c) if !view.is_ready() => format!(
            "; cert-manager's Certificate {}: {} ({})",
            names.certificate(),
            c.message,
            c.reason
        ),
        _ => String::new(),
    }
}

struct SelfSignedInput<'a> {
    ca: Option<&'a StoredCa>,
    bundle: Option<&'a str>,
    serving: Option<&'a Parsed>,
}

/// A CA pair and its parsed certificate.
struct Ca {
    pair: KeyedCert,
    cert: CertInfo,
}

impl Ca {
    /// `parsed` as a CA that `usable` accepts, if it is one.
    fn of(parsed: &Parsed, usable: impl Fn(&CertInfo, &str) -> bool) -> Option<Self> {
        let cert = parsed.leaf().ok()?;
        usable(cert, &parsed.pair.key_pem).then(|| Self {
            pair: parsed.pair.clone(),
            cert: cert.clone(),
        })
    }
}

fn self_signed(
    observed: SelfSignedInput<'_>,
    registry: &Registry,
    names: &Names,
    cert_names: &[String],
    node_trust: &dyn Fn(Option<&str>) -> NodeTrustState,
    now: Timestamp,
) -> Result<Plan, PkiError> {
    let policy = CertPolicy::from_tls(&registry.spec.tls)?;
    let mut events = Vec::new();
    let can_sign = |cert: &CertInfo, key: &str| pki::ca_cert_can_sign(cert, key, now);
    let stored_current = observed.ca.and_then(|s| s.current.as_ref());
    let stored_previous = observed.ca.and_then(|s| s.previous.as_ref());

    // Keep the CA while it is usable; else make one, and keep the old one
    // as `previous` while it can still sign.
    let usable =
        stored_current.and_then(|p| Ca::of(p, |cert, key| pki::ca_cert_is_usable(cert, key, now)));
    let (ca, previous, new_ca) = match usable {
        Some(ca) => (ca, stored_previous.and_then(|p| Ca::of(p, can_sign)), false),
        None => {
            let pair = pki::issue_ca(&format!("berth {}/{} CA", names.namespace, names.name), now)?;
            let cert = pki::parse_cert(&pair.cert_pem, "the CA")?;
            events.push(match stored_current {
                Some(_) => PlannedEvent::normal(
                    "CARotated",
                    "IssueCA",
                    "the CA was unusable or close to expiry; a new CA was made and is published beside the old one until every node trusts it",
                ),
                None => PlannedEvent::normal("CAIssued", "IssueCA", "made this Registry's CA"),
            });
            let previous = stored_current.and_then(|p| Ca::of(p, can_sign));
            (Ca { pair, cert }, previous, true)
        }
    };

    // Publish the new CA with every earlier one that has not expired.
    let mut earlier = observed.bundle.unwrap_or_default().to_owned();
    if let Some(previous) = &previous {
        earlier.push('\n');
        earlier.push_str(&previous.pair.cert_pem);
    }
    let bundle = pki::trust_bundle_of(
        &ca.pair.cert_pem,
        Some(&ca.cert.fingerprint),
        Some(&earlier),
        now,
    );

    // Which CA signs the serving certificate.
    let trust = node_trust(Some(&ca.cert.fingerprint));
    let signer = trust::signer(
        previous.as_ref().map(|p| p.cert.not_after),
        policy.renew_before,
        &trust,
        now,
    );
    let (signing, keep_previous) = match (signer, &previous) {
        (Signer::Previous, Some(previous)) => (previous, Some(&previous.pair)),
        (_, Some(previous)) => {
            if !trust.every_node_trusts() {
                events.push(PlannedEvent {
                    type_: EventType::Warning,
                    reason: ROTATION_FORCED,
                    action: "IssueCertificate",
                    note: format!(
                        "not every node trusts the new CA yet, but a certificate from the previous CA (valid until {}) could no longer last tls.renewBefore: serving one from the new CA; nodes whose node agent has not installed it cannot pull until it does",
                        previous.cert.not_after
                    ),
                });
            }
            (&ca, None)
        }
        (_, None) => (&ca, None),
    };

    let mut desired_ca = tls::ca_secret(registry, names, &ca.pair, keep_previous);
    let ca_secret = match observed.ca {
        None => Some(CaWrite::Create(desired_ca)),
        Some(StoredCa { secret, .. }) if new_ca || secret.data != desired_ca.data => {
            desired_ca.metadata.resource_version = secret.resource_version();
            Some(CaWrite::Replace(desired_ca))
        }
        Some(_) => None,
    };

    // Keep the serving certificate, or issue one.
    let existing = observed
        .serving
        .map(|p| (p.pair.cert_pem.as_str(), p.pair.key_pem.as_str(), p.leaf()));
    let verdict =
        pki::serving_verdict_parsed(existing, &signing.pair.cert_pem, cert_names, policy, now);
    let (serving, serving_cert) = match (verdict, observed.serving) {
        (Verdict::Keep { .. }, Some(kept)) => match kept.leaf() {
            Ok(cert) => (kept.pair.clone(), cert.clone()),
            // Keep is only said of a readable certificate.
            Err(e) => return Err(e.clone()),
        },
        (verdict, _) => {
            let issued = pki::issue_serving(&signing.pair, cert_names, now, policy.validity)?;
            let cert = pki::parse_cert(&issued.cert_pem, "the serving certificate")?;
            let why = match verdict {
                Verdict::Reissue(reason) => reason.to_string(),
                Verdict::Keep { .. } => "no serving certificate yet".to_owned(),
            };
            events.push(PlannedEvent::normal(
                "CertificateIssued",
                "IssueCertificate",
                format!("issued the serving certificate: {why}"),
            ));
            (issued, cert)
        }
    };

    let renew_at = serving_cert.renewal_time(policy.renew_before);
    Ok(Plan {
        ca_secret,
        certificate: None,
        ca_bundle: Some(ca_bundle::ca_bundle(
            registry,
            names,
            &bundle,
            &ca.cert.fingerprint,
        )),
        serving_secret: Some(tls::serving_secret(registry, names, &serving, &bundle)),
        events,
        state: CertState::Issued {
            not_after: serving_cert.not_after,
            renewal_time: renew_at,
            ca_fingerprint: ca.cert.fingerprint.clone(),
        },
        node_trust: trust,
        bundle: Some(bundle),
        wake_at: Some(renew_at),
        serving_from_previous: keep_previous.is_some(),
    })
}

/// For a Secret the operator does not write: check it, publish the CA that
/// nodes should trust and report its expiry; a Secret that cannot serve is
/// `invalid_reason`, with what to fix.
fn served(
    secret: &ServedSecret,
    invalid_reason: &'static str,
    registry: &Registry,
    names: &Names,
    cert_names: &[String],
    node_trust: &dyn Fn(Option<&str>) -> NodeTrustState,
    now: Timestamp,
) -> Plan {
    match check_served(secret, cert_names, now) {
        Err(unservable) => Plan::waiting(
            CertState::Failed {
                reason: invalid_reason,
                message: unservable.to_string(),
            },
            node_trust,
        ),
        Ok((leaf, ca_pem, ca)) => {
            let renew_before = CertPolicy::from_tls(&registry.spec.tls)
                .map(|p| p.renew_before)
                .unwrap_or_default();
            Plan {
                ca_secret: None,
                certificate: None,
                ca_bundle: Some(ca_bundle::ca_bundle(
                    registry,
                    names,
                    ca_pem,
                    &ca.fingerprint,
                )),
                serving_secret: None,
                events: Vec::new(),
                state: CertState::Issued {
                    not_after: leaf.not_after,
                    renewal_time: leaf.renewal_time(renew_before),
                    ca_fingerprint: ca.fingerprint.clone(),
                },
                node_trust: node_trust(Some(&ca.fingerprint)),
                bundle: Some(ca_pem.to_owned()),
                wake_at: None,
                serving_from_previous: false,
            }
        }
    }
}

/// Why a Secret the operator does not write cannot serve.
#[derive(Debug, thiserror::Error)]
enum Unservable {
    #[error("Secret {0} has no tls.crt and tls.key")]
    NoKeyPair(String),
    #[error(transparent)]
    Unreadable(PkiError),
    #[error("the certificate in {secret} does not name {missing}")]
    NamesMissing { secret: String, missing: String },
    #[error(
        "tls.key in {0} is not the private key of tls.crt: store the key the certificate was issued for"
    )]
    KeyMismatch(String),
    #[error("the certificate in {secret} expired at {at}: renew it")]
    Expired { secret: String, at: Timestamp },
}

/// The leaf, the CA PEM and the CA of a Secret that can serve `cert_names`
/// now; else why not.
fn check_served<'a>(
    secret: &'a ServedSecret,
    cert_names: &[String],
    now: Timestamp,
) -> Result<(&'a CertInfo, &'a str, &'a CertInfo), Unservable> {
    let name = &secret.name;
    let (Some(cert), Some((ca_pem, ca))) = (&secret.cert, &secret.ca) else {
        return Err(Unservable::NoKeyPair(name.clone()));
    };
    let leaf = cert.leaf().map_err(|e| Unservable::Unreadable(e.clone()))?;
    let missing: Vec<&str> = cert_names
        .iter()
        .filter(|n| !leaf.covers(n))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Unservable::NamesMissing {
            secret: name.clone(),
            missing: missing.join(", "),
        });
    }
    if !pki::key_matches(leaf, &cert.pair.key_pem) {
        return Err(Unservable::KeyMismatch(name.clone()));
    }
    if now >= leaf.not_after {
        return Err(Unservable::Expired {
            secret: name.clone(),
            at: leaf.not_after,
        });
    }
    let ca = ca.as_ref().map_err(|e| Unservable::Unreadable(e.clone()))?;
    Ok((leaf, ca_pem, ca))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::time::Duration;

    use jiff::SignedDuration;
    use k8s_openapi::ByteString;

    use super::*;
    use crate::certificates::observe::CertManagerCondition;
    use crate::crd::{IssuerKind, IssuerRef, RegistrySpec, TlsMode};
    use crate::fixtures;

    const DAY: i64 = 24;
    const CLUSTER_IP: &str = "10.96.0.10";

    fn now() -> Timestamp {
        "2026-11-30T12:00:00Z".parse().expect("timestamp")
    }

    fn days(n: i64) -> SignedDuration {
        SignedDuration::from_hours(n * DAY)
    }

    fn ago(n: i64) -> Timestamp {
        now() - days(n)
    }

    fn ca_at(at: Timestamp) -> KeyedCert {
        pki::issue_ca("test CA", at).expect("CA")
    }

    /// A serving certificate for `names` from `ca`, issued at `at`, 90 days.
    fn leaf(ca: &KeyedCert, names: &[String], at: Timestamp) -> KeyedCert {
        pki::issue_serving(ca, names, at, Duration::from_secs(90 * 24 * 3600)).expect("leaf")
    }

    fn info(pem: &str) -> CertInfo {
        pki::parse_cert(pem, "test").expect("parse")
    }

    fn cert_names(spec: &RegistrySpec, ip: &str) -> Vec<String> {
        fixtures::names().certificate_names(spec, Some(ip))
    }

    fn self_signed_registry() -> Registry {
        fixtures::registry()
    }

    /// What observe would make of a CA Secret holding `ca` (and `previous`),
    /// a bundle ConfigMap holding `bundle` and a serving Secret holding `serving`.
    fn observed(
        ca: Option<(&KeyedCert, Option<&KeyedCert>)>,
        bundle: Option<String>,
        serving: Option<&KeyedCert>,
    ) -> Observed {
        let ca = ca.map(|(ca, previous)| {
            let mut secret =
                tls::ca_secret(&self_signed_registry(), &fixtures::names(), ca, previous);
            secret.metadata.resource_version = Some("7".into());
            StoredCa::of(secret)
        });
        Observed::SelfSigned {
            ca,
            bundle,
            serving: serving.map(|p| Parsed::new(p.clone(), "the serving certificate")),
        }
    }

    fn disabled(_: Option<&str>) -> NodeTrustState {
        NodeTrustState::Disabled
    }

    fn counted(trusted: i32, total: i32) -> impl Fn(Option<&str>) -> NodeTrustState {
        move |_| NodeTrustState::Counted {
            trusted,
            total,
            unreported: 0,
            stale: 0,
            problems: Vec::new(),
        }
    }

    fn plan_self_signed(
        registry: &Registry,
        observed: &Observed,
        names: &[String],
        trust: &dyn Fn(Option<&str>) -> NodeTrustState,
        at: Timestamp,
    ) -> Plan {
        plan(observed, registry, &fixtures::names(), names, trust, at).expect("plan")
    }

    fn reasons(plan: &Plan) -> Vec<&'static str> {
        plan.events.iter().map(|e| e.reason).collect()
    }

    fn note(plan: &Plan, reason: &str) -> String {
        plan.events
            .iter()
            .find(|e| e.reason == reason)
            .map(|e| e.note.clone())
            .unwrap_or_else(|| panic!("no {reason} event in {:?}", plan.events))
    }

    fn served_pair(plan: &Plan) -> KeyedCert {
        plan.serving_secret
            .as_ref()
            .and_then(tls::keyed_cert)
            .expect("serving secret")
    }

    fn written_ca(plan: &Plan) -> (KeyedCert, Option<KeyedCert>) {
        let secret = match plan.ca_secret.as_ref().expect("a CA Secret write") {
            CaWrite::Create(s) | CaWrite::Replace(s) => s,
        };
        (
            tls::keyed_cert(secret).expect("CA pair"),
            tls::previous_ca(secret),
        )
    }

    fn bundle_fingerprints(plan: &Plan) -> Vec<String> {
        let bundle = plan.bundle.as_deref().expect("bundle");
        pki::parse_bundle(bundle, "bundle")
            .expect("bundle parses")
            .into_iter()
            .map(|c| c.fingerprint)
            .collect()
    }

    fn issued(plan: &Plan) -> (Timestamp, Timestamp, String) {
        match &plan.state {
            CertState::Issued {
                not_after,
                renewal_time,
                ca_fingerprint,
            } => (*not_after, *renewal_time, ca_fingerprint.clone()),
            other => panic!("not issued: {other:?}"),
        }
    }

    // --- SelfSigned: first issue, keeping, renewal, names ---

    #[test]
    fn first_reconcile_makes_a_ca_then_a_serving_certificate_from_it() {
        let registry = self_signed_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let plan = plan_self_signed(
            &registry,
            &observed(None, None, None),
            &names,
            &disabled,
            now(),
        );

        assert_eq!(reasons(&plan), ["CAIssued", "CertificateIssued"]);
        assert!(note(&plan, "CertificateIssued").contains("no serving certificate yet"));
        assert!(matches!(plan.ca_secret, Some(CaWrite::Create(_))));
        let (ca, previous) = written_ca(&plan);
        assert_eq!(previous, None);
        let ca_fingerprint = info(&ca.cert_pem).fingerprint;
        assert_eq!(
            bundle_fingerprints(&plan),
            std::slice::from_ref(&ca_fingerprint)
        );
        let annotations = plan
            .ca_bundle
            .as_ref()
            .and_then(|cm| cm.metadata.annotations.clone())
            .expect("annotations");
        assert_eq!(
            annotations.get(ca_bundle::FINGERPRINT_ANNOTATION),
            Some(&ca_fingerprint)
        );
        let serving = served_pair(&plan);
        assert!(pki::is_signed_by(&serving.cert_pem, &ca.cert_pem));
        let serving_info = info(&serving.cert_pem);
        assert!(names.iter().all(|n| serving_info.covers(n)));
        let (not_after, renewal_time, fingerprint) = issued(&plan);
        assert_eq!(not_after, now() + days(90));
        assert_eq!(renewal_time, now() + days(60));
        assert_eq!(fingerprint, ca_fingerprint);
        assert_eq!(plan.wake_at, Some(renewal_time));
        assert!(!plan.serving_from_previous);
    }

    #[test]
    fn a_valid_certificate_is_kept_with_no_ca_write_and_no_event() {
        let registry = self_signed_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let ca = ca_at(ago(2));
        let serving = leaf(&ca, &names, ago(1));
        let plan = plan_self_signed(
            &registry,
            &observed(Some((&ca, None)), Some(ca.cert_pem.clone()), Some(&serving)),
            &names,
            &disabled,
            now(),
        );

        assert!(plan.events.is_empty(), "{:?}", plan.events);
        assert_eq!(plan.ca_secret, None);
        assert_eq!(served_pair(&plan), serving);
        assert_eq!(bundle_fingerprints(&plan), [info(&ca.cert_pem).fingerprint]);
        assert_eq!(plan.wake_at, Some(ago(1) + days(60)));
    }

    #[test]
    fn renewal_happens_exactly_at_renew_before_and_not_a_second_earlier() {
        let registry = self_signed_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let issued_at = ago(100);
        let ca = ca_at(issued_at);
        let serving = leaf(&ca, &names, issued_at);
        let observed = observed(Some((&ca, None)), Some(ca.cert_pem.clone()), Some(&serving));
        // 90 days valid, renewed 30 days (720h) before expiry.
        let renew_at = issued_at + days(60);

        let before = plan_self_signed(
            &registry,
            &observed,
            &names,
            &disabled,
            renew_at - SignedDuration::from_secs(1),
        );
        assert!(before.events.is_empty());
        assert_eq!(served_pair(&before), serving);
        assert_eq!(before.wake_at, Some(renew_at));

        let at = plan_self_signed(&registry, &observed, &names, &disabled, renew_at);
        assert_eq!(reasons(&at), ["CertificateIssued"]);
        assert!(note(&at, "CertificateIssued").contains("renewal was due at"));
        assert_ne!(served_pair(&at), serving);
        assert_eq!(at.wake_at, Some(renew_at + days(60)));
    }

    #[test]
    fn a_new_cluster_ip_forces_a_reissue_naming_it() {
        let registry = self_signed_registry();
        let ca = ca_at(ago(2));
        let serving = leaf(&ca, &cert_names(&registry.spec, CLUSTER_IP), ago(1));
        let names = cert_names(&registry.spec, "10.96.0.99");
        let plan = plan_self_signed(
            &registry,
            &observed(Some((&ca, None)), Some(ca.cert_pem.clone()), Some(&serving)),
            &names,
            &disabled,
            now(),
        );
        assert_eq!(reasons(&plan), ["CertificateIssued"]);
        assert!(note(&plan, "CertificateIssued").contains("does not name 10.96.0.99"));
        assert!(info(&served_pair(&plan).cert_pem).covers("10.96.0.99"));
    }

    #[test]
    fn a_new_host_name_forces_a_reissue_naming_it() {
        let before = self_signed_registry();
        let after = fixtures::registry_with(|spec| {
            spec.node_trust.host_name = Some("registry.example.com".into());
        });
        let ca = ca_at(ago(2));
        let serving = leaf(&ca, &cert_names(&before.spec, CLUSTER_IP), ago(1));
        let names = cert_names(&after.spec, CLUSTER_IP);
        let plan = plan_self_signed(
            &after,
            &observed(Some((&ca, None)), Some(ca.cert_pem.clone()), Some(&serving)),
            &names,
            &disabled,
            now(),
        );
        assert!(note(&plan, "CertificateIssued").contains("registry.example.com"));
        assert!(info(&served_pair(&plan).cert_pem).covers("registry.example.com"));
    }

    #[test]
    fn a_shorter_duration_forces_a_reissue() {
        let registry = fixtures::registry_with(|spec| spec.tls.duration = "1000h".into());
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let ca = ca_at(ago(2));
        let serving = leaf(&ca, &names, ago(1));
        let plan = plan_self_signed(
            &registry,
            &observed(Some((&ca, None)), Some(ca.cert_pem.clone()), Some(&serving)),
            &names,
            &disabled,
            now(),
        );
        assert!(note(&plan, "CertificateIssued").contains("tls.duration changed"));
    }

    #[test]
    fn a_serving_certificate_with_a_foreign_key_is_reissued() {
        let registry = self_signed_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let ca = ca_at(ago(2));
        let mut serving = leaf(&ca, &names, ago(1));
        serving.key_pem = leaf(&ca, &names, ago(1)).key_pem;
        let plan = plan_self_signed(
            &registry,
            &observed(Some((&ca, None)), Some(ca.cert_pem.clone()), Some(&serving)),
            &names,
            &disabled,
            now(),
        );
        assert!(note(&plan, "CertificateIssued").contains("private key does not belong"));
    }

    #[test]
    fn an_invalid_duration_fails_the_plan_instead_of_issuing() {
        let registry = fixtures::registry_with(|spec| spec.tls.duration = "soon".into());
        let result = plan(
            &observed(None, None, None),
            &registry,
            &fixtures::names(),
            &cert_names(&registry.spec, CLUSTER_IP),
            &disabled,
            now(),
        );
        assert!(
            matches!(result, Err(PkiError::Duration { .. })),
            "{result:?}"
        );
    }

    // --- SelfSigned: CA rotation ---

    /// A CA issued 9.5 years ago: within a year of its expiry, so it is
    /// rotated, but it still signs for half a year.
    fn aging_ca() -> KeyedCert {
        ca_at(now() - SignedDuration::from_hours(9 * 365 * DAY + 182 * DAY))
    }

    #[test]
    fn a_ca_near_expiry_is_rotated_publishing_old_and_new_while_the_old_still_serves() {
        let registry = self_signed_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let old = aging_ca();
        let serving = leaf(&old, &names, ago(1));
        let plan = plan_self_signed(
            &registry,
            &observed(
                Some((&old, None)),
                Some(old.cert_pem.clone()),
                Some(&serving),
            ),
            &names,
            &counted(0, 2),
            now(),
        );

        assert_eq!(reasons(&plan), ["CARotated"]);
        let Some(CaWrite::Replace(secret)) = &plan.ca_secret else {
            panic!("expected a replace: {:?}", plan.ca_secret);
        };
        assert_eq!(secret.metadata.resource_version.as_deref(), Some("7"));
        let (new, previous) = written_ca(&plan);
        assert_ne!(new, old);
        assert_eq!(previous, Some(old.clone()));
        let new_fingerprint = info(&new.cert_pem).fingerprint;
        assert_eq!(
            bundle_fingerprints(&plan),
            [new_fingerprint.clone(), info(&old.cert_pem).fingerprint]
        );
        // Nodes are told about the new CA; the old one still serves.
        assert_eq!(issued(&plan).2, new_fingerprint);
        assert_eq!(served_pair(&plan), serving);
        assert!(plan.serving_from_previous);
    }

    #[test]
    fn while_nodes_lag_the_previous_ca_keeps_serving_and_nothing_is_written() {
        let registry = self_signed_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let old = aging_ca();
        let new = ca_at(ago(2));
        let serving = leaf(&old, &names, ago(1));
        let bundle = format!("{}{}", new.cert_pem, old.cert_pem);
        let plan = plan_self_signed(
            &registry,
            &observed(Some((&new, Some(&old))), Some(bundle), Some(&serving)),
            &names,
            &counted(1, 2),
            now(),
        );
        assert!(plan.events.is_empty(), "{:?}", plan.events);
        assert_eq!(plan.ca_secret, None);
        assert_eq!(served_pair(&plan), serving);
        assert!(plan.serving_from_previous);
        assert_eq!(bundle_fingerprints(&plan).len(), 2);
    }

    #[test]
    fn a_missing_serving_certificate_during_a_rotation_comes_from_the_previous_ca() {
        let registry = self_signed_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let old = aging_ca();
        let new = ca_at(ago(2));
        let plan = plan_self_signed(
            &registry,
            &observed(Some((&new, Some(&old))), None, None),
            &names,
            &|_| NodeTrustState::NotReported,
            now(),
        );
        assert_eq!(reasons(&plan), ["CertificateIssued"]);
        assert!(pki::is_signed_by(
            &served_pair(&plan).cert_pem,
            &old.cert_pem
        ));
    }

    #[test]
    fn once_every_node_trusts_the_new_ca_the_serving_certificate_moves_to_it() {
        let registry = self_signed_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let old = aging_ca();
        let new = ca_at(ago(2));
        let serving = leaf(&old, &names, ago(1));
        let bundle = format!("{}{}", new.cert_pem, old.cert_pem);
        let plan = plan_self_signed(
            &registry,
            &observed(Some((&new, Some(&old))), Some(bundle), Some(&serving)),
            &names,
            &counted(2, 2),
            now(),
        );
        assert_eq!(reasons(&plan), ["CertificateIssued"]);
        assert!(note(&plan, "CertificateIssued").contains("not issued by the current CA"));
        assert!(pki::is_signed_by(
            &served_pair(&plan).cert_pem,
            &new.cert_pem
        ));
        // The previous CA's key is dropped; its certificate stays published
        // until it expires.
        assert_eq!(written_ca(&plan), (new.clone(), None));
        assert_eq!(bundle_fingerprints(&plan).len(), 2);
        assert!(!plan.serving_from_previous);
    }

    #[test]
    fn waiting_for_nodes_ends_with_a_warning_when_the_previous_ca_cannot_cover_renew_before() {
        let registry = self_signed_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        // Expires in 20 days; renewBefore is 30 days.
        let old = ca_at(now() - SignedDuration::from_hours(10 * 365 * DAY - 20 * DAY));
        let new = ca_at(ago(2));
        let serving = leaf(&old, &names, ago(1));
        let bundle = format!("{}{}", new.cert_pem, old.cert_pem);
        let plan = plan_self_signed(
            &registry,
            &observed(Some((&new, Some(&old))), Some(bundle), Some(&serving)),
            &names,
            &counted(1, 2),
            now(),
        );
        assert_eq!(reasons(&plan), [ROTATION_FORCED, "CertificateIssued"]);
        assert_eq!(plan.events[0].type_, EventType::Warning);
        assert!(pki::is_signed_by(
            &served_pair(&plan).cert_pem,
            &new.cert_pem
        ));
        assert_eq!(written_ca(&plan), (new.clone(), None));
        assert!(!plan.serving_from_previous);
    }

    #[test]
    fn a_rotation_without_node_trust_moves_to_the_new_ca_at_once_without_a_warning() {
        let registry = self_signed_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let old = aging_ca();
        let serving = leaf(&old, &names, ago(1));
        let plan = plan_self_signed(
            &registry,
            &observed(
                Some((&old, None)),
                Some(old.cert_pem.clone()),
                Some(&serving),
            ),
            &names,
            &disabled,
            now(),
        );
        assert_eq!(reasons(&plan), ["CARotated", "CertificateIssued"]);
        let (new, previous) = written_ca(&plan);
        assert_eq!(previous, None);
        assert!(pki::is_signed_by(
            &served_pair(&plan).cert_pem,
            &new.cert_pem
        ));
        assert_eq!(bundle_fingerprints(&plan).len(), 2);
    }

    #[test]
    fn an_unreadable_stored_ca_is_replaced_and_not_kept_as_previous() {
        let registry = self_signed_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let broken = KeyedCert {
            cert_pem: "not a certificate".into(),
            key_pem: "not a key".into(),
        };
        let plan = plan_self_signed(
            &registry,
            &observed(Some((&broken, None)), None, None),
            &names,
            &disabled,
            now(),
        );
        assert_eq!(reasons(&plan), ["CARotated", "CertificateIssued"]);
        assert!(matches!(plan.ca_secret, Some(CaWrite::Replace(_))));
        assert_eq!(written_ca(&plan).1, None);
    }

    #[test]
    fn node_trust_is_counted_once_for_the_ca_being_published() {
        let registry = self_signed_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let old = aging_ca();
        let new = ca_at(ago(2));
        let calls = RefCell::new(Vec::new());
        let trust = |fingerprint: Option<&str>| {
            calls.borrow_mut().push(fingerprint.map(str::to_owned));
            NodeTrustState::NotReported
        };
        let plan = plan_self_signed(
            &registry,
            &observed(Some((&new, Some(&old))), None, None),
            &names,
            &trust,
            now(),
        );
        assert_eq!(*calls.borrow(), [Some(info(&new.cert_pem).fingerprint)]);
        assert_eq!(plan.node_trust, NodeTrustState::NotReported);
    }

    // --- Secret mode ---

    fn secret_registry() -> Registry {
        fixtures::registry_with(|spec| {
            spec.tls.mode = TlsMode::Secret;
            spec.tls.secret_name = Some("user-tls".into());
        })
    }

    fn user_secret(entries: &[(&str, &str)]) -> ServedSecret {
        let mut secret = Secret::default();
        secret.metadata.name = Some("user-tls".into());
        secret.data = Some(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        );
        ServedSecret::of(&secret)
    }

    fn plan_served(registry: &Registry, observed: &Observed, names: &[String]) -> Plan {
        plan(
            observed,
            registry,
            &fixtures::names(),
            names,
            &disabled,
            now(),
        )
        .expect("plan")
    }

    fn failed(plan: &Plan) -> (&'static str, String) {
        assert!(plan.ca_bundle.is_none() && plan.bundle.is_none());
        match &plan.state {
            CertState::Failed { reason, message } => (reason, message.clone()),
            other => panic!("not failed: {other:?}"),
        }
    }

    #[test]
    fn a_missing_user_secret_is_pending_and_nothing_is_written() {
        let registry = secret_registry();
        let calls = RefCell::new(Vec::new());
        let trust = |fingerprint: Option<&str>| {
            calls.borrow_mut().push(fingerprint.map(str::to_owned));
            NodeTrustState::NotReported
        };
        let plan = plan(
            &Observed::Secret { secret: None },
            &registry,
            &fixtures::names(),
            &cert_names(&registry.spec, CLUSTER_IP),
            &trust,
            now(),
        )
        .expect("plan");
        let CertState::Pending { reason, message } = &plan.state else {
            panic!("not pending: {:?}", plan.state);
        };
        assert_eq!(*reason, "SecretNotFound");
        assert!(message.contains("team/user-tls"), "{message}");
        assert!(plan.ca_bundle.is_none() && plan.serving_secret.is_none());
        assert_eq!(*calls.borrow(), [None]);
    }

    #[test]
    fn a_valid_user_secret_publishes_its_ca_crt_and_reports_its_expiry() {
        let registry = secret_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let ca = ca_at(ago(10));
        let pair = leaf(&ca, &names, ago(10));
        let secret = user_secret(&[
            ("tls.crt", &pair.cert_pem),
            ("tls.key", &pair.key_pem),
            ("ca.crt", &ca.cert_pem),
        ]);
        let plan = plan_served(
            &registry,
            &Observed::Secret {
                secret: Some(secret),
            },
            &names,
        );
        let (not_after, renewal_time, fingerprint) = issued(&plan);
        assert_eq!(not_after, ago(10) + days(90));
        assert_eq!(renewal_time, ago(10) + days(60));
        assert_eq!(fingerprint, info(&ca.cert_pem).fingerprint);
        assert_eq!(plan.bundle.as_deref(), Some(ca.cert_pem.as_str()));
        assert!(plan.ca_bundle.is_some());
        // The user's Secret is served as it is: the operator writes no
        // serving Secret and no CA, and the hourly resync re-reads it.
        assert!(plan.serving_secret.is_none() && plan.ca_secret.is_none());
        assert!(plan.events.is_empty());
        assert_eq!(plan.wake_at, None);
    }

    #[test]
    fn a_user_secret_without_ca_crt_publishes_the_top_of_its_chain() {
        let registry = secret_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let ca = ca_at(ago(10));
        let pair = leaf(&ca, &names, ago(10));
        let chain = format!("{}{}", pair.cert_pem, ca.cert_pem);
        let secret = user_secret(&[("tls.crt", &chain), ("tls.key", &pair.key_pem)]);
        let plan = plan_served(
            &registry,
            &Observed::Secret {
                secret: Some(secret),
            },
            &names,
        );
        assert_eq!(issued(&plan).2, info(&ca.cert_pem).fingerprint);
        assert_eq!(bundle_fingerprints(&plan), [info(&ca.cert_pem).fingerprint]);
    }

    #[test]
    fn a_changed_user_secret_is_reported_as_it_now_is() {
        let registry = secret_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let (ca1, ca2) = (ca_at(ago(50)), ca_at(ago(1)));
        let (old, renewed) = (leaf(&ca1, &names, ago(50)), leaf(&ca2, &names, ago(1)));
        let of = |ca: &KeyedCert, pair: &KeyedCert| Observed::Secret {
            secret: Some(user_secret(&[
                ("tls.crt", &pair.cert_pem),
                ("tls.key", &pair.key_pem),
                ("ca.crt", &ca.cert_pem),
            ])),
        };
        let before = plan_served(&registry, &of(&ca1, &old), &names);
        let after = plan_served(&registry, &of(&ca2, &renewed), &names);
        assert_eq!(issued(&before).0, ago(50) + days(90));
        assert_eq!(issued(&after).0, ago(1) + days(90));
        assert_eq!(issued(&after).2, info(&ca2.cert_pem).fingerprint);
        assert_eq!(after.bundle.as_deref(), Some(ca2.cert_pem.as_str()));
    }

    #[test]
    fn a_user_secret_without_a_key_is_invalid() {
        let registry = secret_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let ca = ca_at(ago(10));
        let pair = leaf(&ca, &names, ago(10));
        let secret = user_secret(&[("tls.crt", &pair.cert_pem)]);
        let plan = plan_served(
            &registry,
            &Observed::Secret {
                secret: Some(secret),
            },
            &names,
        );
        let (reason, message) = failed(&plan);
        assert_eq!(reason, "SecretInvalid");
        assert_eq!(message, "Secret user-tls has no tls.crt and tls.key");
    }

    #[test]
    fn a_user_secret_that_is_not_pem_is_invalid() {
        let registry = secret_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let secret = user_secret(&[("tls.crt", "hello"), ("tls.key", "world")]);
        let plan = plan_served(
            &registry,
            &Observed::Secret {
                secret: Some(secret),
            },
            &names,
        );
        let (reason, message) = failed(&plan);
        assert_eq!(reason, "SecretInvalid");
        assert!(message.contains("no readable PEM certificate"), "{message}");
    }

    #[test]
    fn a_user_secret_whose_key_is_not_the_certificates_is_invalid() {
        let registry = secret_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let ca = ca_at(ago(10));
        let pair = leaf(&ca, &names, ago(10));
        let other = leaf(&ca, &names, ago(10));
        let secret = user_secret(&[("tls.crt", &pair.cert_pem), ("tls.key", &other.key_pem)]);
        let plan = plan_served(
            &registry,
            &Observed::Secret {
                secret: Some(secret),
            },
            &names,
        );
        let (reason, message) = failed(&plan);
        assert_eq!(reason, "SecretInvalid");
        assert!(message.contains("is not the private key"), "{message}");
    }

    #[test]
    fn an_expired_user_secret_is_invalid() {
        let registry = secret_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let ca = ca_at(ago(200));
        let pair = leaf(&ca, &names, ago(100));
        let secret = user_secret(&[("tls.crt", &pair.cert_pem), ("tls.key", &pair.key_pem)]);
        let plan = plan_served(
            &registry,
            &Observed::Secret {
                secret: Some(secret),
            },
            &names,
        );
        let (reason, message) = failed(&plan);
        assert_eq!(reason, "SecretInvalid");
        assert!(message.contains("expired at"), "{message}");
    }

    #[test]
    fn a_user_secret_missing_a_name_clients_dial_is_invalid() {
        let registry = secret_registry();
        let ca = ca_at(ago(10));
        let pair = leaf(&ca, &cert_names(&registry.spec, CLUSTER_IP), ago(10));
        let secret = user_secret(&[("tls.crt", &pair.cert_pem), ("tls.key", &pair.key_pem)]);
        let names = cert_names(&registry.spec, "10.96.0.99");
        let plan = plan_served(
            &registry,
            &Observed::Secret {
                secret: Some(secret),
            },
            &names,
        );
        let (reason, message) = failed(&plan);
        assert_eq!(reason, "SecretInvalid");
        assert_eq!(
            message,
            "the certificate in user-tls does not name 10.96.0.99"
        );
    }

    // --- CertManager mode ---

    fn cert_manager_registry() -> Registry {
        fixtures::registry_with(|spec| {
            spec.tls.mode = TlsMode::CertManager;
            spec.tls.issuer_ref = Some(IssuerRef {
                name: "team-ca".into(),
                kind: IssuerKind::Issuer,
                group: "cert-manager.io".into(),
            });
        })
    }

    fn condition(status: &str, reason: &str, message: &str) -> CertManagerCondition {
        CertManagerCondition {
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// What cert-manager reports once the Secret matches the current spec
    /// of `registry`'s Certificate (with `names`).
    fn ready_view(registry: &Registry, names: &[String]) -> CertManagerView {
        let desired =
            certificate::certificate(registry, &fixtures::names(), names).expect("a Certificate");
        CertManagerView {
            requested: crate::certificates::observe::requested_names(&desired.data),
            ready: Some(condition(
                "True",
                "Ready",
                "Certificate is up to date and has not expired",
            )),
            current: true,
            issuer: IssuerView::Unchecked,
        }
    }

    /// What cert-manager reports while it issues for a new spec.
    fn reissuing_view(issuer: IssuerView) -> CertManagerView {
        CertManagerView {
            ready: Some(condition(
                "False",
                "SecretMismatch",
                "Existing issued Secret is not up to date for spec: [spec.dnsNames]",
            )),
            current: true,
            issuer,
            requested: Vec::new(),
        }
    }

    fn pending_message(plan: &Plan) -> &str {
        match &plan.state {
            CertState::Pending { message, .. } => message,
            other => panic!("not pending: {other:?}"),
        }
    }

    fn pending_reason(plan: &Plan) -> &'static str {
        match &plan.state {
            CertState::Pending { reason, .. } => reason,
            other => panic!("not pending: {other:?}"),
        }
    }

    #[test]
    fn without_cert_manager_installed_nothing_is_applied() {
        let registry = cert_manager_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let observed = Observed::CertManager {
            installed: false,
            secret: None,
            cert_manager: None,
        };
        let plan = plan_served(&registry, &observed, &names);
        assert_eq!(pending_reason(&plan), "CertManagerNotInstalled");
        assert!(plan.certificate.is_none() && plan.ca_bundle.is_none());
    }

    #[test]
    fn until_cert_manager_is_ready_its_certificate_is_applied_and_awaited() {
        let registry = cert_manager_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let observed = Observed::CertManager {
            installed: true,
            secret: None,
            cert_manager: None,
        };
        let plan = plan_served(&registry, &observed, &names);
        assert_eq!(pending_reason(&plan), "AwaitingCertManager");
        let certificate = plan.certificate.as_ref().expect("Certificate");
        assert_eq!(certificate.metadata.name.as_deref(), Some("hub"));
        assert_eq!(certificate.data["spec"]["secretName"], "hub-tls");
        assert_eq!(certificate.data["spec"]["ipAddresses"][0], CLUSTER_IP);
        assert!(plan.ca_bundle.is_none());
    }

    #[test]
    fn once_cert_manager_wrote_the_secret_it_is_served_and_its_ca_published() {
        let registry = cert_manager_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let ca = ca_at(ago(10));
        let pair = leaf(&ca, &names, ago(10));
        let mut secret = user_secret(&[
            ("tls.crt", &pair.cert_pem),
            ("tls.key", &pair.key_pem),
            ("ca.crt", &ca.cert_pem),
        ]);
        secret.name = "hub-tls".into();
        let observed = Observed::CertManager {
            installed: true,
            secret: Some(secret),
            cert_manager: Some(ready_view(&registry, &names)),
        };
        let plan = plan_served(&registry, &observed, &names);
        assert_eq!(issued(&plan).2, info(&ca.cert_pem).fingerprint);
        assert!(plan.certificate.is_some());
        assert_eq!(plan.bundle.as_deref(), Some(ca.cert_pem.as_str()));
        assert!(plan.serving_secret.is_none());
    }

    #[test]
    fn a_broken_secret_cert_manager_calls_ready_is_certificate_invalid() {
        let registry = cert_manager_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let observed = Observed::CertManager {
            installed: true,
            secret: Some(user_secret(&[("tls.crt", "x"), ("tls.key", "y")])),
            cert_manager: Some(ready_view(&registry, &names)),
        };
        let plan = plan_served(&registry, &observed, &names);
        assert_eq!(failed(&plan).0, "CertificateInvalid");
        // The Certificate is still applied: cert-manager repairs its Secret.
        assert!(plan.certificate.is_some());
    }

    #[test]
    fn a_secret_lacking_a_new_name_while_cert_manager_reissues_is_awaited_not_invalid() {
        let registry = cert_manager_registry();
        let old_names = cert_names(&registry.spec, CLUSTER_IP);
        let ca = ca_at(ago(10));
        let pair = leaf(&ca, &old_names, ago(1));
        let secret = user_secret(&[
            ("tls.crt", &pair.cert_pem),
            ("tls.key", &pair.key_pem),
            ("ca.crt", &ca.cert_pem),
        ]);
        let mut names = old_names.clone();
        names.push("extra.example.test".into());
        let observed = Observed::CertManager {
            installed: true,
            secret: Some(secret.clone()),
            cert_manager: Some(reissuing_view(IssuerView::Ready)),
        };
        let plan = plan_served(&registry, &observed, &names);
        assert_eq!(pending_reason(&plan), "AwaitingCertManager");
        let message = pending_message(&plan);
        assert!(
            message.contains("does not name extra.example.test"),
            "{message}"
        );
        assert!(message.contains("SecretMismatch"), "{message}");
        assert!(plan.events.is_empty());
        // Once cert-manager calls the same Secret Ready, it is wrong.
        let observed = Observed::CertManager {
            installed: true,
            secret: Some(secret),
            cert_manager: Some(ready_view(&registry, &names)),
        };
        let plan = plan_served(&registry, &observed, &names);
        assert_eq!(failed(&plan).0, "CertificateInvalid");
    }

    #[test]
    fn a_name_added_is_awaited_even_while_the_old_certificate_is_still_ready() {
        // The Certificate was read before this reconcile applies the new
        // names: cert-manager still calls it Ready, for the old ones.
        let before = cert_manager_registry();
        let old_names = cert_names(&before.spec, CLUSTER_IP);
        let ca = ca_at(ago(10));
        let pair = leaf(&ca, &old_names, ago(10));
        let mut secret = user_secret(&[
            ("tls.crt", &pair.cert_pem),
            ("tls.key", &pair.key_pem),
            ("ca.crt", &ca.cert_pem),
        ]);
        secret.name = "hub-tls".into();
        let mut registry = before.clone();
        registry.spec.tls.extra_names = vec!["extra.example.test".into()];
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let observed = Observed::CertManager {
            installed: true,
            secret: Some(secret),
            cert_manager: Some(ready_view(&before, &old_names)),
        };
        let plan = plan_served(&registry, &observed, &names);
        assert_eq!(pending_reason(&plan), "AwaitingCertManager");
        assert!(plan.certificate.is_some());
    }

    #[test]
    fn a_missing_issuer_is_named_while_waiting() {
        let registry = cert_manager_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let observed = Observed::CertManager {
            installed: true,
            secret: None,
            cert_manager: Some(reissuing_view(IssuerView::Missing)),
        };
        let plan = plan_served(&registry, &observed, &names);
        assert_eq!(pending_reason(&plan), "AwaitingCertManager");
        assert_eq!(
            pending_message(&plan),
            "waiting for cert-manager to issue team/hub-tls: Issuer team/team-ca does not exist: create it, or point tls.issuerRef at one that does"
        );
        // Nothing watches the issuer: the Registry looks again soon.
        assert_eq!(
            plan.wake_at,
            Some(now().checked_add(CERT_MANAGER_POLL).expect("time"))
        );
    }

    #[test]
    fn an_issuer_that_is_not_ready_is_quoted_while_waiting() {
        let registry = cert_manager_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let issuer = IssuerView::NotReady(condition(
            "False",
            "ErrGetKeyPair",
            "Error getting keypair for CA issuer: secrets \"ca-key-pair\" not found",
        ));
        let observed = Observed::CertManager {
            installed: true,
            secret: None,
            cert_manager: Some(reissuing_view(issuer)),
        };
        let plan = plan_served(&registry, &observed, &names);
        let message = pending_message(&plan);
        assert!(
            message.contains("Issuer team/team-ca is not Ready (ErrGetKeyPair: Error getting keypair for CA issuer: secrets \"ca-key-pair\" not found)"),
            "{message}"
        );
    }

    #[test]
    fn with_a_ready_issuer_the_certificates_own_condition_is_quoted() {
        let registry = cert_manager_registry();
        let names = cert_names(&registry.spec, CLUSTER_IP);
        let observed = Observed::CertManager {
            installed: true,
            secret: None,
            cert_manager: Some(CertManagerView {
                ready: Some(condition(
                    "False",
                    "DoesNotExist",
                    "Issuing certificate as Secret does not exist",
                )),
                current: true,
                issuer: IssuerView::Ready,
                requested: Vec::new(),
            }),
        };
        let plan = plan_served(&registry, &observed, &names);
        assert_eq!(
            pending_message(&plan),
            "waiting for cert-manager to issue team/hub-tls; cert-manager's Certificate hub: Issuing certificate as Secret does not exist (DoesNotExist)"
        );
    }
}
