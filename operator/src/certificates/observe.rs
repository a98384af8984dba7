//! One read of everything the certificate plan looks at, each certificate
//! parsed once.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};

use crate::crd::{Registry, TlsMode};
use crate::desired::{ca_bundle, tls};
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
    },
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
            let secret = if installed {
                secrets
                    .get_opt(&names.tls_secret())
                    .await
                    .map_err(kube_err("reading the TLS Secret"))?
            } else {
                None
            };
            Observed::CertManager {
                installed,
                secret: secret.as_ref().map(ServedSecret::of),
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

    #[test]
    fn the_last_certificate_of_a_chain_is_its_top() {
        let chain = "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n";
        assert_eq!(
            last_certificate(chain),
            "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n"
        );
    }
}
