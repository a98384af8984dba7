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

/// The ports to put back when `observed` does not carry exactly the ports
/// of `desired`; `None` when it does.
///
/// Server-side apply alone cannot repair a hand-edited port: the edit adds
/// a list entry keyed by the new port that belongs to whoever edited it,
/// and re-applying ours only adds ours back beside it (two ports named
/// `https`, which the apiserver refuses). A node port the apiserver chose
/// (none in the spec) is kept, so the repair does not move it.
pub fn repaired_ports(desired: &Service, observed: &Service) -> Option<Vec<ServicePort>> {
    let wanted = desired.spec.as_ref()?.ports.clone().unwrap_or_default();
    let have = observed
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let same = |w: &ServicePort, h: &ServicePort| {
        w.name == h.name
            && w.port == h.port
            && w.target_port == h.target_port
            && w.protocol.as_deref().unwrap_or("TCP") == h.protocol.as_deref().unwrap_or("TCP")
            && (w.node_port.is_none() || w.node_port == h.node_port)
    };
    if wanted.len() == have.len() && wanted.iter().all(|w| have.iter().any(|h| same(w, h))) {
        return None;
    }
    Some(
        wanted
            .into_iter()
            .map(|mut w| {
                if w.node_port.is_none() {
                    w.node_port = have
                        .iter()
                        .find(|h| h.name == w.name || h.port == w.port)
                        .and_then(|h| h.node_port);
                }
                w
            })
            .collect(),
    )
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

    fn with_ports(ports: Vec<ServicePort>) -> Service {
        Service {
            spec: Some(ServiceSpec {
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn desired_port(svc: &Service) -> ServicePort {
        svc.spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .expect("ports")[0]
            .clone()
    }

    #[test]
    fn a_service_as_applied_needs_no_port_repair() {
        let desired = service(&fixtures::registry(), &fixtures::names());
        assert_eq!(repaired_ports(&desired, &desired), None);
        // What the apiserver fills in (a node port it chose) is not drift.
        let mut port = desired_port(&desired);
        port.node_port = Some(31000);
        assert_eq!(repaired_ports(&desired, &with_ports(vec![port])), None);
    }

    #[test]
    fn a_hand_edited_port_is_put_back_and_the_stray_entry_dropped() {
        let desired = service(&fixtures::registry(), &fixtures::names());
        let mut edited = desired_port(&desired);
        edited.port = 8443;
        // After a hand edit and our re-apply: theirs beside ours.
        let observed = with_ports(vec![edited.clone(), desired_port(&desired)]);
        assert_eq!(
            repaired_ports(&desired, &observed),
            Some(vec![desired_port(&desired)])
        );
        // The edit alone (our apply refused): ours only.
        assert_eq!(
            repaired_ports(&desired, &with_ports(vec![edited])),
            Some(vec![desired_port(&desired)])
        );
    }

    #[test]
    fn a_repair_keeps_the_node_port_the_apiserver_chose() {
        let registry = fixtures::registry_with(|s| s.service.type_ = ServiceType::NodePort);
        let desired = service(&registry, &fixtures::names());
        let mut edited = desired_port(&desired);
        edited.target_port = Some(IntOrString::Int(8080));
        edited.node_port = Some(31000);
        let repaired = repaired_ports(&desired, &with_ports(vec![edited])).expect("drift");
        assert_eq!(repaired[0].node_port, Some(31000));
        assert_eq!(
            repaired[0].target_port,
            Some(IntOrString::String("https".into()))
        );
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
