//! The cert-manager `Certificate` for CertManager mode: cert-manager writes
//! the serving certificate into `<name>-tls`, the same Secret the registry
//! mounts in SelfSigned mode, with the same names and lifetimes.
//!
//! cert-manager's types are not a dependency: the object is built as JSON
//! and applied as a dynamic object, and only when its CRD is installed.

use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use crate::crd::{IssuerKind, Registry};
use crate::desired::owner;
use crate::names::Names;

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

/// The Certificate, or `None` if the Registry is not in CertManager mode.
pub fn certificate(
    registry: &Registry,
    names: &Names,
    cert_names: &[String],
) -> Option<DynamicObject> {
    let tls = &registry.spec.tls;
    let issuer = tls
        .issuer_ref
        .as_ref()
        .filter(|_| tls.mode == crate::crd::TlsMode::CertManager)?;
    let (ips, dns): (Vec<&String>, Vec<&String>) = cert_names
        .iter()
        .partition(|n| n.parse::<std::net::IpAddr>().is_ok());
    let kind = match issuer.kind {
        IssuerKind::Issuer => "Issuer",
        IssuerKind::ClusterIssuer => "ClusterIssuer",
    };
    let mut object = DynamicObject::new(&names.certificate(), &api_resource());
    object.metadata = owner::child_meta(registry, names, names.certificate(), true);
    object.data = json!({
        "spec": {
            "secretName": names.tls_secret(),
            "dnsNames": dns,
            "ipAddresses": ips,
            "duration": tls.duration,
            "renewBefore": tls.renew_before,
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": ["server auth", "digital signature"],
            "issuerRef": {"name": issuer.name, "kind": kind, "group": issuer.group},
            "secretTemplate": {"labels": crate::desired::labels::labels(names)},
        }
    });
    Some(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{IssuerRef, TlsMode};
    use crate::fixtures;

    #[test]
    fn only_cert_manager_mode_gets_a_certificate() {
        assert!(certificate(&fixtures::registry(), &fixtures::names(), &[]).is_none());
    }

    #[test]
    fn the_certificate_asks_for_every_name_into_the_tls_secret() {
        let registry = fixtures::registry_with(|s| {
            s.tls.mode = TlsMode::CertManager;
            s.tls.issuer_ref = Some(IssuerRef {
                name: "corp".into(),
                kind: IssuerKind::ClusterIssuer,
                group: "cert-manager.io".into(),
            });
        });
        let names = [
            "hub".to_owned(),
            "hub.team.svc".to_owned(),
            "10.96.0.42".to_owned(),
        ];
        let cert = certificate(&registry, &fixtures::names(), &names).expect("certificate");
        assert_eq!(
            cert.types.as_ref().map(|t| t.api_version.as_str()),
            Some("cert-manager.io/v1")
        );
        let spec = &cert.data["spec"];
        assert_eq!(spec["secretName"], "hub-tls");
        assert_eq!(spec["dnsNames"], json!(["hub", "hub.team.svc"]));
        assert_eq!(spec["ipAddresses"], json!(["10.96.0.42"]));
        assert_eq!(
            spec["issuerRef"],
            json!({"name": "corp", "kind": "ClusterIssuer", "group": "cert-manager.io"})
        );
        assert_eq!(
            (spec["duration"].as_str(), spec["renewBefore"].as_str()),
            (Some("2160h"), Some("720h"))
        );
        assert!(cert.metadata.owner_references.is_some());
    }
}
