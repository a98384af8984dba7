//! One read of everything the certificate plan looks at, each certificate
//! parsed once.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::crd::{IssuerKind, Registry, TlsMode};
use crate::desired::{ca_bundle, certificate, tls};
use crate::names::Names;
use crate::pki::{self, CertInfo, KeyedCert, PkiError};
use crate::{Error, kube_err};

static NO_CERTIFICATE: PkiError = PkiError::Unreadable {
    what: "the certificate",
    detail: String::new(),
};

/// A certificate and key as stored in a Secret, with the certificate PEM
/// parsed (`Err`: why it is unreadable).
#[derive(Clone, Debug)]
pub(crate) struct Parsed {
    pub pair: KeyedCert,
    /// Every certificate of `pair.cert_pem`, the leaf first.
    pub chain: Result<Vec<CertInfo>, PkiError>,
}

impl Parsed {
    pub fn new(pair: KeyedCert, what: &'static str) -> Self {
        let chain = pki::parse_bundle(&pair.cert_pem, what);
        Self { pair, chain }
    }

    /// The first certificate (the leaf of a chain, or the CA itself).
    pub fn leaf(&self) -> Result<&CertInfo, &PkiError> {
        // A parsed bundle holds at least one certificate.
        self.chain
            .as_ref()
            .and_then(|chain| chain.first().ok_or(&NO_CERTIFICATE))
    }
}

/// The Registry's CA Secret (`<name>-ca-key`) as read.
#[derive(Clone, Debug)]
pub(crate) struct StoredCa {
    /// As read: its data is compared with what should be stored, and its
    /// resourceVersion is the precondition of any write over it.
    pub secret: Secret,
    pub current: Option<Parsed>,
    /// The CA being rotated out (`previous.crt`, `previous.key`).
    pub previous: Option<Parsed>,
}

impl StoredCa {
    pub fn of(secret: Secret) -> Self {
        let current = tls::keyed_cert(&secret).map(|p| Parsed::new(p, "the CA"));
        let previous = tls::previous_ca(&secret).map(|p| Parsed::new(p, "the previous CA"));
        Self {
            secret,
            current,
            previous,
        }
    }
}

/// A Secret the operator serves but does not write (the user's, or
/// cert-manager's).
#[derive(Clone, Debug)]
pub(crate) struct ServedSecret {
    pub name: String,
    /// `None`: it lacks tls.crt or tls.key.
    pub cert: Option<Parsed>,
    /// The CA nodes should trust: its `ca.crt`, else the last certificate of
    /// its chain; with that PEM parsed.
    pub ca: Option<(String, Result<CertInfo, PkiError>)>,
}

impl ServedSecret {
    pub fn of(secret: &Secret) -> Self {
        let cert = tls::keyed_cert(secret).map(|p| Parsed::new(p, "tls.crt"));
        let ca = cert.as_ref().map(|cert| {
            let pem = tls::ca_of(secret).unwrap_or_else(|| last_certificate(&cert.pair.cert_pem));
            let parsed = pki::parse_cert(&pem, "ca.crt");
            (pem, parsed)
        });
        Self {
            name: secret.name_any(),
            cert,
            ca,
        }
    }
}

/// What the certificate plan needs, per `tls.mode`.
// One per reconcile, never stored: boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub(crate) enum Observed {
    SelfSigned {
        ca: Option<StoredCa>,
        /// `ca.crt` of the CA bundle ConfigMap: the CAs published so far.
        bundle: Option<String>,
        /// The serving Secret (`<name>-tls`), if it holds a certificate and key.
        serving: Option<Parsed>,
    },
    Secret {
        /// `None`: the user's Secret does not exist.
        secret: Option<ServedSecret>,
    },
    CertManager {
        /// Whether cert-manager's Certificate API is served.
        installed: bool,
        /// `None`: cert-manager has not written `<name>-tls` yet.
        secret: Option<ServedSecret>,
        /// What cert-manager says about the Certificate and its issuer
        /// (`None`: the Certificate does not exist yet).
        cert_manager: Option<CertManagerView>,
    },
}

