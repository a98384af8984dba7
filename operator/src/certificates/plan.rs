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

use super::observe::{Observed, Parsed, ServedSecret, StoredCa};
use crate::crd::Registry;
use crate::desired::{ca_bundle, certificate, tls};
use crate::names::Names;
use crate::pki::{self, CertInfo, CertPolicy, KeyedCert, PkiError, Verdict};
use crate::status::{CertState, NodeTrustState};
use crate::trust::{self, Signer};

/// Reason of the Warning published when a CA rotation stops waiting for
/// the nodes.
pub(crate) const ROTATION_FORCED: &str = "CARotationForced";

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
        } => {
            let mut plan = match secret {
                None => {
                    let message = format!(
                        "waiting for cert-manager to issue {}/{}",
                        names.namespace,
                        names.tls_secret()
                    );
                    Plan::waiting(
                        CertState::Pending {
                            reason: "AwaitingCertManager",
                            message,
                        },
                        node_trust,
                    )
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
            plan.certificate = certificate::certificate(registry, names, cert_names);
            Ok(plan)
        }
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
            Err(e) => return Err(unreadable(e)),
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

fn unreadable(detail: &str) -> PkiError {
    PkiError::Unreadable {
        what: "the serving certificate",
        detail: detail.to_owned(),
    }
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
        Err(message) => Plan::waiting(
            CertState::Failed {
                reason: invalid_reason,
                message,
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

/// The leaf, the CA PEM and the CA of a Secret that can serve `cert_names`
/// now; else why not.
fn check_served<'a>(
    secret: &'a ServedSecret,
    cert_names: &[String],
    now: Timestamp,
) -> Result<(&'a CertInfo, &'a str, &'a CertInfo), String> {
    let name = &secret.name;
    let (Some(cert), Some((ca_pem, ca))) = (&secret.cert, &secret.ca) else {
        return Err(format!("Secret {name} has no tls.crt and tls.key"));
    };
    let leaf = cert.leaf().map_err(str::to_owned)?;
    let missing: Vec<&str> = cert_names
        .iter()
        .filter(|n| !leaf.covers(n))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the certificate in {name} does not name {}",
            missing.join(", ")
        ));
    }
    if !pki::key_matches(leaf, &cert.pair.key_pem) {
        return Err(format!(
            "tls.key in {name} is not the private key of tls.crt: store the key the certificate was issued for"
        ));
    }
    if now >= leaf.not_after {
        return Err(format!(
            "the certificate in {name} expired at {}: renew it",
            leaf.not_after
        ));
    }
    let ca = ca.as_ref().map_err(String::clone)?;
    Ok((leaf, ca_pem, ca))
}
