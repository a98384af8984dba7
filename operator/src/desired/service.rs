//! The Service in front of the registry pods, named like the Registry. Its
//! ClusterIP goes into the serving certificate: nodes reach the registry at
//! that address (see the node trust design), so it must verify there.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::Registry;
use crate::desired::deployment::PORT_NAME;
use crate::desired::{labels, owner};
use crate::names::Names;

pub fn service(registry: &Registry, names: &Names) -> Service {
    let spec = &registry.spec.service;
    let mut metadata = owner::child_meta(registry, names, names.service(), true);
    if !spec.annotations.is_empty() {
        metadata.annotations = Some(spec.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(spec.type_.as_str().to_owned()),
            selector: Some(labels::selector(names)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                port: spec.port,
                target_port: Some(IntOrString::String(PORT_NAME.to_owned())),
                node_port: spec.node_port,
                protocol: Some("TCP".to_owned()),
                app_protocol: Some("https".to_owned()),
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ServiceType;
    use crate::fixtures;

    #[test]
    fn a_default_service_is_cluster_ip_on_443_to_the_https_port() {
        let svc = service(&fixtures::registry(), &fixtures::names());
        assert_eq!(svc.metadata.name.as_deref(), Some("hub"));
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let port = &spec.ports.expect("ports")[0];
        assert_eq!(port.port, 443);
        assert_eq!(port.target_port, Some(IntOrString::String("https".into())));
        assert_eq!(port.node_port, None);
        assert_eq!(spec.selector, Some(labels::selector(&fixtures::names())));
    }

    #[test]
    fn a_node_port_service_keeps_the_chosen_port_and_annotations() {
        let registry = fixtures::registry_with(|s| {
            s.service.type_ = ServiceType::NodePort;
            s.service.node_port = Some(30443);
            s.service
                .annotations
                .insert("example.com/lb".into(), "internal".into());
        });
        let svc = service(&registry, &fixtures::names());
        assert_eq!(
            svc.metadata
                .annotations
                .and_then(|a| a.get("example.com/lb").cloned())
                .as_deref(),
            Some("internal")
        );
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(spec.ports.expect("ports")[0].node_port, Some(30443));
    }
}