/// cert-manager's own account of the Certificate, read so that a Registry
/// waiting on it says why in cert-manager's words.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct CertManagerView {
    /// The Certificate's `Ready` condition, if cert-manager set one.
    pub ready: Option<CertManagerCondition>,
    /// cert-manager has seen the Certificate's current spec
    /// (`Ready.observedGeneration` = `metadata.generation`).
    pub current: bool,
    /// The issuer in `tls.issuerRef`; read only while the Certificate is not
    /// Ready.
    pub issuer: IssuerView,
    /// The names the Certificate asks for (`dnsNames` then `ipAddresses`),
    /// as last applied: when the Registry wants others, cert-manager has
    /// not been asked for them yet, whatever its Ready says.
    pub requested: Vec<String>,
}

impl CertManagerView {
    /// cert-manager says the Secret holds the certificate the current spec
    /// asks for.
    pub fn is_ready(&self) -> bool {
        self.current && self.ready.as_ref().is_some_and(|c| c.status == "True")
    }
}

/// A condition as cert-manager wrote it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CertManagerCondition {
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// The issuer a Certificate names, as far as the operator could tell.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) enum IssuerView {
    /// Not read (the Certificate is Ready, or the issuer is not
    /// cert-manager's own kind).
    #[default]
    Unchecked,
    Missing,
    Ready,
    NotReady(CertManagerCondition),
}

impl CertManagerView {
    /// Reads the Ready condition of a Certificate as the API returned it.
    pub fn of(certificate: &DynamicObject) -> Self {
        let generation = certificate.metadata.generation;
        let ready = ready_condition(&certificate.data);
        let observed = certificate.data["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .and_then(|c| c["observedGeneration"].as_i64());
        Self {
            ready,
            current: generation.is_some() && observed == generation,
            issuer: IssuerView::Unchecked,
            requested: requested_names(&certificate.data),
        }
    }
}

/// `spec.dnsNames` then `spec.ipAddresses` of a Certificate (or of the one
/// the operator is about to apply).
pub(crate) fn requested_names(data: &Value) -> Vec<String> {
    ["dnsNames", "ipAddresses"]
        .iter()
        .flat_map(|k| data["spec"][*k].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// `status.conditions[type=Ready]` of a cert-manager object.
fn ready_condition(data: &Value) -> Option<CertManagerCondition> {
    let condition = data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    let text = |key: &str| condition[key].as_str().unwrap_or_default().to_owned();
    Some(CertManagerCondition {
        status: text("status"),
        reason: text("reason"),
        message: text("message"),
    })
}

/// Reads the issuer `registry` names: missing, Ready or not. Any other
/// failure (a forbidden read, an issuer of another API group) leaves it
/// unchecked: the message then relies on the Certificate alone.
async fn issuer_view(client: &Client, registry: &Registry, namespace: &str) -> IssuerView {
    let Some(issuer) = registry.spec.tls.issuer_ref.as_ref() else {
        return IssuerView::Unchecked;
    };
    if issuer.group != "cert-manager.io" {
        return IssuerView::Unchecked;
    }
    let (kind, plural) = match issuer.kind {
        IssuerKind::Issuer => ("Issuer", "issuers"),
        IssuerKind::ClusterIssuer => ("ClusterIssuer", "clusterissuers"),
    };
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", kind),
        plural,
    );
    let api: Api<DynamicObject> = match issuer.kind {
        IssuerKind::Issuer => Api::namespaced_with(client.clone(), namespace, &resource),
        IssuerKind::ClusterIssuer => Api::all_with(client.clone(), &resource),
    };
    match api.get_opt(&issuer.name).await {
        Ok(None) => IssuerView::Missing,
        Ok(Some(object)) => match ready_condition(&object.data) {
            Some(c) if c.status == "True" => IssuerView::Ready,
            Some(c) => IssuerView::NotReady(c),
            None => IssuerView::NotReady(CertManagerCondition {
                status: "Unknown".into(),
                reason: String::new(),
                message: "cert-manager has not checked it yet".into(),
            }),
        },
        Err(error) => {
            tracing::debug!(issuer = %issuer.name, %error, "cannot read the cert-manager issuer");
            IssuerView::Unchecked
        }
    }
}

/// Read what the plan for `registry`'s `tls.mode` looks at.
pub(crate) async fn observe(
    client: &Client,
    registry: &Registry,
    names: &Names,
) -> Result<Observed, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    Ok(match registry.spec.tls.mode {
        TlsMode::SelfSigned => {
            let ca = secrets
                .get_opt(&names.ca_secret())
                .await
                .map_err(kube_err("reading the CA Secret"))?;
            let bundle = Api::<ConfigMap>::namespaced(client.clone(), &names.namespace)
                .get_opt(&names.ca_config_map())
                .await
                .map_err(kube_err("reading the CA bundle"))?;
            let serving = secrets
                .get_opt(&names.tls_secret())
                .await
                .map_err(kube_err("reading the TLS Secret"))?;
            Observed::SelfSigned {
                ca: ca.map(StoredCa::of),
                bundle: bundle
                    .as_ref()
                    .and_then(ca_bundle::bundle_of)
                    .map(str::to_owned),
                serving: serving
                    .as_ref()
                    .and_then(tls::keyed_cert)
                    .map(|p| Parsed::new(p, "the serving certificate")),
            }
        }
        TlsMode::Secret => {
            let secret = secrets
                .get_opt(&names.serving_secret(&registry.spec))
                .await
                .map_err(kube_err("reading the user's TLS Secret"))?;
            Observed::Secret {
                secret: secret.as_ref().map(ServedSecret::of),
            }
        }
        TlsMode::CertManager => {
            let gvk = GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate");
            let installed = kube::discovery::pinned_kind(client, &gvk).await.is_ok();
            let (secret, cert_manager) = if installed {
                let secret = secrets
                    .get_opt(&names.tls_secret())
                    .await
                    .map_err(kube_err("reading the TLS Secret"))?;
                let certificates: Api<DynamicObject> = Api::namespaced_with(
                    client.clone(),
                    &names.namespace,
                    &certificate::api_resource(),
                );
                let mut view = certificates
                    .get_opt(&names.certificate())
                    .await
                    .map_err(kube_err("reading the cert-manager Certificate"))?
                    .map(|c| CertManagerView::of(&c));
                if let Some(view) = view.as_mut().filter(|v| !v.is_ready()) {
                    view.issuer = issuer_view(client, registry, &names.namespace).await;
                }
                (secret, view)
            } else {
                (None, None)
            };
            Observed::CertManager {
                installed,
                secret: secret.as_ref().map(ServedSecret::of),
                cert_manager,
            }
        }
    })
}

/// The last PEM certificate of a chain (its root or top intermediate).
fn last_certificate(chain_pem: &str) -> String {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    chain_pem
        .rfind(BEGIN)
        .map(|start| chain_pem[start..].trim().to_owned() + "\n")
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(generation: i64, status: Value) -> DynamicObject {
        let mut object = DynamicObject::new("hub", &certificate::api_resource());
        object.metadata.generation = Some(generation);
        object.data = serde_json::json!({ "status": status });
        object
    }

    #[test]
    fn a_certificate_is_ready_only_when_cert_manager_saw_its_current_spec() {
        let ready_at = |observed: i64| {
            serde_json::json!({"conditions": [
                {"type": "Issuing", "status": "False"},
                {"type": "Ready", "status": "True", "reason": "Ready",
                 "message": "Certificate is up to date and has not expired",
                 "observedGeneration": observed}]})
        };
        let view = CertManagerView::of(&certificate(2, ready_at(2)));
        assert!(view.is_ready());
        assert_eq!(
            view.ready.map(|c| c.message),
            Some("Certificate is up to date and has not expired".to_owned())
        );
        // A spec change cert-manager has not acted on yet is not Ready.
        assert!(!CertManagerView::of(&certificate(3, ready_at(2))).is_ready());
    }

    #[test]
    fn a_certificate_without_conditions_is_not_ready() {
        let view = CertManagerView::of(&certificate(1, Value::Null));
        assert!(!view.is_ready());
        assert_eq!(view.ready, None);
    }

    #[test]
    fn the_last_certificate_of_a_chain_is_its_top() {
        let chain = "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n";
        assert_eq!(
            last_certificate(chain),
            "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n"
        );
    }
}
